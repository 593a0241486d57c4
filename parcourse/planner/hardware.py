"""Hardware profiles for the planner (chapter 4, "A planner"): devices, memory per device,
achievable FLOP/s, and the α–β cost of a message within a node and across nodes.

A message of n bytes costs α + nβ (chapter 3); a profile has one (α, β) pair for the links
inside a node and one for the network between nodes. A collective over a group that spans
nodes is charged the slower pair (its ring crosses the network). Compute runs at
``efficiency × peak``: the datasheet's dense peak is a ceiling, and large training runs
reach 40–55 % of it (Narayanan et al., 2021, report 52 % on A100s), so the GPU profiles
take 0.5 — an assumption, stated in every plan, never a measurement.

Profiles: ``this-machine`` is measured (peak matmul of one thread, :mod:`parcourse.roofline`;
α and β from a ping-pong between two worker processes, :mod:`parcourse.bench.allreduce`;
its collectives as training issues them, :mod:`.measured`, which replace the α–β
model's collective times where they are measured) and cached as JSON in the user's cache folder; ``h100``, ``h200``, ``a100`` and ``t4`` are
one 8-GPU node (the T4: 4 on PCIe) from the datasheets; ``8xh100-ib`` is 8-GPU H100 nodes
joined by 400 Gb/s InfiniBand, one adapter per GPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..collectives import predicted_seconds
from ..errors import ConfigError
from ..kernels.devices import DATASHEETS

GIB = 1 << 30


@dataclass(frozen=True)
class Hardware:
    """What the planner needs to know about the machines (SI units: bytes, seconds, FLOP/s)."""
    name: str
    devices_per_node: int
    memory: float            # bytes per device
    fp32_flops: float        # peak FLOP/s per device
    bf16_flops: float        # dense 16-bit peak per device (fp32 on a CPU)
    efficiency: float        # achievable share of the peak
    intra_alpha: float       # seconds per message inside a node
    intra_beta: float        # seconds per byte inside a node
    inter_alpha: float       # seconds per message between nodes
    inter_beta: float        # seconds per byte between nodes
    overlap: bool            # can gradient traffic run behind the backward pass?
    source: str
    nodes: int = 1
    collectives: dict | None = None   # measured seconds per call (:mod:`.measured`), or None

    @property
    def devices(self) -> int:
        return self.devices_per_node * self.nodes

    def flops(self, precision: str) -> float:
        """Achievable FLOP/s of one device in ``precision`` ("fp32" or "bf16")."""
        return self.efficiency * (self.bf16_flops if precision == "bf16" else self.fp32_flops)

    def link(self, group: int, stride: int = 1) -> tuple[float, float]:
        """(α, β) for a group of ``group`` ranks whose neighbours are ``stride`` ranks apart
        (ranks are numbered node by node): inside one node, or across the network."""
        inside = group * stride <= self.devices_per_node
        return ((self.intra_alpha, self.intra_beta) if inside
                else (self.inter_alpha, self.inter_beta))

    def collective(self, name: str, nbytes: float, group: int, stride: int = 1,
                   processes: int | None = None) -> float:
        """Seconds of one ring collective on a whole tensor of ``nbytes`` over ``group``
        ranks ``stride`` apart, while ``processes`` run in all (default: the group): the
        measured table where it has this case (a group of K among more processes is its
        own entry, "K of N"), else α–β."""
        if group == 1:
            return 0.0
        if self.collectives is not None:
            from .measured import seconds
            among = f"{group} of {processes}" if processes and processes > group else None
            measured = among and seconds(self.collectives, name, among, nbytes)
            if measured is None:
                measured = seconds(self.collectives, name, group, nbytes)
            if measured is not None:
                return measured
        alpha, beta = self.link(group, stride)
        return predicted_seconds("ring", nbytes, group, alpha, beta, name.split()[0])

    def with_devices(self, devices: int) -> "Hardware":
        """The same machines, ``devices`` in all (whole nodes, or part of one)."""
        if devices <= self.devices_per_node:
            return replace(self, devices_per_node=devices, nodes=1)
        if devices % self.devices_per_node:
            raise ConfigError(f"--devices {devices} is not a whole number of {self.name} nodes "
                              f"of {self.devices_per_node}: use a multiple of "
                              f"{self.devices_per_node}")
        return replace(self, nodes=devices // self.devices_per_node)


def _gpu(key: str, name: str, devices: int, memory_gib: float, link_bytes_s: float,
         source: str, fp32=None, bf16=None, inter_bytes_s: float = 50e9) -> Hardware:
    sheet = DATASHEETS.get(key)
    return Hardware(name, devices, memory_gib * GIB, fp32 or sheet.fp32_flops,
                    bf16 or sheet.fp16_flops, 0.5, 3e-6, 1 / link_bytes_s, 5e-6,
                    1 / inter_bytes_s, True, source)


# Link bandwidths are per GPU, per direction. NVLink 4 (H100, H200): 900 GB/s both ways,
# 450 GB/s each way; NVLink 3 (A100): 600 GB/s, 300 each way (NVIDIA's H100, H200 and A100
# datasheets). T4: PCIe 3.0 ×16, 15.75 GB/s each way. NDR InfiniBand: 400 Gb/s = 50 GB/s
# per adapter, one per GPU in a DGX H100 (NVIDIA DGX H100 user guide); HDR, 200 Gb/s =
# 25 GB/s per GPU in a DGX A100; the T4 nodes: 100 Gb/s Ethernet, 12.5 GB/s per node,
# 3.1 per GPU. α: a few µs per message: 3 µs inside a node, 5 µs across nodes (assumed).
PROFILES = {
    "h100": _gpu("H100 SXM", "h100", 8, 80, 450e9,
                 "NVIDIA H100 datasheet (SXM: 80 GB, NVLink 900 GB/s)", inter_bytes_s=50e9),
    "h200": _gpu("H100 SXM", "h200", 8, 141, 450e9,
                 "NVIDIA H200 datasheet (SXM: 141 GB HBM3e, the H100's FLOP/s, NVLink 900 GB/s)",
                 inter_bytes_s=50e9),
    "a100": _gpu("", "a100", 8, 80, 300e9,
                 "NVIDIA A100 datasheet (SXM 80 GB: 19.5 TFLOP/s fp32, 312 bf16, NVLink "
                 "600 GB/s; HDR InfiniBand between nodes)", fp32=19.5e12, bf16=312e12,
                 inter_bytes_s=25e9),
    "t4": _gpu("T4", "t4", 4, 16, 15.75e9,
               "NVIDIA T4 datasheet (16 GB, 65 TFLOP/s fp16, PCIe 3.0 ×16)",
               inter_bytes_s=12.5e9 / 4),
    "8xh100-ib": _gpu("H100 SXM", "8xh100-ib", 8, 80, 450e9,
                      "8-GPU H100 SXM nodes (NVLink 900 GB/s) over 400 Gb/s NDR InfiniBand, "
                      "one adapter per GPU", inter_bytes_s=50e9),
}
PROFILE_NAMES = ("this-machine", *PROFILES)


def cache_file() -> Path:
    """Where the measured ``this-machine`` profile is kept: $XDG_CACHE_HOME/parcourse/."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "parcourse" / "this-machine.json"


