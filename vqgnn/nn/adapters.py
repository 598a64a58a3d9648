r"""How :class:`~vqgnn.nn.VQConv` runs each kind of convolution on a mini-batch.

An adapter splits a convolution into the three steps VQ-GNN needs, using the wrapped
layer's own parameters (the layer is never edited):

* ``operator``: the full-graph convolution matrix :math:`C` (normalised on the full
  graph, once): :math:`\mathrm{agg}_i = \sum_j C_{ij}\, \mathrm{msg}(x_j)`;
* ``aggregate``: the batch's messages, from batch nodes (exact) and codewords;
* ``message``/``update``: the per-source transform and the per-target output.

:class:`LinearAdapter` subclasses cover convolutions whose messages are linear
in the source features (GCN, SAGE-mean/sum, GraphConv, GIN): messages sharing a
codeword are merged by summing their weights, one sparse product per layer, and
the backward approximation is exact given the codewords.
:class:`AttentionAdapter` subclasses (GAT, GATv2) fold a merged edge's multiplicity
``m`` into the softmax (``+ log m`` on the logit). :class:`GenericAdapter` runs any
other ``MessagePassing`` layer per edge on the graph of batch nodes and codewords.
New adapters are registered with :func:`register_adapter`.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv, GATv2Conv, GCNConv, GINConv, GraphConv, SAGEConv
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import softmax

from vqgnn.batching.graph import VQGraph
from vqgnn.batching.lowrank import (
    BatchEdges,
    BatchRows,
    SparseOperator,
    attention_aggregate,
    build_operator,
    lowrank_matmul,
    pair_logits,
    spmm,
    to_sparse_csr,
)
from vqgnn.errors import ConfigError, ConfigTypeError

LINEAR_AGGRS = ("add", "sum", "mean")


def _aggr_name(conv: MessagePassing) -> str:
    aggr = getattr(conv, "aggr", None)
    return aggr if isinstance(aggr, str) else type(aggr).__name__


def _check_linear_aggr(adapter: ConvAdapter, conv: MessagePassing) -> None:
    if _aggr_name(conv) not in LINEAR_AGGRS:
        raise ConfigError(f"'{type(adapter).__name__}' runs aggr in {LINEAR_AGGRS}, "
                          f"received {_aggr_name(conv)!r}")


def _plain_operator(graph: VQGraph, mean: bool, self_loops: bool = False,
                    weighted: bool = True) -> SparseOperator:
    """``C = A`` (sum) or ``D^{-1} A`` (mean), optionally with self-loops, on the full graph.

    With ``weighted`` and the graph's ``edge_weight``, ``A`` holds the weights and ``D`` the
    weighted in-degrees (self-loops weigh 1). Built once per graph and shared by every
    layer that asks for the same one.
    """
    weighted = weighted and graph.edge_weight is not None
    return graph.cached(("plain", mean, self_loops, weighted),
                        lambda: _build_plain_operator(graph, mean, self_loops, weighted))


def _build_plain_operator(graph: VQGraph, mean: bool, self_loops: bool,
                          weighted: bool) -> SparseOperator:
    n = graph.num_nodes
    edge_index = graph.edge_index
    if weighted:
        assert graph.edge_weight is not None
        value = graph.edge_weight.float()
    else:
        value = torch.ones(edge_index.size(1), device=edge_index.device)
    if self_loops:
        loop = torch.arange(n, device=edge_index.device)
        edge_index = torch.cat([edge_index, torch.stack([loop, loop])], dim=1)
        value = torch.cat([value, torch.ones(n, device=value.device)])
    if mean:
        deg = torch.zeros(n, device=value.device).index_add_(0, edge_index[1], value)
        value = value / deg.clamp_min(1e-12)[edge_index[1]]
    return build_operator(edge_index, value, n)


def _detached_linear(lin: Any, x: Tensor) -> Tensor:
    """``lin(x)`` with the layer's parameters detached (no gradient to them)."""
    bias = lin.bias.detach() if getattr(lin, "bias", None) is not None else None
    return F.linear(x, lin.weight.detach(), bias)


