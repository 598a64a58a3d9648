"""VQConv: exactness on the whole graph, the oracle codebook, merged vs per-edge, errors."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv, GATv2Conv, GCNConv, GINConv, GraphConv, SAGEConv
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.utils import coalesce, to_undirected

from vqgnn import ConfigError, VQConv, VQGraph
from vqgnn.quantize import CodebookOptions


class LinearUserConv(MessagePassing):
    """A user's layer with messages linear in the source features (mean aggregation)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(aggr="mean")
        self.in_channels = in_channels
        self.lin = torch.nn.Linear(in_channels, out_channels)
        self.root = torch.nn.Linear(in_channels, out_channels, bias=False)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.propagate(edge_index, x=self.lin(x)) + self.root(x)

    def message(self, x_j: Tensor) -> Tensor:
        return x_j


class NonlinearUserConv(MessagePassing):
    """A user's layer whose messages depend non-linearly on both end points."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(aggr="add")
        self.in_channels = in_channels
        self.lin_j = torch.nn.Linear(in_channels, out_channels)
        self.lin_i = torch.nn.Linear(in_channels, out_channels, bias=False)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.propagate(edge_index, x=x) * 0.1

    def message(self, x_j: Tensor, x_i: Tensor) -> Tensor:
        return torch.tanh(self.lin_j(x_j) + self.lin_i(x_i))


def make_conv(kind: str, cin: int, cout: int) -> MessagePassing:
    if kind == "gcn":
        return GCNConv(cin, cout)
    if kind == "sage":
        return SAGEConv(cin, cout)
    if kind == "gat":
        return GATConv(cin, cout // 2, heads=2)
    if kind == "gatv2":
        return GATv2Conv(cin, cout // 2, heads=2)
    if kind == "graph":
        return GraphConv(cin, cout, aggr="mean")
    if kind == "gin":
        return GINConv(torch.nn.Sequential(torch.nn.Linear(cin, cout), torch.nn.Tanh(),
                                           torch.nn.Linear(cout, cout)), train_eps=True)
    if kind == "user_linear":
        return LinearUserConv(cin, cout)
    if kind == "user_nonlinear":
        return NonlinearUserConv(cin, cout)
    raise KeyError(kind)


ALL_KINDS = ["gcn", "sage", "gat", "gatv2", "graph", "gin", "user_linear", "user_nonlinear"]
LINEAR_KINDS = ["gcn", "sage", "graph", "gin", "user_linear"]
NONLINEAR_KINDS = ["gat", "gatv2", "user_nonlinear"]


def random_graph(num_nodes: int = 40, num_edges: int = 160, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(num_nodes, (2, num_edges), generator=gen)
    ei = ei[:, ei[0] != ei[1]]
    return coalesce(to_undirected(ei, num_nodes=num_nodes), num_nodes=num_nodes)


class Stack(torch.nn.Module):
    """A multi-layer model of VQConvs with tanh in between (smooth, so grads compare)."""

    def __init__(self, kind: str, num_nodes: int, channels: list[int], num_codewords: int,
                 **kwargs) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            VQConv(make_conv(kind, cin, cout), num_codewords, num_nodes, **kwargs)
            for cin, cout in zip(channels[:-1], channels[1:]))

    def forward(self, x: Tensor, graph: VQGraph, batch: Tensor | None = None,
                inputs: list[Tensor] | None = None) -> Tensor:
        for i, layer in enumerate(self.layers):
            if inputs is not None:
                x.retain_grad()
                inputs.append(x)
            x = layer(x, graph, batch)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("merge", [True, False])
def test_whole_graph_batch_equals_wrapped_conv(kind: str, merge: bool, device: str) -> None:
    torch.manual_seed(0)
    n = 30
    graph = VQGraph(random_graph(n, 120).to(device), n)
    layer = VQConv(make_conv(kind, 6, 8), num_codewords=4, num_nodes=n, merge=merge).to(device)
    x = torch.randn(n, 6, device=device)
    layer.init_codebook(x)
    perm = torch.randperm(n, device=device)  # the batch order must not matter

    x1 = x.clone().requires_grad_()
    ref = layer.conv(x1, graph.edge_index)
    (ref * torch.arange(ref.numel(), device=device).view_as(ref).sin()).sum().backward()
    ref_grads = [p.grad.clone() for p in layer.conv.parameters()]
    layer.conv.zero_grad()

    x2 = x.clone().requires_grad_()
    out = layer(x2[perm], graph, perm)
    torch.testing.assert_close(out, ref[perm].detach(), rtol=1e-5, atol=1e-5)
    weight = torch.arange(ref.numel(), device=device).view_as(ref).sin()[perm]
    (out * weight).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    for p, g in zip(layer.conv.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_full_graph_forward_equals_wrapped_conv(kind: str, device: str) -> None:
    torch.manual_seed(0)
    n = 30
    graph = VQGraph(random_graph(n, 120).to(device), n)
    layer = VQConv(make_conv(kind, 6, 8), num_codewords=4, num_nodes=n).to(device)
    x1 = torch.randn(n, 6, device=device, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    ref = layer.conv(x1, graph.edge_index)
    ref.pow(2).sum().backward()
    ref_grads = [p.grad.clone() for p in layer.conv.parameters()]
    layer.conv.zero_grad()
    out = layer(x2, graph)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.pow(2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    for p, g in zip(layer.conv.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-5)


def full_graph_reference(model: Stack, x: Tensor, graph: VQGraph, y: Tensor):
    """Full-graph outputs, input gradients per layer, parameter gradients, aggregated grads."""
    model.zero_grad()
    inputs: list[Tensor] = []
    x = x.clone().requires_grad_()
    out = model(x, graph, None, inputs)
    F.cross_entropy(out, y, reduction="sum").div(y.numel()).backward()
    input_grads = [h.grad.clone() for h in inputs]
    param_grads = [p.grad.clone() for p in model.parameters()]
    # Gradients at every layer's aggregated output, through the whole-graph batch path
    # (equal to the wrapped layers', as tested above).
    model.zero_grad()
    everyone = torch.arange(graph.num_nodes, device=x.device)
    out_all = model(x.detach(), graph, everyone)
    F.cross_entropy(out_all, y, reduction="sum").div(y.numel()).backward()
    agg_grads = []
    for layer in model.layers:
        captured = layer.take_captured()
        assert captured is not None and torch.equal(captured.batch, everyone)
        agg_grads.append(captured.grad)
    model.zero_grad()
    return out.detach(), [h.detach() for h in inputs], input_grads, param_grads, agg_grads


def set_oracle(model: Stack, inputs: list[Tensor], agg_grads: list[Tensor]) -> None:
    n = inputs[0].size(0)
    for layer, h, g in zip(model.layers, inputs, agg_grads):
        layer.quantizer.set_codewords(h, g, torch.arange(n, device=h.device))


def oracle_batch_step(model: Stack, x: Tensor, graph: VQGraph, y: Tensor, batch: Tensor):
    inputs: list[Tensor] = []
    xb = x[batch].clone().requires_grad_()
    out = model(xb, graph, batch, inputs)
    F.cross_entropy(out, y[batch], reduction="sum").div(y.numel()).backward()
    for layer in model.layers:  # keep the oracle codebook: drop the captured pairs
        layer.take_captured()
    return out.detach(), [h.grad for h in inputs]


def cosine(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def setup_oracle(kind: str, backward_approx: bool, device: str = "cpu", n: int = 36):
    torch.manual_seed(1)
    graph = VQGraph(random_graph(n, 150, seed=1).to(device), n)
    model = Stack(kind, n, [5, 8, 8, 4], num_codewords=n, backward_approx=backward_approx)
    model = model.to(device)
    x = torch.randn(n, 5, device=device)
    y = torch.randint(4, (n,), device=device)
    return model, graph, x, y


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_oracle_codebook_outputs_equal_full_graph(kind: str, device: str) -> None:
    model, graph, x, y = setup_oracle(kind, True, device)
    out_full, inputs, _, _, agg_grads = full_graph_reference(model, x, graph, y)
    set_oracle(model, inputs, agg_grads)
    batch = torch.randperm(graph.num_nodes, device=device)[:10]
    out, _ = oracle_batch_step(model, x, graph, y, batch)
    torch.testing.assert_close(out, out_full[batch], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", LINEAR_KINDS)
def test_oracle_codebook_gradients_equal_full_graph(kind: str, device: str) -> None:
    model, graph, x, y = setup_oracle(kind, True, device)
    _, inputs, input_grads, param_grads, agg_grads = full_graph_reference(model, x, graph, y)
    set_oracle(model, inputs, agg_grads)
    # A partition of all nodes into batches: the batches' parameter gradients add up
    # to the full-graph gradient, and every batch's representation gradients match.
    perm = torch.randperm(graph.num_nodes, device=device)
    model.zero_grad()
    for batch in perm.split(7):
        _, grads = oracle_batch_step(model, x, graph, y, batch)
        for layer_grad, full_grad in zip(grads, input_grads):
            torch.testing.assert_close(layer_grad, full_grad[batch], rtol=1e-4, atol=1e-6)
    for p, g in zip(model.parameters(), param_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", LINEAR_KINDS)
def test_oracle_gradients_differ_without_backward_term(kind: str) -> None:
    """The test above must fail when the backward term is removed."""
    model, graph, x, y = setup_oracle(kind, False)
    _, inputs, input_grads, _, agg_grads = full_graph_reference(model, x, graph, y)
    set_oracle(model, inputs, agg_grads)
    batch = torch.randperm(graph.num_nodes)[:10]
    _, grads = oracle_batch_step(model, x, graph, y, batch)
    # The last layer's inputs get no out-of-batch gradient messages: they differ.
    assert not torch.allclose(grads[-1], input_grads[-1][batch], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kind", NONLINEAR_KINDS)
def test_oracle_backward_term_helps_nonlinear_layers(kind: str) -> None:
    """Attention and nonlinear messages: the backward term is approximate but helps.

    Cosine similarities to the full-graph gradients (seeds fixed), lowest layer input
    gradient of a 3-layer model, with and without the backward term, are printed.
    """
    sims = {}
    for backward in (True, False):
        model, graph, x, y = setup_oracle(kind, backward)
        _, inputs, input_grads, _, agg_grads = full_graph_reference(model, x, graph, y)
        set_oracle(model, inputs, agg_grads)
        batch = torch.randperm(graph.num_nodes)[:10]
        _, grads = oracle_batch_step(model, x, graph, y, batch)
        sims[backward] = min(cosine(g, f[batch]) for g, f in zip(grads[1:], input_grads[1:]))
    print(f"{kind}: cosine with backward term {sims[True]:.4f}, without {sims[False]:.4f}")
    assert sims[True] > 0.9
    assert 1 - sims[True] < 0.5 * (1 - sims[False])


@pytest.mark.parametrize("kind", ["gcn", "sage", "gat", "gatv2"])
def test_merged_and_per_edge_paths_agree(kind: str) -> None:
    torch.manual_seed(0)
    n = 60
    graph = VQGraph(random_graph(n, 400), n)
    merged = VQConv(make_conv(kind, 6, 8), num_codewords=3, num_nodes=n, merge=True)
    per_edge = VQConv(make_conv(kind, 6, 8), num_codewords=3, num_nodes=n, merge=False)
    per_edge.load_state_dict(merged.state_dict(), strict=False)
    per_edge.conv.load_state_dict(merged.conv.state_dict())
    x = torch.randn(n, 6)
    merged.init_codebook(x)
    per_edge.quantizer.load_state_dict(merged.quantizer.state_dict())
    batch = torch.randperm(n)[:12]
    # With K=3 codewords and ~13 neighbours per node, codewords repeat within rows.
    op = merged.operator(graph)
    from vqgnn.batching import batch_edges

    local = graph.local
    local[batch] = torch.arange(12)
    edges = batch_edges(op, batch, local, merged.quantizer.assignment, 3, merge=True)
    local[batch] = -1
    assert float(edges.multiplicity.max()) > 1
    outs = []
    for layer in (merged, per_edge):
        xb = x[batch].clone().requires_grad_()
        out = layer(xb, graph, batch)
        out.pow(2).sum().backward()
        outs.append((out.detach(), xb.grad, [p.grad for p in layer.conv.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_codebook_updates_after_backward_and_assignments_refresh() -> None:
    torch.manual_seed(0)
    n = 50
    graph = VQGraph(random_graph(n, 200), n)
    layer = VQConv(GCNConv(4, 6), num_codewords=5, num_nodes=n)
    x = torch.randn(n, 4)
    layer.init_codebook(x)
    before = layer.quantizer.codebook.embed.clone()
    batch = torch.arange(10)
    layer(x[batch], graph, batch).pow(2).sum().backward()
    assert layer.update_codebook()
    assert not torch.equal(before, layer.quantizer.codebook.embed)
    # The gradient half was learned from real gradients (not all at the mean).
    assert float(layer.quantizer.g_norm.var.sum()) > 0
    assert not layer.update_codebook()  # nothing pending any more
    with torch.no_grad():  # no capture outside training
        layer(x[batch], graph, batch)
    assert layer.take_captured() is None


def test_uninitialised_codebook_is_an_error() -> None:
    n = 20
    graph = VQGraph(random_graph(n, 60), n)
    layer = VQConv(GCNConv(4, 6), num_codewords=5, num_nodes=n)
    with pytest.raises(ConfigError, match="not initialised"):
        layer(torch.randn(5, 4), graph, torch.arange(5))


def test_errors_name_the_argument() -> None:
    n = 20
    graph = VQGraph(random_graph(n, 60), n)
    with pytest.raises(TypeError, match="MessagePassing layer, received Linear"):
        VQConv(torch.nn.Linear(3, 3), num_codewords=4, num_nodes=n)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'num_codewords' must be an int >= 1, received 0"):
        VQConv(GCNConv(4, 6), num_codewords=0, num_nodes=n)
    layer = VQConv(GCNConv(4, 6), num_codewords=4, num_nodes=n, validate=True)
    layer.init_codebook(torch.randn(n, 4))
    with pytest.raises(ValueError, match=r"'x' must have shape \(3, 4\).*received \(3, 5\)"):
        layer(torch.randn(3, 5), graph, torch.arange(3))
    with pytest.raises(ValueError, match="duplicated node ids"):
        layer(torch.randn(3, 4), graph, torch.tensor([1, 1, 2]))
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        layer(torch.randn(2, 4), graph, torch.tensor([1, 20]))
    with pytest.raises(ValueError, match="'edge_index' holds node indices in"):
        VQGraph(torch.tensor([[0, 5], [1, 2]]), 5)
    with pytest.raises(ValueError, match=r"'edge_index' must have shape \(2, E\)"):
        VQGraph(torch.tensor([0, 1]), 5)
    with pytest.raises(ValueError, match="needs aggr in"):
        VQConv(SAGEConv(4, 6, aggr="max"), num_codewords=4, num_nodes=n)
    with pytest.raises(ValueError, match="pass 'in_channels'"):
        VQConv(GCNConv(-1, 6), num_codewords=4, num_nodes=n)


def test_repr_and_reset_parameters() -> None:
    layer = VQConv(GCNConv(4, 6), num_codewords=4, num_nodes=10)
    assert repr(layer).startswith("VQConv(GCNConv(4, 6), num_codewords=4, num_nodes=10")
    layer.init_codebook(torch.randn(10, 4))
    assert layer.quantizer.initialized
    layer.reset_parameters()
    assert not layer.quantizer.initialized


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_layerwise_inference_is_exact(kind: str) -> None:
    torch.manual_seed(0)
    n = 40
    graph = VQGraph(random_graph(n, 160), n)
    layer = VQConv(make_conv(kind, 6, 8), num_codewords=3, num_nodes=n).eval()
    x = torch.randn(n, 6)
    full = layer(x, graph)
    with torch.no_grad():
        chunks = [layer.inference(x, graph, chunk) for chunk in torch.arange(n).split(7)]
    torch.testing.assert_close(torch.cat(chunks), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_constant_input_layer_is_exact_without_codebook(kind: str) -> None:
    torch.manual_seed(0)
    n = 40
    graph = VQGraph(random_graph(n, 160), n)
    layer = VQConv(make_conv(kind, 6, 8), num_codewords=3, num_nodes=n)
    x = torch.randn(n, 6)
    full = layer(x, graph)
    (full * torch.arange(full.numel()).view_as(full).cos()).sum().backward()
    ref_grads = [p.grad.clone() for p in layer.conv.parameters()]
    layer.conv.zero_grad()
    layer.set_constant_input(x, graph)
    assert not layer.quantizer.initialized  # no codebook needed
    total = None
    for batch in torch.randperm(n).split(9):
        out = layer(x[batch], graph, batch)
        torch.testing.assert_close(out, full[batch].detach(), rtol=1e-5, atol=1e-5)
        w = torch.arange(full.numel()).view_as(full).cos()[batch]
        loss = (out * w).sum()
        total = loss if total is None else total + loss
    total.backward()
    for p, g in zip(layer.conv.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'x' of shape"):
        layer.set_constant_input(torch.randn(3, 6), graph)


def test_init_codebook_needs_every_nodes_input_or_node_idx() -> None:
    torch.manual_seed(0)
    n = 40
    layer = VQConv(GCNConv(5, 3), num_codewords=4, num_nodes=n)
    x = torch.randn(n, 5)
    with pytest.raises(ValueError, match="'VQConv.init_codebook': 'x' must hold the layer "
                                         "inputs of all 40 nodes, shape \\(40, D\\), "
                                         "received \\(10, 5\\); pass 'node_idx'"):
        layer.init_codebook(x[:10])
    subset = torch.arange(0, n, 4)  # a subset, named: allowed
    layer.init_codebook(x[subset], node_idx=subset)
    assert layer.quantizer.initialized
    layer.init_codebook(x)
    assert layer.health().quantization_error < 1


def test_init_codebooks_of_any_model() -> None:
    torch.manual_seed(0)
    n = 40
    graph = VQGraph(random_graph(n, 160), n)
    model = Stack("gcn", n, [5, 8, 8, 4], num_codewords=6)
    x = torch.randn(n, 5)
    model.layers[0].set_constant_input(x, graph)
    from vqgnn import init_codebooks

    assert init_codebooks(model, x, graph) == 2  # the constant-input layer needs none
    assert not model.layers[0].quantizer.initialized
    assert all(layer.quantizer.initialized for layer in model.layers[1:])
    # Layer 2's codebook was fitted on layer 2's full-graph inputs.
    h = torch.tanh(model.layers[0](x, graph)).detach()
    q = model.layers[1].quantizer
    torch.testing.assert_close(q.x_norm.mean, h.mean(0), rtol=1e-4, atol=1e-5)
    batch = torch.arange(10)
    model(x[batch], graph, batch).sum().backward()  # mini-batch steps now run
    with pytest.raises(ValueError, match="holds no VQConv layer"):
        init_codebooks(torch.nn.Linear(2, 2), torch.randn(1, 2))


# ------------------------------------------------------------- weighted graphs
def _weighted_graph(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    edge_index = coalesce(torch.randint(0, 30, (2, 120), generator=gen), num_nodes=30)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    weight = torch.rand(edge_index.size(1), generator=gen) * 2 + 0.1
    x = torch.randn(30, 6, generator=gen)
    return x, edge_index, weight


def test_weighted_gcn_equals_pyg_with_edge_weight():
    x, edge_index, weight = _weighted_graph()
    conv = GCNConv(6, 5)
    layer = VQConv(conv, num_codewords=4, num_nodes=30)
    out = layer(x, VQGraph(edge_index, 30, weight))
    assert torch.allclose(out, conv(x, edge_index, weight), atol=1e-5)
    assert not torch.allclose(out, conv(x, edge_index), atol=1e-3)  # the weights matter


@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_weighted_sage_divides_by_the_weighted_degree(aggr):
    x, edge_index, weight = _weighted_graph(1)
    conv = SAGEConv(6, 5, aggr=aggr)
    layer = VQConv(conv, num_codewords=4, num_nodes=30)
    out = layer(x, VQGraph(edge_index, 30, weight))
    src, dst = edge_index
    agg = torch.zeros(30, 6).index_add_(0, dst, weight.unsqueeze(1) * x[src])
    if aggr == "mean":
        total = torch.zeros(30).index_add_(0, dst, weight).clamp_min(1e-12)
        agg = agg / total.unsqueeze(1)
    expected = conv.lin_l(agg) + conv.lin_r(x)
    assert torch.allclose(out, expected, atol=1e-5)


def test_attention_ignores_edge_weights():
    x, edge_index, weight = _weighted_graph(2)
    conv = GATConv(6, 3, heads=2)
    layer = VQConv(conv, num_codewords=4, num_nodes=30)
    out = layer(x, VQGraph(edge_index, 30, weight))
    assert torch.allclose(out, conv(x, edge_index), atol=1e-5)


# ------------------------------------------------------------------ the public API
@pytest.mark.parametrize("kind", ["gcn", "gat"])
def test_validate_refuses_a_changed_input_of_a_constant_input_layer(kind: str) -> None:
    """The neighbours' part reads the stored rows, so input dropout before the layer would
    reach the batch nodes only: validate=True names it; without it the layer runs."""
    torch.manual_seed(0)
    n = 30
    graph = VQGraph(random_graph(n, 90), n)
    x = torch.randn(n, 4)
    batch = torch.tensor([3, 7, 11])
    for validate in (True, False):
        layer = VQConv(make_conv(kind, 4, 6), num_nodes=n, constant_input=True,
                       validate=validate)
        layer.set_constant_input(x.bfloat16(), graph)  # stored in 16 bits, as --feature-dtype
        expected = layer(x.bfloat16()[batch], graph, batch)  # the stored rows: accepted
        dropped = torch.nn.functional.dropout(x[batch], 0.5)
        if validate:
            with pytest.raises(ConfigError, match="the batch's 'x' differs from the stored "
                                                  "rows of its nodes"):
                layer(dropped, graph, batch)
            # the float32 rows the 16-bit ones were stored from: accepted (the batch's own
            # part reads them unrounded, so the outputs agree to bfloat16's precision)
            torch.testing.assert_close(layer(x[batch], graph, batch), expected, rtol=2e-2,
                                       atol=2e-3)
        else:
            assert layer(dropped, graph, batch).shape == expected.shape
    layer = VQConv(make_conv(kind, 4, 6), num_nodes=n, constant_input=True, validate=True)
    x[3, 1] = float("nan")  # NaN features passed as stored: accepted (NaN equals NaN)
    layer.set_constant_input(x, graph)
    layer(x[batch], graph, batch)


def test_a_constant_input_layer_allocates_no_codebook() -> None:
    n = 30
    graph = VQGraph(random_graph(n, 90), n)
    layer = VQConv(GCNConv(4, 6), num_nodes=n, constant_input=True)
    assert layer.quantizer is None and not layer.has_codebook and layer.num_codewords == 0
    assert list(layer.buffers()) == []  # no (N,) assignment table, no codewords
    assert "constant_input=True" in repr(layer)
    x = torch.randn(n, 4)
    with pytest.raises(ValueError, match="call set_constant_input\\(x, graph\\)"):
        layer(x[:5], graph, torch.arange(5))
    layer.set_constant_input(x, graph)
    batch = torch.tensor([3, 7, 11])
    expected = layer.conv(x, graph.edge_index)[batch]
    torch.testing.assert_close(layer(x[batch], graph, batch), expected)
    assert not layer.update_codebook()
    with pytest.raises(ValueError, match="constant_input=True and holds no codebook"):
        layer.init_codebook(x)


def _trained_step(layer: VQConv, x: Tensor, graph: VQGraph, batch: Tensor) -> None:
    layer(x[batch], graph, batch).pow(2).sum().backward()


def _gcn_with_codebook(**kwargs) -> tuple[VQConv, Tensor, VQGraph]:
    """A GCN layer of 40 nodes with an initialised codebook of 5, its inputs and graph."""
    torch.manual_seed(0)
    n = 40
    graph = VQGraph(random_graph(n, 160), n)
    x = torch.randn(n, 4)
    layer = VQConv(GCNConv(4, 6), num_codewords=5, num_nodes=n, **kwargs)
    layer.init_codebook(x)
    return layer, x, graph


def test_an_unapplied_pair_is_dropped_with_a_warning_unless_auto_update() -> None:
    manual, x, graph = _gcn_with_codebook()
    before = manual.quantizer.codebook.embed.clone()
    _trained_step(manual, x, graph, torch.arange(10))
    with pytest.warns(UserWarning, match="never applied and is dropped; call update_codebook"):
        _trained_step(manual, x, graph, torch.arange(10, 20))
    assert torch.equal(before, manual.quantizer.codebook.embed)  # nothing applied silently
    auto = _gcn_with_codebook(auto_update=True)[0]
    _trained_step(auto, x, graph, torch.arange(10))
    _trained_step(auto, x, graph, torch.arange(10, 20))  # applies the first batch's pair
    assert not torch.equal(before, auto.quantizer.codebook.embed)


def test_update_codebook_before_backward_or_in_eval_mode_warns() -> None:
    """Two loop mistakes that used to do nothing silently: ``update_codebook()`` before
    ``backward()`` (a warning; the capture is kept and applied by a call after
    ``backward()``), and training steps in eval mode (a warning: eval forwards capture
    nothing)."""
    layer, x, graph = _gcn_with_codebook()
    before = layer.quantizer.codebook.embed.clone()
    out = layer(x[:10], graph, torch.arange(10))
    with pytest.warns(UserWarning, match=r"called before backward\(\) reached the layer"):
        assert not layer.update_codebook()
    assert torch.equal(before, layer.quantizer.codebook.embed)
    out.pow(2).sum().backward()
    assert layer.update_codebook()  # the kept capture
    assert not torch.equal(before, layer.quantizer.codebook.embed)
    layer.eval()
    layer(x[:10], graph, torch.arange(10)).pow(2).sum().backward()
    with pytest.warns(UserWarning, match=r"in eval mode, whose forwards capture nothing"):
        assert not layer.update_codebook()
    no_codebook = VQConv(GCNConv(4, 6), num_nodes=x.size(0), constant_input=True)
    no_codebook.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not no_codebook.update_codebook()  # a layer without a codebook: no warning


@pytest.mark.parametrize("kind", ["gcn", "sage", "graphconv"])
def test_the_captured_gradient_is_the_gradient_at_aggregated(kind: str) -> None:
    """``captured.grad`` on a whole-graph batch is d loss / d ``aggregated(x, graph)``."""
    torch.manual_seed(0)
    n = 25
    graph = VQGraph(random_graph(n, 100), n)
    conv = {"gcn": GCNConv(4, 6), "sage": SAGEConv(4, 6), "graphconv": GraphConv(4, 6)}[kind]
    layer = VQConv(conv, num_codewords=n, num_nodes=n)
    x = torch.randn(n, 4)
    layer.init_codebook(x)
    everyone = torch.arange(n)
    target = torch.randn(n, 6)
    (layer(x, graph, everyone) - target).pow(2).sum().backward()
    captured = layer.captured
    assert captured is not None and layer.captured is not None  # a peek does not remove it
    agg = layer.aggregated(x, graph).detach().requires_grad_()
    out = layer.adapter.update(layer.conv, agg, x)
    (out - target).pow(2).sum().backward()
    assert agg.shape == (n, layer.quantizer.grad_dim)
    torch.testing.assert_close(captured.grad, agg.grad, rtol=1e-5, atol=1e-6)
    assert layer.take_captured() is not None and layer.captured is None


def test_set_codewords_and_assignments_on_the_layer() -> None:
    n = 12
    layer = VQConv(GCNConv(3, 5), num_codewords=4, num_nodes=n)
    feats, grads = torch.randn(4, 3), torch.randn(4, layer.quantizer.grad_dim)
    layer.set_codewords(feats, grads)
    torch.testing.assert_close(layer.quantizer.features(), feats)
    assignment = torch.arange(n) % 4
    layer.set_assignment(assignment)
    assert torch.equal(layer.quantizer.assignment, assignment)
    with pytest.raises(ValueError, match=r"holds codewords in \[4, 4\], outside \[0, 4\)"):
        layer.set_assignment(torch.full((n,), 4))
    with pytest.raises(ValueError, match=r"integer tensor of shape \(12,\), received \(3,\)"):
        layer.set_assignment(torch.zeros(3, dtype=torch.long))


def test_batch_values_are_checked_only_when_asked() -> None:
    n = 20
    graph = VQGraph(random_graph(n, 60), n)
    x = torch.randn(n, 4)
    fast = VQConv(GCNConv(4, 6), num_codewords=4, num_nodes=n)
    fast.init_codebook(x)
    fast.eval()
    with torch.no_grad():
        fast(x[:3], graph, torch.tensor([1, 1, 2]))  # no host sync to find the repeat
    checked = VQConv(GCNConv(4, 6), num_codewords=4, num_nodes=n, validate=True)
    checked.init_codebook(x)
    with pytest.raises(ValueError, match="duplicated node ids"):
        checked(x[:3], graph, torch.tensor([1, 1, 2]))
    with pytest.raises(ValueError, match=r"'batch' must be a 1-D int64 or int32 tensor"):
        fast(x[:2], graph, torch.tensor([0.0, 1.0]))  # shapes and dtypes: always


def test_an_edge_index_runs_the_wrapped_layer_itself() -> None:
    torch.manual_seed(0)
    n = 15
    edge_index = random_graph(n, 50)
    weight = torch.rand(edge_index.size(1))
    layer = VQConv(GCNConv(4, 6), num_codewords=4, num_nodes=n)
    x = torch.randn(n, 4)
    torch.testing.assert_close(layer(x, edge_index, edge_weight=weight),
                               layer.conv(x, edge_index, weight))
    gat = VQConv(GATConv(4, 6), num_codewords=4, num_nodes=n)  # takes no edge_weight
    torch.testing.assert_close(gat(x, edge_index, edge_weight=weight), gat.conv(x, edge_index))
    with pytest.raises(ValueError, match="'batch' needs a VQGraph"):
        layer(x[:3], edge_index, torch.arange(3))


def test_target_to_source_flow_is_rejected() -> None:
    with pytest.raises(ValueError, match="flow='source_to_target' only, received GCNConv with "
                                         "flow='target_to_source'"):
        VQConv(GCNConv(4, 6, flow="target_to_source"), num_codewords=4, num_nodes=10)


@pytest.mark.parametrize("kind", ["gcn", "sage", "graphconv", "gin", "gat", "user"])
def test_inference_all_equals_the_full_graph_forward(kind: str) -> None:
    torch.manual_seed(0)
    n = 37
    graph = VQGraph(random_graph(n, 150), n)
    conv = {"gcn": GCNConv(5, 6), "sage": SAGEConv(5, 6), "graphconv": GraphConv(5, 6),
            "gin": GINConv(torch.nn.Linear(5, 6)), "gat": GATConv(5, 3, heads=2),
            "user": LinearUserConv(5, 6)}[kind]
    layer = VQConv(conv, num_codewords=4, num_nodes=n)
    x = torch.randn(n, 5)
    expected = conv(x, graph.edge_index)
    for chunk in (8, 37, 100):  # chunks that do not divide N, one chunk, larger than N
        torch.testing.assert_close(layer.inference_all(x, graph, chunk), expected,
                                   rtol=1e-5, atol=1e-5)


def test_inference_all_reuses_the_constant_aggregation(monkeypatch) -> None:
    torch.manual_seed(0)
    n = 30
    graph = VQGraph(random_graph(n, 100), n)
    layer = VQConv(GCNConv(4, 6), num_nodes=n, constant_input=True)
    x = torch.randn(n, 4)
    layer.set_constant_input(x, graph)
    import vqgnn.nn.vq_conv as module

    def no_product(*args, **kwargs):
        raise AssertionError("re-aggregated the constant input")

    monkeypatch.setattr(module, "csr_matmul", no_product)
    torch.testing.assert_close(layer.inference_all(x, graph, 7), layer.conv(x, graph.edge_index),
                               rtol=1e-5, atol=1e-5)


def test_gradient_nodes_mask_the_backward_messages() -> None:
    """With no node allowed a gradient, the backward term sends nothing (the plain
    mini-batch gradient); with every node allowed, it is unchanged."""
    torch.manual_seed(0)
    n = 40
    graph = VQGraph(random_graph(n, 160), n)
    x = torch.randn(n, 4)
    batch = torch.arange(12)

    def input_grad(layer: VQConv) -> Tensor:
        xb = x[batch].clone().requires_grad_()
        layer(xb, graph, batch).pow(2).sum().backward()
        layer.take_captured()
        return xb.grad

    def fresh(**kwargs) -> VQConv:
        torch.manual_seed(1)
        layer = VQConv(GCNConv(4, 6), num_codewords=5, num_nodes=n, **kwargs)
        layer.init_codebook(x)
        layer.set_codewords(layer.quantizer.features(), torch.randn(5, 6))
        return layer

    with_term, without = input_grad(fresh()), input_grad(fresh(backward_approx=False))
    assert not torch.allclose(with_term, without)
    masked = fresh()
    masked.set_gradient_nodes(torch.zeros(n, dtype=torch.bool))
    torch.testing.assert_close(input_grad(masked), without)
    everyone = fresh()
    everyone.set_gradient_nodes(torch.ones(n, dtype=torch.bool))
    torch.testing.assert_close(input_grad(everyone), with_term)
    with pytest.raises(ValueError, match=r"'mask' must be a bool tensor of shape \(40,\)"):
        masked.set_gradient_nodes(torch.ones(3, dtype=torch.bool))


def test_loss_nodes_reach_one_hop_further_per_layer_down() -> None:
    from vqgnn.nn.models import VQGNN

    # A path 0 - 1 - 2 - 3 - 4 (both directions); node 4 has the loss.
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    graph = VQGraph(edge_index, 5)
    model = VQGNN(3, 4, 3, 2, num_nodes=5, num_codewords=2, exact_first_layer=False)
    model.set_loss_nodes(torch.tensor([False, False, False, False, True]), graph)
    reached = [layer._gradient_nodes.nonzero().view(-1).tolist() for layer in model.layers]
    assert reached == [[2, 3, 4], [3, 4], [4]]
    model.set_loss_nodes(None, graph)
    assert all(layer._gradient_nodes is None for layer in model.layers)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("kind", ["gcn", "sage", "graph", "gin", "gat", "gatv2"])
def test_lean_step_equals_the_merged_sparse_path(kind: str, directed: bool, masked: bool,
                                                 monkeypatch) -> None:
    """The lean step (in-batch CSR + a (b, K) low-rank part, dense or CSR, the backward
    weights from the same gather; for attention, one edge per neighbour instead of merged
    codeword edges) gives the outputs and gradients of the merged sparse operator, on an
    undirected graph (one shared pattern) and a directed one (a second gather), with and
    without a gradient mask (GCN's unmasked undirected step reuses its forward part as
    the backward weights)."""
    import vqgnn.nn.vq_conv as vq_conv_module

    torch.manual_seed(0)
    n = 60
    edge_index = (coalesce(torch.randint(n, (2, 500)), num_nodes=n) if directed
                  else random_graph(n, 400))
    x = torch.randn(n, 6)
    batch = torch.randperm(n)[:15]
    mask = torch.rand(n) < 0.6
    results = []
    # lean with dense (b, K) parts, lean with CSR ones (linear layers), the merged path
    variants = [(vq_conv_module.DENSE_LOWRANK_MAX, False), (vq_conv_module.DENSE_LOWRANK_MAX,
                                                            True), (0, False)]
    for limit, sparse in variants:
        monkeypatch.setattr(vq_conv_module, "DENSE_LOWRANK_MAX", limit)
        chosen: list[bool] = []
        monkeypatch.setattr(vq_conv_module, "sparse_lowrank_pays",
                            lambda *args, forced=sparse, log=chosen: log.append(forced) or forced)
        torch.manual_seed(1)
        layer = VQConv(make_conv(kind, 6, 8), num_codewords=4, num_nodes=n)
        layer.init_codebook(x)
        layer.quantizer.codebook.embed[:, 6:] = torch.randn(4, layer.quantizer.grad_dim)
        if masked:
            layer.set_gradient_nodes(mask)
        graph = VQGraph(edge_index, n)
        assert layer._lean(15) == (limit > 0)
        xb = x[batch].clone().requires_grad_()
        out = layer(xb, graph, batch)
        out.pow(2).sum().backward()
        assert bool(chosen) == (limit > 0)  # the lean step asked which form to take
        results.append((out.detach(), xb.grad, [p.grad for p in layer.conv.parameters()]))
        layer.take_captured()
    for got in results[:2]:
        torch.testing.assert_close(got[0], results[2][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], results[2][1], rtol=1e-5, atol=1e-5)
        for a, b in zip(got[2], results[2][2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gat", "gatv2"])
def test_attention_lean_step_on_a_batch_denser_than_its_columns(kind: str,
                                                                monkeypatch) -> None:
    """A batch whose in-degree exceeds b + K (here b = 2, K = 2, degree about 25) has more
    unmerged edges than (b, b + K) entries: the lean step still trains, equal to the merged
    path."""
    import vqgnn.nn.vq_conv as vq_conv_module

    torch.manual_seed(0)
    n = 30
    edge_index = random_graph(n, 700)
    x = torch.randn(n, 6)
    batch = torch.tensor([3, 17])
    graph_rows = VQGraph(edge_index, n)
    results = []
    for limit in (vq_conv_module.DENSE_LOWRANK_MAX, 0):
        monkeypatch.setattr(vq_conv_module, "DENSE_LOWRANK_MAX", limit)
        torch.manual_seed(1)
        layer = VQConv(make_conv(kind, 6, 8), num_codewords=2, num_nodes=n)
        layer.init_codebook(x)
        graph = VQGraph(edge_index, n)
        xb = x[batch].clone().requires_grad_()
        out = layer(xb, graph, batch)
        out.pow(2).sum().backward()
        results.append((out.detach(), xb.grad))
        layer.take_captured()
    op = VQConv(make_conv(kind, 6, 8), num_codewords=2, num_nodes=n).operator(graph_rows)
    entries = int((op.rowptr[batch + 1] - op.rowptr[batch]).sum())
    assert entries > 2 * (2 + 2)  # more edges than the (b, b + K) matrix has entries
    for got, want in zip(results[0], results[1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_layers_of_one_step_share_the_batch_gather(monkeypatch) -> None:
    import vqgnn.batching.lowrank as lowrank

    calls = []
    original = lowrank.batch_rows
    monkeypatch.setattr(lowrank, "batch_rows", lambda *a: calls.append(1) or original(*a))
    n = 40
    graph = VQGraph(random_graph(n), n)
    layers = [VQConv(GCNConv(4, 4), num_codewords=4, num_nodes=n) for _ in range(2)]
    x = torch.randn(n, 4)
    for layer in layers:
        layer.init_codebook(x)
    batch = torch.randperm(n)[:10]
    h = layers[1](torch.tanh(layers[0](x[batch], graph, batch)), graph, batch)
    assert len(calls) == 1  # two layers, one operator, one batch: one gather
    batch2 = torch.randperm(n)[:10]
    layers[0](h.detach(), graph, batch2)
    assert len(calls) == 2  # a new batch gathers again


@pytest.mark.parametrize("kind", ["gcn", "sage", "gat"])
def test_message_error_is_zero_with_an_oracle_codebook_and_grows_as_k_shrinks(kind: str):
    torch.manual_seed(0)
    n = 60
    graph = VQGraph(random_graph(n, 400), n)
    x = torch.randn(n, 6)
    batch = torch.randperm(n)[:15]
    errors = {}
    for k in (n, 16, 2):
        torch.manual_seed(1)
        layer = VQConv(make_conv(kind, 6, 8), num_codewords=k, num_nodes=n).eval()
        if k == n:
            layer.set_codewords(x, torch.zeros(n, layer.quantizer.grad_dim), torch.arange(n))
        else:
            layer.init_codebook(x)
        errors[k] = layer.message_error(x, graph, batch)
    assert errors[n] < 1e-5
    assert 0.0 < errors[16] < errors[2] <= 1.5, errors


def test_two_workers_summing_statistics_match_one_worker_with_the_union_batch() -> None:
    """Data parallelism's codebook contract: two workers, each with half a batch and their
    statistics summed (set_all_reduce), end with the codebook of one worker that saw the
    whole batch. An oracle codebook (K = N) makes each node's output, hence its gradient,
    the same whichever batch holds it; otherwise the batch composition changes them."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    class Sum:
        def __init__(self) -> None:
            self.barrier = threading.Barrier(2, timeout=10)
            self.slots: list = [None, None]

        def for_rank(self, rank: int):
            def reduce(t: torch.Tensor) -> None:
                self.slots[rank] = t.clone()
                self.barrier.wait()
                total = self.slots[0] + self.slots[1]
                self.barrier.wait()
                t.copy_(total)
            return reduce

    torch.manual_seed(0)
    n = 60
    graph = VQGraph(random_graph(n, 400), n)
    x = torch.randn(n, 6)
    base = VQConv(GCNConv(6, 8), num_codewords=n, num_nodes=n,
                  codebook=CodebookOptions(num_codewords=n, dead_threshold=0.0))
    base.set_codewords(x, torch.randn(n, 8), torch.arange(n))
    union, workers = copy.deepcopy(base), [copy.deepcopy(base), copy.deepcopy(base)]
    comm = Sum()
    for rank, layer in enumerate(workers):
        layer.set_all_reduce(comm.for_rank(rank))
    batches = torch.randperm(n)[:32].view(2, 16)

    def step(layer: VQConv, batch: torch.Tensor) -> None:
        layer(x[batch], graph, batch).pow(2).sum().backward()
        layer.update_codebook()

    # Each worker its own graph object, as each rank has (a VQGraph caches the step's batch
    # operator, which two threads must not share).
    graphs = [VQGraph(graph.edge_index, n) for _ in workers]

    def worker_step(r: int) -> None:
        workers[r](x[batches[r]], graphs[r], batches[r]).pow(2).sum().backward()
        workers[r].update_codebook()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(worker_step, range(2)))
    step(union, batches.reshape(-1))
    for name in ("codebook.cluster_size", "codebook.embed_sum", "codebook.embed",
                 "x_norm.mean", "x_norm.var", "g_norm.mean", "g_norm.var"):
        expected = union.quantizer.get_buffer(name)
        for layer in workers:
            torch.testing.assert_close(layer.quantizer.get_buffer(name), expected,
                                       rtol=1e-5, atol=1e-6, msg=name)


