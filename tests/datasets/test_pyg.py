"""The real datasets of ../shared/data, loaded offline through PyG's classes."""
from __future__ import annotations

import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch_geometric.datasets import Actor, HeterophilousGraphDataset, LINKXDataset, Planetoid

from vqgnn.datasets import load_dataset

# folder (root), PyG class, class name argument, N, E after cleaning, F, C, metric, split sizes.
# E is also recomputed from PyG's own load in the test; Actor's 30,019 directed edges (some
# one-way, some self-loops) become 53,318 once symmetrised and loop-free, the others stay.
CASES = {
    "Cora": ("planetoid", Planetoid, "Cora", 2708, 10556, 1433, 7, "accuracy", (140, 500, 1000)),
    "CiteSeer": ("planetoid", Planetoid, "CiteSeer", 3327, 9104, 3703, 6, "accuracy",
                 (120, 500, 1000)),
    "Tolokers": ("heterophilous", HeterophilousGraphDataset, "Tolokers", 11758, 1038000, 10, 2,
                 "rocauc", (5879, 2939, 2940)),
    "Minesweeper": ("heterophilous", HeterophilousGraphDataset, "Minesweeper", 10000, 78804, 7,
                    2, "rocauc", (5000, 2500, 2500)),
    "Actor": ("actor", Actor, None, 7600, 53318, 932, 5, "accuracy", (3648, 2432, 1520)),
    # LINKX amherst41: 2,032 labeled nodes, random 50/25/25 stratified split of them.
    "amherst41": ("linkx", LINKXDataset, "amherst41", 2235, 181908, 1193, 2, "accuracy", None),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, shared) -> Path:
    """One writable copy of the shared folders per module (each is processed once)."""
    root = tmp_path_factory.mktemp("shared")
    for folder in ("planetoid", "heterophilous", "actor", "linkx"):
        shared(folder, root)
    return root


def _pyg(name: str, root: Path):
    folder, cls, arg = CASES[name][:3]
    return cls(str(root / folder), arg) if arg else cls(str(root / folder))


@pytest.mark.parametrize("name", list(CASES))
def test_real_dataset_loads_offline(name, data_root, check_edges, ref_edges) -> None:
    folder, _, _, n, e, f, c, metric, sizes = CASES[name]
    data = load_dataset(name.lower(), root=data_root / folder)

    assert data.name == name and data.metric == metric and data.split == 0
    assert data.num_nodes == n and data.num_classes == c
    assert data.x.dtype == torch.float32 and data.x.shape == (n, f)
    assert data.y.dtype == torch.int64 and data.y.shape == (n,)
    assert data.edge_index.size(1) == e
    check_edges(data.edge_index, n)
    raw = _pyg(name, data_root)[0]
    assert torch.equal(data.edge_index, ref_edges(raw.edge_index, n))  # independent path
    assert torch.equal(data.x, raw.x) and torch.equal(data.y, raw.y)

    masks = (data.train_mask, data.val_mask, data.test_mask)
    assert all(m.dtype == torch.bool and m.shape == (n,) for m in masks)
    assert not bool((masks[0] & masks[1]).any() | (masks[0] & masks[2]).any()
                    | (masks[1] & masks[2]).any())
    labeled = data.y >= 0
    assert not bool(((masks[0] | masks[1] | masks[2]) & ~labeled).any())
    if sizes is not None:
        assert tuple(int(m.sum()) for m in masks) == sizes
        train_mask = raw.train_mask if raw.train_mask.dim() == 1 else raw.train_mask[:, 0]
        assert torch.equal(data.train_mask, train_mask)