class ConvAdapter:
    """Base class: how one kind of ``MessagePassing`` layer runs on a VQ mini-batch."""

    #: Whether messages sharing a codeword can be merged into one.
    mergeable: bool = True

    def check(self, conv: MessagePassing) -> None:
        """Raise ``ValueError`` for options of ``conv`` the adapter cannot run exactly."""

    def in_channels(self, conv: MessagePassing) -> Optional[int]:
        """The layer's input channels, when the layer tells them."""
        value = getattr(conv, "in_channels", None)
        if isinstance(value, (tuple, list)):
            value = value[0]
        return value if isinstance(value, int) and value > 0 else None

    def agg_channels(self, conv: MessagePassing, in_channels: int) -> int:
        """Channels of the aggregated output, where the gradient is captured."""
        raise NotImplementedError

    def operator(self, conv: MessagePassing, graph: VQGraph) -> SparseOperator:
        """The full-graph convolution matrix (computed once per graph)."""
        raise NotImplementedError

    def forward(self, conv: MessagePassing, x_src: Tensor, x_dst: Tensor,
                edges: BatchEdges) -> tuple[Tensor, Tensor]:
        """Run the layer for the batch.

        Args:
            conv: the wrapped layer.
            x_src: (b + K, D_in) batch inputs followed by codeword features.
            x_dst: (b, D_in) batch inputs.
            edges: messages into the batch.

        Returns:
            ``(out, agg)``: (b, D_out) outputs and (b, D_agg) aggregated messages, the
            tensor ``out`` is computed from (gradients are captured there).
        """
        raise NotImplementedError

    def backward_message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        """The message batch nodes send, with the layer's parameters detached: (b, D_agg)."""
        raise NotImplementedError


class LinearAdapter(ConvAdapter):
    r"""Convolutions :math:`\mathrm{out}_i = u(\sum_j C_{ij}\, \mathrm{msg}(x_j), x_i)`."""

    def message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return x

    def message_is_linear_map(self, conv: MessagePassing) -> bool:
        """Whether ``message(C X) == C message(X)`` (then ``C X`` can be precomputed)."""
        return True

    def update(self, conv: MessagePassing, agg: Tensor, x_dst: Tensor) -> Tensor:
        raise NotImplementedError

    def backward_message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return x

    def agg_channels(self, conv: MessagePassing, in_channels: int) -> int:
        return in_channels

    def forward(self, conv: MessagePassing, x_src: Tensor, x_dst: Tensor,
                edges: BatchEdges) -> tuple[Tensor, Tensor]:
        msg = self.message(conv, x_src)  # (b + K, D_agg)
        agg = aggregate(edges, msg)  # (b, D_agg)
        return self.update(conv, agg, x_dst), agg

    def forward_lowrank(self, conv: MessagePassing, x_dst: Tensor, features: Tensor,
                        rows: BatchRows, low: Any) -> tuple[Tensor, Tensor]:
        """The batch from its in-batch CSR part (``rows``) and its (b, K) low-rank part
        ``low`` (dense, or a :class:`~vqgnn.batching.lowrank.SparseLowRank`) over the
        codeword ``features`` (K, D_in): ``(out, agg)``."""
        agg = (rows.inner_matmul(self.message(conv, x_dst))
               + lowrank_matmul(low, self.message(conv, features)))  # (b, D_agg)
        return self.update(conv, agg, x_dst), agg


def aggregate(edges: BatchEdges, msg: Tensor) -> Tensor:
    r""":math:`\mathrm{agg}_i = \sum_{(i, s)} w_{is}\, \mathrm{msg}_s`.

    Merged edges (sorted by row, no duplicates) go through one sparse CSR product;
    per-edge lists (``count`` all 1, duplicates allowed) through gather and scatter.
    """
    if edges.merged:
        return spmm(to_sparse_csr(edges).to(msg.dtype), msg)
    out = msg.new_zeros(edges.num_rows, msg.size(1))
    return out.index_add(0, edges.row, msg[edges.col] * edges.value.to(msg.dtype).unsqueeze(1))


class GCNAdapter(LinearAdapter):
    r""":class:`~torch_geometric.nn.GCNConv`.

    :math:`C = \tilde D^{-1/2} \tilde A \tilde D^{-1/2}` on the full graph (PyG's ``gcn_norm``).
    """

    def agg_channels(self, conv: MessagePassing, in_channels: int) -> int:
        return conv.out_channels

    def operator(self, conv: MessagePassing, graph: VQGraph) -> SparseOperator:
        if not conv.normalize:
            return _plain_operator(graph, mean=False)

        def build() -> SparseOperator:
            edge_index, value = gcn_norm(graph.edge_index, graph.edge_weight, graph.num_nodes,
                                         conv.improved, conv.add_self_loops)
            return build_operator(edge_index, value, graph.num_nodes)

        return graph.cached(("gcn", conv.improved, conv.add_self_loops), build)

    def message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return conv.lin(x)

    def backward_message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return _detached_linear(conv.lin, x)

    def update(self, conv: MessagePassing, agg: Tensor, x_dst: Tensor) -> Tensor:
        return agg + conv.bias if conv.bias is not None else agg


