"""Worker functions for tests/unit/test_pipeline.py and tests/distributed/test_tensor_parallel.py
(spawned workers must import them)."""

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from parcourse.model_parallel import partition, pipeline, tensor as tensor_parallel
from parcourse.models import build_model

BATCH, MICRO = 24, 4


def _model_and_batch(name="complex"):
    model = build_model(name, seed=7)
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(BATCH, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    return model, x, y


def ours_against_torch_pipelining(rank, world_size, schedule_name):
    """Run one step of our schedule and of torch.distributed.pipelining's on the same
    stage; return both stages' gradients and the last stage's losses."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    model, x, y = _model_and_batch()
    micro = x.shape[0] // MICRO
    ranges = partition.partition(model, world_size)
    shapes = partition.boundary_shapes(model, ranges, x[:micro])
    start, end = ranges[rank]
    last = rank == world_size - 1

    ours = model[start:end]
    stage = pipeline.PipelineStage(ours, rank, world_size, list(range(world_size)), shapes,
                                   torch.device("cpu"))
    actions = pipeline.schedule(schedule_name, rank, world_size, MICRO)
    chunks = list(zip(x.chunk(MICRO), y.chunk(MICRO)))
    loss, _ = stage.run(actions, 0, time.perf_counter(),
                        inputs=[c[0] for c in chunks], targets=[c[1] for c in chunks],
                        weights=[1 / MICRO] * MICRO)
    our_grads = {k: p.grad.clone() for k, p in ours.named_parameters()}

    theirs = build_model("complex", seed=7)[start:end]
    schedule_class = ScheduleGPipe if schedule_name == "gpipe" else Schedule1F1B
    their_stage = PipelineStage(theirs, rank, world_size, torch.device("cpu"))
    runner = schedule_class(their_stage, MICRO, loss_fn=F.cross_entropy)
    losses = []
    if rank == 0:
        runner.step(x)
    elif last:
        runner.step(target=y, losses=losses)
    else:
        runner.step()
    their_grads = {k: p.grad.clone() for k, p in theirs.named_parameters()}
    their_loss = sum(t.item() for t in losses) / MICRO if last else 0.0
    return our_grads, their_grads, loss, their_loss, stage.peak_in_flight


def single_device_gradients():
    """The unsplit model's gradients of the mean loss over the whole batch."""
    model, x, y = _model_and_batch()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}, loss.item()


