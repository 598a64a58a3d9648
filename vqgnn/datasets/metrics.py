"""Scores of model outputs with each dataset's metric."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from vqgnn.errors import ConfigError, ConfigTypeError


def score(data: Data, out: Tensor, mask: Tensor) -> float:
    r"""Scores logits on the selected nodes with ``data.metric``.

    * ``"accuracy"``: fraction of nodes whose ``out.argmax(-1)`` equals ``y``;
    * ``"rocauc"``, single-label binary: ROC-AUC of :math:`\mathrm{softmax}(out)_{:,1}`
      (or of ``out[:, 0]`` when ``C == 1``);
    * ``"rocauc"``, multi-label ``y`` of shape ``(N, T)``: mean over tasks of the per-task
      ROC-AUC (tasks with a single class among the selected nodes are skipped, as in OGB).

    OGB datasets (``data.ogb_name`` set) are scored by the official
    :class:`ogb.nodeproppred.Evaluator`.

    Args:
        data: A dataset from :func:`load_dataset`.
        out: Logits for all nodes, shape ``(N, C)`` (``(N, T)`` for multi-label data).
        mask: Boolean ``(N,)`` mask (or int64 index) of the nodes to score.

    Returns:
        The metric, a float in ``[0, 1]``.

    Example:
        >>> acc = score(data, model(data.x, data.edge_index), data.test_mask)
    """
    y: Tensor = data.y
    metric = getattr(data, "metric", None)
    if metric not in ("accuracy", "rocauc"):
        raise ConfigError(
            f"score: 'data.metric' must be 'accuracy' or 'rocauc'; received {metric!r}"
        )
    num_nodes = y.size(0)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.size(0) != num_nodes:
        received = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"score: 'out' must be a tensor of shape (N, C) with N={num_nodes} "
            f"(logits for all nodes); received {received}"
        )
    multilabel = y.dim() == 2
    num_classes = int(data.num_classes)
    if multilabel and out.size(1) != y.size(1):
        raise ConfigError(
            f"score: 'out' must have {y.size(1)} columns (one per task); "
            f"received shape {tuple(out.shape)}"
        )
    if not multilabel and metric == "accuracy" and out.size(1) != num_classes:
        raise ConfigError(
            f"score: 'out' must have {num_classes} columns (one per class); "
            f"received shape {tuple(out.shape)}"
        )
    if not multilabel and metric == "rocauc" and out.size(1) not in (1, 2):
        raise ConfigError(
            "score: binary ROC-AUC needs 'out' with 1 (logit) or 2 (class logits) columns; "
            f"received shape {tuple(out.shape)}"
        )
    index = _mask_to_index(mask, num_nodes)
    out = out.detach()[index].cpu().float()
    y = y[index].cpu()
    if not multilabel and bool((y < 0).any()):
        raise ConfigError(
            f"score: 'mask' selects {int((y < 0).sum())} unlabeled node(s) (label < 0)"
        )

    ogb_name = getattr(data, "ogb_name", None)
    if ogb_name is not None:
        from ogb.nodeproppred import Evaluator

        evaluator = Evaluator(ogb_name)
        if metric == "accuracy":
            y_pred = out.argmax(-1, keepdim=True)
            return float(evaluator.eval({"y_true": y.view(-1, 1), "y_pred": y_pred})["acc"])
        y_true = y if multilabel else y.view(-1, 1)
        y_pred = out if multilabel else _positive_score(out).view(-1, 1)
        return float(evaluator.eval({"y_true": y_true, "y_pred": y_pred})["rocauc"])

    if metric == "accuracy":
        return float((out.argmax(-1) == y).float().mean())
    from sklearn.metrics import roc_auc_score

    if not multilabel:
        if torch.unique(y).numel() != 2:
            raise ConfigError(
                "score: ROC-AUC needs both classes among the selected nodes; received labels "
                f"{torch.unique(y).tolist()}"
            )
        return float(roc_auc_score(y.numpy(), _positive_score(out).numpy()))
    scores = []
    for task in range(y.size(1)):
        labels = y[:, task]
        known = ~torch.isnan(labels)
        if (labels[known] == 1).any() and (labels[known] == 0).any():
            scores.append(roc_auc_score(labels[known].numpy(), out[known, task].numpy()))
    if not scores:
        raise ConfigError("score: no task has both classes among the selected nodes")
    return float(np.mean(scores))


def _positive_score(out: Tensor) -> Tensor:
    return out[:, 0] if out.size(1) == 1 else out.softmax(dim=-1)[:, 1]


def _mask_to_index(mask: Tensor, num_nodes: int) -> Tensor:
    if not isinstance(mask, Tensor):
        raise ConfigTypeError(f"score: 'mask' must be a tensor; received {type(mask).__name__}")
    if mask.dtype == torch.bool:
        if tuple(mask.shape) != (num_nodes,):
            raise ConfigError(
                f"score: boolean 'mask' must have shape ({num_nodes},); "
                f"received {tuple(mask.shape)}"
            )
        index = mask.nonzero().view(-1)
    elif not mask.is_floating_point() and mask.dim() == 1:
        index = mask.to(torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_nodes):
            raise ConfigError(
                f"score: index 'mask' must lie in [0, {num_nodes}); received values in "
                f"[{int(index.min())}, {int(index.max())}]"
            )
    else:
        raise ConfigError(
            f"score: 'mask' must be a boolean (N,) mask or a 1-D integer index; received "
            f"{mask.dtype} of shape {tuple(mask.shape)}"
        )
    if index.numel() == 0:
        raise ConfigError("score: 'mask' selects no node")
    return index.cpu()
