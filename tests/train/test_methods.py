"""Training methods as strategies: the registry, options dataclasses, PyG models trained
by the baselines, a toy method added from outside, and no method branch in the trainer."""
from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch_geometric.nn.models import GCN, GraphSAGE
from torch_geometric.utils import subgraph

import vqgnn.train.trainer as trainer_module
from vqgnn.batching.samplers import NodeBatchSampler
from vqgnn.cli import main
from vqgnn.datasets import load_dataset
from vqgnn.errors import ConfigError
from vqgnn.nn.models import VQGNN
from vqgnn.train import (
    METHODS,
    ClusterOptions,
    MethodOptions,
    NeighborOptions,
    SaintOptions,
    Step,
    TrainConfig,
    Trainer,
    TrainingMethod,
    VQOptions,
    register_method,
    seed_everything,
)

CHANCE = 1 / 3
DATASET = "synthetic:n=300,deg=6,features=8,classes=3"
SMALL = {"sage": {"num_neighbors": (4, 3)}, "cluster": {"num_parts": 8},
         "saint": {"saint_coverage": 10.0}, "vq": {}, "full": {}}


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATASET)


def _config(method: str, **changes) -> TrainConfig:
    base = {"epochs": 8, "lr": 0.03, "eval_batch_size": 128, **SMALL[method], **changes}
    if method != "full":
        base.setdefault("batch_size", 64)
    return TrainConfig.create(method, **base)


