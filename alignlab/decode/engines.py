"""Generation engines for sampling: ``hf`` — alignlab's own token engine (`alignlab.decode.stream`), and ``vllm`` —
vLLM (Kwon et al., 2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention") run in
this process, colocated with the model it samples for, as TRL's ``vllm_mode="colocate"`` runs it.

The vLLM engine samples each completion token y_t from the same warped distribution as the ``sample`` decoder
(temperature T, top-k, top-p) and reports the log-prob of y_t under that distribution (vLLM's
``processed_logprobs``), so log π_sample(y) = Σ_t of them, as the ``hf`` engine reports it (KL kind ``sampled``).
It is started once per process from the folder the model was loaded from, and before every call it is given the
model's current weights when they changed since the last call (`weights_version`: torch counts every in-place
change of a tensor, an optimizer step included), through vLLM's in-place ``reload_weights`` with the tensors
themselves (no disk round-trip; tied input and output embeddings included).

vLLM is optional and installs into an environment of its own (`make vllm`: its CPU build pins older transformers
and numpy than alignlab's); asking for it without it is one clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from alignlab.errors import ConfigError

ENGINES = ("hf", "vllm")
"""The engines the sampling decoders and online rounds take (``engine``)."""


def weights_version(model: torch.nn.Module) -> tuple:
    """A value that changes whenever a weight of `model` is changed in place (an optimizer step, `load_state_dict`)
    or the model is another object: its identity and torch's version counter of every parameter."""
    return (id(model), *(p._version for p in model.parameters()))


def import_vllm():
    """vLLM's `LLM`, `SamplingParams` and `TokensPrompt`, or one ConfigError saying how to get it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process: weights pass as tensors
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU (vLLM's default is 4)
    # vLLM pins its OpenMP threads to cores for serving; colocated, the same threads train, which ran ~20% slower
    # pinned (the online bench's train phase, 1.5 s vs 1.2 s a round on 2 cores).
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its start-up report would bury alignlab's progress
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as error:
        raise ConfigError(f"engine: vllm needs vLLM, which is not installed here ({error}); `make vllm` sets up "
                          ".venv-vllm with it (see the README, 'Generation engines')") from None
    return LLM, SamplingParams, TokensPrompt


@dataclass
class Drawn:
    """One sampled completion: its token ids (up to and including end-of-sequence) and each token's log-prob
    under the distribution it was drawn from."""

    token_ids: list[int]
    token_logps: list[float]


class VLLMEngine:
    """vLLM colocated with `model`: started from the folder `model` was loaded from, in its dtype."""

    def __init__(self, model: torch.nn.Module) -> None:
        llm_class, self.sampling_params, self.tokens_prompt = import_vllm()
        path = getattr(model.config, "_name_or_path", "")
        if not path or not os.path.isdir(path):
            raise ConfigError(f"engine: vllm starts from the model's folder, and this model was not loaded from one "
                              f"({path or 'no path'}); save it with save_pretrained and load it from there")
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.path = path
        # vLLM drops torch to one thread for serving unless OMP_NUM_THREADS is set; colocated, the same threads
        # also train, so it is told to keep the ones this process has.
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        self.llm = llm_class(model=path, dtype=dtype, enforce_eager=True, seed=0, max_model_len=context,
                             logprobs_mode="processed_logprobs", **_scheduling(context))
        self.version: tuple | None = None

    def sync(self, model: torch.nn.Module) -> bool:
        """Give vLLM `model`'s weights when they changed since the last sync; True when it did."""
        version = weights_version(model)
        if version == self.version:
            return False
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights
        self.version = version
        return True

    def sample(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float, top_k: int,
               top_p: float, seed: int | None) -> list[Drawn]:
        """`n` completions of every prompt (rows prompt-major: row i·n + j), each prompt with its own seed
        (`seed` + i) when `seed` is given."""
        params = [self.sampling_params(n=n, temperature=temperature, top_k=top_k, top_p=top_p,
                                       max_tokens=max_new_tokens, logprobs=0,
                                       seed=None if seed is None else seed + i) for i in range(len(prompt_ids))]
        try:
            outputs = self.llm.generate([self.tokens_prompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                        use_tqdm=False)
        except RuntimeError as error:
            if "Unsupported CPU attention configuration" not in str(error):
                raise
            raise ConfigError(f"engine: vllm cannot run {self.path} on this CPU: vLLM's CPU attention does not take "
                              f"its attention heads ({error}); use engine: hf") from None
        drawn = []
        for output in outputs:
            for completion in output.outputs:
                ids = list(completion.token_ids)
                drawn.append(Drawn(ids, [step[token].logprob for step, token in zip(completion.logprobs, ids,
                                                                                      strict=True)]))
        return drawn


def vllm_draws(model: torch.nn.Module, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
               seed: int | None):
    """`draw(prompt_ids, n, cost) -> list[Drawn]` on the process's vLLM engine for `model` (given its weights
    now): `n` completions of every prompt, rows prompt-major, prompt i of all the calls together seeded with
    `seed` + i; `cost` counts the decoding steps (the longest completion of a call) and the generated tokens."""
    engine, done = colocated_vllm(model), [0]

    def draw(prompt_ids: list[list[int]], n: int, cost) -> list[Drawn]:
        offset, done[0] = done[0], done[0] + len(prompt_ids)
        drawn = engine.sample(prompt_ids, n, max_new_tokens, temperature, top_k, top_p,
                              None if seed is None else seed + offset)
        cost.count("vllm", max((len(d.token_ids) for d in drawn), default=0))
        cost.generated_tokens += sum(len(d.token_ids) for d in drawn)
        return drawn

    return draw


def _scheduling(context: int) -> dict:
    """On a CPU, chunked prefill is off: a prompt split across engine steps makes vLLM rewind the request's seeded
    generator, which a CPU generator cannot do ("CPU Generator does not use offset"); whole prompts are scheduled
    instead, up to 8192 tokens (or one context) a step. Elsewhere vLLM's own scheduling."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(context, 8192)}


_ENGINE: VLLMEngine | None = None


def colocated_vllm(model: torch.nn.Module) -> VLLMEngine:
    """The process's vLLM engine for `model` (started on first use, again only for a model from another folder),
    holding `model`'s current weights."""
    global _ENGINE
    path = getattr(model.config, "_name_or_path", "")
    if _ENGINE is None or _ENGINE.path != path:
        _ENGINE = None  # one engine per process: the old one's memory goes first
        _ENGINE = VLLMEngine(model)
    _ENGINE.sync(model)
    return _ENGINE
