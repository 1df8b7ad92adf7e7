"""The samples file now lives in `data.samples_file` (training/ reads it too); these names
stay importable from here."""

from data.samples_file import Samples, load_samples, save_samples

__all__ = ["Samples", "load_samples", "save_samples"]