def _weight_only(lin: Any, x: Tensor, detach: bool = False) -> Tensor:
    """``x W^T`` of a linear layer, without its bias (optionally with ``W`` detached)."""
    weight = lin.weight.detach() if detach else lin.weight
    return F.linear(x, weight)


def _add_bias(out: Tensor, lin: Any) -> Tensor:
    return out + lin.bias if getattr(lin, "bias", None) is not None else out


class SAGEAdapter(LinearAdapter):
    r""":class:`~torch_geometric.nn.SAGEConv` with ``mean`` or ``sum`` aggregation.

    ``lin_l`` is linear, so it is moved before the aggregation (its bias after it):
    :math:`\mathrm{agg}_i = \sum_j C_{ij} W_l x_j`. The aggregated output, where the
    gradient is captured, then has ``out_channels`` dimensions, not ``in_channels``: the
    codewords' gradient halves are as small as GCN's and weigh less in the assignment.
    """

    def check(self, conv: MessagePassing) -> None:
        _check_linear_aggr(self, conv)

    def agg_channels(self, conv: MessagePassing, in_channels: int) -> int:
        return conv.out_channels

    def operator(self, conv: MessagePassing, graph: VQGraph) -> SparseOperator:
        return _plain_operator(graph, mean=_aggr_name(conv) == "mean")

    def _projected(self, conv: MessagePassing, x: Tensor, detach: bool) -> Tensor:
        if not (conv.project and hasattr(conv, "lin")):
            return x
        return (_detached_linear(conv.lin, x) if detach else conv.lin(x)).relu()

    def message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return _weight_only(conv.lin_l, self._projected(conv, x, False))

    def message_is_linear_map(self, conv: MessagePassing) -> bool:
        return not (conv.project and hasattr(conv, "lin"))

    def backward_message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return _weight_only(conv.lin_l, self._projected(conv, x, True), detach=True)

    def update(self, conv: MessagePassing, agg: Tensor, x_dst: Tensor) -> Tensor:
        out = _add_bias(agg, conv.lin_l)
        if conv.root_weight:
            out = out + conv.lin_r(x_dst)
        return F.normalize(out, p=2.0, dim=-1) if conv.normalize else out


class GraphConvAdapter(LinearAdapter):
    """:class:`~torch_geometric.nn.GraphConv` with ``add``/``sum``/``mean`` aggregation.

    As for SAGE, ``lin_rel`` is applied before the aggregation (its bias after it).
    """

    def check(self, conv: MessagePassing) -> None:
        _check_linear_aggr(self, conv)

    def agg_channels(self, conv: MessagePassing, in_channels: int) -> int:
        return conv.out_channels

    def operator(self, conv: MessagePassing, graph: VQGraph) -> SparseOperator:
        return _plain_operator(graph, mean=_aggr_name(conv) == "mean")

    def message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return _weight_only(conv.lin_rel, x)

    def backward_message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return _weight_only(conv.lin_rel, x, detach=True)

    def update(self, conv: MessagePassing, agg: Tensor, x_dst: Tensor) -> Tensor:
        return _add_bias(agg, conv.lin_rel) + conv.lin_root(x_dst)


class GINAdapter(LinearAdapter):
    r""":class:`~torch_geometric.nn.GINConv`: :math:`h((1+\epsilon) x_i + \sum_j x_j)`."""

    def in_channels(self, conv: MessagePassing) -> Optional[int]:
        for module in conv.nn.modules():
            if isinstance(module, torch.nn.Linear):
                return module.in_features
            size = getattr(module, "in_channels", None)
            if isinstance(size, int) and size > 0 and module is not conv.nn:
                return size
        return None

    def operator(self, conv: MessagePassing, graph: VQGraph) -> SparseOperator:
        return _plain_operator(graph, mean=False)

    def update(self, conv: MessagePassing, agg: Tensor, x_dst: Tensor) -> Tensor:
        return conv.nn(agg + (1 + conv.eps) * x_dst)


