"""Ring attention and python -m parcourse train --model gpt --strategy context (chapter 5,
"Long sequences").

**Equality in float64.** The ring computes the same function as causal attention over the
whole window (parcourse.gpt.attend): every score, exponential and product is the same;
only the sums are taken in another order (the softmax denominator and the weighted sum of
the values block by block, rescaled by the running maximum; ∂K and ∂V summed around the
ring). So the outputs and every gradient agree to a few units of float64's last place,
far inside parcourse.compare.FLOAT64_TOLERANCE (measured: ≤ 1.4e-15), and ten Adam steps of
the GPT split over K = 4 ranks (or 5 steps on K = 2 and 5 single steps after a checkpoint)
end at the single run's parameters to ≤ 1.5e-14.
A block left out, a wrong mask, a position embedding of the local instead of the global
index or a gradient not summed moves them by 1e-3 and more.

**float32** is held to the noise floor measured in the same run (parcourse.compare): the
ring on 2 ranks is as far from the float64 result as float32 attend is (within 10×), and
as far from float32 attend as the ring on one rank, whose blocks are merged chunk by chunk
in the same process, is.
"""

import pytest
import torch

from conftest import ERR, assert_same_parameters, parcourse, train_and_load
from parcourse import checkpoint, compare, gpt, launch
from parcourse.models import build_model
from parcourse.model_parallel import context
from workers import context_workers as w

GPT = ["--model", "gpt", "--heads", "4", "--steps", "10", "--batch-size", "8", "--seed", "3",
       "--quiet", "--dtype", "float64", "--optimizer", "adam", "--lr", "0.002"]


def _reference(sequence, dtype=torch.float64):
    qkv, upstream = w.inputs(sequence, dtype)
    qkv.requires_grad_()
    out = gpt.attend(qkv, w.HEADS)
    (out * upstream).sum().backward()
    return out.detach(), qkv.grad


def _assembled(ranks):
    """The ranks' outputs and gradients put back at their global positions."""
    first = ranks[0]
    n, _, width = first["out"].shape
    sequence = sum(len(r["positions"]) for r in ranks)
    out = first["out"].new_zeros(n, sequence, width)
    grad = first["grad"].new_zeros(n, sequence, 3 * width)
    for r in ranks:
        out[:, r["positions"]], grad[:, r["positions"]] = r["out"], r["grad"]
    return out, grad


@pytest.mark.parametrize("ranks, sequence", [(3, 24), (4, 32)])  # K = 2: below, and the GPT
def test_ring_attention_equals_causal_attention_forward_and_backward(ranks, sequence):
    results = launch.run(w.ring_attention, ranks, args=(sequence,), verbose=False)
    out, grad = _assembled(results)
    expected_out, expected_grad = _reference(sequence)
    forward = compare.assert_close(out, expected_out, what="output")
    backward = compare.assert_close(grad, expected_grad, what="∂qkv")
    print(f"ring attention K = {ranks}: output {forward.absolute:.1e}, ∂qkv "
          f"{backward.absolute:.1e}")
    # the bytes each rank sent are the formula's: K − 1 messages of K, V forward; K − 1 of
    # K, V and K of ∂K, ∂V backward
    formula = context.bytes_per_call(sequence, w.N, w.WIDTH, ranks, element=8)
    assert formula["forward"] == (ranks - 1) * 2 * (sequence // ranks) * w.N * w.WIDTH * 8
    for r in results:
        assert (r["forward"], r["backward"]) == (formula["forward"], formula["backward"])


def test_float32_ring_attention_stays_within_the_noise_floor():
    results = launch.run(w.ring_attention, 2, args=(24, torch.float32), verbose=False)
    out, grad = _assembled(results)
    expected = _reference(24, torch.float64)
    floor = _assembled([w.ring_attention(0, 1, 24, torch.float32)])
    reference32 = _reference(24, torch.float32)
    for got, exact, noise, what in zip((out, grad), expected, reference32, ("output", "∂qkv")):
        compare.within_noise(got, exact, noise, what=what)
    for got, noise, ring1 in zip((out, grad), reference32, floor):
        compare.within_noise(got, noise, ring1, what="against float32 attend")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return train_and_load(tmp_path_factory.mktemp("single"), "single", common=GPT)


def test_context_trains_the_gpt_to_the_single_parameters(tmp_path, single):
    result = train_and_load(tmp_path, "context", "--strategy", "context", "--workers", "4",
                            common=GPT)
    assert (result["3.weight"] == result["0.token.weight"]).all()     # still one table
    difference = assert_same_parameters(result, single)
    print(f"gpt context ×4: {difference}")


def test_context_checkpoints_hold_the_unsplit_gpt_and_resume_under_single(tmp_path, single):
    """Steps 1–5 on 2 context ranks (rank 0's replica saved), 6–10 single: the parameters
    of ten single steps."""
    path, at = str(tmp_path / "gpt.pt"), GPT.index("--steps")
    phases = [(5, ["--strategy", "context", "--workers", "2"]),
              (10, ["--strategy", "single", "--resume", "--save", str(tmp_path / "resumed.pt")])]
    for steps, extra in phases:
        done = parcourse("train", *GPT[:at], "--steps", str(steps), *GPT[at + 2:], *extra,
                         "--checkpoint", path, "--checkpoint-every", "5")
        assert done.returncode == 0, done.stderr
        if steps == 5:
            saved = checkpoint.load(path)
            assert list(saved["model"]) == list(build_model("gpt", heads=4).state_dict())
    difference = assert_same_parameters(torch.load(tmp_path / "resumed.pt", weights_only=True),
                                        single)
    print(f"gpt context ×2, then single: {difference}")


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt", "--workers", "3"],
     "--strategy context cuts each window of --sequence 32 tokens into 2 × --workers 3 "
     "chunks: use a --sequence that is a multiple of 6, e.g. 30 or 36"),
    (["--workers", "2"], "--strategy context trains --model gpt only (got --model simple)"),
])  # the other messages: tests/unit/test_ring_attention.py
def test_a_context_split_that_does_not_fit_exits_2_with_one_line(args, message):
    done = parcourse("train", "--strategy", "context", *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", ERR + message + "\n")


def test_torchs_context_parallel_does_not_run_on_the_cpu():
    """torch.distributed.tensor.experimental.context_parallel shards q, k, v and replaces
    the SDPA kernels by its ring, but only the CUDA ones (flash, efficient, cuDNN): on the
    CPU, F.scaled_dot_product_attention picks the CPU flash kernel, which has no sharding
    rule, so the DTensor dispatch refuses it. The book records this message."""
    results = launch.run(w.torch_context_parallel, 2, verbose=False)
    for r in results:
        assert r == {"error": "NotImplementedError: Operator "
                              "aten._scaled_dot_product_flash_attention_for_cpu.default does "
                              "not have a sharding strategy registered."}


def test_activations_per_rank_fall_as_s_over_k():
    from parcourse.bench import context as bench_context

    sizes = dict(bench_context.SIZES)
    held = launch.run(bench_context.block_memory, 2, args=(sizes,), verbose=False)
    formula = bench_context.activation_bytes(64, 4, 64, 4, 2)
    assert held == [formula, formula] == [bench_context.activation_bytes(64, 4, 64, 4, 1) / 2] * 2
