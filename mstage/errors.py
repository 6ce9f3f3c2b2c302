"""Errors users can act on: each says what was expected, what was found, and what to run next.

The library raises these and never prints or exits; only `mstage.cli` turns them into one
red line on stderr and an exit code (1 failure, 2 bad usage or input).
"""


class MstageError(Exception):
    """A failure mstage explains in one line; exit code 1."""

    exit_code = 1


class UsageError(MstageError):
    """Bad options, values or input data; exit code 2."""

    exit_code = 2


class InputError(UsageError):
    """Input data that cannot be used as given (missing columns, bad ids, empty tables)."""


class ConfigError(UsageError):
    """An invalid mstage.toml or option value."""


class ArtifactMissing(UsageError):
    """A command needs an artifact that an earlier command has not built yet."""


class ArtifactDamaged(MstageError):
    """An artifact's file is missing or changed since it was published."""


class ManifestCorrupt(MstageError):
    """manifest.json cannot be read; `mstage status --repair` rebuilds it."""


class WorkspaceLocked(MstageError):
    """Another mstage command is writing the same workspace."""


class TrainingDiverged(MstageError):
    """The loss became NaN or infinite; the previous artifact is kept."""


class ServerError(MstageError):
    """The Triton server could not be started, reached, or answered an error."""


class QualityGateFailed(MstageError):
    """A retrained model did worse than its baseline on validation; the previous artifact is
    kept (`--force` publishes anyway)."""
