"""The errors a user can cause. The CLI prints each as one line and exits non-zero."""


class MnistBenchError(Exception):
    """Base class: anything raised as this reaches the user as `mnist-bench: error: <message>`."""

    exit_code = 2


class UsageError(MnistBenchError):
    """An unknown name, an impossible value or an impossible combination of flags."""


class DeviceError(MnistBenchError):
    """A device was asked for that this machine does not have."""


class DataError(MnistBenchError):
    """A dataset is missing, cannot be downloaded, or its files are corrupt."""


class CheckpointError(MnistBenchError):
    """A weights file or run record cannot be read back."""


class RecordError(CheckpointError):
    """A run record is not valid JSON, or not the shape of a run record (see records.py)."""


class RunExists(MnistBenchError):
    """A finished run of the same recipe is already stored; it is kept unless replacing it was asked for."""


class WriteError(MnistBenchError):
    """A result, report or checkpoint could not be written (full disk, no permission, a file in the way)."""


class TrainingDiverged(MnistBenchError):
    """The loss became NaN or infinite, or rose above its first epoch's; nothing from the run is written."""

    exit_code = 3


class Interrupted(MnistBenchError):
    """Ctrl-C or SIGTERM reached a command that had started other processes; they were ended and
    nothing unfinished was written. Exit 130 for SIGINT, 143 for SIGTERM (128 + the signal)."""

    def __init__(self, message: str, signal_number: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number
