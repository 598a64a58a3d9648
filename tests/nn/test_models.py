"""VQGNN: exact layer-wise inference, exact VQ forward on a full batch, factories, errors."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GraphConv

from vqgnn import ConfigError, VQGraph
from vqgnn.datasets import load_dataset
from vqgnn.nn.models import VQGNN, dropout, dropout_mask

CONVS = ["gcn", "sage", "gat", "gin"]



@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic:n=300,deg=6,features=8,classes=3")


def build(data, conv="gcn", residual=False, **kwargs) -> VQGNN:
    torch.manual_seed(0)
    kwargs.setdefault("num_codewords", 16)
    return VQGNN(data.num_features, 16, 2, 3, num_nodes=data.num_nodes, conv=conv,
                 residual=residual, **kwargs)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("conv", CONVS)
def test_layerwise_inference_equals_full_graph_forward(data, conv, residual, device):
    norm = "layer" if residual else "batch"
    model = build(data, conv, residual, norm=norm).to(device).eval()
    x, graph = data.x.to(device), VQGraph(data.edge_index.to(device), data.num_nodes)
    with torch.no_grad():
        full = model(x, graph)
    out = model.inference(x, graph, batch_size=37)  # chunks of uneven size
    assert out.shape == (data.num_nodes, 3)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("conv", CONVS)
def test_vq_forward_on_all_nodes_equals_full_graph(data, conv, residual, device):
    model = build(data, conv, residual).to(device)
    x, graph = data.x.to(device), VQGraph(data.edge_index.to(device), data.num_nodes)
    model.prepare(x, graph, batch_size=100)
    assert model.training  # prepare restores the mode
    model.eval()
    batch = torch.randperm(data.num_nodes, generator=torch.Generator().manual_seed(1))
    batch = batch.to(device)
    with torch.no_grad():
        full = model(x, graph)
        out = model(x[batch], graph, batch)
    torch.testing.assert_close(out, full[batch], atol=1e-5, rtol=1e-5)


def test_prepare_initialises_every_quantized_layer(data):
    for residual in (False, True):
        model = build(data, residual=residual)
        graph = VQGraph(data.edge_index, data.num_nodes)
        assert model.codebook_health() is None
        model.prepare(data.x, graph)
        initialized = [conv.initialized for conv in model.layers]
        # The exact first layer (default without residual) needs no codebook.
        assert initialized == ([True, True] if residual else [False, True])
        assert (model.layers[0].quantizer is None) == (not residual)  # none allocated
        health = model.codebook_health()
        assert health is not None and 0 < health.usage <= 1 and health.perplexity >= 1


def test_update_codebooks_counts_layers_with_a_gradient(data):
    model = build(data, dropout=0.0)
    graph = VQGraph(data.edge_index, data.num_nodes)
    model.prepare(data.x, graph)
    batch = torch.arange(0, 300, 3)
    model(data.x[batch], graph, batch).sum().backward()
    assert model.update_codebooks() == 1  # layer 0 reads constant inputs
    assert model.update_codebooks() == 0  # nothing captured since


def test_custom_factory(data):
    def factory(cin, cout, i):
        return GraphConv(cin, cout, aggr="mean")

    model = build(data, conv=factory).eval()
    assert all(isinstance(conv.conv, GraphConv) for conv in model.layers)
    graph = VQGraph(data.edge_index, data.num_nodes)
    with torch.no_grad():
        full = model(data.x, graph)
    torch.testing.assert_close(model.inference(data.x, graph, batch_size=50), full,
                               atol=1e-5, rtol=1e-5)
    model.prepare(data.x, graph)
    batch = torch.arange(data.num_nodes)
    with torch.no_grad():
        torch.testing.assert_close(model(data.x, graph, batch), full, atol=1e-5, rtol=1e-5)
    assert "conv=GraphConv" in repr(model)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_layers": 0}, "'num_layers' must be an int >= 1, received 0"),
    ({"hidden_channels": 0}, "'hidden_channels' must be an int >= 1"),
    ({"dropout": 1.0}, r"'dropout' must be in \[0, 1\), received 1.0"),
    ({"dropout": -0.1}, "'dropout'"),
    ({"norm": "foo"}, "'norm' must be one of .* received 'foo'"),
    ({"act": "foo"}, "'act' must be one of .* received 'foo'"),
    ({"conv": "foo"}, "'conv' must be one of .* received 'foo'"),
])
def test_bad_arguments(kwargs, match):
    args = {"in_channels": 8, "hidden_channels": 16, "out_channels": 3, "num_layers": 2,
            "num_nodes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        VQGNN(**args)


def test_bad_conv_type_and_batch_size(data):
    with pytest.raises(TypeError, match="'conv' must be a backbone name or a factory"):
        VQGNN(8, 16, 2, 3, num_nodes=10, conv=3)
    model = build(data)
    graph = VQGraph(data.edge_index, data.num_nodes)
    with pytest.raises(ValueError, match="'batch_size' must be an int >= 1, received 0"):
        model.inference(data.x, graph, batch_size=0)


def test_repr(data):
    text = repr(build(data, "sage", num_codewords=32))
    assert text.startswith("VQGNN(8, 16, num_layers=2, out_channels=3")
    assert "conv=SAGEConv" in text and "num_codewords=32" in text and "residual=False" in text
    assert "conv=GATConv" in repr(build(data, "gat", residual=True))


def test_the_gin_backbone_is_pyg_gin_with_a_two_layer_mlp(data):
    from torch_geometric.nn import GINConv

    model = build(data, "gin")
    assert "conv=GINConv" in repr(model)
    for layer, (cin, cout) in zip(model.layers, [(8, 16), (16, 3)]):
        conv = layer.conv
        assert isinstance(conv, GINConv) and float(conv.eps) == 0.0
        assert not isinstance(conv.eps, torch.nn.Parameter)  # epsilon fixed, not trained
        kinds = [type(m) for m in conv.nn]
        assert kinds == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
        assert (conv.nn[0].in_features, conv.nn[0].out_features) == (cin, cout)
        assert (conv.nn[2].in_features, conv.nn[2].out_features) == (cout, cout)


@pytest.mark.parametrize("residual", [False, True])
def test_reset_parameters(data, residual):
    model = build(data, residual=residual, norm="layer")
    model.prepare(data.x, VQGraph(data.edge_index, data.num_nodes))
    with torch.no_grad():
        for norm in model.norms:
            norm.weight.fill_(3.0)
    before = {k: v.clone() for k, v in model.named_parameters()}
    model.reset_parameters()
    after = dict(model.named_parameters())
    conv_weights = [k for k in before if k.startswith("convs.") and k.endswith("weight")]
    assert conv_weights and all(not torch.equal(before[k], after[k]) for k in conv_weights)
    assert all(bool((n.weight == 1).all()) for n in model.norms)
    if residual:
        assert not torch.equal(before["lin_in.weight"], after["lin_in.weight"])
        assert not torch.equal(before["lin_out.weight"], after["lin_out.weight"])
    assert not any(conv.initialized for conv in model.layers)
    assert model.codebook_health() is None


def test_layers_share_one_copy_of_the_convolution_matrix():
    data = load_dataset("synthetic:n=200,deg=5,features=8,classes=3")
    graph = VQGraph(data.edge_index, data.num_nodes)
    model = VQGNN(8, 16, 3, 3, num_nodes=data.num_nodes, conv="gcn")
    first, second, third = (layer.operator(graph) for layer in model.layers)
    assert first is second is third
    sage = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes, conv="sage")
    assert sage.layers[0].operator(graph) is sage.layers[1].operator(graph)
    assert sage.layers[0].operator(graph) is not first  # mean, not GCN's normalisation


# ------------------------------------------------------------------ PyG's conventions
def test_pyg_argument_order():
    """(in_channels, hidden_channels, num_layers, out_channels) as PyG's BasicGNN."""
    from torch_geometric.nn.models import GCN

    ours, pyg = VQGNN(8, 16, 3, 5, num_nodes=10), GCN(8, 16, 3, 5)
    assert (ours.num_layers, ours.out_channels) == (pyg.num_layers, pyg.out_channels) == (3, 5)
    assert len(ours.layers) == len(pyg.convs) == 3
    assert ours.layers[-1].conv.out_channels == pyg.convs[-1].out_channels == 5
    with pytest.raises(TypeError):
        VQGNN(8, 16, 3, 5, 10)  # type: ignore[misc]  # num_nodes is keyword-only


