"""The one scoring engine: per-token log-probs of completion tokens under a causal LM.

Every place that needs log-probs of a completion (training, reference caching, KL estimates,
evaluation, decoding) calls `score_slots` (or, for ready-made rows, `completion_logps`). It never
builds a float32 `[batch, seq, vocab]` tensor: it runs the transformer body once, keeps only the
hidden states that predict completion tokens, and applies the LM head to those in chunks, taking
the target token's logit minus a logsumexp over the vocabulary for each chunk:

    log p(x_t | x_<t) = z_t[x_t] − logsumexp_v z_t[v],   z_t = head(h_{t−1})

How examples become rows is one `SlotLayout` (shared prompt and packed rows, or one row per
completion), chosen by `ScoringOptions`; the token-level KL path (SparsePO) uses the same layouts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from alignlab.data.tokenize import TokenizedSFT
from alignlab.models.adapters import reference_context, without_peft_wrapper
from alignlab.models.exactness import packing_allowed
from alignlab.models.layouts import SlotLayout, body_and_head, logit_postprocess, rows_layout, slot_layout

DEFAULT_CHUNK_TOKENS = 1024


@dataclass(frozen=True)
class ScoringOptions:
    """How the engine lays out and computes a batch; every setting gives the same log-probs (up to float
    rounding), only speed and memory differ. One value, passed as one argument everywhere (the config's
    ``scoring`` section)."""

    share_prefix: bool = True
    """Compute each example's prompt once, every completion attending to it; off: every completion in its
    own row after a copy of the prompt."""
    padding_free: bool = True
    """With `share_prefix`, pack several examples into each row (block-diagonal attention), so almost no
    compute is spent on padding."""
    recompute_head: bool = False
    """Recompute each chunk of LM-head logits in the backward pass instead of keeping it: less peak memory
    at large vocabularies for one extra head matmul."""
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    """Completion tokens sent through the LM head at a time."""


DEFAULT_OPTIONS = ScoringOptions()


@dataclass
class TokenScores:
    """Per-token log-probs (float32) and, when asked for, log Σ_v p(v)² at the same positions (no gradient)."""

    logps: torch.Tensor
    square_mass: torch.Tensor | None = None


def target_logps_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax of `logits` `[N, V]` at `targets` `[N]`, in float32, without the full log-softmax."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def log_square_mass(logits: torch.Tensor) -> torch.Tensor:
    """log Σ_v p(v)² of the softmax of `logits` `[N, V]`: logsumexp(2z) − 2·logsumexp(z), in float32."""
    logits = logits.float()
    return torch.logsumexp(2 * logits, dim=-1) - 2 * torch.logsumexp(logits, dim=-1)



def chunked_head_logps(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    postprocess=lambda logits: logits,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    recompute: bool = False,
    with_square_mass: bool = False,
) -> TokenScores:
    """Log-probs `[N]` of `targets` `[N]` from hidden states `[N, H]`, through the LM head `chunk_tokens` rows
    at a time.

    With `recompute` (and gradients on) each chunk's logits are recomputed in the backward pass
    instead of being kept, so at most one chunk of logits is alive at any time. With
    `with_square_mass` also gives log Σ_v p(v)² per row (without gradient).
    """

    def one_chunk(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = postprocess(head(h))
        square = log_square_mass(logits.detach()) if with_square_mass else logits.new_zeros(0)
        return target_logps_from_logits(logits, t), square

    logps, squares = [], []
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        if recompute and torch.is_grad_enabled():
            logp, square = checkpoint(one_chunk, h, t, use_reentrant=False)
        else:
            logp, square = one_chunk(h, t)
        logps.append(logp)
        squares.append(square)
    # `split` gives at least one chunk, an empty one when there are no rows: the lists are never empty
    return TokenScores(torch.cat(logps), torch.cat(squares) if with_square_mass else None)


def layout_for(models: list, examples, pad_id: int, device, options: ScoringOptions) -> SlotLayout:
    """The layout `options` choose for `examples`, packed only where it is exact for every one of `models`
    (`alignlab.models.exactness`: the probe, the attention window); otherwise one row per completion."""
    allowed = [packing_allowed(model, examples) for model in models]  # each model probed once (cached), whatever
    packed = options.share_prefix and all(allowed)  # the layout: a model with non-finite log-probs is refused
    return slot_layout(examples, pad_id, device, packed, options.padding_free)


def _selected_scores(model, layout: SlotLayout, options: ScoringOptions, with_square_mass: bool) -> TokenScores:
    """Flat scores `[M]` of the layout's completion tokens under `model`."""
    body, head = body_and_head(model)
    if body is not None:
        hidden = body(**layout.inputs).last_hidden_state
        postprocess = logit_postprocess(model.config)
    else:
        hidden = model(**layout.inputs).logits
        head, postprocess = torch.nn.Identity(), lambda logits: logits
    return chunked_head_logps(layout.select(hidden), layout.targets, head, postprocess, options.chunk_tokens,
                              options.recompute_head, with_square_mass)


