"""Datasets served by PyTorch Geometric's own dataset classes.

``root`` is the folder passed to the PyG class, e.g. ``.../planetoid`` holding
``Cora/raw/ind.cora.*``. Splits:

* ``"public"`` / ``"given"``: the masks PyG provides (one split, or ``S`` columns from which
  ``split`` picks one);
* ``"random"``: datasets without a standard split (Amazon, Coauthor, the LINKX Facebook100
  graphs except ``penn94``, ``genius``) get a stratified random split of the labeled nodes
  drawn from ``seed`` (60/20/20, or 50/25/25 for LINKX as in its paper); ``split`` must be 0.

Nodes with a negative label (LINKX: unknown gender) are unlabeled and in no mask.
"""
from __future__ import annotations

import os.path as osp
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch_geometric import datasets as pyg_datasets
from torch_geometric.data import Data

from vqgnn.datasets.graph import coalesce_undirected, make_data
from vqgnn.datasets.guard import construct
from vqgnn.datasets.splits import check_single_split, select_split, stratified_split


@dataclass(frozen=True)
class PygSpec:
    """How one PyG dataset is constructed, split and scored.

    Attributes:
        name: Canonical name reported in ``data.name``.
        cls: Name of the class in :mod:`torch_geometric.datasets`.
        family: Subfolder of the default data folder used as ``root``.
        kwargs: Extra arguments of the class (e.g. ``{"name": "Cora"}``).
        splits: ``"public"``, ``"given"`` or ``"random"``.
        metric: ``"accuracy"`` or ``"rocauc"``.
        fractions: Train and validation fractions of random splits.
        aliases: Other accepted names (matched case-insensitively, ``_`` read as ``-``).
    """

    name: str
    cls: str
    family: str
    kwargs: Tuple[Tuple[str, str], ...] = ()
    splits: str = "given"
    metric: str = "accuracy"
    fractions: Tuple[float, float] = (0.6, 0.2)
    aliases: Tuple[str, ...] = ()


def _planetoid(name: str) -> PygSpec:
    return PygSpec(name, "Planetoid", "planetoid", (("name", name),), splits="public")


def _hetero(name: str, metric: str) -> PygSpec:
    return PygSpec(name, "HeterophilousGraphDataset", "heterophilous", (("name", name),),
                   metric=metric)


def _linkx(name: str, metric: str = "accuracy", splits: str = "random") -> PygSpec:
    return PygSpec(name, "LINKXDataset", "linkx", (("name", name),), splits=splits,
                   metric=metric, fractions=(0.5, 0.25))


PYG_DATASETS: Tuple[PygSpec, ...] = (
    _planetoid("Cora"),
    _planetoid("CiteSeer"),
    _planetoid("PubMed"),
    _hetero("Roman-empire", "accuracy"),
    _hetero("Amazon-ratings", "accuracy"),
    _hetero("Minesweeper", "rocauc"),
    _hetero("Tolokers", "rocauc"),
    _hetero("Questions", "rocauc"),
    PygSpec("Actor", "Actor", "actor", aliases=("film",)),
    _linkx("penn94", splits="given"),  # the 5 LINKX splits shipped with PyG
    _linkx("reed98"),
    _linkx("amherst41"),
    _linkx("cornell5"),
    _linkx("johnshopkins55"),
    _linkx("genius", metric="rocauc"),  # class-imbalanced: ROC-AUC, as in the LINKX paper
    PygSpec("Amazon-Computers", "Amazon", "amazon", (("name", "Computers"),), splits="random",
            aliases=("computers",)),
    PygSpec("Amazon-Photo", "Amazon", "amazon", (("name", "Photo"),), splits="random",
            aliases=("photo",)),
    PygSpec("Coauthor-CS", "Coauthor", "coauthor", (("name", "CS"),), splits="random",
            aliases=("cs",)),
    PygSpec("Coauthor-Physics", "Coauthor", "coauthor", (("name", "Physics"),),
            splits="random", aliases=("physics",)),
    PygSpec("Reddit", "Reddit", "reddit", splits="public"),
    PygSpec("Flickr", "Flickr", "flickr", splits="public"),
)


def normalize_name(name: str) -> str:
    """Lower-cases a dataset name and reads ``_`` as ``-`` (``roman_empire`` = ``Roman-empire``)."""
    return name.strip().lower().replace("_", "-")


def pyg_lookup() -> Dict[str, PygSpec]:
    """Maps every accepted (normalised) name and alias to its :class:`PygSpec`."""
    table: Dict[str, PygSpec] = {}
    for spec in PYG_DATASETS:
        for key in (spec.name, *spec.aliases):
            table[normalize_name(key)] = spec
    return table


def load_pyg(spec: PygSpec, root: str, split: int = 0, seed: int = 0) -> Data:
    """Loads a PyG dataset, cleans its edges and selects or draws the split.

    Args:
        spec: The dataset's :class:`PygSpec`.
        root: Folder passed to the PyG class (``spec.family`` under the default data
            folder when the caller had none).
        split: Index of a given split (``0`` for datasets with one or random splits).
        seed: Seed of the random split, for ``spec.splits == "random"``.

    Returns:
        The cleaned :class:`~torch_geometric.data.Data` (see :func:`load_dataset`).

    Raises:
        FileNotFoundError: The raw files are absent under ``root`` and the download failed.
        ValueError: ``split`` is out of range for this dataset.
    """
    if spec.splits == "public":
        check_single_split(split, spec.name, "has a single public split")
    elif spec.splits == "random":
        check_single_split(
            split, spec.name,
            "has no given split: a stratified random split is drawn from 'seed' (vary seed)",
        )
    cls: Any = getattr(pyg_datasets, spec.cls)
    kwargs: Dict[str, Any] = {"root": root, **dict(spec.kwargs)}
    dataset = construct(cls, osp.abspath(root), **kwargs)
    graph = dataset[0]
    num_nodes = int(graph.num_nodes)
    y = graph.y.view(-1).to(torch.long)
    labeled = y >= 0
    if spec.splits == "random":
        train, val = spec.fractions
        masks = tuple(stratified_split(y, train=train, val=val, seed=seed, labeled=labeled))
    else:
        masks = tuple(
            select_split(getattr(graph, field), split, spec.name, field) & labeled
            for field in ("train_mask", "val_mask", "test_mask")
        )
    return make_data(
        graph.x,
        coalesce_undirected(graph.edge_index, num_nodes),
        y,
        *masks,
        name=spec.name,
        metric=spec.metric,
        num_classes=int(y.max()) + 1,
        split=split,
    )


def spec_for(name: str) -> Optional[PygSpec]:
    """Returns the :class:`PygSpec` of ``name`` (any accepted spelling), or ``None``."""
    return pyg_lookup().get(normalize_name(name))
