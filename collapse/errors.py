"""The two kinds of failure the command line reports in one line, never with a traceback (--debug shows it):
a mistake in what was asked (exit 2), and a run that failed on its own (exit 1)."""


class UserError(ValueError):
    """A mistake in what the user asked for: a bad config key or value, a missing file, a folder of no runs."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class ModelError(UserError):
    pass


class DeviceError(UserError):
    pass


class RunFailure(RuntimeError):
    """A run that started well and failed on its own (e.g. a non-finite loss); its folder says why."""