@torch.no_grad()
def completion_hidden_states(model, examples, pad_id: int, device, options: ScoringOptions = DEFAULT_OPTIONS
                             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The last layer's hidden states that predict each completion token (from the last prompt token to the
    second-to-last completion token), one `[B, T, H]` tensor per slot, with the slots' `[B, T]` 0/1 masks."""
    layout = layout_for([model], examples, pad_id, device, options)
    body, _ = body_and_head(model)
    if body is not None:
        hidden = body(**layout.inputs).last_hidden_state
    else:
        hidden = model(**layout.inputs, output_hidden_states=True).hidden_states[-1]
    return layout.to_slots(layout.select(hidden)), layout.masks


def completion_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None, options: ScoringOptions = DEFAULT_OPTIONS,
                      with_square_mass: bool = False) -> TokenScores:
    """`TokenScores` `[N, L]` of the tokens where `completion_mask` is 1 in ready-made rows.

    Entry t of a row is log p(input_ids[t] | input_ids[:t]); entries outside the completion are 0.
    """
    layout = rows_layout(input_ids, attention_mask, completion_mask, position_ids=position_ids)
    flat = _selected_scores(model, layout, options, with_square_mass)
    square = layout.to_slots(flat.square_mass)[0] if flat.square_mass is not None else None
    return TokenScores(layout.to_slots(flat.logps)[0], square)


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                     position_ids: torch.Tensor | None = None, options: ScoringOptions = DEFAULT_OPTIONS
                     ) -> torch.Tensor:
    """Per-token log-probs `[N, L]` (float32) of the completion tokens of ready-made rows (`completion_scores`)."""
    return completion_scores(model, input_ids, attention_mask, completion_mask, position_ids, options).logps


@dataclass
class SlotScores:
    """Log-probs of a micro-batch's completions, one `[B, T]` tensor per completion slot (for pairs:
    chosen, rejected), with the matching 0/1 masks; entries outside a completion are 0."""

    logps: list[torch.Tensor]
    masks: list[torch.Tensor]
    square_mass: list[torch.Tensor] | None = None
    """log Σ_v p(v)² at the same positions, when asked for (no gradient)."""


def score_slots(model, examples, pad_id: int, device, options: ScoringOptions = DEFAULT_OPTIONS,
                with_square_mass: bool = False) -> SlotScores:
    """Score every completion slot of `examples` (objects with `.prompt` and `.completions`) in one forward pass."""
    layout = layout_for([model], examples, pad_id, device, options)
    flat = _selected_scores(model, layout, options, with_square_mass)
    square = layout.to_slots(flat.square_mass) if flat.square_mass is not None else None
    return SlotScores(layout.to_slots(flat.logps), layout.masks, square)


def score_prompts(model, examples, pad_id: int, device, options: ScoringOptions = DEFAULT_OPTIONS) -> SlotScores:
    """The log-probs of each example's prompt tokens after its first (the first has no context), as one slot."""
    return score_slots(model, [TokenizedSFT(e.prompt[:1], e.prompt[1:]) for e in examples], pad_id, device, options)


