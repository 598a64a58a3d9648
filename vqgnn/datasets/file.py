"""A user's own graph, saved with ``torch.save`` as a PyG ``Data`` (or a dict of tensors)."""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Dict, Union

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

from vqgnn.datasets.graph import METRICS, coalesce_undirected, make_data
from vqgnn.datasets.splits import select_split, stratified_split
from vqgnn.errors import ConfigError, ConfigTypeError, outside_stacklevel

MASKS = ("train_mask", "val_mask", "test_mask")


class UnsafeLoadWarning(UserWarning):
    """Warns that a file could only be read with full pickle loading."""


def read_graph_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Reads the fields of a ``Data`` (or dict) saved with :func:`torch.save`.

    The file is first read with ``torch.load(weights_only=True)``, allowing PyG's ``Data``
    and its storage classes. If that fails, it is read again with ``weights_only=False``,
    which **executes pickle**: a file can run arbitrary code when loaded this way, so only
    load your own files. An :class:`UnsafeLoadWarning` says when this happens.

    Args:
        path: The ``.pt`` file.

    Returns:
        The stored attributes by name.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        TypeError: The file holds neither a ``Data`` nor a dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"load_dataset: no file at '{os.fspath(path)}' (a name ending in '.pt' is read "
            "as a path to a torch_geometric.data.Data saved with torch.save)"
        )
    # torch's safe_globals context removes its list on exit, even entries that were
    # allow-listed before (PyG registers Data at import): pass only the missing ones.
    registered = torch.serialization.get_safe_globals()
    safe = [c for c in (Data, DataEdgeAttr, DataTensorAttr, GlobalStorage) if c not in registered]
    if os.path.getsize(path) == 0:
        raise ConfigError(f"load_dataset: '{os.fspath(path)}' is empty (0 bytes), not a "
                          f"torch.save file")
    try:
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # garbage, not a Data with custom classes
            raise ConfigError(f"load_dataset: '{os.fspath(path)}' is not a readable "
                              f"torch.save file ({str(exc).strip().splitlines()[0]})") from None
        warnings.warn(
            f"'{os.fspath(path)}' could not be read with weights_only=True ({exc}); reading "
            "it with weights_only=False, which executes pickle code from the file",
            UnsafeLoadWarning,
            stacklevel=3,
        )
        obj = _unsafe_load(path)
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as exc:
        raise ConfigError(f"load_dataset: '{os.fspath(path)}' is not a readable torch.save "
                          f"file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Data):
        return {key: obj[key] for key in obj.keys()}
    if isinstance(obj, dict):
        return dict(obj)
    raise ConfigTypeError(
        f"load_dataset: '{os.fspath(path)}' must hold a torch_geometric.data.Data or a dict; "
        f"received {type(obj).__name__}"
    )


def _unsafe_load(path: Union[str, os.PathLike]) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, IndexError,
            KeyError) as exc:
        raise ConfigError(f"load_dataset: '{os.fspath(path)}' is not a readable torch.save "
                          f"file ({type(exc).__name__}: {exc})") from None


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{type(value).__name__}"


def _field(fields: Dict[str, Any], key: str, expected: str, source: str) -> Tensor:
    if fields.get(key) is None:
        raise ConfigError(f"load_dataset: '{source}' has no field {key!r}; expected {expected}")
    value = fields[key]
    if not isinstance(value, Tensor):
        raise ConfigError(
            f"load_dataset: field {key!r} of '{source}' must be {expected}; "
            f"received {_describe(value)}"
        )
    return value