class WeightedUserConv(MessagePassing):
    """A user's layer that takes edge weights (a weighted sum of linear messages)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(aggr="add")
        self.in_channels = in_channels
        self.lin = torch.nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.propagate(edge_index, x=self.lin(x), edge_weight=edge_weight)

    def message(self, x_j: Tensor, edge_weight: Tensor | None) -> Tensor:
        return x_j if edge_weight is None else x_j * edge_weight.unsqueeze(-1)


@pytest.mark.parametrize("kind", ["sage", "sage-sum", "gin"])
def test_an_edge_index_call_with_weights_equals_the_weighted_vqgraph(kind: str) -> None:
    """SAGE and GIN take no ``edge_weight`` in PyG; with weights, an ``edge_index`` call
    runs through the adapter as on a ``VQGraph`` holding them (GraphSAINT's aggregator
    normalisation on a SAGE model), not dropping them."""
    torch.manual_seed(0)
    n = 40
    edge_index = random_graph(n, 160)
    w = torch.rand(edge_index.size(1)) + 0.1
    conv = {"sage": lambda: SAGEConv(6, 4), "sage-sum": lambda: SAGEConv(6, 4, aggr="sum"),
            "gin": lambda: GINConv(torch.nn.Linear(6, 4))}[kind]()
    layer = VQConv(conv, num_codewords=4, num_nodes=n, constant_input=True)
    x = torch.randn(n, 6, requires_grad=True)
    got = layer(x, edge_index, edge_weight=w)
    want = layer(x, VQGraph(edge_index, n, edge_weight=w))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, layer(x, edge_index), atol=1e-3)  # the weights count
    # by hand: the weighted mean (or sum) of the neighbours
    src, dst = edge_index
    summed = torch.zeros(n, 6).index_add(0, dst, x[src] * w.unsqueeze(1))
    if kind == "sage":
        wsum = torch.zeros(n).index_add(0, dst, w).clamp_min(1e-12)
        agg = summed / wsum.unsqueeze(1)
        ref = conv.lin_l(agg) + conv.lin_r(x)
    elif kind == "sage-sum":
        ref = conv.lin_l(summed) + conv.lin_r(x)
    else:
        ref = conv.nn(summed + (1 + conv.eps) * x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    g_got = torch.autograd.grad(got.sum(), [x, *conv.parameters()])
    g_want = torch.autograd.grad(ref.sum(), [x, *conv.parameters()])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_weighted_graph_reaches_a_sage_vqgnn_on_a_subgraph() -> None:
    """The sampling baselines call ``model(x, edge_index, edge_weight=...)``: a SAGE
    ``VQGNN`` now uses GraphSAINT's weights."""
    from vqgnn.nn.models import VQGNN

    torch.manual_seed(0)
    n = 40
    edge_index = random_graph(n, 160)
    w = torch.rand(edge_index.size(1)) + 0.1
    model = VQGNN(6, 8, 2, 3, num_nodes=n, conv="sage", num_codewords=8).eval()
    x = torch.randn(n, 6)
    assert not torch.allclose(model(x, edge_index, edge_weight=w), model(x, edge_index),
                              atol=1e-3)