# ------------------------------------------------------------------ the trainer
def test_the_trainer_never_tests_a_method_name():
    """The trainer holds no registered method's name but as a default value (the
    ``TrainConfig`` field and ``create``'s argument), and compares nothing to a method."""
    tree = ast.parse(inspect.getsource(trainer_module))
    allowed = set()  # docstrings and default values
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            allowed.add(id(node.value))
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            allowed.add(id(node.value))
        if isinstance(node, ast.arguments):
            allowed.update(id(d) for d in [*node.defaults, *node.kw_defaults] if d is not None)
    named = [(node.lineno, node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and node.value in METHODS
             and id(node) not in allowed]
    assert not named, named
    for node in ast.walk(tree):
        if isinstance(node, (ast.Compare, ast.Match)):
            assert "method" not in ast.unparse(node), ast.unparse(node)


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("method, option, owner", [
    ("full", "sampler", "vq"), ("full", "batch_size", "vq, sage, cluster, saint"),
    ("vq", "num_neighbors", "sage"), ("sage", "num_parts", "vq, cluster"),
    ("cluster", "walk_length", "saint"), ("saint", "batch_nodes", "vq"),
])
def test_an_option_of_another_method_is_rejected_with_its_name(method, option, owner):
    value = {"sampler": "metis", "batch_size": 64, "num_neighbors": (3,), "num_parts": 4,
             "walk_length": 3, "batch_nodes": "train"}[option]
    with pytest.raises(ConfigError, match=f"option '{option}' does not apply to method "
                                          f"'{method}' \\(it is an option of {owner};"):
        TrainConfig.create(method, **{option: value})


def test_an_unknown_option_is_rejected():
    with pytest.raises(ConfigError, match="unknown option 'batchsize'"):
        TrainConfig.create("vq", batchsize=64)


def test_options_validate_on_construction():
    with pytest.raises(ConfigError, match="'VQOptions': 'batch_size' must be an int >= 1, "
                                          "received 0"):
        VQOptions(batch_size=0)
    with pytest.raises(ConfigError, match="'num_parts' applies to sampler 'metis' only"):
        VQOptions(num_parts=4)
    with pytest.raises(ConfigError, match="'NeighborOptions': 'num_neighbors'"):
        NeighborOptions(num_neighbors=())
    with pytest.raises(ConfigError, match="'ClusterOptions': 'num_parts' must be an int >= 1"):
        ClusterOptions(num_parts=0)
    with pytest.raises(ConfigError, match="'SaintOptions': 'saint_coverage' must be > 0"):
        SaintOptions(saint_coverage=float("inf"))
    with pytest.raises(TypeError, match="method 'full' takes FullGraphOptions, received "
                                        "VQOptions"):
        TrainConfig("full", VQOptions())


def test_config_round_trips_through_its_flat_form():
    config = TrainConfig.create("cluster", epochs=3, batch_size=128, num_parts=6)
    assert isinstance(config.options, ClusterOptions) and config.batch_size == 128
    again = TrainConfig.create(config.method, **config.flat())
    assert again == config
    vq = config.replace(method="vq")  # keeps the options vq also takes
    assert vq.batch_size == 128 and isinstance(vq.options, VQOptions)
    assert TrainConfig.create("full").batch_size is None
    json.dumps(config.to_dict())


def test_inference_modes_come_from_the_method():
    TrainConfig.create("vq", inference="vq")
    with pytest.raises(ConfigError, match="'inference' 'vq' needs method 'vq' \\(received "
                                          "method 'sage', whose modes are \\('exact',\\)\\)"):
        TrainConfig.create("sage", inference="vq")


# ------------------------------------------------------------------ PyG models
@pytest.mark.parametrize("feature_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["sage", "cluster", "saint", "full"])
def test_baselines_train_a_pyg_graphsage(data, method, feature_dtype):
    """Also from features stored in bf16: the methods cast the rows a plain PyG model
    reads (a VQGNN casts them itself)."""
    seed_everything(0)
    model = GraphSAGE(data.num_features, 16, num_layers=2, out_channels=3, dropout=0.2)
    config = _config(method).replace(feature_dtype=feature_dtype)
    result = Trainer(model, data, config).fit()
    assert result.test > CHANCE + 0.2 and result.best_val > CHANCE + 0.2
    assert result.test_vq is None  # exact inference only


def test_baselines_run_pyg_convolutions_on_the_subgraph(data, monkeypatch):
    """A VQGNN trained by a baseline calls its wrapped PyG convs with an edge_index."""
    seed_everything(0)
    model = VQGNN(data.num_features, 16, 2, 3, num_nodes=data.num_nodes, conv="sage",
                  num_codewords=16)
    calls = []
    for layer in model.layers:
        conv = layer.conv
        original = conv.forward

        def spy(x, edge_index, *args, _original=original, **kwargs):
            calls.append((x.size(0), type(edge_index)))
            return _original(x, edge_index, *args, **kwargs)

        monkeypatch.setattr(conv, "forward", spy)
    trainer = Trainer(model, data, _config("cluster", epochs=1))
    trainer.train_epoch()
    assert calls and all(kind is Tensor for _, kind in calls)
    assert all(n < data.num_nodes for n, _ in calls)  # subgraphs, not the whole graph


def test_vq_needs_a_vqgnn(data):
    with pytest.raises(TypeError, match="'VQMethod': 'model' must be a VQGNN, received GCN"):
        Trainer(GCN(8, 16, 2, 3), data, _config("vq"))


def test_a_vqgnn_equals_the_pyg_model_it_wraps_on_an_edge_index(data):
    """``VQGNN(x, edge_index)`` runs PyG's convs: the same outputs as its exact forward."""
    from vqgnn.batching.graph import VQGraph

    seed_everything(0)
    model = VQGNN(data.num_features, 16, 2, 3, num_nodes=data.num_nodes, conv="gcn").eval()
    graph = VQGraph(data.edge_index, data.num_nodes)
    model.prepare(data.x, graph)
    with torch.no_grad():
        pyg = model(data.x, data.edge_index)
        ours = model(data.x, graph)
    torch.testing.assert_close(pyg, ours, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ a sixth method
@dataclass(frozen=True)
class DropOptions(MethodOptions):
    batch_size: int = 64

    def validate(self) -> None:
        self._check_int("batch_size")


class DropOutOfBatch(TrainingMethod):
    """Node batches whose out-of-batch messages are dropped: the model runs on the
    subgraph the batch induces (what VQ-GNN's codebooks restore)."""

    name = "drop-out-of-batch"
    Options = DropOptions

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.sampler = NodeBatchSampler(torch.arange(ctx.num_nodes), self.options.batch_size,
                                        seed=ctx.seed)

    def batches(self):
        return iter(self.sampler)

    def num_batches(self) -> int:
        return len(self.sampler)

    def loss(self, batch):
        ctx = self.ctx
        batch = batch.to(ctx.device)
        edge_index, _ = subgraph(batch, ctx.graph.edge_index, relabel_nodes=True,
                                 num_nodes=ctx.num_nodes)
        xb = ctx.x[batch]
        out = ctx.model(xb, edge_index)
        return Step(ctx.node_loss(out, batch, self.options.batch_size * 0.5), (xb, edge_index))

    def state_dict(self):
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state) -> None:
        self.sampler.load_state_dict(state["sampler"])


@pytest.fixture
def toy_method():
    register_method(DropOutOfBatch)
    yield DropOutOfBatch
    METHODS.pop(DropOutOfBatch.name)


def test_a_registered_toy_method_trains_through_the_trainer(data, toy_method):
    seed_everything(0)
    model = VQGNN(data.num_features, 16, 2, 3, num_nodes=data.num_nodes, conv="gcn")
    result = Trainer(model, data, TrainConfig.create(toy_method.name, epochs=10, lr=0.03,
                                                     batch_size=100)).fit()
    assert result.method == toy_method.name and result.epochs_run == 10
    assert result.test > CHANCE + 0.15
    with pytest.raises(ConfigError, match="option 'sampler' does not apply to method "
                                          "'drop-out-of-batch'"):
        TrainConfig.create(toy_method.name, sampler="metis")


def test_a_registered_toy_method_trains_through_the_cli(tmp_path, toy_method, capsys):
    path = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", DATASET, "--method", f"{toy_method.name},full",
              "--epochs", "2", "--batch-size", "100", "--hidden", "16", "--quiet",
              "--json", str(path)])
    assert exit_info.value.code == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["method"] for r in records] == [toy_method.name, "full"]
    assert records[0]["train_config"]["batch_size"] == 100
    assert "batch_size" not in records[1]["train_config"]
    assert f"| {toy_method.name} |" in capsys.readouterr().out


