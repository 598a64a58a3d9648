"""VQConv in half precision: a bfloat16 model and CPU ``torch.autocast``.

torch's sparse products have no half-precision kernel on the CPU; the batch's CSR products
then run in float32 (``lowrank.spmm``). These tests check that a training step, the
full-graph forward and exact inference run that way for every built-in adapter, and give
what the float32 layer gives, to bfloat16's precision.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close
from torch_geometric.nn import GATConv, GATv2Conv, GCNConv, SAGEConv

from vqgnn import VQConv, VQGraph
from vqgnn.batching import lowrank
from vqgnn.datasets import load_dataset

CONVS = {
    "gcn": lambda: GCNConv(32, 16),
    "sage": lambda: SAGEConv(32, 16),
    "gat": lambda: GATConv(32, 8, heads=2),
    "gatv2": lambda: GATv2Conv(32, 8, heads=2),
}
TOL = {"atol": 0.05, "rtol": 0.05}


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("synthetic:n=600,deg=12")
    return data, VQGraph(data.edge_index, data.num_nodes)


def _conv(name: str, data) -> VQConv:
    torch.manual_seed(0)
    conv = VQConv(CONVS[name](), num_codewords=32, num_nodes=data.num_nodes)
    with torch.no_grad():
        conv.init_codebook(data.x)
    return conv


def _step(conv: VQConv, x: torch.Tensor, graph: VQGraph, batch: torch.Tensor,
          autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward and backward: the output and the first weight's gradient."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = conv(x, graph, batch)
    out.float().pow(2).mean().backward()
    weight = next(p for p in conv.parameters() if p.grad is not None)
    return out, weight.grad


@pytest.mark.parametrize("name", sorted(CONVS))
def test_a_step_under_cpu_autocast_and_in_bfloat16_equals_float32(name, setup):
    data, graph = setup
    batch = torch.randperm(data.num_nodes, generator=torch.Generator().manual_seed(1))[:128]
    ref = _conv(name, data)
    want, want_grad = _step(ref, data.x[batch], graph, batch)
    auto = copy.deepcopy(_conv(name, data))
    got, got_grad = _step(auto, data.x[batch], graph, batch, autocast=True)
    assert_close(got.float(), want, **TOL)
    assert_close(got_grad, want_grad, **TOL)
    auto.update_codebook()  # the captured pair applies (codebook arithmetic in float32)
    half = _conv(name, data).bfloat16()
    got, got_grad = _step(half, data.x[batch].bfloat16(), graph, batch)
    assert got.dtype == torch.bfloat16
    assert_close(got.float(), want, **TOL)
    assert_close(got_grad.float(), want_grad, **TOL)
    half.update_codebook()


@pytest.mark.parametrize("name", ["gcn", "sage"])
def test_full_graph_forward_and_exact_inference_under_cpu_autocast(name, setup):
    data, graph = setup
    conv = _conv(name, data)
    want = conv(data.x, graph)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(data.x, graph)
    assert_close(got.float(), want, **TOL)
    conv.eval()
    with torch.no_grad():
        exact = conv.inference_all(data.x, graph, 256)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = conv.inference_all(data.x, graph, 256)
    assert_close(half.float(), exact, **TOL)


def test_spmm_runs_half_precision_in_float32_on_the_cpu():
    a = lowrank.csr(torch.tensor([0, 2, 3]), torch.tensor([0, 2, 1]),
                    torch.tensor([0.5, 2.0, -1.0]), (2, 3))
    x = torch.randn(3, 4, dtype=torch.float64)
    want = a.to(torch.float64).to_dense() @ x
    for dtype in (torch.bfloat16, torch.float16):
        xh = x.to(dtype).requires_grad_()
        got = lowrank.spmm(a.to(dtype), xh)
        assert got.dtype == dtype
        assert_close(got.double(), want, **TOL)
        got.sum().backward()
        assert xh.grad is not None and xh.grad.dtype == dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 stays float32
        assert lowrank.spmm(a, x.float()).dtype == torch.float32
        assert lowrank.spmm(a.to(torch.float64), x).dtype == torch.float64
