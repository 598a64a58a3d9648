"""Construction of PyG-style datasets that fails cleanly offline.

PyG's ``Dataset.__init__`` downloads when its raw files are missing and writes
``processed/`` beside ``raw/``. :func:`construct` runs the real class with two hooks:

* ``download``: skipped when the processed files already exist (PyG checks only the raw
  ones); on failure, the files it had started to write are removed and the error becomes a
  :class:`FileNotFoundError` that names the folder and the files expected there;
* ``process``: on failure, what it wrote into ``processed/`` is removed.

A folder that did not exist before the call is removed with everything in it on failure,
so a failed load leaves nothing half-written behind.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
from typing import Any, Callable, List, Optional, TypeVar

from torch_geometric.data import Dataset

DatasetT = TypeVar("DatasetT", bound=Dataset)
ExpectedFn = Callable[[Any], str]


def default_root(family: str) -> str:
    """Returns the default data folder of a dataset family.

    Args:
        family: Subfolder name, e.g. ``"planetoid"`` or ``"ogb"``.

    Returns:
        ``$VQGNN_DATA/<family>``, or ``~/.cache/vqgnn/data/<family>`` when ``VQGNN_DATA``
        is unset.
    """
    base = os.environ.get("VQGNN_DATA") or osp.join("~", ".cache", "vqgnn", "data")
    return osp.join(osp.expanduser(base), family)


def describe_files(dataset: Any) -> str:
    """Default description of what a PyG dataset needs on disk.

    Args:
        dataset: A (partly constructed) PyG dataset instance.

    Returns:
        A sentence naming the raw and processed files and their folders.
    """
    return (
        f"the raw files {_names(dataset.raw_file_names)} in '{dataset.raw_dir}' "
        f"(or the processed files {_names(dataset.processed_file_names)} in "
        f"'{dataset.processed_dir}')"
    )


def construct(
    cls: type[DatasetT],
    created_dir: str,
    expected: Optional[ExpectedFn] = None,
    **kwargs: Any,
) -> DatasetT:
    """Constructs ``cls(**kwargs)`` with clean offline failure (see the module docstring).

    Args:
        cls: A PyG (or OGB) dataset class.
        created_dir: Folder the dataset lives in; if it does not exist before the call and
            the construction fails, it is removed with everything written into it.
        expected: Function of the dataset instance describing the files it needs, used in
            the :class:`FileNotFoundError`; defaults to :func:`describe_files`.
        **kwargs: Arguments of ``cls``.

    Returns:
        The constructed dataset.

    Raises:
        FileNotFoundError: The files are absent and could not be downloaded.
    """
    missing_top = _topmost_missing(created_dir)
    try:
        return _guarded(cls, expected or describe_files)(**kwargs)
    except BaseException:
        if missing_top is not None:
            shutil.rmtree(missing_top, ignore_errors=True)
        raise


def _root_hint(dataset: Any) -> str:
    """A hint when ``root`` is one level too deep: it holds ``raw/`` itself, where the
    dataset looks for ``raw/`` in a folder below it (PyG's ``root/<Name>/raw``)."""
    root = osp.abspath(str(getattr(dataset, "root", "")))
    raw_dir = osp.abspath(dataset.raw_dir)
    if not osp.isdir(osp.join(root, "raw")) or raw_dir == osp.join(root, "raw"):
        return ""
    folder = osp.basename(osp.dirname(raw_dir))  # the dataset's own folder, e.g. 'Cora'
    if osp.basename(root) == folder:
        return (f" '{root}' holds a 'raw' folder itself: the root is the folder above it, "
                f"'{osp.dirname(root)}'")
    return (f" '{root}' holds a 'raw' folder itself, but this dataset's raw files go in "
            f"ROOT/{folder}/raw: give as the root a folder that holds '{folder}/raw'")


def _guarded(cls: type[DatasetT], expected: ExpectedFn) -> type[DatasetT]:
    def download(self: Any) -> None:
        if all(osp.exists(path) for path in self.processed_paths):
            return  # Processed data is enough: the raw files are not needed.
        before = _listing(self.raw_dir)
        try:
            cls.download(self)
        except Exception as exc:
            _remove_new(self.raw_dir, before, stop=self.root)
            raise FileNotFoundError(
                f"{cls.__name__}: could not find {expected(self)}, and downloading them "
                f"failed ({type(exc).__name__}: {exc}). Place the files there to load "
                f"offline.{_root_hint(self)}"
            ) from exc

    def process(self: Any) -> None:
        before = _listing(self.processed_dir)
        try:
            cls.process(self)
        except BaseException:
            _remove_new(self.processed_dir, before, stop=self.root)
            raise

    namespace = {"download": download, "process": process, "__module__": cls.__module__}
    return type(cls.__name__, (cls,), namespace)


def _names(files: Any) -> List[str]:
    return [files] if isinstance(files, str) else list(files)


def _listing(folder: str) -> set[str]:
    return set(os.listdir(folder)) if osp.isdir(folder) else set()


def _remove_new(folder: str, before: set[str], stop: str) -> None:
    """Removes entries of ``folder`` absent from ``before``, then empty parents up to ``stop``."""
    for entry in _listing(folder) - before:
        path = osp.join(folder, entry)
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    stop = osp.abspath(stop)
    current = osp.abspath(folder)
    while current != stop and current.startswith(stop + os.sep) and osp.isdir(current):
        if os.listdir(current):
            break
        os.rmdir(current)
        current = osp.dirname(current)


def _topmost_missing(path: str) -> Optional[str]:
    path = osp.abspath(osp.expanduser(path))
    missing = None
    while not osp.exists(path):
        missing = path
        parent = osp.dirname(path)
        if parent == path:
            break
        path = parent
    return missing
