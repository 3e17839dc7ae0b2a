"""The decoding engine every token-level method shares: a batch of sequences extended one token at a time
over a KV cache, and the distributions a method samples from.

`TokenStream` runs each prompt **once** (left-padded rows) and expands its cache `n` ways, so best-of-N
and every other method that draws several completions per prompt pays for one prefill per prompt, not
N. A method looks at `stream.logits` (the model's next-token logits, float32), chooses one token per
row, and calls `stream.append(tokens)`; `select(rows)` keeps or repeats rows (beam search).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from alignlab.data.collate import pad_rows


@dataclass
class Cost:
    """What a decoding method spent: forward passes per model role, generated tokens, wall-clock."""

    forward_passes: dict[str, int] = field(default_factory=dict)
    generated_tokens: int = 0
    seconds: float = 0.0
    reward_calls: int = 0
    """Calls of the reward on (partial) texts, counted in texts."""

    def count(self, role: str, passes: int = 1) -> None:
        self.forward_passes[role] = self.forward_passes.get(role, 0) + passes

    def as_dict(self) -> dict:
        rate = self.generated_tokens / self.seconds if self.seconds > 0 else None
        return {"forward_passes": dict(self.forward_passes), "generated_tokens": self.generated_tokens,
                "reward_calls": self.reward_calls, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(rate, 1) if rate else None}


class Timer:
    """Adds the wall-clock of a `with` block to `cost.seconds`."""

    def __init__(self, cost: Cost) -> None:
        self.cost = cost

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *_) -> None:
        self.cost.seconds += time.perf_counter() - self.started


def warped_logprobs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
                    ) -> torch.Tensor:
    """log-probs `[R, V]` of the distribution ancestral sampling draws from: softmax(logits / T) restricted to the
    top-k tokens and then to the smallest set whose probability reaches top-p (renormalised; −inf elsewhere).
    The most likely token is always kept."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scores = logits.float() / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of the tokens ranked above
        drop = (before >= top_p).scatter(-1, order, before >= top_p)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.log_softmax(-1)


def draw(logprobs: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from `logprobs` `[R, V]`, and its log-prob under that distribution."""
    tokens = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def greedy(logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely token per row (lowest id on ties), and its log-prob."""
    tokens = logprobs.argmax(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


class TokenStream:
    """Rows of prompt + generated tokens, decoded over one KV cache.

    Row r belongs to prompt ``r // n``. A row is finished once it has produced end-of-sequence (kept in
    its ids) or `max_new_tokens`; finished rows are fed padding that nothing attends to.
    """

    def __init__(self, model, prompt_ids: list[list[int]], n: int, eos_id: int | None, pad_id: int,
                 cost: Cost | None = None, role: str = "policy", keep_hidden: bool = False) -> None:
        if not prompt_ids or any(not ids for ids in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        self.model, self.eos_id, self.pad_id, self.n = model, eos_id, pad_id, n
        self.cost, self.role = cost or Cost(), role
        self.device = next(model.parameters()).device
        width = max(len(ids) for ids in prompt_ids)
        input_ids = pad_rows([[pad_id] * (width - len(ids)) + ids for ids in prompt_ids], pad_id).to(self.device)
        mask = pad_rows([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids], 0).to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.keep_hidden = keep_hidden
        self.counts_tokens = role == "policy"
        """Whether its tokens are the method's output (look-ahead forks and rollouts count passes, not tokens)."""
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    output_hidden_states=keep_hidden)
        self.cost.count(role)
        self.hidden = out.hidden_states[-1][:, -1].repeat_interleave(n, 0) if keep_hidden else None
        """The last layer's hidden state at each row's newest token (with `keep_hidden`)."""
        self.cache = out.past_key_values
        logits = out.logits[:, -1].float()
        if n > 1:
            self.cache.batch_repeat_interleave(n)
        self.logits = logits.repeat_interleave(n, 0)
        self.mask = mask.repeat_interleave(n, 0)
        self.next_position = self.mask.sum(-1)
        self.prompt_of = torch.arange(len(prompt_ids), device=self.device).repeat_interleave(n)
        self.generated: list[list[int]] = [[] for _ in range(len(self.logits))]
        self.done = torch.zeros(len(self.logits), dtype=torch.bool, device=self.device)

    @property
    def rows(self) -> int:
        return len(self.logits)

    @torch.no_grad()
    def append(self, tokens: torch.Tensor) -> None:
        """Extend every unfinished row by its token, then compute the next logits (one forward pass)."""
        active = ~self.done
        tokens = torch.where(active, tokens, torch.full_like(tokens, self.pad_id))
        for row in active.nonzero().flatten().tolist():
            self.generated[row].append(int(tokens[row]))
        if self.counts_tokens:
            self.cost.generated_tokens += int(active.sum())
        if self.eos_id is not None:
            self.done = self.done | (active & (tokens == self.eos_id))
        self.mask = torch.cat([self.mask, active.long()[:, None]], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.next_position[:, None],
                         past_key_values=self.cache, use_cache=True, output_hidden_states=self.keep_hidden)
        if self.keep_hidden:
            self.hidden = out.hidden_states[-1][:, -1]
        self.cost.count(self.role)
        self.cache = out.past_key_values
        self.logits = out.logits[:, -1].float()
        self.next_position = self.next_position + active.long()

    def fork(self, rows: torch.Tensor) -> TokenStream:
        """A separate stream holding copies of rows `rows` (e.g. candidates to roll out); its forward passes are
        counted in the same cost."""
        twin = copy.copy(self)
        twin.counts_tokens = False
        twin.cache = copy.deepcopy(self.cache)
        twin.select(rows)
        return twin

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (in that order; a row may repeat), e.g. the surviving beams."""
        rows = rows.to(self.device)
        self.cache.reorder_cache(rows)
        self.logits, self.mask, self.next_position = self.logits[rows], self.mask[rows], self.next_position[rows]
        self.hidden = self.hidden[rows] if self.hidden is not None else None
        self.prompt_of, self.done = self.prompt_of[rows], self.done[rows]
        self.generated = [list(self.generated[r]) for r in rows.tolist()]


@torch.no_grad()
def decode_tokens(stream: TokenStream, max_new_tokens: int, choose) -> torch.Tensor:
    """Extend `stream` until every row is finished or `max_new_tokens` tokens; `choose(stream) -> (tokens, logps)`
    picks one token per row. Returns each row's summed log-prob of its tokens under the distributions chosen from."""
    total = torch.zeros(stream.rows, device=stream.device)
    for _ in range(max_new_tokens):
        if bool(stream.done.all()):
            break
        tokens, logps = choose(stream)
        total = total + torch.where(stream.done, torch.zeros_like(logps), logps)
        stream.append(tokens)
    return total


def generator_for(seed: int | None, device) -> torch.Generator | None:
    """A seeded generator on `device`, or None (torch's global one) without a seed."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


MODES = ("greedy", "stochastic")


def pick(logprobs: torch.Tensor, mode: str, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`greedy` or `draw` from `logprobs`, as a guided method's `mode` says."""
    return greedy(logprobs) if mode == "greedy" else draw(logprobs, generator)


def special_ids(tokenizer) -> tuple[int | None, int]:
    """(end-of-sequence id, padding id; 0 when the tokenizer has none)."""
    return tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
