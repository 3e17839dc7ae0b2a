"""Decoders share one interface (`alignlab.decode.base`): ``get(name)(model, tokenizer, prompts, n, ...) -> Samples``.

Registered: ``sample`` (ancestral sampling, `sampling`), ``best_of_n`` and ``worst_of_n`` (`best_of_n`),
``speculative`` (token and block verification, `speculative`), ``greedy`` and ``args`` (`guided`),
``deal`` (`search`),
``urial`` and ``guard_route`` (`prompting`).
"""

from alignlab.decode import best_of_n, guided, prompting, sampling, search, speculative  # noqa: F401  (registers the decoders)
from alignlab.decode.base import DecoderSpec, Samples, available, get, register, spec
from alignlab.decode.sampling import generate, sample

__all__ = ["DecoderSpec", "Samples", "available", "generate", "get", "register", "sample", "spec"]
