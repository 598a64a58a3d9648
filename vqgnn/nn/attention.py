r"""``GlobalAttention``: every node attends to all N nodes; mini-batches through the codebook.

Exact global attention costs O(N^2) per layer. With a codebook, a batch node's attention
over all N nodes is split like a convolution's messages: exact over the batch nodes, and
over the K codewords for the nodes outside the batch, each codeword's logit raised by the
log of its multiplicity (how many out-of-batch nodes it stands for). A step costs
O(b (b + K)), independent of N. The derivation of the backward term is in ``docs/method.md``
(section "Global attention").
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from vqgnn.batching.graph import VQGraph
from vqgnn.errors import ConfigError, ConfigTypeError
from vqgnn.nn.quantized import QuantizedLayer, _InjectGradient, resolve_codebook
from vqgnn.quantize.codebook import CodebookHealth
from vqgnn.quantize.options import CodebookOptions


def _positive_int(owner: str, name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"'{owner}': '{name}' must be an int >= 1, received {value!r}")
    return value


class GlobalAttention(QuantizedLayer):
    r"""Multi-head scaled dot-product attention of every node over all N nodes.

    .. math::
        \mathrm{agg}_i = \big\Vert_{h} \sum_{j=1}^{N} \alpha^h_{ij}\, W^h_V x_j, \qquad
        \alpha^h_{i\cdot} = \mathrm{softmax}_j\Big(\frac{(W^h_Q x_i)^\top W^h_K x_j}
        {\sqrt{d}}\Big), \qquad \mathrm{out}_i = W_O\, \mathrm{agg}_i + b_O,

    with ``heads`` heads of ``d = out_channels / heads`` channels. The graph's edges play
    no part. Three modes, like :class:`~vqgnn.nn.VQConv`:

    * **exact** (``batch=None``): over all rows of ``x``, in chunks of ``chunk_size``
      query rows (PyTorch's ``scaled_dot_product_attention``, which does not materialise
      the N x N attention on CPU or CUDA): O(N^2) time, O(N) memory;
    * **VQ mini-batch training** (``batch`` given, ``train()`` mode): a batch node attends
      exactly to the b batch nodes and to the K codewords' feature halves, the logit of
      codeword ``k`` raised by :math:`\log m_k`, :math:`m_k` the number of out-of-batch
      nodes assigned to it, so that the softmax equals the one over all N nodes when the
      codewords are exact. Back-propagation adds the gradient that the out-of-batch nodes'
      outputs send to the batch nodes' keys and values, from the codewords' gradient
      halves, grouped by codeword (O(K (b + K)));
    * **VQ inference** (``batch`` given, ``eval()`` mode): the same forward without the
      backward term; :meth:`inference_all` is the exact chunked one over all nodes.

    The codebook quantizes (layer input :math:`x_j`, gradient at :math:`\mathrm{agg}_j`)
    pairs like a ``VQConv``'s, with every option of
    :class:`~vqgnn.quantize.CodebookOptions`.

    Train it with a learning-rate warm-up (``TrainConfig(warmup_epochs=...)``): while its
    attention is near-uniform it gives every node nearly the same vector, and full-graph
    training's first full-lr Adam steps can grow that vector until it drowns the nodes'
    own features (docs/method.md, section 10).

    Args:
        in_channels: input channels.
        out_channels: output channels (default ``in_channels``), divisible by ``heads``.
        heads: attention heads.
        num_nodes: N, nodes of the graph (keyword-only).
        num_codewords: K (a shortcut for ``codebook.num_codewords``).
        codebook: every codebook option.
        merge: attend to the K codewords with multiplicities (``True``), or to one key per
            out-of-batch node, its codeword's (``False``: O(b N), the reference the merged
            path is tested against).
        backward_approx: add the out-of-batch nodes' gradient messages in backward.
        bias: biases of the projections.
        chunk_size: query rows per chunk of the exact modes.
        auto_update, validate: as :class:`~vqgnn.nn.VQConv`'s.

    Example:
        >>> attn = GlobalAttention(64, heads=4, num_nodes=data.num_nodes, num_codewords=256)
        >>> attn.init_codebook(h)                  # k-means on the layer inputs
        >>> out_b = attn(h[batch], graph, batch)   # (b, 64)
        >>> loss(out_b).backward(); attn.update_codebook()
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        heads: int = 4,
        *,
        num_nodes: int,
        num_codewords: Optional[int] = None,
        codebook: Optional[CodebookOptions] = None,
        merge: bool = True,
        backward_approx: bool = True,
        bias: bool = True,
        chunk_size: int = 4096,
        auto_update: bool = False,
        validate: bool = False,
    ) -> None:
        super().__init__(num_nodes, auto_update=auto_update, validate=validate)
        name = type(self).__name__
        in_channels = _positive_int(name, "in_channels", in_channels)
        out_channels = _positive_int(name, "out_channels",
                                     in_channels if out_channels is None else out_channels)
        heads = _positive_int(name, "heads", heads)
        self.chunk_size = _positive_int(name, "chunk_size", chunk_size)
        if out_channels % heads:
            raise ConfigError(f"'{name}': 'out_channels' ({out_channels}) must be divisible by "
                              f"'heads', received heads={heads}")
        codebook = resolve_codebook(name, num_codewords, codebook)
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.merge, self.backward_approx = merge, backward_approx
        self.codebook_options = codebook
        self.lin_q = torch.nn.Linear(in_channels, out_channels, bias=bias)
        self.lin_k = torch.nn.Linear(in_channels, out_channels, bias=bias)
        self.lin_v = torch.nn.Linear(in_channels, out_channels, bias=bias)
        self.lin_out = torch.nn.Linear(out_channels, out_channels, bias=bias)
        self.quantizer = self._make_quantizer(in_channels, out_channels, codebook)
        # Codeword counts over all nodes (and over the gradient nodes), kept in step with
        # the assignment table: recomputed when it changed outside update_codebook().
        self._counts: Optional[tuple[Tensor, Tensor]] = None
        self._counts_key: Optional[tuple[int, int]] = None

    def reset_parameters(self) -> None:
        """Reset the projections and forget the codebook."""
        for lin in (self.lin_q, self.lin_k, self.lin_v, self.lin_out):
            lin.reset_parameters()
        assert self.quantizer is not None
        self.quantizer.reset_parameters()
        self._pending = None

    # ------------------------------------------------------------------ attention
    def _attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor]) -> Tensor:
        """(n_q, C) attention of the rows of ``q`` over those of ``k``/``v`` (n_k, C), the
        logits raised by ``bias`` (n_k,); chunks of query rows."""
        h, d = self.heads, self.out_channels // self.heads
        # (1, h, n, d): the 4-D layout PyTorch's fused (flash) kernels take, which keep
        # O(n) memory for backward instead of the (h, n_q, n_k) attention matrix.
        keys = k.view(1, -1, h, d).transpose(1, 2)
        values = v.view(1, -1, h, d).transpose(1, 2)
        mask = None if bias is None else bias.to(q.dtype).view(1, 1, 1, -1)
        outs = []
        for s in range(0, q.size(0), self.chunk_size):
            queries = q[s:s + self.chunk_size].view(1, -1, h, d).transpose(1, 2)
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
            outs.append(out.transpose(1, 2).reshape(-1, h * d))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _full(self, x: Tensor) -> tuple[Tensor, Tensor]:
        agg = self._attend(self.lin_q(x), self.lin_k(x), self.lin_v(x), None)
        return self.lin_out(agg), agg

    def forward(self, x: Tensor, graph: Union[VQGraph, Tensor, None] = None,
                batch: Optional[Tensor] = None, edge_weight: Optional[Tensor] = None) -> Tensor:
        """Run the layer.

        Args:
            x: (N, D_in) inputs of all nodes when ``batch`` is None, else (b, D_in) inputs
                of the batch nodes, in ``batch``'s order.
            graph: the full graph (a :class:`~vqgnn.batching.VQGraph`, needed with
                ``batch``), or an ``edge_index`` / None for exact attention over the rows
                of ``x`` (edges play no part).
            batch: (b,) distinct node ids, or None for exact attention.
            edge_weight: ignored (the signature of a convolution's call).

        Returns:
            (N, D_out) or (b, D_out).
        """
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ConfigError(f"'{type(self).__name__}': 'x' must have shape (n, "
                              f"{self.in_channels}), received {tuple(x.shape)}")
        if batch is None:
            if isinstance(graph, VQGraph) and x.size(0) != graph.num_nodes:
                raise ConfigError(f"'{type(self).__name__}': full-graph 'x' must have "
                                  f"{graph.num_nodes} rows, received {x.size(0)}")
            return self._full(x)[0]
        if not isinstance(graph, VQGraph):
            raise ConfigTypeError(f"'{type(self).__name__}': 'batch' needs the full graph as "
                                  f"a VQGraph, received {type(graph).__name__}")
        return self._forward_batch(x, graph, batch)

    def _forward_batch(self, x: Tensor, graph: VQGraph, batch: Tensor) -> Tensor:
        name = type(self).__name__
        graph.check_batch(batch, name, values=self.validate)
        if graph.num_nodes != self.num_nodes:
            raise ConfigError(f"'{name}' was built for num_nodes={self.num_nodes}, the graph "
                              f"has {graph.num_nodes}")
        b = batch.numel()
        if x.size(0) != b:
            raise ConfigError(f"'{name}': 'x' must have {b} rows for a batch of {b} nodes, "
                              f"received {x.size(0)}")
        quantizer = self.quantizer
        assert quantizer is not None
        initialized = quantizer.initialized
        if not initialized and b < self.num_nodes:
            raise ConfigError(f"'{name}': the codebook is not initialised; call "
                              f"init_codebook() (or the model's prepare()) before mini-batch "
                              f"steps")
        return self._batch_forward(
            x, batch, lambda xb, training: self._batch_pair(xb, batch, training, initialized))

    def _batch_pair(self, x: Tensor, batch: Tensor, training: bool,
                    initialized: bool) -> tuple[Tensor, Tensor]:
        """(out, agg) of a batch; with ``training``, the backward term added."""
        quantizer = self.quantizer
        assert quantizer is not None
        b = batch.numel()
        sources, log_m, queries, weight, codes = self._out_of_batch(batch, x.dtype)
        k_src, v_src = self.lin_k(sources), self.lin_v(sources)
        bias = torch.cat([log_m.new_zeros(b), log_m])  # (b + S,)
        agg = self._attend(self.lin_q(x), torch.cat([self.lin_k(x), k_src]),
                           torch.cat([self.lin_v(x), v_src]), bias)
        out = self.lin_out(agg)
        if training and self.backward_approx and initialized:
            grads = quantizer.gradients()[codes]  # (S', D_agg), fp32
            extra = (weight.unsqueeze(1) * grads).to(x.dtype)
            out = self._inject_backward(out, x, queries, k_src.detach(), v_src.detach(), bias,
                                        extra)
        return out, agg

    @torch.no_grad()
    def message_error(self, x: Tensor, graph: VQGraph, batch: Tensor) -> float:
        """Relative error of the batch's attention outputs (before the output projection)
        through the codebook against exact attention over all N nodes.

        Args:
            x: (N, D_in) exact inputs of all nodes at this layer.
            graph: the full graph (checks the batch).
            batch: (b,) node ids.
        """
        quantizer = self.quantizer
        assert quantizer is not None
        if not quantizer.initialized:
            raise ConfigError(f"'{type(self).__name__}.message_error': the codebook is not "
                              f"initialised")
        graph.check_batch(batch, type(self).__name__, values=self.validate)
        if x.shape != (self.num_nodes, self.in_channels):
            raise ConfigError(f"'{type(self).__name__}.message_error': 'x' must have shape "
                              f"({self.num_nodes}, {self.in_channels}), received "
                              f"{tuple(x.shape)}")
        x_b = x[batch]
        agg_vq = self._batch_pair(x_b, batch, False, True)[1]
        agg_exact = self._attend(self.lin_q(x_b), self.lin_k(x), self.lin_v(x), None)
        return float((agg_vq - agg_exact).norm() / agg_exact.norm().clamp_min(1e-12))

    def _out_of_batch(self, batch: Tensor,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """What stands for the nodes outside the batch.

        Returns:
            sources: (S, D_in) key/value inputs (the K codewords, or one per node);
            log_m: (S,) their log-multiplicities (-inf for none);
            queries: (S', D_in) the inputs of the out-of-batch queries of the backward term;
            weight: (S',) how many out-of-batch nodes with a gradient each query stands for;
            codes: (S',) their codewords.
        """
        quantizer = self.quantizer
        assert quantizer is not None
        features = quantizer.features().to(dtype)  # (K, D_in)
        k = quantizer.num_codewords
        in_batch = quantizer.assignment[batch].long()
        mask = self._gradient_nodes
        if self.merge:
            counts, grad_counts = self._codeword_counts()
            # Counts in at least fp32 (fp16 tops out at 65,504).
            cdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            ones = torch.ones(batch.numel(), dtype=cdtype, device=features.device)
            # Batch nodes per codeword (index_add: a fixed size, no device sync, unlike
            # bincount), taken off the counts over all nodes.
            on_code = torch.zeros(k, dtype=cdtype, device=features.device)
            mult = counts.to(cdtype) - on_code.index_add(0, in_batch, ones)
            grad_ones = ones if mask is None else mask[batch].to(cdtype)
            weight = grad_counts.to(cdtype) - on_code.index_add(0, in_batch, grad_ones)
            codes = torch.arange(k, device=features.device)
            return features, mult.log(), features, weight, codes
        outside = torch.ones(self.num_nodes, dtype=torch.bool, device=batch.device)
        outside[batch] = False
        nodes = outside.nonzero().squeeze(1)
        codes = quantizer.assignment[nodes].long()
        weight = (torch.ones(nodes.numel(), dtype=dtype, device=nodes.device) if mask is None
                  else mask[nodes].to(dtype))
        sources = features[codes]
        return sources, sources.new_zeros(nodes.numel()), sources, weight, codes

    def _inject_backward(self, out: Tensor, x: Tensor, queries: Tensor, k_src: Tensor,
                         v_src: Tensor, bias: Tensor, extra: Tensor) -> Tensor:
        """Gradient messages of the out-of-batch nodes: the gradient of
        sum_q weight_q <agg_q(X_B), sg(g_q)> w.r.t. X_B, with the projections detached."""
        def detached(lin: torch.nn.Linear, z: Tensor) -> Tensor:
            return F.linear(z, lin.weight.detach(),
                            None if lin.bias is None else lin.bias.detach())

        target = self._attend(detached(self.lin_q, queries),
                              torch.cat([detached(self.lin_k, x), k_src]),
                              torch.cat([detached(self.lin_v, x), v_src]), bias)  # (S', D_agg)
        return _InjectGradient.apply(out, target, extra)

    def health(self) -> CodebookHealth:
        """As :meth:`QuantizedLayer.health`, from the codeword counts this layer keeps."""
        quantizer = self._require_codebook("health")
        return quantizer.health(self._codeword_counts()[0])

    # ------------------------------------------------------------------ codeword counts
    def _counts_state(self) -> tuple[int, int]:
        """Identifies the assignment table's contents (set_gradient_nodes drops the counts)."""
        assert self.quantizer is not None
        assignment = self.quantizer.assignment
        return (assignment._version, assignment.data_ptr())

    def _codeword_counts(self) -> tuple[Tensor, Tensor]:
        """(K,) nodes assigned to each codeword, and (K,) of them with a gradient."""
        quantizer = self.quantizer
        assert quantizer is not None
        if self._counts is None or self._counts_key != self._counts_state():
            codes = quantizer.assignment.long()
            k = quantizer.num_codewords
            counts = torch.bincount(codes, minlength=k)
            mask = self._gradient_nodes
            grad_counts = counts.clone() if mask is None else torch.bincount(
                codes[mask.to(codes.device)], minlength=k)
            self._counts = (counts, grad_counts)
            self._counts_key = self._counts_state()
        return self._counts

    @torch.no_grad()
    def update_codebook(self, search: bool = True) -> bool:
        """As :meth:`VQConv.update_codebook`; the codeword counts follow the batch nodes'
        new assignments (O(b), not a recount over N)."""
        captured, quantizer, counts = self.captured, self.quantizer, self._counts
        assert quantizer is not None
        if captured is None or counts is None or self._counts_key != self._counts_state():
            return super().update_codebook(search)  # the counts, if any, are recounted on use
        if not search:  # the assignments, hence the counts, stay
            return super().update_codebook(search)
        old = quantizer.assignment[captured.batch].long()
        super().update_codebook()
        self._move_counts(captured.batch, old, quantizer.assignment[captured.batch].long(),
                          torch.ones_like(old))
        return True

    def _move_counts(self, nodes: Tensor, old: Tensor, new: Tensor, weight: Tensor) -> None:
        """Move ``nodes`` (with 0/1 ``weight``) from codewords ``old`` to ``new`` in the
        cached counts, and mark them current."""
        assert self._counts is not None
        mask = self._gradient_nodes
        grad_weight = weight if mask is None else weight * mask[nodes].long()
        counts, grad_counts = self._counts
        counts.index_add_(0, old, -weight).index_add_(0, new, weight)
        grad_counts.index_add_(0, old, -grad_weight).index_add_(0, new, grad_weight)
        self._counts_key = self._counts_state()

    @torch.no_grad()
    def write_assignments(self, nodes: Tensor, codes: Tensor, valid: Tensor) -> None:
        """As :meth:`QuantizedLayer.write_assignments`; the codeword counts follow the
        valid entries (O(M), not a recount over N)."""
        quantizer = self.quantizer
        assert quantizer is not None
        fresh = self._counts is not None and self._counts_key == self._counts_state()
        old = quantizer.assignment[nodes].long()
        super().write_assignments(nodes, codes, valid)
        if fresh:  # else the counts, if any, are recounted on use
            self._move_counts(nodes, old, codes.long(), valid.long())

    def invalidate_caches(self) -> None:
        """The codeword counts are recounted at the next use."""
        self._counts = None

    def set_gradient_nodes(self, mask: Optional[Tensor]) -> None:
        super().set_gradient_nodes(mask)
        self._counts = None

    # ------------------------------------------------------------------ exact helpers
    def aggregated(self, x: Tensor, graph: Union[VQGraph, Tensor, None] = None) -> Tensor:
        """(N, D_agg) exact attention outputs before the output projection: the point
        whose gradient is captured (the codewords' gradient half).

        Args:
            x: (N, D_in) inputs of all nodes.
            graph: unused (the signature of :meth:`VQConv.aggregated`).
        """
        return self._full(x)[1]

    @torch.no_grad()
    def inference_all(self, x: Tensor, graph: Union[VQGraph, Tensor, None] = None,
                      chunk_size: Optional[int] = None) -> Tensor:
        """Exact outputs of all nodes, in chunks of ``chunk_size`` query rows (default the
        layer's): O(N^2) time, memory O(N * D) plus one chunk's attention.

        Args:
            x: (N, D_in) inputs of all nodes.
            graph: unused.
            chunk_size: query rows per chunk.
        """
        n = "N" if self.num_nodes is None else self.num_nodes
        if (x.dim() != 2 or x.size(1) != self.in_channels
                or (self.num_nodes is not None and x.size(0) != self.num_nodes)):
            raise ConfigError(f"'{type(self).__name__}.inference_all': 'x' must have shape "
                              f"({n}, {self.in_channels}) (every node's inputs), received "
                              f"{tuple(x.shape)}")
        q, k, v = self.lin_q(x), self.lin_k(x), self.lin_v(x)
        size = self.chunk_size if chunk_size is None else chunk_size
        outs = [self.lin_out(self._attend(q[s:s + size], k, v, None))
                for s in range(0, x.size(0), size)]
        return torch.cat(outs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"heads={self.heads}, num_codewords={self.num_codewords}, "
                f"num_nodes={self.num_nodes}, merge={self.merge}, "
                f"backward_approx={self.backward_approx})")
