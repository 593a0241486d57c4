"""What a launch compiles: Triton's specialization of a kernel on its arguments (chapter 5,
"Reading the compiler's output").

A kernel is compiled for its arguments, not only its source: when it is launched,
Triton's runtime looks at every argument (:func:`specialization`) and compiles a separate
version where an integer equals 1 (it becomes a constant: a unit stride) or is a multiple
of 16, and where a pointer is 16-byte aligned (fresh torch tensors are). Only then may the compiler assume the addresses line up for wide loads.
A job of :mod:`parcourse.kernels.compiled` therefore names its arguments' values
(:class:`Pointer` for a tensor, an int or a float), and :func:`launch_signature`
specializes on them the way a launch would.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Pointer:
    """A tensor argument of a launch: its element type (``"fp16"``, ``"fp32"``) and
    whether its address is a multiple of 16 bytes (true of a freshly allocated tensor;
    a view that starts inside one, such as ``x[1:]``, may not be)."""

    dtype: str
    aligned: bool = True


def specialization(value) -> tuple[str, object]:
    """What Triton's runtime derives from one launch argument: ``(type, key)``.

    * a :class:`Pointer`: ``("*fp16", "D")`` when 16-byte aligned, ``("*fp16", "")`` if not;
    * an integer equal to 1: ``("constexpr", 1)``, compiled in as a constant;
    * another integer: ``("i32", "D")`` when divisible by 16 (``"D"``: the compiler may
      assume it), ``("i32", "")`` otherwise; ``i64`` outside the 32-bit range;
    * a float (an attention kernel's scale): ``("fp32", None)``, never a constant.
    """
    if isinstance(value, Pointer):
        return f"*{value.dtype}", "D" if value.aligned else ""
    if isinstance(value, float):
        return "fp32", None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a launch argument is a Pointer, an int or a float, got {value!r}")
    if value == 1:
        return "constexpr", 1
    return ("i32" if -2**31 <= value < 2**31 else "i64"), "D" if value % 16 == 0 else ""


def launch_signature(kernel, args: dict, constexprs: dict) -> tuple[dict, dict, list]:
    """``(signature, constexprs, divisible)`` for ``triton.compile``, as a launch of
    ``kernel`` with these argument values would specialize it; ``divisible`` lists the
    positions of the arguments compiled with the assumption "divisible by 16"."""
    names = list(inspect.signature(kernel.fn).parameters)
    missing = [n for n in names if n not in args and n not in constexprs]
    unknown = [n for n in {**args, **constexprs} if n not in names]
    if missing or unknown:
        raise ValueError(f"{kernel.fn.__name__} takes {', '.join(names)}: "
                         + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                       f"unknown {', '.join(unknown)}" if unknown else "")
                                     if part))
    signature, constants, divisible = {}, dict(constexprs), []
    for position, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        kind, key = specialization(args[name])
        signature[name] = kind
        if kind == "constexpr":
            constants[name] = key
        elif key == "D":
            divisible.append(position)
    return signature, constants, divisible
