"""Installation of vqgnn.

torch-scatter and torch-sparse are part of the supported install (PyG's
``NeighborLoader`` and the Cluster-GCN baseline use them) but have no wheels
on PyPI: they must be built against the installed torch with
``--no-build-isolation``. ``scripts/bootstrap.sh`` (run by ``make``) does that
before installing this package; they are therefore not listed here, where pip
would try to build them in an isolated environment with a different torch.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(
    r'^__version__ = "([^"]+)"',
    (here / "vqgnn" / "__init__.py").read_text(),
    re.M,
).group(1)  # type: ignore[union-attr]

install_requires = [
    "torch>=2.1",
    "torch-geometric>=2.5",
    "ogb>=1.3.6",
    "numpy>=1.24",
    "scipy>=1.10",
    "tqdm>=4.60",
    "faiss-cpu>=1.7.4",
    "pymetis>=2023.1",
    "matplotlib>=3.7",
]

extras_require = {
    "test": ["pytest>=7"],
    "dev": ["ruff>=0.5", "mypy>=1.8"],
    # faiss-gpu replaces faiss-cpu on a CUDA machine (uninstall faiss-cpu first).
    "gpu": ["faiss-gpu>=1.7.2"],
}

setup(
    name="vqgnn",
    version=version,
    description=(
        "Scale PyTorch Geometric GNNs to large graphs with vector quantization "
        "(VQ-GNN, NeurIPS 2021)"
    ),
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["vqgnn", "vqgnn.*"]),
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points={"console_scripts": ["vqgnn=vqgnn.cli:main"]},
)
