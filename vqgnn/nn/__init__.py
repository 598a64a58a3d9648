"""VQ-GNN layers: ``VQConv`` wraps any PyG ``MessagePassing`` layer; ``GlobalAttention``
attends to all nodes through its codebook."""
from vqgnn.nn.adapters import (
    AttentionAdapter,
    ConvAdapter,
    GenericAdapter,
    LinearAdapter,
    adapter_for,
    register_adapter,
)
from vqgnn.nn.attention import GlobalAttention
from vqgnn.nn.models import VQGNN, ResidualFFNGNN, backbone_factory
from vqgnn.nn.quantized import QuantizedLayer
from vqgnn.nn.vq_conv import VQConv, init_codebooks

__all__ = [
    "VQConv", "GlobalAttention", "QuantizedLayer", "VQGNN", "ResidualFFNGNN", "backbone_factory",
    "ConvAdapter", "LinearAdapter", "AttentionAdapter", "GenericAdapter", "adapter_for",
    "register_adapter", "init_codebooks",
]
