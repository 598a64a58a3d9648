"""Checks of a loaded graph that scan its values (once per graph, never per step)."""
from __future__ import annotations

import numbers
import warnings

import torch
from torch_geometric.data import Data

from vqgnn.errors import ConfigError, check_finite_rows, outside_stacklevel


def check_finite_features(data: Data, owner: str) -> None:
    """:class:`~vqgnn.errors.ConfigError` when ``data.x`` holds NaN or infinities (one
    scan per graph)."""
    check_finite_rows(data.x, f"'{owner}': the features", unit="node",
                      advice="; clean them before training")


METRICS = ("accuracy", "rocauc")


def check_training_graph(data: Data, owner: str) -> None:
    """:class:`~vqgnn.errors.ConfigError` for what a graph built by hand most often gets
    wrong, before any set-up: ``metric``, the three masks (bool, one entry per node), the
    labels of the masked nodes (integer class ids of shape (N,), none negative; or (N, T)
    float task labels for ``rocauc``). A warning when the splits overlap. One scan per
    graph; :func:`~vqgnn.datasets.load_dataset`'s graphs pass."""
    n = data.num_nodes
    metric = getattr(data, "metric", None)
    if metric not in METRICS:
        raise ConfigError(f"'{owner}': the graph's 'metric' must be one of {METRICS}, "
                          f"received {metric!r}: set data.metric = 'accuracy' (or 'rocauc', "
                          f"binary or multi-label); load_dataset sets it")
    masks = {}
    for split in ("train", "val", "test"):
        mask = getattr(data, f"{split}_mask", None)
        name = f"{split}_mask"
        if not isinstance(mask, torch.Tensor):
            raise ConfigError(f"'{owner}': the graph needs '{name}', a bool tensor of shape "
                              f"({n},); received {type(mask).__name__}")
        if mask.dtype != torch.bool or mask.shape != (n,):
            hint = ""
            if mask.dim() == 1 and not mask.is_floating_point() and mask.dtype != torch.bool:
                if mask.shape == (n,) and bool(((mask == 0) | (mask == 1)).all()):
                    hint = " (0/1 integers: pass mask.bool())"
                else:
                    hint = (" (node ids: pass a mask, torch_geometric.utils.index_to_mask"
                            f"(ids, size={n}))")
            raise ConfigError(f"'{owner}': '{name}' must be a bool tensor of shape ({n},), "
                              f"received dtype {mask.dtype} and shape {tuple(mask.shape)}"
                              f"{hint}")
        masks[split] = mask
    y = data.y
    labeled = masks["train"] | masks["val"] | masks["test"]
    if not isinstance(y, torch.Tensor) or y.dtype == torch.bool:
        got = f"dtype {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(f"'{owner}': 'y' must be an integer tensor of class ids, shape "
                          f"({n},), or (N, T) task labels for metric 'rocauc'; received {got}")
    if y.dim() == 2 and y.size(0) == n:
        if metric != "rocauc":  # one column per task: only ROC-AUC scores them
            hint = " (one column of class ids: pass y.view(-1))" if y.size(1) == 1 else ""
            raise ConfigError(f"'{owner}': 'y' of shape {tuple(y.shape)} reads as multi-label "
                              f"(one column per task), which needs metric 'rocauc'; the "
                              f"graph's metric is {metric!r}{hint}")
    elif y.shape != (n,) or y.is_floating_point():
        raise ConfigError(f"'{owner}': 'y' must hold one integer class id per node, shape "
                          f"({n},) (or (N, T) task labels with metric 'rocauc'), received "
                          f"dtype {y.dtype} and shape {tuple(y.shape)}")
    else:
        negative = int((y[labeled] < 0).sum())
        if negative:
            raise ConfigError(f"'{owner}': {negative} node(s) of the train, val or test mask "
                              f"have a negative label (unlabeled nodes must be in no mask)")
    classes = getattr(data, "num_classes", None)
    if isinstance(classes, torch.Tensor) and classes.numel() == 1 and not (
            classes.is_floating_point() or classes.dtype == torch.bool):
        classes = int(classes)  # e.g. data.y.max() + 1
    if not isinstance(classes, numbers.Integral) or isinstance(classes, bool) or classes < 1:
        raise ConfigError(f"'{owner}': the graph's 'num_classes' must be an int >= 1 (classes, "
                          f"or tasks of multi-label data), received {classes!r}: set "
                          f"data.num_classes; load_dataset sets it")
    if y.dim() == 1 and bool(labeled.any()):
        top = int(y[labeled].max())
        if top >= classes:
            raise ConfigError(f"'{owner}': the masked nodes' labels reach {top}, but "
                              f"num_classes is {classes}")
    pairs = [(a, b) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
             if bool((masks[a] & masks[b]).any())]
    if pairs:
        shared = ", ".join(f"{a}/{b}: {int((masks[a] & masks[b]).sum())}" for a, b in pairs)
        warnings.warn(f"'{owner}': the splits share nodes ({shared}); the validation and test "
                      f"figures then also score training nodes", stacklevel=outside_stacklevel())


def check_output_width(model: torch.nn.Module, data: Data, owner: str) -> None:
    """:class:`~vqgnn.errors.ConfigError` when a model that says its output width
    (``out_channels``, as PyG's and vqgnn's models do) cannot be trained on ``data``: one
    column per class (the loss is a cross-entropy over them; binary ``rocauc`` too), one
    per task for multi-label data."""
    width = getattr(model, "out_channels", None)
    if not isinstance(width, int):
        return
    wanted = int(data.y.size(1)) if data.y.dim() == 2 else int(data.num_classes)
    if width != wanted:
        per = "task" if data.y.dim() == 2 else "class"
        raise ConfigError(f"'{owner}': the model has {width} output channels; this graph "
                          f"needs {wanted}, one per {per} ({data.metric}, "
                          f"num_classes={data.num_classes})")