@pytest.mark.parametrize("norm, kind", [
    ("layer_norm", torch.nn.LayerNorm), ("batch", torch.nn.BatchNorm1d),
    (torch.nn.LayerNorm(16), torch.nn.LayerNorm), (lambda c: torch.nn.BatchNorm1d(c),
                                                  torch.nn.BatchNorm1d),
    (None, torch.nn.Identity)])
def test_norm_as_a_name_a_module_or_a_factory(norm, kind):
    model = VQGNN(8, 16, 3, 3, num_nodes=10, norm=norm)
    assert len(model.norms) == 2 and all(type(n) is kind for n in model.norms)
    assert model.norms[0] is not model.norms[1]  # a module is copied per layer


def test_act_as_a_name_or_a_module(data):
    graph = VQGraph(data.edge_index, data.num_nodes)
    leaky = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes, act="leaky_relu",
                  act_kwargs={"negative_slope": 0.5})
    assert isinstance(leaky.act, torch.nn.LeakyReLU) and leaky.act.negative_slope == 0.5
    module = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes, act=torch.nn.Tanh())
    assert isinstance(module.act, torch.nn.Tanh)
    assert module(data.x, graph).shape == (data.num_nodes, 3)
    with pytest.raises(TypeError, match="'act' must be a name or a callable, received int"):
        VQGNN(8, 16, 2, 3, num_nodes=10, act=3)  # type: ignore[arg-type]


