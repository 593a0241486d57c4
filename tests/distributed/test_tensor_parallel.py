"""parcourse.model_parallel.tensor: column- and row-parallel layers equal the unsplit layers,
forward and backward, and move the bytes the Megatron analysis predicts."""

import pytest
import torch

from workers import model_parallel_workers as w
from workers.model_parallel_workers import upstream_gradient
from parcourse import launch
from parcourse.model_parallel import tensor as tensor_parallel
from parcourse.errors import ConfigError
from parcourse.models import build_model


def reference_mlp(batch=6, width=8, hidden=12, out=5):
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, out))
    x = torch.randn(batch, width, requires_grad=True)
    y = block(x)
    (y * upstream_gradient(y.shape)).sum().backward()
    return block, x, y


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_mlp_block_equals_the_unsplit_block(world_size):
    block, x, y = reference_mlp()
    results = launch.run(w.tensor_parallel_mlp, world_size, verbose=False)
    split_dims = {"0.weight": 0, "0.bias": 0, "2.weight": 1, "2.bias": None}
    for output, x_grad, gathered, forward_bytes, all_bytes, state in results:
        torch.testing.assert_close(output, y.detach())      # every worker has the output
        torch.testing.assert_close(x_grad, x.grad)
        for key, dim in split_dims.items():
            expected = dict(block.named_parameters())[key].grad
            if dim is None:  # the row-parallel bias is whole on every worker
                for g in gathered[key]:
                    torch.testing.assert_close(g, expected)
            else:
                torch.testing.assert_close(torch.cat(gathered[key], dim), expected)
        assert state.keys() == block.state_dict().keys()
        for key, value in block.state_dict().items():
            torch.testing.assert_close(state[key], value)
        # one all-reduce of the output (6 × 5 floats) forward, one of the input's
        # gradient (6 × 8 floats) backward
        assert forward_bytes == ({"forward all-reduce": [6 * 5 * 4, 1]})
        assert all_bytes == {"forward all-reduce": [6 * 5 * 4, 1],
                             "backward all-reduce": [6 * 8 * 4, 1]}


@pytest.mark.parametrize("world_size", [2, 3])
def test_attention_split_by_heads_equals_the_unsplit_attention(world_size):
    torch.manual_seed(0)
    reference = tensor_parallel.SelfAttention(12, 6)
    x = torch.randn(2, 5, 12, requires_grad=True)
    y = reference(x)
    (y * upstream_gradient(y.shape)).sum().backward()
    results = launch.run(w.tensor_parallel_attention, world_size, verbose=False)
    width = 12 // world_size
    for rank, (output, x_grad, out_grad, qkv_grad) in enumerate(results):
        torch.testing.assert_close(output, y.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x_grad, x.grad, rtol=1e-5, atol=1e-6)
        mine = slice(rank * width, (rank + 1) * width)
        torch.testing.assert_close(out_grad, reference.out.weight.grad[:, mine])
        rows = torch.cat([torch.arange(mine.start, mine.stop) + p * 12 for p in range(3)])
        torch.testing.assert_close(qkv_grad, reference.qkv.weight.grad[rows],
                                   rtol=1e-5, atol=1e-6)


def test_megatron_pairs_of_the_book_models():
    assert tensor_parallel.megatron_pairs(build_model("simple")) == [(1, 3)]
    assert tensor_parallel.megatron_pairs(build_model("complex")) == [(7, 9)]


def test_widths_that_do_not_split_are_refused():
    with pytest.raises(ConfigError) as error:
        tensor_parallel.check_splittable(build_model("simple"), 3)
    assert str(error.value) == ("layer 1 has 64 features, which cannot be split evenly over 3 "
                                "workers: use a number of workers that divides 64")
    with pytest.raises(ConfigError, match="has no Linear → activation → Linear block"):
        tensor_parallel.check_splittable(torch.nn.Sequential(torch.nn.Linear(3, 3)), 2)


def test_block_traffic_is_one_activation_all_reduce_each_way():
    report = launch.run(tensor_parallel.mlp_block_traffic, 2, args=(8, 16, 32),
                        verbose=False)[0]
    assert report["bytes"] == {"forward all-reduce": 8 * 16 * 4, "backward all-reduce": 8 * 16 * 4}
    assert report["output_error"] < 1e-5 and report["input_gradient_error"] < 1e-5
