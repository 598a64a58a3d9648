"""Open Graph Benchmark node property prediction datasets through ``ogb`` itself.

``ogb`` 1.3.6 needs two adjustments, both confined to :func:`ogb_compat`:

* it calls ``torch.load(path)`` without ``weights_only``; since torch 2.6 that means
  ``weights_only=True``, which rejects the PyG objects that ogb itself pickled into
  ``processed/geometric_data_processed.pt``;
* it asks questions on stdin with ``input()`` (whether to re-download a folder without its
  ``RELEASE_v*.txt`` file, whether to proceed with a download larger than 1 GB); without a
  terminal ``input()`` raises ``EOFError``.
"""
from __future__ import annotations

import os.path as osp
import warnings
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Dict, Iterator, List

import torch
from torch_geometric.data import Data
from torch_geometric.utils import index_to_mask, scatter

from vqgnn.datasets.graph import coalesce_undirected, make_data
from vqgnn.datasets.guard import construct
from vqgnn.datasets.splits import check_single_split

OGB_DATASETS = ("ogbn-arxiv", "ogbn-products", "ogbn-proteins", "ogbn-papers100M")


class OGBPromptWarning(UserWarning):
    """Warns that a question ``ogb`` asked on stdin was answered without reading stdin."""


class _TrustedLoadTorch:
    """Stands in for the ``torch`` module inside ogb: ``load`` defaults to pickle loading.

    Every other attribute is the real ``torch`` one.
    """

    def __init__(self, module: ModuleType) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("weights_only", False)
        return self._module.load(*args, **kwargs)


def _answer(prompt: object = "") -> str:
    """Answers an ``ogb`` prompt deterministically, without reading stdin."""
    question = " ".join(str(prompt).split())
    if "proceed" in question.lower():
        answer, meaning = "y", "proceed with the download"
    else:
        answer, meaning = "n", "keep the existing files, do not re-download"
    warnings.warn(
        f"ogb asked {question!r}; answered {answer!r} ({meaning}) without reading stdin",
        OGBPromptWarning,
        stacklevel=2,
    )
    return answer


_MISSING = object()


@contextmanager
def ogb_compat() -> Iterator[None]:
    """Runs ``ogb``'s node property prediction dataset code under torch >= 2.6, unattended.

    Inside the context, and only inside ``ogb``'s own modules:

    * ``torch.load`` defaults to ``weights_only=False`` in ``ogb.nodeproppred.dataset_pyg``
      (the module-level name ``torch`` there is replaced by a proxy). This unpickles the
      files that ogb wrote under the dataset root (``processed/*.pt``,
      ``split/*/split_dict.pt``), which executes pickle: only use a root you trust. The
      global ``torch.load`` is never modified.
    * ``input`` in ``ogb.nodeproppred.dataset_pyg`` and ``ogb.utils.url`` answers ``"n"``
      to "update the dataset now?" (existing files are kept) and ``"y"`` to "will you
      proceed?" (large downloads go ahead where there is a network), each with an
      :class:`OGBPromptWarning`. stdin is never read.

    Everything is restored on exit, also when an exception is raised.

    Example:
        >>> with ogb_compat():
        ...     dataset = PygNodePropPredDataset("ogbn-arxiv", root)
    """
    import ogb.nodeproppred.dataset_pyg as dataset_pyg
    import ogb.utils.url as url

    patches = [
        (dataset_pyg, "torch", _TrustedLoadTorch(torch)),
        (dataset_pyg, "input", _answer),
        (url, "input", _answer),
    ]
    saved = [(module, attr, module.__dict__.get(attr, _MISSING)) for module, attr, _ in patches]
    try:
        for module, attr, value in patches:
            setattr(module, attr, value)
        yield
    finally:
        for module, attr, previous in reversed(saved):
            if previous is _MISSING:
                delattr(module, attr)
            else:
                setattr(module, attr, previous)


def ogb_dir(name: str, root: str) -> str:
    """Returns the folder ``ogb`` uses for ``name`` under ``root``.

    Args:
        name: OGB name, e.g. ``"ogbn-arxiv"``.
        root: The root passed to ``PygNodePropPredDataset``.

    Returns:
        ``root/ogbn_arxiv`` (or ``root/ogbn_arxiv_pyg`` when that older folder exists).
    """
    folder = osp.join(root, name.replace("-", "_"))
    return folder + "_pyg" if osp.exists(folder + "_pyg") else folder


def expected_files(meta: Dict[str, str]) -> List[str]:
    """Lists the files an OGB node dataset needs, relative to its folder.

    Args:
        meta: The dataset's column of ``ogb/nodeproppred/master.csv``.

    Returns:
        Paths such as ``raw/edge.csv.gz`` and ``split/time/train.csv.gz``.
    """
    if meta["binary"] == "True":
        raw = ["data.npz", "node-label.npz"]
    else:
        raw = ["edge.csv.gz", "node-label.csv.gz", "num-node-list.csv.gz", "num-edge-list.csv.gz"]
        if meta["has_node_attr"] == "True":
            raw.append("node-feat.csv.gz")
        if meta["has_edge_attr"] == "True":
            raw.append("edge-feat.csv.gz")
        if meta["additional node files"] != "None":
            raw += [f"{f}.csv.gz" for f in meta["additional node files"].split(",")]
    split = [f"split/{meta['split']}/{part}.csv.gz" for part in ("train", "valid", "test")]
    return [f"raw/{f}" for f in raw] + split


