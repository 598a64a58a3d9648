"""What every quantized layer shares: its codebook, the captured (input, gradient) pair, updates.

:class:`QuantizedLayer` is the base of :class:`~vqgnn.nn.VQConv` (a wrapped PyG convolution)
and :class:`~vqgnn.nn.GlobalAttention` (attention over all nodes). A subclass builds its
quantizer with :meth:`QuantizedLayer._make_quantizer` and, in a training forward, calls
:meth:`QuantizedLayer._capture` on the tensor whose gradient is quantized (its aggregated
output); the rest of the life cycle (k-means initialisation, EMA updates, oracle codewords,
health) is here.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from vqgnn.errors import ConfigError, ConfigTypeError, outside_stacklevel
from vqgnn.quantize.codebook import AllReduceFn, CodebookHealth
from vqgnn.quantize.options import CodebookOptions
from vqgnn.quantize.quantizer import FeatureGradientQuantizer


class CodebookSizeWarning(UserWarning):
    """Warns that a layer's K exceeds the graph's N nodes (at most N codewords are used)."""


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


class Reassigned(NamedTuple):
    """:meth:`QuantizedLayer.reassign`'s codewords and the standardised inputs behind them."""

    codes: Tensor
    z: Tensor


class _Pending:
    """A batch's (nodes, inputs) waiting for the gradient at its aggregated output."""

    def __init__(self, batch: Tensor, x: Tensor) -> None:
        self.batch = batch
        self.x = x
        self.grad: Optional[Tensor] = None

    def capture(self, grad: Tensor) -> None:
        self.grad = grad.detach()


def resolve_codebook(owner: str, num_codewords: Optional[int],
                     codebook: Optional[CodebookOptions]) -> CodebookOptions:
    """The codebook options from ``num_codewords`` (a shortcut) and ``codebook``."""
    if codebook is not None and not isinstance(codebook, CodebookOptions):
        raise ConfigTypeError(f"'{owner}': 'codebook' must be a CodebookOptions, received "
                              f"{type(codebook).__name__}")
    if num_codewords is None:
        return codebook if codebook is not None else CodebookOptions()
    if codebook is not None and codebook.num_codewords != num_codewords:
        raise ConfigError(f"'{owner}': 'num_codewords' ({num_codewords!r}) differs from "
                          f"'codebook.num_codewords' ({codebook.num_codewords}); give one")
    if not isinstance(num_codewords, int) or isinstance(num_codewords, bool) or num_codewords < 1:
        raise ConfigError(f"'{owner}': 'num_codewords' must be an int >= 1, "
                          f"received {num_codewords!r}")
    return replace(codebook if codebook is not None else CodebookOptions(),
                   num_codewords=num_codewords)


