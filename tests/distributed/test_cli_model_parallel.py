"""python -m parcourse train with the model-parallel strategies: each saves the unsplit
model's parameters (plain key names), equal to --strategy single's; bad input exits 2."""

import sys

import pytest

from conftest import (COMMON, ERR, OPTIMIZERS, assert_same_parameters, parcourse,
                      train_and_load)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    return {(model, optimizer): train_and_load(folder, f"{model}-{optimizer}", "--model", model,
                                               *OPTIMIZERS[optimizer])
            for model, optimizer in (("simple", "sgd"), ("simple", "adam"), ("complex", "sgd"),
                                     ("complex", "adam"))}


@pytest.mark.parametrize("model, optimizer, args", [
    ("simple", "sgd", ["--strategy", "pipeline-gpipe", "--workers", "2", "--microbatches", "4"]),
    ("simple", "adam", ["--strategy", "pipeline-1f1b", "--workers", "3", "--microbatches", "2"]),
    ("complex", "sgd", ["--strategy", "pipeline-1f1b", "--workers", "2", "--microbatches", "8",
                        "--partition", "3", "--receives", "needed"]),
    # complex with Adam: in float32 it differs by ~3e-6 even in one process, just from
    # running 2 threads instead of 1 (Adam turns the rounding noise of near-zero gradients
    # into lr-sized steps); in float64 that noise is 1e-16 and the pipeline matches
    ("complex", "adam", ["--strategy", "pipeline-1f1b", "--workers", "2", "--microbatches", "4"]),
    ("complex", "sgd", ["--strategy", "pipeline-gpipe", "--workers", "2",
                        "--partition", "time"]),                      # naive split: M = 1
    ("simple", "sgd", ["--strategy", "dp-pp", "--workers", "4", "--stages", "2",
                       "--microbatches", "2", "--receives", "ahead"]),
    ("simple", "adam", ["--strategy", "tensor", "--workers", "2"]),
    ("complex", "sgd", ["--strategy", "tensor", "--workers", "4"]),
])
def test_model_parallel_matches_single(tmp_path, single, model, optimizer, args):
    result = train_and_load(tmp_path, "run", "--model", model, *OPTIMIZERS[optimizer], *args)
    assert_same_parameters(result, single[model, optimizer])


def test_pipeline_under_torchrun(tmp_path, single):
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "parcourse")
    result = train_and_load(tmp_path, "torchrun", "--strategy", "pipeline-1f1b",
                            "--microbatches", "4", *OPTIMIZERS["sgd"], launcher=torchrun)
    assert_same_parameters(result, single["simple", "sgd"])


@pytest.mark.parametrize("args, message", [
    (["--strategy", "pipeline-gpipe", "--workers", "7"],
     "--stages 7 is more than the 6 layers of --model simple: each stage needs at least one "
     "layer, so use --stages 6 or fewer"),
    (["--strategy", "pipeline-1f1b", "--workers", "2", "--microbatches", "0"],
     "--microbatches must be at least 1 (got 0)"),
    (["--strategy", "pipeline-1f1b", "--workers", "2", "--microbatches", "5"],
     "--batch-size 32 cannot be cut into 5 equal micro-batches (1 replica(s) × "
     "--microbatches 5): use a multiple of 5, e.g. 30"),
    (["--strategy", "dp-pp", "--workers", "3", "--stages", "2"],
     "--workers 3 does not fit --stages 2 × replicas: use a multiple of 2 workers"),
    (["--strategy", "pipeline-gpipe", "--workers", "2", "--stages", "3"],
     "--strategy pipeline-gpipe runs one stage per worker, but --stages is 3 and --workers 2: "
     "make them equal, or use --strategy dp-pp for several pipeline replicas"),
    (["--strategy", "ddp", "--workers", "2", "--microbatches", "2"],
     "--microbatches works with the pipeline strategies (pipeline-gpipe, pipeline-1f1b, "
     "pipeline-interleaved, pipeline-zb-h1, dp-pp, dp-pp-tp), not --strategy ddp"),
    (["--strategy", "tensor", "--workers", "3"],
     "layer 1 has 64 features, which cannot be split evenly over 3 workers: use a number of "
     "workers that divides 64"),
    (["--strategy", "pipeline-gpipe", "--workers", "2", "--partition", "9"],
     "--partition '9': cut points must increase strictly and lie between 1 and 5 (the model "
     "has 6 layers)"),
    (["--strategy", "pipeline-interleaved", "--workers", "2", "--microbatches", "1"],
     "--microbatches 1 is fewer than --stages 2: interleaved 1F1B sends the micro-batches "
     "through each chunk in groups of P = 2, so it needs at least 2"),
    (["--strategy", "pipeline-interleaved", "--workers", "4", "--microbatches", "6",
      "--batch-size", "48", "--model", "complex"],
     "--microbatches 6 is not a multiple of --stages 4: interleaved 1F1B sends the "
     "micro-batches through each chunk in groups of P = 4; use 4 or 8"),
    (["--strategy", "pipeline-interleaved", "--workers", "2", "--microbatches", "4",
      "--model", "gpt", "--chunks", "3"],
     "--stages 2 × --chunks 3 = 6 model chunks is more than the 4 layers of --model gpt (the "
     "embeddings, --layers 2 blocks and the head): each chunk needs at least one layer, so "
     "use --chunks 2 or fewer"),
    (["--strategy", "pipeline-1f1b", "--workers", "2", "--receives", "later"],
     "unknown --receives 'later': choose one of step, ahead, needed"),
    (["--strategy", "pipeline-1f1b", "--workers", "2", "--chunks", "2"],
     "--chunks works with --strategy pipeline-interleaved (got --strategy pipeline-1f1b)"),
    (["--strategy", "horovod-elastic", "--workers", "2", "--checkpoint", "c.pt"],
     "--checkpoint and --resume do not apply to --strategy horovod-elastic, which commits its "
     "state in memory every 10 steps"),
])
def test_bad_model_parallel_input_exits_2_before_any_worker_starts(in_process, args, message):
    assert in_process("train", *COMMON, *args) == (2, "", ERR + message + "\n")


@pytest.mark.parametrize("args, message", [
    (["--schedules", "zigzag"],
     "bench pipeline compares gpipe, 1f1b, interleaved, zb-h1, not zigzag"),
    (["--repeats", "0"], "--repeats must be at least 1 (got 0)"),
    (["--microbatches", "6", "--batch-size", "48", "--workers", "6"],
     "--stages 6 × --chunks 2 = 12 model chunks is more than the 10 layers of --model gpt (the "
     "embeddings, --layers 8 blocks and the head): each chunk needs at least one layer, so "
     "use --chunks 1 or fewer"),
    (["--microbatches", "3", "--batch-size", "48"],
     "--microbatches 3 is not a multiple of --stages 2: interleaved 1F1B sends the "
     "micro-batches through each chunk in groups of P = 2; use 2 or 4"),
    (["--receives", "later"], "unknown --receives 'later': choose one of step, ahead, needed"),
])
def test_bad_pipeline_benchmark_input_exits_2_with_one_line(in_process, args, message):
    status, _, stderr = in_process("bench", "pipeline", *args)
    assert (status, stderr) == (2, "python -m parcourse bench: error: " + message + "\n")


def test_the_benchmark_command_prints_the_same_one_line_error():
    done = parcourse("bench", "pipeline", "--repeats", "0", timeout=60)
    assert (done.returncode, done.stderr) == (
        2, "python -m parcourse bench: error: --repeats must be at least 1 (got 0)\n")
