"""The grid's groups and the traffic the rate worker replays (chapter 4, planner.rate)."""

from parcourse.planner.memory import Config
from parcourse.planner.models import book_shape
from parcourse.planner.rate import grid_groups, step_traffic


def test_grid_groups_number_tensor_fastest_then_data_then_pipeline():
    data, tensor = grid_groups(Config(2, tensor=2, pipeline=2))
    assert data == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert tensor == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert grid_groups(Config(4)) == ([[0, 1, 2, 3]], [[0], [1], [2], [3]])


def test_step_traffic_is_the_gradients_and_four_all_reduces_per_layer():
    simple = book_shape("simple")
    assert step_traffic("simple", Config(2), 16) == (simple.parameters * 4, [])
    assert step_traffic("simple", Config(1, pipeline=2, microbatches=4), 4) == (0, [])
    gpt = book_shape("gpt")                       # 2 layers, s = 32, d = 32
    grads, calls = step_traffic("gpt", Config(1, tensor=2), 32)
    assert grads == 0 and calls == [32 * 32 * 32 * 4] * 8
    grads, calls = step_traffic("gpt", Config(2, tensor=2, pipeline=2, microbatches=2), 8)
    assert grads == gpt.parameters / 4 * 4        # a stage's tensor shard, 4 bytes each
    assert calls == [8 * 32 * 32 * 4] * 8          # 4 × 1 layer × 2 micro-batches
