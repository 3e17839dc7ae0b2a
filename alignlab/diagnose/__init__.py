"""Diagnostics: what an alignment method did to a model (best-of-N KL, …)."""