@pytest.mark.parametrize("conv", ["sage", "gin"])
def test_a_weighted_edge_index_call_builds_its_graph_once_for_all_layers(conv, monkeypatch):
    """A weighted ``edge_index`` call of a 3-layer SAGE/GIN ``VQGNN`` (GraphSAINT's step)
    builds one weighted graph, not one per layer, with the outputs and gradients of the
    layers called one by one; a cache entry is not reused for other tensors."""
    from vqgnn.nn import vq_conv
    from vqgnn.nn.models import VQGNN

    torch.manual_seed(0)
    n = 40
    edge_index = random_graph(n, 160)
    w = torch.rand(edge_index.size(1)) + 0.1
    model = VQGNN(6, 8, 3, 3, num_nodes=n, conv=conv, num_codewords=8, dropout=0.0)
    x = torch.randn(n, 6)
    built = []

    class Counting(VQGraph):
        def __init__(self, *args, **kwargs):
            built.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(vq_conv, "VQGraph", Counting)
    out = model(x, edge_index, edge_weight=w)
    assert len(built) == 1
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    # the layers one by one, each building its own graph
    h = model._input(x)
    for i, layer in enumerate(model.layers):
        h = model._after_conv(i, h, layer(model._conv_input(i, h), edge_index, edge_weight=w))
    ref = model._output(h)
    assert len(built) == 4
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), list(model.parameters()))):
        torch.testing.assert_close(a, b)
    # one cache, other tensors: rebuilt, and the result is the other graph's
    cache: dict = {}
    layer = model.layers[1]
    hidden = torch.randn(n, 8)
    first = layer(hidden, edge_index, edge_weight=w, graph_cache=cache)
    w2 = w.flip(0)
    second = layer(hidden, edge_index, edge_weight=w2, graph_cache=cache)
    assert len(built) == 6 and cache["weighted"][1] is w2
    with pytest.raises(TypeError, match="'graph_cache' must be a dict or None, received list"):
        layer(hidden, edge_index, edge_weight=w2, graph_cache=[])
    torch.testing.assert_close(second, layer(hidden, edge_index, edge_weight=w2))
    assert not torch.allclose(first, second, atol=1e-4)