def test_register_method_checks_the_class():
    with pytest.raises(TypeError, match="expected a TrainingMethod subclass"):
        register_method(int)  # type: ignore[arg-type]

    class Nameless(TrainingMethod):
        pass

    with pytest.raises(ConfigError, match="'Nameless.name' must be a non-empty str"):
        register_method(Nameless)


def test_loss_aware_backward_sets_the_gradient_nodes(data):
    seed_everything(0)
    model = VQGNN(data.num_features, 16, 2, 3, num_nodes=data.num_nodes, num_codewords=16)
    trainer = Trainer(model, data, _config("vq", epochs=2, loss_aware_backward=True))
    result = trainer.fit()
    assert torch.equal(model.layers[-1]._gradient_nodes, data.train_mask)
    assert result.epochs_run == 2
    with pytest.raises(ConfigError, match="option 'loss_aware_backward' does not apply to "
                                          "method 'full'"):
        TrainConfig.create("full", loss_aware_backward=True)


@pytest.mark.parametrize("options, match", [
    ({"inference_refresh": -1}, "'inference_refresh' must be an int >= 0 or 'auto', "
                                "received -1"),
    ({"inference_refresh": "always"}, "'inference_refresh' must be an int >= 0 or 'auto', "
                                      "received 'always'"),
    ({"inference_memory_mb": 0}, "'inference_memory_mb' must be a number > 0 or None, "
                                 "received 0"),
    ({"inference_memory_mb": 8, "inference_batch_size": 64},
     r"give 'inference_batch_size' \(64\) or 'inference_memory_mb' \(8\), not both"),
    ({"inference_batches": "bfs"}, "'inference_batches' must be one of"),
    ({"init_nodes": 0}, "'init_nodes' must be an int >= 1 or None, received 0"),
])
def test_vq_inference_options_are_checked(options, match):
    with pytest.raises(ConfigError, match=match):
        VQOptions(**options)


@pytest.mark.parametrize("batches", ["metis", "random"])
def test_vq_inference_runs_in_batches_within_a_memory_budget(batches):
    data = load_dataset("synthetic:n=2000,deg=6,features=8,classes=3")
    model = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes, num_codewords=32)
    budget = 0.25  # MB: a few hundred nodes per batch for this model
    trainer = Trainer(model, data, TrainConfig.create(
        "vq", epochs=1, batch_size=512, inference_memory_mb=budget,
        inference_batches=batches))
    result = trainer.fit()
    summary = result.vq_inference
    assert summary is not None and summary["batches"] == batches
    assert summary["memory_budget_mb"] == budget and summary["refresh"] == "auto"
    assert summary["refresh_used"] in (0, 1) and set(summary["val_by_refresh"]) == {0, 1}
    assert 1 < summary["batch_size"] < data.num_nodes
    assert summary["num_batches"] >= data.num_nodes // summary["batch_size"]
    # The batch size was chosen so that one batch's measured peak fits the budget.
    from vqgnn.train.meters import TensorMemoryMeter

    probe = trainer.method.inference_batches()[0]
    model.eval()
    with torch.no_grad(), TensorMemoryMeter() as meter:
        model(trainer.ctx.x[probe], trainer.graph, probe)
    assert meter.peak <= budget * 2**20
    assert result.test_vq is not None


