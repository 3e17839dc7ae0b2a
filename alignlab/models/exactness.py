"""Whether the engine's packed rows give a model's exact log-probs, and when they do not, one row per sequence.

Packed rows (`alignlab.models.layouts`, the default ``scoring.share_prefix``) hand the model a 4D attention mask
of their own — block-diagonal, each completion attending to its prompt — with position ids. transformers passes
such a mask through untouched, so any attention a model builds for itself from a plain 2D mask is lost: a sliding
window or local attention (Mistral, Gemma-2/3, Phi-3, GPT-Neo's local layers, chunked attention), biases built
from the 2D mask (BLOOM's ALiBi), or whatever a model nobody has tried yet does. Two guards keep the numbers exact:

- **the config's window** (`attention_window`): a batch holding a sequence longer than the shortest window any
  layer uses is laid out one row per sequence, where the model applies its own window to a 2D mask;
- **a probe**, once per model object (`probe`): a few short sequences scored in packed rows and by a plain
  forward of each sequence alone. If they differ by more than `tolerance` (or packing raises), the model is
  scored one row per sequence from then on, and that is said once. If the rows differ too, the model is refused:
  nothing the engine can lay out is exact for it; so is a model whose plain forward gives non-finite log-probs.
"""

from __future__ import annotations

import sys
import time
import weakref
from dataclasses import dataclass

import torch

from alignlab.data.tokenize import TokenizedPair
from alignlab.errors import ConfigError
from alignlab.models.adapters import without_peft_wrapper
from alignlab.models.layouts import body_and_head, logit_postprocess, slot_layout

PROBE_LENGTHS = ((7, 5, 9), (3, 4, 2), (12, 6, 6))
"""(prompt, chosen, rejected) token counts of the probe's examples: ragged, so rows pack and pad."""

LOCAL_LAYER_TYPES = ("sliding_attention", "chunked_attention", "local")


@dataclass(frozen=True)
class Verdict:
    """What the probe found for one model."""

    packed_exact: bool
    """Packed rows give the plain forward's log-probs (within tolerance)."""
    error: float | None
    """Largest per-token difference of packed rows from the plain forward (None when packing raised)."""
    reason: str
    seconds: float

    def describe(self, model) -> str:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        window = attention_window(getattr(model, "config", None))
        layout = "packed rows (prompts shared)" if self.packed_exact else "one row per sequence"
        note = f"; sequences longer than its {window}-token attention window get one row each" if window else ""
        return f"scoring {kind}: {layout} — {self.reason}{note} (probe {self.seconds * 1000:.0f} ms)"


_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attention_window(config) -> int | None:
    """The shortest attention window any layer of the model uses (sliding window, local or chunked attention), or
    None when every layer attends to the whole sequence, as the config declares it."""
    if config is None:
        return None
    windows = []
    layer_types = [str(t) for t in (getattr(config, "layer_types", None) or [])]
    local_layers = any(t in LOCAL_LAYER_TYPES for t in layer_types)
    sliding = getattr(config, "sliding_window", None)
    sliding_used = getattr(config, "use_sliding_window", True) is not False and (not layer_types or local_layers)
    if isinstance(sliding, int) and sliding > 0 and sliding_used:
        windows.append(sliding)
    chunk = getattr(config, "attention_chunk_size", None)
    if isinstance(chunk, int) and chunk > 0:
        windows.append(chunk)
    neo_layers = [str(t) for t in (getattr(config, "attention_layers", None) or [])]
    neo_window = getattr(config, "window_size", None)
    if "local" in neo_layers and isinstance(neo_window, int) and neo_window > 0:
        windows.append(neo_window)
    return min(windows) if windows else None


def _name(model) -> str:
    """The model as a user named it (its folder or hub id), else its class."""
    return getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__


def tolerance(model, expected: list[torch.Tensor]) -> float:
    """Per-token log-prob difference allowed between two layouts: float32 rounding (1e-4), or for 16-bit weights
    their rounding at the size of the log-probs probed (≥ 0.5 nats: only a gross difference shows; the config's
    window, not the probe, is what keeps 16-bit models with local attention exact)."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32 or dtype == torch.float64:
        return 1e-4
    largest = max(float(values.abs().max()) for values in expected) if expected else 0.0
    return max(0.5, 8 * torch.finfo(dtype).eps * largest)


def _vocabulary_size(model) -> int:
    """The number of token ids the model embeds (its embedding, else its config)."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError, TypeError):
        return int(model.config.vocab_size)


