"""The errors parcourse raises on bad input, each with a message that says what to change."""


class ConfigError(ValueError):
    """A training option is invalid; the message names the option and what to change."""


class MissingDependencyError(ImportError):
    """An optional dependency (Horovod, Triton, CUDA) is missing; the message says how to
    install it or what to use instead."""
