"""Bytes moved and activation memory per rank of the GPT under tensor and sequence
parallelism, measured and set against the formulas (chapter 5, "Parallelism for
transformers"; Korthikanti et al., 2022).

**Activation memory.** What one block keeps for backward, on one rank, is measured as the
bytes held after its forward (:class:`parcourse.memory_meter.LiveBytes`: the live storages
that the block's operators created, and its input) once its output is dropped. Listing
the saved tensors (:func:`saved_tensors`) gives this implementation's count, per block,
in numbers of e bytes (b windows of s tokens, width h, a heads, t ranks):

* LayerNorm inputs 2·sbh (the block's input and the residual after attention), their
  outputs as the inputs of the QKV and W₁ products 2·sbh, the per-head copies of q, k, v
  that the batched products keep 3·sbh, the heads' output (W_o's input) sbh, the GELU's
  input 4·sbh and output (W₂'s input) 4·sbh: **16·sbh**; the softmax output **a·s²·b**;
  the LayerNorms' mean and 1/σ 4·sb; and the causal mask, s² bytes (booleans).
* tensor parallelism splits what lies between the column- and row-parallel layers:
  4·sbh + 12·sbh/t + a·s²·b/t (+ 4·sb); sequence parallelism splits the rest too:
  (16·sbh + a·s²·b + 4·sb)/t, if the gathered inputs of the column-parallel layers are not
  kept (:class:`parcourse.model_parallel.sequence.GatheredLinear`); kept, 2·sbh of them
  stay whole: 2·sbh + 14·sbh/t + …

The paper counts sbh·(34 + 5·a·s/h) bytes per layer in 16 bits (e = 2) with dropout, i.e.
sbh·(16·e + 2) + a·s²·b·(2·e + 1) with 1-byte dropout masks: the same 16 activations, plus
two masks of sbh bytes (after attention and after the MLP), plus the attention dropout's
mask and output. This GPT has no dropout, so it keeps 2·sbh + a·s²·b·(e + 1) bytes less;
the paper leaves out the LayerNorm statistics and the mask, which are small.

**Traffic.** :data:`parcourse.model_parallel.tensor.COMMUNICATION` counts each collective by
the size n of its whole tensor during one forward and backward of the whole GPT; a ring
moves 2·(t − 1)/t · n bytes per rank for an all-reduce and (t − 1)/t · n for an all-gather or
a reduce-scatter. Per block, tensor parallelism does 2 all-reduces forward and 2 backward
of sbh numbers; sequence parallelism 2 all-gathers and 2 reduce-scatters each way: the
same bytes. The re-gather of the column-parallel inputs adds 2 all-gathers per block;
entering and leaving the sequence region (replicated embeddings and head) adds one each
per step, and the sequence region's replicated gradients one all-reduce of 6·h per block.
"""

from __future__ import annotations

import torch

from .. import launch, tables
from ..memory_meter import LiveBytes
from ..models import build_model
from ..model_parallel import tensor_gpt
from ..model_parallel.tensor import COMMUNICATION
from ..training.loop import mean_loss

SIZES = {"batch": 4, "sequence": 32, "width": 64, "heads": 4, "layers": 2, "dtype": "float32"}
MODES = ("single", "tensor", "sequence", "sequence, gathered inputs kept")


def describe(sizes: dict = SIZES) -> str:
    return (f"GPT b = {sizes['batch']} windows, s = {sizes['sequence']}, h = {sizes['width']}, "
            f"a = {sizes['heads']}, L = {sizes['layers']}, {sizes['dtype']}")


def activation_bytes(s: int, b: int, h: int, a: int, t: int = 1, mode: str = "single",
                     element: int = 4) -> float:
    """Bytes one block of this GPT keeps for backward on one rank (module docstring)."""
    sbh, scores, stats = s * b * h, a * s * s * b, 4 * s * b
    numbers = {"single": 16 * sbh + scores + stats,
               "tensor": 4 * sbh + 12 * sbh / t + scores / t + stats,
               "sequence": (16 * sbh + scores + stats) / t,
               MODES[3]: 2 * sbh + 14 * sbh / t + (scores + stats) / t}[mode]
    return element * numbers + s * s


