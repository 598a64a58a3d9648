"""Baseline loaders: their batches are what their method says."""
from __future__ import annotations

import pytest
import torch

from vqgnn.baselines import (
    ClusterBatches,
    NeighborBatches,
    SaintBatches,
    saint_normalization,
    saint_roots,
)
from vqgnn.baselines.loaders import _RandomWalkSampler, _structure
from vqgnn.datasets import load_dataset


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic:n=400,deg=8,features=4,classes=3,seed=1")


def edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


def _hops(edge_index: torch.Tensor, num_nodes: int, num_seeds: int) -> torch.Tensor:
    """Hop at which each node was reached: distance from the seeds against the edges."""
    hop = torch.full((num_nodes,), -1)
    hop[:num_seeds] = 0
    frontier, h = torch.arange(num_seeds), 0
    while frontier.numel():
        h += 1
        sources = edge_index[0][torch.isin(edge_index[1], frontier)]
        frontier = torch.unique(sources[hop[sources] == -1])
        hop[frontier] = h
    assert bool((hop >= 0).all())
    return hop


def global_edges(batch) -> set[tuple[int, int]]:
    return edge_set(batch.n_id[batch.edge_index])


# ------------------------------------------------------------------ GraphSAGE
@pytest.mark.parametrize("fanouts", [[3, 2], [5, 4, 2], [-1, 2]])
def test_neighbor_fanouts_are_respected(data, fanouts):
    torch.manual_seed(0)
    train_idx = data.train_mask.nonzero().view(-1)
    loader = NeighborBatches(data.edge_index, data.num_nodes, train_idx, fanouts, 64)
    graph = edge_set(data.edge_index)
    in_degree = torch.bincount(data.edge_index[1], minlength=data.num_nodes)
    seen_seeds = []
    raws = list(loader.loader)
    torch.manual_seed(0)  # the same draws through the wrapper
    for raw, batch in zip(raws, loader, strict=True):
        assert torch.equal(raw.n_id, batch.n_id)
        assert global_edges(batch) <= graph  # sampled edges are edges of the graph
        assert torch.unique(batch.n_id).numel() == batch.num_nodes
        local_in = torch.bincount(batch.edge_index[1], minlength=batch.num_nodes)
        hop_of = _hops(batch.edge_index, batch.num_nodes, raw.batch_size)
        for hop, fanout in enumerate(fanouts):
            nodes = (hop_of == hop).nonzero().view(-1)
            limit = in_degree[batch.n_id[nodes]]
            if fanout != -1:
                limit = limit.clamp_max(fanout)
            # Nodes of hop h draw min(deg, fan-out h) distinct neighbours, no more.
            assert torch.equal(local_in[nodes], limit)
        last = (hop_of == len(fanouts)).nonzero().view(-1)
        assert local_in[last].sum() == 0  # the outermost hop samples nothing
        seeds = batch.n_id[batch.loss_index]
        assert torch.equal(batch.loss_index, torch.arange(raw.batch_size))
        assert torch.allclose(batch.loss_weight, torch.full_like(batch.loss_weight,
                                                                 1 / raw.batch_size))
        seen_seeds.append(seeds)
    seeds = torch.cat(seen_seeds)
    assert torch.equal(seeds.sort().values, train_idx)  # an epoch covers the training nodes


