"""coalesce_undirected and make_data on tiny graphs with known answers."""
from __future__ import annotations

import pytest
import torch

from vqgnn.datasets.graph import coalesce_undirected, make_data


def test_coalesce_undirected_known_answer(ref_edges) -> None:
    edge_index = torch.tensor([[2, 0, 0, 1, 1, 3], [0, 2, 2, 1, 3, 1]])
    out = coalesce_undirected(edge_index, 4)
    assert out.tolist() == [[0, 1, 2, 3], [2, 3, 0, 1]]
    assert torch.equal(out, ref_edges(edge_index, 4))
    assert coalesce_undirected(torch.empty(2, 0, dtype=torch.long), 3).shape == (2, 0)


def test_coalesce_undirected_matches_pyg_on_random_graphs(ref_edges) -> None:
    generator = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, 50, (2, 400), generator=generator, dtype=torch.int32)
    assert torch.equal(coalesce_undirected(edge_index, 50), ref_edges(edge_index.long(), 50))
    with pytest.raises(ValueError, match=r"shape \(2, E\); received shape \(3, 4\)"):
        coalesce_undirected(torch.zeros(3, 4, dtype=torch.long), 5)


def test_make_data_casts_and_sets_metadata() -> None:
    mask = torch.tensor([1, 0, 1])
    data = make_data(torch.ones(3, 2, dtype=torch.float64), torch.tensor([[0], [1]]),
                     torch.tensor([0, 1, 1], dtype=torch.int32), mask, mask, mask,
                     name="g", metric="rocauc", num_classes=2, split=0)
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    assert data.train_mask.dtype == torch.bool
    assert (data.name, data.metric, data.num_classes, data.split) == ("g", "rocauc", 2, 0)
    assert getattr(data, "ogb_name", None) is None
    with pytest.raises(ValueError, match="'metric' must be one of .*received 'auc'"):
        make_data(data.x, data.edge_index, data.y, mask, mask, mask, name="g", metric="auc",
                  num_classes=2, split=0)
