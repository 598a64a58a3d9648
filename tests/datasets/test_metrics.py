"""score(): hand-built answers, equivalences with sklearn, input validation."""
from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch_geometric.data import Data

from vqgnn.datasets import score


def _data(y: torch.Tensor, metric: str, num_classes: int) -> Data:
    data = Data(y=y)
    data.metric, data.num_classes = metric, num_classes
    return data


def test_accuracy_by_argmax() -> None:
    data = _data(torch.tensor([0, 1, 2, 1]), "accuracy", 3)
    out = torch.tensor([[5.0, 0, 0], [0, 5, 0], [5, 0, 0], [0, 0, 5]])
    assert score(data, out, torch.ones(4, dtype=torch.bool)) == 0.5
    assert score(data, out, torch.tensor([True, True, False, False])) == 1.0
    assert score(data, out, torch.tensor([0, 1])) == 1.0  # an index selects the same nodes


def test_binary_rocauc_from_two_logits_or_one() -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 2
    data = _data(y, "rocauc", 2)
    out = torch.randn(60, 2, generator=generator) + torch.stack([0 * y, y], dim=1)
    mask = torch.ones(60, dtype=torch.bool)
    expected = roc_auc_score(y.numpy(), out.softmax(-1)[:, 1].numpy())
    assert score(data, out, mask) == pytest.approx(expected)
    assert score(data, out, mask) > 0.6  # column 1 carries the signal, column 0 none
    single = out[:, 1:] - out[:, :1]  # one logit: log-odds of class 1, same ranking
    assert score(data, single, mask) == pytest.approx(expected)


def test_multilabel_rocauc_averages_tasks_with_both_classes() -> None:
    y = torch.tensor([[0.0, 1, 1], [1, 0, 1], [0, 1, 1], [1, 0, 1]])  # task 2: one class
    data = _data(y, "rocauc", 3)
    out = torch.tensor([[0.1, 0.9, 0.0], [0.9, 0.2, 0.0], [0.2, 0.1, 0.0], [0.8, 0.8, 0.0]])
    task0, task1 = 1.0, roc_auc_score([1, 0, 1, 0], [0.9, 0.2, 0.1, 0.8])
    assert score(data, out, torch.ones(4, dtype=torch.bool)) == pytest.approx((task0 + task1) / 2)


@pytest.mark.parametrize("out, mask, error, message", [
    (torch.zeros(3, 3), torch.ones(4, dtype=torch.bool), ValueError,
     r"'out' must be a tensor of shape \(N, C\) with N=4.*received \(3, 3\)"),
    (torch.zeros(4, 2), torch.ones(4, dtype=torch.bool), ValueError,
     r"'out' must have 3 columns \(one per class\); received shape \(4, 2\)"),
    (torch.zeros(4, 3), torch.ones(3, dtype=torch.bool), ValueError,
     r"boolean 'mask' must have shape \(4,\); received \(3,\)"),
    (torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool), ValueError, "selects no node"),
    (torch.zeros(4, 3), torch.tensor([0, 4]), ValueError, r"\[0, 4\); received values in \[0, 4\]"),
    (torch.zeros(4, 3), torch.ones(4), ValueError, "boolean \\(N,\\) mask or a 1-D integer"),
    (torch.zeros(4, 3), [0, 1], TypeError, "'mask' must be a tensor; received list"),
])
def test_input_validation(out, mask, error, message) -> None:
    data = _data(torch.tensor([0, 1, 2, 1]), "accuracy", 3)
    with pytest.raises(error, match=message):
        score(data, out, mask)


def test_rocauc_and_metadata_errors() -> None:
    data = _data(torch.tensor([0, 0, 1, -1]), "rocauc", 2)
    with pytest.raises(ValueError, match="1 \\(logit\\) or 2 \\(class logits\\) columns"):
        score(data, torch.zeros(4, 3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects 1 unlabeled node"):
        score(data, torch.zeros(4, 2), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs both classes.*received labels \\[0\\]"):
        score(data, torch.zeros(4, 2), torch.tensor([0, 1]))
    data.metric = "f1"
    with pytest.raises(ValueError, match="'data.metric' must be 'accuracy' or 'rocauc'; "
                                         "received 'f1'"):
        score(data, torch.zeros(4, 2), torch.tensor([0, 2]))
