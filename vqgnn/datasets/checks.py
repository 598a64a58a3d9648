"""Checks of a loaded graph that scan its values (once per graph, never per step)."""
from __future__ import annotations

import torch
from torch_geometric.data import Data

from vqgnn.errors import ConfigError


def check_finite_features(data: Data, owner: str) -> None:
    """:class:`~vqgnn.errors.ConfigError` when ``data.x`` holds NaN or infinities (one
    scan per graph)."""
    finite = torch.isfinite(data.x)
    if not bool(finite.all()):
        bad = (~finite).any(dim=1) if data.x.dim() == 2 else ~finite
        rows = bad.nonzero().view(-1)
        raise ConfigError(f"'{owner}': the features hold NaN or infinite values in "
                          f"{rows.numel()} node(s) (first: {rows[:5].tolist()}); clean them "
                          f"before training")