def paper_bytes(s: int, b: int, h: int, a: int, t: int = 1, mode: str = "single",
                element: int = 2) -> float:
    """Korthikanti et al.'s bytes per layer with activations of ``element`` bytes and 1-byte
    dropout masks (``element`` 2: sbh·(34 + 5as/h), sbh·(10 + 24/t + 5as/(ht)), sbh/t·(34 +
    5as/h))."""
    sbh, scores, e = s * b * h, a * s * s * b, element
    attention = scores * (2 * e + 1) / (1 if mode == "single" else t)
    if mode == "single":
        return sbh * (16 * e + 2) + attention
    if mode == "tensor":
        return sbh * (4 * e + 2 + 12 * e / t) + attention
    return sbh * (16 * e + 2) / t + attention


def _parts(rank: int, ranks: int, sizes: dict, mode: str, layers: int):
    """The (split) GPT of ``sizes`` and one batch of ids and targets."""
    dtype = getattr(torch, sizes["dtype"])
    model = build_model("gpt", seed=0, dtype=dtype, layers=layers, width=sizes["width"],
                        heads=sizes["heads"], sequence=sizes["sequence"])
    if mode != "single":
        model = tensor_gpt.parallelize(model, rank, ranks, sequence_parallel=mode != "tensor",
                                       regather=mode == "sequence")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (sizes["batch"], sizes["sequence"] + 1), generator=g)
    return model, ids[:, :-1], ids[:, 1:]


def block_memory(rank: int, ranks: int, sizes: dict, mode: str, repeats: int = 3) -> int:
    """Bytes one block holds after its forward on this rank (its input included): the
    least of ``repeats`` forwards. Once, under load, one tensor-parallel forward counted
    32 KiB more than the formula, one activation of the block (4 × 32 × 64 float32), most
    likely the tensor an all-reduce wrote, which gloo's worker thread can still reference a
    moment after the call has returned. What the block itself holds is the same in every
    repeat, so the least count is it."""
    model, _, _ = _parts(rank, ranks, sizes, mode, layers=1)
    block, dtype = model[1], getattr(torch, sizes["dtype"])
    x = torch.randn(sizes["batch"], sizes["sequence"], sizes["width"], dtype=dtype,
                    generator=torch.Generator().manual_seed(2))
    if mode.startswith("sequence"):
        part = sizes["sequence"] // ranks
        x = x.narrow(1, rank * part, part).contiguous()
    x.requires_grad_()
    found = []
    for _ in range(repeats):
        with LiveBytes(track=[x], created_only=True) as meter:
            y = block(x)
            graph = y.grad_fn  # keeps what backward needs; the output itself is dropped
            del y
            found.append(meter.current())
        del graph
    return min(found)


def step_traffic(rank: int, ranks: int, sizes: dict, mode: str) -> dict:
    """{collective: [bytes of its whole tensors, calls]} of one forward and backward of
    the whole GPT (and the sequence region's gradient sum) on this rank."""
    model, ids, targets = _parts(rank, ranks, sizes, mode, layers=sizes["layers"])
    COMMUNICATION.clear()
    mean_loss(model(ids), targets).backward()
    model.sum_sequence_gradients()
    return {name: list(record) for name, record in COMMUNICATION.items()}


def _rank_figures(rank: int, ranks: int, sizes: dict) -> dict:
    """Every mode's block memory and step traffic on this rank (a launch.run worker)."""
    return {mode: {"memory": block_memory(rank, ranks, sizes, mode),
                   "traffic": step_traffic(rank, ranks, sizes, mode)} for mode in MODES[1:]}


def measure(ranks: int, sizes: dict = SIZES) -> dict:
    """Rank 0's figures for every parallel mode over ``ranks`` ranks, and the single block."""
    figures = launch.run(_rank_figures, ranks, args=(sizes,), verbose=False)[0]
    figures["single"] = {"memory": block_memory(0, 1, sizes, "single"), "traffic": {}}
    return figures


def ring_bytes(name: str, whole: int, ranks: int) -> float:
    """Bytes one rank sends for a collective over a ring of ``ranks``."""
    share = (ranks - 1) / ranks
    return (2 if "all-reduce" in name else 1) * share * whole


def traffic_formula(ranks: int, sizes: dict = SIZES, mode: str = "tensor") -> float:
    """Ring bytes per rank of one step (module docstring), U = b·s·h·e: tensor 8·L·U·(t−1)/t;
    sequence the same, + 2·U·(t−1)/t entering and leaving, + 2·6·h·L·e·(t−1)/t of gradients,
    + 2·L·U·(t−1)/t of re-gathers unless the gathered inputs are kept."""
    element = torch.empty(0, dtype=getattr(torch, sizes["dtype"])).element_size()
    unit = sizes["batch"] * sizes["sequence"] * sizes["width"] * element
    share, layers = (ranks - 1) / ranks, sizes["layers"]
    total = 8 * layers * unit * share
    if mode != "tensor":
        total += 2 * unit * share + 2 * 6 * sizes["width"] * layers * element * share
    if mode == "sequence":
        total += 2 * layers * unit * share
    return total


