"""Decoders share one interface (`alignlab.decode.base`): ``get(name)(model, tokenizer, prompts, n, ...) -> Samples``.

Registered: ``sample`` (ancestral sampling, `alignlab.decode.sampling`).
"""

from alignlab.decode import sampling  # noqa: F401  (registers the decoders)
from alignlab.decode.base import DecoderSpec, available, get, register, spec
from alignlab.decode.sampling import Samples, generate

__all__ = ["DecoderSpec", "Samples", "available", "generate", "get", "register", "spec"]
