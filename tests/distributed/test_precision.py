"""Mixed precision and recomputation through the command line (chapter 5).

* Recomputation computes the same function: float64 runs with ``--recompute`` equal the
  single run to parcourse.compare.FLOAT64_TOLERANCE.
* A bf16 run of any strategy equals the bf16 single run within the bf16 noise floor
  measured in the same run (the batch summed in two parts, one thread), as float32 runs
  are checked against theirs.
* Against the fp32 run, the bound is the format's unit roundoff u (bf16 2⁻⁸, fp16 2⁻¹¹):
  the loss of each step is computed from products whose inputs are rounded to u relative
  and accumulated in float32, so at step 1 (the same weights) it differs by about u at
  most; the weights then drift apart by the gradients' own rounding, which stays of the
  same order over 20 steps. The check allows 2u at every step.
"""

import json
import os

import pytest

from conftest import COMMON, ERR, FLOAT32, OPTIMIZERS, assert_same_parameters, parcourse, \
    train_and_load
from parcourse import compare

UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}


@pytest.mark.parametrize("strategy, workers", [("single", 1), ("ddp", 2), ("zero3", 3),
                                               ("fsdp", 2)])
def test_recomputation_computes_the_same_function(tmp_path, strategy, workers):
    reference = train_and_load(tmp_path, "single", "--model", "complex", *OPTIMIZERS["adam"])
    result = train_and_load(tmp_path, strategy, "--model", "complex", "--strategy", strategy,
                            "--workers", str(workers), "--recompute", *OPTIMIZERS["adam"])
    assert_same_parameters(result, reference)


def test_bf16_strategies_stay_within_the_bf16_noise_floor(tmp_path):
    def run(name, *args, env=None):
        return train_and_load(tmp_path, name, "--precision", "bf16", *args, *OPTIMIZERS["adam"],
                              common=FLOAT32[:-2], env=env)

    reference = run("single")
    floor = run("halves", "--accumulation", "2", env={**os.environ, "OMP_NUM_THREADS": "1"})
    for strategy, workers in (("ddp", 2), ("zero1", 2), ("zero3", 3), ("fsdp", 2),
                              ("torch-zero1", 2)):
        result = run(strategy, "--strategy", strategy, "--workers", str(workers))
        gap, noise = compare.within_noise(result, reference, floor, what=f"bf16 {strategy}")
        print(f"bf16 {strategy}: {gap.absolute:.2e}; noise floor {noise.absolute:.2e}")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_loss_curve_stays_within_twice_the_unit_roundoff_of_fp32(tmp_path, precision):
    def losses(name, *args):
        path = tmp_path / f"{name}.json"
        done = parcourse("train", *FLOAT32[:-2], *OPTIMIZERS["sgd"], *args, "--metrics",
                         str(path))
        assert done.returncode == 0, done.stderr
        return json.loads(path.read_text())["losses"]

    full, mixed = losses("fp32", "--precision", "fp32"), losses(precision, "--precision", precision)
    worst = max(abs(m - f) / f for m, f in zip(mixed, full))
    print(f"{precision}: largest relative loss difference {worst:.2e}")
    assert 0 < worst <= 2 * UNIT_ROUNDOFF[precision]


@pytest.mark.parametrize("args, message", [
    (["--precision", "bf16", "--dtype", "float64"],
     ERR + "--precision bf16 and --dtype float64 disagree: give one of them"),
    (["--precision", "int8"], ERR + "unknown --precision 'int8': choose one of fp64, fp32, "
                                    "bf16, fp16"),
    (["--strategy", "tensor", "--workers", "2", "--precision", "bf16"],
     ERR + "--precision works with --strategy single, ddp, dp-manual, dp-bucketed, zero1, "
           "zero2, zero3, fsdp or torch-zero1 (got --strategy tensor)"),
    (["--strategy", "pipeline-1f1b", "--workers", "2", "--recompute"],
     ERR + "--recompute works with --strategy single, ddp, dp-manual, dp-bucketed, zero1, "
           "zero2, zero3, fsdp or torch-zero1 (got --strategy pipeline-1f1b)"),
])
def test_bad_input_is_one_line(args, message):
    done = parcourse("train", *args)
    assert (done.returncode, done.stderr) == (2, message + "\n")
