"""The data errors: bad input (a `UserError`), so the CLIs print them on one line."""

from errors import UserError


class DataError(UserError):
    """A dataset cannot be served as configured; the message says why, on one line."""


class DatasetNotPreparedError(DataError):
    """A standard TFDS dataset is not prepared (in array_record format) in the data_dir."""