def test_set_inference_changes_the_batches_of_a_trained_method():
    data = load_dataset("synthetic:n=1000,deg=6,features=8,classes=3")
    model = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes, num_codewords=16)
    trainer = Trainer(model, data, TrainConfig.create("vq", epochs=1, batch_size=256,
                                                      inference_batches="random"))
    trainer.fit()
    method = trainer.method
    assert [b.numel() for b in method.inference_batches()] == [256, 256, 256, 232]
    method.set_inference(inference_batch_size=500, inference_refresh=0)
    assert [b.numel() for b in method.inference_batches()] == [500, 500]
    trainer.predict("vq")
    assert method.inference_summary()["refresh_used"] == 0
    # The options are validated again; a training option cannot be changed this way.
    with pytest.raises(ConfigError, match="'inference_batch_size' must be an int >= 1"):
        method.set_inference(inference_batch_size=0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['batch_size'\]"):
        method.set_inference(batch_size=64)
    assert method.options.inference_batch_size == 500 and method.options.batch_size == 256


@pytest.mark.parametrize("winner", [0, 1])
def test_auto_refresh_keeps_the_variant_with_the_better_validation_metric(monkeypatch,
                                                                          winner):
    """``inference_refresh='auto'`` runs VQ inference without and with the refresh pass and
    keeps the outputs and assignments of the one that scores better on validation: the
    scores are forced here, so both branches run."""
    import vqgnn.train.methods as methods_module

    data = load_dataset("synthetic:n=600,deg=6,features=8,classes=3")
    model = VQGNN(8, 16, 3, 3, num_nodes=data.num_nodes, num_codewords=16,
                  exact_first_layer=False)
    trainer = Trainer(model, data, TrainConfig.create("vq", epochs=1, batch_size=128))
    trainer.fit()
    method = trainer.method
    calls: list[int] = []

    def forced(data_, out, mask):  # the first call scores refresh 0, the second refresh 1
        calls.append(len(calls))
        assert torch.equal(mask, trainer.ctx.masks["val"].cpu())
        return 1.0 if len(calls) - 1 == winner else 0.0

    monkeypatch.setattr(methods_module, "score", forced)
    stale = model.assignments()
    batches = method.inference_batches()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {refresh: model.vq_inference(trainer.ctx.x, trainer.graph, batches,
                                            refresh=refresh) for refresh in (0, 1)}
    refreshed = model.assignments()
    assert any(not torch.equal(a, b) for a, b in zip(stale, refreshed))  # it re-assigns
    model.load_state_dict(snapshot)
    out = method.predict("vq")
    assert len(calls) == 2
    torch.testing.assert_close(out, expected[winner])
    now = model.assignments()
    for a, b in zip(now, stale if winner == 0 else refreshed):
        assert torch.equal(a, b)
    summary = method.inference_summary()
    assert summary["refresh"] == "auto" and summary["refresh_used"] == winner
    assert summary["val_by_refresh"] == {0: float(winner == 0), 1: float(winner == 1)}


def test_restore_assignments_round_trips_and_checks_its_input():
    data = load_dataset("synthetic:n=300,deg=6,features=8,classes=3")
    model = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes, num_codewords=16,
                  exact_first_layer=False, residual=True, global_attention=True)
    trainer = Trainer(model, data, TrainConfig.create("vq", epochs=1, batch_size=64))
    trainer.fit()
    saved = model.assignments()
    assert len(saved) == len(model.quantized_layers)
    for layer in model.quantized_layers:
        layer.quantizer.assignment.random_(0, 16)
    model.restore_assignments(saved)
    for layer, codes in zip(model.quantized_layers, saved):
        assert torch.equal(layer.quantizer.assignment, codes)
    with pytest.raises(ConfigError, match=r"'saved' must hold one tensor per initialised "
                                          r"quantized layer \(4\), received 1"):
        model.restore_assignments(saved[:1])
    with pytest.raises(ConfigError, match=r"each saved tensor must have shape \(300,\), "
                                          r"received \(5,\)"):
        model.restore_assignments([codes[:5] for codes in saved])


