"""ZeRO stages 1, 2 and 3 from the package's own collectives (chapter 5, "When the model
does not fit"; Rajbhandari et al., 2020).

Data parallelism keeps on each of K ranks the parameters P, gradients G and optimizer state
O of the whole model. ZeRO keeps only a 1/K shard of some of them (:mod:`.flat_shards`):

* **stage 1** shards O. After backward each rank holds the whole gradient; a
  reduce-scatter leaves it the *sum* of its shard of the gradient (the sum of the ranks'
  weighted local gradients is the full-batch gradient, as for ``dp-manual``); it steps its
  shard of the parameters and an all-gather rebuilds the whole parameters everywhere.
  Per rank: P + G + O/K. Bytes sent per rank and step: (K−1)/K · (G + P), the same as
  DDP's ring all-reduce, 2(K−1)/K · G.
* **stage 2** also shards G: the gradients are reduce-scattered bucket by bucket while
  backward still runs (a communication thread, as ``dp-bucketed`` does) and each rank
  keeps only its shard. Per rank: P + (G + O)/K (plus the buckets in flight).
* **stage 3** also shards P: each block's parameters are all-gathered just before its
  forward, freed after it, all-gathered again for its backward and freed when its
  gradients are reduce-scattered; the next block's gather is started (prefetched) while
  the current block computes. Per rank: (P + G + O)/K plus the blocks being used. Bytes
  sent: two all-gathers and a reduce-scatter, 1.5 × DDP's. A parameter shared by two
  blocks (the GPT's token table, also its output layer) belongs to the group of the
  first; a block's hooks gather every group that holds one of its parameters, so the
  GPT's head gathers the embeddings' group too, keeps it for its backward, and the
  table is freed once its one gradient — the sum of both uses — is reduce-scattered.

With ``compute_dtype`` lower than the parameters' dtype (mixed precision), the gathered
parameters and the gradients are in ``compute_dtype`` and each rank's shard of the
parameters is a separate master copy in full precision.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch
from torch import nn

from ..memory_meter import tensor_bytes
from ..recompute import in_backward
from .flat_shards import FlatGroup, group_parameters, groups_used, module_of

STAGES = (1, 2, 3)


class Zero:
    """Shard ``model``'s training state over the ranks; :meth:`step` replaces
    ``optimizer.step()``. ``make_optimizer(params)`` builds the optimizer over the shards."""

    def __init__(self, model: nn.Module, stage: int, make_optimizer: Callable,
                 rank: int, world_size: int, algorithm: str = "ring",
                 bucket_bytes: int = 1 << 20, compute_dtype: torch.dtype | None = None,
                 record: bool = False):
        if stage not in STAGES:
            raise ValueError(f"unknown ZeRO stage {stage!r}: choose one of 1, 2, 3")
        self.model, self.stage, self.algorithm = model, stage, algorithm
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        grouped = group_parameters(model, None if stage == 3 else bucket_bytes)
        self.groups = [FlatGroup(names, params, world_size, rank) for names, params in grouped]
        master_dtype = self.groups[0].params[0].dtype
        self.compute_dtype = compute_dtype or master_dtype
        self.separate_master = self.compute_dtype != master_dtype or stage == 3
        self.events: list[tuple[str, int, float, float]] | None = [] if record else None
        self.full, self.masters, self.grads = [], [], []
        self.pending: list[Future | None] = [None] * len(self.groups)
        self.gathering: list[Future | None] = [None] * len(self.groups)
        self.ready = [0] * len(self.groups)
        self.held: dict[str, int] = {}
        self._forward_start, self._backward_start = 0.0, {}
        for i, group in enumerate(self.groups):
            full = group.flatten([p.detach() for p in group.params], self.compute_dtype)
            group.bind(full)
            exact = group.flatten([p.detach() for p in group.params], master_dtype)
            shard = group.shard_of(exact if self.separate_master else full)
            self.masters.append(nn.Parameter(shard.clone() if self.separate_master else shard))
            self.full.append(full)
            self.grads.append(None)
        self.optimizer = make_optimizer(self.masters)
        self.comm = ThreadPoolExecutor(1, thread_name_prefix="zero") if stage > 1 else None
        if stage == 1:
            for group, full in zip(self.groups, self.full):
                grad = torch.zeros_like(full)
                for p, view in zip(group.params, group.views(grad)):
                    p.grad = view          # autograd adds into the flat buffer in place
                self.grads[self.groups.index(group)] = grad
        for i, group in enumerate(self.groups):
            for p in group.params:
                if stage > 1:
                    p.register_post_accumulate_grad_hook(lambda _p, i=i: self._grad_ready(i))
        # stage 3: the groups each block's forward and backward need whole (its own first)
        self.needs = groups_used(model, self.groups) if stage == 3 else []
        if stage == 3:
            for i, group in enumerate(self.groups):
                self._free(i)
                module = module_of(model, group)
                module.register_forward_pre_hook(lambda _m, _x, i=i: self._before_forward(i))
                module.register_forward_hook(lambda _m, _x, out, i=i: self._after_forward(i, out))

    # ----------------------------------------------------------------------- timeline
    def _timed(self, kind: str, index: int, work: Callable[[], object]):
        start = time.perf_counter()
        value = work()
        if self.events is not None:
            self.events.append((kind, index, start, time.perf_counter()))
        return value

    # ------------------------------------------------------------------ gradients
    def zero_grad(self) -> None:
        """Forget the last step's gradients (stage 1: zero the flat buffers)."""
        for grad in self.grads:
            if grad is not None and self.stage == 1:
                grad.zero_()

    def _grad_ready(self, i: int) -> None:
        """All of group i's gradients are final: flatten them, free them, reduce-scatter."""
        group = self.groups[i]
        self.ready[i] += 1
        if self.ready[i] < len(group.params):
            return
        self.ready[i] = 0
        if self.events is not None and i in self._backward_start:
            self.events.append(("backward", i, self._backward_start.pop(i), time.perf_counter()))
        flat = group.flatten([p.grad for p in group.params], self.compute_dtype)
        for p in group.params:
            p.grad = None
        if self.stage == 3:
            self._free(i)
        self.pending[i] = self.comm.submit(self._timed, "reduce-scatter", i,
                                           lambda: group.reduce_scatter(flat, self.algorithm))

    # ----------------------------------------------------------------- parameters
    def _free(self, i: int) -> None:
        """Stage 3: give back the memory of group i's whole parameters (views stay valid)."""
        self.full[i].untyped_storage().resize_(0)

    def _gather(self, i: int) -> None:
        full, group = self.full[i], self.groups[i]
        full.untyped_storage().resize_(full.numel() * full.element_size())
        group.gather(self.masters[i].detach().to(self.compute_dtype), self.algorithm, out=full)

    def _start_gather(self, j: int) -> None:
        """Start group j's all-gather unless it is whole or on its way."""
        if self.gathering[j] is None and self.full[j].untyped_storage().nbytes() == 0:
            self.gathering[j] = self.comm.submit(self._timed, "all-gather", j,
                                                 lambda: self._gather(j))

    def _ensure_gathered(self, i: int, prefetch: int) -> None:
        """Block i's groups are whole now; block ``prefetch``'s gathers are on their way."""
        for j in self.needs[i]:
            self._start_gather(j)
        for j in self.needs[i]:
            if self.gathering[j] is not None:
                self.gathering[j].result()
                self.gathering[j] = None
        if 0 <= prefetch < len(self.groups):
            for j in self.needs[prefetch]:
                self._start_gather(j)

    def _before_forward(self, i: int) -> None:
        self._ensure_gathered(i, prefetch=i - 1 if in_backward() else i + 1)
        self._forward_start = time.perf_counter()

    def _after_forward(self, i: int, output) -> None:
        if self.events is not None:
            self.events.append(("forward", i, self._forward_start, time.perf_counter()))
        if in_backward():                   # recomputation: the backward needs them now
            return
        if i < len(self.groups) - 1:        # the last block's backward comes next: keep it
            for j in self.needs[i]:
                self._free(j)
        if torch.is_tensor(output) and output.requires_grad:
            output.register_hook(lambda grad, i=i: self._before_backward(i))

    def _before_backward(self, i: int) -> None:
        self._ensure_gathered(i, prefetch=i - 1)
        self._backward_start[i] = time.perf_counter()

    # ----------------------------------------------------------------------- step
    def step(self, unscale: Callable[[list], bool] | None = None) -> None:
        """The shards' gradients summed over the ranks, the optimizer step on each rank's
        shard, and (stages 1, 2) the parameters gathered whole again. ``unscale(grads)``
        (fp16 loss scaling) divides the shards' gradients by the scale and says whether
        to step."""
        for i, group in enumerate(self.groups):
            if self.stage == 1:
                shard = group.reduce_scatter(self.grads[i], self.algorithm)
            else:
                shard = self.pending[i].result()
                self.pending[i] = None
            self.masters[i].grad = shard.to(self.masters[i].dtype)
        if self.stage == 3:                 # no block stays whole (or stale) past the step
            for i, future in enumerate(self.gathering):
                if future is not None:
                    future.result()
                    self.gathering[i] = None
                self._free(i)
        if unscale is None or unscale([m.grad for m in self.masters]):
            self.optimizer.step()
        self.held = self.state_bytes()
        for master in self.masters:
            master.grad = None
        if self.stage < 3:
            for i, group in enumerate(self.groups):
                if self.separate_master:
                    group.shard_of(self.full[i]).copy_(self.masters[i].detach())
                mine = group.shard_of(self.full[i]).clone()
                self._timed("all-gather", i, lambda: group.gather(mine, self.algorithm,
                                                                  out=self.full[i]))

    def state_bytes(self) -> dict[str, int]:
        """Bytes of parameters, gradients and optimizer state this rank holds, counted from
        the tensors (:attr:`held` keeps the count taken at the last optimizer step, when
        the gradient shards exist)."""
        params = self.full + self.masters if self.separate_master else self.full
        if self.stage == 3:
            params = self.masters
        grads = self.grads if self.stage == 1 else [m.grad for m in self.masters]
        state = [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return {"parameters": tensor_bytes(params),
                "gradients": tensor_bytes(g for g in grads if g is not None),
                "optimizer state": tensor_bytes(state)}

    def close(self) -> None:
        """Stop the communication thread."""
        if self.comm is not None:
            self.comm.shutdown(wait=True)
