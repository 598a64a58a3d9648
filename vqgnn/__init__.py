"""vqgnn: scale PyTorch Geometric GNNs to large graphs with vector quantization (VQ-GNN)."""
from vqgnn.batching import VQGraph
from vqgnn.errors import ConfigError, ConfigTypeError
from vqgnn.nn import (
    VQGNN,
    GlobalAttention,
    ResidualFFNGNN,
    VQConv,
    init_codebooks,
    register_adapter,
)
from vqgnn.quantize import Codebook, CodebookHealth, CodebookOptions, FeatureGradientQuantizer

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ConfigError",
    "ConfigTypeError",
    "VQGraph",
    "VQConv",
    "GlobalAttention",
    "VQGNN",
    "ResidualFFNGNN",
    "init_codebooks",
    "register_adapter",
    "Codebook",
    "CodebookHealth",
    "CodebookOptions",
    "FeatureGradientQuantizer",
    "load_dataset",
]


def __getattr__(name: str):  # the data layer imports ogb lazily (it is slow to import)
    if name == "load_dataset":
        from vqgnn.datasets import load_dataset

        return load_dataset
    raise AttributeError(f"module 'vqgnn' has no attribute {name!r}")
