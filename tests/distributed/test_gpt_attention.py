"""python -m parcourse train --model gpt --attention triton: the GPT's heads computed by
FlashAttention-2 (parcourse.kernels.flash_attention; on this CPU in Triton's interpreter)
train to the parameters of --attention torch within the float32 rounding noise measured in
the same run, and the options it cannot take are one line.

The kernel computes the same function in another order: the softmax's sums in tiles with
a running maximum (exp2 of rescaled scores), the gradients from the recomputed
probabilities. So its float32 run may differ from the torch run by rounding only; the
floor is the torch run with the batch added in two halves (--accumulation 2), as in
tests/distributed/test_cli.py. A kernel that masked one wrong position, dropped a tile or
mis-scaled the log-sum-exp would move the loss itself, orders of magnitude above it.
"""

import os

import pytest
import torch

from conftest import ERR, parcourse, train_and_load
from parcourse import compare

GPT = ["--model", "gpt", "--steps", "3", "--batch-size", "8", "--seed", "3", "--quiet",
       "--dtype", "float32", "--optimizer", "adam", "--lr", "0.002"]


def test_flash_attention_trains_the_gpt_within_the_noise_floor(tmp_path):
    reference = train_and_load(tmp_path, "torch", common=GPT)
    floor = train_and_load(tmp_path, "halves", "--accumulation", "2", common=GPT)
    flash = train_and_load(tmp_path, "triton", "--attention", "triton", common=GPT)
    assert list(flash) == list(reference)
    gap, noise = compare.within_noise(flash, reference, floor, what="--attention triton")
    print(f"--attention triton: {gap}; noise floor {noise.absolute:.2e}")


@pytest.mark.parametrize("args, env, message", [
    (["--attention", "triton"], None,
     "--attention works with --model gpt (got --model simple)"),
    (["--model", "gpt", "--attention", "triton", "--dtype", "float64"], None,
     "--attention triton computes in float32, float16 or bfloat16 (got --dtype float64): "
     "use --dtype float32, with --precision bf16 or fp16 for 16-bit products"),
    (["--model", "gpt", "--attention", "triton", "--width", "24"], None,
     "--attention triton needs a head width (--width / --heads) of 16, 32, 64, 128 (got "
     "24 / 2 = 12)"),
    (["--model", "gpt", "--attention", "triton", "--strategy", "context", "--workers", "2"],
     None, "--attention triton does not combine with --strategy context, whose ring computes "
           "each block's attention itself"),
    (["--model", "gpt", "--attention", "flash"], None,
     "unknown --attention 'flash': choose one of torch, triton"),
    (["--model", "gpt", "--attention", "triton"], {"TRITON_INTERPRET": "0"},
     "--attention triton runs the Triton kernels on a CUDA GPU or in Triton's interpreter, "
     "which TRITON_INTERPRET=0 turns off on this machine without one: unset it"),
])
def test_attention_that_cannot_run_exits_2_with_one_line(args, env, message):
    if env and torch.cuda.is_available():
        pytest.skip("on a CUDA machine the kernels compile: TRITON_INTERPRET=0 is fine")
    done = parcourse("train", *args, env={**os.environ, **env} if env else None)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", ERR + message + "\n")
