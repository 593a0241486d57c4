"""Expert parallelism (parcourse.model_parallel.experts, --strategy expert) against the
single-device mixture-of-experts GPT (parcourse.moe), in float64.

* the all-to-all with uneven splits, forward and backward, against its definition;
* one step on K = 4 ranks: the same tokens reach the same experts (the routing tables
  are identical, since each rank routes its windows with the same router and the capacity
  is per window), the same assignments are dropped, the logits and every gradient equal
  the single run's, and the bytes the all-to-alls sent equal the formula of the recorded
  dispatch matrix;
* training: ten Adam steps through a checkpoint chain, expert-parallel on K = 4 for steps
  1–4, ddp on 2 for 5–7, expert-parallel on K = 2 for 8–10, end at the parameters of ten
  single steps (the checkpoints hold the unsplit model). Tolerance
  parcourse.compare.FLOAT64_TOLERANCE (1e-10): the ranks compute the same sums, the
  experts' rows in other batches and the combine's additions in another order, so the
  differences are float64 rounding (measured ≤ 1e-14), while a replicated gradient not
  summed, or an expert's gradient summed over the ranks, moves a parameter by about the
  learning rate (2e-3) after one Adam step;
* bad input: one line each, with the message the user sees.
"""

import pytest
import torch

from conftest import ERR, assert_same_parameters, parcourse
from parcourse import checkpoint, compare, launch
from parcourse.bench import experts as bench_experts
from parcourse.models import build_model
from parcourse.training import TrainConfig, train
from workers import expert_workers

MOE = ["--model", "gpt", "--experts", "4", "--top-k", "2", "--capacity-factor", "1.0",
       "--layers", "2", "--width", "16", "--heads", "2", "--sequence", "16", "--steps", "10",
       "--batch-size", "8", "--seed", "3", "--quiet", "--dtype", "float64",
       "--optimizer", "adam", "--lr", "0.002"]


def test_all_to_all_moves_uneven_rows_forward_and_their_gradients_back():
    reports = launch.run(expert_workers.all_to_all_against_its_definition, 2)
    for rank, report in enumerate(reports):
        assert report["forward"] and report["backward"], rank
        assert report["bytes"] == report["bytes_expected"] > 0


@pytest.fixture(scope="module")
def single_step():
    return bench_experts.reference()


def test_one_step_on_four_ranks_routes_drops_and_computes_as_one(single_step):
    ranks = bench_experts.measure(4, repeats=1)
    for layer, expected in enumerate(single_step["routing"]):
        for table in ("experts", "kept"):
            assert torch.equal(torch.cat([r["routing"][layer][table] for r in ranks]),
                               expected[table])
        assert sum(r["routing"][layer]["dropped"] for r in ranks) == expected["dropped"] > 0
    logits = torch.cat([r["logits"] for r in ranks])
    print("logits", compare.assert_close({"logits": logits},
                                         {"logits": single_step["logits"]}))
    assert sum(r["loss"] for r in ranks) == pytest.approx(single_step["loss"], abs=1e-12)
    grads = {name: next(r["grads"][name] for r in ranks if name in r["grads"])
             for name in single_step["grads"]}
    print("gradients", compare.assert_close(grads, single_step["grads"]))
    for r in ranks:
        assert r["bytes_sent"] == r["bytes_formula"] > 0
        assert r["expert_bytes"] == r["expert_bytes_formula"] == ranks[0]["expert_bytes"]
    row = bench_experts.format_table({4: ranks}).splitlines()[1].split()   # bench experts
    assert row[0] == "4" and float(row[2]) == float(row[3]) == round(
        max(r["bytes_sent"] for r in ranks) / 1024, 1)
    whole = build_model("gpt", **bench_experts.SIZES)
    expert_scalars = sum(p.numel() for n, p in whole.named_parameters() if ".experts." in n)
    assert 4 * ranks[0]["expert_bytes"] == 8 * expert_scalars


def test_a_checkpoint_chain_of_expert_and_ddp_runs_ends_at_single(tmp_path):
    """Steps 1–4 expert-parallel on 4 ranks, 5–7 ddp on 2 (the MoE GPT under plain data
    parallelism), 8–10 expert-parallel on 2: the parameters of ten single steps."""
    options = dict(model="gpt", experts=4, top_k=2, capacity_factor=1.0, layers=2, width=16,
                   heads=2, sequence=16, steps=10, batch_size=8, seed=3, quiet=True,
                   dtype="float64", optimizer="adam", lr=0.002)
    single = train(TrainConfig(strategy="single", **options)).state_dict
    path = str(tmp_path / "moe.pt")
    at = MOE.index("--steps")
    phases = [(4, ["--strategy", "expert", "--workers", "4"]),
              (7, ["--strategy", "ddp", "--workers", "2", "--resume"]),
              (10, ["--strategy", "expert", "--workers", "2", "--resume",
                    "--save", str(tmp_path / "end.pt")])]
    for steps, extra in phases:
        done = parcourse("train", *MOE[:at], "--steps", str(steps), *MOE[at + 2:], *extra,
                         "--checkpoint", path, "--checkpoint-every", str(steps))
        assert done.returncode == 0, done.stderr
        if steps == 4:   # the unsplit model's keys, in its order
            assert list(checkpoint.load(path)["model"]) == list(single)
    result = torch.load(tmp_path / "end.pt", weights_only=True)
    print("expert ×4 → ddp ×2 → expert ×2:", assert_same_parameters(result, single))


def test_experts_that_do_not_divide_over_the_workers_are_one_line():
    done = parcourse("train", *MOE, "--strategy", "expert", "--workers", "3")
    assert done.returncode == 2
    assert done.stderr == (ERR + "--experts 4 cannot be spread evenly over --workers 3: each "
                           "rank holds E/K experts, so use a multiple of 3, e.g. 3 or 6\n")
