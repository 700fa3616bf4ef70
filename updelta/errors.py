"""User-facing errors: one line that names the file (and tensor) and the fix.

The CLI prints `updelta: <message>` and exits 2 for any `UpdeltaError`; no traceback.
"""


class UpdeltaError(Exception):
    """Bad input or options: the message is one line, names the file and says what to do."""


class CheckpointError(UpdeltaError):
    """A checkpoint path that cannot be read as weights."""


class PairingError(UpdeltaError):
    """Tensors of two checkpoints that cannot be compared."""


class UpdeltaWarning(UserWarning):
    """Something the numbers depend on (e.g. NaN/Inf left out); also listed in `Result.warnings`."""


class EvaluationError(UpdeltaError):
    """An evaluation file (eval.json) that does not fit the runs it is given for."""