class AttentionAdapter(ConvAdapter):
    r"""Attention convolutions: softmax over a target's incoming messages.

    A merged edge standing for ``m`` neighbours sharing a codeword adds :math:`\log m`
    to its logit, so that the softmax equals the one over the original neighbours.
    The operator's values are :math:`1/\deg(i)`: the backward approximation uses
    uniform attention weights for the messages batch nodes send out of the batch
    (it neglects the attention logits and the softmax normaliser's dependence on the
    batch node's features; see the class docs of :class:`~vqgnn.nn.VQConv`).
    :meth:`forward` takes edges sorted by row (``batch_edges`` and ``gather_rows`` give
    them so) and aggregates with :func:`~vqgnn.batching.lowrank.attention_aggregate`.
    """

    def check(self, conv: MessagePassing) -> None:
        if getattr(conv, "edge_dim", None) is not None:
            raise ConfigError(f"'{type(self).__name__}' does not support edge features "
                              f"(edge_dim={conv.edge_dim}) of '{type(conv).__name__}'")

    def agg_channels(self, conv: MessagePassing, in_channels: int) -> int:
        return conv.heads * conv.out_channels

    def operator(self, conv: MessagePassing, graph: VQGraph) -> SparseOperator:
        return _plain_operator(graph, mean=True, self_loops=conv.add_self_loops,
                               weighted=False)

    def logits(self, conv: MessagePassing, x_src: Tensor, x_dst: Tensor,
               edges: BatchEdges) -> tuple[Tensor, Tensor]:
        """Per-edge logits (M, H) and source values (b + K, H, C)."""
        raise NotImplementedError

    def forward(self, conv: MessagePassing, x_src: Tensor, x_dst: Tensor,
                edges: BatchEdges) -> tuple[Tensor, Tensor]:
        logit, value = self.logits(conv, x_src, x_dst, edges)  # (M, H), (b + K, H, C)
        logit = logit + torch.log(edges.multiplicity).to(logit.dtype).unsqueeze(1)
        alpha = softmax(logit, edges.row, num_nodes=edges.num_rows)
        alpha = F.dropout(alpha, p=conv.dropout, training=conv.training)
        agg = attention_aggregate(edges, alpha, value).view(edges.num_rows, -1)  # (b, H * C)
        out = agg if conv.concat else agg.view(-1, conv.heads, conv.out_channels).mean(1)
        if getattr(conv, "res", None) is not None:
            out = out + conv.res(x_dst)
        if conv.bias is not None:
            out = out + conv.bias
        return out, agg


class GATAdapter(AttentionAdapter):
    """:class:`~torch_geometric.nn.GATConv`."""

    def _lins(self, conv: MessagePassing) -> tuple[torch.nn.Module, torch.nn.Module]:
        if conv.lin is not None:
            return conv.lin, conv.lin
        return conv.lin_src, conv.lin_dst

    def logits(self, conv: MessagePassing, x_src: Tensor, x_dst: Tensor,
               edges: BatchEdges) -> tuple[Tensor, Tensor]:
        heads, channels = conv.heads, conv.out_channels
        lin_src, lin_dst = self._lins(conv)
        h_src = lin_src(x_src).view(-1, heads, channels)
        h_dst = lin_dst(x_dst).view(-1, heads, channels)
        a_src = (h_src * conv.att_src).sum(-1)  # (b + K, H)
        a_dst = (h_dst * conv.att_dst).sum(-1)  # (b, H)
        logit = F.leaky_relu(a_src[edges.col] + a_dst[edges.row], conv.negative_slope)
        return logit, h_src

    def backward_message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return _detached_linear(self._lins(conv)[0], x)


class GATv2Adapter(AttentionAdapter):
    """:class:`~torch_geometric.nn.GATv2Conv`."""

    def logits(self, conv: MessagePassing, x_src: Tensor, x_dst: Tensor,
               edges: BatchEdges) -> tuple[Tensor, Tensor]:
        heads, channels = conv.heads, conv.out_channels
        h_src = conv.lin_l(x_src).view(-1, heads, channels)
        h_dst = conv.lin_r(x_dst).view(-1, heads, channels)
        # By chunks of edges: no (M, H, C) tensor is made or kept for backward.
        logit = pair_logits(h_src, h_dst, edges.row, edges.col, conv.att, conv.negative_slope)
        return logit, h_src

    def backward_message(self, conv: MessagePassing, x: Tensor) -> Tensor:
        return _detached_linear(conv.lin_l, x)


