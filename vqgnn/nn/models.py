"""``VQGNN``: a stack of :class:`VQConv` layers in the spirit of PyG's ``BasicGNN``."""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.resolver import activation_resolver
from tqdm.auto import tqdm

from vqgnn.batching.graph import VQGraph
from vqgnn.errors import ConfigError, ConfigTypeError
from vqgnn.nn.attention import GlobalAttention
from vqgnn.nn.quantized import QuantizedLayer, resolve_codebook
from vqgnn.nn.vq_conv import VQConv
from vqgnn.quantize.codebook import CodebookHealth
from vqgnn.quantize.options import CodebookOptions

ConvFactory = Callable[[int, int, int], MessagePassing]

BACKBONES = ("gcn", "sage", "gat", "gin")
NORMS = ("none", "layer", "batch")
ACTIVATIONS = ("relu", "gelu", "elu", "tanh", "leaky_relu", "silu")
_NORM_ALIASES = {"none": "none", "layer": "layer", "layer_norm": "layer", "layernorm": "layer",
                 "batch": "batch", "batch_norm": "batch", "batchnorm": "batch"}
NormSpec = Union[None, str, torch.nn.Module, Callable[[int], torch.nn.Module]]


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout: each entry kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``.

    ``torch.nn.functional.dropout`` on accelerators. On the CPU the mask compares 16-bit
    uniform integers, four from each 64-bit draw of torch's generator, with a threshold
    (:func:`dropout_mask`): ``bernoulli_`` and ``torch.rand`` spend a 32-bit draw on every
    entry (``benchmarks/step_kernels.py`` times them). The saved tensor is a boolean mask,
    as theirs. The drop probability is ``p`` rounded to a multiple of 1 / 65,536 (0.2
    becomes 0.199997; a ``p`` that 16 bits hold too coarsely is drawn exactly, see
    :func:`dropout_mask`), and the scale is ``1 / (1 - that)``, so the output's
    expectation is ``x``.
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"'dropout': 'p' must be in [0, 1), received {p!r}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return torch.nn.functional.dropout(x, p, True)
    keep, drop = dropout_mask(x.shape, p)
    return (x * keep) * (1.0 / (1.0 - drop))


_UNIFORM16 = 1 << 16


