"""The errors parcourse raises on bad input, each with a message that says what to change."""


class ConfigError(ValueError):
    """A training option is invalid; the message names the option and what to change."""


class MissingDependencyError(ImportError):
    """An optional dependency (Horovod, Triton, CUDA) is missing; the message says how to
    install it or what to use instead."""


class CheckpointError(ConfigError):
    """A file given as a checkpoint is not one parcourse can resume from (chapter 5); the
    message names the file and what is wrong with it. Nothing in the file was run."""
