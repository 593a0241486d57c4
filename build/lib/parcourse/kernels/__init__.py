"""Triton kernels, each with a validating wrapper and a plain-torch reference (chapter 5,
"From CPU to GPU: kernels, rooflines and measured performance").

* :mod:`~parcourse.kernels.vecadd` — ``x + y``: one program per block, masks;
* :mod:`~parcourse.kernels.fused_softmax` — fused row softmax: one read, one write;
* :mod:`~parcourse.kernels.layernorm` — layer norm forward: two reductions per row;
* :mod:`~parcourse.kernels.tiled_matmul` — tiled matrix product with grouped (L2-friendly)
  program order;
* :mod:`~parcourse.kernels.flash_attention` — FlashAttention-2, forward and backward
  (:mod:`~parcourse.kernels.flash_attention_backward`), its costs counted and measured in
  :mod:`~parcourse.kernels.attention_costs`;
* :mod:`~parcourse.kernels.compiled` — those kernels compiled for a T4, A100 or H100 on
  any machine, and the machine code read back (instructions, registers, spills);
  :mod:`~parcourse.kernels.compiled_attention` does it for the attention kernels.

Importing this package never fails: without Triton, calling a kernel raises
:class:`~parcourse.errors.MissingDependencyError` with an install hint. On a machine
without a CUDA GPU the package sets ``TRITON_INTERPRET=1`` (unless it is already set)
*before* the kernels are defined, so they run in Triton's interpreter on CPU tensors; see
:mod:`parcourse.kernels.runtime`. ``DEVICE`` is where the kernels' tensors must live.
"""

from .runtime import AVAILABLE, DEVICE, INTERPRETED, INSTALL_HINT, mode, require
from .flash_attention import attention, attention_reference
from .layernorm import layer_norm, layer_norm_reference
from .tiled_matmul import matmul, matmul_reference, panels_loaded, tile_order
from .fused_softmax import softmax, softmax_reference
from .vecadd import vector_add, vector_add_reference

__all__ = ["AVAILABLE", "DEVICE", "INTERPRETED", "INSTALL_HINT", "mode", "require",
           "vector_add", "vector_add_reference", "softmax", "softmax_reference",
           "layer_norm", "layer_norm_reference", "matmul", "matmul_reference",
           "tile_order", "panels_loaded", "attention", "attention_reference"]
