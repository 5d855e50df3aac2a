"""The one exception hierarchy of agentrt.

Every error carries the data that explains it as attributes (field, value, key path) and a
message that says what to do. Foreign exceptions are translated once, at the boundary where
they enter agentrt (YAML, SQLAlchemy, plugin import, artifact load), and chained with ``from``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence

__all__ = [
    "AgentRTError",
    "ArtifactIntegrityError",
    "BackpressureError",
    "ConfigError",
    "ConfigIssue",
    "InvalidInputError",
    "PluginError",
    "PluginNotFoundError",
    "PolicyError",
    "SchemaOutdatedError",
    "StorageError",
    "TrainingProcessError",
    "UnknownActionError",
    "UnknownDecisionError",
]


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxstring = 200
_SHORT.maxother = 200


class AgentRTError(Exception):
    """Root of every error raised by agentrt."""


class ConfigIssue:
    """One problem found in a configuration: where it is, what is wrong, and the bad value."""

    __slots__ = ("message", "path", "value")

    def __init__(self, path: str, message: str, value: object = None) -> None:
        self.path = path
        self.message = message
        self.value = value

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __repr__(self) -> str:
        return f"ConfigIssue(path={self.path!r}, message={self.message!r}, value={self.value!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigIssue):
            return NotImplemented
        return (self.path, self.message) == (other.path, other.message)

    def __hash__(self) -> int:
        return hash((self.path, self.message))


class ConfigError(AgentRTError, ValueError):
    """A configuration is invalid; ``issues`` lists every problem, one line each.

    Attributes:
        issues: every problem found, each with its key path.
        source: the file the configuration came from, when there was one.
    """

    def __init__(self, issues: Sequence[ConfigIssue], source: str | None = None) -> None:
        self.issues = list(issues)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.issues)
        header = f"{count} configuration problem{'s' if count != 1 else ''}{where}:"
        super().__init__("\n".join([header, *(f"  {issue}" for issue in self.issues)]))

    @property
    def lines(self) -> list[str]:
        """The problems, one ``path: message`` line each."""
        return [str(issue) for issue in self.issues]


class InvalidInputError(AgentRTError, ValueError):
    """An argument of a public call is invalid.

    Attributes:
        field: the name of the offending argument or field.
        value: the offending value (possibly truncated for display).
    """

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        shown = _SHORT.repr(value)  # bounded: a huge or deeply nested value stays printable
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{field}: {problem} (got {shown})")


class UnknownActionError(InvalidInputError):
    """An action is not among the actions offered or configured for the agent."""


class UnknownDecisionError(InvalidInputError):
    """A reward or activation names a decision id that agentrt has never seen."""


class BackpressureError(AgentRTError):
    """The experience buffer is full and ``runtime.backpressure`` is ``error``."""


class StorageError(AgentRTError):
    """The database could not be reached or refused an operation.

    Attributes:
        transient: True when retrying may succeed (a lost connection, a lock timeout), False
            when it cannot (a constraint violation, invalid SQL).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class SchemaOutdatedError(StorageError):
    """The database schema is older than this version of agentrt.

    Attributes:
        current: the revision stored in the database (None for an empty database).
        head: the revision this version of agentrt expects.
    """

    def __init__(self, current: str | None, head: str, url: str) -> None:
        self.current = current
        self.head = head
        self.url = url
        have = f"revision {current}" if current else "no agentrt schema"
        super().__init__(
            f"database {url} has {have} but agentrt needs revision {head}: "
            "run `agentrt db upgrade` (or set runtime.auto_migrate: true)"
        )


class PluginError(AgentRTError):
    """A plugin could not be imported, or is not a valid plugin of its kind."""


class PluginNotFoundError(PluginError, LookupError):
    """No plugin of the requested kind has the requested name.

    Attributes:
        kind: the plugin kind that was searched.
        name: the name that was not found.
        available: the names of that kind that are available.
    """

    def __init__(self, kind: str, name: str, available: Sequence[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = list(available)
        listing = ", ".join(self.available) if self.available else "none"
        super().__init__(
            f"no {kind} plugin named {name!r}; available {kind} plugins: {listing}. "
            "Third-party plugins must be enabled under `plugins.enable` in the configuration."
        )


class PolicyError(AgentRTError):
    """A policy could not be trained, loaded or evaluated."""


class ArtifactIntegrityError(PolicyError):
    """A stored policy artifact failed its checksum or metadata verification."""


class TrainingProcessError(PolicyError):
    """A learning stage failed in its training process (``runtime.training: process``); the
    message carries the child's exception type and message, its log has the traceback."""
