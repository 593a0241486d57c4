"""parcourse.kernels.flash_attention: FlashAttention-2 forward and backward against
torch.nn.functional.scaled_dot_product_attention (chapter 5, "Attention in tiles").

Without a CUDA GPU the kernels run in Triton's interpreter on CPU. Sequence lengths are not
multiples of the tiles, so every mask is exercised; head dimensions 16 to 128, causal and
not, in float32, float16 and bfloat16.

**Tolerances.** The reference is SDPA in float64 on the same (already rounded) inputs, so
what is measured is the kernels' own rounding. Every result is a sum of products; with
unit roundoff ``u`` its error is bounded by ``C · u · T``, ``T`` the sum of the absolute
values of its terms, computed in float64 (:func:`term_sums`). Each probability also
carries a relative error of about ``u (1 + |x| + |L|)``, from its exponent ``x − L``
(score minus log-sum-exp), so every ``p`` in ``T`` is weighted by ``1 + |x| + |L|``. ``u``:

* float32: ``2⁻²⁴``. Products and sums are float32 throughout (exact float32 products,
  no TF32); ``C = 4`` covers blocked sums of up to a few hundred terms, whose errors
  grow like their square root; the largest ratio seen over these cases is 1.5;
* float16: ``2⁻¹¹``. Sums are float32, so the error is a few roundings to float16: ``P``
  before ``P V``, ``dX`` before ``dX K``, the outputs; ``C = 4`` (largest seen: 0.5);
* bfloat16: ``2⁻⁸``, with ``C = 8``: the same roundings, but Triton 3.9's interpreter
  converts float32 to bfloat16 by truncation, not to nearest, an error of up to ``2u``
  each (largest seen: 1.5).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from parcourse import kernels, roofline
from parcourse.kernels import attention_costs, flash_attention
from parcourse.kernels.flash_attention import attention, attention_forward, attention_reference

needs_triton = pytest.mark.skipif(not kernels.AVAILABLE, reason="Triton is not installed")
DEVICE = kernels.DEVICE
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
FACTOR = {torch.float32: 4, torch.float16: 4, torch.bfloat16: 8}


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


def term_sums(q, k, v, do, causal):
    """``T`` for O, dQ, dK, dV: the sums of |terms| of each result, in float64."""
    q, k, v, do = (t.double() for t in (q, k, v, do))
    seq_len, head_dim = q.shape[-2:]
    tau = 1 / math.sqrt(head_dim)
    x = tau * q @ k.transpose(-1, -2)
    if causal:
        x = x.masked_fill(torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device).triu(1), -math.inf)
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    p = torch.exp(x - lse)
    w = torch.where(p > 0, p * (1 + x.abs() + lse.abs()), torch.zeros_like(p))
    delta = (do * (p @ v)).sum(dim=-1, keepdim=True)
    g = w * (do.abs() @ v.abs().transpose(-1, -2) + delta.abs())   # |terms| of dX
    return (w @ v.abs(), tau * g @ k.abs(), tau * g.transpose(-1, -2) @ q.abs(),
            w.transpose(-1, -2) @ do.abs())


def assert_within(name, got, expected, terms, dtype):
    bound = FACTOR[dtype] * UNIT_ROUNDOFF[dtype] * terms
    excess = (got.double() - expected).abs() - bound
    assert excess.max() <= 0, (f"{name}: error above {FACTOR[dtype]} u T by {excess.max().item():.2e} "
                               f"(largest ratio {((got.double() - expected).abs() / bound).max().item():.2f})")


CASES = [  # (dtype, batch, heads, S, d, causal, block_m, block_n)
    (torch.float32, 1, 2, 50, 32, False, 32, 32),
    (torch.float32, 1, 1, 77, 64, True, 32, 16),
    (torch.float32, 2, 1, 33, 16, True, 16, 32),
    (torch.float32, 1, 1, 40, 128, False, 16, 32),
    (torch.float16, 1, 2, 50, 64, False, None, None),
    (torch.float16, 1, 1, 45, 128, True, 32, 32),
    (torch.float16, 1, 1, 70, 16, True, 16, 16),
    (torch.bfloat16, 1, 2, 50, 32, True, 32, 16),
    (torch.bfloat16, 1, 1, 40, 128, False, 16, 32),
]


@needs_triton
@pytest.mark.parametrize("dtype, batch, heads, seq_len, head_dim, causal, block_m, block_n", CASES,
                         ids=lambda v: str(v).replace("torch.", ""))
def test_forward_and_gradients_match_sdpa(dtype, batch, heads, seq_len, head_dim, causal, block_m, block_n):
    q, k, v = (rand(batch, heads, seq_len, head_dim, dtype=dtype, seed=s).requires_grad_() for s in (1, 2, 3))
    do = rand(batch, heads, seq_len, head_dim, dtype=dtype, seed=4)
    out = attention(q, k, v, causal=causal, block_m=block_m, block_n=block_n)
    out.backward(do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal)
    expected.backward(do.double())
    assert out.dtype == dtype and q.grad.dtype == dtype
    terms = term_sums(q.detach(), k.detach(), v.detach(), do, causal)
    for name, got, want, t in zip(("O", "dQ", "dK", "dV"), (out, q.grad, k.grad, v.grad),
                                  (expected, q64.grad, k64.grad, v64.grad), terms):
        assert_within(name, got, want, t, dtype)


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
def test_the_saved_log_sum_exp_is_that_of_the_scaled_scores(causal):
    q, k, v = (rand(1, 2, 37, 32, seed=s) for s in (5, 6, 7))
    out, lse = attention_forward(q, k, v, causal=causal, scale=0.3)
    x = 0.3 * q.double() @ k.double().transpose(-1, -2)
    if causal:
        x = x.masked_fill(torch.ones(37, 37, dtype=torch.bool).triu(1), -math.inf)
    assert lse.shape == (1, 2, 37) and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), torch.logsumexp(x, dim=-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.double(), torch.softmax(x, dim=-1) @ v.double(), rtol=0, atol=1e-5)


@needs_triton
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered")  # the rows that do see the NaN
def test_causal_attention_never_loads_the_tiles_above_the_diagonal():
    # With tiles of 16, queries 0..31 stop after key tile 1: NaN in keys and values 32..63
    # would poison them if those tiles were loaded (masking would not help: 0 · NaN = NaN).
    q, k, v = (rand(1, 1, 64, 16, seed=s) for s in (8, 9, 10))
    k[..., 32:, :], v[..., 32:, :] = math.nan, math.nan
    out = attention(q, k, v, causal=True, block_m=16, block_n=16)
    assert torch.isnan(out[..., 32:, :]).all()
    expected = F.scaled_dot_product_attention(q[..., :32, :], k[..., :32, :], v[..., :32, :], is_causal=True)
    torch.testing.assert_close(out[..., :32, :], expected, rtol=1e-5, atol=1e-6)


@needs_triton
def test_a_gradient_that_is_not_contiguous_and_empty_inputs_work():
    q, k, v = (rand(1, 1, 20, 16, seed=s).requires_grad_() for s in (11, 12, 13))
    attention(q, k, v).sum().backward()  # the gradient of sum() is an expanded tensor
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    F.scaled_dot_product_attention(q64, k64, v64).sum().backward()
    torch.testing.assert_close(k.grad.double(), k64.grad, rtol=0, atol=1e-5)
    assert attention(*(torch.ones(2, 3, 0, 16, device=DEVICE),) * 3).shape == (2, 3, 0, 16)


@needs_triton
def test_in_the_interpreter_bfloat16_tiles_are_widened_before_tl_dot():
    flags = flash_attention.kernel_flags(torch.bfloat16)
    assert flags == dict(IEEE=kernels.INTERPRETED, UPCAST=kernels.INTERPRETED)
    assert flash_attention.kernel_flags(torch.float16) == dict(IEEE=False, UPCAST=False)
    assert flash_attention.kernel_flags(torch.float32) == dict(IEEE=True, UPCAST=False)


@pytest.mark.parametrize("causal", [False, True])
def test_the_naive_reference_matches_sdpa(causal):
    q, k, v = (torch.randn(2, 2, 30, 16, generator=torch.Generator().manual_seed(s)) for s in (14, 15, 16))
    torch.testing.assert_close(attention_reference(q, k, v, causal=causal),
                               F.scaled_dot_product_attention(q, k, v, is_causal=causal), rtol=1e-5, atol=1e-6)


def _ones(*shape, dtype=torch.float32):
    return torch.ones(*shape, dtype=dtype)


@needs_triton
@pytest.mark.parametrize("call, error, message", [
    (lambda: attention(_ones(2, 16), _ones(2, 16), _ones(2, 16)), ValueError,
     "q must have 4 dimensions, got shape (2, 16)"),
    (lambda: attention(*(_ones(1, 1, 4, 16, dtype=torch.float64),) * 3), ValueError,
     "q has dtype float64; this kernel takes float16 or bfloat16 or float32: convert it, e.g. q.float()"),
    (lambda: attention(_ones(1, 1, 4, 16), _ones(1, 1, 4, 16, dtype=torch.float16), _ones(1, 1, 4, 16)),
     ValueError, "q and k must have the same dtype, got torch.float32 and torch.float16"),
    (lambda: attention(_ones(1, 1, 4, 16), _ones(1, 1, 5, 16), _ones(1, 1, 5, 16)), ValueError,
     "q, k and v must have the same shape (batch, heads, sequence, head dim), got (1, 1, 4, 16), "
     "(1, 1, 5, 16) and (1, 1, 5, 16)"),
    (lambda: attention(*(_ones(1, 1, 4, 96),) * 3), ValueError,
     "the head dimension q.shape[3] must be a power of two from 16 to 128, got 96"),
    (lambda: attention(*(_ones(1, 1, 4, 256),) * 3), ValueError,
     "the head dimension q.shape[3] must be a power of two from 16 to 128, got 256"),
    (lambda: attention(_ones(1, 1, 16, 4).transpose(2, 3), _ones(1, 1, 4, 16), _ones(1, 1, 4, 16)), ValueError,
     "q is not contiguous (shape (1, 1, 4, 16), strides (64, 64, 1, 4)): pass q.contiguous()"),
    (lambda: attention(*(_ones(1, 1, 4, 16),) * 3, causal=1), TypeError, "causal must be True or False, got 1"),
    (lambda: attention(*(_ones(1, 1, 4, 16),) * 3, scale=0.0), ValueError, "scale must be a positive number, got 0.0"),
    (lambda: attention(*(_ones(1, 1, 4, 16),) * 3, block_n=48), ValueError,
     "block_n must be a power of two ≥ 16, got 48"),
])
def test_the_wrapper_rejects_bad_input_with_one_clear_line(call, error, message):
    if DEVICE == "cuda":
        pytest.skip("these inputs are CPU tensors, rejected on a GPU for their device first")
    with pytest.raises(error) as caught:
        call()
    assert str(caught.value) == message


def test_flops_follow_the_conventional_counts():
    assert attention_costs.flops(2, 3, 100, 64) == 4 * 2 * 3 * 100 ** 2 * 64
    assert attention_costs.flops(2, 3, 100, 64, backward=True) == 2.5 * 4 * 2 * 3 * 100 ** 2 * 64
    assert attention_costs.flops(2, 3, 100, 64, causal=True) == 2 * 2 * 3 * 100 ** 2 * 64
    # whole tiles: 4 tiles of 32 queries × 128 keys, 2 products of 2·d FLOP per pair
    assert attention_costs.executed_flops(1, 1, 128, 16, block_m=32, block_n=32) == 2 * 16 * 2 * 128 * 128
    causal = attention_costs.executed_flops(1, 1, 128, 16, block_m=32, block_n=32, causal=True)
    assert causal == 2 * 16 * 2 * 32 * (32 + 64 + 96 + 128)  # the diagonal tiles in full


def test_memory_counts_are_quadratic_for_naive_attention_and_linear_for_flash():
    assert attention_costs.naive_extra_bytes(1, 2, 1024, 4) == 2 * 2 * 1024 ** 2 * 4
    assert attention_costs.naive_extra_bytes(1, 2, 1024, 4, causal=True) == 2 * 2 * 1024 ** 2 * 4 + 1024 ** 2
    assert attention_costs.flash_extra_bytes(1, 2, 1024) == 2 * 1024 * 4


def test_traffic_counts():
    # S = 128, d = 16, float16, tiles 64: Q 4 kB once; K, V (4 kB each) read by 2 query tiles
    sd = 128 * 16 * 2
    assert attention_costs.flash_traffic(1, 1, 128, 16, 2, block_m=64, block_n=64) == {
        "read": sd + 2 * 2 * sd, "written": sd + 4 * 128}
    causal = attention_costs.flash_traffic(1, 1, 128, 16, 2, block_m=64, block_n=64, causal=True)
    assert causal["read"] == sd + 2 * (64 + 128) * 16 * 2
    ss = 128 * 128 * 2
    assert attention_costs.naive_traffic(1, 1, 128, 16, 2) == {"read": 3 * sd + 3 * ss, "written": sd + 3 * ss}
    back = attention_costs.flash_traffic(1, 1, 128, 16, 2, block_m=64, block_n=64, backward=True)
    assert back["written"] == 3 * sd + 4 * 128
    assert back["read"] == 2 * sd + 2 * sd + 2 * 128 * (2 * 32 + 8) + 128 * (2 * 32 + 8) + 2 * 2 * sd


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
def test_measured_memory_is_what_the_algorithms_hold(causal):
    batch, heads, seq_len, head_dim = 1, 2, 256, 16
    q, k, v = (rand(batch, heads, seq_len, head_dim, seed=s) for s in (17, 18, 19))
    out = batch * heads * seq_len * head_dim * 4
    naive = attention_costs.peak_live_bytes(lambda: attention_reference(q, k, v, causal=causal))
    flash = attention_costs.peak_live_bytes(lambda: attention(q, k, v, causal=causal, block_m=64, block_n=64))
    assert naive == attention_costs.naive_extra_bytes(batch, heads, seq_len, 4, causal=causal) + out
    assert flash == attention_costs.flash_extra_bytes(batch, heads, seq_len) + out


def test_the_gpu_benchmark_rows_are_a_table_and_failures_one_line_each():
    from parcourse.kernels import bench_attention

    base = dict(batch=4, heads=16, seq_len=4096, head_dim=64, causal=True, dtype="float16")
    rows = [{**base, "block_m": None, "block_n": None, "forward_tflops": 350.0, "backward_tflops": 200.0,
             "max_abs_error": 0.0, "dq_max_abs_error": 0.0},
            {**base, "block_m": 128, "block_n": 128, "error": "OutOfResources: out of resource: shared memory"}]
    assert bench_attention.format_rows(None) == []
    header, cells = bench_attention.table_cells(rows)
    assert header == ("B×H×S×d", "dtype", "kernel", "forward TFLOPS", "backward TFLOPS", "max |ΔO|",
                      "max |ΔdQ|")
    assert cells == [["4×16×4096×64 causal", "float16", "torch SDPA", "350.0", "200.0", "0.0e+00", "0.0e+00"]]
    assert bench_attention.failures(rows) == [
        "attention 4×16×4096×64 causal Triton 128×128 float16: error: OutOfResources: out of resource: "
        "shared memory"]
    lines = bench_attention.format_rows(rows)
    assert lines[0] == f"# {bench_attention.CAPTION}"
    assert lines[2].split() == ["#", "4×16×4096×64", "causal", "float16", "torch", "SDPA", "350.0", "200.0",
                                "0.0e+00", "0.0e+00"]
    assert lines[3] == "#   " + bench_attention.failures(rows)[0]


def test_the_online_log_sum_exp_rescales_the_old_sum_and_ends_at_logsumexp():
    scores = torch.tensor([0.5, -1.0, 1.2, 0.3, 2.5, -0.4, 0.9, 1.1, 4.0, -2.0])
    steps = flash_attention.online_logsumexp(scores, 4)
    assert [(s["start"], s["end"]) for s in steps] == [(0, 3), (4, 7), (8, 9)]
    assert [s["max"] for s in steps] == pytest.approx([1.2, 2.5, 4.0])
    assert steps[0]["rescale"] == 0.0 and steps[1]["rescale"] == pytest.approx(math.exp(1.2 - 2.5))
    assert steps[0]["sum"] == pytest.approx(torch.exp(scores[:4] - 1.2).sum().item())
    assert steps[-1]["max"] + math.log(steps[-1]["sum"]) == pytest.approx(torch.logsumexp(scores, 0).item())
    assert len(flash_attention.online_logsumexp(scores, 10)) == 1
    with pytest.raises(ValueError, match="block must be ≥ 1"):
        flash_attention.online_logsumexp(scores, 0)


@needs_triton
@pytest.mark.parametrize("dtype, causal, tolerance", [(torch.float32, True, 1e-5), (torch.float16, False, 2e-2)])
def test_errors_against_sdpa_are_those_of_output_and_gradients(dtype, causal, tolerance):
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(1, 1, 40, 16, device=DEVICE).to(dtype) for _ in range(4))
    errors = flash_attention.errors_against_sdpa(q, k, v, do, causal=causal, block_m=16, block_n=16)
    assert len(errors) == 4 and max(errors) < tolerance and min(errors) > 0  # rounding, no more
    assert not q.requires_grad  # the inputs are left as they were


def test_attention_roofline_points_are_counted():
    points = attention_costs.roofline_points(4096, 64, block_m=128, block_n=64, peak_flops=1e15, bandwidth=1e12)
    by_name = {p["name"]: p for p in points}
    assert list(by_name) == ["naive forward", "FlashAttention forward", "FlashAttention backward",
                             "FlashAttention forward, causal"]
    flash = by_name["FlashAttention forward"]
    assert flash["flops"] == attention_costs.flops(1, 1, 4096, 64) == 4 * 4096 ** 2 * 64
    assert flash["bytes"] == sum(attention_costs.flash_traffic(1, 1, 4096, 64, 2, block_m=128, block_n=64).values())
    assert by_name["naive forward"]["intensity"] < flash["intensity"]  # the S × S matrices cost traffic
    for p in points:
        assert p["intensity"] == p["flops"] / p["bytes"]
        assert p["bound"] == pytest.approx(roofline.attainable(p["intensity"], 1e15, 1e12))
    assert max(p["bound"] for p in points) <= 1e15
