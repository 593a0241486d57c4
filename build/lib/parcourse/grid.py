"""The rank grid: which worker holds which part of the model (chapters 2 and 5).

W = R·P·T workers form R replicas of a P-stage pipeline whose stages are each split
over T tensor ranks. Worker ``rank`` is tensor rank ``rank % T`` of stage
``(rank // T) % P`` of replica ``rank // (P·T)``: the T ranks of one stage are
neighbours (tensor parallelism talks on every layer, so it gets the fastest links), then
the stages of one replica, then the replicas. Each worker takes part in three kinds of
groups: its *data-parallel group* (the same stage and tensor rank in every replica, which
all-reduce gradients), its replica's *pipeline* (which pass activations) and its stage's
*tensor group*. Chapter 2's hybrid grid is ``Grid.of(W, stages=2)``; ``dp-pp`` is
``Grid.of(W, stages=P)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Position:
    """Where one worker sits in the grid."""
    replica: int
    stage: int
    tensor: int


@dataclass(frozen=True)
class Grid:
    """``replicas × stages × tensor`` workers (see the module's docstring for the order)."""

    replicas: int
    stages: int = 1
    tensor: int = 1

    @classmethod
    def of(cls, world_size: int, stages: int = 1, tensor: int = 1) -> "Grid":
        """The grid of ``world_size`` workers with ``stages`` × ``tensor`` per replica."""
        per_replica = stages * tensor
        if stages < 1 or tensor < 1 or world_size % per_replica:
            if tensor == 1:
                raise ConfigError(f"--workers {world_size} does not fit --stages {stages} × "
                                  f"replicas: use a multiple of {max(stages, 1)} workers")
            raise ConfigError(f"--workers {world_size} does not fit --stages {stages} × "
                              f"--tensor {tensor} × replicas: use a multiple of "
                              f"{max(per_replica, 1)} workers")
        return cls(world_size // per_replica, stages, tensor)

    @property
    def size(self) -> int:
        return self.replicas * self.stages * self.tensor

    def position(self, rank: int) -> Position:
        """The replica, stage and tensor rank of worker ``rank``."""
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} is outside a grid of {self.size} workers")
        replica, rest = divmod(rank, self.stages * self.tensor)
        stage, tensor = divmod(rest, self.tensor)
        return Position(replica, stage, tensor)

    def rank(self, replica: int, stage: int, tensor: int = 0) -> int:
        """The worker at ``(replica, stage, tensor)``."""
        return (replica * self.stages + stage) * self.tensor + tensor

    def data_parallel_ranks(self, stage: int, tensor: int = 0) -> list[int]:
        """The workers that hold the same part in every replica."""
        return [self.rank(r, stage, tensor) for r in range(self.replicas)]

    def pipeline_ranks(self, replica: int, tensor: int = 0) -> list[int]:
        """The stages of one replica, in order."""
        return [self.rank(replica, s, tensor) for s in range(self.stages)]

    def tensor_ranks(self, replica: int, stage: int) -> list[int]:
        """The tensor ranks of one stage of one replica."""
        return [self.rank(replica, stage, t) for t in range(self.tensor)]

    def data_parallel_groups(self) -> dict[tuple[int, int], object]:
        """``{(stage, tensor): process group}`` of the data-parallel groups. Every worker
        must call this, in the same order (``torch.distributed.new_group`` needs it)."""
        import torch.distributed as dist

        return {(s, t): dist.new_group(self.data_parallel_ranks(s, t))
                for s in range(self.stages) for t in range(self.tensor)}

    def tensor_groups(self) -> dict[tuple[int, int], object]:
        """``{(replica, stage): process group}`` of the tensor groups (every worker calls
        this, in the same order)."""
        import torch.distributed as dist

        return {(r, s): dist.new_group(self.tensor_ranks(r, s))
                for r in range(self.replicas) for s in range(self.stages)}