def _describe(dataset: Any) -> str:
    return (
        f"the OGB files {expected_files(dataset.meta_info)} in '{dataset.root}' "
        f"(or processed/geometric_data_processed.pt with the split files there)"
    )


def master_info(name: str) -> Dict[str, str]:
    """Returns the column of ``ogb/nodeproppred/master.csv`` describing ``name``."""
    import ogb.nodeproppred
    import pandas as pd

    path = osp.join(osp.dirname(ogb.nodeproppred.__file__), "master.csv")
    master = pd.read_csv(path, index_col=0, keep_default_na=False)
    return {str(key): str(value) for key, value in master[name].items()}


def _check_partial(name: str, folder: str) -> None:
    """Rejects a raw folder with some, but not all, of the files (ogb would re-download)."""
    if osp.exists(osp.join(folder, "processed", "geometric_data_processed.pt")):
        return
    files = [f for f in expected_files(master_info(name)) if f.startswith("raw/")]
    # ogb renames an older release's raw/species.csv.gz to raw/node_species.csv.gz itself.
    aliases = {"raw/node_species.csv.gz": "raw/species.csv.gz"}
    present = [
        f for f in files
        if osp.exists(osp.join(folder, f)) or osp.exists(osp.join(folder, aliases.get(f, f)))
    ]
    if present and len(present) < len(files):
        missing = [f for f in files if f not in present]
        raise FileNotFoundError(
            f"load_dataset: {name!r} raw folder '{osp.join(folder, 'raw')}' is incomplete: "
            f"missing {missing} (expected {files} relative to '{folder}')"
        )


def load_ogb(name: str, root: str, split: int = 0) -> Data:
    """Loads an OGB node property prediction dataset with its official split.

    The folder ``root/<name with _>`` may hold the raw files in OGB's format or ogb's
    processed file; without either, ogb downloads them (the download prompt is answered
    "y", see :func:`ogb_compat`).

    ``ogbn-proteins`` has no node features: ``x`` is the mean of the features of the
    incoming edges (``edge_attr`` of shape ``(E, 8)``), as in OGB's own examples.

    Args:
        name: Canonical OGB name, one of :data:`OGB_DATASETS`.
        root: Folder that holds (or will hold) ``ogbn_*`` dataset folders.
        split: Must be ``0`` (OGB has one official split).

    Returns:
        The cleaned :class:`~torch_geometric.data.Data` (see :func:`load_dataset`);
        ``y`` is ``(N,)`` int64, or ``(N, 112)`` float32 for ``ogbn-proteins``; nodes
        without a label (``ogbn-papers100M``) have ``y = -1`` and are in no mask.

    Raises:
        FileNotFoundError: The files are absent and could not be downloaded.
    """
    from ogb.nodeproppred import PygNodePropPredDataset

    check_single_split(split, name, "has a single official OGB split")
    folder = ogb_dir(name, root)
    _check_partial(name, folder)
    with ogb_compat():
        dataset = construct(
            PygNodePropPredDataset, folder, expected=_describe, name=name, root=root
        )
        try:
            index = dataset.get_idx_split()
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"load_dataset: {name!r} has no split files: expected "
                f"{expected_files(dataset.meta_info)[-3:]} in '{dataset.root}' ({exc})"
            ) from exc

    graph = dataset[0]
    num_nodes = int(graph.num_nodes)
    if graph.x is not None:
        x = graph.x
    else:
        x = scatter(
            graph.edge_attr.to(torch.float32), graph.edge_index[1], dim=0,
            dim_size=num_nodes, reduce="mean",
        )  # (N, 8) for ogbn-proteins
    num_tasks = int(dataset.num_tasks)
    y = graph.y
    if num_tasks > 1:
        y = y.to(torch.float32)  # (N, T)
        num_classes = num_tasks
    else:
        y = y.view(-1)
        if y.is_floating_point():  # NaN marks unlabeled nodes (ogbn-papers100M)
            y = torch.where(torch.isnan(y), torch.full_like(y, -1), y)
        y = y.to(torch.long)
        num_classes = int(dataset.num_classes)
    masks = [index_to_mask(index[part].view(-1), num_nodes) for part in ("train", "valid", "test")]
    return make_data(
        x,
        coalesce_undirected(graph.edge_index, num_nodes),
        y,
        *masks,
        name=name,
        metric="rocauc" if dataset.eval_metric == "rocauc" else "accuracy",
        num_classes=num_classes,
        split=split,
        ogb_name=name,
    )