def _probe_examples(vocab_size: int) -> list[TokenizedPair]:
    generator = torch.Generator().manual_seed(0)
    low = min(3, vocab_size - 1)

    def ids(n: int) -> list[int]:
        return torch.randint(low, vocab_size, (n,), generator=generator).tolist()

    return [TokenizedPair(ids(p), ids(c), ids(r)) for p, c, r in PROBE_LENGTHS]


def _plain_logps(model, examples: list[TokenizedPair], device) -> list[torch.Tensor]:
    """Each completion's token log-probs from a forward of its own prompt + completion, with no mask at all."""
    out = []
    for example in examples:
        for completion in example.completions:
            ids = torch.tensor([example.prompt + completion], device=device)
            logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            start = len(example.prompt)
            out.append(logps[start - 1: -1].gather(-1, ids[0, start:, None]).squeeze(-1))
    return out


def _layout_logps(model, examples: list[TokenizedPair], device, packed: bool) -> list[torch.Tensor]:
    """The same log-probs as the engine lays them out (packed rows or one row per sequence)."""
    layout = slot_layout(examples, 0, device, share_prefix=packed)
    body, head = body_and_head(model)
    if body is None:
        logits = layout.select(model(**layout.inputs).logits)
    else:
        logits = logit_postprocess(model.config)(head(layout.select(body(**layout.inputs).last_hidden_state)))
    flat = torch.log_softmax(logits.float(), -1).gather(-1, layout.targets[:, None]).squeeze(-1)
    slots = layout.to_slots(flat)
    masks = layout.masks
    return [slots[k][b][masks[k][b].bool()] for b in range(len(examples)) for k in range(len(slots))]


def _largest_gap(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))


def probe(model) -> Verdict:
    """The model's verdict, found once (a few short sequences, in eval mode, without gradients) and kept for the
    model object; raises ConfigError when no layout the engine has is exact for it."""
    model = without_peft_wrapper(model)  # LoRA adapters change no layout: one verdict for the model under them
    if model in _VERDICTS:
        return _VERDICTS[model]
    started, training = time.perf_counter(), model.training
    device = next(model.parameters()).device
    examples = _probe_examples(_vocabulary_size(model))
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            expected = _plain_logps(model, examples, device)
            if not all(torch.isfinite(values).all() for values in expected):
                raise ConfigError(f"{_name(model)} gives non-finite log-probs (NaN or infinite weights?): nothing "
                                  "it scores, samples or trains on would mean anything")
            limit = tolerance(model, expected)
            packed_error, packed_failure = None, None
            if body_and_head(model)[0] is not None:
                try:
                    packed_error = _largest_gap(_layout_logps(model, examples, device, True), expected)
                except Exception as error:  # an architecture whose attention rejects our 4D mask (e.g. ALiBi)
                    packed_failure = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
            rows_error = _largest_gap(_layout_logps(model, examples, device, False), expected)
    finally:
        model.train(training)
    full_precision = next(model.parameters()).dtype in (torch.float32, torch.float64)
    if rows_error > limit and full_precision:  # 16-bit rows are the model's own forward, up to its rounding
        raise ConfigError(f"{_name(model)} cannot be scored exactly: one row per sequence differs from a plain "
                          f"forward by {rows_error:.3g} nats per token (tolerance {limit:g})")
    packed_exact = packed_error is not None and packed_error <= limit
    if packed_exact:
        reason = f"exact against a plain forward (largest gap {packed_error:.1e})"
    elif packed_failure:
        reason = f"packed rows fail on this architecture ({packed_failure})"
    elif packed_error is None:
        reason = "its body and LM head cannot be run apart"
    else:
        reason = f"packed rows differ from a plain forward by {packed_error:.3g} nats per token (tolerance {limit:g})"
    verdict = Verdict(packed_exact, packed_error, reason, time.perf_counter() - started)
    _VERDICTS[model] = verdict
    if not packed_exact and (packed_error is not None or packed_failure):
        print(f"alignlab: {verdict.describe(model)}", file=sys.stderr)
    return verdict


def longest_sequence(examples) -> int:
    """Prompt + longest completion, over `examples`."""
    return max((len(e.prompt) + max(len(c) for c in e.completions) for e in examples), default=0)


def packing_allowed(model, examples) -> bool:
    """Whether `examples` may be scored under `model` in packed rows and stay exact: the model's body and head run
    apart, the probe found packing exact, and no sequence is longer than the model's attention window."""
    if body_and_head(model)[0] is None or not probe(model).packed_exact:
        return False
    window = attention_window(model.config)
    return window is None or longest_sequence(examples) <= window


def layout_note(model) -> str | None:
    """The line a run says once about how `model` is scored (`probe`'s verdict); None for a model the engine does
    not lay out (a classifier without an LM head)."""
    if body_and_head(model)[0] is None:
        return None
    return probe(model).describe(model)
