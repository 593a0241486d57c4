"""What attention costs: FLOP, memory and memory traffic, counted from the algorithm, and
memory measured (chapter 5, "Attention in tiles").

Per batch and head: ``S`` queries, keys and values of ``d`` numbers, ``s`` bytes each.

**FLOP** (:func:`flops`). ``Q Kᵀ`` and ``P V`` are ``S × S × d`` products, ``2 S² d``
FLOP each: ``4 B H S² d`` forward. Backward has five such products (``dV = Pᵀ dO``,
``dP = dO Vᵀ``, ``dQ = dX K``, ``dK = dXᵀ Q``, and ``Q Kᵀ`` again to recompute ``P``):
2.5 times the forward. Causal attention needs half of them. These are the conventional
counts used to quote TFLOPS; the kernels here compute whole tiles on the diagonal, and
the two-pass backward computes ``Q Kᵀ`` and ``dO Vᵀ`` twice (:func:`executed_flops`).

**Memory** (:func:`naive_extra_bytes`, :func:`flash_extra_bytes`). Beyond its inputs and
output, naive attention holds the scores and the probabilities at once, ``2 S²`` values
per head (plus an ``S × S`` boolean mask when causal); FlashAttention holds the
log-sum-exp, ``S`` float32 numbers per head: ``O(S)`` instead of ``O(S²)``.
:func:`peak_live_bytes` measures the peak on any device (a CPU here): it counts every
tensor storage that the operations create while a function runs
(:class:`parcourse.memory_meter.LiveBytes`: a ``TorchDispatchMode`` sees each operation's
outputs, a weak reference on each new storage sees it freed) and reports the largest total
alive at once. It counts what torch
allocates, which is what a GPU's allocator would hold; it does not see buffers an
operation uses internally and frees before returning, nor the NumPy arrays of Triton's
interpreter, which are the emulation's, not the kernel's.

**Traffic** (:func:`naive_traffic`, :func:`flash_traffic`): bytes read from and written to
memory by each kernel, as written: the naive forward is four passes over memory
(``X = Q Kᵀ``, ``X *= τ``, softmax, ``P V``; five when causal), each reading its inputs
and writing its output;
FlashAttention reads every ``K``, ``V`` tile once per query tile that needs it and writes
only ``O`` and ``L``. Caches are ignored (an upper bound for the tiled kernels, whose
tiles may be found in L2). :func:`roofline_points` places the counts on a roofline.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import roofline
from ..memory_meter import LiveBytes


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def flops(batch: int, heads: int, seq_len: int, head_dim: int, *, causal: bool = False,
          backward: bool = False) -> float:
    """``4 B H S² d`` forward, 2.5 times that backward, half of either when causal."""
    forward = 4 * batch * heads * seq_len ** 2 * head_dim
    return forward * (2.5 if backward else 1) / (2 if causal else 1)


def _key_rows(seq_len: int, block_m: int, block_n: int, causal: bool) -> list[int]:
    """Keys loaded by each query tile: all ``S``, or up to the tile holding its last query."""
    rows = []
    for tile in range(_cdiv(seq_len, block_m)):
        end = min(seq_len, (tile + 1) * block_m) if causal else seq_len
        rows.append(min(seq_len, _cdiv(end, block_n) * block_n))
    return rows


def _query_rows(seq_len: int, block_m: int, block_n: int, causal: bool) -> list[int]:
    """Queries loaded by each key tile of the dK, dV kernel."""
    return [seq_len - ((tile * block_n // block_m) * block_m if causal else 0)
            for tile in range(_cdiv(seq_len, block_n))]


def executed_flops(batch: int, heads: int, seq_len: int, head_dim: int, *, block_m: int,
                   block_n: int, causal: bool = False, backward: bool = False) -> int:
    """FLOP of the tile products the kernels run (masked lanes included): forward 2 per
    pair of query and key tile, backward 4 in the dK, dV kernel and 3 in the dQ kernel."""
    pairs_q = sum(block_m * keys for keys in _key_rows(seq_len, block_m, block_n, causal))
    pairs_k = sum(block_n * queries for queries in _query_rows(seq_len, block_m, block_n, causal))
    products = 3 * pairs_q + 4 * pairs_k if backward else 2 * pairs_q
    return 2 * head_dim * products * batch * heads


def naive_extra_bytes(batch: int, heads: int, seq_len: int, itemsize: int, *,
                      causal: bool = False) -> int:
    """Scores and probabilities, ``2 B H S² s``, and the causal mask, ``S²`` bytes."""
    return 2 * batch * heads * seq_len ** 2 * itemsize + (seq_len ** 2 if causal else 0)


def flash_extra_bytes(batch: int, heads: int, seq_len: int) -> int:
    """The log-sum-exp saved for backward: ``4 B H S`` bytes (float32)."""
    return 4 * batch * heads * seq_len


def naive_traffic(batch: int, heads: int, seq_len: int, head_dim: int, itemsize: int, *,
                  causal: bool = False) -> dict[str, int]:
    """Bytes read and written by :func:`~parcourse.kernels.flash_attention.attention_reference`,
    one pass over memory per operation: ``X = Q Kᵀ`` (read ``2 S d``, write ``S²``),
    ``X *= τ`` in place (read and write ``S²``), causal ``masked_fill_`` in place (read
    ``S²`` and the ``S²``-byte mask, write ``S²``), softmax (read ``S²``, write ``S²``),
    ``P V`` (read ``S² + S d``, write ``S d``)."""
    sd, ss, bh = seq_len * head_dim * itemsize, seq_len ** 2 * itemsize, batch * heads
    mask_read, mask_written = (ss + seq_len ** 2, ss) if causal else (0, 0)
    read = bh * (2 * sd + ss + mask_read + ss + ss + sd)
    written = bh * (ss + ss + mask_written + ss + sd)
    return {"read": read, "written": written}


def flash_traffic(batch: int, heads: int, seq_len: int, head_dim: int, itemsize: int, *,
                  block_m: int, block_n: int, causal: bool = False,
                  backward: bool = False) -> dict[str, int]:
    """Bytes read and written by the FlashAttention kernels with these tiles.

    Forward: ``Q`` once, each query tile's key rows of ``K`` and ``V``, write ``O`` and
    ``L`` (4 bytes a row). Backward: ``D`` (read ``O``, ``dO``; write ``D``); the dK, dV
    kernel (read ``K``, ``V`` once, and per key tile its query rows of ``Q``, ``dO``, ``L``,
    ``D``; write ``dK``, ``dV``); the dQ kernel (read ``Q``, ``dO``, ``L``, ``D`` once and
    per query tile its key rows of ``K``, ``V``; write ``dQ``)."""
    row = head_dim * itemsize
    keys = sum(_key_rows(seq_len, block_m, block_n, causal))
    if not backward:
        read = seq_len * row + 2 * keys * row
        written = seq_len * row + 4 * seq_len
    else:
        queries = sum(_query_rows(seq_len, block_m, block_n, causal))
        read = (2 * seq_len * row                              # D: O and dO
                + 2 * seq_len * row + queries * (2 * row + 8)  # dK, dV: K, V; Q, dO, L, D
                + seq_len * (2 * row + 8) + 2 * keys * row)    # dQ: Q, dO, L, D; K, V
        written = 4 * seq_len + 3 * seq_len * row              # D; dK, dV, dQ
    return {"read": batch * heads * read, "written": batch * heads * written}


def roofline_points(seq_len: int, head_dim: int, *, block_m: int, block_n: int, peak_flops: float,
                    bandwidth: float, itemsize: int = 2) -> list[dict]:
    """Attention of one head on a roofline (``peak_flops``, ``bandwidth``): the naive
    forward, FlashAttention's forward, backward and causal forward with these tiles. Each
    point: ``name``, ``flops`` (:func:`flops`), ``bytes`` (its traffic), ``intensity``
    (FLOP/byte) and ``bound``, the attainable FLOP/s at that intensity."""
    tiles = dict(block_m=block_m, block_n=block_n)
    counted = {
        "naive forward": (flops(1, 1, seq_len, head_dim),
                          naive_traffic(1, 1, seq_len, head_dim, itemsize)),
        "FlashAttention forward": (flops(1, 1, seq_len, head_dim),
                                   flash_traffic(1, 1, seq_len, head_dim, itemsize, **tiles)),
        "FlashAttention backward": (flops(1, 1, seq_len, head_dim, backward=True),
                                    flash_traffic(1, 1, seq_len, head_dim, itemsize, **tiles, backward=True)),
        "FlashAttention forward, causal": (flops(1, 1, seq_len, head_dim, causal=True),
                                           flash_traffic(1, 1, seq_len, head_dim, itemsize, **tiles,
                                                         causal=True)),
    }
    points = []
    for name, (flop, traffic) in counted.items():
        nbytes = sum(traffic.values())
        intensity = flop / nbytes
        points.append({"name": name, "flops": flop, "bytes": nbytes, "intensity": intensity,
                       "bound": float(roofline.attainable(intensity, peak_flops, bandwidth))})
    return points


def peak_live_bytes(fn: Callable[[], object]) -> int:
    """The largest number of bytes held at once, while ``fn()`` runs, by the tensors that
    its operations create (its output included; tensors made before it are not counted)."""
    with LiveBytes(created_only=True) as meter:
        fn()
    return meter.peak
