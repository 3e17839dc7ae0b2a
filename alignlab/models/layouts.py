"""How examples become the rows of one forward pass (`SlotLayout`), and the parts of a causal LM the engine
runs separately (its transformer body and LM head).

Two layouts give the same log-probs where the model allows it: packed rows with each prompt computed once
(`collate_shared_prefix`: a block-diagonal 4D attention mask and position ids), and one right-padded row per
completion after a copy of its prompt (a plain 2D mask, the model builds its own attention from it). Which one a
batch gets is decided once, in `slot_layout`, from what `alignlab.models.exactness` found out about the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.data.collate import collate_shared_prefix, collate_slots
from alignlab.models.adapters import without_peft_wrapper


def body_and_head(model):
    """(transformer body, LM head) of a causal LM (under its LoRA adapters, if any), or (None, None) when they
    cannot be split."""
    model = without_peft_wrapper(model)
    body = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or body is model or head is None:
        return None, None
    return body, head


def logit_postprocess(config):
    """Transforms some architectures apply to the head's output (logit scale, Granite's division by
    `logits_scaling`, final soft-capping)."""
    scale = getattr(config, "logit_scale", None)
    divisor = getattr(config, "logits_scaling", None)
    softcap = getattr(config, "final_logit_softcapping", None)

    def apply(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return apply


@dataclass
class SlotLayout:
    """Where a batch's completion tokens are, for one forward pass: the model inputs, and for each of the M
    completion tokens the (row, column) of the hidden state that predicts it and the token itself.
    `to_slots` puts per-token values `[M, ...]` back as one `[B, T, ...]` tensor per completion slot."""

    inputs: dict[str, torch.Tensor]
    """``input_ids``, ``attention_mask`` (and ``position_ids`` for packed rows) of the forward pass."""
    rows: torch.Tensor
    columns: torch.Tensor
    targets: torch.Tensor
    placement: torch.Tensor
    """Bool mask of the completion tokens in the per-slot layout, ``[S, B, T]`` (or ``[B, S, T]`` when
    `slot_dim` is 1), in the order of the M tokens."""
    slot_dim: int = 0

    def select(self, hidden: torch.Tensor) -> torch.Tensor:
        """The states `[M, ...]` that predict the completion tokens, from body outputs `[R, W, ...]`."""
        return hidden[self.rows, self.columns]

    def to_slots(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-token values `[M, ...]` as one `[B, T, ...]` tensor per slot (0 outside completions)."""
        out = values.new_zeros((*self.placement.shape, *values.shape[1:]))
        if values.dim() == 1:
            out = out.masked_scatter(self.placement, values)
        else:
            out[self.placement] = values
        return list(out.unbind(self.slot_dim))

    @property
    def masks(self) -> list[torch.Tensor]:
        """0/1 (long) completion masks, one `[B, T]` per slot."""
        return list(self.placement.long().unbind(self.slot_dim))


def rows_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                slots: int = 1, position_ids: torch.Tensor | None = None) -> SlotLayout:
    """Layout of ready-made rows (`[S·B, L]`, slot-major): the token at column t is predicted from column t − 1.
    The first column has no context, so `completion_mask` must be 0 there."""
    if completion_mask[:, 0].any():
        raise ValueError("completion_mask is 1 at position 0: the first token has no context to be scored from")
    target_mask = completion_mask[:, 1:].bool()
    rows, columns = target_mask.nonzero(as_tuple=True)
    placement = F.pad(target_mask, (1, 0)).view(slots, -1, completion_mask.shape[1])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    return SlotLayout(inputs, rows, columns, input_ids[:, 1:][target_mask], placement)


def shared_prefix_layout(batch: dict[str, torch.Tensor]) -> SlotLayout:
    """Layout of packed rows from `collate_shared_prefix`: example b's slot k token m is predicted from row
    ``example_row[b]``, column ``source_index[b, k, m]``."""
    mask = batch["completion_masks"].bool()
    rows = batch["example_row"][:, None, None].expand_as(mask)[mask]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    return SlotLayout(inputs, rows, batch["source_index"][mask], batch["targets"][mask], mask, slot_dim=1)


def slot_layout(examples, pad_id: int, device, share_prefix: bool, padding_free: bool = True) -> SlotLayout:
    """The layout for `examples` (objects with `.prompt` and `.completions`), on `device`.

    With `share_prefix` each example's prompt is computed once, several examples per row with `padding_free`;
    otherwise each completion is its own row after a copy of its prompt. Both give the same log-probs on a model
    whose attention the packed rows' mask expresses (`alignlab.models.exactness.packing_allowed` says when)."""
    if share_prefix:
        packed = collate_shared_prefix(examples, pad_id, padding_free)
        return shared_prefix_layout({k: v.to(device) for k, v in packed.items()})
    batch = {k: v.to(device) for k, v in collate_slots(examples, pad_id).items()}
    return rows_layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                       len(examples[0].completions))
