"""Stratified random splits and given-split selection."""
from __future__ import annotations

import pytest
import torch

from vqgnn.datasets import Split, stratified_split
from vqgnn.datasets.splits import select_split


def test_per_class_sizes_disjoint_and_complete() -> None:
    y = torch.tensor([0] * 10 + [1] * 20 + [2] * 5 + [-1] * 3)
    split = stratified_split(y, train=0.6, val=0.2, seed=0)
    assert isinstance(split, Split)
    expected = {0: (6, 2, 2), 1: (12, 4, 4), 2: (3, 1, 1)}
    for c, sizes in expected.items():
        assert tuple(int((m & (y == c)).sum()) for m in split) == sizes
    train, val, test = split
    assert not bool((train & val).any() | (train & test).any() | (val & test).any())
    assert torch.equal(train | val | test, y >= 0)  # label -1: in no mask


def test_seeded_and_shuffled_within_class() -> None:
    y = torch.arange(1000) % 3
    a, b, c = (stratified_split(y, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train_mask, b.train_mask) and torch.equal(a.test_mask, b.test_mask)
    assert not torch.equal(a.train_mask, c.train_mask)
    # Not simply the first nodes of each class:
    assert not bool(a.train_mask[:600].all())


def test_labeled_mask_restricts_the_split() -> None:
    y = torch.arange(100) % 2
    labeled = torch.arange(100) < 50
    split = stratified_split(y, train=0.5, val=0.25, seed=0, labeled=labeled)
    assert torch.equal(split.train_mask | split.val_mask | split.test_mask, labeled)
    # 25 labeled nodes per class: round(12.5) = 12 (half to even) train, round(6.25) = 6 val.
    assert [int(m.sum()) for m in split] == [24, 12, 14]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="'y' must be a 1-D integer tensor; received "
                                         "torch.float32"):
        stratified_split(torch.zeros(4))
    with pytest.raises(ValueError, match="train \\+ val <= 1; received train=0.8, val=0.3"):
        stratified_split(torch.zeros(4, dtype=torch.long), train=0.8, val=0.3)
    with pytest.raises(ValueError, match="'labeled' must be a boolean tensor of shape \\(4,\\)"):
        stratified_split(torch.zeros(4, dtype=torch.long), labeled=torch.ones(3, dtype=torch.bool))


def test_select_split() -> None:
    masks = torch.zeros(5, 3, dtype=torch.bool)
    masks[1, 2] = True
    assert select_split(masks, 2, "g", "train_mask").tolist() == [0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match=r"'g' has 3 given split\(s\); expected 'split' in "
                                         r"0\.\.2, received split=3"):
        select_split(masks, 3, "g", "train_mask")
