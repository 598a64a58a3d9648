"""The project's named exceptions.

Every check of user input or configuration raises :class:`ConfigError` (a ``ValueError``),
or :class:`ConfigTypeError` (also a ``TypeError``) when the received value has the wrong
type. The command line prints exactly these as one-line usage errors; any other exception is
a bug (or a failure of the machine) and shows its traceback.

Example:
    >>> from vqgnn import ConfigError
    >>> try:
    ...     VQGNN(16, 64, 0, 7, num_nodes=100)
    ... except ConfigError as err:
    ...     print(err)
    'VQGNN': 'num_layers' must be an int >= 1, received 0
"""
from __future__ import annotations

import os
import sys
from typing import Any


class ConfigError(ValueError):
    """Bad input or configuration: the message names the argument and the value received."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument of the wrong type (a :class:`ConfigError` and a ``TypeError``)."""




class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or parameters and was stopped.

    Attributes:
        epoch: the epoch that diverged.
        result: the run's figures up to there (``status='diverged'``), or None.
        record: the JSON record of the run, where one was made (by
            :func:`~vqgnn.train.run_experiment`), or None.
    """

    def __init__(self, message: str, epoch: int, result: object = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.result = result
        self.record: object = None


__all__ = ["ConfigError", "ConfigTypeError", "DivergenceError"]


def outside_stacklevel() -> int:
    """The ``stacklevel`` with which the caller's ``warnings.warn`` names the first frame
    outside vqgnn and torch: the user's line (that built a layer directly, through
    ``VQGNN`` or a subclass, whose layers a ``ModuleList`` builds, or through the trainer;
    that loaded a dataset), not a line of the libraries."""
    import torch

    libraries = tuple(os.path.dirname(os.path.abspath(module.__file__)) + os.sep
                      for module in (sys.modules["vqgnn"], torch) if module.__file__)
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(
            frame.f_code.co_filename).startswith(libraries):
        frame, level = frame.f_back, level + 1
    return level


def check_finite_rows(x: Any, what: str, unit: str = "row", advice: str = "") -> None:
    """:class:`ConfigError` naming the rows of ``x`` ((N, D), or (N,): one value a row) that
    hold NaN or infinite values: ``"{what} hold NaN or infinite values in 2 row(s) (first:
    [3, 7]){advice}"``. One host synchronisation: for set-up, not for training steps."""
    import torch

    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).any(dim=1) if x.dim() == 2 else ~finite
        rows = bad.nonzero().view(-1)
        raise ConfigError(f"{what} hold NaN or infinite values in {rows.numel()} {unit}(s) "
                          f"(first: {rows[:5].tolist()}){advice}")
