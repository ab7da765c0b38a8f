"""Errors a user can cause.

Everything a user can get wrong (a config value, a CLI flag, a missing folder, a checkpoint that does
not fit) is raised as :class:`UserError` with a message that names the field or file. The CLI turns it
into one line on stderr and exit code 2; library callers can catch it.
"""

from __future__ import annotations

import warnings


class UserError(Exception):
    """A problem with the user's input: config, flags, paths, data or checkpoints."""


class ConfigError(UserError):
    """A config field is unknown, of the wrong type or out of range. The message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.detail = message
        super().__init__(f"config field '{field}': {message}")

    def __reduce__(self):
        # An exception unpickles as ``cls(*args)``, and args here is the one formatted message: rebuilt from
        # the fields instead, a config error raised on a Ray worker (a Ray Train job, a labeling actor)
        # reaches the driver as itself, and the CLI prints its one line.
        return type(self), (self.field, self.detail)


class ImageDecodeError(Exception):
    """One image could not be read. Callers skip it, count it and list it; a run never stops for it."""

    def __init__(self, image_id: str, reason: str):
        self.image_id = image_id
        self.reason = reason
        super().__init__(f"{image_id}: {reason}")

    def __reduce__(self):
        return type(self), (self.image_id, self.reason)   # crosses a Ray worker's boundary (see ConfigError)


class NoisyStudentWarning(UserWarning):
    """Something a user would want to know that does not stop the run: a training budget too small to
    learn, no pseudo-label kept, a teacher near chance, a student kept from teaching. Raised with
    :func:`warnings.warn`, so programs can filter or record them; the CLI prints each as one line."""


class BudgetWarning(NoisyStudentWarning):
    """A training job is planned with fewer optimizer steps than its ``warn_below_steps``."""


class PseudoLabelWarning(NoisyStudentWarning):
    """Selection kept no pseudo-label, or none of some class; or the labeling teacher is near chance."""


class PromotionWarning(NoisyStudentWarning):
    """A student did worse than its teacher on validation and does not teach the next generation."""


def show_warnings_as_lines() -> None:
    """Print every :class:`NoisyStudentWarning` as one ``warning: ...`` line through ``tqdm.write`` (so a
    progress bar is not torn), other warnings as Python does. Installed by the CLI and the benchmarks;
    idempotent."""
    current = warnings.showwarning
    if getattr(current, "_noisystudent", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, NoisyStudentWarning):
            import sys

            from tqdm.auto import tqdm

            tqdm.write(f"warning: {message}", file=file or sys.stderr)
            return
        current(message, category, filename, lineno, file, line)

    show._noisystudent = True  # type: ignore[attr-defined]
    warnings.showwarning = show
