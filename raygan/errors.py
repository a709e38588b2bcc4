"""The one kind of error a user sees as a sentence: everything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input from the user (a setting, a file, a data set); the message is one sentence."""


class DataError(UserError):
    """A data set that cannot be found or read."""


class CheckpointError(UserError):
    """A checkpoint or samples file that is missing, corrupt, or of the wrong kind."""


class QualityError(UserError):
    """Sample-quality measures asked for where they cannot be computed (a data set without labels)."""
