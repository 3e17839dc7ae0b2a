"""Reading records from .jsonl, .json, .csv, .parquet files and `datasets` folders saved to disk.

`read_records` yields ``(location, record)`` pairs, where location names the line (text formats) or
row (tabular formats) of the record, so that every later error can point the user at it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignlab.errors import DataError

SUPPORTED = ".jsonl, .json, .csv, .parquet, or a folder written by datasets' save_to_disk"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"the key '{key}' appears twice in one object")
    return dict(pairs)


def _text_only(value: Any) -> None:
    """Raise ValueError for a string holding a lone surrogate (valid JSON, not text: ``"\\ud800"``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone surrogate escape (such as \\ud800), which is not text") from None
    elif isinstance(value, dict):
        for item in value.values():
            _text_only(item)
    elif isinstance(value, list):
        for item in value:
            _text_only(item)


def parse_json(text: str) -> Any:
    """JSON that is text all through: duplicate keys, lone surrogates and too-deep nesting raise ValueError."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    _text_only(data)
    return data


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            location = f"line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"not valid UTF-8 ({error.reason} at byte {error.start})",
                                source=str(path), location=location) from None
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark, as some editors write
            if not text.strip():
                continue
            try:
                record = parse_json(text)
            except json.JSONDecodeError as error:
                raise DataError(f"not valid JSON: {error.msg} (column {error.colno})",
                                source=str(path), location=location) from None
            except ValueError as error:
                raise DataError(f"not usable JSON: {error}", source=str(path), location=location) from None
            yield location, record


def _json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = parse_json(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DataError(f"not valid UTF-8 ({error.reason} at byte {error.start})", source=str(path)) from None
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error.msg}", source=str(path), location=f"line {error.lineno}") from None
    except ValueError as error:
        raise DataError(f"not usable JSON: {error}", source=str(path)) from None
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of records, got {type(data).__name__}", source=str(path))
    for number, record in enumerate(data, start=1):
        yield f"record {number}", record


def _utf8_or_located_error(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 (e.g. a Latin-1 export) raise a DataError naming their line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # -sig: Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"not valid UTF-8 ({error.reason} at byte {error.start}); save the file as UTF-8",
                        source=str(path), location=f"line {line}") from None


CSV_FIELD_LIMIT = 2**31 - 1
"""Characters a CSV cell may hold: as many as a JSONL string (Python's csv module stops at 131,072 by default);
text beyond what training keeps is cut later, and counted."""


def _csv(path: Path) -> Iterator[tuple[str, Any]]:
    text = _utf8_or_located_error(path)
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    try:
        with io.StringIO(text, newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise DataError(f"the header names column '{repeated[0]}' more than once", source=str(path),
                                location="line 1")
            for record in reader:
                location = f"line {reader.line_num}"
                if None in record:
                    raise DataError("more cells than header columns", source=str(path), location=location)
                missing = [key for key, value in record.items() if value is None]
                if missing:
                    raise DataError("fewer cells than header columns", source=str(path), location=location,
                                    field=missing[0])
                yield location, record
    except csv.Error as error:
        raise DataError(f"not valid CSV: {error}", source=str(path)) from None


def _rows(rows: list[dict[str, Any]]) -> Iterator[tuple[str, Any]]:
    for number, record in enumerate(rows, start=1):
        yield f"row {number}", record


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a broken file
        raise DataError(f"not a readable parquet file: {error}", source=str(path)) from None
    yield from _rows(table.to_pylist())


DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files `datasets`' save_to_disk writes: a folder with none of them holds no saved dataset."""


def _saved_dataset(path: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    if not any(path.iterdir()):
        raise DataError("an empty folder; name a data file or a folder written by datasets' save_to_disk",
                        source=str(path))
    if not any((path / marker).is_file() for marker in DATASET_MARKERS):
        raise DataError(f"a folder without {' or '.join(DATASET_MARKERS)}, so not one written by datasets' "
                        f"save_to_disk; name a data file ({SUPPORTED})", source=str(path))
    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError or its own errors
        raise DataError(f"not a dataset saved with save_to_disk: {error}", source=str(path)) from None
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise DataError(f"a DatasetDict without a 'train' split (splits: {', '.join(dataset)}); "
                            "point to one split's folder", source=str(path))
        dataset = dataset["train"]
    yield from _rows(dataset.to_list())


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)`` for every record in `path`; unreadable input raises DataError."""
    path = Path(path)
    if path.is_dir():
        return _saved_dataset(path)
    if not path.exists():
        raise DataError("file not found", source=str(path))
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type '{path.suffix}'; use {SUPPORTED}", source=str(path))
    return reader(path)