def test_a_generic_layer_with_edge_weights_never_loses_them_silently() -> None:
    torch.manual_seed(0)
    n = 40
    edge_index = random_graph(n, 160)
    w = torch.rand(edge_index.size(1)) + 0.1
    conv = WeightedUserConv(6, 4)
    layer = VQConv(conv, num_codewords=4, num_nodes=n)
    x = torch.randn(n, 6)
    # an edge_index call passes them to the layer itself
    torch.testing.assert_close(layer(x, edge_index, edge_weight=w), conv(x, edge_index, w))
    weighted = VQGraph(edge_index, n, edge_weight=w)
    match = ("the graph has edge weights and 'WeightedUserConv' takes 'edge_weight', but the "
             "generic path calls it with 'edge_index' alone")
    with pytest.raises(ValueError, match=match):
        layer(x, weighted)
    with pytest.raises(ValueError, match=match):
        layer.aggregated(x, weighted)
    layer.init_codebook(x)
    with pytest.raises(ValueError, match=match):
        layer(x[:8], weighted, torch.arange(8))
    plain = VQGraph(edge_index, n)  # without weights: runs
    torch.testing.assert_close(layer(x, plain), conv(x, edge_index))
    layer(x[:8], plain, torch.arange(8))
    # a layer that takes no weights ignores them, as in PyG: said once
    unweighted = VQConv(LinearUserConv(6, 4), num_codewords=4, num_nodes=n)
    with pytest.warns(UserWarning, match="'LinearUserConv' takes no 'edge_weight'; it "
                                         "ignores the graph's edge weights"):
        unweighted(x, weighted)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unweighted(x, weighted)  # not again