def test_neighbor_batches_follow_the_seed(data):
    train_idx = data.train_mask.nonzero().view(-1)
    loader = NeighborBatches(data.edge_index, data.num_nodes, train_idx, [3, 2], 64)
    torch.manual_seed(5)
    first = [b.n_id for b in loader]
    torch.manual_seed(5)
    again = [b.n_id for b in loader]
    torch.manual_seed(6)
    other = [b.n_id for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("fanouts, match", [
    ([], "received \\[\\]"), ([3, 0], "received \\[3, 0\\]"), ([2.5], "received \\[2.5\\]")])
def test_neighbor_bad_fanouts(data, fanouts, match):
    with pytest.raises(ValueError, match="'NeighborBatches': 'num_neighbors' must be .*" + match):
        NeighborBatches(data.edge_index, data.num_nodes, torch.arange(10), fanouts, 8)


# ---------------------------------------------------------------- Cluster-GCN
def test_clusters_are_disjoint_covering_and_induced(data, tmp_path):
    torch.manual_seed(0)
    loader = ClusterBatches(data.edge_index, data.num_nodes, data.train_mask, num_parts=12,
                            parts_per_batch=3, seed=0, cache_dir=str(tmp_path))
    assert len(loader) == 4
    graph = edge_set(data.edge_index)
    batches = list(loader)
    nodes = torch.cat([b.n_id for b in batches])
    assert torch.equal(nodes.sort().values, torch.arange(data.num_nodes))  # disjoint, covering
    num_train = int(data.train_mask.sum())
    for b in batches:
        inside = set(b.n_id.tolist())
        induced = {(j, i) for j, i in graph if j in inside and i in inside}
        assert global_edges(b) == induced  # every edge among the parts, no other
        assert torch.equal(b.n_id[b.loss_index].sort().values,
                           b.n_id[data.train_mask[b.n_id]].sort().values)
        assert torch.allclose(b.loss_weight, torch.full_like(b.loss_weight,
                                                             12 / (3 * num_train)))
    assert any(p.name.startswith("metis-") for p in tmp_path.iterdir())  # partition cached


def test_cluster_parts_follow_metis(data):
    from vqgnn.batching.samplers import metis_partition

    loader = ClusterBatches(data.edge_index, data.num_nodes, data.train_mask, 8, 1, seed=3)
    parts = metis_partition(data.edge_index, data.num_nodes, 8, seed=3)
    for batch in loader:  # one part per batch: the batch is one METIS part
        assert torch.unique(parts[batch.n_id]).numel() == 1
        assert batch.num_nodes == int((parts == parts[batch.n_id[0]]).sum())


@pytest.mark.parametrize("kw, match", [
    ({"num_parts": 0}, "'num_parts' must be an int in \\[1, 400\\], received 0"),
    ({"num_parts": 401}, "'num_parts' .* received 401"),
    ({"parts_per_batch": 0}, "'parts_per_batch' must be an int in \\[1, num_parts=4\\], "
                             "received 0"),
    ({"parts_per_batch": 5}, "'parts_per_batch' .* received 5"),
])
def test_cluster_bad_arguments(data, kw, match):
    args = {"num_parts": 4, "parts_per_batch": 1, **kw}
    with pytest.raises(ValueError, match="'ClusterBatches': " + match):
        ClusterBatches(data.edge_index, data.num_nodes, data.train_mask, **args)


# ----------------------------------------------------------------- GraphSAINT
def test_saint_subgraphs_are_induced_by_random_walks(data):
    torch.manual_seed(0)
    loader = SaintBatches(data.edge_index, data.num_nodes, data.train_mask, roots=30,
                          walk_length=2, num_steps=4, coverage=5.0)
    graph = edge_set(data.edge_index)
    for b in loader:
        assert b.num_nodes <= 30 * 3  # roots x (walk length + 1) visited nodes at most
        inside = set(b.n_id.tolist())
        induced = {(j, i) for j, i in graph if j in inside and i in inside}
        assert global_edges(b) == induced
        assert torch.equal(b.edge_weight,
                           loader.norm.edge_norm[_edge_ids(data.edge_index, b)])
        assert torch.allclose(b.loss_weight, loader.norm.node_norm[b.n_id[b.loss_index]]
                              / int(data.train_mask.sum()))


def _edge_ids(edge_index, batch):
    """The id of each of the batch's edges in the graph's edge list."""
    ids = {e: k for k, e in enumerate(map(tuple, edge_index.t().tolist()))}
    return torch.tensor([ids[e] for e in map(tuple, batch.n_id[batch.edge_index].t().tolist())])


def test_saint_normalisation_sums_right(data):
    """Counts recomputed from the same draws; the weights make unbiased sums."""
    n, edge_index = data.num_nodes, data.edge_index
    sampler = _RandomWalkSampler(_structure(edge_index, n), batch_size=40, walk_length=3,
                                 num_steps=5, sample_coverage=0, log=False)
    torch.manual_seed(0)
    norm = saint_normalization(sampler, edge_index, n, coverage=60.0)
    torch.manual_seed(0)  # replay the same draws and count by hand
    node_count, edge_count = torch.zeros(n), torch.zeros(edge_index.size(1))
    draws = 0
    while draws < norm.num_samples:
        for sub in sampler:
            node_count[sub.n_id] += 1
            edge_count[sub.e_id] += 1
            draws += 1
    assert draws == norm.num_samples and node_count.sum() >= 60 * n
    assert torch.equal(norm.node_count, node_count) and torch.equal(norm.edge_count, edge_count)
    assert bool((node_count > 0).all()) and bool((edge_count > 0).all())  # all seen at 60x
    # Loss: each node's summed weight over the draws is the number of draws, so a
    # weighted sum over a subgraph estimates the sum over all nodes.
    assert torch.allclose(norm.node_norm * node_count, torch.full((n,), float(draws)))
    # Aggregation: over the draws that hold a target i, its in-edges' weights add up to
    # its full in-degree on average (alpha = C_ji / C_i, the target's count).
    weighted = torch.zeros(n).index_add_(0, edge_index[1], norm.edge_norm * edge_count)
    in_degree = torch.bincount(edge_index[1], minlength=n).float()
    assert torch.allclose(weighted / node_count, in_degree)


def test_saint_normalisation_uses_the_target_count():
    # A star 0 <- 1..4 (directed): node 0 is in every subgraph that holds an edge.
    edge_index = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0]])
    sampler = _RandomWalkSampler(_structure(edge_index, 5), batch_size=2, walk_length=1,
                                 num_steps=4, sample_coverage=0, log=False)
    torch.manual_seed(0)
    norm = saint_normalization(sampler, edge_index, 5, coverage=40.0)
    expected = norm.node_count[0] / norm.edge_count
    assert torch.allclose(norm.edge_norm, expected)


