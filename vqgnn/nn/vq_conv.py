"""``VQConv``: any PyG ``MessagePassing`` layer, trained on mini-batches with every message."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor
from torch.func import functional_call
from torch_geometric.nn.conv import MessagePassing

from vqgnn.batching.graph import VQGraph
from vqgnn.batching.lowrank import (
    BackwardEdges,
    BatchEdges,
    SparseOperator,
    backward_edges,
    batch_edges,
    csr_matmul,
    gather_rows,
    lowrank_backward,
)
from vqgnn.nn.adapters import (
    LINEAR_AGGRS,
    ConvAdapter,
    GenericAdapter,
    LinearAdapter,
    _aggr_name,
    adapter_for,
    run_capturing_aggregate,
)
from vqgnn.quantize.codebook import CodebookHealth
from vqgnn.quantize.quantizer import FeatureGradientQuantizer


class _InjectGradient(torch.autograd.Function):
    """Identity on ``out``; in backward, adds the constant ``extra`` as ``target``'s gradient.

    This is the gradient of the surrogate :math:`\\langle target, stopgrad(extra) \\rangle`
    without adding its value to the loss.
    """

    @staticmethod
    def forward(ctx: Any, out: Tensor, target: Tensor, extra: Tensor) -> Tensor:
        ctx.save_for_backward(extra)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        (extra,) = ctx.saved_tensors
        return grad_out, extra, None


class Captured(NamedTuple):
    """A training batch's node ids, layer inputs, and gradients at the aggregated output."""

    batch: Tensor
    x: Tensor
    grad: Tensor


class _Pending:
    """A batch's (nodes, inputs) waiting for the gradient at its aggregated output."""

    def __init__(self, batch: Tensor, x: Tensor) -> None:
        self.batch = batch
        self.x = x
        self.grad: Optional[Tensor] = None

    def capture(self, grad: Tensor) -> None:
        self.grad = grad.detach()


