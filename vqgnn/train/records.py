"""JSON-lines records written whole and durably, read back past a torn tail.

A record is one line of strict JSON (``NaN`` and infinities become ``null``: they are not
JSON). :func:`append_record` writes the line in one ``write`` of the whole line, flushes
and ``fsync``s it; if an earlier crash or a full disk left a fragment without its newline
at the end of the file, the fragment is closed first, so the new record starts a line of
its own instead of being glued onto it. :func:`read_records` skips lines that do not
parse, with a warning naming the file and the line.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Union

from vqgnn.errors import ConfigError

PathLike = Union[str, os.PathLike]


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (tuples as lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def dumps(record: dict[str, Any]) -> str:
    """One line of strict JSON."""
    return json.dumps(strict_json(record), allow_nan=False)


def check_writable(path: PathLike, owner: str = "records") -> Path:
    """Raise :class:`~vqgnn.errors.ConfigError` unless records can be appended at ``path``
    (checked before a run starts, so that no training is lost to a bad path)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"'{owner}': {str(path)!r} is a directory, not a JSON-lines file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as err:
        raise ConfigError(f"'{owner}': cannot append to {str(path)!r}: "
                          f"{err.strerror or err}") from None
    return path


def _ends_torn(path: Path) -> bool:
    """Whether the file ends with a fragment (bytes after the last newline)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def append_record(path: PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one durable line (write + flush + fsync).

    Raises:
        OSError: the write failed (for example a full disk); the file then ends with at
            most a fragment, which the next append closes and :func:`read_records` skips.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = dumps(record) + "\n"
    torn = _ends_torn(path)
    if torn:
        warnings.warn(f"{path}: the last line was torn (an earlier write did not finish); "
                      f"it is closed and will be skipped when read", stacklevel=2)
    with path.open("a") as f:
        f.write(("\n" if torn else "") + line)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (empty when it does not exist); lines that do not
    parse (a torn tail, a fragment) are skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            warnings.warn(f"{path}:{number}: not a JSON record (a torn or partial line); "
                          f"skipped", stacklevel=2)
            continue
        records.append(value)
    return records


__all__ = ["append_record", "check_writable", "dumps", "read_records", "strict_json"]
