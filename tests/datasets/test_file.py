"""A user's own graph file: round trips, random splits, and each malformed-file error."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from vqgnn.datasets import load_dataset
from vqgnn.datasets.file import UnsafeLoadWarning

N = 40


def _graph(**overrides) -> Data:
    """40 nodes, 4 balanced classes, directed edges with a duplicate and a self-loop."""
    fields = {
        "x": torch.randn(N, 3, generator=torch.Generator().manual_seed(0)),
        "edge_index": torch.tensor([[0, 1, 1, 2, 5, 39], [1, 2, 2, 2, 6, 0]]),
        "y": torch.arange(N) % 4,
    }
    fields.update(overrides)
    return Data(**{k: v for k, v in fields.items() if v is not None})


def _save(tmp_path: Path, obj, name: str = "graph.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_round_trip_with_masks(tmp_path: Path, check_edges) -> None:
    train = torch.zeros(N, dtype=torch.bool)
    train[:10] = True
    val = torch.zeros(N, dtype=torch.bool)
    val[10:20] = True
    test = torch.zeros(N, dtype=torch.bool)
    test[20:] = True
    saved = _graph(train_mask=train, val_mask=val, test_mask=test)
    path = _save(tmp_path, saved)
    allowed = set(map(repr, torch.serialization.get_safe_globals()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsafeLoadWarning)  # a plain Data loads weights-only
        data = load_dataset(str(path))
    assert set(map(repr, torch.serialization.get_safe_globals())) == allowed  # left as found

    assert data.name == str(path) and data.metric == "accuracy" and data.num_classes == 4
    assert torch.equal(data.x, saved.x) and torch.equal(data.y, saved.y)
    assert torch.equal(data.train_mask, train) and torch.equal(data.test_mask, test)
    check_edges(data.edge_index, N)
    assert data.edge_index.t().tolist() == [[0, 1], [0, 39], [1, 0], [1, 2], [2, 1], [5, 6],
                                            [6, 5], [39, 0]]


def test_without_masks_a_stratified_split_is_drawn_from_seed(tmp_path: Path) -> None:
    path = _save(tmp_path, _graph())
    data = load_dataset(str(path), seed=0)
    for c in range(4):  # 10 nodes per class: 6 / 2 / 2
        in_class = data.y == c
        assert [int((m & in_class).sum()) for m in (data.train_mask, data.val_mask,
                                                   data.test_mask)] == [6, 2, 2]
    assert torch.equal(load_dataset(str(path), seed=0).train_mask, data.train_mask)
    assert not torch.equal(load_dataset(str(path), seed=1).train_mask, data.train_mask)
    with pytest.raises(ValueError, match="has no masks.*split=1"):
        load_dataset(str(path), split=1)


def test_unlabeled_nodes_enter_no_mask_and_metric_is_honoured(tmp_path: Path) -> None:
    y = (torch.arange(N) % 2).clone()
    y[:5] = -1
    data = load_dataset(str(_save(tmp_path, _graph(y=y, metric="rocauc"))))
    assert data.metric == "rocauc" and data.num_classes == 2
    covered = data.train_mask | data.val_mask | data.test_mask
    assert torch.equal(covered, y >= 0)


def test_two_dimensional_masks_and_dict_files(tmp_path: Path) -> None:
    train = torch.zeros(N, 2, dtype=torch.bool)
    train[:10, 0] = True
    train[10:20, 1] = True
    val = torch.zeros(N, 2, dtype=torch.bool)
    val[20:30] = True
    test = torch.zeros(N, 2, dtype=torch.bool)
    test[30:] = True
    fields = {"x": torch.ones(N, 2), "edge_index": torch.tensor([[0], [1]]), "y": torch.zeros(N,
              dtype=torch.long), "train_mask": train, "val_mask": val, "test_mask": test}
    path = _save(tmp_path, fields)
    data = load_dataset(str(path), split=1)
    assert data.split == 1 and torch.equal(data.train_mask, train[:, 1])
    with pytest.raises(ValueError, match=r"2 given split\(s\).*0\.\.1.*split=2"):
        load_dataset(str(path), split=2)


class _Custom:
    """A class that weights_only loading does not allow."""


def test_files_needing_pickle_load_with_a_warning(tmp_path: Path) -> None:
    path = _save(tmp_path, _graph(extra=_Custom()))
    with pytest.warns(UnsafeLoadWarning, match="executes pickle"):
        data = load_dataset(str(path))
    assert data.num_nodes == N


MALFORMED = [
    ({"x": None}, "has no field 'x'"),
    ({"edge_index": None}, "has no field 'edge_index'"),
    ({"y": None}, "has no field 'y'"),
    ({"x": torch.ones(N, 3, dtype=torch.long)},
     r"'x'.*2-D floating-point.*received a tensor of dtype torch.int64 and shape \(40, 3\)"),
    ({"x": torch.ones(N)}, r"'x'.*2-D floating-point.*shape \(40,\)"),
    ({"edge_index": torch.zeros(3, 4, dtype=torch.long)}, r"'edge_index'.*\(2, E\).*\(3, 4\)"),
    ({"edge_index": torch.zeros(2, 4)}, r"'edge_index'.*integer.*torch.float32"),
    ({"edge_index": torch.tensor([[0, 40], [1, 2]])}, r"'edge_index'.*\[0, 40\).*\[0, 40\]"),
    ({"edge_index": torch.tensor([[0, -1], [1, 2]])}, r"'edge_index'.*\[0, 40\).*\[-1, 2\]"),
    ({"y": torch.zeros(N - 1, dtype=torch.long)}, r"'y'.*shape \(40,\).*shape \(39,\)"),
    ({"y": torch.zeros(N)}, r"'y'.*integer.*torch.float32"),
    ({"y": -torch.ones(N, dtype=torch.long)}, "'y'.*no label >= 0"),
    ({"metric": "f1"}, "'metric'.*'accuracy', 'rocauc'.*'f1'"),
    ({"metric": "rocauc"}, "'rocauc', which needs binary labels; received 4 classes"),
    ({"train_mask": torch.ones(N, dtype=torch.bool)}, r"has \['train_mask'\] but no "
     r"\['val_mask', 'test_mask'\]"),
    ({"train_mask": torch.ones(N, dtype=torch.long), "val_mask": torch.ones(N, dtype=torch.bool),
      "test_mask": torch.ones(N, dtype=torch.bool)}, r"'train_mask'.*boolean.*torch.int64"),
    ({"train_mask": torch.ones(N + 1, dtype=torch.bool), "val_mask": torch.ones(N + 1,
      dtype=torch.bool), "test_mask": torch.ones(N + 1, dtype=torch.bool)},
     r"'train_mask'.*\(40,\).*shape \(41,\)"),
    ({"train_mask": torch.ones(N, dtype=torch.bool), "val_mask": torch.ones(N, dtype=torch.bool),
      "test_mask": torch.zeros(N, dtype=torch.bool)}, "must be disjoint; 40 node"),
]


@pytest.mark.parametrize("overrides, message", MALFORMED)
def test_malformed_files_raise_value_errors(tmp_path: Path, overrides, message) -> None:
    path = _save(tmp_path, _graph(**overrides))
    with pytest.raises(ValueError, match=message):
        load_dataset(str(path))


def test_unlabeled_node_in_a_mask_is_rejected(tmp_path: Path) -> None:
    y = torch.arange(N) % 4
    y[0] = -1
    masks = {k: torch.zeros(N, dtype=torch.bool) for k in ("train_mask", "val_mask", "test_mask")}
    masks["train_mask"][0] = True
    with pytest.raises(ValueError, match="'train_mask'.*selects 1 unlabeled node"):
        load_dataset(str(_save(tmp_path, _graph(y=y, **masks))))


def test_missing_file_and_wrong_content(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no file at .*absent.pt"):
        load_dataset(str(tmp_path / "absent.pt"))
    with pytest.raises(TypeError, match="must hold a torch_geometric.data.Data or a dict; "
                                        "received list"):
        load_dataset(str(_save(tmp_path, [1, 2])))


def test_labels_with_empty_classes_warn_and_contiguous_labels_do_not(tmp_path: Path) -> None:
    """Labels {0, 2, 7}: the model predicts 8 classes, 5 of them with no node."""
    y = torch.tensor([0, 2, 7, -1] * (N // 4))
    path = _save(tmp_path, _graph(y=y))
    with pytest.warns(UserWarning, match=r"has labels up to 7, so the model predicts 8 "
                                         r"classes, but 5 of them have no node \(1, 3, 4, 5, "
                                         r"6\)") as caught:
        data = load_dataset(str(path))
    assert data.num_classes == 8 and caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(str(_save(tmp_path, _graph(), "contiguous.pt")))
