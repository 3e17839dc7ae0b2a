"""Decoders share one interface (`alignlab.decode.base`): ``get(name)(model, tokenizer, prompts, n, ...) -> Samples``.

Registered: ``sample`` (`sampling`); ``best_of_n``, ``worst_of_n`` (`best_of_n`); ``greedy``, ``args``,
``tq_star`` (`guided`); ``controlled`` (a prefix value model, `controlled`); ``deal`` (`search`);
``infalign`` (`infalign`); ``speculative`` (token and block verification, `speculative`); ``urial``,
``guard_route`` (`prompting`).
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
from alignlab.decode.base import DecoderSpec, Samples, available, check_ranges, get, register, spec
from alignlab.decode.sampling import generate, sample

__all__ = ["DecoderSpec", "Samples", "available", "check_ranges", "generate", "get", "register", "sample", "spec"]
