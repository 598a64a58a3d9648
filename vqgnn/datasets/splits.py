"""Train/validation/test splits: stratified random draws and given-split selection."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from vqgnn.errors import ConfigError


class Split(NamedTuple):
    """Boolean node masks of one split, each of shape ``(N,)``."""

    train_mask: Tensor
    val_mask: Tensor
    test_mask: Tensor


def stratified_split(
    y: Tensor,
    train: float = 0.6,
    val: float = 0.2,
    seed: int = 0,
    labeled: Optional[Tensor] = None,
) -> Split:
    r"""Draws a stratified random split of the labeled nodes.

    Within every class :math:`c` with :math:`n_c` labeled nodes, a random
    :math:`\mathrm{round}(\mathrm{train} \cdot n_c)` go to training,
    :math:`\mathrm{round}(\mathrm{val} \cdot n_c)` to validation and the rest to test.
    Fully vectorised: one random permutation, one stable sort by class.

    Args:
        y: Integer labels of shape ``(N,)``.
        train: Fraction of each class used for training.
        val: Fraction of each class used for validation (``train + val <= 1``).
        seed: Seed of the :class:`torch.Generator` that draws the split.
        labeled: Boolean ``(N,)`` mask of the nodes that may enter a split. Defaults to
            ``y >= 0`` (negative labels mark unlabeled nodes, which enter no mask).

    Returns:
        :class:`Split` of three disjoint boolean ``(N,)`` masks.

    Example:
        >>> y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
        >>> split = stratified_split(y, train=0.6, val=0.2, seed=0)
        >>> [int(m.sum()) for m in split]
        [6, 2, 2]
    """
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        received = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y)
        raise ConfigError(
            f"stratified_split: 'y' must be a 1-D integer tensor; received {received}"
        )
    if not (0.0 <= train <= 1.0 and 0.0 <= val <= 1.0 and train + val <= 1.0 + 1e-9):
        raise ConfigError(
            "stratified_split: expected 0 <= train, 0 <= val and train + val <= 1; "
            f"received train={train}, val={val}"
        )
    num_nodes = y.numel()
    if labeled is None:
        labeled = y >= 0
    elif labeled.dtype != torch.bool or tuple(labeled.shape) != (num_nodes,):
        raise ConfigError(
            f"stratified_split: 'labeled' must be a boolean tensor of shape ({num_nodes},); "
            f"received {labeled.dtype} of shape {tuple(labeled.shape)}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    index = labeled.nonzero().view(-1)
    index = index[torch.randperm(index.numel(), generator=generator)]
    # A stable sort groups the shuffled nodes by class and keeps them shuffled inside.
    order = torch.sort(y[index], stable=True).indices
    index = index[order]
    _, counts = torch.unique_consecutive(y[index], return_counts=True)  # (C,)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(index.numel()) - starts.repeat_interleave(counts)
    num_train = (counts.double() * train).round().long()
    num_val = torch.minimum((counts.double() * val).round().long(), counts - num_train)
    num_train = num_train.repeat_interleave(counts)
    num_val = num_val.repeat_interleave(counts)

    masks = []
    for selected in (rank < num_train, (rank >= num_train) & (rank < num_train + num_val)):
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[index[selected]] = True
        masks.append(mask)
    test_mask = labeled.clone()
    test_mask[masks[0] | masks[1]] = False
    return Split(masks[0], masks[1], test_mask)


def select_split(mask: Tensor, split: int, name: str, field: str) -> Tensor:
    """Picks split ``split`` from a given ``(N,)`` or ``(N, S)`` mask.

    Args:
        mask: Boolean mask of shape ``(N,)`` (one given split) or ``(N, S)`` (``S`` splits).
        split: Index of the split to select.
        name: Dataset name, used in error messages.
        field: Name of the mask field, used in error messages.

    Returns:
        Boolean mask of shape ``(N,)``.
    """
    num_splits = 1 if mask.dim() == 1 else mask.size(1)
    if not 0 <= split < num_splits:
        raise ConfigError(
            f"load_dataset: {name!r} has {num_splits} given split(s); expected 'split' in "
            f"0..{num_splits - 1}, received split={split}"
        )
    return mask.to(torch.bool) if mask.dim() == 1 else mask[:, split].to(torch.bool)


def check_single_split(split: int, name: str, reason: str) -> None:
    """Raises ``ValueError`` unless ``split == 0`` for a dataset with one split.

    Args:
        split: Requested split index.
        name: Dataset name, used in the message.
        reason: Why there is one split, e.g. ``"has a single public split"``.
    """
    if split != 0:
        raise ConfigError(
            f"load_dataset: {name!r} {reason}; expected split=0, received split={split}"
        )