def measure_this_machine() -> Hardware:
    """Measure this machine: one thread's peak matmul FLOP/s times the cores; α and β of
    a ping-pong between two CPU workers (gloo); the collectives as training issues them,
    over 2 and 4 workers (:mod:`.measured`); total memory shared by the devices."""
    import torch

    from .. import roofline
    from ..bench.allreduce import measure_alpha_beta
    from . import measured

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = max(roofline.peak_matmul_flops(n, repeats=3) for (n) in (256, 512))
    finally:
        torch.set_num_threads(threads)
    cores = roofline.available_cores()
    fit = measure_alpha_beta(sizes=[2 ** p for p in range(10, 23, 3)])
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Hardware("this-machine", cores, memory / cores, one, one, 1.0, fit.alpha,
                    fit.beta, fit.alpha, fit.beta, False,
                    f"measured here: one thread's matmul × {cores} cores, gloo ping-pong, "
                    f"collectives over 2 and 4 workers", collectives=measured.measure())


def this_machine(refresh: bool = False) -> Hardware:
    """The measured profile, from the cache if it is there (``refresh``: measure again)."""
    path = cache_file()
    if path.exists() and not refresh:
        try:
            stored = json.loads(path.read_text())
            from .measured import VERSION
            if (stored.get("collectives") or {}).get("version") == VERSION:
                return Hardware(**stored)      # an older cache lacks what is measured now
        except (TypeError, ValueError):
            pass                               # an old or damaged cache: measure again
    profile = measure_this_machine()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(profile), indent=1))
    return profile


def profile(name: str, devices: int | None = None) -> Hardware:
    """The profile called ``name`` with ``devices`` devices (default: one node)."""
    if name == "this-machine":
        profile = this_machine()
    elif name in PROFILES:
        profile = PROFILES[name]
    else:
        raise ConfigError(f"unknown hardware profile {name!r}: choose one of "
                          f"{', '.join(PROFILE_NAMES)}")
    if devices is not None and devices < 1:
        raise ConfigError(f"--devices must be at least 1 (got {devices})")
    return profile if devices is None else profile.with_devices(devices)
