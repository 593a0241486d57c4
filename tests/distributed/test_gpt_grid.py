"""python -m parcourse train --model gpt --strategy dp-pp-tp: the 3-D grid of R replicas ×
P pipeline stages × T tensor ranks (R = K/(P·T)) trains the GPT to the single run's
parameters (float64, parcourse.compare.FLOAT64_TOLERANCE; measured: ≤ 1.1e-14 on the CPU
with gloo), with and without sequence parallelism; its checkpoints hold the unsplit GPT,
so a run moves between the grid, a plain pipeline and tensor parallelism.

The same function is computed: each stage's blocks are split by heads and columns, the
partial sums of the row-parallel layers are summed in another order, and nothing else
changes; ten Adam steps (each moves a parameter by about its learning rate, whatever the
size of its gradient) make a missing gradient sum, a tensor rank's loss counted twice or
a tied table summed over the wrong ranks a difference of 1e-4 or more.
"""

import pytest
import torch

from conftest import ERR, assert_same_parameters, parcourse, train_and_load
from parcourse import checkpoint
from parcourse.models import build_model

GPT = ["--model", "gpt", "--heads", "4", "--steps", "10", "--batch-size", "8", "--seed", "3",
       "--quiet", "--dtype", "float64", "--optimizer", "adam", "--lr", "0.002"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return train_and_load(tmp_path_factory.mktemp("single"), "single", common=GPT)


@pytest.mark.parametrize("workers, extra", [
    (8, ["--microbatches", "2", "--sequence-parallel"]),             # R 2 × P 2 × T 2
    (6, ["--stages", "3", "--microbatches", "4", "--sequence-parallel"]),  # R 1 × P 3 × T 2
    (4, ["--stages", "1", "--tensor", "4"]),                         # R 1 × P 1 × T 4
])
def test_the_grid_trains_the_gpt_to_the_single_parameters(tmp_path, single, workers, extra):
    result = train_and_load(tmp_path, "grid", "--strategy", "dp-pp-tp", "--workers",
                            str(workers), *extra, common=GPT)
    assert (result["3.weight"] == result["0.token.weight"]).all()     # still one table
    difference = assert_same_parameters(result, single)
    print(f"gpt dp-pp-tp ×{workers} {' '.join(extra)}: {difference}")


def test_grid_checkpoints_hold_the_unsplit_gpt_and_move_between_strategies(tmp_path, single):
    """Steps 1–4 on the grid (P 2 × T 2, sequence-parallel), 5–7 on a 2-stage pipeline,
    8–10 on 2 tensor ranks: the parameters of ten single steps."""
    path = str(tmp_path / "gpt.pt")
    phases = [(4, ["--strategy", "dp-pp-tp", "--workers", "4", "--sequence-parallel",
                   "--microbatches", "2"]),
              (7, ["--strategy", "pipeline-1f1b", "--workers", "2", "--resume"]),
              (10, ["--strategy", "tensor", "--workers", "2", "--resume",
                    "--save", str(tmp_path / "resumed.pt")])]
    for steps, extra in phases:
        done = parcourse("train", *GPT[:GPT.index("--steps")], "--steps", str(steps),
                         *GPT[GPT.index("--steps") + 2:], *extra, "--checkpoint", path,
                         "--checkpoint-every", str(steps))
        assert done.returncode == 0, done.stderr
        if steps == 4:
            saved = checkpoint.load(path)
            unsplit = build_model("gpt", heads=4).state_dict()
            assert {k: v.shape for k, v in saved["model"].items()} == \
                   {k: v.shape for k, v in unsplit.items()}
    assert_same_parameters(torch.load(tmp_path / "resumed.pt", weights_only=True), single)


@pytest.mark.parametrize("args, message", [
    (["--workers", "6"],
     "--workers 6 does not fit --stages 2 × --tensor 2 × replicas: use a multiple of 4 workers"),
    (["--workers", "4", "--stages", "1", "--tensor", "4", "--heads", "2"],
     "--strategy dp-pp-tp gives each tensor rank whole heads, but --heads 2 cannot be split "
     "over --tensor 4: use a --tensor that divides 2"),
])
def test_a_grid_that_does_not_fit_exits_2_with_one_line(args, message):
    done = parcourse("train", "--model", "gpt", "--strategy", "dp-pp-tp", *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", ERR + message + "\n")
