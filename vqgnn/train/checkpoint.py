"""Checkpoint files: predictable names, atomic writes, safe loading, identity checks.

* :func:`checkpoint_path`: one file per run and method, ``<base>.<method>.pt``.
* :func:`save_state`: written to a temporary file, ``fsync``-ed, then renamed over the
  old one, so a crash mid-write leaves the previous checkpoint intact.
* :func:`load_state`: ``torch.load(weights_only=True)``: a checkpoint holds tensors and
  plain Python values only, so a file from someone else cannot run code when loaded.
  A missing, empty, truncated or foreign file is a :class:`CheckpointError` naming it.
* :func:`graph_fingerprint` and :func:`differences`: a checkpoint stores the identity of
  its run (configuration, model, graph); resuming compares it with the new run's and
  refuses a mismatch, naming each differing option.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from vqgnn.errors import ConfigError

PathLike = Union[str, os.PathLike]

#: Format tag of the files :func:`save_state` writes.
FORMAT = "vqgnn-checkpoint/2"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read, or that belongs to another run."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint file at the path (a :class:`CheckpointError` and a
    ``FileNotFoundError``)."""


def checkpoint_path(base: PathLike, method: str) -> Path:
    """The checkpoint file of ``method`` for the user's ``base`` path: ``<base>.<method>.pt``.

    A ``.pt`` suffix of ``base`` is dropped first, and so is a ``.<method>`` then found at
    its end, so the name a run wrote can be given back unchanged:
    ``ck/exp.v1`` -> ``ck/exp.v1.vq.pt``; ``ck/a.pt`` and ``ck/a.vq.pt`` -> ``ck/a.vq.pt``.
    """
    text = os.fspath(base)
    if text.endswith(".pt"):
        text = text[: -len(".pt")]
    if text.endswith(f".{method}"):
        text = text[: -len(method) - 1]
    if not text or text.endswith(("/", os.sep)):
        raise ConfigError(f"'checkpoint' must name a file, received {os.fspath(base)!r}")
    return Path(f"{text}.{method}.pt")


def check_checkpoint_path(path: PathLike, owner: str = "checkpoint") -> Path:
    """Raise :class:`~vqgnn.errors.ConfigError` unless a checkpoint can be written at
    ``path`` (its folder is created, and a temporary file written there and removed):
    checked before a run starts, so that no training is lost to a bad path. Nothing is
    left at ``path`` itself."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"'{owner}': {str(path)!r} is a directory, not a checkpoint file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as err:
        raise ConfigError(f"'{owner}': cannot write a checkpoint at {str(path)!r}: "
                          f"{err.strerror or err}") from None
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_state(state: dict[str, Any], path: PathLike) -> None:
    """Write ``state`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def load_state(path: PathLike, device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a :func:`save_state` file with ``weights_only=True``.

    Raises:
        CheckpointError: no such file, an empty, truncated or corrupt file, a file that
            is not a vqgnn checkpoint, or one that would need to run pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"no checkpoint at {str(path)!r}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"the checkpoint {str(path)!r} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):  # save_state always writes torch's zip format
        raise CheckpointError(f"the checkpoint {str(path)!r} cannot be read (truncated or "
                              f"not a torch file: no zip archive)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # no terminal escapes
        first = text.splitlines()[0] if text else type(err).__name__
        if "global" in text.lower():  # a class or function to import: code, not weights
            imported = re.search(r"GLOBAL ([\w.]+)", text)
            what = f": it would import {imported.group(1)}" if imported else f" ({first})"
            raise CheckpointError(f"the checkpoint {str(path)!r} holds objects that are not "
                                  f"weights{what}; it is refused rather than run (is it "
                                  f"a checkpoint written by vqgnn?)") from None
        raise CheckpointError(f"the checkpoint {str(path)!r} cannot be read ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            IndexError, KeyError) as err:
        raise CheckpointError(f"the checkpoint {str(path)!r} cannot be read (truncated or "
                              f"not a torch file: {type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{str(path)!r} is not a vqgnn checkpoint of format {FORMAT!r} "
                              f"(found {found!r})")
    return state


# ------------------------------------------------------------------------ RNG states
def rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's generator states as tensors and plain values."""
    import random

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    import random

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------------------ identity
def _digest(tensor: Tensor, max_rows: int = 4096) -> str:
    """SHA-1 of up to ``max_rows`` evenly spaced rows (whole for small tensors)."""
    t = tensor.detach().cpu()
    if t.dim() > 0 and t.size(0) > max_rows:
        # float32 spacing rounds past the last row from 2^24 rows on (10^8 edges: index
        # 99,503,424 of 99,503,422); float64 there. Below it, float32 as before, so that
        # the digests of existing checkpoints stay the same.
        dtype = torch.float64 if t.size(0) >= 1 << 24 else torch.float32
        t = t[torch.linspace(0, t.size(0) - 1, max_rows, dtype=dtype).long()]
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits
        t = t.view(torch.int16)
    return hashlib.sha1(t.numpy().tobytes()).hexdigest()[:16]


def graph_fingerprint(data: Data) -> dict[str, Any]:
    """What identifies a graph: sizes, and digests of its edges, features, labels and
    masks (features and labels sampled on large graphs)."""
    out: dict[str, Any] = {"num_nodes": int(data.num_nodes),
                           "num_edges": int(data.edge_index.size(1)),
                           "x": [list(data.x.shape), _digest(data.x)],
                           "edge_index": _digest(data.edge_index.t(), max_rows=1 << 20),
                           "y": _digest(data.y)}
    for split in ("train", "val", "test"):
        mask = data[f"{split}_mask"]
        out[f"{split}_mask"] = [int(mask.sum()), _digest(mask)]
    return out


def model_signature(model: torch.nn.Module) -> dict[str, Any]:
    """The model's class and the shape of every parameter and buffer."""
    return {"class": type(model).__name__,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``'key: checkpoint A, now B'`` for each leaf where two nested dicts differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in [*current, *(k for k in saved if k not in current)]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{name}: not in the checkpoint, now {current[key]!r}")
            elif key not in current:
                out.append(f"{name}: checkpoint {saved[key]!r}, now absent")
            else:
                out.extend(differences(saved[key], current[key], name))
        return out
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        saved, current = list(saved), list(current)
    return [] if saved == current else [f"{prefix}: checkpoint {saved!r}, now {current!r}"]


__all__ = ["FORMAT", "CheckpointError", "MissingCheckpointError", "checkpoint_path",
           "save_state", "load_state", "rng_state", "set_rng_state", "graph_fingerprint",
           "model_signature", "differences"]
