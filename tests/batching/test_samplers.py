"""Batch samplers: partitions of the nodes, reproducibility, resume, METIS parts and cache."""
from __future__ import annotations

import pymetis
import pytest
import torch

from vqgnn.batching.samplers import (
    ClusterBatchSampler,
    NodeBatchSampler,
    metis_partition,
    stream_seed,
)
from vqgnn.datasets import load_dataset
from vqgnn.errors import ConfigError


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic:n=300,deg=6,features=8,classes=3")


@pytest.fixture(scope="module")
def parts(data):
    return metis_partition(data.edge_index, data.num_nodes, 12, seed=0)


def epochs(sampler, count: int) -> list[list[torch.Tensor]]:
    return [list(sampler) for _ in range(count)]


def same_batches(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def assert_partition(batches: list[torch.Tensor], nodes: torch.Tensor) -> None:
    """Disjoint batches whose union is ``nodes``."""
    joined = torch.cat(batches)
    assert joined.numel() == nodes.numel(), "batches overlap or miss nodes"
    assert torch.equal(joined.sort().values.cpu(), nodes.sort().values.cpu())


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000, 97])
def test_node_batches_partition_the_nodes(batch_size, device):
    nodes = torch.arange(5, 300, 3, device=device)  # 99 nodes, a subset, not 0..n-1
    sampler = NodeBatchSampler(nodes, batch_size, seed=0)
    for batches in epochs(sampler, 3):
        assert_partition(batches, nodes)
        assert len(batches) == len(sampler)
        assert all(b.numel() == batch_size for b in batches[:-1])
        # The last batch holds the rest; a rest of one node joins the previous batch
        # (batch normalisation cannot train on one node), unless batches are single nodes.
        rest = nodes.numel() % batch_size
        last = batch_size + 1 if rest == 1 and batch_size > 1 else (rest or batch_size)
        assert batches[-1].numel() == min(last, nodes.numel())
        assert all(b.dtype == torch.int64 and b.device == nodes.device for b in batches)


def test_a_last_batch_of_one_node_joins_the_previous_one():
    batches = list(NodeBatchSampler(torch.arange(9), 4, seed=0))
    assert [b.numel() for b in batches] == [4, 5]


def test_node_batches_change_every_epoch_and_depend_on_the_seed():
    nodes = torch.arange(200)
    first, second = epochs(NodeBatchSampler(nodes, 32, seed=0), 2)
    assert not same_batches(first, second)
    again = epochs(NodeBatchSampler(nodes, 32, seed=0), 2)
    assert same_batches(first, again[0]) and same_batches(second, again[1])
    other = list(NodeBatchSampler(nodes, 32, seed=1))
    assert not same_batches(first, other)


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_node_batches_do_not_replay_the_split_permutation(seed):
    # Regression: the sampler's generator was seeded like the split's, so its first
    # epoch replayed ``randperm(n, seed)``: all training nodes first.
    n, batch_size = 300, 50
    split_perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    batches = list(NodeBatchSampler(torch.arange(n), batch_size, seed=seed))
    assert not torch.equal(batches[0], split_perm[:batch_size])
    assert not torch.equal(torch.cat(batches), split_perm)


def test_first_batch_over_all_nodes_mixes_train_and_other_nodes(data):
    # With batch_nodes='all' the first batch must not be (almost) only training nodes.
    train = data.train_mask
    fraction = float(train.float().mean())
    batches = list(NodeBatchSampler(torch.arange(data.num_nodes), 100, seed=0))
    first = float(train[batches[0]].float().mean())
    assert abs(first - fraction) < 0.25


def test_stream_seed():
    assert stream_seed(0, "batches") == stream_seed(0, "batches")
    seeds = {stream_seed(s, name) for s in range(3) for name in ("batches", "split")}
    assert len(seeds) == 6
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("cluster", [False, True])
def test_state_dict_resumes_the_same_sequence(data, parts, cluster):
    def make():
        nodes = torch.arange(data.num_nodes)
        if cluster:
            return ClusterBatchSampler(nodes, 60, parts, seed=3)
        return NodeBatchSampler(nodes, 60, seed=3)

    straight = epochs(make(), 4)
    first = make()
    epochs(first, 2)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    for expected, got in zip(straight[2:], epochs(resumed, 2)):
        assert same_batches(expected, got)
    # The state is a snapshot: drawing more from ``first`` does not change it.
    epochs(first, 1)
    again = make()
    again.load_state_dict(state)
    assert same_batches(straight[2], list(again))


def test_node_sampler_errors():
    with pytest.raises(ValueError, match="'NodeBatchSampler': 'batch_size' must be an int >= 1"):
        NodeBatchSampler(torch.arange(10), 0)
    with pytest.raises(ValueError, match="'nodes' must be a non-empty 1-D tensor"):
        NodeBatchSampler(torch.arange(0), 4)
    with pytest.raises(ValueError, match=r"received shape \(2, 5\)"):
        NodeBatchSampler(torch.arange(10).view(2, 5), 4)


