"""The contextual stochastic block model: determinism, invariants, statistics, parsing."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import scatter

from vqgnn.datasets import SyntheticConfig, load_dataset, parse_synthetic, synthetic_graph


def _graph(**kwargs):
    return synthetic_graph(SyntheticConfig(**{"n": 4000, "deg": 20.0, "seed": 0, **kwargs}))


@pytest.fixture(scope="module")
def default_graph():
    return _graph()


def test_deterministic_by_seed() -> None:
    a, b, c = _graph(n=1000), _graph(n=1000), _graph(n=1000, seed=1)
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a.x, c.x)
    assert a.edge_index.shape != c.edge_index.shape or not torch.equal(a.edge_index,
                                                                       c.edge_index)


def test_edges_are_clean_and_degree_matches(default_graph, check_edges) -> None:
    data = default_graph
    check_edges(data.edge_index, 4000)
    assert data.edge_index.size(1) / 4000 == pytest.approx(20.0, rel=0.01)
    sparse = _graph(deg=4.0)
    check_edges(sparse.edge_index, 4000)
    assert sparse.edge_index.size(1) / 4000 == pytest.approx(4.0, rel=0.01)


def test_degrees_are_heavy_tailed(default_graph) -> None:
    degree = torch.bincount(default_graph.edge_index[0], minlength=4000).float()
    light = torch.bincount(_graph(power=8.0).edge_index[0], minlength=4000).float()
    assert float(degree.max()) > 10 * float(degree.mean())  # hubs
    assert float(light.max()) < float(degree.max()) / 3  # a steeper power law: smaller hubs


@pytest.mark.parametrize("homophily", [0.8, 0.3])
def test_edge_homophily_matches(homophily) -> None:
    data = _graph(homophily=homophily, classes=4)
    row, col = data.edge_index
    measured = float((data.y[row] == data.y[col]).float().mean())
    assert measured == pytest.approx(homophily, abs=0.03)


def test_classes_balanced_and_split_stratified(default_graph) -> None:
    data = default_graph
    assert torch.bincount(data.y).tolist() == [800] * 5
    assert [int(m.sum()) for m in (data.train_mask, data.val_mask, data.test_mask)] == [
        2400, 800, 800]
    assert data.metric == "accuracy" and data.num_classes == 5 and data.split == 0
    assert data.x.shape == (4000, 32) and data.x.dtype == torch.float32


def _nearest_class_mean_accuracy(features, data) -> float:
    train, test = data.train_mask, data.test_mask
    means = torch.stack([features[train & (data.y == c)].mean(0) for c in range(5)])
    pred = torch.cdist(features[test], means).argmin(1)
    return float((pred == data.y[test]).float().mean())


def test_neighbourhood_mean_carries_the_signal(default_graph) -> None:
    data = default_graph
    row, col = data.edge_index
    hop = scatter(data.x[col], row, dim=0, dim_size=data.num_nodes, reduce="mean")
    raw = _nearest_class_mean_accuracy(data.x, data)
    aggregated = _nearest_class_mean_accuracy(hop, data)
    assert 0.3 < raw < 0.65  # individual features: weak
    assert aggregated > raw + 0.2  # 1-hop mean: what a GNN sees


def test_parse_defaults_and_round_trip() -> None:
    config = parse_synthetic("synthetic")
    assert config == SyntheticConfig() and config.seed is None
    parsed = parse_synthetic(" Synthetic: n=1e6, deg=12.5,classes=3,seed=7")
    assert (parsed.n, parsed.deg, parsed.classes, parsed.seed) == (1000000, 12.5, 3, 7)
    assert parse_synthetic(parsed.name) == parsed
    assert parsed.name.startswith("synthetic:n=1000000,deg=12.5,classes=3,")


@pytest.mark.parametrize("name, message", [
    ("synthetic:foo=3", "unknown key 'foo' \\(value '3'\\).*valid keys: n, deg"),
    ("synthetic:n=abc", "value of 'n' must be an integer; received 'abc'"),
    ("synthetic:n=1.5", "value of 'n' must be an integer; received '1.5'"),
    ("synthetic:deg=x", "value of 'deg' must be a number; received 'x'"),
    ("synthetic:homophily=2", "'homophily' must be a number in \\[0, 1\\]; received homophily=2"),
    ("synthetic:power=2", "'power' must be a finite number > 2; received power=2"),
    ("synthetic:classes=1", "'classes' must be an integer >= 2; received classes=1"),
    ("synthetic:n=10,deg=10", "'deg' must be a number in \\(0, n - 1\\]; received deg=10"),
    ("synthetic:n=5,n=6", "key 'n' given twice"),
    ("synthetic:n=", "key 'n' has no value"),
    ("synth", "expected 'synthetic' or 'synthetic:key=value,...'"),
])
def test_parse_errors_name_key_and_value(name, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_synthetic(name)


def test_config_type_errors() -> None:
    with pytest.raises(TypeError, match="'n' must be an int; received float 10.0"):
        SyntheticConfig(n=10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'config' must be a SyntheticConfig; received str"):
        synthetic_graph("synthetic")  # type: ignore[arg-type]


def test_load_dataset_seed_applies_unless_the_name_has_one() -> None:
    data = load_dataset("synthetic:n=500,deg=6", seed=3)
    assert data.name.endswith(",seed=3")
    same = synthetic_graph(SyntheticConfig(n=500, deg=6.0, seed=3))
    assert torch.equal(data.edge_index, same.edge_index)
    assert load_dataset("synthetic:n=500,deg=6,seed=4", seed=3).name.endswith(",seed=4")
    with pytest.raises(ValueError, match="one random split.*received split=1"):
        load_dataset("synthetic:n=500,deg=6", split=1)


def test_names_round_trip_exactly() -> None:
    config = SyntheticConfig(n=12345678901234567, deg=3.141592653589793, homophily=0.123456789)
    assert parse_synthetic(config.name) == config
    assert "deg=3.141592653589793" in config.name and "signal=1," in config.name