def traffic(ranks: int, sizes: dict = SIZES, figures: dict | None = None) -> list[dict]:
    """Rows (mode, collective, calls, bytes, ring bytes per rank) of one training step."""
    figures = figures or measure(ranks, sizes)
    rows = []
    for mode in MODES[1:]:
        for name, (whole, calls) in figures[mode]["traffic"].items():
            rows.append({"mode": mode, "collective": name, "calls": calls, "bytes": whole,
                         "ring_bytes_per_rank": ring_bytes(name, whole, ranks),
                         "formula_total": traffic_formula(ranks, sizes, mode)})
    return rows


def memory(ranks: int, sizes: dict = SIZES, figures: dict | None = None) -> list[dict]:
    """Rows (mode, measured, this implementation's formula, the paper's in this dtype and
    in 16 bits) of one block's activations on one rank."""
    figures = figures or measure(ranks, sizes)
    element = torch.empty(0, dtype=getattr(torch, sizes["dtype"])).element_size()
    shape = (sizes["sequence"], sizes["batch"], sizes["width"], sizes["heads"])
    rows = []
    for mode in MODES:
        t = 1 if mode == "single" else ranks
        paper_mode = "sequence" if mode.startswith("sequence") else mode
        rows.append({"mode": mode, "ranks": t, "measured": figures[mode]["memory"],
                     "formula": activation_bytes(*shape, t, mode, element),
                     "paper": paper_bytes(*shape, t, paper_mode, element),
                     "paper_16_bit": paper_bytes(*shape, t, paper_mode, 2)})
    return rows


TRAFFIC_HEADER = ("mode", "collective", "calls", "KiB", "ring KiB per rank")
MEMORY_HEADER = ("mode", "T", "measured KiB", "formula KiB", "paper KiB", "paper 16-bit KiB")


def traffic_cells(rows: list[dict]) -> list[list[str]]:
    """:func:`traffic`'s rows as cells for :data:`TRAFFIC_HEADER`, each mode closed by its
    total beside the formula's."""
    cells = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        cells += [[mode, r["collective"], str(r["calls"]), f"{r['bytes'] / 1024:.1f}",
                   f"{r['ring_bytes_per_rank'] / 1024:.1f}"] for r in mine]
        total = sum(r["ring_bytes_per_rank"] for r in mine)
        cells.append([mode, f"total (formula {mine[0]['formula_total'] / 1024:.1f})", "", "",
                      f"{total / 1024:.1f}"])
    return cells


def memory_cells(rows: list[dict]) -> list[list[str]]:
    """:func:`memory`'s rows as cells for :data:`MEMORY_HEADER`."""
    return [[r["mode"], str(r["ranks"]), f"{r['measured'] / 1024:.1f}",
             f"{r['formula'] / 1024:.1f}", f"{r['paper'] / 1024:.1f}",
             f"{r['paper_16_bit'] / 1024:.1f}"] for r in rows]


def format_traffic(rows: list[dict]) -> str:
    return tables.text(TRAFFIC_HEADER, traffic_cells(rows))


def format_memory(rows: list[dict]) -> str:
    return tables.text(MEMORY_HEADER, memory_cells(rows))


def saved_tensors(output: torch.Tensor, exclude=()) -> list[dict]:
    """The tensors autograd keeps for ``output``'s backward, one row per storage (the node
    that saved it first, the shape, the bytes); tensors of ``exclude`` (the parameters)
    left out. Walks the graph from ``output.grad_fn``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    rows, seen, stack, visited = [], set(), [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        saved = [(name, getattr(node, name)) for name in dir(node) if name.startswith("_saved_")]
        if hasattr(node, "saved_tensors"):     # a custom autograd Function
            saved += [(f"saved_tensors[{i}]", t) for i, t in enumerate(node.saved_tensors)]
        for name, value in saved:
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue        # 0-dim: a Python number autograd wrapped (1/√d_h), 8 bytes
            key = value.untyped_storage().data_ptr()
            if key in skip or key in seen:
                continue
            seen.add(key)
            rows.append({"saved by": f"{node.name()}.{name}", "shape": tuple(value.shape),
                         "bytes": value.untyped_storage().nbytes()})
        stack.extend(f for f, _ in node.next_functions)
    return rows
