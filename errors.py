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


class DamagedCheckpointError(CheckpointError):
    """A checkpoint cannot be read, or reads back other bits than were saved (its digests
    differ): it is left as it is. `step` names it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class NonFiniteLossError(UserError):
    """Training produced a NaN/Inf; the last good checkpoint is left untouched."""


class NonFiniteStateError(NonFiniteLossError):
    """The train state about to be saved holds a NaN/Inf: it was not saved."""


class SaveFailedError(UserError):
    """A checkpoint could not be written (a full disk, a lost mount): the run stops at the
    next step boundary, its temporary folder removed."""


class WorkdirBusyError(UserError):
    """Another train.py holds the workdir's lock."""
