"""``VQConv``: any PyG ``MessagePassing`` layer, trained on mini-batches with every message."""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.func import functional_call
from torch_geometric.nn.conv import MessagePassing

from vqgnn.batching.graph import VQGraph
from vqgnn.batching.lowrank import (
    DENSE_LOWRANK_MAX,
    BackwardEdges,
    BatchEdges,
    BatchRows,
    SparseOperator,
    backward_edges,
    batch_edges,
    codeword_edges,
    csr_matmul,
    gather_rows,
    lowrank_apply,
    lowrank_backward,
    lowrank_backward_rows,
    lowrank_forward,
    operator_matmul,
    sparse_lowrank_pays,
    step_rows,
)
from vqgnn.errors import ConfigError, ConfigTypeError
from vqgnn.nn.adapters import (
    LINEAR_AGGRS,
    AttentionAdapter,
    ConvAdapter,
    GenericAdapter,
    LinearAdapter,
    _aggr_name,
    adapter_for,
    run_capturing_aggregate,
)
from vqgnn.nn.quantized import QuantizedLayer, _InjectGradient, resolve_codebook
from vqgnn.quantize.options import CodebookOptions


def _same_rows(x: Tensor, stored: Tensor) -> bool:
    """Whether ``x`` is ``stored`` (NaN equal to NaN), up to rounding either one to the
    other's dtype (rows stored in 16 bits and passed in 32, or the reverse)."""
    def same(a: Tensor, b: Tensor) -> bool:
        return bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))

    if x.shape != stored.shape:
        return False
    return same(x.to(stored.dtype), stored) or same(x, stored.to(x.dtype))


