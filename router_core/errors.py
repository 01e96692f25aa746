"""Errors a user can cause, and the exit codes of the command line (the one place they are set).

0 success; 1 some input rows were rejected (listed in a rejects table, the rest done); 2 bad input
or configuration (one line naming the file, row or field); 3 the job could not finish (storage
unreachable through every retry, training failed, a submitted job failed); 130 interrupted.
"""

OK, REJECTED, BAD_INPUT, FAILED, INTERRUPTED = 0, 1, 2, 3, 130
# The last line a stage that rejected rows prints (stderr): a bare exit 1 is also what a crashed
# interpreter gives, so ``submit`` passes 1 through only after this line.
REJECTED_LINE = f"done, with rejected rows (exit {REJECTED}; they are in the rejects table)"


class RouterError(Exception):
    """Base class: a problem with the user's input, configuration or artifacts."""

    exit_code = BAD_INPUT


class ConfigError(RouterError):
    """A configuration file or override is wrong (unknown key, bad value)."""


class DataError(RouterError):
    """A structural problem with an input file: unreadable, missing column, wrong type."""


class ArtifactError(RouterError):
    """A stored artifact (features, model) does not match what it claims or what is asked of it."""


class JobFailed(RouterError):
    """The job could not finish for a reason outside the input: nothing wrong was written."""

    exit_code = FAILED


class StorageError(JobFailed):
    """Object storage stayed unreachable through every retry."""


class TrainingFailed(JobFailed):
    """Ray Train could not finish (workers lost more often than train.max_failures allows)."""