def dropout_mask(shape: torch.Size, p: float) -> tuple[Tensor, float]:
    """A boolean CPU mask of ``shape`` whose entries are False with probability ``p``
    rounded to a multiple of 1 / 65,536, and that probability, from torch's global
    generator (seeded by ``torch.manual_seed``): 16-bit uniform integers, four per 64-bit
    draw, at or above a threshold. A ``p`` that 16 bits would round to 0 or 1, or by more
    than 0.1 % of it (possible below 0.0077), is drawn exactly instead, one ``torch.rand``
    float per entry."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"'dropout_mask': 'p' must be in [0, 1), received {p!r}")
    threshold = round(p * _UNIFORM16)
    if not 0 < threshold < _UNIFORM16 or abs(threshold - p * _UNIFORM16) > 1e-3 * p * _UNIFORM16:
        return torch.rand(shape, device="cpu") >= p, p
    n = math.prod(shape)
    # every int64 equally likely (``random_``'s default range leaves the sign bit 0)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device="cpu").random_(-(1 << 63), None)
    uniform = words.view(torch.int16)[:n].view(shape)  # in [-32768, 32767], uniform
    return uniform >= threshold - (_UNIFORM16 >> 1), threshold / _UNIFORM16


def norm_factory(norm: NormSpec, owner: str = "VQGNN") -> Callable[[int], torch.nn.Module]:
    """A factory ``channels -> module`` for a normalisation given as PyG's resolvers take it.

    Args:
        norm: None or ``'none'``; ``'layer'`` (``'layer_norm'``) for
            ``torch.nn.LayerNorm``; ``'batch'`` (``'batch_norm'``) for
            ``torch.nn.BatchNorm1d``; a module (copied per layer); or a callable
            ``channels -> module``. Node-wise normalisations only: a graph-level one
            (PyG's ``GraphNorm``, ``LayerNorm(mode='graph')``) would normalise over the
            mini-batch, not the graph.
        owner: the name error messages start with.
    """
    if norm is None:
        return lambda channels: torch.nn.Identity()
    if isinstance(norm, str):
        kind = _NORM_ALIASES.get(norm.lower())
        if kind is None:
            raise ConfigError(f"'{owner}': 'norm' must be one of {NORMS} (or 'layer_norm', "
                              f"'batch_norm'), a module or a factory, received {norm!r}")
        if kind == "layer":
            return lambda channels: torch.nn.LayerNorm(channels)
        if kind == "batch":
            return lambda channels: torch.nn.BatchNorm1d(channels)
        return lambda channels: torch.nn.Identity()
    if isinstance(norm, torch.nn.Module):
        return lambda channels: copy.deepcopy(norm)
    if callable(norm):
        return norm
    raise ConfigTypeError(f"'{owner}': 'norm' must be a name, a module or a factory, received "
                          f"{type(norm).__name__}")


def resolve_act(act: Union[str, Callable[[Tensor], Tensor]], owner: str = "VQGNN",
                **act_kwargs: Any) -> Callable[[Tensor], Tensor]:
    """An activation from a name (PyG's ``activation_resolver``: ``'relu'``, ``'gelu'``,
    ``'elu'``, ``'leaky_relu'``, ...) or a module/callable (used as it is)."""
    if isinstance(act, str):
        try:
            return activation_resolver(act, **act_kwargs)
        except ValueError:
            raise ConfigError(f"'{owner}': 'act' must be one of {ACTIVATIONS} (or another name "
                              f"PyG's activation_resolver knows) or a callable, received "
                              f"{act!r}") from None
    if callable(act):
        return act
    raise ConfigTypeError(f"'{owner}': 'act' must be a name or a callable, received "
                          f"{type(act).__name__}")


def backbone_factory(name: str, heads: int = 4) -> ConvFactory:
    """A factory ``(in_channels, out_channels, layer_index) -> conv`` for a backbone name.

    Args:
        name: ``'gcn'``, ``'sage'`` (mean), ``'gat'`` (``heads`` heads, concatenated on
            hidden layers, averaged on none: out_channels must be divisible by heads) or
            ``'gin'`` (sum aggregation; epsilon 0, the MLP
            ``Linear(in, out), ReLU, Linear(out, out)``, as in Xu et al., ICLR 2019, without
            its batch norm). Sum aggregation makes a mini-batch method's many steps per epoch
            at the full-graph learning rate unstable: train GIN with ``lr_per_epoch`` and a
            cosine schedule, or a lower learning rate (README, "Sum aggregation").
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
    if name == "gin":
        return lambda cin, cout, i: GINConv(torch.nn.Sequential(
            torch.nn.Linear(cin, cout), torch.nn.ReLU(), torch.nn.Linear(cout, cout)))
    raise ConfigError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")


class _StopForward(Exception):
    """Ends a forward pass once the inputs it was run for are captured."""


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
    (:meth:`VQConv.set_constant_input`): it holds no codebook.

    With ``global_attention`` (residual layouts only) each block is a hybrid, GraphGPS /
    GOAT style: a :class:`~vqgnn.nn.GlobalAttention` over all N nodes reads the same
    normalised input as the convolution and the two outputs are summed,
    :math:`z = \mathrm{conv}(\mathrm{norm}(h)) + \mathrm{attn}(\mathrm{norm}(h))`; each
    attention layer holds its own codebook with the same options.

    Called with a plain ``edge_index`` tensor in place of a :class:`VQGraph`
    (``model(x, edge_index)``), the model runs PyG's own convolutions on that graph, like
    a PyG ``BasicGNN``: the sampling baselines train it this way.

    Args:
        in_channels: input features.
        hidden_channels: hidden size.
        num_layers: convolution layers (>= 1).
        out_channels: outputs (classes). The order of these four is PyG's ``BasicGNN``'s.
        num_nodes: N, nodes of the graph (keyword-only).
        conv: backbone name (``'gcn'``, ``'sage'``, ``'gat'``, ``'gin'``) or a factory
            ``(in_channels, out_channels, layer_index) -> MessagePassing``.
        num_codewords: K per layer (a shortcut for ``codebook.num_codewords``).
        codebook: every codebook option (:class:`~vqgnn.quantize.CodebookOptions`).
        dropout: dropout probability (default 0.2: with 0.5, the codebooks quantize
            inputs so noisy that VQ-GNN trails full-graph training by 2 points on Tolokers;
            README, "Defaults").
        norm: None/``'none'``, ``'layer'``, ``'batch'``, a module or a factory
            (:func:`norm_factory`).
        act: an activation name (PyG's resolver) or a callable.
        act_kwargs: keyword arguments of a named activation.
        residual: the residual layout above.
        exact_first_layer: see above.
        merge: merge messages sharing a codeword where the layer allows it.
        backward_approx: add the approximated gradient messages in backward.
        validate: check the values of every mini-batch's node ids (host syncs).
        global_attention: a global attention layer beside every convolution (see above).
        attention_heads: heads of the global attention layers.

    Example:
        >>> model = VQGNN(data.num_features, 64, 2, 7, num_nodes=data.num_nodes)
        >>> graph = VQGraph(data.edge_index, data.num_nodes)
        >>> model.prepare(data.x, graph)        # codebook k-means, exact first layer
        >>> out_b = model(data.x[batch], graph, batch)
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_layers: int,
        out_channels: int,
        *,
        num_nodes: int,
        conv: Union[str, ConvFactory] = "gcn",
        num_codewords: Optional[int] = None,
        codebook: Optional[CodebookOptions] = None,
        dropout: float = 0.2,
        norm: NormSpec = None,
        act: Union[str, Callable[[Tensor], Tensor]] = "relu",
        act_kwargs: Optional[dict[str, Any]] = None,
        residual: bool = False,
        exact_first_layer: bool = True,
        merge: bool = True,
        backward_approx: bool = True,
        validate: bool = False,
        global_attention: bool = False,
        attention_heads: int = 4,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                           ("num_layers", num_layers), ("out_channels", out_channels),
                           ("num_nodes", num_nodes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}': '{arg}' must be an int >= 1, received {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"'{name}': 'dropout' must be in [0, 1), received {dropout!r}")
        make_norm = norm_factory(norm, name)
        act_fn = resolve_act(act, name, **(act_kwargs or {}))
        codebook = resolve_codebook(name, num_codewords, codebook)
        if isinstance(conv, str):
            if conv not in BACKBONES:
                raise ConfigError(f"'{name}': 'conv' must be one of {BACKBONES} or a factory, "
                                  f"received {conv!r}")
            factory = backbone_factory(conv)
        elif callable(conv):
            factory = conv
        else:
            raise ConfigTypeError(f"'{name}': 'conv' must be a backbone name or a factory, "
                                  f"received {type(conv).__name__}")
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.out_channels, self.num_layers = out_channels, num_layers
        self.dropout, self.residual = dropout, residual
        self.act_name = act if isinstance(act, str) else type(act).__name__
        self.norm_name = norm if isinstance(norm, str) or norm is None else type(norm).__name__
        self.act: Callable[[Tensor], Tensor] = act_fn
        self.exact_first_layer = exact_first_layer and not residual
        self.codebook_options = codebook

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
            VQConv(factory(cin, cout, i), num_nodes=num_nodes, codebook=codebook,
                   in_channels=cin, merge=merge, backward_approx=backward_approx,
                   constant_input=(i == 0 and self.exact_first_layer), validate=validate)
            for i, (cin, cout) in enumerate(sizes))
        num_norms = num_layers if residual else num_layers - 1
        norm_dims = [cin if residual else cout for cin, cout in sizes][:num_norms]
        self.norms = torch.nn.ModuleList(make_norm(d) for d in norm_dims)
        self.global_attention = global_attention
        self.attentions: Optional[torch.nn.ModuleList] = None
        # Per quantized layer, the last measured message error (see inference()).
        self.message_errors: list[Optional[float]] = []
        if global_attention:
            if not residual:
                raise ConfigError(f"'{name}': 'global_attention' needs the residual layout "
                                  f"(blocks of width hidden_channels); received residual=False")
            self.attentions = torch.nn.ModuleList(
                GlobalAttention(hidden_channels, hidden_channels, attention_heads,
                                num_nodes=num_nodes, codebook=codebook,
                                backward_approx=backward_approx, validate=validate)
                for _ in range(num_layers))

    @property
    def layers(self) -> list[VQConv]:
        """The :class:`VQConv` layers, in order."""
        return list(self.convs)  # type: ignore[arg-type]

    def attention(self, i: int) -> Optional[GlobalAttention]:
        """Block ``i``'s global attention layer (None without ``global_attention``)."""
        if self.attentions is None:
            return None
        layer = self.attentions[i]
        assert isinstance(layer, GlobalAttention)
        return layer

    @property
    def quantized_layers(self) -> list[QuantizedLayer]:
        """Every layer with a codebook slot: the convolutions, then the attention layers."""
        return [*self.layers, *(self.attentions or [])]  # type: ignore[list-item]

    @property
    def num_nodes(self) -> int:
        """N, the nodes of the graph the model was built for."""
        return self.layers[0].num_nodes

    def reset_parameters(self) -> None:
        for module in [*self.convs, *self.norms, *(self.attentions or []), self.lin_in,
                       self.lin_out]:
            if module is not None and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    # ------------------------------------------------------------------ layers
    def _features(self, x: Tensor) -> Tensor:
        """``x`` in the model's dtype: features may be stored in half precision (bf16 or
        fp16, ``TrainConfig.feature_dtype``) and are cast where they are read."""
        dtype = self.layers[0].compute_dtype
        return x if x.dtype == dtype or not x.is_floating_point() else x.to(dtype)

    def _input(self, x: Tensor) -> Tensor:
        x = self._features(x)
        if self.lin_in is None:
            return x
        return dropout(self.act(self.lin_in(x)), self.dropout, self.training)

    def _conv_input(self, i: int, h: Tensor) -> Tensor:
        return self.norms[i](h) if self.residual else h

    def _after_conv(self, i: int, h: Tensor, z: Tensor) -> Tensor:
        """Layer ``i``'s output from its input ``h`` and its convolution's output ``z``."""
        if self.residual:
            return h + dropout(self.act(z), self.dropout, self.training)
        if i == self.num_layers - 1:
            return z
        return dropout(self.act(self.norms[i](z)), self.dropout, self.training)

    def _output(self, h: Tensor) -> Tensor:
        return h if self.lin_out is None else self.lin_out(h)

    def forward(self, x: Tensor, graph: Union[VQGraph, Tensor], batch: Optional[Tensor] = None,
                edge_weight: Optional[Tensor] = None) -> Tensor:
        """VQ mini-batch forward (``batch`` given, ``x`` the batch's inputs), exact
        full-graph forward (``batch=None``), or PyG's forward on an ``edge_index``.

        Args:
            x: (b, F) inputs of the batch nodes, or (n, F) of all nodes of ``graph``.
            graph: the full graph (:class:`VQGraph`), or a (2, E) ``edge_index`` on which
                the wrapped PyG convolutions run as they are (e.g. a sampled subgraph).
            batch: (b,) node ids, or None.
            edge_weight: (E,) weights of an ``edge_index`` (for the convolutions that
                take them).

        Returns:
            (b, out_channels) or (n, out_channels).
        """
        return self._forward(x, graph, batch, edge_weight)

    def _forward(self, x: Tensor, graph: Union[VQGraph, Tensor], batch: Optional[Tensor],
                 edge_weight: Optional[Tensor] = None,
                 before_layer: Optional[Callable[[int, Tensor], None]] = None) -> Tensor:
        h = self._input(x)
        # an edge_index call with weights: its weighted graph is built once, for all layers
        graph_cache: Optional[dict[str, Any]] = {} if edge_weight is not None else None
        for i, conv in enumerate(self.layers):
            conv_in = self._conv_input(i, h)
            if before_layer is not None:
                before_layer(i, conv_in)
            z = conv(conv_in, graph, batch, edge_weight=edge_weight, graph_cache=graph_cache)
            attention = self.attention(i)
            if attention is not None:
                z = z + attention(conv_in, graph, batch)
            h = self._after_conv(i, h, z)
        return self._output(h)

    def _check_batch_size(self, batch_size: Any) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"'{type(self).__name__}': 'batch_size' must be an int >= 1, "
                              f"received {batch_size!r}")

    def _layerwise(self, x: Tensor, graph: VQGraph, batch_size: int, progress: bool,
                   before_layer: Optional[Callable[[int, Tensor], None]] = None) -> Tensor:
        """Exact outputs of all nodes, one layer at a time over chunks of nodes."""
        self._check_batch_size(batch_size)
        n = graph.num_nodes
        if self.lin_in is not None:
            h = torch.cat([self._input(x[s:s + batch_size]) for s in range(0, n, batch_size)])
        elif self.layers[0].reads_constant(x, graph):
            h = x  # its cached aggregation is reused, the raw rows cast chunk by chunk
        else:
            h = self._features(x)
        bar = tqdm(self.layers, desc="layer-wise inference", disable=not progress, leave=False)
        for i, conv in enumerate(bar):
            conv_in = self._conv_input(i, h)  # (N, D)
            if before_layer is not None:
                before_layer(i, conv_in)
            z = conv.inference_all(conv_in, graph, batch_size)  # (N, D_out), exact
            attention = self.attention(i)
            if attention is not None:
                z = z + attention.inference_all(conv_in, graph, batch_size)
            h = torch.cat([self._after_conv(i, h[s:s + batch_size], z[s:s + batch_size])
                           for s in range(0, n, batch_size)])
        return self._output(h)

    @torch.no_grad()
    def inference(self, x: Tensor, graph: VQGraph, batch_size: int = 4096,
                  progress: bool = False, message_error_nodes: Optional[Tensor] = None
                  ) -> Tensor:
        """Exact layer-wise inference of all nodes in chunks of ``batch_size`` nodes.

        Each layer is one sparse product per chunk of rows over all nodes' messages
        (:meth:`VQConv.inference_all`; the first layer's cached aggregation is reused when
        its input is constant). Memory is O(N * hidden) for a layer's inputs, messages and
        outputs, never the full graph's (E, D) per-edge messages.

        With ``message_error_nodes`` (a batch of node ids), the same pass also measures
        every initialised codebook's :meth:`VQConv.message_error` on that batch from the
        exact layer inputs, into :attr:`message_errors` (one entry per
        :attr:`quantized_layers` layer, None where there is no codebook).
        """
        if message_error_nodes is None:
            return self._layerwise(x, graph, batch_size, progress)
        errors: list[Optional[float]] = [None] * len(self.quantized_layers)
        index = {id(layer): i for i, layer in enumerate(self.quantized_layers)}

        def measure(i: int, conv_in: Tensor) -> None:
            for layer in (self.layers[i], self.attention(i)):
                if layer is not None and layer.initialized:
                    errors[index[id(layer)]] = layer.message_error(conv_in, graph,
                                                                   message_error_nodes)

        out = self._layerwise(x, graph, batch_size, progress, before_layer=measure)
        self.message_errors = errors
        return out

    @torch.no_grad()
    def vq_inference(self, x: Tensor, graph: VQGraph, batches: Sequence[Tensor],
                     refresh: int = 1, progress: bool = False) -> Tensor:
        """(N, out_channels) outputs by VQ mini-batch inference: :meth:`vq_batches`
        collected."""
        out = x.new_empty(graph.num_nodes, self.out_channels,
                          dtype=self.layers[0].compute_dtype)
        for batch, batch_out in self.vq_batches(x, graph, batches, refresh, progress):
            out[batch] = batch_out
        return out

    @torch.no_grad()
    def vq_batches(self, x: Tensor, graph: VQGraph, batches: Sequence[Tensor],
                   refresh: int = 1, progress: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """VQ mini-batch inference (in eval mode), one batch at a time: each batch exact
        within itself, its messages from outside through the codebooks.

        With ``refresh >= 1``, that many passes over ``batches`` first re-assign every node,
        at every quantized layer, to the codeword nearest its eval-mode input
        (:meth:`~vqgnn.nn.QuantizedLayer.reassign`; later batches already read the
        refreshed assignments of earlier ones); for the pass that yields the outputs, each
        used codeword's feature half is the mean of the eval-mode inputs assigned to it in
        the last refresh pass (restored afterwards). Training leaves each node's assignment
        from its last training step and codewords that average training-mode inputs
        (dropout-noised, older weights). The refreshed assignments stay in the model's
        tables, as a training epoch's would (the next training steps refresh their batches
        again).

        Memory: one batch's activations, messages and codewords, O(b (D + d) + K D) for b
        batch nodes of average degree d, plus (K, D) sums per quantized layer, whatever N
        is (the yielded outputs are the caller's; :meth:`vq_inference` gathers them into
        (N, C)).

        Args:
            x: (N, F) inputs of all nodes.
            graph: the full graph.
            batches: node-id tensors partitioning the nodes (e.g. METIS parts).
            refresh: re-assignment passes before the one that predicts.
            progress: a progress bar over the passes' batches.

        Yields:
            ``(batch, out)``: (b,) node ids and their (b, out_channels) outputs.
        """
        if not isinstance(refresh, int) or isinstance(refresh, bool) or refresh < 0:
            raise ConfigError(f"'{type(self).__name__}.vq_inference': 'refresh' must be an "
                              f"int >= 0, received {refresh!r}")
        was_training = self.training
        self.eval()
        saved: list[tuple[Tensor, Tensor]] = []
        try:
            for done in range(refresh):
                # The last refresh pass also sums each codeword's eval-mode inputs.
                sums: Optional[dict[int, tuple[Tensor, Tensor]]] = (
                    {} if done == refresh - 1 else None)
                for batch in tqdm(batches, desc="VQ inference (refresh)", disable=not progress,
                                  leave=False):
                    self._forward(x[batch], graph, batch, before_layer=functools.partial(
                        self._reassign, batch=batch, sums=sums))
                if sums is not None:
                    saved = self._refit(sums)
            for batch in tqdm(batches, desc="VQ inference", disable=not progress, leave=False):
                yield batch, self._forward(x[batch], graph, batch)
        finally:
            for embed, original in saved:  # the training codewords, as they were
                embed.copy_(original)
            self.train(was_training)

    def _reassign(self, i: int, conv_in: Tensor, batch: Tensor,
                  sums: Optional[dict[int, tuple[Tensor, Tensor]]]) -> None:
        for layer in (self.layers[i], self.attention(i)):
            if layer is None or not layer.initialized:
                continue
            codes, z = layer.reassign(batch, conv_in)  # z: (b, D_in), standardised
            if sums is not None:
                codes = codes.long()
                total, count = sums.setdefault(id(layer), (
                    z.new_zeros(layer.num_codewords, z.size(1)),
                    z.new_zeros(layer.num_codewords)))
                total.index_add_(0, codes, z)
                count.index_add_(0, codes, torch.ones_like(codes, dtype=z.dtype))

    def _refit(self, sums: dict[int, tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """For the predicting pass: each used codeword's feature half set to the mean of
        the eval-mode inputs assigned to it (the training codewords average dropout-noised
        inputs of older weights); returns what to restore."""
        saved = []
        for layer in self.quantized_layers:
            if id(layer) not in sums:
                continue
            total, count = sums[id(layer)]
            q = layer.quantizer
            assert q is not None
            embed = q.codebook.embed  # (K, D_in + D_agg)
            saved.append((embed, embed.clone()))
            used = (count > 0).unsqueeze(1)
            means = total / count.clamp_min(1.0).unsqueeze(1)
            embed[:, : q.feature_dim] = torch.where(used, means, embed[:, : q.feature_dim])
        return saved

    @torch.no_grad()
    def assignments(self) -> list[Tensor]:
        """A copy of every initialised quantized layer's (N,) codeword assignments (in
        :attr:`quantized_layers` order), for :meth:`restore_assignments`."""
        return [layer.quantizer.assignment.clone() for layer in self.quantized_layers
                if layer.initialized and layer.quantizer is not None]

    @torch.no_grad()
    def restore_assignments(self, saved: Sequence[Tensor]) -> None:
        """Write back assignments copied by :meth:`assignments` (e.g. to undo a VQ
        inference refresh); the attention layers' codeword counts follow."""
        layers = [layer for layer in self.quantized_layers if layer.initialized]
        if len(saved) != len(layers):
            raise ConfigError(f"'{type(self).__name__}.restore_assignments': 'saved' must "
                              f"hold one tensor per initialised quantized layer "
                              f"({len(layers)}), received {len(saved)}")
        if not saved:
            return
        nodes = torch.arange(self.num_nodes, device=saved[0].device)
        for layer, codes in zip(layers, saved):
            if codes.shape != (self.num_nodes,):
                raise ConfigError(f"'{type(self).__name__}.restore_assignments': each "
                                  f"saved tensor must have shape ({self.num_nodes},), "
                                  f"received {tuple(codes.shape)}")
            layer.write_assignments(nodes, codes, torch.ones_like(nodes, dtype=torch.bool))

    @torch.no_grad()
    def prepare(self, x: Tensor, graph: VQGraph, batch_size: int = 4096, seed: int = 0,
                progress: bool = False, init_nodes: Optional[int] = None) -> None:
        """Before the first epoch: exact first layer, and k-means on every layer's inputs.

        By default every layer's inputs are computed by exact layer-wise inference with the
        current weights (in eval mode); each codebook is initialised by k-means on them
        and every node assigned (gradient halves at their mean until the first update).
        That holds every node's layer inputs at once: O(N * hidden) memory.

        With ``init_nodes``, memory is bounded by the batch, ``init_nodes`` and K instead,
        whatever N is: block by block, k-means runs on the layer inputs of ``init_nodes``
        random nodes (sorted), computed by one VQ forward of those nodes (the blocks below
        already quantized: exact for a two-layer model with an exact first layer), then
        every node is assigned by its inputs in VQ passes over batches of ``batch_size``
        nodes (:meth:`~vqgnn.nn.QuantizedLayer.reassign`). One pass over the nodes per
        block with a codebook.

        Args:
            x: (N, F) inputs of all nodes.
            graph: the full graph.
            batch_size: nodes per chunk (exact) or per batch (``init_nodes``).
            seed: k-means seeds (and the node sample's).
            progress: a progress bar.
            init_nodes: nodes whose layer inputs the k-means sees (None: all, exactly).
        """
        if init_nodes is not None and (not isinstance(init_nodes, int)
                                       or isinstance(init_nodes, bool) or init_nodes < 1):
            raise ConfigError(f"'{type(self).__name__}.prepare': 'init_nodes' must be an int "
                              f">= 1 or None, received {init_nodes!r}")
        if self.exact_first_layer:
            self.layers[0].set_constant_input(x, graph)

        def init(i: int, conv_in: Tensor) -> None:
            if self.layers[i].has_codebook:
                self.layers[i].init_codebook(conv_in, seed=seed + i)
            attention = self.attention(i)
            if attention is not None:
                attention.init_codebook(conv_in, seed=seed + self.num_layers + i)

        was_training = self.training
        self.eval()
        try:
            if init_nodes is None:
                self._layerwise(x, graph, batch_size, progress, before_layer=init)
            else:
                self._bounded_init(x, graph, batch_size, seed, progress, init_nodes)
        finally:
            self.train(was_training)

    def _bounded_init(self, x: Tensor, graph: VQGraph, batch_size: int, seed: int,
                      progress: bool, init_nodes: int) -> None:
        """:meth:`prepare` with ``init_nodes``: memory bounded by the batch and K."""
        n = graph.num_nodes
        self._check_batch_size(batch_size)
        generator = torch.Generator().manual_seed(seed)
        sample = torch.randperm(n, generator=generator)[:init_nodes].sort().values.to(x.device)
        for i in range(self.num_layers):
            layers = [(layer, seed + i + j * self.num_layers) for j, layer in
                      enumerate((self.layers[i], self.attention(i)))
                      if layer is not None and layer.has_codebook]
            if not layers:
                continue
            inputs = self._inputs_at(i, x, graph, sample)
            for layer, layer_seed in layers:
                layer.init_codebook(inputs, node_idx=sample, seed=layer_seed)
            del inputs
            bar = tqdm(range(0, n, batch_size), desc=f"codebook init (block {i})",
                       disable=not progress, leave=False)
            for start in bar:
                batch = torch.arange(start, min(start + batch_size, n), device=x.device)
                inputs = self._inputs_at(i, x, graph, batch)
                for layer, _ in layers:
                    layer.reassign(batch, inputs)

    def _inputs_at(self, i: int, x: Tensor, graph: VQGraph, batch: Tensor) -> Tensor:
        """(b, D) block ``i``'s convolution inputs of ``batch`` by a VQ forward through the
        blocks below it (the blocks from ``i`` on are not run)."""
        captured: list[Tensor] = []

        def capture(j: int, conv_in: Tensor) -> None:
            if j == i:
                captured.append(conv_in)
                raise _StopForward

        try:
            self._forward(x[batch], graph, batch, before_layer=capture)
        except _StopForward:
            pass
        return captured[0]

    @torch.no_grad()
    def set_loss_nodes(self, mask: Optional[Tensor], graph: VQGraph) -> None:
        """Tell every quantized layer which nodes can have a non-zero gradient, from the
        nodes with a loss: at the last layer those nodes, one layer down also their
        neighbours (the sources of their messages), and so on (see
        :meth:`VQConv.set_gradient_nodes`). None: every node (the default).

        Args:
            mask: (N,) booleans of the nodes with a loss (e.g. ``train_mask``), or None.
            graph: the full graph.
        """
        if mask is None:
            for layer in self.quantized_layers:
                layer.set_gradient_nodes(None)
            return
        reach = mask.to(graph.device).bool()
        src, dst = graph.edge_index
        for i in reversed(range(self.num_layers)):
            self.layers[i].set_gradient_nodes(reach)
            grown = reach.clone()
            grown[src[reach[dst]]] = True  # j -> i with i reached: j's output matters
            attention = self.attention(i)
            if attention is not None:
                attention.set_gradient_nodes(reach)
                if bool(reach.any()):  # every node's input is a key of every query
                    grown = torch.ones_like(reach)
            reach = grown

    def set_all_reduce(self, fn: Optional[Callable[[Tensor], None]]) -> None:
        """Every quantized layer's :meth:`~vqgnn.nn.QuantizedLayer.set_all_reduce`."""
        for layer in self.quantized_layers:
            layer.set_all_reduce(fn)

    def update_codebooks(self, search: bool = True) -> int:
        """Apply every layer's captured (input, gradient) pairs; returns how many updated.
        ``search=False``: without the nearest-codeword search
        (:meth:`~vqgnn.nn.QuantizedLayer.update_codebook`)."""
        return sum(int(layer.update_codebook(search)) for layer in self.quantized_layers)

    def codebook_health(self) -> Optional[CodebookHealth]:
        """Mean usage, perplexity and quantisation error over the quantized layers."""
        healths = [c.health() for c in self.quantized_layers if c.initialized]
        if not healths:
            return None
        return CodebookHealth(
            usage=sum(h.usage for h in healths) / len(healths),
            perplexity=sum(h.perplexity for h in healths) / len(healths),
            quantization_error=sum(h.quantization_error for h in healths) / len(healths),
        )

    def __repr__(self) -> str:
        conv = type(self.layers[0].conv).__name__
        return (f"{type(self).__name__}({self.in_channels}, {self.hidden_channels}, "
                f"num_layers={self.num_layers}, out_channels={self.out_channels}, conv={conv}, "
                f"num_codewords={self.codebook_options.num_codewords}, "
                f"residual={self.residual}"
                + (", global_attention=True)" if self.global_attention else ")"))


class ResidualFFNGNN(VQGNN):
    r"""The architecture of the heterophilous-graph benchmark (Platonov et al., ICLR 2023),
    with every convolution a :class:`VQConv` with its own codebook.

    .. math::
        h^{(0)} = \mathrm{drop}(\mathrm{GELU}(W_\mathrm{in} x)), \qquad
        h^{(l)} = h^{(l-1)} + \mathrm{FFN}_l\big(\mathrm{conv}_l(\mathrm{LN}_l(h^{(l-1)}))\big),
        \qquad y = W_\mathrm{out}\, \mathrm{LN}(h^{(L)}),

    with :math:`\mathrm{FFN}(z) = \mathrm{drop}(W_2\, \mathrm{GELU}(\mathrm{drop}(W_1 z)))`
    (hidden width ``ffn_multiplier * hidden_channels``). No layer reads constant inputs, so
    every layer is quantized.

    Args:
        in_channels, hidden_channels, num_layers, out_channels: as :class:`VQGNN`
            (``num_layers`` residual blocks).
        ffn_multiplier: the feed-forward module's width over ``hidden_channels``.
        dropout: dropout probability (default 0.2, the benchmark's).
        act: activation (default ``'gelu'``).
        norm: the blocks' and the final normalisation (default ``'layer'``).
        **kwargs: the other :class:`VQGNN` options (``num_nodes``, ``conv``,
            ``num_codewords``, ``codebook``, ...).

    Example:
        >>> model = ResidualFFNGNN(data.num_features, 512, 3, 2, num_nodes=data.num_nodes,
        ...                        conv="sage", num_codewords=1024)
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int,
                 out_channels: int, *, ffn_multiplier: int = 1, dropout: float = 0.2,
                 act: Union[str, Callable[[Tensor], Tensor]] = "gelu", norm: NormSpec = "layer",
                 **kwargs: Any) -> None:
        if kwargs.get("residual") is False:
            raise ConfigError("'ResidualFFNGNN' is residual; received residual=False")
        kwargs.pop("residual", None)
        super().__init__(in_channels, hidden_channels, num_layers, out_channels,
                         dropout=dropout, act=act, norm=norm, residual=True, **kwargs)
        if not isinstance(ffn_multiplier, int) or ffn_multiplier < 1:
            raise ConfigError(f"'ResidualFFNGNN': 'ffn_multiplier' must be an int >= 1, "
                              f"received {ffn_multiplier!r}")
        self.ffn_multiplier = ffn_multiplier
        width = ffn_multiplier * hidden_channels
        self.ffns = torch.nn.ModuleList(
            torch.nn.ModuleList([torch.nn.Linear(hidden_channels, width),
                                 torch.nn.Linear(width, hidden_channels)])
            for _ in range(num_layers))
        self.final_norm = norm_factory(norm, "ResidualFFNGNN")(hidden_channels)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in [*self.ffns.modules(), self.final_norm]:
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()

    def _after_conv(self, i: int, h: Tensor, z: Tensor) -> Tensor:
        block = self.ffns[i]
        first: torch.nn.Module = block[0]  # type: ignore[index]
        second: torch.nn.Module = block[1]  # type: ignore[index]
        u = self.act(dropout(first(z), self.dropout, self.training))
        return h + dropout(second(u), self.dropout, self.training)

    def _output(self, h: Tensor) -> Tensor:
        assert self.lin_out is not None
        return self.lin_out(self.final_norm(h))
