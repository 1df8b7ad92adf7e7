"""Errors that mean "the user asked for something we cannot do": the CLIs print their
message on one line and exit non-zero; anything else is a bug and keeps its traceback."""


class UserError(ValueError):
    """Bad input: config, data, workdir or flags. The message is the whole story."""


class CheckpointError(UserError):
    """The workdir's checkpoint cannot be used (unreadable, or from another config)."""


class NonFiniteLossError(UserError):
    """Training produced a NaN/Inf; the last good checkpoint is left untouched."""
