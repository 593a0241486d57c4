"""python -m parcourse train --model gpt: every data-parallel, sharded and pipeline strategy
saves the parameters of the single run (float64, parcourse.compare.FLOAT64_TOLERANCE; measured:
≤ 1e-14), the tied token table included, under both of its state_dict names.

The runs are short (10 Adam steps on batches of 8 windows of the tiny default GPT): Adam
moves every parameter by about its learning rate each step, whatever the gradient's
size, so a gradient that misses one use of the tied table, a shard left out or a group
not gathered moves parameters by 1e-4 and more, far above the tolerance.
"""

import pytest
import torch

from conftest import ERR, assert_same_parameters, parcourse, train_and_load

GPT = ["--model", "gpt", "--steps", "10", "--batch-size", "8", "--seed", "3", "--quiet",
       "--dtype", "float64", "--optimizer", "adam", "--lr", "0.002"]
KEYS = ["0.token.weight", "0.position.weight"]     # the first keys; then the blocks
HEAD = ["3.weight", "3.norm.weight", "3.norm.bias"]  # 3.weight is 0.token.weight, tied


def gpt(folder, name, *args):
    return train_and_load(folder, name, *args, common=GPT)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return gpt(tmp_path_factory.mktemp("single"), "single")


@pytest.mark.parametrize("strategy, workers, extra", [
    ("ddp", 2, []),
    ("dp-manual", 3, []),                              # uneven shards: 3, 3, 2 windows
    ("dp-bucketed", 2, ["--bucket-kb", "16"]),
    ("horovod", 2, []),
    ("zero1", 2, []),
    ("zero2", 3, ["--bucket-kb", "16"]),
    ("zero3", 3, ["--recompute"]),                     # the head gathers the table's group
    ("fsdp", 2, []),                                   # embeddings and head: one unit
    ("torch-zero1", 2, []),
    ("single", 1, ["--accumulation", "3"]),            # micro-batches of 3, 3, 2
    ("single", 1, ["--recompute"]),
    # pipelines: the table on the first stage, the head on the last, their gradients summed
    ("pipeline-gpipe", 2, ["--microbatches", "4"]),
    ("pipeline-1f1b", 3, ["--microbatches", "2"]),     # embeddings | block 1 | block 2, head
    ("dp-pp", 4, ["--stages", "2", "--microbatches", "2"]),
])
def test_strategy_trains_the_gpt_to_the_single_parameters(tmp_path, single, strategy,
                                                          workers, extra):
    result = train_and_load(tmp_path, strategy, "--strategy", strategy, "--workers",
                            str(workers), *extra, common=GPT)
    assert list(result)[:2] == KEYS and list(result)[-3:] == HEAD
    assert (result["3.weight"] == result["0.token.weight"]).all()   # still one table
    difference = assert_same_parameters(result, single)
    print(f"gpt {strategy} ×{workers} {' '.join(extra)}: {difference}")


def test_a_zero3_checkpoint_resumes_under_fsdp(tmp_path, single):
    """The checkpoint holds the unsplit GPT (the table under both names, its Adam state
    once); FSDP cuts its pieces out of it and finishes the run."""
    path = str(tmp_path / "gpt.pt")
    for strategy, steps, extra in (("zero3", "5", ["--checkpoint-every", "5"]),
                                   ("fsdp", "10", ["--resume"])):
        done = parcourse("train", *GPT, "--strategy", strategy, "--workers", "2", "--steps",
                         steps, "--checkpoint", path, *extra,
                         *(["--save", str(tmp_path / "resumed.pt")] if steps == "10" else []))
        assert done.returncode == 0, done.stderr
    assert_same_parameters(torch.load(tmp_path / "resumed.pt", weights_only=True), single)


def test_a_pipeline_checkpoint_resumes_cut_another_way(tmp_path, single):
    """Two stages save the unsplit GPT (the head's copy of the table under its own name, its
    Adam state once); three stages cut differently take their parts out of it."""
    path = str(tmp_path / "gpt.pt")
    for strategy, workers, steps, extra in (
            ("pipeline-1f1b", "2", "5", ["--checkpoint-every", "5", "--microbatches", "2"]),
            ("pipeline-gpipe", "3", "10", ["--resume", "--microbatches", "4"])):
        done = parcourse("train", *GPT, "--strategy", strategy, "--workers", workers,
                         "--steps", steps, "--checkpoint", path, *extra,
                         *(["--save", str(tmp_path / "resumed.pt")] if steps == "10" else []))
        assert done.returncode == 0, done.stderr
    assert_same_parameters(torch.load(tmp_path / "resumed.pt", weights_only=True), single)


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt", "--strategy", "pipeline-gpipe", "--workers", "5"],
     "--stages 5 is more than the 4 layers of --model gpt (the embeddings, --layers 2 blocks "
     "and the head): each stage needs at least one layer, so use --stages 4 or fewer"),
    (["--width", "64"], "--width works with --model gpt (got --model simple)"),
])
def test_bad_gpt_options_exit_2_with_one_line(args, message):
    done = parcourse("train", *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", ERR + message + "\n")
