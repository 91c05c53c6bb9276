"""dbtutor's exceptions: each carries one line that names the file or key at fault and what to do."""


class DBTutorError(Exception):
    """Base class; the command line prints its message as one line and exits with status 2."""


class ConfigError(DBTutorError):
    """A config key or value is wrong."""


class DataError(DBTutorError):
    """An image folder or file cannot be used."""


class TrainingError(DBTutorError):
    """Training cannot go on (for example a NaN loss); the last good checkpoint is kept."""


class LockedError(DBTutorError):
    """A folder is in use by another run (its lock is held); the message names the folder and that process."""