def test_a_generic_layer_that_needs_edge_attributes_is_one_clear_error() -> None:
    class EdgeAttrConv(MessagePassing):
        def __init__(self) -> None:
            super().__init__(aggr="add")
            self.in_channels = 4
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
            return self.propagate(edge_index, x=self.lin(x), edge_attr=edge_attr)

        def message(self, x_j: Tensor, edge_attr: Tensor) -> Tensor:
            return x_j * edge_attr

    with pytest.raises(ValueError, match="'VQConv' runs 'EdgeAttrConv' as forward\\(x, "
                                         "edge_index\\), which failed \\(.*edge_attr.*\\); a "
                                         "layer that needs more inputs"):
        VQConv(EdgeAttrConv(), num_codewords=4, num_nodes=10)


@pytest.mark.parametrize("name", ["SGConv", "SGConv-K2", "TAGConv", "ChebConv", "LGConv",
                                  "APPNP", "UserSourceDegreeConv"])
def test_a_layer_that_reads_its_sources_edges_is_refused(name: str) -> None:
    """The generic path runs a layer on the batch nodes and codewords: a layer normalised
    by its sources' degrees, or with several hops per call, computed wrong outputs there
    even with an oracle codebook (0.5-3.1 off), silently. It is refused at wrapping."""
    import torch_geometric.nn as pyg

    class UserSourceDegreeConv(MessagePassing):  # divides by the source's out-degree
        def __init__(self) -> None:
            super().__init__(aggr="add")
            self.in_channels = 6
            self.lin = torch.nn.Linear(6, 4)

        def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
            deg = torch.zeros(x.size(0)).index_add_(0, edge_index[0],
                                                    torch.ones(edge_index.size(1)))
            return self.propagate(edge_index, x=self.lin(x) / deg.clamp_min(1).unsqueeze(1))

    conv = {"SGConv": lambda: pyg.SGConv(6, 4, K=1), "SGConv-K2": lambda: pyg.SGConv(6, 4, K=2),
            "TAGConv": lambda: pyg.TAGConv(6, 4, K=1), "ChebConv": lambda: pyg.ChebConv(6, 4, K=2),
            "LGConv": lambda: pyg.LGConv(), "APPNP": lambda: pyg.APPNP(K=2, alpha=0.1),
            "UserSourceDegreeConv": UserSourceDegreeConv}[name]()
    conv.train()
    with pytest.raises(ValueError, match=f"the output of '{type(conv).__name__}' at a node "
                                         f"depends on more than the messages into it"):
        VQConv(conv, num_codewords=8, num_nodes=40, in_channels=6)
    with pytest.raises(ValueError, match="depends on more than the messages into it"):
        VQConv(conv, num_nodes=40, in_channels=6, constant_input=True)  # exact paths too
    assert conv.training  # the probe left the layer's mode as it was