def test_saint_bad_arguments(data):
    with pytest.raises(ValueError, match="'SaintBatches': 'roots' must be an int >= 1, "
                                         "received 0"):
        SaintBatches(data.edge_index, data.num_nodes, data.train_mask, 0, 2, 4)
    with pytest.raises(ValueError, match="'coverage' must be > 0 and finite, received 0"):
        SaintBatches(data.edge_index, data.num_nodes, data.train_mask, 4, 2, 4, coverage=0)


def test_saint_roots():
    assert saint_roots(1024, 2) == 342 and saint_roots(1, 5) == 1
    with pytest.raises(ValueError, match="'saint_roots': 'walk_length' must be an int >= 1, "
                                         "received 0"):
        saint_roots(8, 0)


def test_reprs(data):
    train_idx = data.train_mask.nonzero().view(-1)
    assert repr(NeighborBatches(data.edge_index, data.num_nodes, train_idx, [2], 8)) == (
        "NeighborBatches(num_neighbors=[2], batch_size=8)")
    assert repr(ClusterBatches(data.edge_index, data.num_nodes, data.train_mask, 4, 2)) == (
        "ClusterBatches(num_parts=4, parts_per_batch=2)")
    saint = SaintBatches(data.edge_index, data.num_nodes, data.train_mask, 4, 2, 3, coverage=1.0)
    assert repr(saint) == "SaintBatches(roots=4, walk_length=2, num_steps=3)"
    assert saint.state_dict() == {}
    with pytest.raises(ValueError, match="expected an empty state"):
        saint.load_state_dict({"generator": 1})