class QuantizedLayer(torch.nn.Module):
    """A layer with one codebook over (layer input, gradient at its aggregated output) pairs.

    Subclasses set :attr:`quantizer` (or None for a layer without codebook), call
    :meth:`_capture` on the aggregated output of a training forward, and define
    :meth:`aggregated`, :meth:`inference_all` and ``forward``.

    Args:
        num_nodes: N, nodes of the graph (size of the assignment table).
        auto_update: apply a captured pair left pending at the next training forward,
            instead of dropping it with a warning.
        validate: check the values of every ``batch`` (ids in range, distinct).
    """

    quantizer: Optional[FeatureGradientQuantizer]

    def __init__(self, num_nodes: Optional[int], auto_update: bool = False,
                 validate: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
            raise ConfigError(f"'{name}': 'num_nodes' must be an int >= 1, "
                              f"received {num_nodes!r}")
        self._num_nodes = num_nodes
        self.auto_update = auto_update
        self.validate = validate
        self.quantizer = None
        self._pending: Optional[_Pending] = None
        self._gradient_nodes: Optional[Tensor] = None

    def _make_quantizer(self, in_channels: int, agg_channels: int,
                        codebook: CodebookOptions) -> FeatureGradientQuantizer:
        """The layer's quantizer; assignments (codeword ids < K) stored as int32: 4 bytes
        per node and layer."""
        if codebook.num_codewords > self._num_nodes:
            warnings.warn(f"'{type(self).__name__}': num_codewords K={codebook.num_codewords} "
                          f"exceeds the graph's {self._num_nodes} nodes: at most "
                          f"{self._num_nodes} codewords can ever be used",
                          CodebookSizeWarning, stacklevel=outside_stacklevel())
        index_dtype = torch.int32 if codebook.num_codewords < 2**31 else torch.int64
        return FeatureGradientQuantizer.from_options(self._num_nodes, in_channels, agg_channels,
                                                     codebook, index_dtype=index_dtype)

    @property
    def num_codewords(self) -> int:
        """K (0 for a layer that holds no codebook)."""
        return 0 if self.quantizer is None else self.quantizer.num_codewords

    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    @property
    def has_codebook(self) -> bool:
        """Whether the layer holds a codebook."""
        return self.quantizer is not None

    @property
    def initialized(self) -> bool:
        """Whether the codebook holds codewords (False without a codebook)."""
        return self.quantizer is not None and self.quantizer.initialized

    def _require_codebook(self, what: str) -> FeatureGradientQuantizer:
        if self.quantizer is None:
            raise ConfigError(f"'{type(self).__name__}.{what}': the layer was built with "
                              f"constant_input=True and holds no codebook")
        return self.quantizer

    @torch.no_grad()
    def init_codebook(self, x: Tensor, node_idx: Optional[Tensor] = None, seed: int = 0) -> None:
        """k-means initialisation from the layer inputs ``x`` of ``node_idx`` (default:
        all nodes, ``x`` then has N rows).

        The gradient halves start at their running mean (no gradient is known yet). With
        ``node_idx`` a subset, the other nodes keep their assignment (codeword 0 in a new
        layer) until :meth:`reassign` or a training step sets it.
        """
        quantizer = self._require_codebook("init_codebook")
        if node_idx is None:
            if x.dim() != 2 or x.size(0) != self.num_nodes:
                raise ConfigError(
                    f"'{type(self).__name__}.init_codebook': 'x' must hold the layer inputs "
                    f"of all {self.num_nodes} nodes, shape ({self.num_nodes}, D), received "
                    f"{tuple(x.shape)}; pass 'node_idx' to initialise from a subset")
            node_idx = torch.arange(x.size(0), device=x.device)
        quantizer.initialize(node_idx, x, None, seed=seed)

    def set_codewords(self, features: Tensor, gradients: Tensor,
                      assignment: Optional[Tensor] = None) -> None:
        """Set the codewords' feature and gradient halves (original scales) and
        optionally every node's assignment (an oracle codebook, or an external one).

        Args:
            features: (K, D_in).
            gradients: (K, D_agg), ``D_agg`` the channels of :meth:`aggregated`.
            assignment: (N,) codeword of every node.
        """
        self._require_codebook("set_codewords").set_codewords(features, gradients, assignment)

    def set_assignment(self, assignment: Tensor) -> None:
        """Set the (N,) codeword of every node (values in [0, K))."""
        name = type(self).__name__
        quantizer = self._require_codebook("set_assignment")
        k = quantizer.num_codewords
        if (not isinstance(assignment, Tensor) or assignment.shape != (self.num_nodes,)
                or assignment.is_floating_point()):
            shape = (tuple(assignment.shape) if isinstance(assignment, Tensor)
                     else type(assignment).__name__)
            raise ConfigError(f"'{name}.set_assignment': 'assignment' must be an integer "
                              f"tensor of shape ({self.num_nodes},), received {shape}")
        lo, hi = int(assignment.min()), int(assignment.max())
        if lo < 0 or hi >= k:
            raise ConfigError(f"'{name}.set_assignment': 'assignment' holds codewords in "
                              f"[{lo}, {hi}], outside [0, {k})")
        quantizer.assignment.copy_(assignment.to(quantizer.assignment))

    def invalidate_caches(self) -> None:
        """Drop what the layer derived from its buffers (they were overwritten in place,
        e.g. broadcast from another rank); nothing here."""

    @torch.no_grad()
    def write_assignments(self, nodes: Tensor, codes: Tensor, valid: Tensor) -> None:
        """Set the codeword of ``nodes`` to ``codes`` (data parallelism: the assignments
        another rank refreshed). Entries where ``valid`` is False are padding that repeats
        a node with its own new codeword, so duplicates write equal values.

        Args:
            nodes: (M,) node ids.
            codes: (M,) their codewords.
            valid: (M,) booleans: False for padding.
        """
        quantizer = self._require_codebook("write_assignments")
        quantizer.assignment[nodes] = codes.to(quantizer.assignment.dtype)

    @torch.no_grad()
    def reassign(self, nodes: Tensor, x: Tensor) -> Reassigned:
        """Assign ``nodes`` to the codeword whose feature half is nearest their layer
        inputs ``x`` (standardised as the codebook stores them); the gradient half, unknown
        outside a training step, plays no part. VQ inference uses it to refresh
        assignments from eval-mode inputs.

        Args:
            nodes: (b,) node ids.
            x: (b, D_in) their layer inputs.

        Returns:
            Their (b,) codewords and (b, D_in) standardised inputs.
        """
        from vqgnn.quantize.functional import nearest_codeword

        quantizer = self._require_codebook("reassign")
        if (x.dim() != 2 or x.size(1) != quantizer.feature_dim or nodes.dim() != 1
                or nodes.numel() != x.size(0)):
            raise ConfigError(f"'{type(self).__name__}.reassign': 'x' must have shape "
                              f"(b, {quantizer.feature_dim}) with one row per entry of "
                              f"'nodes', received x {tuple(x.shape)} and nodes "
                              f"{tuple(nodes.shape)}")
        features = quantizer.codebook.embed[:, : quantizer.feature_dim]  # (K, D_in)
        z = quantizer.x_norm(x.float())
        codes = nearest_codeword(z, features, quantizer.codebook.chunk_size)
        self.write_assignments(nodes, codes, torch.ones_like(nodes, dtype=torch.bool))
        return Reassigned(codes, z)

    def health(self) -> CodebookHealth:
        """Codebook usage, perplexity and relative quantisation error."""
        return self._require_codebook("health").health()

    def set_all_reduce(self, fn: Optional[AllReduceFn]) -> None:
        """Sum the codebook's batch statistics (counts, sums, standardiser moments, error,
        restart picks) across data-parallel workers with ``fn`` (an in-place sum, e.g.
        ``torch.distributed.all_reduce``) before each EMA step, so that every worker keeps
        the same codebook; None: single process. A layer without codebook ignores it."""
        if self.quantizer is not None:
            self.quantizer.set_all_reduce(fn)

    def set_gradient_nodes(self, mask: Optional[Tensor]) -> None:
        """Declare which nodes can have a non-zero gradient at this layer's aggregated
        output (e.g. at an output layer, the nodes with a loss); None: every node.

        The backward term then sends no gradient message from an out-of-batch node
        outside ``mask``: its true gradient is zero, while its codeword's gradient half
        averages the gradients of the nodes assigned to it.

        Args:
            mask: (N,) booleans, or None.
        """
        if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool
                                 or mask.shape != (self.num_nodes,)):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ConfigError(f"'{type(self).__name__}.set_gradient_nodes': 'mask' must be a "
                              f"bool tensor of shape ({self.num_nodes},), received {shape}")
        self._gradient_nodes = mask

    def _batch_forward(self, x: Tensor, batch: Tensor,
                       pair: Callable[[Tensor, bool], tuple[Tensor, Tensor]]) -> Tensor:
        """A mini-batch forward: in training (with gradients), the previous pair settled,
        ``x`` made to require a gradient, and the gradient at ``agg`` captured, around
        ``pair(x, training) -> (out, agg)``."""
        training = self.training and torch.is_grad_enabled()
        if training:
            self._settle_pending()
            if not x.requires_grad:  # the gradient at the aggregated output is needed
                x = x.detach().requires_grad_()
        out, agg = pair(x, training)
        if training:
            self._capture(batch, x, agg)
        return out

    def _capture(self, batch: Tensor, x: Tensor, agg: Tensor) -> None:
        """In a training forward: record the batch's inputs and, at backward, the
        gradient at its aggregated output ``agg``."""
        if agg.requires_grad:
            pending = _Pending(batch, x.detach())
            agg.register_hook(pending.capture)
            self._pending = pending

    def _settle_pending(self) -> None:
        """At a training forward: the previous batch's pair, if never applied."""
        pending = self._pending
        if pending is None or pending.grad is None:
            return
        if self.auto_update:
            self.update_codebook()
            return
        self._pending = None
        name = type(self).__name__
        warnings.warn(f"'{name}': the previous training batch's captured (input, gradient) "
                      f"pair was never applied and is dropped; call update_codebook() after "
                      f"backward(), or build the layer with auto_update=True", stacklevel=7)

    @torch.no_grad()
    def update_codebook(self, search: bool = True) -> bool:
        """Apply the last training batch's (input, gradient) pairs to the codebook: one
        EMA k-means step, and the batch nodes' assignments refreshed. Call it after
        ``backward()`` (and the optimizer step) of every training step.

        Args:
            search: find the pairs' nearest codewords; False: add each pair to its node's
                current codeword, without the (b, K) search, and keep the assignments
                (:meth:`~vqgnn.quantize.FeatureGradientQuantizer.update`).

        Returns:
            Whether an update was applied (False when no gradient was captured, or
            the layer holds no codebook).
        """
        if self.quantizer is None:
            return False
        pending = self._pending
        if pending is not None and pending.grad is None:  # kept for a call after backward()
            warnings.warn(f"'{type(self).__name__}.update_codebook' was called before "
                          f"backward() reached the layer: nothing to apply yet; call it "
                          f"after backward()", stacklevel=outside_stacklevel())
            return False
        captured = self.take_captured()
        if captured is None:
            if not self.training:
                warnings.warn(f"'{type(self).__name__}.update_codebook': the layer is in eval "
                              f"mode, whose forwards capture nothing (VQ inference: no "
                              f"codebook update, no backward term); call model.train() "
                              f"before training steps", stacklevel=outside_stacklevel())
            return False
        self.quantizer.update(captured.batch, captured.x, captured.grad.float(), search=search)
        return True

    @property
    def captured(self) -> Optional[Captured]:
        """The last training batch's (nodes, inputs, gradients at :meth:`aggregated`),
        without removing it; None before its backward."""
        pending = self._pending
        if pending is None or pending.grad is None:
            return None
        return Captured(pending.batch, pending.x, pending.grad)

    def take_captured(self) -> Optional[Captured]:
        """The last training batch's (nodes, inputs, gradients), removed from the queue.

        None when no gradient reached the layer's aggregated output since its last
        training forward.
        """
        captured, self._pending = self.captured, None
        return captured

    def aggregated(self, x: Tensor, graph: Any) -> Tensor:
        """The aggregated output of all nodes, exactly: the point whose gradient is
        captured and quantized with each node's input (the codewords' gradient half)."""
        raise NotImplementedError

    def inference_all(self, x: Tensor, graph: Any, chunk_size: int = 4096) -> Tensor:
        """Exact outputs of all nodes from the inputs ``x`` of all nodes, in chunks."""
        raise NotImplementedError
