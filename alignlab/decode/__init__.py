"""Decoders share one interface (`alignlab.decode.base`): ``get(name)(model, tokenizer, prompts, n, ...) -> Samples``.

Each decoder is registered by name in its module, with the ranges of its own parameters; `available()` lists
them (``alignlab decoders`` prints the list).
"""

from alignlab.decode import (  # noqa: F401  (registers the decoders)
    best_of_n,
    controlled,
    guided,
    infalign,
    prompting,
    sampling,
    search,
    speculative,
)
from alignlab.decode.base import (
    SHARED_RANGES,
    DecoderSpec,
    Range,
    Samples,
    available,
    check_ranges,
    check_values,
    get,
    register,
    spec,
)
from alignlab.decode.sampling import generate, sample

__all__ = ["SHARED_RANGES", "DecoderSpec", "Range", "Samples", "available", "check_ranges", "check_values",
           "generate", "get", "register", "sample", "spec"]