def load_file(path: Union[str, os.PathLike], split: int = 0, seed: int = 0) -> Data:
    """Loads and validates a user's graph file.

    Required fields: ``x`` (2-D floating point, ``(N, F)``), ``edge_index`` (integer,
    ``(2, E)``, entries in ``[0, N)``), ``y`` (integer, ``(N,)`` or ``(N, 1)``; negative
    labels mark unlabeled nodes). Optional: ``train_mask``, ``val_mask``, ``test_mask``
    (all three or none; boolean ``(N,)`` or ``(N, S)`` with ``split`` picking a column;
    disjoint; no unlabeled node), and ``metric`` (``"accuracy"``, the default, or
    ``"rocauc"`` for binary labels). Without masks, a stratified random 60/20/20 split of
    the labeled nodes is drawn from ``seed``. Edges are made undirected and coalesced, and
    self-loops removed. See :func:`read_graph_file` about pickle.

    Args:
        path: The ``.pt`` file.
        split: Column of ``(N, S)`` masks; ``0`` otherwise.
        seed: Seed of the random split when the file has no masks.

    Returns:
        The cleaned :class:`~torch_geometric.data.Data` (see :func:`load_dataset`), with
        ``name`` the path as given.

    Raises:
        ValueError: A field is missing or has the wrong type, shape or values.
    """
    source = os.fspath(path)
    fields = read_graph_file(path)
    x = _field(fields, "x", "a 2-D floating-point tensor of shape (N, F)", source)
    if x.dim() != 2 or not x.is_floating_point():
        raise ConfigError(
            f"load_dataset: field 'x' of '{source}' must be a 2-D floating-point tensor of "
            f"shape (N, F); received {_describe(x)}"
        )
    num_nodes = x.size(0)
    edge_index = _field(fields, "edge_index", "an integer tensor of shape (2, E)", source)
    if (edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.is_floating_point()
            or edge_index.dtype == torch.bool or edge_index.is_complex()):
        raise ConfigError(
            f"load_dataset: field 'edge_index' of '{source}' must be an integer tensor of "
            f"shape (2, E); received {_describe(edge_index)}"
        )
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ConfigError(
            f"load_dataset: field 'edge_index' of '{source}' must have entries in "
            f"[0, {num_nodes}) (N = x.size(0)); received entries in "
            f"[{int(edge_index.min())}, {int(edge_index.max())}]"
        )
    y = _field(fields, "y", f"an integer tensor of shape ({num_nodes},)", source)
    if y.dim() == 2 and y.size(1) == 1:
        y = y.view(-1)
    if y.dim() != 1 or y.size(0) != num_nodes or y.is_floating_point() or y.dtype == torch.bool:
        raise ConfigError(
            f"load_dataset: field 'y' of '{source}' must be an integer tensor of shape "
            f"({num_nodes},) (N = x.size(0)); received {_describe(y)}"
        )
    y = y.to(torch.long)
    labeled = y >= 0
    if not bool(labeled.any()):
        raise ConfigError(f"load_dataset: field 'y' of '{source}' has no label >= 0")
    num_classes = int(y.max()) + 1
    empty = (torch.bincount(y[labeled], minlength=num_classes) == 0).nonzero().view(-1)
    if empty.numel():
        shown = ", ".join(str(int(c)) for c in empty[:10]) + (", ..." if empty.numel() > 10
                                                              else "")
        warnings.warn(f"load_dataset: field 'y' of '{source}' has labels up to "
                      f"{num_classes - 1}, so the model predicts {num_classes} classes, but "
                      f"{empty.numel()} of them have no node ({shown}); relabel the classes "
                      f"0..C-1 if that is not intended", stacklevel=outside_stacklevel())

    metric = fields.get("metric", "accuracy")
    if metric not in METRICS:
        raise ConfigError(
            f"load_dataset: field 'metric' of '{source}' must be one of {METRICS}; "
            f"received {metric!r}"
        )
    if metric == "rocauc" and num_classes > 2:
        raise ConfigError(
            f"load_dataset: field 'metric' of '{source}' is 'rocauc', which needs binary "
            f"labels; received {num_classes} classes"
        )

    present = [key for key in MASKS if fields.get(key) is not None]
    if not present:
        if split != 0:
            raise ConfigError(
                f"load_dataset: '{source}' has no masks: a stratified random split is drawn "
                f"from 'seed' (vary seed); expected split=0, received split={split}"
            )
        masks = tuple(stratified_split(y, 0.6, 0.2, seed=seed, labeled=labeled))
    else:
        masks = _given_masks(fields, present, num_nodes, labeled, split, source)
    return make_data(
        x,
        coalesce_undirected(edge_index, num_nodes),
        y,
        *masks,
        name=source,
        metric=metric,
        num_classes=num_classes,
        split=split,
    )


def _given_masks(
    fields: Dict[str, Any],
    present: list[str],
    num_nodes: int,
    labeled: Tensor,
    split: int,
    source: str,
) -> tuple[Tensor, ...]:
    missing = [key for key in MASKS if key not in present]
    if missing:
        raise ConfigError(
            f"load_dataset: '{source}' has {present} but no {missing}; expected all of "
            f"{list(MASKS)} or none (then a stratified random split is drawn)"
        )
    shape = None
    selected = []
    for key in MASKS:
        mask = fields[key]
        if (not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() not in (1, 2)
                or mask.size(0) != num_nodes):
            raise ConfigError(
                f"load_dataset: field {key!r} of '{source}' must be a boolean tensor of shape "
                f"({num_nodes},) or ({num_nodes}, S); received {_describe(mask)}"
            )
        if shape is not None and mask.shape != shape:
            raise ConfigError(
                f"load_dataset: field {key!r} of '{source}' must have the shape of "
                f"'train_mask' {tuple(shape)}; received {tuple(mask.shape)}"
            )
        shape = mask.shape
        mask = select_split(mask, split, source, key)
        if bool((mask & ~labeled).any()):
            raise ConfigError(
                f"load_dataset: field {key!r} of '{source}' selects "
                f"{int((mask & ~labeled).sum())} unlabeled node(s) (y < 0); expected none"
            )
        selected.append(mask)
    train, val, test = selected
    overlap = (train & val) | (train & test) | (val & test)
    if bool(overlap.any()):
        raise ConfigError(
            f"load_dataset: the masks of '{source}' must be disjoint; "
            f"{int(overlap.sum())} node(s) are in more than one"
        )
    return tuple(selected)
