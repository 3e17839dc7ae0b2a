"""Reading records from .jsonl, .json (either gzipped too), .csv, .parquet files, `datasets` folders saved to
disk, and datasets on the Hugging Face hub.

`read_records` yields ``(location, record)`` pairs, where location names the line (text formats) or
row (tabular formats) of the record, so that every later error can point the user at it. It reads a path or a
`DataSource` (a path or hub id with its split, subset and column renames).

A name that is not a local file or folder, and looks like a hub id (``name`` or ``owner/name``, without a data
file's extension), is loaded with `datasets.load_dataset` (its cache honoured). As for models, a connection to the
hub is tried for a few seconds first: without one only the cache is searched, and a dataset not found there raises
one clear line instead of a hub traceback.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from alignlab.errors import DataError
from alignlab.hub import OFFLINE_VARIABLES, hub_endpoint, hub_reachable, is_hub_id, offline_mode_set, offline_note

SUPPORTED = (".jsonl, .json (or .jsonl.gz, .json.gz), .csv, .parquet, a folder written by datasets' save_to_disk, "
             "or a hub dataset id")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".gz")
"""Extensions of data files: a missing path with one of them is a missing file, never a hub id."""


@dataclass(frozen=True)
class DataSource:
    """Where records come from and how to read them."""

    path: str
    """A local file or folder, or a hub dataset id."""
    split: str = "train"
    """The split of a hub dataset or of a saved DatasetDict folder (slices such as ``train[:1000]`` work on the
    hub); data files have none."""
    subset: str | None = None
    """A hub dataset's subset (its configuration name), when it has several."""
    columns: tuple[tuple[str, str], ...] = ()
    """(alignlab's field name, the dataset's column name) pairs: each record's column is renamed before
    validation."""
    hh_format: bool = False
    """Paired records: turn ``\\n\\nHuman:`` / ``\\n\\nAssistant:`` transcripts into chat messages
    (`alignlab.data.transcripts`)."""

    @property
    def on_hub(self) -> bool:
        """Whether `path` names a hub dataset: not a local file or folder, and shaped like a hub id."""
        return is_hub_dataset_id(self.path)

    def __str__(self) -> str:
        """The name errors and reports give: the path, or the hub id with its subset and split."""
        if not self.on_hub:
            return self.path
        return f"{self.path} [{', '.join(filter(None, (self.subset, self.split)))}]"


Source = str | Path | DataSource
"""What the readers accept: a path (read with the defaults of `DataSource`) or a `DataSource`."""


def as_source(source: Source) -> DataSource:
    """`source` as a `DataSource` (a path gets the defaults: split train, no renames)."""
    return source if isinstance(source, DataSource) else DataSource(str(source))


def is_hub_dataset_id(name: str) -> bool:
    """Whether `name` should be looked up on the hub: no local file or folder has it, it does not start like a path
    (``.``, ``/``, ``~``) or end like a data file, and it is a valid hub id."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    return not name.lower().endswith(DATA_SUFFIXES) and is_hub_id(name)


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


def _gzipped(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _open_bytes(path: Path) -> BinaryIO:
    """`path` opened for reading bytes, decompressed when it is gzipped."""
    return gzip.open(path, "rb") if _gzipped(path) else path.open("rb")


@contextlib.contextmanager
def _readable_gzip(path: Path) -> Iterator[None]:
    """A gzipped file that is damaged or cut short raises DataError instead of gzip's exceptions."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, OSError) as error:
        if not _gzipped(path):
            raise
        raise DataError(f"not a readable gzip file ({error}); copy or download it again", source=str(path)) from None


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with _readable_gzip(path), _open_bytes(path) as handle:
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
    with _readable_gzip(path), _open_bytes(path) as handle:
        raw = handle.read()
    try:
        data = parse_json(raw.decode("utf-8-sig"))
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


def _saved_dataset(path: Path, split: str = "train") -> Iterator[tuple[str, Any]]:
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
        if split not in dataset:
            raise DataError(f"a DatasetDict without a '{split}' split (splits: {', '.join(dataset)}); "
                            "set data.split to one of them, or point to one split's folder", source=str(path))
        dataset = dataset[split]
    yield from _rows(dataset.to_list())


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Within the block `datasets` searches only its cache when `offline` (the hub did not answer), so that a
    machine without a connection gets its answer at once instead of after the hub client's retries."""
    import datasets
    import huggingface_hub.constants

    if not offline:
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _hub_not_found(source: DataSource, error: Exception, probed_offline: bool) -> DataError:
    first_line = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    offline = offline_note(probed_offline, OFFLINE_VARIABLES)
    return DataError(f"not a local file or folder, and no dataset of that id was found in the Hugging Face cache or "
                     f"on the hub.{offline} ({type(error).__name__}: {first_line})", source=source.path)