class VQConv(QuantizedLayer):
    r"""Wraps a PyG ``MessagePassing`` layer for VQ-GNN mini-batch training.

    For a batch ``B`` of nodes with layer inputs :math:`X_B`:

    * messages between batch nodes are exact; a message from an out-of-batch
      neighbour ``j`` uses the feature part of its codeword :math:`v_{c(j)}`; messages
      sharing a codeword are merged where the layer allows (see
      :mod:`vqgnn.nn.adapters`): :math:`C_{B,:} X \approx C_{B,B} X_B + (C_{B,\sim B} R) V`
      (attention layers keep one edge per neighbour on the lean step, the same softmax);
    * normalisations (GCN's degrees, means, attention softmax) use the full graph;
    * in training, back-propagation adds to the batch nodes the gradient messages
      their out-of-batch neighbours ``j`` would send, from the gradient parts of the
      codewords: the gradient of :math:`\sum_j \langle \mathrm{out}_j(X_B),
      \mathrm{stopgrad}(g_{c(j)}) \rangle` w.r.t. :math:`X_B`, with the layer's
      parameters detached (no gradient to them; no value added to the loss);
    * the gradient of the loss at the batch's aggregated output (:meth:`aggregated`:
      for GCN the normalised sum of the transformed inputs :math:`C X W`, before the bias;
      for SAGE and GraphConv the sum or mean after the neighbour linear map; for
      attention the attention-weighted sum of the transformed inputs) is
      captured (:attr:`captured`), and :meth:`update_codebook`, called explicitly after
      ``backward()``, moves the codebook by EMA k-means and refreshes the batch nodes'
      assignments. With ``auto_update=True`` the next training forward applies a pair
      left pending; otherwise a pending pair that was never applied is dropped with a
      warning.

    For layers whose messages are linear in the source features (GCN, SAGE with mean
    or sum, GraphConv, GIN), the backward term is exact given the codewords. For
    attention layers (GAT, GATv2) it uses uniform weights :math:`1/\deg(j)` in place of
    :math:`\alpha_{ji}`: it neglects the attention logits and the dependence of the
    softmax normaliser of ``j`` on the batch node's features. For other layers
    (:class:`~vqgnn.nn.adapters.GenericAdapter`) the layer itself computes the messages
    to out-of-batch neighbours, exact for sum/mean aggregation of linear messages.

    Calling the layer with a :class:`~vqgnn.batching.VQGraph` and no ``batch`` runs it
    on the full graph, exactly: through the adapter (one sparse product per layer for
    linear layers; tested equal to the wrapped layer) or, for layers without an adapter
    of their own, the wrapped layer itself. With ``batch`` in ``eval()`` mode it runs
    VQ-approximated mini-batch inference. Called with a plain ``edge_index`` tensor
    (PyG's ``conv(x, edge_index)``), it is the wrapped layer itself, unchanged: the
    sampling baselines run a model this way on their subgraphs.

    Args:
        conv: the layer to wrap (a ``MessagePassing`` instance; it is not modified).
        num_codewords: K, codewords of this layer's codebook (a shortcut for
            ``codebook.num_codewords``; giving both with different values is an error).
        num_nodes: N, nodes of the graph (size of the assignment table).
        codebook: every codebook option (:class:`~vqgnn.quantize.CodebookOptions`).
        in_channels: the layer's input channels, when the layer does not tell them.
        merge: merge messages sharing a codeword where the layer allows it.
        backward_approx: add the approximated gradient messages in backward.
        adapter: how to run ``conv`` (default: by its type, see
            :func:`~vqgnn.nn.adapters.adapter_for`).
        constant_input: the layer reads constant inputs (e.g. raw features): it holds
            no codebook, and :meth:`set_constant_input` must be called before mini-batch
            steps. Its mini-batch outputs are exact. Its neighbours' part comes from the
            stored inputs, so a change made to the batch's ``x`` before the layer
            (dropout on the input, say) does not reach it: keep such a layer's input as
            stored (``validate=True`` checks that every batch's ``x`` is).
        auto_update: apply a captured pair left pending at the next training forward,
            instead of dropping it with a warning.
        validate: check the values of every ``batch`` (ids in range, distinct) and,
            for a layer with constant inputs, that its ``x`` is the stored rows, which
            costs host synchronisations on a GPU; shapes and dtypes are always checked.

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
        num_codewords: Optional[int] = None,
        num_nodes: Optional[int] = None,
        *,
        codebook: Optional[CodebookOptions] = None,
        in_channels: Optional[int] = None,
        merge: bool = True,
        backward_approx: bool = True,
        adapter: Optional[ConvAdapter] = None,
        constant_input: bool = False,
        auto_update: bool = False,
        validate: bool = False,
    ) -> None:
        super().__init__(num_nodes, auto_update=auto_update, validate=validate)
        if not isinstance(conv, MessagePassing):
            raise ConfigTypeError(f"'VQConv' wraps a torch_geometric MessagePassing layer, "
                                  f"received {type(conv).__name__}")
        codebook = resolve_codebook("VQConv", num_codewords, codebook)
        if getattr(conv, "flow", "source_to_target") != "source_to_target":
            raise ConfigError(f"'VQConv' supports flow='source_to_target' only, received "
                              f"{type(conv).__name__} with flow={conv.flow!r} (reverse "
                              f"'edge_index' instead)")
        self.conv = conv
        self.adapter = adapter if adapter is not None else adapter_for(conv)
        self.adapter.check(conv)
        in_channels = in_channels if in_channels is not None else self.adapter.in_channels(conv)
        if in_channels is None:
            raise ConfigError(f"'VQConv' cannot read the input channels of "
                              f"'{type(conv).__name__}'; pass 'in_channels'")
        if type(self.adapter) is GenericAdapter:  # a subclass (a registered adapter) decides
            self.adapter.check_locality(conv, in_channels)
        if (backward_approx and isinstance(self.adapter, GenericAdapter)
                and _aggr_name(conv) not in LINEAR_AGGRS):
            raise ConfigError(f"'VQConv': the backward approximation of "
                              f"'{type(conv).__name__}' needs aggr in {LINEAR_AGGRS}, received "
                              f"{_aggr_name(conv)!r}; pass backward_approx=False or register "
                              f"an adapter")
        self.in_channels = in_channels
        self.merge = merge and self.adapter.mergeable
        self.backward_approx = backward_approx
        self.codebook_options = codebook
        self._edge_weight_arg = "edge_weight" in inspect.signature(conv.forward).parameters
        # A constant-input layer holds no codebook (and no (N,) assignment table).
        if not constant_input:
            self.quantizer = self._make_quantizer(
                in_channels, self.adapter.agg_channels(conv, in_channels), codebook)
        self._operator: Optional[tuple[VQGraph, SparseOperator]] = None
        self._constant: Optional[tuple[VQGraph, Tensor, Optional[Tensor]]] = None

    def reset_parameters(self) -> None:
        """Reset the wrapped layer and forget the codebook."""
        if hasattr(self.conv, "reset_parameters"):
            self.conv.reset_parameters()
        if self.quantizer is not None:
            self.quantizer.reset_parameters()
        self._pending = None

    def operator(self, graph: VQGraph) -> SparseOperator:
        """The full-graph convolution matrix of this layer (computed once per graph)."""
        if self._operator is None or self._operator[0] is not graph:
            self._operator = (graph, self.adapter.operator(self.conv, graph))
        return self._operator[1]

    def forward(self, x: Tensor, graph: Union[VQGraph, Tensor], batch: Optional[Tensor] = None,
                edge_weight: Optional[Tensor] = None,
                graph_cache: Optional[dict[str, Any]] = None) -> Tensor:
        """Run the layer.

        Args:
            x: (N, D_in) inputs of all nodes when ``batch`` is None, else (b, D_in)
                inputs of the batch nodes, in ``batch``'s order.
            graph: the full graph, or a (2, E) ``edge_index`` to run the wrapped layer
                itself (PyG's call, e.g. on a sampled subgraph).
            batch: (b,) distinct node ids, or None for exact full-graph execution.
            edge_weight: (E,) edge weights of an ``edge_index`` call: passed to layers
                that take ``edge_weight``; a layer whose adapter's operator reads weights
                but whose ``forward`` takes none (SAGE and GIN: a weighted mean or sum)
                runs through its adapter on that graph, as it would on a ``VQGraph`` with
                these weights; attention layers ignore them (their softmax normalises over
                the incoming edges), and so do layers of the generic path without an
                ``edge_weight`` argument.
            graph_cache: a dict that the layers of one model call share (start each call
                with an empty one): the weighted graph of an ``edge_index`` call with
                ``edge_weight`` that runs through the adapter (SAGE, GIN), and its
                operator, are then built by the first such layer and reused by the others
                (:class:`~vqgnn.nn.VQGNN` passes one). An entry is reused only for the same
                ``edge_index`` and ``edge_weight`` tensors.

        Returns:
            (N, D_out) or (b, D_out) outputs.
        """
        if graph_cache is not None and not isinstance(graph_cache, dict):
            raise ConfigTypeError(f"'VQConv': 'graph_cache' must be a dict or None, received "
                                  f"{type(graph_cache).__name__}")
        if isinstance(graph, Tensor):
            if batch is not None:
                raise ConfigError("'VQConv': 'batch' needs a VQGraph; with an 'edge_index' "
                                  "tensor the wrapped layer runs on that graph as it is")
            if edge_weight is not None and self._edge_weight_arg:
                return self.conv(x, graph, edge_weight=edge_weight)
            if edge_weight is not None and isinstance(self.adapter, LinearAdapter):
                return self._weighted_call(x, graph, edge_weight, graph_cache)
            return self.conv(x, graph)
        if not isinstance(graph, VQGraph):
            raise ConfigTypeError(f"'VQConv': 'graph' must be a VQGraph or an edge_index "
                                  f"tensor, received {type(graph).__name__}")
        if batch is None:
            if x.size(0) != graph.num_nodes:
                raise ConfigError(f"'VQConv': full-graph 'x' must have {graph.num_nodes} rows, "
                                  f"received {x.size(0)}")
            if isinstance(self.adapter, GenericAdapter):
                self._check_generic_weights(graph)
                return self.conv(x, graph.edge_index)
            return self._full(x, graph)
        return self._forward_batch(x, graph, batch)

    def _weighted_call(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor,
                       graph_cache: Optional[dict[str, Any]] = None) -> Tensor:
        """An ``edge_index`` call with weights for a layer whose ``forward`` takes none
        (SAGE, GIN): the adapter's weighted operator on that graph, built per call or
        taken from ``graph_cache`` (the weights as constants, as GraphSAINT's are; an
        unchecked graph: the sampler's tensors, no host synchronisation for checks)."""
        if not isinstance(x, Tensor):
            raise ConfigError(f"'VQConv': weighted edge_index calls of "
                              f"'{type(self.conv).__name__}' take one node feature tensor "
                              f"'x', received {type(x).__name__}")
        if edge_weight.shape != (edge_index.size(1),):
            raise ConfigError(f"'VQConv': 'edge_weight' must have shape "
                              f"({edge_index.size(1)},), received {tuple(edge_weight.shape)}")
        if x.size(0) == 0:
            return self.conv(x, edge_index)
        entry = graph_cache.get("weighted") if graph_cache is not None else None
        if (entry is not None and entry[0] is edge_index and entry[1] is edge_weight
                and entry[2].num_nodes == x.size(0)):
            weighted = entry[2]
        else:
            weighted = VQGraph(edge_index, x.size(0), edge_weight=edge_weight.detach(),
                               check=False)
            if graph_cache is not None:
                graph_cache["weighted"] = (edge_index, edge_weight, weighted)
        # the operator is cached in this call's graph: the layers that normalise alike share it
        op = self.adapter.operator(self.conv, weighted)
        return self._full_pair(x, weighted, op)[0]

    def _check_generic_weights(self, graph: VQGraph) -> None:
        """A layer of the generic path is called with ``edge_index`` alone: one whose
        ``forward`` takes ``edge_weight`` would silently lose a weighted graph's weights
        (refused); one that takes none ignores them, as it would in PyG (a warning, once)."""
        if graph.edge_weight is not None and not self._edge_weight_arg:
            if not getattr(self, "_warned_weights", False):
                self._warned_weights = True
                warnings.warn(f"'VQConv': '{type(self.conv).__name__}' takes no "
                              f"'edge_weight'; it ignores the graph's edge weights",
                              stacklevel=4)
            return
        if graph.edge_weight is not None and self._edge_weight_arg:
            raise ConfigError(
                f"'VQConv': the graph has edge weights and '{type(self.conv).__name__}' takes "
                f"'edge_weight', but the generic path calls it with 'edge_index' alone (its "
                f"batch messages come from codewords), so the weights would be lost; "
                f"register an adapter whose operator reads them (vqgnn.nn.register_adapter), "
                f"or build the VQGraph without 'edge_weight'")

    def _full(self, x: Tensor, graph: VQGraph) -> Tensor:
        """The whole graph through the adapter: one sparse product per layer for linear
        layers (PyG's edge-wise layers materialise an (E, D) message tensor instead)."""
        return self._full_pair(x, graph)[0]

    def _full_pair(self, x: Tensor, graph: VQGraph,
                   op: Optional[SparseOperator] = None) -> tuple[Tensor, Tensor]:
        op = self.operator(graph) if op is None else op
        adapter = self.adapter
        if isinstance(adapter, LinearAdapter):  # one CSR product, its backward by C^T's
            agg = operator_matmul(op, adapter.message(self.conv, x))
            return adapter.update(self.conv, agg, x), agg
        n = graph.num_nodes
        row = graph.cached(("rows", id(op)), lambda: torch.repeat_interleave(
            torch.arange(n, device=x.device), op.rowptr.diff()))
        edges = BatchEdges(row, op.col, op.value, torch.ones_like(op.value), n, n, merged=True)
        return self.adapter.forward(self.conv, x, x, edges)

    def _check_batch(self, x: Optional[Tensor], graph: VQGraph, batch: Tensor) -> None:
        graph.check_batch(batch, "VQConv", values=self.validate)
        if graph.num_nodes != self.num_nodes:
            raise ConfigError(f"'VQConv' was built for num_nodes={self.num_nodes}, the graph "
                              f"has {graph.num_nodes}")
        b = batch.numel()
        if x is not None and (x.dim() != 2 or x.shape != (b, self.in_channels)):
            raise ConfigError(f"'VQConv': 'x' must have shape ({b}, {self.in_channels}) for a "
                              f"batch of {b} nodes, received {tuple(x.shape)}")

    def _forward_batch(self, x: Tensor, graph: VQGraph, batch: Tensor) -> Tensor:
        self._check_batch(x, graph, batch)
        if isinstance(self.adapter, GenericAdapter):
            self._check_generic_weights(graph)
        if self._constant is not None:
            return self._forward_constant(x, graph, batch)
        quantizer = self.quantizer
        if quantizer is None:
            raise ConfigError("'VQConv': this layer has constant inputs (constant_input=True) "
                              "and no codebook; call set_constant_input(x, graph) before "
                              "mini-batch steps")
        return self._batch_forward(
            x, batch, lambda xb, training: self._batch_pair(xb, graph, batch, training))

    def _batch_pair(self, x: Tensor, graph: VQGraph, batch: Tensor,
                    training: bool) -> tuple[Tensor, Tensor]:
        """(out, agg) of a quantized batch; with ``training``, the backward term added."""
        quantizer = self.quantizer
        assert quantizer is not None
        b = batch.numel()
        op = self.operator(graph)
        if self._lean(b):
            if isinstance(self.adapter, AttentionAdapter):
                return self._forward_attention(x, graph, op, batch, training)
            return self._forward_lowrank(x, graph, op, batch, training)
        local = graph.local
        local[batch] = torch.arange(b, device=batch.device)
        try:
            edges = batch_edges(op, batch, local, quantizer.assignment,
                                self.num_codewords, self.merge)
            if not quantizer.initialized and bool((edges.col >= b).any()):
                raise ConfigError("'VQConv': the codebook is not initialised; call "
                                  "init_codebook() (or the model's) before mini-batch steps")
            x_src = torch.cat([x, quantizer.features().to(x.dtype)], dim=0)  # (b + K, D_in)
            out, agg = self.adapter.forward(self.conv, x_src, x, edges)
            if training and self.backward_approx and quantizer.initialized:
                out = self._inject_backward(out, x, graph,
                                            backward_edges(op, batch, local, quantizer.assignment))
        finally:
            local[batch] = -1
        return out, agg

    @torch.no_grad()
    def message_error(self, x: Tensor, graph: VQGraph, batch: Tensor) -> float:
        r"""How well the codebook stands for the batch's out-of-batch neighbours.

        For layers with linear messages (GCN, SAGE, GraphConv, GIN) the relative error
        of the quantized out-of-batch messages against the exact ones,
        :math:`\lVert (C_{B,\bar B} R) m(V^x) - C_{B,\bar B}\, m(X_{\bar B}) \rVert /
        \lVert C_{B,\bar B}\, m(X_{\bar B}) \rVert`; for other layers the relative error of
        the batch's whole aggregation. Exact inputs ``x`` of all nodes are needed (e.g. from
        layer-wise inference); the assignments are the codebook's.

        Args:
            x: (N, D_in) exact inputs of all nodes at this layer.
            graph: the full graph.
            batch: (b,) node ids.
        """
        quantizer = self._require_codebook("message_error")
        if not quantizer.initialized:
            raise ConfigError("'VQConv.message_error': the codebook is not initialised")
        self._check_batch(None, graph, batch)
        if x.shape != (graph.num_nodes, self.in_channels):
            raise ConfigError(f"'VQConv.message_error': 'x' must have shape ({graph.num_nodes}, "
                              f"{self.in_channels}), received {tuple(x.shape)}")
        x_b = x[batch]
        agg_vq = self._batch_pair(x_b, graph, batch, training=False)[1]
        agg_exact = self._exact_pair(x, graph, batch, x_b)[1]
        reference = agg_exact
        if isinstance(self.adapter, LinearAdapter):  # m(0) = 0: the in-batch part alone
            inside = torch.zeros_like(x)
            inside[batch] = x_b
            reference = agg_exact - self._exact_pair(inside, graph, batch, x_b)[1]
        return float((agg_vq - agg_exact).norm() / reference.norm().clamp_min(1e-12))

    def _lean(self, b: int) -> bool:
        """Whether a batch of ``b`` nodes takes the lean path: a linear layer with merged
        messages or an attention layer, with b K (the size of a dense (b, K) low-rank part,
        the backward term's for attention) at most ``DENSE_LOWRANK_MAX``."""
        if b * self.num_codewords > DENSE_LOWRANK_MAX:
            return False
        return (isinstance(self.adapter, AttentionAdapter)
                or (isinstance(self.adapter, LinearAdapter) and self.merge))

    def _forward_lowrank(self, x: Tensor, graph: VQGraph, op: SparseOperator, batch: Tensor,
                         training: bool) -> tuple[Tensor, Tensor]:
        r"""The lean step of a linear layer: :math:`\mathrm{agg}_B = C_{B,B}\, m(X_B) +
        (C_{B,\bar B} R)\, m(V^x)`, the sparse in-batch part shared with the other layers
        of the step (:func:`~vqgnn.batching.lowrank.step_rows`), the low-rank part a (b, K)
        matrix built without sorting (dense, or CSR over the gathered entries where they
        are few: :func:`~vqgnn.batching.lowrank.sparse_lowrank_pays`); the backward term's
        (b, K) matrix from the same gather. No device sync beyond the shared gather's two."""
        quantizer = self.quantizer
        assert quantizer is not None and isinstance(self.adapter, LinearAdapter)
        rows = self._lean_rows(graph, op, batch)
        k = self.num_codewords
        # the forward's entries, or the backward's where a second gather gives them
        sparse = self._sparse_lowrank(max(rows.row.numel(), rows.t_row.numel()), rows, x)
        low = lowrank_forward(rows, quantizer.assignment, k, sparse)  # (b, K)
        out, agg = self.adapter.forward_lowrank(self.conv, x, quantizer.features().to(x.dtype),
                                                rows, low)
        if training and self.backward_approx and quantizer.initialized:
            if rows.t_outer is rows.outer and self._gradient_nodes is None:
                weights = low  # C^T = C (GCN's values): the backward weights are C_BB~ R
            else:
                weights = lowrank_backward_rows(rows, quantizer.assignment, k,
                                                self._gradient_nodes, sparse)
            out = self._inject_weights(out, x, weights)
        return out, agg

    def _lean_rows(self, graph: VQGraph, op: SparseOperator, batch: Tensor) -> BatchRows:
        """The step's shared gather (:func:`~vqgnn.batching.lowrank.step_rows`); a batch
        with out-of-batch neighbours needs an initialised codebook (a host-side test)."""
        quantizer = self.quantizer
        assert quantizer is not None
        rows = step_rows(graph, op, batch)
        if not quantizer.initialized and rows.num_inner < rows.row.numel():
            raise ConfigError("'VQConv': the codebook is not initialised; call "
                              "init_codebook() (or the model's) before mini-batch steps")
        return rows

    def _sparse_lowrank(self, entries: int, rows: BatchRows, x: Tensor) -> bool:
        """Whether this step's (b, K) parts over ``entries`` gathered entries are CSR
        (:func:`~vqgnn.batching.lowrank.sparse_lowrank_pays`)."""
        quantizer = self.quantizer
        assert quantizer is not None
        return sparse_lowrank_pays(entries, rows.num_rows, self.num_codewords,
                                   quantizer.grad_dim, x.device, x.dtype)

    def _forward_attention(self, x: Tensor, graph: VQGraph, op: SparseOperator, batch: Tensor,
                           training: bool) -> tuple[Tensor, Tensor]:
        """The lean step of an attention layer: the batch's messages from the step's shared
        gather (:func:`~vqgnn.batching.lowrank.step_rows`), each out-of-batch source read
        as its codeword, one edge per neighbour (the softmax over them equals the merged
        one's; no sort, no device sync); the backward term's (b, K) weights from the same
        gather."""
        quantizer = self.quantizer
        assert quantizer is not None
        rows = self._lean_rows(graph, op, batch)
        k = self.num_codewords
        edges = codeword_edges(rows, quantizer.assignment, k)
        x_src = torch.cat([x, quantizer.features().to(x.dtype)], dim=0)  # (b + K, D_in)
        out, agg = self.adapter.forward(self.conv, x_src, x, edges)
        if training and self.backward_approx and quantizer.initialized:
            out = self._inject_weights(out, x, lowrank_backward_rows(
                rows, quantizer.assignment, k, self._gradient_nodes,
                self._sparse_lowrank(rows.t_row.numel(), rows, x)))
        return out, agg

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the wrapped layer's parameters (inputs stored in another floating
        dtype, such as bf16 features, are cast to it where they are read)."""
        for param in self.conv.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.get_default_dtype()

    def reads_constant(self, x: Tensor, graph: VQGraph) -> bool:
        """Whether ``x`` is the constant input set for ``graph`` with a cached aggregation
        (:meth:`inference_all` then reuses it)."""
        constant = self._constant
        return (constant is not None and constant[0] is graph and constant[2] is not None
                and constant[1] is x)

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
            raise ConfigError(f"'VQConv.set_constant_input' needs the graph and 'x' of shape "
                              f"(num_nodes, {self.in_channels}), received {shape}")
        aggregated = None
        if isinstance(self.adapter, LinearAdapter) and self.adapter.message_is_linear_map(
                self.conv):
            op = self.operator(graph)
            with torch.no_grad():  # (N, D_in), computed in the operator's dtype, kept in x's
                aggregated = csr_matmul(op.rowptr, op.col, op.value, x.to(op.value.dtype))
                if x.dtype == torch.float16 and bool(
                        (aggregated.abs() > torch.finfo(torch.float16).max).any()):
                    raise ConfigError("'VQConv.set_constant_input': the aggregation of 'x' "
                                      "exceeds float16's range (65,504); store the features "
                                      "in bfloat16 or float32")
                aggregated = aggregated.to(x.dtype)
        self._constant = (graph, x, aggregated)

    def _forward_constant(self, x: Tensor, graph: VQGraph, batch: Tensor) -> Tensor:
        const_graph, x_all, aggregated = self._constant  # type: ignore[misc]
        if const_graph is not graph:
            raise ConfigError("'VQConv': the constant input was set for another graph")
        if self.validate and not _same_rows(x, x_all.index_select(0, batch)):
            raise ConfigError("'VQConv': this layer's inputs were set constant "
                              "(set_constant_input), and the batch's 'x' differs from the "
                              "stored rows of its nodes (dropout or another change before "
                              "the layer?); the neighbours' part reads the stored rows, so "
                              "that change would reach the batch nodes only: pass the stored "
                              "rows")
        x = x.to(self.compute_dtype)  # the stored rows may be bf16 or fp16
        if aggregated is None:  # attention reads the step's shared gather (the next
            # attention layers' lean steps use it too)
            shared = isinstance(self.adapter, AttentionAdapter)
            return self._exact_pair(x_all, graph, batch, x, shared=shared)[0]
        adapter = self.adapter
        assert isinstance(adapter, LinearAdapter)
        agg = adapter.message(self.conv, aggregated.index_select(0, batch).to(x.dtype))
        return adapter.update(self.conv, agg, x)

    def inference(self, x: Tensor, graph: VQGraph, batch: Tensor) -> Tensor:
        """Exact outputs of the ``batch`` nodes from the inputs ``x`` (N, D_in) of all nodes.

        Layer-wise inference: only the batch's 1-hop neighbourhood is read, so chunks
        of nodes bound the memory at any graph size.
        """
        self._check_batch(None, graph, batch)
        if x.shape != (graph.num_nodes, self.in_channels):
            raise ConfigError(f"'VQConv.inference': 'x' must have shape ({graph.num_nodes}, "
                              f"{self.in_channels}), received {tuple(x.shape)}")
        return self._exact(x, graph, batch, x[batch])

    @torch.no_grad()
    def inference_all(self, x: Tensor, graph: VQGraph, chunk_size: int = 4096) -> Tensor:
        """Exact outputs of all nodes, in contiguous chunks of ``chunk_size`` rows.

        For layers whose messages are linear (GCN, SAGE, GraphConv, GIN), the messages of
        all nodes are computed once and each chunk is one sparse product with a slice of
        the CSR operator (no gather of neighbours' inputs); a constant-input layer reuses
        its cached aggregation :math:`C X`. Other layers run :meth:`inference` per chunk.
        Memory: the (N, D_agg) messages plus one chunk's aggregation.

        Args:
            x: (N, D_in) inputs of all nodes.
            graph: the full graph.
            chunk_size: rows per chunk.

        Returns:
            (N, D_out).
        """
        if x.shape != (graph.num_nodes, self.in_channels):
            raise ConfigError(f"'VQConv.inference_all': 'x' must have shape "
                              f"({graph.num_nodes}, {self.in_channels}), received "
                              f"{tuple(x.shape)}")
        n = graph.num_nodes
        starts = range(0, n, chunk_size)
        adapter = self.adapter
        if not isinstance(adapter, LinearAdapter):
            nodes = torch.arange(n, device=x.device)
            return torch.cat([self.inference(x, graph, nodes[s:s + chunk_size]) for s in starts])
        if self.reads_constant(x, graph):
            aggregated = self._constant[2]  # type: ignore[index]  # C X, computed once
            assert aggregated is not None
            dtype = self.compute_dtype  # the rows may be stored in bf16 or fp16
            return torch.cat([adapter.update(self.conv, adapter.message(
                self.conv, aggregated[s:s + chunk_size].to(dtype)),
                x[s:s + chunk_size].to(dtype)) for s in starts])
        op = self.operator(graph)
        msg = torch.cat([adapter.message(self.conv, x[s:s + chunk_size])
                         for s in starts])  # (N, D_agg)
        outs = []
        for s in starts:
            e = min(s + chunk_size, n)
            lo, hi = int(op.rowptr[s]), int(op.rowptr[e])
            agg = csr_matmul(op.rowptr[s:e + 1] - lo, op.col[lo:hi], op.value[lo:hi], msg)
            outs.append(adapter.update(self.conv, agg, x[s:e]))
        return torch.cat(outs)

    def _exact(self, x_all: Tensor, graph: VQGraph, batch: Tensor, x_dst: Tensor) -> Tensor:
        return self._exact_pair(x_all, graph, batch, x_dst)[0]

    def _exact_pair(self, x_all: Tensor, graph: VQGraph, batch: Tensor, x_dst: Tensor,
                    shared: bool = False) -> tuple[Tensor, Tensor]:
        """(out, agg) of the ``batch`` nodes from every neighbour's exact input; with
        ``shared``, the batch's rows come from the step's gather
        (:func:`~vqgnn.batching.lowrank.step_rows`, shared with the other layers)."""
        op = self.operator(graph)
        b = batch.numel()
        if shared:
            rows = step_rows(graph, op, batch)
            assert rows.value is not None
            row, col, value = rows.row, rows.col, rows.value
        else:
            row, col, value = gather_rows(op.rowptr, op.col, op.value, batch)
        sources, inverse = torch.unique(col, return_inverse=True)
        # Rows come sorted by column within each row and ``unique`` keeps that order.
        edges = BatchEdges(row, b + inverse, value, torch.ones_like(value), b,
                           b + sources.numel(), merged=True)
        x_src = torch.cat([x_dst, x_all[sources].to(x_dst.dtype)], dim=0)
        return self.adapter.forward(self.conv, x_src, x_dst, edges)

    def _inject_backward(self, out: Tensor, x: Tensor, graph: VQGraph,
                         edges: BackwardEdges) -> Tensor:
        mask = self._gradient_nodes
        if mask is not None:  # no message from out-of-batch nodes whose gradient is zero
            keep = mask.to(edges.value.device)[edges.target].to(edges.value.dtype)
            edges = BackwardEdges(edges.row, edges.target, edges.code, edges.value * keep)
        if not isinstance(self.adapter, GenericAdapter):
            return self._inject_weights(
                out, x, lowrank_backward(edges, x.size(0), self.num_codewords))
        grads = self._require_codebook("backward").gradients().to(x.dtype)  # (K, D_agg)
        target, extra = self._generic_backward_message(x, graph, edges, grads)
        return _InjectGradient.apply(out, target, extra)

    def _inject_weights(self, out: Tensor, x: Tensor, weights: Any) -> Tensor:
        r"""The backward term of a layer with a ``backward_message``, from its (b, K) weights
        :math:`W_{ik} = \sum_{j \notin B, c(j)=k} C_{ji}` (dense, or a
        :class:`~vqgnn.batching.lowrank.SparseLowRank`)."""
        grads = self._require_codebook("backward").gradients().to(x.dtype)  # (K, D_agg)
        target = self.adapter.backward_message(self.conv, x)  # (b, D_agg)
        extra = lowrank_apply(weights, grads)  # (b, D_agg)
        return _InjectGradient.apply(out, target, extra)

    def _generic_backward_message(self, x: Tensor, graph: VQGraph, edges: BackwardEdges,
                                  grads: Tensor) -> tuple[Tensor, Tensor]:
        """What each out-of-batch neighbour aggregates from the batch, and its codeword gradient."""
        b = x.size(0)
        targets, inverse = torch.unique(edges.target, return_inverse=True)  # (u,)
        quantizer = self._require_codebook("backward")
        codes = quantizer.assignment[targets].long()
        x_all = torch.cat([x, quantizer.features().to(x.dtype)[codes]], dim=0)
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

    def aggregated(self, x: Tensor, graph: VQGraph) -> Tensor:
        """The aggregated output of all nodes, exactly: the point whose gradient is
        captured and quantized with each node's input (the codewords' gradient half).

        Args:
            x: (N, D_in) inputs of all nodes.
            graph: the full graph.

        Returns:
            (N, D_agg).
        """
        if x.size(0) != graph.num_nodes:
            raise ConfigError(f"'VQConv.aggregated': 'x' must have {graph.num_nodes} rows, "
                              f"received {x.size(0)}")
        if isinstance(self.adapter, GenericAdapter):
            self._check_generic_weights(graph)
            return run_capturing_aggregate(self.conv, x, graph.edge_index, self.conv.__call__)[1]
        return self._full_pair(x, graph)[1]

    def __repr__(self) -> str:
        codebook = ("constant_input=True" if self.quantizer is None
                    else f"num_codewords={self.num_codewords}")
        return (f"{type(self).__name__}({self.conv}, {codebook}, "
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
        raise ConfigError(f"init_codebooks: '{type(model).__name__}' holds no VQConv layer")
    seen: dict[int, Tensor] = {}

    def record(module: torch.nn.Module, args: tuple, kw: dict) -> None:
        batch = args[2] if len(args) > 2 else kw.get("batch")
        if batch is not None:
            raise ConfigError("init_codebooks needs a full-graph forward; a VQConv was called "
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
        if layer.has_codebook and layer._constant is None and id(layer) in seen:
            layer.init_codebook(seen[id(layer)], seed=seed + i)
            count += 1
    return count
