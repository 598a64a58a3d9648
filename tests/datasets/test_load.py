"""load_dataset's name resolution and argument checks."""
from __future__ import annotations

import pytest

from vqgnn.datasets import available_datasets, load_dataset
from vqgnn.datasets.pyg import PYG_DATASETS, spec_for


def test_available_datasets() -> None:
    names = available_datasets()
    assert names[:4] == ["ogbn-arxiv", "ogbn-products", "ogbn-proteins", "ogbn-papers100M"]
    for name in ("Cora", "Tolokers", "Actor", "amherst41", "Amazon-Computers", "Coauthor-CS",
                 "Reddit", "Flickr", "synthetic"):
        assert name in names
    assert len(set(names)) == len(names)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("foo")
    message = str(info.value)
    assert message.startswith("load_dataset: unknown dataset 'foo'; valid names: ogbn-arxiv")
    for name in available_datasets():
        assert name in message
    assert "'synthetic:key=value,...'" in message and "'.pt'" in message


@pytest.mark.parametrize("alias, canonical", [
    ("cora", "Cora"), ("PUBMED", "PubMed"), ("roman_empire", "Roman-empire"),
    ("amazon-computers", "Amazon-Computers"), ("computers", "Amazon-Computers"),
    ("Photo", "Amazon-Photo"), ("coauthor-cs", "Coauthor-CS"), ("cs", "Coauthor-CS"),
    ("physics", "Coauthor-Physics"), ("film", "Actor"), ("Penn94", "penn94"),
])
def test_aliases(alias, canonical) -> None:
    spec = spec_for(alias)
    assert spec is not None and spec.name == canonical


def test_every_spec_names_a_pyg_class() -> None:
    from torch_geometric import datasets

    for spec in PYG_DATASETS:
        assert hasattr(datasets, spec.cls), spec.cls
        assert spec.metric in ("accuracy", "rocauc") and spec.splits in ("public", "given",
                                                                          "random")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"name": 3}, TypeError, "'name' must be a str; received int"),
    ({"name": "synthetic", "split": -1}, ValueError, "'split' must be a non-negative int"),
    ({"name": "synthetic", "seed": 1.5}, ValueError, "'seed' must be a non-negative int; "
                                                     "received 1.5"),
])
def test_argument_errors(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        load_dataset(**kwargs)
