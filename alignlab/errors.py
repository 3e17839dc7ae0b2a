"""The errors alignlab raises for problems a user can fix: bad data, bad configs, missing models."""

from __future__ import annotations


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


class ConfigError(AlignlabError, ValueError):
    """A config that cannot run: unknown key, wrong type, impossible value."""


class ModelNotFoundError(AlignlabError, FileNotFoundError):
    """A model that is neither a local folder nor reachable on the hub."""


class CheckpointError(AlignlabError):
    """No checkpoint a run can continue from: all damaged, or missing a part the config needs."""


class TrainingDivergedError(AlignlabError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""
