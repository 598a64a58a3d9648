"""OGB through ogb's own code, on tiny datasets written in OGB's raw format."""
from __future__ import annotations

import io
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from vqgnn.datasets import load_dataset, score
from vqgnn.datasets.ogb import OGBPromptWarning, ogb_compat

ogb_nodeproppred = pytest.importorskip("ogb.nodeproppred", reason="ogb is a dependency")
dataset_pyg = pytest.importorskip("ogb.nodeproppred.dataset_pyg")
ogb_url = pytest.importorskip("ogb.utils.url")


def _undirected_pairs(edges: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for u, v in edges.tolist():
        if u != v:
            pairs |= {(u, v), (v, u)}
    return pairs


def _assert_same(a, b) -> None:
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(a[key], b[key]), key
    for key in ("name", "metric", "num_classes", "split", "ogb_name"):
        assert a[key] == b[key], key


def test_arxiv_raw_format_loads_and_matches_the_files(
    tmp_path: Path, ogb_arxiv, check_edges
) -> None:
    raw = ogb_arxiv(tmp_path)
    data = load_dataset("OGBN-Arxiv", root=tmp_path)

    assert (data.name, data.ogb_name, data.metric) == ("ogbn-arxiv", "ogbn-arxiv", "accuracy")
    assert data.num_classes == 40 and data.split == 0
    assert data.x.dtype == torch.float32 and data.x.shape == (50, 128)
    assert torch.allclose(data.x, torch.from_numpy(raw["x"]))
    assert data.y.dtype == torch.int64 and torch.equal(data.y, torch.from_numpy(raw["y"]))
    check_edges(data.edge_index, 50)
    got = {tuple(e) for e in data.edge_index.t().tolist()}
    assert got == _undirected_pairs(raw["edges"])  # arxiv is directed in OGB: symmetrised
    for mask, part in ((data.train_mask, "train"), (data.val_mask, "valid"),
                       (data.test_mask, "test")):
        assert mask.dtype == torch.bool
        assert sorted(mask.nonzero().view(-1).tolist()) == sorted(raw[part].tolist())


def test_second_load_uses_processed_file_and_is_identical(tmp_path: Path, ogb_arxiv) -> None:
    ogb_arxiv(tmp_path)
    first = load_dataset("ogbn-arxiv", root=tmp_path)
    processed = tmp_path / "ogbn_arxiv" / "processed" / "geometric_data_processed.pt"
    assert processed.is_file()
    # ogb's torch.load(processed) without weights_only is what fails under torch >= 2.6.
    second = load_dataset("ogbn-arxiv", root=tmp_path)
    _assert_same(first, second)
    # Processed data alone is enough: no download is attempted without the raw files.
    for path in (tmp_path / "ogbn_arxiv" / "raw").iterdir():
        path.unlink()
    _assert_same(first, load_dataset("ogbn-arxiv", root=tmp_path))


def test_ogb_alone_fails_where_the_context_is_needed(
    tmp_path: Path, monkeypatch, ogb_arxiv
) -> None:
    """Why ogb_compat exists: plain ogb 1.3.6 under torch >= 2.6 without a terminal."""
    ogb_arxiv(tmp_path)
    with pytest.raises(Exception, match="weights_only"):
        ogb_nodeproppred.PygNodePropPredDataset("ogbn-arxiv", root=str(tmp_path))
    (tmp_path / "ogbn_arxiv" / "RELEASE_v1.txt").unlink()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(EOFError):
        ogb_nodeproppred.PygNodePropPredDataset("ogbn-arxiv", root=str(tmp_path))


def test_missing_release_file_prompt_is_answered_without_stdin(
    tmp_path: Path, monkeypatch, ogb_arxiv
) -> None:
    raw = ogb_arxiv(tmp_path, release=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.warns(OGBPromptWarning, match="update the dataset.*answered 'n'"):
        data = load_dataset("ogbn-arxiv", root=tmp_path)
    assert torch.equal(data.y, torch.from_numpy(raw["y"]))
    assert (tmp_path / "ogbn_arxiv" / "raw" / "edge.csv.gz").is_file()  # nothing deleted


def test_large_download_prompt_answers_yes(monkeypatch) -> None:
    class Response:
        def info(self) -> dict:
            return {"Content-Length": str(3 << 30)}

    monkeypatch.setattr(ogb_url.ur, "urlopen", lambda url: Response())
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with ogb_compat(), pytest.warns(OGBPromptWarning, match="proceed.*answered 'y'"):
        assert ogb_url.decide_download("http://example.invalid/big.zip") is True


def test_context_restores_torch_load_and_input(tmp_path: Path, ogb_arxiv) -> None:
    original_load = torch.load
    assert "input" not in vars(dataset_pyg) and "input" not in vars(ogb_url)
    with ogb_compat():
        assert torch.load is original_load  # the global function is never replaced
        assert dataset_pyg.torch is not torch
        path = tmp_path / "obj.pt"
        torch.save({"a": object.__new__(_Opaque)}, path)
        assert isinstance(dataset_pyg.torch.load(path)["a"], _Opaque)  # weights_only=False
        assert dataset_pyg.torch.from_numpy is torch.from_numpy
    assert dataset_pyg.torch is torch and torch.load is original_load
    assert "input" not in vars(dataset_pyg) and "input" not in vars(ogb_url)

    with pytest.raises(RuntimeError, match="boom"), ogb_compat():
        raise RuntimeError("boom")
    assert dataset_pyg.torch is torch and "input" not in vars(dataset_pyg)

    ogb_arxiv(tmp_path)
    load_dataset("ogbn-arxiv", root=tmp_path)
    assert dataset_pyg.torch is torch and torch.load is original_load
    assert "input" not in vars(dataset_pyg) and "input" not in vars(ogb_url)


class _Opaque:
    """Not allow-listed for weights_only loading."""


def test_score_goes_through_the_ogb_evaluator(tmp_path: Path, monkeypatch, ogb_arxiv) -> None:
    raw = ogb_arxiv(tmp_path)
    data = load_dataset("ogbn-arxiv", root=tmp_path)
    calls = []
    real = ogb_nodeproppred.Evaluator

    class Spy(real):  # type: ignore[misc, valid-type]
        def eval(self, input_dict):
            calls.append((self.name, input_dict["y_true"].shape, input_dict["y_pred"].shape))
            return super().eval(input_dict)

    monkeypatch.setattr(ogb_nodeproppred, "Evaluator", Spy)
    out = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    acc = score(data, out, data.test_mask)
    test = torch.from_numpy(np.sort(raw["test"]))
    expected = (out[test].argmax(-1) == data.y[test]).float().mean().item()
    assert acc == pytest.approx(expected)
    assert calls == [("ogbn-arxiv", (10, 1), (10, 1))]
    with pytest.raises(ValueError, match="40 columns"):
        score(data, out[:, :5], data.test_mask)


def test_proteins_features_from_edges_and_multilabel_rocauc(
    tmp_path: Path, ogb_proteins, check_edges
) -> None:
    raw = ogb_proteins(tmp_path)
    data = load_dataset("ogbn-proteins", root=tmp_path)
    n = 30
    assert (data.metric, data.num_classes, data.ogb_name) == ("rocauc", 112, "ogbn-proteins")
    assert data.y.dtype == torch.float32 and data.y.shape == (n, 112)
    assert torch.equal(data.y, torch.from_numpy(raw["y"]).float())
    # ogb adds each edge's inverse with the same features: x is the mean over incident edges.
    sums, counts = np.zeros((n, 8)), np.zeros(n)
    for (u, v), feat in zip(raw["edges"].tolist(), raw["edge_feat"]):
        for node in (u, v):
            sums[node] += feat
            counts[node] += 1
    expected = sums / np.maximum(counts, 1)[:, None]
    assert data.x.shape == (n, 8)
    assert np.allclose(data.x.numpy(), expected, atol=1e-6)
    check_edges(data.edge_index, n)

    out = torch.randn(n, 112, generator=torch.Generator().manual_seed(1))
    mask = data.test_mask
    y, pred = data.y[mask].numpy(), out[mask].numpy()
    per_task = [
        roc_auc_score(y[:, t], pred[:, t]) for t in range(112) if 0 < y[:, t].sum() < len(y)
    ]
    assert score(data, out, mask) == pytest.approx(float(np.mean(per_task)))


def test_missing_ogb_files_raise_file_not_found_and_leave_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    def offline(self) -> None:
        raise URLError("no network in this test")

    monkeypatch.setattr(ogb_nodeproppred.PygNodePropPredDataset, "download", offline)
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("ogbn-arxiv", root=root)
    message = str(info.value)
    assert str(root / "ogbn_arxiv") in message
    for expected in ("raw/edge.csv.gz", "raw/node-feat.csv.gz", "raw/node_year.csv.gz",
                     "split/time/train.csv.gz", "URLError"):
        assert expected in message
    assert not root.exists()

    root.mkdir()
    with pytest.raises(FileNotFoundError):
        load_dataset("ogbn-arxiv", root=root)
    assert list(root.iterdir()) == []


def test_incomplete_raw_folder_names_the_missing_files(tmp_path: Path, ogb_arxiv) -> None:
    ogb_arxiv(tmp_path)
    (tmp_path / "ogbn_arxiv" / "raw" / "num-edge-list.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['raw/num-edge-list.csv.gz'\]"):
        load_dataset("ogbn-arxiv", root=tmp_path)


def test_ogb_split_must_be_zero(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single official OGB split.*received split=1"):
        load_dataset("ogbn-arxiv", root=tmp_path, split=1)