@pytest.mark.parametrize("subset", [False, True])
def test_cluster_batches_are_unions_of_whole_parts(data, parts, subset):
    nodes = data.train_mask.nonzero().view(-1) if subset else torch.arange(data.num_nodes)
    batch_size = 40
    sampler = ClusterBatchSampler(nodes, batch_size, parts, seed=0)
    orders = []
    for batches in epochs(sampler, 3):
        assert_partition(batches, nodes)
        assert len(batches) <= len(sampler)
        # Every part (restricted to ``nodes``) lies entirely inside one batch.
        batch_of = torch.full((data.num_nodes,), -1)
        for i, b in enumerate(batches):
            batch_of[b] = i
        for p in parts[nodes].unique():
            members = nodes[parts[nodes] == p]
            assert batch_of[members].unique().numel() == 1
        # All batches but the last reach the target size.
        assert all(b.numel() >= batch_size for b in batches[:-1])
        orders.append(torch.cat(batches))
    assert not torch.equal(orders[0], orders[1])


def test_metis_partition_labels(data):
    labels = metis_partition(data.edge_index, data.num_nodes, 8, seed=0)
    assert labels.shape == (data.num_nodes,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < 8
    assert labels.unique().numel() == 8  # no empty part on a connected-ish graph
    assert torch.equal(labels, metis_partition(data.edge_index, data.num_nodes, 8, seed=0))
    ones = metis_partition(data.edge_index, data.num_nodes, 1)
    assert torch.equal(ones, torch.zeros(data.num_nodes, dtype=torch.long))


def test_metis_partition_of_a_directed_graph_is_that_of_its_undirected_graph():
    """METIS reads an undirected graph: a directed edge list with repeats and isolated
    nodes (a user's own Data; it crashed METIS with a segmentation fault) is partitioned
    as the undirected graph it makes."""
    from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

    generator = torch.Generator().manual_seed(0)
    n = 600
    directed = torch.randint(0, 500, (2, 3000), generator=generator)  # 500-599 isolated
    directed = torch.cat([directed, directed[:, :100]], dim=1)  # repeated edges
    undirected = to_undirected(coalesce(remove_self_loops(directed)[0], num_nodes=n),
                               num_nodes=n)
    parts = metis_partition(directed, n, 4, seed=0)
    assert parts.shape == (n,) and parts.min() >= 0 and parts.max() < 4
    assert torch.equal(parts, metis_partition(undirected, n, 4, seed=0))


def test_metis_partition_cache(data, tmp_path, monkeypatch):
    labels = metis_partition(data.edge_index, data.num_nodes, 6, seed=0, cache_dir=tmp_path)
    files = list(tmp_path.glob("metis-*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def fail(*args, **kwargs):
        raise RuntimeError("pymetis called")

    monkeypatch.setattr(pymetis, "part_graph", fail)
    cached = metis_partition(data.edge_index, data.num_nodes, 6, seed=0, cache_dir=tmp_path)
    assert torch.equal(cached, labels)
    # Other arguments are other cache entries: METIS runs (and here fails).
    with pytest.raises(RuntimeError, match="pymetis called"):
        metis_partition(data.edge_index, data.num_nodes, 7, seed=0, cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="pymetis called"):
        metis_partition(data.edge_index, data.num_nodes, 6, seed=1, cache_dir=tmp_path)


def test_metis_partition_cache_survives_a_concurrent_writer(data, tmp_path, monkeypatch):
    """Two data-parallel ranks partition the same graph at once: the one that finishes
    second must not find its temporary file renamed away by the first."""
    from vqgnn.batching import samplers

    state = {"nested": False}
    monkeypatch.setattr(samplers.os, "getpid", lambda: 202 if state["nested"] else 101)
    save = torch.save

    def racing_save(obj, path):
        save(obj, path)
        if not state["nested"]:  # the other rank writes and renames its file now
            state["nested"] = True
            samplers.metis_partition(data.edge_index, data.num_nodes, 6, seed=0,
                                     cache_dir=tmp_path)

    monkeypatch.setattr(samplers.torch, "save", racing_save)
    labels = samplers.metis_partition(data.edge_index, data.num_nodes, 6, seed=0,
                                      cache_dir=tmp_path)
    assert state["nested"]
    assert torch.equal(torch.load(next(tmp_path.glob("metis-*.pt"))), labels)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("num_parts", [0, -2, 2.5])
def test_metis_partition_errors(data, num_parts):
    with pytest.raises(ValueError, match="'num_parts' must be an int >= 1"):
        metis_partition(data.edge_index, data.num_nodes, num_parts)


@pytest.mark.parametrize("make", [
    lambda nodes: NodeBatchSampler(nodes, 64, seed=0),
    lambda nodes: ClusterBatchSampler(nodes, 64, torch.arange(nodes.numel()) % 7, seed=0)])
def test_batches_own_their_memory(make):
    """A batch is not a view of the epoch's permutation (which would keep O(n) alive)."""
    nodes = torch.arange(1000)
    for batch in make(nodes):
        assert batch.untyped_storage().nbytes() == batch.numel() * batch.element_size()


def test_part_batches_groups_nodes_by_part_and_checks_its_input():
    from vqgnn.batching.samplers import part_batches

    batches = part_batches(torch.tensor([2, 0, 2, 0, 3]))
    assert [b.tolist() for b in batches] == [[1, 3], [0, 2], [4]]  # part 1 is empty
    with pytest.raises(ConfigError, match="'parts' must be a 1-D integer tensor"):
        part_batches(torch.zeros(3, 2, dtype=torch.long))