def test_codebook_options_reach_every_codebook():
    from vqgnn.quantize import CodebookOptions

    opts = CodebookOptions(num_codewords=8, decay=0.9, dead_threshold=0.05, momentum=0.2,
                           kmeans_backend="torch", kmeans_iters=7)
    model = VQGNN(8, 16, 3, 3, num_nodes=10, codebook=opts)
    assert model.layers[0].quantizer is None  # exact first layer: no codebook at all
    for layer in model.layers[1:]:
        cb = layer.quantizer.codebook
        assert (cb.num_codewords, cb.decay, cb.dead_threshold, cb.kmeans_backend,
                cb.kmeans_iters) == (8, 0.9, 0.05, "torch", 7)
        assert layer.quantizer.x_norm.momentum == 0.2
    with pytest.raises(ValueError, match="'num_codewords' \\(4\\) differs from "
                                         "'codebook.num_codewords' \\(8\\)"):
        VQGNN(8, 16, 3, 3, num_nodes=10, codebook=opts, num_codewords=4)


# ------------------------------------------------------------------ the benchmark's architecture
def test_residual_ffn_quantizes_every_layer_and_has_the_benchmark_layout(data):
    from vqgnn import ResidualFFNGNN

    model = ResidualFFNGNN(8, 16, 3, 3, num_nodes=data.num_nodes, conv="sage",
                           num_codewords=16, ffn_multiplier=2)
    assert all(layer.has_codebook for layer in model.layers)  # no constant-input layer
    assert isinstance(model.final_norm, torch.nn.LayerNorm) and len(model.ffns) == 3
    assert model.ffns[0][0].out_features == 32 and isinstance(model.act, torch.nn.GELU)
    assert all(isinstance(n, torch.nn.LayerNorm) for n in model.norms)
    graph = VQGraph(data.edge_index, data.num_nodes)
    model.prepare(data.x, graph)
    assert all(layer.initialized for layer in model.layers)
    model.eval()
    with torch.no_grad():
        full = model(data.x, graph)
        torch.testing.assert_close(model(data.x, data.edge_index), full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.inference(data.x, graph, 7), full, rtol=1e-5,
                                   atol=1e-5)
    # The block by hand: h + FFN(conv(LN(h))), then LN and the output linear.
    with torch.no_grad():
        h = model.act(model.lin_in(data.x))
        for i, layer in enumerate(model.layers):
            z = layer.conv(model.norms[i](h), data.edge_index)
            first, second = model.ffns[i]
            h = h + second(model.act(first(z)))
        torch.testing.assert_close(model.lin_out(model.final_norm(h)), full, rtol=1e-5,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="'ffn_multiplier' must be an int >= 1"):
        ResidualFFNGNN(8, 16, 2, 3, num_nodes=10, ffn_multiplier=0)


