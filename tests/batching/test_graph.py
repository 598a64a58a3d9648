"""VQGraph: degrees, the batch map, devices, and errors by message."""
from __future__ import annotations

import pytest
import torch

from vqgnn.batching.graph import VQGraph, check_edge_index


def hand_graph(device="cpu", dtype=torch.long) -> VQGraph:
    # 0 -> 1, 0 -> 2, 1 -> 2, 3 -> 2, 2 -> 2 (self-loop); node 4 isolated.
    edge_index = torch.tensor([[0, 0, 1, 3, 2], [1, 2, 2, 2, 2]], dtype=dtype, device=device)
    return VQGraph(edge_index, 5)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_degrees_local_map_and_repr(device, dtype):
    graph = hand_graph(device, dtype)
    assert graph.edge_index.dtype == torch.int64
    assert graph.num_nodes == 5 and graph.num_edges == 5
    assert graph.in_degree.tolist() == [0, 1, 4, 0, 0]   # targets: edge_index[1]
    assert graph.out_degree.tolist() == [2, 1, 1, 1, 0]  # sources: edge_index[0]
    assert graph.local.tolist() == [-1] * 5 and graph.local.dtype == torch.int64
    assert graph.device.type == device and graph.local.device.type == device
    assert repr(graph) == "VQGraph(num_nodes=5, num_edges=5)"


def test_empty_edge_list_is_accepted():
    graph = VQGraph(torch.zeros(2, 0, dtype=torch.long), 3)
    assert graph.in_degree.tolist() == [0, 0, 0] and graph.num_edges == 0


def test_to_same_device_returns_self_and_other_device_copies():
    graph = hand_graph()
    assert graph.to("cpu") is graph
    assert graph.to(torch.device("cpu")) is graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_to_cuda_copies_everything():
    graph = hand_graph()
    moved = graph.to("cuda")
    assert moved is not graph
    for t in (moved.edge_index, moved.in_degree, moved.out_degree, moved.local):
        assert t.device.type == "cuda"
    assert moved.in_degree.tolist() == graph.in_degree.tolist()


def test_check_batch_accepts_distinct_ids_in_range():
    graph = hand_graph()
    graph.check_batch(torch.tensor([4, 0, 2]))
    graph.check_batch(torch.tensor([3], dtype=torch.int32))


@pytest.mark.parametrize("batch, match", [
    (torch.tensor([0, 2, 0, 2]), r"'VQConv': 'batch' holds duplicated node ids \(2 repeats\)"),
    (torch.tensor([0, 5]), r"'VQConv': 'batch' holds node ids in \[0, 5\], outside \[0, 5\)"),
    (torch.tensor([-1, 2]), r"'batch' holds node ids in \[-1, 2\], outside \[0, 5\)"),
    (torch.tensor([], dtype=torch.long), r"'VQConv': 'batch' is empty"),
    (torch.tensor([[0, 1]]), r"'batch' must be a 1-D int64 or int32 tensor of node ids, "
                             r"received shape \(1, 2\) and dtype torch.int64"),
    (torch.tensor([0.0, 1.0]), r"'batch' must be a 1-D int64 or int32 tensor of node ids, "
                               r"received shape \(2,\) and dtype torch.float32"),
    (torch.tensor([True, False]), r"received shape \(2,\) and dtype torch.bool \(a mask: "
                                  r"pass its node ids, mask.nonzero\(\).view\(-1\)\)"),
    ([0, 1], r"'batch' must be a 1-D int64 or int32 tensor of node ids, received list"),
])
def test_check_batch_errors(batch, match):
    with pytest.raises(ValueError, match=match):
        hand_graph().check_batch(batch, owner="VQConv")


def test_check_batch_default_owner():
    with pytest.raises(ValueError, match="'VQGraph': 'batch' is empty"):
        hand_graph().check_batch(torch.tensor([], dtype=torch.long))


def test_constructor_and_check_edge_index_errors():
    with pytest.raises(ValueError, match="'VQGraph': 'num_nodes' must be an int >= 1, "
                                         "received 0"):
        VQGraph(torch.zeros(2, 0, dtype=torch.long), 0)
    with pytest.raises(TypeError, match="'VQGraph': 'edge_index' must be a torch.Tensor, "
                                        "received list"):
        VQGraph([[0], [1]], 2)
    with pytest.raises(ValueError, match=r"'edge_index' must have shape \(2, E\), "
                                         r"received \(3, 1\)"):
        VQGraph(torch.zeros(3, 1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="'edge_index' must be int64 or int32, "
                                         "received torch.float32"):
        VQGraph(torch.zeros(2, 1), 2)
    with pytest.raises(ValueError, match=r"'Owner': 'edge_index' holds node indices in "
                                         r"\[0, 7\], outside \[0, 3\) for num_nodes=3"):
        check_edge_index(torch.tensor([[0], [7]]), 3, owner="Owner")
    with pytest.raises(ValueError, match=r"holds node indices in \[-2, 1\]"):
        check_edge_index(torch.tensor([[-2], [1]]), 3)


def test_edge_weight_checks_and_travels():
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    weight = torch.tensor([0.5, 1.0, 2.0])
    graph = VQGraph(edge_index, 3, weight)
    assert torch.equal(graph.edge_weight, weight) and "weighted" in repr(graph)
    assert torch.equal(graph.to("cpu").edge_weight, weight)
    with pytest.raises(ValueError, match="'edge_weight' must be a tensor of shape \\(3,\\), "
                                         "received \\(2,\\)"):
        VQGraph(edge_index, 3, weight[:2])
    with pytest.raises(ValueError, match="'edge_weight' must hold finite non-negative floats, "
                                         "received dtype torch.int64"):
        VQGraph(edge_index, 3, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="non-negative .* minimum -1.0"):
        VQGraph(edge_index, 3, torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="finite non-negative"):
        VQGraph(edge_index, 3, torch.tensor([1.0, float("nan"), 0.0]))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="'edge_weight' is on cuda"):
            VQGraph(edge_index, 3, weight.cuda())