class GenericAdapter(ConvAdapter):
    r"""Any ``MessagePassing`` layer, run per edge by the layer itself.

    The layer is called on the graph of the ``b`` batch nodes followed by the ``K``
    codewords, with every message into a batch node (``col -> row``); only the first
    ``b`` outputs are kept. The forward pass is exact given the codewords whenever the
    layer normalises by each target's incoming messages (sum, mean, max, softmax
    attention); a layer that normalises by the *source's* degree (as GCN does) needs
    an adapter of its own (:func:`register_adapter`). The aggregated output is captured
    by a ``MessagePassing`` aggregate hook. The backward approximation calls the layer
    on the batch nodes' messages to their out-of-batch neighbours (parameters detached);
    it is exact for sum and mean aggregations of messages linear in the source features.
    """

    mergeable = False

    def agg_channels(self, conv: MessagePassing, in_channels: int) -> int:
        probe = _probe_copy(conv)
        x = _probe_features(probe, 2, in_channels)
        edge_index = torch.tensor([[0], [1]], device=x.device)
        with torch.no_grad(), _plain_call(probe, in_channels):
            agg = run_capturing_aggregate(probe, x, edge_index, probe.__call__)[1]
        return agg.size(-1)

    def check_locality(self, conv: MessagePassing, in_channels: int) -> None:
        """Refuse a layer whose output at a node depends on more than the messages into it.

        The generic path runs the layer on the batch nodes and the codewords, with every
        message into a batch node; a codeword has no edges of its own there. A layer that
        also reads its sources' edges (a normalisation by the source's degree, as GCN's;
        several hops per call, as ``SGConv(K=2)``) would compute wrong outputs even with
        exact codewords, silently. A layer that caches its graph between calls
        (``cached=True``) is refused too: every batch is another graph. The probe, on a
        copy of the layer in eval mode: its output at node 0 with the edges 1 -> 0 and
        0 -> 1, against the same with edges into and out of node 1 and out of node 0 added;
        a layer that normalises by its targets' incoming messages gives the same output at
        node 0 both times. A layer whose eval-mode output is random is not judged (a
        warning says so).
        """
        name = type(conv).__name__
        if getattr(conv, "cached", False) is True:
            raise ConfigError(f"'VQConv': '{name}' was built with cached=True, which keeps "
                              f"the first graph it sees; VQConv calls it on another graph "
                              f"every batch: build it with cached=False")
        probe = _probe_copy(conv)
        x = _probe_features(probe, 5, in_channels)
        alone = torch.tensor([[1, 0], [0, 1]], device=x.device)
        more = torch.tensor([[1, 0, 2, 3, 1, 0], [0, 1, 1, 1, 4, 3]], device=x.device)
        with torch.no_grad(), _plain_call(probe, in_channels):
            first, again, second = (probe(x, alone)[0], probe(x, alone)[0],
                                    probe(x, more)[0])
        if not torch.equal(first, again):
            warnings.warn(f"'VQConv': '{name}' gives different outputs for the same input in "
                          f"eval mode, so whether its output at a node depends only on the "
                          f"messages into it (what VQConv's generic path needs) was not "
                          f"checked", stacklevel=3)
            return
        if not torch.allclose(first, second, rtol=1e-4, atol=1e-6):
            raise ConfigError(
                f"'VQConv': the output of '{name}' at a node depends on more than the "
                f"messages into it (on its neighbours' own edges: a normalisation by the "
                f"source's degree, as GCN's, or several hops per call); VQConv's generic "
                f"path runs the layer on the batch nodes and codewords, where those edges are "
                f"unknown, so '{name}' would compute wrong outputs even with exact codewords. "
                f"Register an adapter whose operator carries its normalisation "
                f"(vqgnn.nn.register_adapter), or use a one-hop layer normalised by its "
                f"targets' incoming messages (GCNConv, SAGEConv, GraphConv, GINConv, GATConv "
                f"and GATv2Conv have adapters)")

    def operator(self, conv: MessagePassing, graph: VQGraph) -> SparseOperator:
        return _plain_operator(graph, mean=False)

    def forward(self, conv: MessagePassing, x_src: Tensor, x_dst: Tensor,
                edges: BatchEdges) -> tuple[Tensor, Tensor]:
        edge_index = torch.stack([edges.col, edges.row])
        b = edges.num_rows
        out, agg = run_capturing_aggregate(conv, x_src, edge_index, conv.__call__, rows=b)
        return out[:b], agg


def _probe_copy(conv: MessagePassing) -> MessagePassing:
    """A copy of ``conv`` in eval mode for the probes: calling it changes nothing of the
    user's layer (modes, running statistics, caches, lazy parameters)."""
    probe = copy.deepcopy(conv)
    probe.eval()
    return probe