def test_a_wrong_in_channels_is_named_by_the_probe() -> None:
    """A generic layer given the wrong ``in_channels=``: the probes' shape error becomes a
    ConfigError that names it (it used to be torch's bare matmul error from __init__)."""
    class UserConv(MessagePassing):
        def __init__(self) -> None:
            super().__init__(aggr="mean")
            self.lin = torch.nn.Linear(6, 4)

        def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
            return self.propagate(edge_index, x=self.lin(x))

    with pytest.raises(ValueError, match=r"'UserConv' failed on a probe of 12 input channels "
                                         r"\(.*\); is 'in_channels' \(12\) the layer's input "
                                         r"width\?"):
        VQConv(UserConv(), num_codewords=8, num_nodes=40, in_channels=12)
    assert VQConv(UserConv(), num_codewords=8, num_nodes=40, in_channels=6).in_channels == 6


def test_the_locality_probe_leaves_the_layer_as_it_was() -> None:
    """The probes run on a copy: the user's layer keeps its modes, running statistics and
    caches; a layer that caches its graph is refused (each batch is another graph); a
    layer random in eval mode is not judged (a warning); a registered adapter decides."""
    import warnings

    import torch_geometric.nn as pyg

    from vqgnn.nn.adapters import GenericAdapter, register_adapter

    conv = pyg.GENConv(6, 4, norm="batch", num_layers=2)
    norms = [m for m in conv.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms
    conv.train()
    norms[0].eval()  # frozen by the user
    state = copy.deepcopy(conv.state_dict())
    VQConv(conv, num_codewords=8, num_nodes=40, in_channels=6, backward_approx=False)
    assert conv.training and not norms[0].training
    for key, value in conv.state_dict().items():
        assert torch.equal(value, state[key]), key  # running stats untouched

    with pytest.raises(ValueError, match="'SGConv' was built with cached=True"):
        VQConv(pyg.SGConv(6, 4, K=1, cached=True), num_codewords=8, num_nodes=40)

    class RandomConv(MessagePassing):  # random even in eval mode
        def __init__(self) -> None:
            super().__init__(aggr="add")
            self.in_channels = 6

        def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
            return self.propagate(edge_index, x=x) + torch.rand_like(x)

    with pytest.warns(UserWarning, match="'RandomConv' gives different outputs for the same "
                                         "input in eval mode") as caught:
        VQConv(RandomConv(), num_codewords=8, num_nodes=40)
    assert caught[0].filename == __file__

    class SGAdapter(GenericAdapter):  # the user's own adapter for SGConv decides
        pass

    register_adapter(pyg.SGConv, SGAdapter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            VQConv(pyg.SGConv(6, 4, K=1), num_codewords=8, num_nodes=40)
    finally:
        from vqgnn.nn import adapters

        del adapters._ADAPTERS[pyg.SGConv]


@pytest.mark.parametrize("name", ["TransformerConv", "ResGatedGraphConv", "ClusterGCNConv",
                                  "GENConv", "GCNConv-unnormalised", "NonlinearUserConv"])
def test_a_layer_normalised_by_its_targets_is_exact_with_an_oracle_codebook(name: str) -> None:
    """What the refusal above lets through: the generic path's outputs equal the full
    graph's, for every batch node, with each node its own codeword."""
    import torch_geometric.nn as pyg

    torch.manual_seed(0)
    n = 40
    graph = VQGraph(random_graph(n, 200), n)
    conv = {"TransformerConv": lambda: pyg.TransformerConv(6, 4),
            "ResGatedGraphConv": lambda: pyg.ResGatedGraphConv(6, 4),
            "ClusterGCNConv": lambda: pyg.ClusterGCNConv(6, 4),
            "GENConv": lambda: pyg.GENConv(6, 4),
            "GCNConv-unnormalised": lambda: GCNConv(6, 4, normalize=False),
            "NonlinearUserConv": lambda: NonlinearUserConv(6, 4)}[name]()
    layer = VQConv(conv, num_codewords=n, num_nodes=n, in_channels=6,
                   backward_approx=False).eval()
    x = torch.randn(n, 6)
    layer.set_codewords(x, torch.zeros(n, layer.quantizer.grad_dim), torch.arange(n))
    batch = torch.randperm(n)[:12]
    with torch.no_grad():
        torch.testing.assert_close(layer(x[batch], graph, batch), layer(x, graph)[batch],
                                   rtol=1e-4, atol=1e-5)


def test_a_weighted_edge_index_call_edge_cases() -> None:
    torch.manual_seed(0)
    conv = SAGEConv(6, 4)
    layer = VQConv(conv, num_codewords=4, num_nodes=40, constant_input=True)
    edge_index = random_graph(40, 160)
    x = torch.randn(40, 6)
    ones = torch.ones(edge_index.size(1), dtype=torch.long)  # integer weights: taken as floats
    torch.testing.assert_close(layer(x, edge_index, edge_weight=ones), conv(x, edge_index))
    with pytest.raises(ValueError, match="take one node feature tensor 'x', received tuple"):
        layer((x, x), edge_index, edge_weight=ones.float())
    with pytest.raises(ValueError, match=f"'edge_weight' must have shape "
                                         f"\\({edge_index.size(1)},\\), received \\(3,\\)"):
        layer(x, edge_index, edge_weight=torch.ones(3))
    empty = layer(torch.randn(0, 6), edge_index[:, :0], edge_weight=torch.ones(0))
    assert empty.shape == (0, 4)