def upstream_gradient(shape):
    """A fixed, well-conditioned ∂L/∂y to back-propagate."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(5))


def tensor_parallel_mlp(rank, world_size, batch=6, width=8, hidden=12, out=5):
    """A Linear → ReLU → Linear block split column/row; output and gradients, gathered."""
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, out))
    x = torch.randn(batch, width, requires_grad=True)
    tensor_parallel.COMMUNICATION.clear()
    tensor_parallel.parallelize(block, rank, world_size)
    y = block(x)
    forward_bytes = dict(tensor_parallel.COMMUNICATION)
    (y * upstream_gradient(y.shape)).sum().backward()
    grads = {"0.weight": block[0].weight.grad, "0.bias": block[0].bias.grad,
             "2.weight": block[2].weight.grad, "2.bias": block[2].bias.grad}
    gathered = {k: [torch.empty_like(g) for _ in range(world_size)] for k, g in grads.items()}
    for k, g in grads.items():
        dist.all_gather(gathered[k], g.contiguous())
    return (y.detach(), x.grad, gathered, forward_bytes, dict(tensor_parallel.COMMUNICATION),
            tensor_parallel.full_state_dict(block))


def tensor_parallel_attention(rank, world_size, batch=2, seq=5, width=12, heads=6):
    torch.manual_seed(0)
    reference = tensor_parallel.SelfAttention(width, heads)
    x = torch.randn(batch, seq, width, requires_grad=True)
    layer = tensor_parallel.ParallelSelfAttention(reference, rank, world_size)
    y = layer(x)
    (y * upstream_gradient(y.shape)).sum().backward()
    return y.detach(), x.grad, layer.out.weight.grad, layer.qkv_weight.grad


def sequence_operators(rank, world_size, batch=2, part=3, width=5):
    """g, ḡ, the entry and exit of the sequence region and the fused GatheredLinear on
    (batch, part·K, width) float64 tensors: this rank's inputs, upstream gradients,
    outputs and input gradients, and the bytes counted."""
    from parcourse.model_parallel import sequence as seq

    def draw(seed, *shape):
        return torch.randn(*shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(seed))

    s = part * world_size
    whole = draw(0, batch, s, width)                          # the same on every rank
    mine = whole[:, rank * part:(rank + 1) * part].clone().requires_grad_()
    upstream = draw(10 + rank, batch, s, width)               # a different one per rank
    tensor_parallel.COMMUNICATION.clear()
    gathered = seq.AllGatherForwardReduceScatterBackward.apply(mine, None)
    gathered.backward(upstream)
    partial = draw(20 + rank, batch, s, width).requires_grad_()
    scattered = seq.ReduceScatterForwardAllGatherBackward.apply(partial, None)
    scattered_upstream = draw(30 + rank, batch, part, width)
    scattered.backward(scattered_upstream)
    counted = {name: list(record) for name, record in tensor_parallel.COMMUNICATION.items()}

    entry = whole.clone().requires_grad_()
    sliced = seq.SliceForwardAllGatherBackward.apply(entry, None)
    sliced_upstream = draw(40 + rank, batch, part, width)
    sliced.backward(sliced_upstream)
    exit_ = mine.detach().clone().requires_grad_()
    left = seq.AllGatherForwardSliceBackward.apply(exit_, None)
    left.backward(draw(50, batch, s, width))                  # the same on every rank

    weight = draw(60 + rank, 4, width).requires_grad_()
    bias = draw(70 + rank, 4).requires_grad_()
    fused_in = mine.detach().clone().requires_grad_()
    fused = seq.GatheredLinear.apply(fused_in, weight, bias, None)
    fused.backward(draw(80 + rank, batch, s, 4))
    fused_grads = [t.grad.clone() for t in (fused_in, weight, bias)]
    for t in (weight, bias):
        t.grad = None
    plain_in = mine.detach().clone().requires_grad_()
    plain = F.linear(seq.AllGatherForwardReduceScatterBackward.apply(plain_in, None),
                     weight, bias)
    plain.backward(draw(80 + rank, batch, s, 4))
    plain_grads = [t.grad for t in (plain_in, weight, bias)]
    return {"gathered": gathered.detach(), "mine_grad": mine.grad, "upstream": upstream,
            "partial": partial.detach(), "scattered": scattered.detach(),
            "scattered_upstream": scattered_upstream, "partial_grad": partial.grad,
            "sliced": sliced.detach(), "sliced_upstream": sliced_upstream,
            "entry_grad": entry.grad, "left": left.detach(), "exit_grad": exit_.grad,
            "exit_upstream": draw(50, batch, s, width), "fused": (fused.detach(), plain.detach()),
            "fused_grads": (fused_grads, plain_grads), "counted": counted}


def _gpt_and_batch():
    model = build_model("gpt", seed=7, dtype=torch.float64)
    generator = torch.Generator().manual_seed(11)
    x = torch.randint(0, 256, (BATCH, 32), generator=generator)
    return model, x, torch.randint(0, 256, (BATCH, 32), generator=generator)


def _gpt_loss(out, target):
    return F.cross_entropy(out.flatten(0, -2), target.flatten())


def gpt_against_torch_pipelining(rank, world_size, schedule_name, chunks=2):
    """One step of our interleaved or ZB-H1 schedule on the GPT in float64, and of
    torch.distributed.pipelining's ScheduleInterleaved1F1B or ScheduleInterleavedZeroBubble
    on the same model cut into P·V chunks; both stages' gradients (the tied table's two
    uses left apart, as each stage computes them)."""
    from torch.distributed.pipelining import (PipelineStage, ScheduleInterleaved1F1B,
                                              ScheduleInterleavedZeroBubble)

    model, x, y = _gpt_and_batch()
    ours_chunks = chunks if schedule_name == "interleaved" else 1
    ranges = partition.partition(model, world_size * ours_chunks)
    shapes = partition.boundary_shapes(model, ranges, x[:BATCH // MICRO])
    modules = [model[slice(*ranges[c * world_size + rank])] for c in range(ours_chunks)]
    stage = pipeline.PipelineStage(modules, rank, world_size, list(range(world_size)), shapes,
                                   torch.device("cpu"), torch.float64,
                                   split_backward=schedule_name == "zb-h1")
    actions = pipeline.schedule(schedule_name, rank, world_size, MICRO, ours_chunks)
    last = rank == world_size - 1
    loss, _ = stage.run(actions, 0, time.perf_counter(), inputs=list(x.chunk(MICRO)),
                        targets=list(y.chunk(MICRO)), weights=[1 / MICRO] * MICRO)
    ours = {k: p.grad.clone() for m in modules
            for k, p in m.named_parameters(remove_duplicate=False)}

    theirs_model = _gpt_and_batch()[0]
    their_ranges = partition.partition(theirs_model, world_size * chunks)
    indices = [c * world_size + rank for c in range(chunks)]
    theirs = [theirs_model[slice(*their_ranges[v])] for v in indices]
    stages = [PipelineStage(m, v, world_size * chunks, torch.device("cpu"))
              for m, v in zip(theirs, indices)]
    runner = (ScheduleInterleaved1F1B if schedule_name == "interleaved"
              else ScheduleInterleavedZeroBubble)(stages, MICRO, loss_fn=_gpt_loss)
    losses = []
    if rank == 0:
        runner.step(x)
    elif last:
        runner.step(target=y, losses=losses)
    else:
        runner.step()
    their_grads = {k: p.grad.clone() for m in theirs
                   for k, p in m.named_parameters(remove_duplicate=False)}
    their_loss = sum(t.item() for t in losses) / MICRO if last else 0.0
    return ours, their_grads, loss, their_loss, stage.peak_in_flight


def gpt_single_device_gradients():
    """The unsplit GPT's gradients; the tied table's under both of its names."""
    model, x, y = _gpt_and_batch()
    loss = _gpt_loss(model(x), y)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters(remove_duplicate=False)}, \
        loss.item()