def test_init_nodes_reach_the_bounded_codebook_init(monkeypatch, data):
    """``init_nodes`` (``--init-nodes``) initialises the codebooks from that many nodes'
    inputs (VQGNN.prepare's bounded path), and training runs from there."""
    seen = []
    prepare = VQGNN.prepare

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("init_nodes"))
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(VQGNN, "prepare", spy)
    model = VQGNN(data.num_features, 16, 3, 3, num_nodes=data.num_nodes, num_codewords=8)
    result = Trainer(model, data, _config("vq", epochs=2, init_nodes=100)).fit()
    assert seen == [100] and result.epochs_run == 2
    assert all(layer.initialized for layer in model.quantized_layers if layer.has_codebook)


@pytest.mark.parametrize("every", [1, 2])
def test_search_every_searches_on_every_kth_step_of_an_epoch(monkeypatch, data, every):
    """``search_every=k`` (``--search-every``): the nearest-codeword search runs in steps
    0, k, 2k, ... of each epoch (counted afresh each epoch: in the second epoch of 5
    steps, k = 2 searches in steps 0, 2 and 4, not 1 and 3 of a running count), for every
    quantized layer; every step still updates the codebooks."""
    import vqgnn.quantize.codebook as codebook_module

    searches, updates = [], []
    nearest, statistics = codebook_module.nearest_codeword, codebook_module.batch_statistics

    def counting(x, *args, **kwargs):
        searches.append(x.size(0))
        return nearest(x, *args, **kwargs)

    def counting_updates(*args, **kwargs):
        updates.append(1)
        return statistics(*args, **kwargs)

    model = VQGNN(data.num_features, 16, 3, 3, num_nodes=data.num_nodes, num_codewords=8)
    trainer = Trainer(model, data, _config("vq", epochs=1, search_every=every))
    trainer.fit()
    steps = trainer.method.num_batches()
    assert steps == 5  # 300 nodes in batches of 64
    monkeypatch.setattr(codebook_module, "nearest_codeword", counting)
    monkeypatch.setattr(codebook_module, "batch_statistics", counting_updates)
    trainer.train_epoch()
    layers = sum(layer.quantizer is not None for layer in model.quantized_layers)
    assert layers == 2  # the first layer is exact (constant inputs)
    assert len(searches) == layers * -(-steps // every)
    assert len(updates) == layers * steps


def test_search_every_is_checked_and_reaches_the_method_from_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"'search_every' must be an int >= 1, received 0"):
        VQOptions(search_every=0)
    out = tmp_path / "r.jsonl"
    from vqgnn.cli import run
    assert run(["train", "--dataset", DATASET, "--method", "vq", "--epochs", "1",
                "--batch-size", "64", "--search-every", "2", "--num-codewords", "8",
                "--json", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["train_config"]["search_every"] == 2


def test_a_step_whose_codebook_is_not_ready_searches_and_exchanges(monkeypatch, data):
    """A codebook that is not initialised when its step ends initialises itself by
    k-means at that update and assigns the batch: the step then counts as searching (so
    that under torchrun its assignments are exchanged), whatever ``search_every`` says."""
    model = VQGNN(data.num_features, 16, 3, 3, num_nodes=data.num_nodes, num_codewords=8)
    trainer = Trainer(model, data, _config("vq", epochs=1, search_every=5))
    trainer.fit()
    searched, exchanged = [], []
    update = model.update_codebooks
    monkeypatch.setattr(model, "update_codebooks",
                        lambda search=True: (searched.append(search), update(search))[1])
    monkeypatch.setattr(trainer.method.ctx.parallel, "exchange_assignments",
                        lambda *args: exchanged.append(len(searched)))
    codebook = next(layer.quantizer.codebook for layer in model.quantized_layers
                    if layer.quantizer is not None)
    step = trainer.optimizer.step

    def step_then_forget(*args, **kwargs):
        out = step(*args, **kwargs)
        if len(searched) == 2:  # before the third step's update: as if never initialised
            codebook._ready = False
        return out

    monkeypatch.setattr(trainer.optimizer, "step", step_then_forget)
    trainer.train_epoch()
    assert searched == [True, False, True, False, False]
    assert exchanged == [1, 3]  # the steps that searched
    assert codebook.ready
