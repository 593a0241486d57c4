"""pipeline_memory: a stage's actions replayed alone compute the full-batch gradients in
any schedule order; on a GPU, 1F1B's first stage holds fewer activation bytes than GPipe's."""

import pytest
import torch
import torch.nn.functional as F

from parcourse.model_parallel import partition, pipeline, activation_memory as pipeline_memory
from parcourse.models import IMAGE_SHAPE, NUM_CLASSES, build_model

STAGES, MICROBATCHES, BATCH = 2, 4, 32


def stages_of_complex_model():
    model = build_model("complex", seed=0)
    example = torch.zeros(BATCH // MICROBATCHES, *IMAGE_SHAPE)
    ranges = partition.partition(model, STAGES, "parameters")
    return model, ranges, partition.boundary_shapes(model, ranges, example)


def full_batch_gradients(module, input_shape, output_shape, is_first, is_last):
    """The same random inputs and incoming gradients as replay draws, as one batch."""
    xs, targets = [], []
    for m in range(MICROBATCHES):
        g = torch.Generator().manual_seed(m)  # replay's seed 0
        xs.append(torch.randn(input_shape, generator=g))
        if is_last:
            targets.append(torch.randint(NUM_CLASSES, output_shape[:1], generator=g))
        else:
            targets.append(torch.randn(output_shape, generator=g))
    x = torch.cat(xs).requires_grad_(not is_first)
    out = module(x)
    if is_last:
        F.cross_entropy(out, torch.cat(targets)).backward()
    else:
        out.backward(torch.cat(targets))
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "zb-h1"])
@pytest.mark.parametrize("stage", range(STAGES))
def test_replay_gives_the_full_batch_gradients(schedule, stage):
    model, ranges, shapes = stages_of_complex_model()
    start, end = ranges[stage]
    module = model[start:end]
    args = (shapes[stage], shapes[stage + 1], stage == 0, stage == STAGES - 1)
    expected = full_batch_gradients(module, *args)
    module.zero_grad(set_to_none=True)
    pipeline_memory.replay(module, pipeline.schedule(schedule, stage, STAGES, MICROBATCHES), *args,
                           batch_size=BATCH, device=torch.device("cpu"))
    # Relative to the norm: a convolution's weight gradient sums ~10^4 products per entry,
    # in another order here than in one batch; the entries that nearly cancel carry that
    # rounding (measured: 7e-7 of the norm, 5e-4 of one small entry).
    for got, want in zip((p.grad for p in module.parameters()), expected):
        assert (got - want).norm() <= 1e-5 * want.norm()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_measure_needs_a_cuda_gpu():
    with pytest.raises(RuntimeError) as error:
        pipeline_memory.measure()
    assert str(error.value) == pipeline_memory.NO_CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures CUDA memory")
def test_one_f_one_b_holds_fewer_bytes_on_the_first_stage():
    rows = pipeline_memory.measure(stages=2, microbatches=8, batch_size=512)
    first = {r["schedule"]: r for r in rows if r["stage"] == 0}
    assert first["gpipe"]["in_flight"] == 8 and first["1f1b"]["in_flight"] == 2
    assert first["1f1b"]["peak_bytes"] < first["gpipe"]["peak_bytes"]
    for row in rows:  # the micro-batches in flight are really held at the peak
        assert row["peak_bytes"] >= 0.9 * row["predicted_bytes"], row