def test_residual_ffn_trains_by_vq_and_from_the_command_line(tmp_path):
    from vqgnn.cli import main
    from vqgnn.train import TrainConfig, Trainer, seed_everything

    data = load_dataset("synthetic:n=300,deg=6,features=8,classes=3")
    from vqgnn import ResidualFFNGNN

    seed_everything(0)
    model = ResidualFFNGNN(8, 16, 2, 3, num_nodes=300, num_codewords=16)
    result = Trainer(model, data, TrainConfig.create("vq", epochs=10, batch_size=64,
                                                     lr=0.01)).fit()
    assert result.test > 1 / 3 + 0.2
    path = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "synthetic:n=300,deg=6,features=8,classes=3", "--ffn",
              "--norm", "layer", "--act", "gelu", "--hidden", "16", "--num-codewords", "16",
              "--batch-size", "64", "--epochs", "2", "--quiet", "--json", str(path)])
    assert exit_info.value.code == 0
    import json

    record = json.loads(path.read_text().splitlines()[0])
    assert record["model_config"]["ffn"] is True and record["model_config"]["act"] == "gelu"


# ------------------------------------------------------------------ hybrid blocks
def test_global_attention_blocks_are_exact_layerwise_and_on_a_full_batch(data):
    from vqgnn import ResidualFFNGNN
    from vqgnn.nn import GlobalAttention

    torch.manual_seed(0)
    model = ResidualFFNGNN(8, 16, 2, 3, num_nodes=data.num_nodes, num_codewords=16,
                           global_attention=True, attention_heads=2)
    assert [type(layer).__name__ for layer in model.quantized_layers] == [
        "VQConv", "VQConv", "GlobalAttention", "GlobalAttention"]
    graph = VQGraph(data.edge_index, data.num_nodes)
    model.prepare(data.x, graph)
    assert all(layer.initialized for layer in model.quantized_layers)
    model.eval()
    with torch.no_grad():
        full = model(data.x, graph)
        torch.testing.assert_close(model.inference(data.x, graph, 37), full, rtol=1e-5,
                                   atol=1e-5)
        # The block by hand: h + FFN(conv(LN(h)) + attention(LN(h))).
        h = model.act(model.lin_in(data.x))
        for i, layer in enumerate(model.layers):
            u = model.norms[i](h)
            attention = model.attentions[i]
            assert isinstance(attention, GlobalAttention)
            z = layer.conv(u, data.edge_index) + attention(u)
            first, second = model.ffns[i]
            h = h + second(model.act(first(z)))
        torch.testing.assert_close(model.lin_out(model.final_norm(h)), full, rtol=1e-5,
                                   atol=1e-5)
        # A batch of every node reads no codeword: exact.
        batch = torch.randperm(data.num_nodes)
        torch.testing.assert_close(model(data.x[batch], graph, batch), full[batch],
                                   rtol=1e-5, atol=1e-5)
    model.train()
    batch = torch.arange(0, 300, 3)
    model(data.x[batch], graph, batch).sum().backward()
    assert model.update_codebooks() == 4  # two convolutions and two attention layers


def test_global_attention_loss_nodes_reach_every_node_below_an_attention_block(data):
    from vqgnn import ResidualFFNGNN

    model = ResidualFFNGNN(8, 16, 2, 3, num_nodes=data.num_nodes, num_codewords=16,
                           global_attention=True)
    graph = VQGraph(data.edge_index, data.num_nodes)
    mask = torch.zeros(data.num_nodes, dtype=torch.bool)
    mask[:5] = True
    model.set_loss_nodes(mask, graph)
    last, first = model.attention(1), model.attention(0)
    assert last is not None and first is not None
    assert torch.equal(last._gradient_nodes, mask)
    assert bool(first._gradient_nodes.all()) and bool(model.layers[0]._gradient_nodes.all())