class VQConv(torch.nn.Module):
    r"""Wraps a PyG ``MessagePassing`` layer for VQ-GNN mini-batch training.

    For a batch ``B`` of nodes with layer inputs :math:`X_B`:

    * messages between batch nodes are exact; a message from an out-of-batch
      neighbour ``j`` uses the feature part of its codeword :math:`v_{c(j)}`; messages
      sharing a codeword are merged where the layer allows (see
      :mod:`vqgnn.nn.adapters`): :math:`C_{B,:} X \approx C_{B,B} X_B + (C_{B,\sim B} R) V`;
    * normalisations (GCN's degrees, means, attention softmax) use the full graph;
    * in training, back-propagation adds to the batch nodes the gradient messages
      their out-of-batch neighbours ``j`` would send, from the gradient parts of the
      codewords: the gradient of :math:`\sum_j \langle \mathrm{out}_j(X_B),
      \mathrm{stopgrad}(g_{c(j)}) \rangle` w.r.t. :math:`X_B`, with the layer's
      parameters detached (no gradient to them; no value added to the loss);
    * the gradient of the loss at the batch's aggregated output is captured, and
      :meth:`update_codebook` (called after ``backward()``, or automatically at the next
      training step) moves the codebook by EMA k-means and refreshes the batch nodes'
      assignments.

    For layers whose messages are linear in the source features (GCN, SAGE with mean
    or sum, GraphConv, GIN), the backward term is exact given the codewords. For
    attention layers (GAT, GATv2) it uses uniform weights :math:`1/\deg(j)` in place of
    :math:`\alpha_{ji}`: it neglects the attention logits and the dependence of the
    softmax normaliser of ``j`` on the batch node's features. For other layers
    (:class:`~vqgnn.nn.adapters.GenericAdapter`) the layer itself computes the messages
    to out-of-batch neighbours, exact for sum/mean aggregation of linear messages.

    Calling the layer without ``batch`` runs it on the full graph, exactly: through the
    adapter (one sparse product per layer for linear layers; tested equal to the wrapped
    layer) or, for layers without an adapter of their own, the wrapped layer itself.
    With ``batch`` in ``eval()`` mode it runs VQ-approximated mini-batch inference.

    Args:
        conv: the layer to wrap (a ``MessagePassing`` instance; it is not modified).
        num_codewords: K, codewords of this layer's codebook.
        num_nodes: N, nodes of the graph (size of the assignment table).
        in_channels: the layer's input channels, when the layer does not tell them.
        merge: merge messages sharing a codeword where the layer allows it.
        backward_approx: add the approximated gradient messages in backward.
        adapter: how to run ``conv`` (default: by its type, see
            :func:`~vqgnn.nn.adapters.adapter_for`).
        **quantizer_kwargs: passed to :class:`~vqgnn.quantize.FeatureGradientQuantizer`
            (``decay``, ``dead_threshold``, ``momentum``, ``kmeans_backend``, ...).

    Example:
        >>> graph = VQGraph(data.edge_index, data.num_nodes)
        >>> layer = VQConv(GCNConv(16, 32), num_codewords=256, num_nodes=data.num_nodes)
        >>> layer.init_codebook(data.x)  # k-means on the layer's inputs
        >>> out_b = layer(data.x[batch], graph, batch)  # (b, 32)
        >>> loss(out_b).backward(); layer.update_codebook()
    """

    def __init__(
        self,
        conv: MessagePassing,
        num_codewords: int,
        num_nodes: int,
        *,
        in_channels: Optional[int] = None,
        merge: bool = True,
        backward_approx: bool = True,
        adapter: Optional[ConvAdapter] = None,
        **quantizer_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(conv, MessagePassing):
            raise TypeError(f"'VQConv' wraps a torch_geometric MessagePassing layer, "
                            f"received {type(conv).__name__}")
        if not isinstance(num_codewords, int) or num_codewords < 1:
            raise ValueError(f"'VQConv': 'num_codewords' must be an int >= 1, "
                             f"received {num_codewords!r}")
        self.conv = conv
        self.adapter = adapter if adapter is not None else adapter_for(conv)
        self.adapter.check(conv)
        in_channels = in_channels if in_channels is not None else self.adapter.in_channels(conv)
        if in_channels is None:
            raise ValueError(f"'VQConv' cannot read the input channels of "
                             f"'{type(conv).__name__}'; pass 'in_channels'")
        if (backward_approx and isinstance(self.adapter, GenericAdapter)
                and _aggr_name(conv) not in LINEAR_AGGRS):
            raise ValueError(f"'VQConv': the backward approximation of "
                             f"'{type(conv).__name__}' needs aggr in {LINEAR_AGGRS}, received "
                             f"{_aggr_name(conv)!r}; pass backward_approx=False or register "
                             f"an adapter")
        self.in_channels = in_channels
        self.merge = merge and self.adapter.mergeable
        self.backward_approx = backward_approx
        self.quantizer = FeatureGradientQuantizer(
            num_nodes, in_channels, self.adapter.agg_channels(conv, in_channels),
            num_codewords, **quantizer_kwargs)
        self._operator: Optional[tuple[VQGraph, SparseOperator]] = None
        self._pending: Optional[_Pending] = None
        self._constant: Optional[tuple[VQGraph, Tensor, Optional[Tensor]]] = None

    @property
    def num_codewords(self) -> int:
        return self.quantizer.num_codewords

    @property
    def num_nodes(self) -> int:
        return self.quantizer.num_nodes

    def reset_parameters(self) -> None:
        """Reset the wrapped layer and forget the codebook."""
        if hasattr(self.conv, "reset_parameters"):
            self.conv.reset_parameters()
        self.quantizer.reset_parameters()
        self._pending = None

    def operator(self, graph: VQGraph) -> SparseOperator:
        """The full-graph convolution matrix of this layer (computed once per graph)."""
        if self._operator is None or self._operator[0] is not graph:
            self._operator = (graph, self.adapter.operator(self.conv, graph))
        return self._operator[1]

    @torch.no_grad()
    def init_codebook(self, x: Tensor, node_idx: Optional[Tensor] = None, seed: int = 0) -> None:
        """k-means initialisation from the layer inputs of ``node_idx`` (default: all nodes).

        The gradient halves start at their running mean (no gradient is known yet).
        """
        if node_idx is None:
            node_idx = torch.arange(x.size(0), device=x.device)
        self.quantizer.initialize(node_idx, x, None, seed=seed)

    def health(self) -> CodebookHealth:
        """Codebook usage, perplexity and relative quantisation error."""
        return self.quantizer.health()

    def forward(self, x: Tensor, graph: VQGraph, batch: Optional[Tensor] = None) -> Tensor:
        """Run the layer.

        Args:
            x: (N, D_in) inputs of all nodes when ``batch`` is None, else (b, D_in)
                inputs of the batch nodes, in ``batch``'s order.
            graph: the full graph.
            batch: (b,) distinct node ids, or None for exact full-graph execution.

        Returns:
            (N, D_out) or (b, D_out) outputs.
        """
        if not isinstance(graph, VQGraph):
            raise TypeError(f"'VQConv': 'graph' must be a VQGraph, received "
                            f"{type(graph).__name__}")
        if batch is None:
            if x.size(0) != graph.num_nodes:
                raise ValueError(f"'VQConv': full-graph 'x' must have {graph.num_nodes} rows, "
                                 f"received {x.size(0)}")
            if isinstance(self.adapter, GenericAdapter):
                return self.conv(x, graph.edge_index)
            return self._full(x, graph)
        return self._forward_batch(x, graph, batch)

    def _full(self, x: Tensor, graph: VQGraph) -> Tensor:
        """The whole graph through the adapter: one sparse product per layer for linear
        layers (PyG's edge-wise layers materialise an (E, D) message tensor instead)."""
        op = self.operator(graph)
        n = graph.num_nodes
        row = graph.cached(("rows", id(op)), lambda: torch.repeat_interleave(
            torch.arange(n, device=x.device), op.rowptr.diff()))
        edges = BatchEdges(row, op.col, op.value, torch.ones_like(op.value), n, n, merged=True)
        return self.adapter.forward(self.conv, x, x, edges)[0]

    def _check_batch(self, x: Optional[Tensor], graph: VQGraph, batch: Tensor) -> None:
        graph.check_batch(batch, "VQConv")
        if graph.num_nodes != self.num_nodes:
            raise ValueError(f"'VQConv' was built for num_nodes={self.num_nodes}, the graph "
                             f"has {graph.num_nodes}")
        b = batch.numel()
        if x is not None and (x.dim() != 2 or x.shape != (b, self.in_channels)):
            raise ValueError(f"'VQConv': 'x' must have shape ({b}, {self.in_channels}) for a "
                             f"batch of {b} nodes, received {tuple(x.shape)}")

    def _forward_batch(self, x: Tensor, graph: VQGraph, batch: Tensor) -> Tensor:
        self._check_batch(x, graph, batch)
        if self._constant is not None:
            return self._forward_constant(x, graph, batch)
        b = batch.numel()
        training = self.training and torch.is_grad_enabled()
        if training:
            self.update_codebook()
            if not x.requires_grad:  # the gradient at the aggregated output is needed
                x = x.detach().requires_grad_()
        quantizer = self.quantizer
        op = self.operator(graph)
        local = graph.local
        local[batch] = torch.arange(b, device=batch.device)
        try:
            edges = batch_edges(op, batch, local, quantizer.assignment,
                                self.num_codewords, self.merge)
            if not quantizer.initialized and bool((edges.col >= b).any()):
                raise RuntimeError("'VQConv': the codebook is not initialised; call "
                                   "init_codebook() (or the model's) before mini-batch steps")
            x_src = torch.cat([x, quantizer.features().to(x.dtype)], dim=0)  # (b + K, D_in)
            out, agg = self.adapter.forward(self.conv, x_src, x, edges)
            if training and self.backward_approx and quantizer.initialized:
                out = self._inject_backward(out, x, graph,
                                            backward_edges(op, batch, local, quantizer.assignment))
        finally:
            local[batch] = -1
        if training and agg.requires_grad:
            pending = _Pending(batch, x.detach())
            agg.register_hook(pending.capture)
            self._pending = pending
        return out

    def set_constant_input(self, x: Optional[Tensor], graph: Optional[VQGraph] = None) -> None:
        """Declare the inputs of all nodes constant (e.g. the raw features of a first layer).

        Such a layer needs no codebook: its mini-batch outputs are exact. For layers
        whose message is a linear map (GCN, SAGE without projection, GraphConv, GIN)
        the aggregation :math:`C X` is computed once and a step costs O(b); otherwise
        each step gathers the batch's 1-hop neighbours' inputs. ``None`` undoes it.

        Args:
            x: (N, D_in) inputs of all nodes, or None.
            graph: the full graph (needed when ``x`` is given).
        """
        if x is None:
            self._constant = None
            return
        if graph is None or x.shape != (graph.num_nodes, self.in_channels):
            shape = tuple(x.shape)
            raise ValueError(f"'VQConv.set_constant_input' needs the graph and 'x' of shape "
                             f"(num_nodes, {self.in_channels}), received {shape}")
        aggregated = None
        if isinstance(self.adapter, LinearAdapter) and self.adapter.message_is_linear_map(
                self.conv):
            op = self.operator(graph)
            with torch.no_grad():
                aggregated = csr_matmul(op.rowptr, op.col, op.value, x)  # (N, D_in)
        self._constant = (graph, x, aggregated)

    def _forward_constant(self, x: Tensor, graph: VQGraph, batch: Tensor) -> Tensor:
        const_graph, x_all, aggregated = self._constant  # type: ignore[misc]
        if const_graph is not graph:
            raise ValueError("'VQConv': the constant input was set for another graph")
        if aggregated is None:
            return self._exact(x_all, graph, batch, x)
        adapter = self.adapter
        assert isinstance(adapter, LinearAdapter)
        agg = adapter.message(self.conv, aggregated[batch].to(x.dtype))
        return adapter.update(self.conv, agg, x)

    def inference(self, x: Tensor, graph: VQGraph, batch: Tensor) -> Tensor:
        """Exact outputs of the ``batch`` nodes from the inputs ``x`` (N, D_in) of all nodes.

        Layer-wise inference: only the batch's 1-hop neighbourhood is read, so chunks
        of nodes bound the memory at any graph size.
        """
        self._check_batch(None, graph, batch)
        if x.shape != (graph.num_nodes, self.in_channels):
            raise ValueError(f"'VQConv.inference': 'x' must have shape ({graph.num_nodes}, "
                             f"{self.in_channels}), received {tuple(x.shape)}")
        return self._exact(x, graph, batch, x[batch])

    def _exact(self, x_all: Tensor, graph: VQGraph, batch: Tensor, x_dst: Tensor) -> Tensor:
        op = self.operator(graph)
        b = batch.numel()
        row, col, value = gather_rows(op.rowptr, op.col, op.value, batch)
        sources, inverse = torch.unique(col, return_inverse=True)
        # Rows come sorted by column within each row and ``unique`` keeps that order.
        edges = BatchEdges(row, b + inverse, value, torch.ones_like(value), b,
                           b + sources.numel(), merged=True)
        x_src = torch.cat([x_dst, x_all[sources].to(x_dst.dtype)], dim=0)
        return self.adapter.forward(self.conv, x_src, x_dst, edges)[0]

    def _inject_backward(self, out: Tensor, x: Tensor, graph: VQGraph,
                         edges: BackwardEdges) -> Tensor:
        grads = self.quantizer.gradients().to(x.dtype)  # (K, D_agg)
        if isinstance(self.adapter, GenericAdapter):
            target, extra = self._generic_backward_message(x, graph, edges, grads)
        else:
            weights = lowrank_backward(edges, x.size(0), self.num_codewords)  # (b, K)
            target = self.adapter.backward_message(self.conv, x)  # (b, D_agg)
            extra = weights.to(x.dtype) @ grads  # (b, D_agg)
        return _InjectGradient.apply(out, target, extra)

    def _generic_backward_message(self, x: Tensor, graph: VQGraph, edges: BackwardEdges,
                                  grads: Tensor) -> tuple[Tensor, Tensor]:
        """What each out-of-batch neighbour aggregates from the batch, and its codeword gradient."""
        b = x.size(0)
        targets, inverse = torch.unique(edges.target, return_inverse=True)  # (u,)
        codes = self.quantizer.assignment[targets].long()
        x_all = torch.cat([x, self.quantizer.features().to(x.dtype)[codes]], dim=0)
        edge_index = torch.stack([edges.row, b + inverse])
        params = {name: p.detach() for name, p in self.conv.named_parameters()}

        def call(x_in: Tensor, ei: Tensor) -> Tensor:
            return functional_call(self.conv, params, (x_in, ei))

        agg = run_capturing_aggregate(self.conv, x_all, edge_index, call)[1][b:]  # (u, D_agg)
        if _aggr_name(self.conv) == "mean":
            # The layer divided by the batch messages' count; the full graph divides by deg(j).
            count = torch.bincount(inverse, minlength=targets.numel()).to(agg.dtype)
            agg = agg * (count / graph.in_degree[targets].clamp_min(1).to(agg.dtype)).unsqueeze(1)
        return agg, grads[codes]

    @torch.no_grad()
    def update_codebook(self) -> bool:
        """Apply the last training batch's (input, gradient) pairs to the codebook.

        Returns:
            Whether an update was applied (False when no gradient was captured).
        """
        captured = self.take_captured()
        if captured is None:
            return False
        self.quantizer.update(captured.batch, captured.x, captured.grad.float())
        return True

    def take_captured(self) -> Optional[Captured]:
        """The last training batch's (nodes, inputs, gradients), removed from the queue.

        None when no gradient reached the layer's aggregated output since its last
        training forward.
        """
        pending, self._pending = self._pending, None
        if pending is None or pending.grad is None:
            return None
        return Captured(pending.batch, pending.x, pending.grad)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.conv}, num_codewords={self.num_codewords}, "
                f"num_nodes={self.num_nodes}, merge={self.merge}, "
                f"backward_approx={self.backward_approx})")


