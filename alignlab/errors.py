"""The errors alignlab raises for problems a user can fix: bad data, bad configs, missing models."""

from __future__ import annotations

import re


class AlignlabError(Exception):
    """Base class of the errors that carry a message meant for the user."""


class DataError(AlignlabError, ValueError):
    """A record that cannot be used, located by file, line (or row) and field.

    `str(error)` reads ``FILE:LOCATION: field 'FIELD': MESSAGE``, so the user can open the file at
    the bad record.
    """

    def __init__(
        self, message: str, *, source: str | None = None, location: str | None = None, field: str | None = None
    ) -> None:
        self.message, self.source, self.location, self.field = message, source, location, field
        where = ":".join(part for part in (source, location) if part)
        prefix = f"{where}: " if where else ""
        field_part = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{field_part}{message}")

    @classmethod
    def at(cls, where: str | None, message: str, field: str | None = None) -> DataError:
        """A DataError at a record's full location ``FILE:line N`` (or ``row N``, ``record N``), split into source
        and location so both read as everywhere else."""
        match = re.fullmatch(r"(.*):((?:line|row|record) \d+)", where or "")
        if match:
            return cls(message, source=match.group(1), location=match.group(2), field=field)
        return cls(message, location=where, field=field)


class ConfigError(AlignlabError, ValueError):
    """A config that cannot run: unknown key, wrong type, impossible value."""


class ModelNotFoundError(AlignlabError, FileNotFoundError):
    """A model that is neither a local folder nor reachable on the hub."""


class CheckpointError(AlignlabError):
    """No checkpoint a run can continue from: all damaged, or missing a part the config needs."""


class TrainingDivergedError(AlignlabError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""