def test_global_attention_needs_the_residual_layout_and_no_sampling(data):
    from vqgnn.train import TrainConfig, Trainer

    with pytest.raises(ValueError, match="'global_attention' needs the residual layout"):
        VQGNN(8, 16, 2, 3, num_nodes=10, global_attention=True)
    model = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes, residual=True, num_codewords=16,
                  global_attention=True)
    for method in ("sage", "cluster", "saint"):
        with pytest.raises(ValueError, match="drops the global context"):
            Trainer(model, data, TrainConfig.create(method, epochs=1))


def test_global_attention_trains_by_vq_and_full_from_the_command_line(tmp_path):
    import json

    from vqgnn.cli import main

    path = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "synthetic:n=300,deg=6,features=8,classes=3", "--ffn",
              "--global-attention", "--attention-heads", "2", "--hidden", "16",
              "--num-codewords", "16", "--batch-size", "64", "--epochs", "2", "--quiet",
              "--method", "vq,full", "--json", str(path)])
    assert exit_info.value.code == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["method"] for r in records] == ["vq", "full"]
    assert all(r["model_config"]["global_attention"] is True for r in records)
    assert all(r["model_config"]["attention_heads"] == 2 for r in records)


def oracle_codebooks(model: VQGNN, data, graph: VQGraph) -> None:
    """K = N: every node its own codeword, holding its exact eval-mode layer inputs."""
    model.eval()

    def set_oracle(i: int, conv_in: torch.Tensor) -> None:
        for layer in (model.layers[i], model.attention(i)):
            if layer is not None and layer.has_codebook:
                grads = torch.zeros(conv_in.size(0), layer.quantizer.grad_dim)
                layer.set_codewords(conv_in, grads, torch.arange(conv_in.size(0)))

    with torch.no_grad():
        model._layerwise(data.x, graph, 64, False, before_layer=set_oracle)


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("refresh", [0, 1])
def test_vq_inference_with_an_oracle_codebook_equals_exact_inference(data, conv, attention,
                                                                       refresh):
    n = data.num_nodes
    torch.manual_seed(0)
    model = VQGNN(data.num_features, 16, 2, 3, num_nodes=n, conv=conv, residual=attention,
                  exact_first_layer=False, global_attention=attention, attention_heads=2,
                  num_codewords=n)
    graph = VQGraph(data.edge_index, n)
    oracle_codebooks(model, data, graph)
    model.train()
    batches = list(torch.randperm(n).split(64))
    out = model.vq_inference(data.x, graph, batches, refresh=refresh)
    assert model.training  # restored
    model.eval()
    torch.testing.assert_close(out, model.inference(data.x, graph, 64), rtol=1e-4, atol=1e-5)
    # Without the oracle (K = 16 from k-means) it is not exact: the test can fail.
    small = build(data, conv, exact_first_layer=False).eval()
    small.prepare(data.x, graph)
    assert not torch.allclose(small.vq_inference(data.x, graph, batches),
                              small.inference(data.x, graph, 64), atol=1e-3)


def test_vq_inference_refresh_reassigns_by_eval_mode_inputs(data):
    graph = VQGraph(data.edge_index, data.num_nodes)
    model = build(data, exact_first_layer=False)
    model.prepare(data.x, graph)
    layer = model.layers[1]
    layer.quantizer.assignment.zero_()  # stale: every node on codeword 0
    batches = list(torch.arange(data.num_nodes).split(50))
    model.vq_inference(data.x, graph, batches, refresh=0)
    assert int(layer.quantizer.assignment.max()) == 0  # no refresh: untouched
    model.vq_inference(data.x, graph, batches, refresh=1)
    assert int(layer.quantizer.assignment.unique().numel()) > 1
    with pytest.raises(ConfigError, match="'refresh' must be an int >= 0, received -1"):
        model.vq_inference(data.x, graph, batches, refresh=-1)