def score_slots_and_prompts(model, examples, pad_id: int, device, options: ScoringOptions = DEFAULT_OPTIONS,
                            with_square_mass: bool = False) -> tuple[SlotScores, SlotScores]:
    """`score_slots` and `score_prompts` in one call (one forward of a distributed wrapper)."""
    return (score_slots(model, examples, pad_id, device, options, with_square_mass),
            score_prompts(model, examples, pad_id, device, options))


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward `[N]` of each right-padded row from a sequence-classification model with one output,
    read at the row's last attended token (not inferred from pad ids, which may equal end-of-sequence)."""
    model = without_peft_wrapper(model)
    head = getattr(model, "score", None)
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        raise ValueError(f"{type(model).__name__} has no transformer body and 'score' head to read rewards from")
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(-1) - 1
    return head(hidden[torch.arange(len(hidden), device=hidden.device), last]).squeeze(-1).float()


@dataclass
class TokenKL:
    """Per-token quantities of completion tokens under a policy and a frozen reference, one `[B, T]` tensor
    (or `[layers, B, T(, H)]`) per completion slot."""

    policy: list[torch.Tensor]
    """log π_θ(y_t), with gradient."""
    reference: list[torch.Tensor]
    """log π_ref(y_t)."""
    kl: list[torch.Tensor]
    """k_t = Σ_v π_ref(v)·(log π_θ(v) − log π_ref(v)) (= −KL(π_ref ‖ π_θ) at t), gradient through π_θ."""
    reference_activations: list[torch.Tensor]
    """`[layers, B, T]`: the mean over the hidden size of each reference layer's output at the position
    that predicts token t (no gradient)."""
    masks: list[torch.Tensor]
    reference_hidden: list[torch.Tensor] | None = None
    """`[layers, B, T, H]`: those outputs themselves, when asked for (learned token masks)."""


def layout_token_kl(policy, reference, layout: SlotLayout, options: ScoringOptions = DEFAULT_OPTIONS,
                    keep_hidden: bool = False) -> TokenKL:
    """Token-level log-probs and KL of a policy against a frozen reference, one forward pass each.

    Both LM heads run on the completion-predicting positions only, `options.chunk_tokens` rows at a time;
    full-vocabulary log-softmaxes exist one chunk at a time (a chunk of the policy's is kept for its gradient).
    """
    policy_body, policy_head = body_and_head(policy)
    reference_body, reference_head = body_and_head(reference)
    if policy_body is None or reference_body is None:
        raise ValueError("token-level KL needs models whose transformer body and LM head can be split")
    hidden_policy = layout.select(policy_body(**layout.inputs).last_hidden_state)
    with torch.no_grad(), reference_context(reference):
        out = reference_body(**layout.inputs, output_hidden_states=True)
        hidden_reference = layout.select(out.last_hidden_state)
        layers = [layout.select(h) for h in out.hidden_states[1:]]
    post_policy, post_reference = logit_postprocess(policy.config), logit_postprocess(reference.config)
    pieces = []
    chunk = options.chunk_tokens
    for hp, hr, t in zip(hidden_policy.split(chunk), hidden_reference.split(chunk), layout.targets.split(chunk),
                         strict=True):
        logp_policy = torch.log_softmax(post_policy(policy_head(hp)).float(), dim=-1)
        with torch.no_grad(), reference_context(reference):
            logp_reference = torch.log_softmax(post_reference(reference_head(hr)).float(), dim=-1)
        kl = (logp_reference.exp() * (logp_policy - logp_reference)).sum(-1)
        index = t[:, None]
        pieces.append((logp_policy.gather(-1, index).squeeze(-1), logp_reference.gather(-1, index).squeeze(-1), kl))
    policy_logps, reference_logps, kls = (layout.to_slots(torch.cat(column)) for column in zip(*pieces, strict=True))
    per_layer = [layout.to_slots(layer.float().mean(-1)) for layer in layers]
    activations = [torch.stack(slot) for slot in zip(*per_layer, strict=True)]
    hidden = None
    if keep_hidden:
        per_layer_hidden = [layout.to_slots(layer.float()) for layer in layers]
        hidden = [torch.stack(slot) for slot in zip(*per_layer_hidden, strict=True)]
    return TokenKL(policy_logps, reference_logps, kls, activations, layout.masks, hidden)


