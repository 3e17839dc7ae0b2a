"""Controlled decoding with a prefix value model (Mudgal et al., 2024, "Controlled Decoding from Language
Models"; FUDGE-style regression, Yang & Klein, 2021).

The value V(x, y_≤t) ≈ E[r(x, y) | x, y_≤t] is a small head on the frozen model's last hidden state at the
prefix's newest token. It is fitted by Monte-Carlo regression: sample completions from π_ref, score their
final rewards, and regress every prefix of a completion onto that completion's reward (squared error).
Decoding then takes, over the top-k tokens z of π_ref,

    π(z | s) ∝ π_ref(z | s)·exp(α·V(x, s ⊕ z)),

greedily or by sampling. `fit_value_head` is alignlab's choice of how to train V (a linear head, a few
epochs of Adam on cached hidden states): `alignlab decode` fits it before decoding (on `value_prompts`, or on
the decoded prompts) unless `value_head` names a saved one; `save_value_head`/`load_value_head` keep it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from alignlab.data.formats import Text
from alignlab.data.prompts import PromptsConfig, read_prompts
from alignlab.decode.base import Range, Samples, context_room, decode_in_batches, register
from alignlab.decode.sampling import sample
from alignlab.decode.stream import MODES, TokenStream, decode_tokens, generator_for, pick, special_ids
from alignlab.errors import ConfigError
from alignlab.models.scoring import evaluation_mode


class PrefixValueHead(nn.Module):
    """V(x, y_≤t) = w·h_t + b, h_t the frozen model's last hidden state at the prefix's newest token."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


@torch.no_grad()
def prefix_states(model, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[torch.Tensor]:
    """Per completion, the last hidden states `[len(completion), H]` at each of its tokens (prefixes y_≤1 … y_≤T)."""
    states = []
    device = next(model.parameters()).device
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        if not completion:
            states.append(torch.zeros(0, model.config.hidden_size))
            continue
        ids = torch.tensor([prompt + completion], device=device)
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        states.append(hidden[len(prompt):].float().cpu())
    return states


def fit_value_head(model, tokenizer, prompts: list[Text], reward, samples_per_prompt: int = 8,
                   max_new_tokens: int = 32, epochs: int = 50, lr: float = 1e-2, seed: int = 0,
                   progress: bool = False) -> tuple[PrefixValueHead, dict]:
    """A prefix value head fitted by regression of every prefix of `samples_per_prompt` reference samples per
    prompt onto the sample's final reward; returns (head, {"samples", "prefixes", "mse", "reward_variance"})."""
    samples = sample(model, tokenizer, prompts, n=samples_per_prompt, max_new_tokens=max_new_tokens, seed=seed,
                     progress=progress)
    rewards = reward.score(samples.prompts, samples.completions).float()
    with evaluation_mode(model):
        states = prefix_states(model, samples.prompt_ids, samples.completion_ids)
    inputs = torch.cat(states)
    targets = torch.cat([rewards[i].expand(len(s)) for i, s in enumerate(states)])
    if not len(inputs):
        raise ConfigError("controlled: the value model got no completion tokens to learn from")
    torch.manual_seed(seed)
    head = PrefixValueHead(inputs.shape[-1])
    with torch.no_grad():
        head.linear.bias.fill_(targets.mean())
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = ((head(inputs) - targets) ** 2).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mse = ((head(inputs) - targets) ** 2).mean().item()
    return head, {"samples": len(samples), "prefixes": len(inputs), "mse": mse,
                  "reward_variance": targets.var().item() if len(targets) > 1 else 0.0}


def save_value_head(head: PrefixValueHead, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path),
              metadata={"hidden_size": str(head.linear.in_features)})


def load_value_head(path: str | Path) -> PrefixValueHead:
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ConfigError(f"controlled: value head file not found: {path}")
    with safe_open(str(path), "pt") as handle:
        hidden_size = int(handle.metadata()["hidden_size"])
        head = PrefixValueHead(hidden_size)
        head.load_state_dict({k: handle.get_tensor(k) for k in handle.keys()})  # noqa: SIM118
    return head


def candidate_values(stream: TokenStream, candidates: torch.Tensor, head: PrefixValueHead) -> torch.Tensor:
    """V(x, s ⊕ z) `[R, k]` for every row's candidate tokens (one forward pass over the candidates)."""
    rows, k = candidates.shape
    ahead = stream.fork(torch.arange(rows, device=stream.device).repeat_interleave(k))
    ahead.append(candidates.flatten())
    return head(ahead.hidden).view(rows, k).to(stream.device)


@register("controlled", needs_reward=True,
          ranges={"top_k": Range(1), "value_samples": Range(1), "value_epochs": Range(1)}, choices={"mode": MODES},
          files=("value_head", "value_prompts"))
def controlled(model, tokenizer, prompts: list[Text], n: int = 1, *, reward, value_head: str | None = None,
               value_prompts: str | None = None, value_samples: int = 8, value_epochs: int = 50, alpha: float = 1.0,
               top_k: int = 10, mode: str = "greedy", max_new_tokens: int = 32, batch_size: int = 8,
               seed: int | None = None, progress: bool = True) -> Samples:
    """Controlled decoding (Mudgal et al., 2024): π(z|s) ∝ π_ref(z|s)·exp(α·V(x, s ⊕ z)) over the top-k tokens, V a
    prefix value head (`value_head`: a saved one; else fitted by Monte-Carlo regression on `value_samples` reference
    samples per prompt of `value_prompts`, a prompt file, or of the decoded prompts). ``greedy`` is a point;
    ``stochastic`` reports its log-probs (``sampled``). ``extras["value_fit"]`` describes the fit."""
    if mode not in MODES:
        raise ConfigError(f"controlled: mode must be 'greedy' or 'stochastic', got '{mode}'")
    fit, started = {}, time.perf_counter()
    if value_head is not None:
        head = load_value_head(value_head)
    else:
        train_prompts = prompts
        if value_prompts is not None:
            train_prompts = read_prompts(PromptsConfig(path=value_prompts))
        head, fit = fit_value_head(model, tokenizer, train_prompts, reward, value_samples, max_new_tokens,
                                   value_epochs, seed=0 if seed is None else seed + 7)
        fit["seconds"] = round(time.perf_counter() - started, 2)
    if head.linear.in_features != model.config.hidden_size:
        raise ConfigError(f"controlled: the value head reads hidden size {head.linear.in_features}, the model has "
                          f"{model.config.hidden_size}")
    head = head.to(next(model.parameters()).device)
    generator = generator_for(seed, next(model.parameters()).device)
    eos, pad = special_ids(tokenizer)

    def run(_, prompt_ids, cost):
        stream = TokenStream(model, prompt_ids, n, eos, pad, cost, keep_hidden=True)

        def choose(s: TokenStream):
            logprobs, candidates = s.logits.log_softmax(-1).topk(min(top_k, s.logits.shape[-1]), dim=-1)
            policy = (logprobs + alpha * candidate_values(s, candidates, head)).log_softmax(-1)
            index, logp = pick(policy, mode, generator)
            return candidates.gather(-1, index[:, None]).squeeze(-1), logp

        logps = decode_tokens(stream, max_new_tokens, choose)
        return stream.generated, logps.cpu() if mode == "stochastic" else None, {}

    with evaluation_mode(model, head):
        samples = decode_in_batches(tokenizer, prompts, n, batch_size, run,
                                    "sampled" if mode == "stochastic" else "point", context_room(model, max_new_tokens),
                                    progress)
    samples.extras["value_fit"] = fit
    return samples
