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


class TrainingDiverged(MnistBenchError):
    """The loss became NaN or infinite; nothing from the run is written."""

    exit_code = 3
