"""Batches for the scoring engine: right-padded rows, and packed rows in which each prompt is computed once.

Tokenized examples (`alignlab.data.tokenize`) have a `.prompt` and `.completions` (one list of token ids
per completion slot); everything here works on that shape, whatever the example type.
"""

from __future__ import annotations

import torch

from alignlab.data.tokenize import TokenizedPair, TokenizedRollout, TokenizedSFT, TokenizedUnpaired


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def collate_sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows of prompt + completion with `attention_mask` and `completion_mask`."""
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions, strict=True)]
    return {
        "input_ids": pad_rows(rows, pad_id),
        "attention_mask": pad_rows([[1] * len(r) for r in rows], 0),
        "completion_mask": pad_rows(masks, 0),
    }


def collate_slots(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of `S·B` rows for B examples with S completions each: all first completions, then all
    second ones, … (one forward pass); every row is the example's prompt followed by that completion."""
    slots = len(examples[0].completions)
    prompts = [e.prompt for e in examples] * slots
    completions = [e.completions[k] for k in range(slots) for e in examples]
    return collate_sequences(prompts, completions, pad_id)


def batch_extras(examples) -> dict[str, torch.Tensor]:
    """Per-example values beside the tokens: ``labels`` `[B]` (unpaired), ``reward_margins`` `[B, M]`
    (pairs that all carry reward scores), ``aligned_scores`` `[B]` (SFT records that all carry them),
    ``advantages`` `[B]` (online rollouts)."""
    extras = {}
    first = examples[0]
    if isinstance(first, TokenizedUnpaired):
        extras["labels"] = torch.tensor([e.label for e in examples], dtype=torch.bool)
    if isinstance(first, TokenizedPair):
        margins = [e.reward_margin for e in examples]
        if all(m is not None for m in margins) and len({len(m) for m in margins}) == 1:
            extras["reward_margins"] = torch.tensor(margins, dtype=torch.float32)
    if isinstance(first, TokenizedSFT) and all(e.aligned_score is not None for e in examples):
        extras["aligned_scores"] = torch.tensor([e.aligned_score for e in examples], dtype=torch.float32)
    if isinstance(first, TokenizedRollout):
        extras["advantages"] = torch.tensor([e.advantage for e in examples], dtype=torch.float32)
    return extras


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: groups of indices into `lengths` whose sums are ≤ `capacity`
    (every length must be ≤ `capacity`); longest items first, each into the first row it fits."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if lengths[index] <= space), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        free[row] -= lengths[index]
    return rows


def collate_shared_prefix(examples, pad_id: int, padding_free: bool = True) -> dict[str, torch.Tensor]:
    """Packed rows in which every example is one segment prompt | completion 1 | completion 2 | ….

    The prompt is computed once and every completion attends to it: ``attention_mask`` `[R, 1, W, W]`
    (0 where a token may attend, −inf elsewhere) lets each completion see its own prompt and its own
    earlier tokens only, and ``position_ids`` restart every completion right after the prompt, so each
    completion gets exactly the log-probs it would get in its own sequence.

    With `padding_free` several examples share a row (first-fit decreasing, rows as wide as the
    longest example, block-diagonal mask), so the padding left is the unfilled tail of each row;
    otherwise each example has its own right-padded row. For scoring, example b's slot k token m is
    predicted from the hidden state at row ``example_row[b]``, column ``source_index[b, k, m]`` (the
    prompt's last token for m = 0); ``targets`` and ``completion_masks`` `[B, S, M]` lay the
    completions out on their own.
    """
    slots = len(examples[0].completions)
    lengths = [len(e.prompt) + sum(len(c) for c in e.completions) for e in examples]
    width = max(lengths)
    groups = pack_rows(lengths, width) if padding_free else [[b] for b in range(len(examples))]
    longest = max(len(c) for e in examples for c in e.completions)
    input_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(groups), width), dtype=torch.long)
    owner = torch.full((len(groups), width), -1, dtype=torch.long)  # example index, -1 padding
    segment = torch.full((len(groups), width), -1, dtype=torch.long)  # -1 prompt, k completion k
    example_row = torch.zeros(len(examples), dtype=torch.long)
    source_index = torch.zeros((len(examples), slots, longest), dtype=torch.long)
    targets = torch.full((len(examples), slots, longest), pad_id, dtype=torch.long)
    completion_masks = torch.zeros((len(examples), slots, longest), dtype=torch.long)
    for row, group in enumerate(groups):
        start = 0
        for b in group:
            example = examples[b]
            example_row[b] = row
            prompt_length = len(example.prompt)
            span = slice(start, start + prompt_length)
            input_ids[row, span] = torch.tensor(example.prompt, dtype=torch.long)
            position_ids[row, span] = torch.arange(prompt_length)
            owner[row, start: start + lengths[b]] = b
            prompt_end = start + prompt_length
            start = prompt_end
            for k, completion in enumerate(example.completions):
                n = len(completion)
                input_ids[row, start: start + n] = torch.tensor(completion, dtype=torch.long)
                position_ids[row, start: start + n] = torch.arange(prompt_length, prompt_length + n)
                segment[row, start: start + n] = k
                source_index[b, k, :n] = torch.tensor([prompt_end - 1, *range(start, start + n - 1)])
                targets[b, k, :n] = torch.tensor(completion, dtype=torch.long)
                completion_masks[b, k, :n] = 1
                start += n
    same_example = (owner[:, :, None] == owner[:, None, :]) & (owner[:, None, :] != -1)
    visible_segment = (segment[:, None, :] == -1) | (segment[:, None, :] == segment[:, :, None])
    allowed = torch.ones(width, width, dtype=torch.bool).tril() & same_example & visible_segment
    allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself, so no row is all −inf
    attention_mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))
    return {"input_ids": input_ids, "attention_mask": attention_mask[:, None], "position_ids": position_ids,
            "example_row": example_row, "source_index": source_index, "targets": targets,
            "completion_masks": completion_masks}
