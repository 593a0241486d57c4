"""The errors parcourse raises on bad input, each with a message that says what to change."""


class ConfigError(ValueError):
    """A training option is invalid; the message names the option and what to change."""


class MissingDependencyError(ImportError):
    """An optional dependency (Horovod, Triton, CUDA) is missing; the message says how to
    install it or what to use instead."""


class CheckpointError(ConfigError):
    """A file given as a checkpoint is not one parcourse can resume from (chapter 5); the
    message names the file and what is wrong with it. Nothing in the file was run."""


class DataUnavailableError(ConfigError):
    """A data set cannot be loaded (no network for a download, a missing file); the
    message says where it looked and what to use instead."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stopped at that step (the errors appendix,
    "Runs that fail while training"). ``rank`` reported it (every worker sees the same
    global loss, so the lowest rank reports); ``step`` counts from 1."""

    def __init__(self, loss: float, step: int, steps: int, rank: int, lr: float):
        super().__init__(
            f"the loss became {loss} at step {step} of {steps} (rank {rank}): training "
            f"diverged, so it was stopped; lower --lr (it is {lr:g}) and start again")
        self.loss, self.step, self.steps, self.rank, self.lr = loss, step, steps, rank, lr

    def __reduce__(self):  # workers send it to the launcher as it is
        return type(self), (self.loss, self.step, self.steps, self.rank, self.lr)