def completion_token_kl(policy, reference, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        completion_mask: torch.Tensor, options: ScoringOptions = DEFAULT_OPTIONS,
                        keep_hidden: bool = False) -> TokenKL:
    """`layout_token_kl` of ready-made rows `[N, L]` (one slot)."""
    return layout_token_kl(policy, reference, rows_layout(input_ids, attention_mask, completion_mask), options,
                           keep_hidden)


def score_token_kl(policy, reference, examples, pad_id: int, device, options: ScoringOptions = DEFAULT_OPTIONS,
                   keep_hidden: bool = False) -> TokenKL:
    """`layout_token_kl` of every completion slot of `examples`, laid out as `options` choose."""
    return layout_token_kl(policy, reference, layout_for([policy, reference], examples, pad_id, device, options),
                           options, keep_hidden)


@torch.no_grad()
def completion_distribution_values(models: list, examples, pad_id: int, device, reduce,
                                   options: ScoringOptions = DEFAULT_OPTIONS) -> tuple[list[torch.Tensor], list]:
    """`reduce(*logps)` at every completion position, where `logps[i]` `[m, V]` is model i's full next-token
    log-softmax (float32) at those positions: one `[B, T]` (or `[B, T, k]`) tensor per slot, with the slots'
    masks. Each model's body runs once on the same layout; the LM heads run `options.chunk_tokens` positions
    at a time, so a full-vocabulary log-softmax exists for one chunk per model only. No gradient.

    This is the engine's door for diagnostics that need whole distributions rather than the target token's
    log-prob: per-position KL between two models, top-k entropy and mass."""
    layout = layout_for(models, examples, pad_id, device, options)
    selected, heads = [], []
    for model in models:
        body, head = body_and_head(model)
        if body is None:  # a model whose head cannot be split off: its logits, selected
            selected.append(layout.select(model(**layout.inputs).logits))
            heads.append(lambda logits: logits)
        else:
            postprocess = logit_postprocess(model.config)
            selected.append(layout.select(body(**layout.inputs).last_hidden_state))
            heads.append(lambda h, head=head, post=postprocess: post(head(h)))
    pieces = []
    for chunk in zip(*(s.split(options.chunk_tokens) for s in selected), strict=True):
        logps = [torch.log_softmax(head(h).float(), dim=-1) for head, h in zip(heads, chunk, strict=True)]
        pieces.append(reduce(*logps))
    values = torch.cat(pieces) if pieces else torch.zeros(0, device=device)
    return layout.to_slots(values), layout.masks


class InsideForward(torch.nn.Module):
    """A model whose `forward(fn, *args)` returns `fn(model, *args)`: every scoring function of the policy runs
    inside one `forward` call, which is what DistributedDataParallel (and FSDP) need to see to synchronise
    gradients, even when the function calls the transformer body and LM head separately."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


@contextlib.contextmanager
def evaluation_mode(*models):
    """Models in eval mode, without gradients, for the block; their modes restored after."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


@torch.no_grad()
def summed_logps(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                 batch_size: int = 64, options: ScoringOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """Summed log-prob `[N]` of each completion (token ids) after its prompt under `model`, scored by the engine
    as training scores completions."""
    device = next(model.parameters()).device
    examples = [TokenizedSFT(prompt, completion) for prompt, completion in zip(prompt_ids, completion_ids, strict=True)]
    totals = [score_slots(model, examples[start: start + batch_size], pad_id, device, options).logps[0].sum(-1).cpu()
              for start in range(0, len(examples), batch_size)]
    return torch.cat(totals) if totals else torch.zeros(0)