@functools.lru_cache(maxsize=4)
def _hub_split(path: str, subset: str | None, split: str):
    """One split of a hub dataset as a `datasets.Dataset` (memory-mapped from the cache; kept for the next read,
    as format detection reads a source twice)."""
    import datasets

    source = DataSource(path, split, subset)
    offline = offline_mode_set(OFFLINE_VARIABLES) or not hub_reachable(hub_endpoint())
    try:
        with _hub_offline(offline):
            return datasets.load_dataset(path, subset, split=split)
    except ValueError as error:  # an unknown split or subset: the dataset itself was found
        first_line = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise DataError(f"cannot read split '{split}'{f' of subset {subset!r}' if subset else ''}: {first_line}",
                        source=str(source)) from None
    except (OSError, datasets.exceptions.DatasetNotFoundError) as error:  # ConnectionError is an OSError
        raise _hub_not_found(source, error, offline) from None


def _hub_dataset(source: DataSource) -> Iterator[tuple[str, Any]]:
    dataset = _hub_split(source.path, source.subset, source.split)  # now: a missing dataset raises at once
    return ((f"row {number}", record) for number, record in enumerate(dataset, start=1))


def _renamed(records: Iterator[tuple[str, Any]], columns: tuple[tuple[str, str], ...],
             source: str) -> Iterator[tuple[str, Any]]:
    """Each record with the dataset's columns renamed to alignlab's field names (``columns``: (ours, theirs)
    pairs); a renamed column that a record lacks raises DataError naming that column. A renamed column replaces a
    column that already has alignlab's name."""
    theirs = {column for _, column in columns}
    for location, record in records:
        if isinstance(record, dict):
            for ours, column in columns:
                if column not in record:
                    raise DataError(f"missing: data.columns reads {ours} from this column (columns present: "
                                    f"{', '.join(record) or 'none'})", source=source, location=location, field=column)
            kept = {key: value for key, value in record.items() if key not in theirs}
            record = kept | {ours: record[column] for ours, column in columns}
        yield location, record


def _file_type(path: Path) -> str:
    """``.jsonl``, or ``.jsonl.gz`` for a gzipped file: the extension that picks a reader."""
    suffix = path.suffix.lower()
    return "".join(path.suffixes[-2:]).lower() if suffix == ".gz" else suffix


READERS = {".jsonl": _jsonl, ".jsonl.gz": _jsonl, ".json": _json, ".json.gz": _json, ".csv": _csv,
           ".parquet": _parquet}


def _read(source: DataSource) -> Iterator[tuple[str, Any]]:
    path = Path(source.path)
    if path.is_dir():
        return _saved_dataset(path, source.split)
    if source.on_hub:
        return _hub_dataset(source)
    if not path.exists():
        raise DataError("file not found", source=str(path))
    reader = READERS.get(_file_type(path))
    if reader is None:
        raise DataError(f"unsupported file type '{_file_type(path)}'; use {SUPPORTED}", source=str(path))
    return reader(path)


def read_records(source: Source) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)`` for every record of `source` (a path, or a `DataSource`: hub ids, splits,
    column renames), renamed as `source.columns` says; unreadable input raises DataError."""
    source = as_source(source)
    records = _read(source)
    return _renamed(records, source.columns, str(source)) if source.columns else records


WRITTEN_TYPES = (".jsonl", ".json", ".csv", ".parquet")
"""The file types `write_records` writes; any other source (gzipped, a saved dataset, a hub id) is written as
JSONL."""


def same_type_name(source: Source, stem: str) -> str:
    """``stem`` with the suffix of `source`'s file type where `write_records` writes it (``selected.csv`` for a
    CSV pool), else ``stem.jsonl``."""
    path = Path(str(as_source(source)))
    suffix = _file_type(path) if path.is_file() else ""
    return stem + (suffix if suffix in WRITTEN_TYPES else ".jsonl")


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """`records` to `path` in the type its suffix names, so that `read_records` reads them back: JSONL, a JSON
    list, CSV (the header from the records' keys in order of appearance; records read from a CSV hold strings,
    so they come back as they were) or parquet."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    elif suffix == ".csv":
        columns = list(dict.fromkeys(key for record in records for key in record))
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
    elif suffix == ".json":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
                        encoding="utf-8")