def _probe_features(conv: MessagePassing, n: int, in_channels: int) -> Tensor:
    """(n, in_channels) fixed random features on the layer's device, in its dtype."""
    param = next(conv.parameters(), None)
    usable = (param is not None and not isinstance(
        param, torch.nn.parameter.UninitializedParameter) and param.is_floating_point())
    dtype = param.dtype if usable and param is not None else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(n, in_channels, generator=torch.Generator().manual_seed(0), dtype=dtype)
    return x.to(device)


@contextmanager
def _plain_call(conv: MessagePassing, in_channels: Optional[int] = None) -> Iterator[None]:
    """Turns the ``TypeError`` of a layer that ``forward(x, edge_index)`` cannot run, and
    the shape error of a probe with the wrong ``in_channels``, into a
    :class:`~vqgnn.errors.ConfigError` saying what it needs."""
    try:
        yield
    except TypeError as err:  # e.g. a forward that needs edge_attr
        raise ConfigError(f"'VQConv' runs '{type(conv).__name__}' as forward(x, "
                          f"edge_index), which failed ({err}); a layer that needs more "
                          f"inputs (edge attributes) needs an adapter of its own "
                          f"(register_adapter)") from None
    except RuntimeError as err:
        text = str(err)
        if in_channels is None or not any(word in text for word in ("shape", "size")):
            raise
        # e.g. "mat1 and mat2 shapes cannot be multiplied (5x12 and 16x8)"
        raise ConfigError(f"'VQConv': '{type(conv).__name__}' failed on a probe of "
                          f"{in_channels} input channels ({text}); is 'in_channels' "
                          f"({in_channels}) the layer's input width?") from err


def run_capturing_aggregate(conv: MessagePassing, x: Tensor, edge_index: Tensor,
                            call: Callable[..., Tensor], rows: Optional[int] = None
                            ) -> tuple[Tensor, Tensor]:
    """``call(x, edge_index)`` and the first ``rows`` rows of ``conv``'s (last) aggregate.

    The captured rows lie on the output's autograd path (a hook on them sees the
    gradient that reaches the aggregated output).
    """
    captured: list[Tensor] = []

    def hook(module: MessagePassing, inputs: tuple, output: Tensor) -> Tensor:
        flat = output.reshape(output.size(0), -1)
        head = flat if rows is None else flat[:rows]
        captured.append(head)
        if rows is not None:
            flat = torch.cat([head, flat[rows:]], dim=0)
        return flat.view_as(output)

    handle = conv.register_aggregate_forward_hook(hook)
    try:
        out = call(x, edge_index)
    finally:
        handle.remove()
    if not captured:
        raise ConfigError(f"'{type(conv).__name__}' did not call 'aggregate' on an edge_index "
                          f"input; VQConv needs its aggregated output")
    return out, captured[-1]


_ADAPTERS: dict[type, Callable[[], ConvAdapter]] = {
    GCNConv: GCNAdapter,
    SAGEConv: SAGEAdapter,
    GraphConv: GraphConvAdapter,
    GINConv: GINAdapter,
    GATConv: GATAdapter,
    GATv2Conv: GATv2Adapter,
}


def register_adapter(conv_type: type, factory: Callable[[], ConvAdapter]) -> None:
    """Use ``factory()`` for every layer of exactly ``conv_type``.

    Example:
        >>> register_adapter(MyConv, MyConvAdapter)
    """
    if not (isinstance(conv_type, type) and issubclass(conv_type, MessagePassing)):
        raise ConfigTypeError(f"register_adapter: 'conv_type' must be a MessagePassing subclass, "
                              f"received {conv_type!r}")
    _ADAPTERS[conv_type] = factory


def adapter_for(conv: MessagePassing) -> ConvAdapter:
    """The adapter of ``conv``'s exact type; :class:`GenericAdapter` otherwise.

    Known layers with an option their adapter cannot run (e.g. ``SAGEConv`` with
    ``aggr='max'``) also fall back to the generic per-edge adapter.
    """
    factory = _ADAPTERS.get(type(conv))
    if factory is None:
        return GenericAdapter()
    adapter = factory()
    try:
        adapter.check(conv)
    except ValueError:
        if isinstance(adapter, AttentionAdapter):
            raise
        return GenericAdapter()
    return adapter


__all__ = [
    "ConvAdapter", "LinearAdapter", "AttentionAdapter", "GenericAdapter", "GCNAdapter",
    "SAGEAdapter", "GraphConvAdapter", "GINAdapter", "GATAdapter", "GATv2Adapter",
    "adapter_for", "register_adapter", "aggregate",
]
