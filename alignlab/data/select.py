"""Choosing a subset of a data pool: ZIP-FIT's compression alignment to a target set, top-K and random selection,
and the text of a record that selection methods score.

ZIP-FIT (Obbad, Miranda, Mlauzi et al., "ZIP-FIT: Embedding-Free Data Selection via Compression-Based Alignment";
official code: stair-lab/ZIP-FIT, ``zip_fit/zipfit.py``) scores every pool text x_i by its normalized compression
distance to the target examples t_1..t_n and keeps the top K::

    NCD(x, y)    = (C(x ⊕ y) − min(C(x), C(y))) / max(C(x), C(y))
    alignment(x) = 1 − mean_j NCD(x, t_j)

where C is the compressed length in bytes and ⊕ plain concatenation, source first. The paper compresses with gzip
(our default); the official package defaults to lz4 at level 0 (``compressor="lz4"``, needs the lz4 package).
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import importlib.util
import lzma
import random
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from alignlab.data.formats import plain_text
from alignlab.errors import ConfigError, DataError

COMPRESSORS = ("gzip", "lz4", "zlib", "bz2", "lzma")
"""The compressors `ncd` knows: gzip (the paper's, the default), lz4 (the official package's default, level 0) and
the standard library's zlib, bz2 and lzma."""

METHODS = ("zip_fit", "deita", "random")
"""The selection methods of ``alignlab data select``."""

TEXT_FIELDS = "text, messages, prompt with completion or chosen, or prompt alone"
"""What `record_text` reads, in that order (for error messages)."""


def _lz4(data: bytes) -> bytes:
    return importlib.import_module("lz4.frame").compress(data, compression_level=0)


_COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "lz4": _lz4,
    "zlib": zlib.compress,
    "bz2": bz2.compress,
    "lzma": lzma.compress,
}


def check_compressor(compressor: str) -> None:
    """One line if `compressor` is unknown, or is lz4 and the lz4 package is not installed."""
    if compressor not in COMPRESSORS:
        raise ConfigError(f"compressor '{compressor}' is not one of {', '.join(COMPRESSORS)}")
    if compressor == "lz4" and importlib.util.find_spec("lz4") is None:
        raise ConfigError("compressor 'lz4' needs the lz4 package: pip install lz4 (or use --compressor gzip)")


def compressed_size(text: str, compressor: str = "gzip") -> int:
    """C(text): the length in bytes of `text` (UTF-8) compressed with `compressor`."""
    check_compressor(compressor)
    return len(_COMPRESS[compressor](text.encode("utf-8")))


def _ncd_from_sizes(joint: int, size_x: int, size_y: int) -> float:
    largest = max(size_x, size_y)
    return (joint - min(size_x, size_y)) / largest if largest else 0.0


def ncd(x: str, y: str, compressor: str = "gzip") -> float:
    """Normalized compression distance (ZIP-FIT, Obbad et al.; official stair-lab/ZIP-FIT):
    NCD(x, y) = (C(x ⊕ y) − min(C(x), C(y))) / max(C(x), C(y)), C the compressed byte length, ⊕ plain
    concatenation with `x` first. Near 0 for x = y (not exactly: the compressor's header and the back-reference
    to the repeat cost a few bytes), about 1 for unrelated texts, a little above 1 at most."""
    check_compressor(compressor)
    size = lambda text: len(_COMPRESS[compressor](text.encode("utf-8")))  # noqa: E731
    return _ncd_from_sizes(size(x + y), size(x), size(y))


def zip_fit_scores(sources: Sequence[str], targets: Sequence[str], compressor: str = "gzip",
                   progress: bool = False) -> list[float]:
    """ZIP-FIT alignment of each source text to the target set (Obbad et al.):
    alignment(x_i) = 1 − mean_j NCD(x_i, t_j). Higher is closer to the targets. Every text's own compressed size
    is computed once; the pairs cost N·n compressions of x_i ⊕ t_j."""
    check_compressor(compressor)
    if not targets:
        raise ConfigError("ZIP-FIT needs at least one target example")
    compress = _COMPRESS[compressor]
    target_bytes = [target.encode("utf-8") for target in targets]
    target_sizes = [len(compress(data)) for data in target_bytes]
    scores = []
    for source in tqdm(sources, desc="ZIP-FIT", unit="text", disable=not progress):
        data = source.encode("utf-8")
        size = len(compress(data))
        distances = [_ncd_from_sizes(len(compress(data + target)), size, target_size)
                     for target, target_size in zip(target_bytes, target_sizes, strict=True)]
        scores.append(1.0 - sum(distances) / len(distances))
    return scores


def check_k(k: int, n: int) -> None:
    """One line unless 1 ≤ k ≤ n (n: the records in the pool)."""
    if not 1 <= k <= n:
        raise ConfigError(f"-k must be between 1 and the number of records ({n}), got {k}")


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """The indices of the `k` highest scores, best first; equal scores keep the lower index first, so the result
    is the same on every run."""
    check_k(k, len(scores))
    return sorted(range(len(scores)), key=lambda index: (-scores[index], index))[:k]


def random_selection(n: int, k: int, seed: int = 0) -> list[int]:
    """`k` of the indices 0..n−1 drawn uniformly without replacement with `seed`, in ascending order."""
    check_k(k, n)
    return sorted(random.Random(seed).sample(range(n), k))


def _field_text(value: Any, name: str, source: str | None, location: str | None) -> str:
    """A field that is a string or a list of {role, content} messages, as plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, dict) and isinstance(item.get("content"), str)
                                       for item in value):
        return plain_text(value)
    raise DataError(f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}",
                    source=source, location=location, field=name)


def record_text(record: Any, source: str | None = None, location: str | None = None) -> str:
    """The text a selection method scores: ``text``; or ``messages`` (contents joined by new lines); or
    ``prompt`` followed by ``completion`` (SFT) or ``chosen`` (paired), on a new line; or ``prompt`` alone.
    A record with none of these raises DataError naming `source` (the file) and `location` (its line)."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", source=source, location=location)
    for name in ("text", "messages"):
        if name in record:
            return _field_text(record[name], name, source, location)
    parts = [(name, record[name]) for name in ("prompt", "completion") if name in record]
    if "completion" not in record and "chosen" in record:
        parts.append(("chosen", record["chosen"]))
    if not parts:
        raise DataError(f"no text field found (fields: {', '.join(map(str, record)) or 'none'}); expected "
                        f"{TEXT_FIELDS}", source=source, location=location)
    return "\n".join(text for name, value in parts if (text := _field_text(value, name, source, location)))


def instruction_and_response(record: dict, source: str | None = None, location: str | None = None
                             ) -> tuple[str, str]:
    """The (instruction, response) Deita scores separately: ``prompt`` and ``completion`` or ``chosen``; of
    ``messages``, all but the last turn and the last; a bare ``text`` or ``prompt`` is an instruction without a
    response. Read as `record_text` reads them (same errors)."""
    if "messages" in record and isinstance(record["messages"], list) and record["messages"]:
        turns = record["messages"]
        return (_field_text(turns[:-1], "messages", source, location) if len(turns) > 1 else "",
                _field_text(turns[-1:], "messages", source, location))
    if "prompt" in record:
        answer = "completion" if "completion" in record else "chosen" if "chosen" in record else None
        return (_field_text(record["prompt"], "prompt", source, location),
                _field_text(record[answer], answer, source, location) if answer else "")
    return record_text(record, source, location), ""
