"""Errors a user can cause. The CLI turns each into one line and exit code 2."""


class RouterError(Exception):
    """Base class: a problem with the user's input, configuration or artifacts."""

    exit_code = 2


class ConfigError(RouterError):
    """A configuration file or override is wrong (unknown key, bad value)."""


class DataError(RouterError):
    """A structural problem with an input file: unreadable, missing column, wrong type."""


class ArtifactError(RouterError):
    """A stored artifact (features, model) does not match what it claims or what is asked of it."""


class StorageError(RouterError):
    """Object storage stayed unreachable through every retry."""
