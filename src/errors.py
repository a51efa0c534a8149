"""The errors a command line prints as one line before any work starts; standard library only, so any layer (the
data package, the config checks, the tools) raises them without importing another."""


class ConfigError(ValueError):
    """A bad run configuration, reported in one line before any work starts."""


class DataError(ConfigError):
    """A missing, damaged or foreign dataset file, or a subset larger than the data: one line with the fix."""