@torch.no_grad()
def init_codebooks(model: torch.nn.Module, *inputs: Any, seed: int = 0, **kwargs: Any) -> int:
    """k-means initialisation of every :class:`VQConv` inside any model.

    Runs ``model(*inputs, **kwargs)`` once in ``eval()`` mode, as an exact full-graph
    forward (its ``VQConv`` layers called without ``batch``), records each layer's input
    with a forward pre-hook, and initialises each codebook on it. Layers with a constant
    input (:meth:`VQConv.set_constant_input`) need no codebook and are left alone. For
    graphs whose full-graph forward does not fit in memory, use
    :meth:`~vqgnn.nn.VQGNN.prepare` (layer-wise, in chunks).

    Args:
        model: a module holding ``VQConv`` layers.
        *inputs: the full-graph forward's arguments (e.g. ``data.x, graph``).
        seed: k-means seed (layer ``i`` uses ``seed + i``).
        **kwargs: keyword arguments of the forward.

    Returns:
        The number of codebooks initialised.

    Example:
        >>> init_codebooks(model, data.x, graph)
    """
    layers = [m for m in model.modules() if isinstance(m, VQConv)]
    if not layers:
        raise ValueError(f"init_codebooks: '{type(model).__name__}' holds no VQConv layer")
    seen: dict[int, Tensor] = {}

    def record(module: torch.nn.Module, args: tuple, kw: dict) -> None:
        batch = args[2] if len(args) > 2 else kw.get("batch")
        if batch is not None:
            raise ValueError("init_codebooks needs a full-graph forward; a VQConv was called "
                             "with 'batch'")
        seen[id(module)] = args[0] if args else kw["x"]

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        model(*inputs, **kwargs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    count = 0
    for i, layer in enumerate(layers):
        if layer._constant is None and id(layer) in seen:
            layer.init_codebook(seen[id(layer)], seed=seed + i)
            count += 1
    return count
