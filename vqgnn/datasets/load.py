"""``load_dataset``: one entry point for OGB, PyG, user files and synthetic graphs."""
from __future__ import annotations

import os
from dataclasses import replace
from typing import List, Union

from torch_geometric.data import Data

from vqgnn.datasets.checks import check_finite_features
from vqgnn.datasets.file import load_file
from vqgnn.datasets.guard import default_root
from vqgnn.datasets.ogb import OGB_DATASETS, load_ogb
from vqgnn.datasets.pyg import PYG_DATASETS, load_pyg, normalize_name, spec_for
from vqgnn.datasets.splits import check_single_split
from vqgnn.datasets.synthetic import PREFIX, parse_synthetic, synthetic_graph
from vqgnn.errors import ConfigError, ConfigTypeError


def available_datasets() -> List[str]:
    """Returns the canonical names :func:`load_dataset` serves.

    Besides these, ``load_dataset`` accepts ``"synthetic:key=value,..."`` (see
    :func:`parse_synthetic`) and paths ending in ``.pt``.

    Returns:
        OGB names, then PyG names, then ``"synthetic"``.
    """
    return [*OGB_DATASETS, *(spec.name for spec in PYG_DATASETS), PREFIX]


def load_dataset(
    name: str,
    root: Union[str, os.PathLike, None] = None,
    split: int = 0,
    seed: int = 0,
) -> Data:
    """Loads a node classification dataset in one cleaned format.

    Names are matched case-insensitively, with ``_`` read as ``-``:

    * OGB: ``ogbn-arxiv``, ``ogbn-products``, ``ogbn-proteins``, ``ogbn-papers100M``, read by
      ``ogb`` from ``root/ogbn_*`` (see :func:`vqgnn.datasets.ogb.load_ogb`);
    * PyG: ``Cora``, ``CiteSeer``, ``PubMed``, ``Roman-empire``, ``Amazon-ratings``,
      ``Minesweeper``, ``Tolokers``, ``Questions``, ``Actor`` (``film``), the LINKX graphs
      ``penn94``, ``reed98``, ``amherst41``, ``cornell5``, ``johnshopkins55``, ``genius``,
      ``Amazon-Computers`` (``computers``), ``Amazon-Photo`` (``photo``), ``Coauthor-CS``
      (``cs``), ``Coauthor-Physics`` (``physics``), ``Reddit``, ``Flickr``, with ``root``
      the folder passed to the PyG class (see :mod:`vqgnn.datasets.pyg` for the splits);
    * ``synthetic`` or ``synthetic:key=value,...``: a generated graph, no files (its seed
      defaults to ``seed``);
    * a path ending in ``.pt``: the user's own ``Data`` (see
      :func:`vqgnn.datasets.file.load_file`).

    Args:
        name: Dataset name, synthetic spec or file path.
        root: Data folder; defaults to ``$VQGNN_DATA`` (or ``~/.cache/vqgnn/data``) plus a
            per-family subfolder (``ogb``, ``planetoid``, ``heterophilous``, ...).
            Ignored for synthetic graphs and files.
        split: Index of the given split to use (``0`` where there is one split or the
            split is random).
        seed: Seed of random splits (and of the synthetic graph).

    Returns:
        :class:`~torch_geometric.data.Data` with ``x`` float32 ``(N, F)``, ``edge_index``
        int64 ``(2, E)`` (undirected, coalesced, no self-loops), ``y`` int64 ``(N,)`` (``-1``
        = unlabeled) or float32 ``(N, T)`` for multi-label data, boolean ``train_mask``,
        ``val_mask``, ``test_mask`` ``(N,)``, and the attributes ``name`` (canonical),
        ``metric`` (``"accuracy"`` or ``"rocauc"``), ``num_classes`` (tasks for multi-label
        data), ``split``, and, for OGB data only, ``ogb_name`` (read it with
        ``getattr(data, "ogb_name", None)``: PyG does not store ``None`` attributes).

    Raises:
        ConfigError: Unknown name (the message lists the valid ones), bad ``split``, or
            features holding NaN or infinite values.
        FileNotFoundError: The files are not under ``root`` and cannot be downloaded.

    Example:
        >>> data = load_dataset("cora", root="data/planetoid")
        >>> data.name, data.num_classes, int(data.train_mask.sum())
        ('Cora', 7, 140)
    """
    if not isinstance(name, str):
        raise ConfigTypeError(f"load_dataset: 'name' must be a str; received {type(name).__name__}")
    for arg, value in (("split", split), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"load_dataset: {arg!r} must be a non-negative int; received {value!r}"
            )
    data = _load(name, root, split, seed)
    check_finite_features(data, f"load_dataset({name!r})")
    return data


def _load(name: str, root: Union[str, os.PathLike, None], split: int, seed: int) -> Data:
    text = name.strip()
    if text.lower().endswith(".pt"):
        return load_file(os.path.expanduser(text), split=split, seed=seed)
    if text.lower() == PREFIX or text.lower().startswith(PREFIX + ":"):
        config = parse_synthetic(text)
        check_single_split(
            split, config.name, "has one random split, drawn from its seed (vary seed)"
        )
        if config.seed is None:
            config = replace(config, seed=seed)
        return synthetic_graph(config)

    key = normalize_name(text)
    ogb_names = {normalize_name(n): n for n in OGB_DATASETS}
    if key in ogb_names:
        return load_ogb(ogb_names[key], _root(root, "ogb"), split=split)
    spec = spec_for(text)
    if spec is not None:
        return load_pyg(spec, _root(root, spec.family), split=split, seed=seed)
    raise ConfigError(
        f"load_dataset: unknown dataset {name!r}; valid names: "
        f"{', '.join(available_datasets())} (case-insensitive; also "
        "'synthetic:key=value,...' and paths ending in '.pt')"
    )


def _root(root: Union[str, os.PathLike, None], family: str) -> str:
    if root is None:
        return default_root(family)
    return os.path.expanduser(os.fspath(root))
