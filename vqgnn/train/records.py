"""JSON-lines records written whole and durably, read back past a torn tail.

A record is one line of strict JSON (``NaN`` and infinities become ``null``: they are not
JSON). :func:`append_record` writes the line in one ``write`` of the whole line, flushes
and ``fsync``s it; if an earlier crash or a full disk left a fragment without its newline
at the end of the file, the fragment is closed first, so the new record starts a line of
its own instead of being glued onto it. :func:`read_records` skips lines that do not
parse, with a warning naming the file and the line.
"""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Optional, Union

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


def git_state(root: Path) -> tuple[Optional[str], Optional[bool]]:
    """The commit checked out at ``root`` and whether a tracked Python file there differs
    from it (records and other data files do not count: a benchmark appends to tracked
    result files); (None, None) where ``root`` is no git checkout or git is missing."""
    if not (root / ".git").exists():  # an installed copy has no .git beside it
        return None, None
    # the repository at root whatever the caller's GIT_DIR or pathspec settings (a git
    # hook's), and no index refresh that could take a concurrent commit's lock
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args],
                                  capture_output=True, text=True, check=True, timeout=30,
                                  env=env).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--",
                    ":(glob)**/*.py") != ""
    except (OSError, ValueError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


@functools.lru_cache(maxsize=1)
def _code_version() -> tuple[tuple[str, Any], ...]:
    import torch

    import vqgnn

    # vqgnn/train/records.py -> the checkout vqgnn was imported from
    commit, dirty = git_state(Path(__file__).resolve().parents[2])
    return (("vqgnn", vqgnn.__version__), ("commit", commit), ("dirty", dirty),
            ("torch", torch.__version__))


def code_version() -> dict[str, Any]:
    """What produced a result: vqgnn's version, the git commit of the checkout vqgnn was
    imported from and whether its tracked Python files differed from that commit (both
    None outside a checkout, or where git is missing or fails; :func:`git_state`), and
    torch's version. Read once per process, when first asked for: the command line and
    the benchmark scripts ask when they start (:func:`~vqgnn.cli.script_parser`), so
    that the commit is the one whose code the command imported."""
    return dict(_code_version())


def append_result(path: PathLike, record: dict[str, Any]) -> dict[str, Any]:
    """:func:`append_record` of a result: ``record`` with a ``code`` entry
    (:func:`code_version`) unless it has one. Returns the record as written."""
    written = record if "code" in record else {**record, "code": code_version()}
    append_record(path, written)
    return written


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


__all__ = ["append_record", "append_result", "check_writable", "code_version", "dumps",
           "read_records", "strict_json"]