def test_vq_inference_memory_does_not_grow_with_the_graph():
    """At a fixed batch, VQ inference's peak tensor memory stays within 1.1x from 2,000 to
    20,000 nodes; exact layer-wise inference's grows with N."""
    from vqgnn.train.meters import TensorMemoryMeter

    peaks = {}
    for n in (2000, 20000):
        torch.manual_seed(0)
        data = load_dataset(f"synthetic:n={n},deg=8,features=16,classes=4,power=10")
        graph = VQGraph(data.edge_index, n)
        model = VQGNN(16, 32, 2, 4, num_nodes=n, exact_first_layer=False)
        model.prepare(data.x, graph, 256)
        batches = list(torch.arange(n).split(256))
        with TensorMemoryMeter() as vq:
            for _batch, _out in model.vq_batches(data.x, graph, batches):
                pass  # outputs consumed, as a streaming evaluation does
        with TensorMemoryMeter() as exact:
            model.inference(data.x, graph, 256)
        peaks[n] = (vq.peak, exact.peak)
    assert peaks[20000][0] <= 1.1 * peaks[2000][0], peaks
    assert peaks[20000][1] >= 5 * peaks[2000][1], peaks


def test_reassign_rejects_inputs_of_the_wrong_shape(data):
    graph = VQGraph(data.edge_index, data.num_nodes)
    model = build(data, exact_first_layer=False)
    model.prepare(data.x, graph)
    with pytest.raises(ConfigError, match=r"'VQConv.reassign': 'x' must have shape \(b, 8\)"):
        model.layers[0].reassign(torch.arange(4), torch.randn(4, 3))


# ------------------------------------------------------------------ bounded initialisation
def test_bounded_init_of_every_node_equals_the_exact_init(data):
    """With the exact first layer, a two-layer model's second-layer inputs are exact in any
    batch: the bounded init over all N nodes (sorted) gives the exact init's codebook."""
    graph = VQGraph(data.edge_index, data.num_nodes)
    exact, bounded = build(data), build(data)
    exact.prepare(data.x, graph, 64, seed=3)
    bounded.prepare(data.x, graph, 64, seed=3, init_nodes=data.num_nodes)
    q_exact, q_bounded = exact.layers[1].quantizer, bounded.layers[1].quantizer
    torch.testing.assert_close(q_bounded.codebook.embed, q_exact.codebook.embed,
                               rtol=1e-4, atol=1e-5)
    assert (q_bounded.assignment == q_exact.assignment).float().mean() > 0.99


def test_bounded_init_from_a_sample_initialises_every_layer_and_assigns_every_node(data):
    graph = VQGraph(data.edge_index, data.num_nodes)
    model = VQGNN(data.num_features, 16, 3, 3, num_nodes=data.num_nodes, num_codewords=8,
                  exact_first_layer=False)
    model.prepare(data.x, graph, 64, init_nodes=50)
    assert all(layer.initialized for layer in model.quantized_layers)
    for layer in model.quantized_layers:  # every node assigned to its nearest codeword
        q = layer.quantizer
        assert q.assignment.unique().numel() > 1
    model.eval()
    assigned = model.layers[0].quantizer.assignment.clone()  # before reassign rewrites it
    expected = model.layers[0].reassign(torch.arange(data.num_nodes),
                                        data.x).codes  # the first layer reads x itself
    assert torch.equal(assigned.long(), expected.long())
    with pytest.raises(ConfigError, match="'init_nodes' must be an int >= 1 or None, "
                                          "received 0"):
        model.prepare(data.x, graph, 64, init_nodes=0)


