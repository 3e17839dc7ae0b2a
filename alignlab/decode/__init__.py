"""Decoders share one interface: ``generate(model, tokenizer, prompts, n, ...) -> Samples``."""

from alignlab.decode.sampling import Samples, generate

__all__ = ["Samples", "generate"]
