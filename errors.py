"""Errors that mean "the user asked for something we cannot do": the CLIs print their
message on one line and exit non-zero; anything else is a bug and keeps its traceback."""


class UserError(ValueError):
    """Bad input: config, data, workdir or flags. The message is the whole story."""


class RequestError(UserError):
    """What was asked is malformed or cannot be done as asked: a flag's value, flags that
    do not go together, a prompt or a sampling request the model cannot serve. The CLIs
    exit 2 for it (as for a flag they cannot parse), before anything is written."""


class CheckpointError(UserError):
    """The workdir's checkpoint cannot be used (unreadable, or from another config)."""


class NonFiniteLossError(UserError):
    """Training produced a NaN/Inf; the last good checkpoint is left untouched."""
