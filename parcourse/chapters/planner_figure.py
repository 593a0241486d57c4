"""Chapter 4's planner figure: the best configurations for a model on a cluster, as bars.

:func:`best_configurations` runs :func:`parcourse.planner.plan` for one point of the
figure's grid — a GPT shape, a number of H100-class devices (8 per node), the memory of
each, the network between nodes — and returns the five fastest configurations that fit
as horizontal bars of predicted step time or memory per device, for
:func:`parcourse.widgets.explore`. Every bar is a **prediction** of the planner's model
(chapter 4), with the H100 profile's assumptions (50% of the datasheet's peak).
"""

from dataclasses import replace

from ..errors import ConfigError
from ..planner import plan, profile
from ..planner.hardware import GIB
from ..planner.memory import memory_per_rank
from ..planner.search import configurations
from ..planner.models import gpt_shape
from ..widgets import Series

# name: (layers, width, heads, sequence); vocabulary 50,257 (GPT-2's) for all
MODELS = {"GPT-2 XL, 1.6 B": (48, 1600, 25, 1024), "7 B": (32, 4096, 32, 2048),
          "13 B": (40, 5120, 40, 2048), "70 B": (80, 8192, 64, 2048)}
VOCAB = 50257
BATCH = 512          # sequences per step, the global batch
SHOWN = 5            # configurations drawn
SHOW = ("memory per device (GiB)", "step time (s)")
BAR = 14             # pixels: a thick segment reads as a bar


def model_shape(name: str):
    layers, width, heads, sequence = MODELS[name]
    return gpt_shape(layers, width, heads, sequence, VOCAB, name=name)


def cluster(devices: int, memory_gib: float, network_gbit: float):
    """``devices`` H100-class GPUs, 8 per node over NVLink, ``memory_gib`` each, nodes
    joined at ``network_gbit`` Gb/s per GPU."""
    hw = profile("8xh100-ib", devices)
    return replace(hw, memory=memory_gib * GIB, inter_beta=8 / (network_gbit * 1e9))


def best_configurations(model: str, devices: int, memory_gib: float, network_gbit: float,
                        show: str) -> dict:
    """The :data:`SHOWN` best configurations at one point, as bars (rank i at height −i)
    of ``show``: memory per device (with the device's memory as a dotted line) or predicted
    step time. Where nothing fits, one empty series says by how much."""
    hw, shape = cluster(devices, memory_gib, network_gbit), model_shape(model)
    try:
        ranked = [c for c in plan(shape, hw, BATCH) if c.fits][:SHOWN]
    except ConfigError:  # nothing fits: say how much the smallest configuration needs
        least = min(memory_per_rank(shape, config, BATCH)["total"]
                    for config in configurations(shape, hw, BATCH))
        return {f"nothing fits: the smallest needs {least / GIB:.0f} GiB per device":
                Series([0], [0], mode="markers")}
    memory = show == SHOW[0]
    bars = {}
    for i, c in enumerate(ranked):
        value = c.memory["total"] / GIB if memory else c.time["step"]
        name = (f"{i + 1}. {c.config.label()}: {c.time['step']:.2f} s, "
                f"{c.memory['total'] / GIB:.0f} GiB")
        bars[name] = Series([0, value], [-i, -i], width=BAR)
    if memory:
        bars[f"device memory ({memory_gib:g} GiB)"] = Series(
            [memory_gib, memory_gib], [0.5, 0.5 - SHOWN], dash="dot")
    return bars
