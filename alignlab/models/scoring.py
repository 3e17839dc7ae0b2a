"""The one scoring engine: per-token log-probs of completion tokens under a causal LM.

Every place that needs log-probs of a completion (training, reference caching, KL estimates,
evaluation) calls `completion_logps`. It never builds a float32 `[batch, seq, vocab]` tensor: it
runs the transformer body once, keeps only the hidden states that predict completion tokens, and
applies the LM head to those in chunks, taking the target token's logit minus a logsumexp over the
vocabulary for each chunk:

    log p(x_t | x_<t) = z_t[x_t] − logsumexp_v z_t[v],   z_t = head(h_{t−1})
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from alignlab.data.collate import collate_shared_prefix, collate_slots
from alignlab.models.adapters import reference_context, without_peft_wrapper

DEFAULT_CHUNK_TOKENS = 1024


def _body_and_head(model):
    """(transformer body, LM head) of a causal LM (under its LoRA adapters, if any), or (None, None) when they
    cannot be split."""
    model = without_peft_wrapper(model)
    body = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or body is model or head is None:
        return None, None
    return body, head


def _logit_postprocess(config):
    """Transforms some architectures apply to the head's output (logit scale, final soft-capping)."""
    scale = getattr(config, "logit_scale", None)
    softcap = getattr(config, "final_logit_softcapping", None)

    def apply(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return apply


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `targets` `[N]` from hidden states `[N, H]`, through the LM head `chunk_tokens` rows at a time.

    With `recompute` (and gradients on) each chunk's logits are recomputed in the backward pass
    instead of being kept, so at most one chunk of logits is alive at any time. With
    `with_square_mass` also returns log Σ_v p(v)² per row (without gradient).
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
    empty = hidden.new_zeros(0, dtype=torch.float32)
    logps_out = torch.cat(logps) if logps else empty
    if not with_square_mass:
        return logps_out
    return logps_out, torch.cat(squares) if squares else empty


def _scatter_back(values: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Per-target values `[M]` back into `[N, L]` rows aligned with `input_ids` (0 elsewhere)."""
    shifted = torch.zeros(target_mask.shape, dtype=torch.float32, device=target_mask.device)
    return F.pad(shifted.masked_scatter(target_mask, values), (1, 0))


def completion_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    recompute_head: bool = False,
    with_square_mass: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs `[N, L]` (float32) of the tokens where `completion_mask` is 1.

    Entry t of a row is log p(input_ids[t] | input_ids[:t]); entries outside the completion are 0.
    The first position of a row has no context, so its mask must be 0. With `with_square_mass`
    also returns log Σ_v p_t(v)² `[N, L]` at the same positions (no gradient; used by WPO).
    """
    if completion_mask[:, 0].any():
        raise ValueError("completion_mask is 1 at position 0: the first token has no context to be scored from")
    target_mask = completion_mask[:, 1:].bool()
    targets = input_ids[:, 1:][target_mask]
    body, head = _body_and_head(model)
    if body is not None:
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        postprocess = _logit_postprocess(model.config)
    else:
        hidden = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        head, postprocess = torch.nn.Identity(), lambda logits: logits
    result = chunked_head_logps(hidden[:, :-1][target_mask], targets, head, postprocess, chunk_tokens,
                                recompute_head, with_square_mass)
    if not with_square_mass:
        return _scatter_back(result, target_mask)
    return _scatter_back(result[0], target_mask), _scatter_back(result[1], target_mask)


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
    """Per-token quantities `[N, L]` of completion tokens under a policy and a frozen reference."""

    policy: torch.Tensor
    """log π_θ(y_t), with gradient."""
    reference: torch.Tensor
    """log π_ref(y_t)."""
    kl: torch.Tensor
    """k_t = Σ_v π_ref(v)·(log π_θ(v) − log π_ref(v)) (= −KL(π_ref ‖ π_θ) at t), gradient through π_θ."""
    reference_activations: torch.Tensor
    """`[layers, N, L]`: the mean over the hidden size of each reference layer's output at the position
    that predicts token t (no gradient)."""
    reference_hidden: torch.Tensor | None = None
    """`[layers, N, L, H]`: those outputs themselves, when asked for (learned token masks)."""


def completion_token_kl(
    policy, reference, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS, keep_hidden: bool = False,
) -> TokenKL:
    """Token-level log-probs and KL of a policy against a frozen reference, one forward pass each.

    Both LM heads run on the completion-predicting positions only, `chunk_tokens` rows at a time;
    full-vocabulary log-softmaxes exist one chunk at a time (a chunk of the policy's is kept for
    its gradient).
    """
    if completion_mask[:, 0].any():
        raise ValueError("completion_mask is 1 at position 0: the first token has no context to be scored from")
    policy_body, policy_head = _body_and_head(policy)
    reference_body, reference_head = _body_and_head(reference)
    if policy_body is None or reference_body is None:
        raise ValueError("token-level KL needs models whose transformer body and LM head can be split")
    target_mask = completion_mask[:, 1:].bool()
    targets = input_ids[:, 1:][target_mask]
    hidden_policy = policy_body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    with torch.no_grad(), reference_context(reference):
        out = reference_body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden_reference = out.last_hidden_state[:, :-1][target_mask]
        layers = [h[:, :-1][target_mask] for h in out.hidden_states[1:]]
        activations = torch.stack([layer.float().mean(-1) for layer in layers])
    post_policy, post_reference = _logit_postprocess(policy.config), _logit_postprocess(reference.config)
    pieces = []
    for hp, hr, t in zip(hidden_policy[:, :-1][target_mask].split(chunk_tokens), hidden_reference.split(chunk_tokens),
                         targets.split(chunk_tokens), strict=True):
        logp_policy = torch.log_softmax(post_policy(policy_head(hp)).float(), dim=-1)
        with torch.no_grad(), reference_context(reference):
            logp_reference = torch.log_softmax(post_reference(reference_head(hr)).float(), dim=-1)
        kl = (logp_reference.exp() * (logp_policy - logp_reference)).sum(-1)
        index = t[:, None]
        pieces.append((logp_policy.gather(-1, index).squeeze(-1), logp_reference.gather(-1, index).squeeze(-1), kl))
    empty = hidden_policy.new_zeros(0, dtype=torch.float32)
    columns = zip(*pieces, strict=True) if pieces else [(empty,)] * 3
    policy_logps, reference_logps, kls = (torch.cat(column) for column in columns)
    hidden = None
    if keep_hidden:
        rows, width = completion_mask.shape
        hidden = torch.zeros(len(layers), rows, width, layers[0].shape[-1], device=input_ids.device)
        for k, layer in enumerate(layers):
            hidden[k, :, 1:][target_mask] = layer.float()
    return TokenKL(
        _scatter_back(policy_logps, target_mask),
        _scatter_back(reference_logps, target_mask),
        _scatter_back(kls, target_mask),
        torch.stack([_scatter_back(layer, target_mask) for layer in activations]),
        hidden,
    )


def shared_prefix_logps(model, batch: dict[str, torch.Tensor], chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                        recompute_head: bool = False, with_square_mass: bool = False):
    """Per-slot completion log-probs `[B, S, M]` of a batch from `collate_shared_prefix`: one forward pass
    over the packed rows, the LM head applied only to the hidden states that predict completion tokens
    (example b's come from row ``example_row[b]``).

    With `with_square_mass` also returns log Σ_v p(v)² at the same positions (no gradient).
    """
    body, head = _body_and_head(model)
    if body is None:
        raise ValueError("shared-prefix scoring needs a model whose transformer body and LM head can be split")
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=batch["position_ids"]).last_hidden_state
    mask = batch["completion_masks"].bool()
    rows = batch["example_row"][:, None, None].expand_as(mask)
    selected = hidden[rows[mask], batch["source_index"][mask]]
    result = chunked_head_logps(selected, batch["targets"][mask], head, _logit_postprocess(model.config),
                                chunk_tokens, recompute_head, with_square_mass)
    def place(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(mask, values)

    return (place(result[0]), place(result[1])) if with_square_mass else place(result)


class InsideForward(torch.nn.Module):
    """A model whose `forward(fn, *args)` returns `fn(model, *args)`: every scoring function of the policy runs
    inside one `forward` call, which is what DistributedDataParallel (and FSDP) need to see to synchronise
    gradients, even when the function calls the transformer body and LM head separately."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


@dataclass
class SlotScores:
    """Log-probs of a micro-batch's completions, one `[B, T]` tensor per completion slot (for pairs:
    chosen, rejected), with the matching 0/1 masks; entries outside a completion are 0."""

    logps: list[torch.Tensor]
    masks: list[torch.Tensor]
    square_mass: list[torch.Tensor] | None = None
    """log Σ_v p(v)² at the same positions, when asked for (no gradient)."""


def score_slots(model, examples, pad_id: int, device, share_prefix: bool = True, padding_free: bool = True,
                recompute_head: bool = False, with_square_mass: bool = False) -> SlotScores:
    """Score every completion slot of `examples` (objects with `.prompt` and `.completions`) in one forward pass.

    With `share_prefix` each example's prompt is computed once (`collate_shared_prefix`, several examples
    per row with `padding_free`); otherwise each completion is its own row after a copy of its prompt.
    Both give the same log-probs; this is the one place that chooses between them.
    """
    slots = len(examples[0].completions)
    if share_prefix and _body_and_head(model)[0] is not None:
        batch = {k: v.to(device) for k, v in collate_shared_prefix(examples, pad_id, padding_free).items()}
        scored = shared_prefix_logps(model, batch, recompute_head=recompute_head, with_square_mass=with_square_mass)

        def split(tensor: torch.Tensor) -> list[torch.Tensor]:
            return [tensor[:, k] for k in range(slots)]

        masks = batch["completion_masks"]
    else:
        batch = {k: v.to(device) for k, v in collate_slots(examples, pad_id).items()}
        scored = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                  recompute_head=recompute_head, with_square_mass=with_square_mass)

        def split(tensor: torch.Tensor) -> list[torch.Tensor]:
            return list(tensor.split(len(examples)))

        masks = batch["completion_mask"]
    logps, square = scored if with_square_mass else (scored, None)
    return SlotScores(split(logps), split(masks), split(square) if square is not None else None)