def test_bounded_init_memory_does_not_grow_with_the_graph():
    """At a fixed batch and sample, the bounded init's peak tensor memory stays within
    1.1x from 2,000 to 20,000 nodes; the exact init's grows with N."""
    from vqgnn.train.meters import TensorMemoryMeter

    peaks = {}
    for n in (2000, 20000):
        data = load_dataset(f"synthetic:n={n},deg=6,features=8,classes=3")
        graph = VQGraph(data.edge_index, n)
        model = VQGNN(8, 32, 3, 3, num_nodes=n, num_codewords=16, exact_first_layer=False)
        with TensorMemoryMeter() as exact:
            model.prepare(data.x, graph, 256)  # also builds the graph's cached operators
        with TensorMemoryMeter() as bounded:
            model.prepare(data.x, graph, 256, init_nodes=512)
        peaks[n] = (bounded.peak, exact.peak)
    assert peaks[20000][0] <= 1.1 * peaks[2000][0], peaks
    assert peaks[20000][1] >= 5 * peaks[2000][1], peaks


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_keeps_each_entry_with_probability_one_minus_p(device, p):
    x = torch.randn(200_000, device=device, requires_grad=True)
    torch.manual_seed(0)
    out = dropout(x, p, True)
    kept = out != 0
    # 200,000 draws: the kept share's standard deviation is about 0.0011.
    assert abs(float(kept.float().mean()) - (1 - p)) < 0.006
    # on the CPU p is rounded to a multiple of 1 / 65,536 (0.2: 13,107 / 65,536) and the
    # scale is the inverse of the rounded keep probability: unbiased
    keep = 1 - (round(p * 65536) / 65536 if device == "cpu" else p)
    torch.testing.assert_close(out[kept], x[kept] / keep)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, kept.float() / keep)
    assert dropout(x, p, False) is x and dropout(x, 0.0, True) is x
    torch.manual_seed(0)
    again = dropout(x.detach(), p, True)
    assert torch.equal(again != 0, kept)  # reproducible under the seed


def test_the_cpu_dropout_mask_keeps_its_rounded_probability_in_every_16_bit_lane():
    """Four 16-bit lanes from each 64-bit draw: each lane is kept at the rate 1 - p (a
    lane whose top bit never varied, as in random_()'s default range [0, 2^63), would
    keep every entry at p < 0.5, or drop every one)."""
    torch.manual_seed(1)
    mask, drop = dropout_mask(torch.Size([400_000, 4]), 0.3)  # lane j: column j
    assert drop == 19661 / 65536
    rates = mask.float().mean(0)
    # 400,000 draws per lane: standard deviation about 0.0007
    torch.testing.assert_close(rates, torch.full((4,), 1 - drop), atol=0.004, rtol=0)
    mask, drop = dropout_mask(torch.Size([3, 5, 7]), 0.5)  # any shape, n % 4 != 0
    assert mask.shape == (3, 5, 7) and drop == 0.5
    torch.set_default_device("meta")  # a CPU x's mask stays on the CPU whatever the default
    try:
        for p in (0.5, 0.001):  # the 16-bit lanes and the exact draw
            assert dropout(torch.ones(8, device="cpu"), p, True).device.type == "cpu"
    finally:
        torch.set_default_device(None)  # no default-device mode left behind ("cpu" keeps one)


@pytest.mark.parametrize("p", [1e-6, 0.001, 1 - 1e-6])
def test_a_dropout_probability_that_16_bits_cannot_hold_is_drawn_exactly(p):
    """Rounded to 1 / 65,536, 1e-6 would drop nothing, 0.001 would be 0.00101 (0.7 % off)
    and 1 - 1e-6 would drop everything (and divide by zero): those draw floats."""
    torch.manual_seed(2)
    mask, drop = dropout_mask(torch.Size([500_000]), p)
    assert drop == p
    torch.manual_seed(2)
    assert torch.equal(mask, torch.rand(500_000) >= p)
    out = dropout(torch.ones(10), p, True)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("p", [1.0, -0.1])
def test_dropout_rejects_a_probability_outside_zero_one(p):
    with pytest.raises(ConfigError, match=f"'dropout': 'p' must be in \\[0, 1\\), received {p}"):
        dropout(torch.ones(3), p, True)
    with pytest.raises(ConfigError, match=f"'dropout_mask': 'p' must be in \\[0, 1\\), "
                                          f"received {p}"):
        dropout_mask(torch.Size([3]), p)