def test_tolokers_given_splits(data_root) -> None:
    root = data_root / "heterophilous"
    first, fourth = load_dataset("TOLOKERS", root=root), load_dataset("tolokers", root, split=3)
    n = first.num_nodes
    assert fourth.split == 3
    for data in (first, fourth):  # each given split is 50/25/25 % of all nodes
        assert [int(m.sum()) for m in (data.train_mask, data.val_mask, data.test_mask)] == [
            n // 2, n // 4, n - n // 2 - n // 4]
    assert not torch.equal(first.train_mask, fourth.train_mask)
    raw = _pyg("Tolokers", data_root)[0]
    assert torch.equal(fourth.val_mask, raw.val_mask[:, 3])
    with pytest.raises(ValueError, match=r"'Tolokers' has 10 given split\(s\).*0\.\.9.*split=10"):
        load_dataset("Tolokers", root=root, split=10)


def test_single_and_random_splits_reject_other_split_indices(data_root) -> None:
    with pytest.raises(ValueError, match="'Cora' has a single public split.*split=1"):
        load_dataset("Cora", root=data_root / "planetoid", split=1)
    with pytest.raises(ValueError, match="'amherst41' has no given split.*seed.*split=2"):
        load_dataset("amherst41", root=data_root / "linkx", split=2)


def test_linkx_random_split_is_stratified_over_labeled_nodes(data_root) -> None:
    root = data_root / "linkx"
    data = load_dataset("amherst41", root=root, seed=0)
    labeled = data.y >= 0
    assert int(labeled.sum()) == 2032  # the other 203 nodes are unlabeled (label -1)
    for c in (0, 1):
        count = int((data.y == c).sum())
        assert int((data.train_mask & (data.y == c)).sum()) == round(0.5 * count)
        assert int((data.val_mask & (data.y == c)).sum()) == round(0.25 * count)
    assert torch.equal(data.train_mask | data.val_mask | data.test_mask, labeled)
    again, other = load_dataset("amherst41", root, seed=0), load_dataset("amherst41", root, seed=1)
    assert torch.equal(again.train_mask, data.train_mask)
    assert not torch.equal(other.train_mask, data.train_mask)


def test_aliases_resolve_to_canonical_names(data_root) -> None:
    assert load_dataset("film", root=data_root / "actor").name == "Actor"
    assert load_dataset(" citeseer ", root=data_root / "planetoid").name == "CiteSeer"


def test_processed_files_alone_suffice(tmp_path: Path, shared) -> None:
    root = shared("planetoid", tmp_path)
    first = load_dataset("Cora", root=root)
    shutil.rmtree(root / "Cora" / "raw")
    second = load_dataset("Cora", root=root)  # no download attempted: processed/ is enough
    assert torch.equal(first.edge_index, second.edge_index)


def test_default_root_comes_from_vqgnn_data(tmp_path: Path, shared, monkeypatch) -> None:
    shared("planetoid", tmp_path)
    monkeypatch.setenv("VQGNN_DATA", str(tmp_path))
    assert load_dataset("cora").num_nodes == 2708
    assert (tmp_path / "planetoid" / "Cora" / "processed").is_dir()


def test_missing_files_raise_file_not_found_naming_them(tmp_path: Path, monkeypatch) -> None:
    def offline(self) -> None:
        raise URLError("no network in this test")

    monkeypatch.setattr(Planetoid, "download", offline)
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("Cora", root=root)
    message = str(info.value)
    assert str(root / "Cora" / "raw") in message
    assert "ind.cora.x" in message and "ind.cora.graph" in message and "URLError" in message
    assert not root.exists()  # nothing left behind

    root.mkdir()
    with pytest.raises(FileNotFoundError, match="ind.cora.test.index") as info:
        load_dataset("Cora", root=root)
    assert list(root.iterdir()) == []
    assert "holds a 'raw' folder itself" not in str(info.value)

    # A root one level too deep (the dataset's own folder, holding raw/): the error says so,
    # naming the folder above when it is the dataset's folder by name.
    (root / "raw").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("Cora", root=root)
    assert (f"'{root}' holds a 'raw' folder itself, but this dataset's raw files go in "
            f"ROOT/Cora/raw: give as the root a folder that holds 'Cora/raw'") in str(info.value)
    assert [p.name for p in root.iterdir()] == ["raw"]
    own = tmp_path / "data" / "Cora"
    (own / "raw").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("Cora", root=own)
    assert (f"'{own}' holds a 'raw' folder itself: the root is the folder above it, "
            f"'{tmp_path / 'data'}'") in str(info.value)


def test_failed_processing_leaves_no_processed_folder(tmp_path: Path, shared) -> None:
    root = shared("planetoid", tmp_path)
    (root / "Cora" / "raw" / "ind.cora.graph").write_bytes(b"not a pickle")
    with pytest.raises(Exception):  # noqa: B017 (whatever PyG's parser raises)
        load_dataset("Cora", root=root)
    assert not (root / "Cora" / "processed").exists()
    assert (root / "Cora" / "raw" / "ind.cora.x").is_file()  # the raw files stay
    assert load_dataset("CiteSeer", root=root).num_nodes == 3327
