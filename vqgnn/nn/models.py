"""``VQGNN``: a stack of :class:`VQConv` layers in the spirit of PyG's ``BasicGNN``."""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv, GCNConv, SAGEConv
from torch_geometric.nn.conv import MessagePassing
from tqdm.auto import tqdm

from vqgnn.batching.graph import VQGraph
from vqgnn.nn.vq_conv import VQConv
from vqgnn.quantize.codebook import CodebookHealth

ConvFactory = Callable[[int, int, int], MessagePassing]

BACKBONES = ("gcn", "sage", "gat")
NORMS = ("none", "layer", "batch")
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "elu": F.elu, "tanh": torch.tanh}


def backbone_factory(name: str, heads: int = 4) -> ConvFactory:
    """A factory ``(in_channels, out_channels, layer_index) -> conv`` for a backbone name.

    Args:
        name: ``'gcn'``, ``'sage'`` (mean) or ``'gat'`` (``heads`` heads, concatenated on
            hidden layers, averaged on none: out_channels must be divisible by heads).
        heads: attention heads of ``'gat'``.
    """
    if name == "gcn":
        return lambda cin, cout, i: GCNConv(cin, cout)
    if name == "sage":
        return lambda cin, cout, i: SAGEConv(cin, cout)
    if name == "gat":

        def gat(cin: int, cout: int, i: int) -> MessagePassing:
            if cout % heads == 0:
                return GATConv(cin, cout // heads, heads=heads)
            return GATConv(cin, cout, heads=1)

        return gat
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")


class VQGNN(torch.nn.Module):
    r"""A multi-layer GNN whose every convolution is a :class:`VQConv`.

    Two layouts:

    * ``residual=False`` (PyG ``BasicGNN``): ``conv(in, hidden)``, ..., ``conv(hidden, out)``,
      with normalisation, activation and dropout between layers;
    * ``residual=True`` (Platonov et al., ICLR 2023, strong on heterophilous graphs):
      ``Linear(in, hidden)``, then ``num_layers`` blocks
      :math:`h \leftarrow h + \mathrm{drop}(\mathrm{act}(\mathrm{conv}(\mathrm{norm}(h))))`,
      then ``Linear(hidden, out)``.

    With ``exact_first_layer`` (default, ``residual=False`` only) the first layer reads
    the raw input features of every neighbour exactly
    (:meth:`VQConv.set_constant_input`): it needs no codebook.

    Args:
        in_channels: input features.
        hidden_channels: hidden size.
        out_channels: outputs (classes).
        num_layers: convolution layers (>= 1).
        num_nodes: N, nodes of the graph.
        conv: backbone name (``'gcn'``, ``'sage'``, ``'gat'``) or a factory
            ``(in_channels, out_channels, layer_index) -> MessagePassing``.
        num_codewords: K per layer.
        dropout: dropout probability.
        norm: ``'none'``, ``'layer'`` or ``'batch'``.
        act: ``'relu'``, ``'gelu'``, ``'elu'`` or ``'tanh'``.
        residual: the residual layout above.
        exact_first_layer: see above.
        **vq_kwargs: passed to every :class:`VQConv` (``merge``, ``backward_approx``,
            ``decay``, ...).

    Example:
        >>> model = VQGNN(data.num_features, 64, 7, num_layers=2, num_nodes=data.num_nodes)
        >>> graph = VQGraph(data.edge_index, data.num_nodes)
        >>> model.prepare(data.x, graph)        # codebook k-means, exact first layer
        >>> out_b = model(data.x[batch], graph, batch)
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int,
        num_nodes: int,
        conv: Union[str, ConvFactory] = "gcn",
        num_codewords: int = 256,
        dropout: float = 0.5,
        norm: str = "none",
        act: str = "relu",
        residual: bool = False,
        exact_first_layer: bool = True,
        **vq_kwargs: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                           ("out_channels", out_channels), ("num_layers", num_layers),
                           ("num_nodes", num_nodes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}': '{arg}' must be an int >= 1, received {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'{name}': 'dropout' must be in [0, 1), received {dropout!r}")
        if norm not in NORMS:
            raise ValueError(f"'{name}': 'norm' must be one of {NORMS}, received {norm!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"'{name}': 'act' must be one of {tuple(ACTIVATIONS)}, "
                             f"received {act!r}")
        if isinstance(conv, str):
            if conv not in BACKBONES:
                raise ValueError(f"'{name}': 'conv' must be one of {BACKBONES} or a factory, "
                                 f"received {conv!r}")
            factory = backbone_factory(conv)
        elif callable(conv):
            factory = conv
        else:
            raise TypeError(f"'{name}': 'conv' must be a backbone name or a factory, received "
                            f"{type(conv).__name__}")
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.out_channels, self.num_layers = out_channels, num_layers
        self.dropout, self.residual = dropout, residual
        self.act_name, self.norm_name = act, norm
        self.act: Callable[[Tensor], Tensor] = ACTIVATIONS[act]
        self.exact_first_layer = exact_first_layer and not residual

        if residual:
            self.lin_in: Optional[torch.nn.Linear] = torch.nn.Linear(in_channels, hidden_channels)
            self.lin_out: Optional[torch.nn.Linear] = torch.nn.Linear(hidden_channels,
                                                                      out_channels)
            sizes = [(hidden_channels, hidden_channels)] * num_layers
        else:
            self.lin_in = self.lin_out = None
            dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
            sizes = list(zip(dims[:-1], dims[1:]))
        self.convs = torch.nn.ModuleList(
            VQConv(factory(cin, cout, i), num_codewords, num_nodes, in_channels=cin, **vq_kwargs)
            for i, (cin, cout) in enumerate(sizes))
        num_norms = num_layers if residual else num_layers - 1
        norm_dims = [cin if residual else cout for cin, cout in sizes][:num_norms]
        self.norms = torch.nn.ModuleList(self._make_norm(d) for d in norm_dims)

    @property
    def layers(self) -> list[VQConv]:
        """The :class:`VQConv` layers, in order."""
        return list(self.convs)  # type: ignore[arg-type]

    def _make_norm(self, channels: int) -> torch.nn.Module:
        if self.norm_name == "layer":
            return torch.nn.LayerNorm(channels)
        if self.norm_name == "batch":
            return torch.nn.BatchNorm1d(channels)
        return torch.nn.Identity()

    def reset_parameters(self) -> None:
        for module in [*self.convs, *self.norms, self.lin_in, self.lin_out]:
            if module is not None and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    # ------------------------------------------------------------------ layers
    def _input(self, x: Tensor) -> Tensor:
        if self.lin_in is None:
            return x
        return F.dropout(self.act(self.lin_in(x)), self.dropout, self.training)

    def _conv_input(self, i: int, h: Tensor) -> Tensor:
        return self.norms[i](h) if self.residual else h

    def _after_conv(self, i: int, h: Tensor, z: Tensor) -> Tensor:
        """Layer ``i``'s output from its input ``h`` and its convolution's output ``z``."""
        if self.residual:
            return h + F.dropout(self.act(z), self.dropout, self.training)
        if i == self.num_layers - 1:
            return z
        return F.dropout(self.act(self.norms[i](z)), self.dropout, self.training)

    def _output(self, h: Tensor) -> Tensor:
        return h if self.lin_out is None else self.lin_out(h)

    def forward(self, x: Tensor, graph: VQGraph, batch: Optional[Tensor] = None) -> Tensor:
        """VQ mini-batch forward (``batch`` given, ``x`` the batch's inputs) or exact full graph.

        Args:
            x: (b, F) inputs of the batch nodes, or (N, F) of all nodes with ``batch=None``.
            graph: the full graph.
            batch: (b,) node ids, or None.

        Returns:
            (b, out_channels) or (N, out_channels).
        """
        h = self._input(x)
        for i, conv in enumerate(self.layers):
            h = self._after_conv(i, h, conv(self._conv_input(i, h), graph, batch))
        return self._output(h)

    def _layerwise(self, x: Tensor, graph: VQGraph, batch_size: int, progress: bool,
                   before_layer: Optional[Callable[[int, Tensor], None]] = None) -> Tensor:
        """Exact outputs of all nodes, one layer at a time over chunks of nodes."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"'{type(self).__name__}': 'batch_size' must be an int >= 1, "
                             f"received {batch_size!r}")
        chunks = torch.arange(graph.num_nodes, device=x.device).split(batch_size)
        h = torch.cat([self._input(x[c]) for c in chunks])
        for i, conv in enumerate(self.layers):
            conv_in = self._conv_input(i, h)  # (N, D)
            if before_layer is not None:
                before_layer(i, conv_in)
            bar = tqdm(chunks, desc=f"layer {i + 1}/{self.num_layers}", disable=not progress,
                       leave=False)
            h = torch.cat([self._after_conv(i, h[c], conv.inference(conv_in, graph, c))
                           for c in bar])
        return self._output(h)

    @torch.no_grad()
    def inference(self, x: Tensor, graph: VQGraph, batch_size: int = 4096,
                  progress: bool = False) -> Tensor:
        """Exact layer-wise inference of all nodes in chunks of ``batch_size`` nodes.

        Memory is O(N * hidden) for one layer's outputs plus one chunk's 1-hop
        neighbourhood, never the full graph's messages.
        """
        return self._layerwise(x, graph, batch_size, progress)

    @torch.no_grad()
    def prepare(self, x: Tensor, graph: VQGraph, batch_size: int = 4096, seed: int = 0,
                progress: bool = False) -> None:
        """Before the first epoch: exact first layer, and k-means on every layer's inputs.

        Every layer's inputs are computed by exact layer-wise inference with the
        current weights (in eval mode); each codebook is initialised by k-means on them
        and every node assigned (gradient halves at their mean until the first update).
        """
        if self.exact_first_layer:
            self.layers[0].set_constant_input(x, graph)

        def init(i: int, conv_in: Tensor) -> None:
            if not (i == 0 and self.exact_first_layer):
                self.layers[i].init_codebook(conv_in, seed=seed + i)

        was_training = self.training
        self.eval()
        try:
            self._layerwise(x, graph, batch_size, progress, before_layer=init)
        finally:
            self.train(was_training)

    def update_codebooks(self) -> int:
        """Apply every layer's captured (input, gradient) pairs; returns how many updated."""
        return sum(int(conv.update_codebook()) for conv in self.layers)

    def codebook_health(self) -> Optional[CodebookHealth]:
        """Mean usage, perplexity and quantisation error over the quantized layers."""
        healths = [c.health() for c in self.layers if c.quantizer.initialized]
        if not healths:
            return None
        return CodebookHealth(
            usage=sum(h.usage for h in healths) / len(healths),
            perplexity=sum(h.perplexity for h in healths) / len(healths),
            quantization_error=sum(h.quantization_error for h in healths) / len(healths),
        )

    def __repr__(self) -> str:
        first = self.layers[0]
        conv = type(first.conv).__name__
        return (f"{type(self).__name__}({self.in_channels}, {self.hidden_channels}, "
                f"{self.out_channels}, num_layers={self.num_layers}, conv={conv}, "
                f"num_codewords={first.num_codewords}, residual={self.residual})")
