"""python -m parcourse train --model gpt --strategy tensor [--sequence-parallel]: the GPT
split over T = 2 and 4 ranks by heads and columns trains to the single run's parameters
(float64, parcourse.compare.FLOAT64_TOLERANCE; measured: ≤ 1e-14) with SGD and Adam; its
checkpoints hold the unsplit GPT, so a run moves between tensor, sequence-parallel and
single; sequence parallelism's operators do what their docstrings say, and the bytes and
activation memory per rank are the formulas' (parcourse.bench.transformer_memory)."""

import pytest
import torch

from conftest import ERR, assert_same_parameters, parcourse, train_and_load
from parcourse import checkpoint, launch
from parcourse.bench import transformer_memory as tm
from parcourse.models import build_model
from workers import model_parallel_workers as w

GPT = ["--model", "gpt", "--heads", "4", "--steps", "6", "--batch-size", "8", "--seed", "3",
       "--quiet", "--dtype", "float64"]
OPTIMIZERS = {"sgd": ["--optimizer", "sgd", "--lr", "0.5"],
              "adam": ["--optimizer", "adam", "--lr", "0.002"]}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    return {name: train_and_load(folder, name, *options, common=GPT)
            for name, options in OPTIMIZERS.items()}


@pytest.mark.parametrize("optimizer, workers, extra", [       # Adam on 4 ranks, with and
    ("adam", 2, []),                                            # without sequence parallelism:
    ("sgd", 4, []),                                             # the checkpoint test below
    ("sgd", 2, ["--sequence-parallel"]),
])
def test_tensor_trains_the_gpt_to_the_single_parameters(tmp_path, single, optimizer, workers,
                                                        extra):
    result = train_and_load(tmp_path, "tensor", "--strategy", "tensor", "--workers",
                            str(workers), *OPTIMIZERS[optimizer], *extra, common=GPT)
    assert (result["3.weight"] == result["0.token.weight"]).all()     # still one table
    difference = assert_same_parameters(result, single[optimizer])
    print(f"gpt tensor ×{workers} {optimizer} {' '.join(extra)}: {difference}")


def test_checkpoints_hold_the_unsplit_gpt_and_move_between_strategies(tmp_path, single):
    """Steps 1–2 sequence-parallel on 4 ranks, 3–4 single, 5–6 tensor on 2 ranks (Adam):
    the same parameters as six single steps."""
    path = str(tmp_path / "gpt.pt")
    phases = [(2, ["--strategy", "tensor", "--workers", "4", "--sequence-parallel"]),
              (4, ["--strategy", "single", "--resume"]),
              (6, ["--strategy", "tensor", "--workers", "2", "--resume",
                   "--save", str(tmp_path / "resumed.pt")])]
    for steps, options in phases:
        done = parcourse("train", *GPT, *OPTIMIZERS["adam"], "--steps", str(steps),
                         "--checkpoint", path, "--checkpoint-every", "2", *options)
        assert done.returncode == 0, done.stderr
        if steps == 2:
            saved = checkpoint.load(path)
            unsplit = build_model("gpt", heads=4).state_dict()
            assert {k: v.shape for k, v in saved["model"].items()} == \
                   {k: v.shape for k, v in unsplit.items()}
    assert_same_parameters(torch.load(tmp_path / "resumed.pt", weights_only=True),
                           single["adam"])


def test_heads_that_do_not_split_exit_2_with_one_line():
    done = parcourse("train", "--model", "gpt", "--strategy", "tensor", "--workers", "4")
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", ERR + "--strategy tensor gives each worker whole heads, but --heads 2 cannot "
                     "be split over --workers 4: use a number of workers that divides 2\n")


def test_the_sequence_operators_move_what_their_docstrings_say():
    K, part = 2, 3
    ranks = launch.run(w.sequence_operators, K, verbose=False)
    whole = ranks[0]["gathered"]
    summed = sum(r["upstream"] for r in ranks)
    partial_sum = sum(r["partial"] for r in ranks)
    scattered_upstreams = torch.cat([r["scattered_upstream"] for r in ranks], 1)
    sliced_upstreams = torch.cat([r["sliced_upstream"] for r in ranks], 1)
    for rank, r in enumerate(ranks):
        mine = slice(rank * part, (rank + 1) * part)
        assert whole.shape == (2, part * K, 5)
        torch.testing.assert_close(r["gathered"], whole)                 # g: all-gather,
        torch.testing.assert_close(r["mine_grad"], summed[:, mine])      # reduce-scatter
        torch.testing.assert_close(r["scattered"], partial_sum[:, mine])  # ḡ: reduce-scatter,
        torch.testing.assert_close(r["partial_grad"], scattered_upstreams)  # all-gather
        torch.testing.assert_close(r["sliced"], whole[:, mine])          # entry: slice,
        torch.testing.assert_close(r["entry_grad"], sliced_upstreams)    # all-gather
        torch.testing.assert_close(r["left"], whole)                     # exit: all-gather,
        torch.testing.assert_close(r["exit_grad"], r["exit_upstream"][:, mine])  # slice
        (fused, plain), (fused_grads, plain_grads) = r["fused"], r["fused_grads"]
        torch.testing.assert_close(fused, plain, rtol=0, atol=1e-14)
        for a, b in zip(fused_grads, plain_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
        n = 2 * part * K * 5 * 8                     # bytes of one whole float64 tensor
        assert r["counted"] == {"forward all-gather": [n, 1], "backward reduce-scatter": [n, 1],
                                "forward reduce-scatter": [n, 1], "backward all-gather": [n, 1]}


def test_bytes_and_activation_memory_per_rank_are_the_formulas():
    figures = tm.measure(2)
    for row in tm.memory(2, figures=figures):
        assert row["measured"] == row["formula"], row
    rows = tm.traffic(2, figures=figures)
    for mode in tm.MODES[1:]:
        mine = [r for r in rows if r["mode"] == mode]
        assert sum(r["ring_bytes_per_rank"] for r in mine) == pytest.approx(
            mine[0]["formula_total"], rel=1e-12)

    def in_blocks(mode):
        return sum(r["ring_bytes_per_rank"] for r in rows if r["mode"] == mode
                   and not r["collective"].endswith(("(head)", "(embeddings)", "region)")))
    assert in_blocks("tensor") == in_blocks(tm.MODES[3])    # all-reduce = RS + AG
