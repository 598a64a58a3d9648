r"""Per-batch low-rank convolution matrices :math:`[C_{B,B} \mid C_{B,\sim B} R]`.

Built from CSR copies of the full-graph convolution matrix, once per batch and
layer, fully vectorised: slice the batch's rows, map every column to its batch
position or to ``b + c(j)`` (its codeword), and merge duplicates.

Letter code: ``N`` nodes, ``B``/``b`` batch nodes, ``K`` codewords, ``M`` entries.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vqgnn.batching.graph import VQGraph, sorted_csr
from vqgnn.errors import ConfigError

# dtypes without CPU kernels for torch's sparse products: :func:`spmm` runs them in float32.
_HALF_DTYPES = (torch.bfloat16, torch.float16)


class SparseOperator(NamedTuple):
    r"""A full-graph convolution matrix :math:`C` in two CSR layouts.

    ``rowptr/col/value``: rows are targets ``i``, columns sources ``j``, value
    :math:`C_{ij}` (the weight of message ``j -> i``). ``t_rowptr/t_col/t_value``: rows
    are sources ``i``, columns targets ``j``, value :math:`C_{ji}` (what ``j`` receives
    from ``i``), used by the backward approximation.
    """

    rowptr: Tensor
    col: Tensor
    value: Tensor
    t_rowptr: Tensor
    t_col: Tensor
    t_value: Tensor

    @property
    def num_nodes(self) -> int:
        return self.rowptr.numel() - 1


def build_operator(edge_index: Tensor, value: Tensor, num_nodes: int) -> SparseOperator:
    """:class:`SparseOperator` of the messages ``edge_index[0] -> edge_index[1]`` with weights.

    Args:
        edge_index: (2, E) sources and targets.
        value: (E,) message weights.
        num_nodes: N.
    """
    src, dst = edge_index[0].long(), edge_index[1].long()
    value = value.float()
    rowptr, col, val = sorted_csr(dst, src, value, num_nodes)
    t_rowptr, t_col, t_val = sorted_csr(src, dst, value, num_nodes)
    # An undirected graph's two layouts have one pattern, and a symmetric normalisation
    # (GCN's) one set of values: the transpose then shares the forward layout's tensors
    # instead of a copy (for GCN the whole second layout, for a mean aggregation its
    # pattern; docs/method.md, section 9).
    if torch.equal(rowptr, t_rowptr) and torch.equal(col, t_col):
        t_rowptr, t_col = rowptr, col
        if torch.equal(val, t_val):
            t_val = val
    # int32 row pointers and columns where N and the entries allow (4 bytes per entry
    # less); torch's CSR products, gathers and index_add take them as they are.
    if max(num_nodes, col.numel()) < 2**31:
        shared_t = t_rowptr is rowptr
        rowptr, col = rowptr.int(), col.int()
        t_rowptr, t_col = (rowptr, col) if shared_t else (t_rowptr.int(), t_col.int())
    return SparseOperator(rowptr, col, val, t_rowptr, t_col, t_val)


def row_positions(rowptr: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Positions in a CSR's ``col``/``value`` arrays of the rows ``rows``.

    Returns:
        ``(row, idx)``: (M,) position in ``rows`` of each entry, (M,) its CSR position.
    """
    start = rowptr.index_select(0, rows)
    count = rowptr.index_select(0, rows + 1) - start
    row = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
    # Offsets within each row: a global arange minus each row's first output position.
    shift = start - (torch.cumsum(count, 0) - count)
    return row, torch.arange(row.numel(), device=rows.device) + shift.index_select(0, row)


def gather_rows(rowptr: Tensor, col: Tensor, value: Tensor,
                rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The entries of the CSR rows ``rows``, with ``rows``' positions as row ids.

    Returns:
        ``(row, col, value)``: (M,) position in ``rows``, global column, value.
    """
    row, idx = row_positions(rowptr, rows)
    return row, col[idx], value[idx]


class BatchEdges(NamedTuple):
    """Messages into the batch: ``col -> row``, weight ``value``, ``multiplicity`` merged edges.

    ``row`` in [0, b) is a batch position; ``col`` in [0, b + K) is a batch position
    (< b) or ``b + codeword``. Merged edges have ``multiplicity`` > 1.
    """

    row: Tensor
    col: Tensor
    value: Tensor
    multiplicity: Tensor
    num_rows: int
    num_cols: int
    merged: bool


class BackwardEdges(NamedTuple):
    """Messages from batch nodes to their out-of-batch neighbours.

    ``row`` in [0, b) is the batch position of the sender ``i``; ``target`` its
    out-of-batch neighbour ``j`` (global id); ``code`` = ``c(j)``; ``value`` =
    :math:`C_{ji}`.
    """

    row: Tensor
    target: Tensor
    code: Tensor
    value: Tensor


def batch_edges(op: SparseOperator, batch: Tensor, local: Tensor, assignment: Tensor,
                num_codewords: int, merge: bool = True) -> BatchEdges:
    """The batch's rows of ``op`` with out-of-batch columns replaced by codewords.

    Args:
        op: the full-graph operator.
        batch: (b,) batch node ids.
        local: (N,) batch position of every node, -1 outside the batch.
        assignment: (N,) codeword of every node.
        num_codewords: K.
        merge: merge entries with the same (row, column), summing values and counts.
    """
    b = batch.numel()
    row, col, value = gather_rows(op.rowptr, op.col, op.value, batch)
    pos = local[col]
    col = torch.where(pos >= 0, pos, b + assignment[col].long())
    count = torch.ones_like(value)
    num_cols = b + num_codewords
    if merge:
        row, col, value, count = merge_duplicates(row, col, value, num_cols)
    return BatchEdges(row, col, value, count, b, num_cols, merge)


def merge_duplicates(row: Tensor, col: Tensor, value: Tensor,
                     num_cols: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sum the values and count the entries of each distinct (row, col), sorted by it."""
    key = row * num_cols + col
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    merged = torch.zeros(uniq.numel(), dtype=value.dtype, device=value.device)
    merged.index_add_(0, inverse, value)
    count = torch.zeros_like(merged)
    count.index_add_(0, inverse, torch.ones_like(value))
    return uniq // num_cols, uniq % num_cols, merged, count


def backward_edges(op: SparseOperator, batch: Tensor, local: Tensor,
                   assignment: Tensor) -> BackwardEdges:
    """Messages ``i -> j`` from batch nodes ``i`` to out-of-batch neighbours ``j``."""
    row, idx = row_positions(op.t_rowptr, batch)
    target = op.t_col[idx]
    keep = (local[target] < 0).nonzero().view(-1)  # one index for the three gathers
    row, idx, target = row[keep], idx[keep], target[keep]
    return BackwardEdges(row, target, assignment[target].long(), op.t_value[idx])


def lowrank_backward(edges: BackwardEdges, num_rows: int, num_codewords: int) -> Tensor:
    r"""Dense (b, K) matrix :math:`\sum_{j \notin B, c(j)=k} C_{ji}` of the backward term."""
    out = torch.zeros(num_rows * num_codewords, dtype=edges.value.dtype,
                      device=edges.value.device)
    out.index_add_(0, edges.row * num_codewords + edges.code, edges.value)
    return out.view(num_rows, num_codewords)


def csr(crow: Tensor, col: Tensor, value: Tensor, shape: tuple[int, int]) -> Tensor:
    """A ``torch.sparse_csr`` matrix from trusted parts (no invariant checks, and without
    torch's "sparse CSR support is in beta" warning on every process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, value, shape, check_invariants=False)


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``is_autocast_enabled(device)`` since
    torch 2.4; before it, the CPU's query and CUDA's)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return device_type == "cuda" and bool(torch.is_autocast_enabled())


def _no_autocast(device: torch.device) -> Any:
    """A context with autocast off for ``device``'s type: the sparse and fused kernels
    run in the dtype their inputs were given (autocast would cast some operands to half
    precision and not others)."""
    return torch.autocast(device.type, enabled=False)


def spmm(a: Tensor, x: Tensor) -> Tensor:
    """``a @ x`` for a sparse ``a`` and dense ``x``, differentiable in ``x``. A bfloat16
    or float16 ``x`` is multiplied in float32 and the result cast back to its dtype
    (torch has no half-precision sparse kernel on the CPU; on a GPU this keeps one rule),
    and under ``torch.autocast`` (which would cast some operands to half precision) the
    product runs with autocast off, in ``x``'s dtype (float32 or float64) or in float32."""
    if a.dim() != 2 or x.dim() != 2 or a.size(1) != x.size(0):
        raise ConfigError(f"'spmm': 'a' (n, m) and 'x' (m, D) expected, received "
                          f"{tuple(a.shape)} and {tuple(x.shape)}")
    if x.dtype not in _HALF_DTYPES and not _autocast_on(x.device.type):
        return a @ x
    with _no_autocast(x.device):
        if x.dtype in _HALF_DTYPES:
            return (a.to(torch.float32) @ x.float()).to(x.dtype)
        return a.to(x.dtype) @ x


def to_sparse_csr(edges: BatchEdges) -> Tensor:
    """The merged ``edges`` as a (b, b + K) ``torch.sparse_csr`` matrix (rows sorted)."""
    counts = torch.bincount(edges.row, minlength=edges.num_rows)
    crow = torch.zeros(edges.num_rows + 1, dtype=torch.long, device=edges.row.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return csr(crow, edges.col, edges.value, (edges.num_rows, edges.num_cols))


def csr_matmul(rowptr: Tensor, col: Tensor, value: Tensor, dense: Tensor) -> Tensor:
    """(rows, D) product of a CSR matrix with ``dense`` (num_cols, D)."""
    return spmm(csr(rowptr, col, value.to(dense.dtype), (rowptr.numel() - 1, dense.size(0))),
                dense)


def operator_matmul(op: SparseOperator, x: Tensor) -> Tensor:
    r""":math:`C x` over the whole graph for (N, D) ``x``, differentiable in ``x``: its
    backward is one CSR product with the operator's transposed layout (torch's own backward
    of a CSR product would transpose the matrix, a sort of its E entries, every step; on
    Tolokers that made a full-graph GCN epoch 4 times slower)."""
    n = op.num_nodes
    if x.dim() != 2 or x.size(0) != n:
        raise ConfigError(f"'operator_matmul': 'x' must have shape ({n}, D), received "
                          f"{tuple(x.shape)}")
    a = csr(op.rowptr, op.col, op.value.to(x.dtype), (n, n))
    a_t = a if op.t_value is op.value and op.t_col is op.col else csr(
        op.t_rowptr, op.t_col, op.t_value.to(x.dtype), (n, n))
    return transposed_matmul(a, a_t, x)


# Largest b * K for which a layer's out-of-batch part is a dense (b, K) matrix (the lean
# path); above it, the merged sparse operator (one ``unique`` per layer) keeps memory down.
DENSE_LOWRANK_MAX = 1 << 24

# Products (b, K) @ (K, D) with fewer than ``THIN_FORWARD`` columns D run as
# ((K, D)^T (b, K)^T)^T, and (b, K)^T @ (b, D) with at most ``THIN_BACKWARD`` as
# ((b, D)^T (b, K))^T, the thin operand transposed into a contiguous left-hand one: the same
# sums, but CPU GEMM kernels are several times slower on a thin right-hand (or transposed)
# operand; at D = 64 the plain form is faster (``benchmarks/step_kernels.py`` times both).
THIN_FORWARD = 16
THIN_BACKWARD = 32


def _check_product(owner: str, a: Tensor, b: Tensor, dim: int) -> None:
    """Both 2-D, ``a.size(dim) == b.size(0)``."""
    if a.dim() != 2 or b.dim() != 2 or a.size(dim) != b.size(0):
        raise ConfigError(f"'{owner}': 'a' and 'b' must be 2-D with a.size({dim}) == "
                          f"b.size(0), received {tuple(a.shape)} and {tuple(b.shape)}")


def thin_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for (n, K) ``a`` and (K, D) ``b``, in the faster form for thin ``b``."""
    _check_product("thin_matmul", a, b, 1)
    if b.size(1) < THIN_FORWARD:  # a contiguous (D, K) left operand: the fast kernel
        return (b.t().contiguous() @ a.t()).t()
    return a @ b


def thin_matmul_t(a: Tensor, b: Tensor) -> Tensor:
    """``a.t() @ b`` for (n, K) ``a`` and (n, D) ``b``, in the faster form for thin ``b``."""
    _check_product("thin_matmul_t", a, b, 0)
    if b.size(1) <= THIN_BACKWARD:
        return (b.t().contiguous() @ a).t()
    return a.t() @ b


class _LowRankMatmul(torch.autograd.Function):
    """``dense @ values`` with both directions in :func:`thin_matmul`'s faster forms."""

    @staticmethod
    def forward(ctx: Any, dense: Tensor, values: Tensor) -> Tensor:
        ctx.save_for_backward(dense, values)
        return thin_matmul(dense, values)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        dense, values = ctx.saved_tensors
        grad_dense = grad @ values.t() if ctx.needs_input_grad[0] else None
        grad_values = thin_matmul_t(dense, grad) if ctx.needs_input_grad[1] else None
        return grad_dense, grad_values


class SparseLowRank(NamedTuple):
    r"""A layer's (b, K) low-rank part as the batch's gathered entries: entry ``m`` adds
    ``value[m]`` at (``row[m]``, ``code[m]``); repeated pairs are summed by the products
    and in-batch sources weigh 0 (the gather's order, no sort or merge). The lean step
    takes it instead of the dense matrix where the entries are few against b x K
    (:func:`sparse_lowrank_pays`)."""

    row: Tensor  # (M,) sorted batch positions
    code: Tensor  # (M,) int64 codewords
    value: Tensor  # (M,)
    num_rows: int
    num_codewords: int

    def matrix(self, dtype: torch.dtype) -> Tensor:
        """The (b, K) ``torch.sparse_csr`` matrix (repeated columns summed by products)."""
        return csr(_row_pointer(self.row, self.num_rows), self.code, self.value.to(dtype),
                   (self.num_rows, self.num_codewords))


# A layer's (b, K) low-rank part is a CSR matrix instead of a dense one when the batch's
# gathered entries M satisfy M * SPARSE_LOWRANK_RATIO <= b * K and the messages have at
# least SPARSE_LOWRANK_MIN_WIDTH columns (thinner products are cheap dense). Chosen from
# ``benchmarks/step_kernels.py``'s low-rank rows (the part built from the entries, then
# multiplied forward, backward and in the backward term; README "Training epoch"): CSR
# faster at b K / M of 11.5 to 114 with 10 to 512 columns, dense faster at 2 columns and
# at b K / M of 3.4. CPU only: on a GPU the dense products stay.
SPARSE_LOWRANK_RATIO = 8
SPARSE_LOWRANK_MIN_WIDTH = 8


def sparse_lowrank_pays(entries: int, num_rows: int, num_codewords: int, width: int,
                        device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a (b, K) low-rank part over ``entries`` gathered entries, multiplying
    ``width``-column messages, is taken as CSR (:class:`SparseLowRank`) rather than dense:
    float32 or float64 on the CPU, entries at most b K / 8, at least 8 columns. Host
    integers only: no device sync."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.float64):
        return False
    return (width >= SPARSE_LOWRANK_MIN_WIDTH
            and entries * SPARSE_LOWRANK_RATIO <= num_rows * num_codewords)


class _SparseLowRankMatmul(torch.autograd.Function):
    """``A @ values`` for a :class:`SparseLowRank` ``A``: one CSR product; the backward
    (for ``values``) one CSR product with the transposed layout (a sort of the M codes).
    ``A``'s weights get no gradient (they are the operator's constants)."""

    @staticmethod
    def forward(ctx: Any, row: Tensor, code: Tensor, value: Tensor, values: Tensor,
                num_rows: int) -> Tensor:
        ctx.save_for_backward(row, code, value)
        ctx.shape = (num_rows, values.size(0))
        a = SparseLowRank(row, code, value, num_rows, values.size(0))
        return spmm(a.matrix(values.dtype), values)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        row, code, value = ctx.saved_tensors
        grad_values = None
        if ctx.needs_input_grad[3]:
            num_rows, num_codewords = ctx.shape
            crow_t, row_t, perm = _transposed(row, code, num_codewords)
            a_t = csr(crow_t, row_t, value.index_select(0, perm).to(grad.dtype),
                      (num_codewords, num_rows))
            grad_values = spmm(a_t, grad)
        return None, None, None, grad_values, None


def _check_lowrank_values(owner: str, a: Any, values: Tensor) -> None:
    """``values`` is (K, D) for a (b, K) low-rank part ``a``, dense or sparse."""
    num_codewords = a.num_codewords if isinstance(a, SparseLowRank) else a.size(-1)
    if values.dim() != 2 or values.size(0) != num_codewords:
        raise ConfigError(f"'{owner}': 'values' must have shape ({num_codewords}, D), "
                          f"received {tuple(values.shape)}")


def lowrank_matmul(a: Any, values: Tensor) -> Tensor:
    """(b, D) product of a layer's (b, K) low-rank part (dense, or a
    :class:`SparseLowRank`) with (K, D) codeword messages, differentiable in ``values``
    (and in a dense part; a sparse part's weights get no gradient)."""
    _check_lowrank_values("lowrank_matmul", a, values)
    if isinstance(a, SparseLowRank):
        return _SparseLowRankMatmul.apply(a.row, a.code, a.value, values, a.num_rows)
    return _LowRankMatmul.apply(a.to(values.dtype), values)


def lowrank_apply(a: Any, values: Tensor) -> Tensor:
    """``a @ values`` without autograd for a (b, K) low-rank part, dense or sparse (the
    backward term's product with the codewords' gradients)."""
    _check_lowrank_values("lowrank_apply", a, values)
    if isinstance(a, SparseLowRank):
        return spmm(a.matrix(values.dtype), values)
    return thin_matmul(a.to(values.dtype), values)


class _TransposedSpMM(torch.autograd.Function):
    """``a @ x`` for a CSR ``a`` whose transpose ``a_t`` is given: the backward is one more
    CSR product instead of torch's transposition of ``a`` (a conversion with a sort)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(a_t)
        return spmm(a, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Optional[Tensor]]:
        (a_t,) = ctx.saved_tensors
        return None, None, spmm(a_t, grad) if ctx.needs_input_grad[2] else None


def transposed_matmul(a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:
    """``a @ x`` for a (n, m) sparse ``a`` and (m, D) ``x``, differentiable in ``x`` by one
    product with the given transpose ``a_t`` (m, n) (``a`` itself for a symmetric one)."""
    n, m = a.shape
    if tuple(a_t.shape) != (m, n) or x.dim() != 2 or x.size(0) != m:
        raise ConfigError(f"'transposed_matmul': 'a' {tuple(a.shape)} needs 'a_t' of shape "
                          f"({m}, {n}) and 'x' of shape ({m}, D), received "
                          f"{tuple(a_t.shape)} and {tuple(x.shape)}")
    return _TransposedSpMM.apply(a, a_t, x)


# dtypes of the fused attention aggregation (torch's CSR products and ``sampled_addmm``);
# others take the per-edge form.
_FUSED_DTYPES = (torch.float32, torch.float64)


def _row_pointer(sorted_rows: Tensor, num_rows: int) -> Tensor:
    """CSR row pointer of row-sorted entries, of their dtype (a CSR matrix's row pointer
    and column ids must share one; ``searchsorted``: no device sync)."""
    bounds = torch.arange(num_rows + 1, device=sorted_rows.device, dtype=sorted_rows.dtype)
    return torch.searchsorted(sorted_rows, bounds, out_int32=sorted_rows.dtype == torch.int32)


def _transposed(row: Tensor, col: Tensor, num_cols: int) -> tuple[Tensor, Tensor, Tensor]:
    """The transposed CSR layout of entries ``(row, col)``: its row pointer (over
    ``num_cols`` rows), its column ids (the entries' rows) and the permutation that puts
    any per-entry values in its order (a stable sort of ``col``; no device sync)."""
    perm = torch.argsort(col, stable=True)
    return _row_pointer(col.index_select(0, perm), num_cols), row.index_select(0, perm), perm


def _per_head(crow: Tensor, col: Tensor, weight: Tensor, shape: tuple[int, int],
              dense: Tensor) -> Tensor:
    """``stack_h csr(crow, col, weight[:, h]) @ dense[h]``: (rows, H, C) from (H, cols, C)."""
    return torch.stack([csr(crow, col, weight[:, h].contiguous(), shape) @ dense[h]
                        for h in range(weight.size(1))], dim=1)


class _AttentionAggregate(torch.autograd.Function):
    """Row-sorted edges ``col -> row`` with per-head weights: one CSR product per head;
    the backward is one ``sampled_addmm`` per head for the weights (the per-edge dot
    products) and one CSR product per head with the transposed layout (a sort of the
    M column ids) for the values. No (M, H, C) tensor is made. With more edges than
    (rows x sources) entries (repeated pairs: ``sampled_addmm`` refuses them), the dot
    products are read from the dense (rows, sources) product per head instead, which is
    then the smaller."""

    @staticmethod
    def forward(ctx: Any, row: Tensor, col: Tensor, alpha: Tensor, value: Tensor,
                num_rows: int) -> Tensor:
        crow = _row_pointer(row, num_rows)
        ctx.save_for_backward(row, col, crow, alpha, value)
        shape = (num_rows, value.size(0))
        with _no_autocast(value.device):  # in value's dtype, as the backward assumes
            return _per_head(crow, col, alpha, shape, value.transpose(0, 1).contiguous())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        value = ctx.saved_tensors[3]
        with _no_autocast(value.device):  # a backward called under autocast
            return _AttentionAggregate._backward(ctx, grad.to(value.dtype))

    @staticmethod
    def _backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        row, col, crow, alpha, value = ctx.saved_tensors
        num_rows, num_src = crow.numel() - 1, value.size(0)
        grad_h = grad.transpose(0, 1).contiguous()  # (H, b, C)
        grad_alpha = grad_value = None
        if ctx.needs_input_grad[2]:
            value_h = value.transpose(0, 1).contiguous()  # (H, S, C)
            if col.numel() > num_rows * num_src:  # repeated pairs; dense is smaller
                flat = row.long() * num_src + col.long()
                grad_alpha = torch.stack(
                    [(grad_h[h] @ value_h[h].t()).view(-1).index_select(0, flat)
                     for h in range(alpha.size(1))], dim=1)
            else:
                pattern = csr(crow, col, alpha.new_zeros(col.numel()), (num_rows, num_src))
                grad_alpha = torch.stack(
                    [torch.sparse.sampled_addmm(pattern, grad_h[h], value_h[h].t(),
                                                beta=0).values()
                     for h in range(alpha.size(1))], dim=1)
        if ctx.needs_input_grad[3]:
            crow_t, row_t, perm = _transposed(row, col, num_src)
            grad_value = _per_head(crow_t, row_t, alpha[perm], (num_src, num_rows), grad_h)
        return None, None, grad_alpha, grad_value, None


def attention_aggregate(edges: BatchEdges, alpha: Tensor, value: Tensor) -> Tensor:
    r""":math:`\mathrm{agg}_{i,h} = \sum_{(i, s)} \alpha_{is,h}\, \mathrm{value}_{s,h}`:
    (b, H, C) from per-edge weights ``alpha`` (M, H) and source values ``value``
    (b + K, H, C), differentiable in both.

    ``edges`` must be sorted by row, as :func:`batch_edges` and :func:`gather_rows` give
    them (not checked: a check would be a device sync per call). In float32 and float64 it
    runs as sparse products per head, without the (M, H, C) per-edge messages (at 300,000
    edges and 4 heads of 128 channels, 600 MB; forward and backward 50 ms against 1.7 s
    per edge on 2 CPU threads, ``benchmarks/step_kernels.py``). The result has the dtype
    torch's type promotion gives ``alpha`` and ``value`` (the per-edge form's): on the CPU,
    which has no half-precision sparse kernels, half-precision or mixed inputs are
    multiplied in float32 and the result cast to that dtype (also under autocast); on
    other devices half precision gathers and scatters per edge.
    """
    heads = value.size(1) if value.dim() == 3 else -1
    if alpha.dim() != 2 or alpha.size(0) != edges.row.numel() or alpha.size(1) != heads \
            or value.size(0) != edges.num_cols:
        raise ConfigError(f"'attention_aggregate': 'alpha' must have shape "
                          f"({edges.row.numel()}, H) and 'value' ({edges.num_cols}, H, C), "
                          f"received {tuple(alpha.shape)} and {tuple(value.shape)}")
    dtype = torch.promote_types(alpha.dtype, value.dtype)
    compute = dtype if dtype in _FUSED_DTYPES else (
        torch.float32 if value.device.type == "cpu" and dtype in _HALF_DTYPES else None)
    if compute is None:
        return per_edge_aggregate(edges, alpha, value)
    row, col = edges.row, edges.col
    if row.dtype != col.dtype:  # e.g. int64 batch positions, int32 operator columns
        row, col = row.long(), col.long()
    out = _AttentionAggregate.apply(row, col, alpha.to(compute), value.to(compute),
                                    edges.num_rows)
    return out.to(dtype)


def per_edge_aggregate(edges: BatchEdges, alpha: Tensor, value: Tensor) -> Tensor:
    """:func:`attention_aggregate`'s sum by per-edge (M, H, C) messages: gather, multiply,
    ``index_add`` (its form for other dtypes, and the plain form it is timed against)."""
    msg = value[edges.col] * alpha.unsqueeze(-1)  # (M, H, C)
    return msg.new_zeros(edges.num_rows, *msg.shape[1:]).index_add(0, edges.row, msg)


# Edges per chunk of :func:`pair_logits`: chunks of at most this many (edge, head, channel)
# elements (16 MB in float32; at least one edge a chunk), so a chunk's transient
# (chunk, H, C) tensors stay small.
PAIR_LOGIT_CHUNK_ELEMENTS = 1 << 22


def _pair_step(heads: int, channels: int) -> int:
    """Edges per chunk of :func:`pair_logits` (host integers: no sync)."""
    return max(1, PAIR_LOGIT_CHUNK_ELEMENTS // max(1, heads * channels))


class _PairLogits(torch.autograd.Function):
    """GATv2's per-edge logits by chunks of edges; the backward recomputes each chunk's
    (chunk, H, C) sums instead of saving them. First-order only (``once_differentiable``)."""

    @staticmethod
    def forward(ctx: Any, src: Tensor, dst: Tensor, row: Tensor, col: Tensor, att: Tensor,
                slope: float) -> Tensor:
        ctx.save_for_backward(src, dst, row, col, att)
        ctx.slope = slope
        num_edges, heads, channels = row.numel(), src.size(1), src.size(2)
        out = src.new_empty(num_edges, heads)
        step = _pair_step(heads, channels)
        with _no_autocast(src.device):  # in the inputs' dtype, as the backward assumes
            for start in range(0, num_edges, step):
                r, c = row[start:start + step], col[start:start + step]
                e = F.leaky_relu(src.index_select(0, c) + dst.index_select(0, r), slope)
                out[start:start + step] = torch.einsum("ehc,hc->eh", e, att[0])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        with _no_autocast(grad.device):  # a backward called under autocast
            return _PairLogits._backward(ctx, grad.to(ctx.saved_tensors[0].dtype))

    @staticmethod
    def _backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        src, dst, row, col, att = ctx.saved_tensors
        need_src, need_dst, _, _, need_att, _ = ctx.needs_input_grad
        grad_src = torch.zeros_like(src) if need_src else None
        grad_dst = torch.zeros_like(dst) if need_dst else None
        grad_att = torch.zeros_like(att[0]) if need_att else None
        num_edges, heads, channels = row.numel(), src.size(1), src.size(2)
        step = _pair_step(heads, channels)
        for start in range(0, num_edges, step):
            r, c = row[start:start + step], col[start:start + step]
            g = grad[start:start + step]  # (chunk, H)
            pre = src.index_select(0, c) + dst.index_select(0, r)  # (chunk, H, C)
            if grad_att is not None:
                grad_att += torch.einsum("eh,ehc->hc", g, F.leaky_relu(pre, ctx.slope))
            if grad_src is None and grad_dst is None:
                continue
            # LeakyReLU's own derivative (the slope at 0, as its autograd gives it)
            grad_pre = torch.ops.aten.leaky_relu_backward(
                g.unsqueeze(-1) * att, pre, ctx.slope, False)
            if grad_src is not None:
                grad_src.index_add_(0, c, grad_pre)
            if grad_dst is not None:
                grad_dst.index_add_(0, r, grad_pre)
        return (grad_src, grad_dst, None, None,
                None if grad_att is None else grad_att.view(att.shape), None)


def _check_pair_inputs(owner: str, src: Tensor, dst: Tensor, row: Tensor, col: Tensor,
                       att: Tensor) -> None:
    """Shapes of :func:`pair_logits`' inputs (host-side: no sync)."""
    if src.dim() != 3 or dst.dim() != 3 or src.shape[1:] != dst.shape[1:] \
            or tuple(att.shape) != (1, *src.shape[1:]) or row.shape != col.shape \
            or row.dim() != 1:
        raise ConfigError(f"'{owner}': 'src' (n, H, C), 'dst' (m, H, C), 'att' (1, H, C) "
                          f"and 'row', 'col' (M,) expected, received {tuple(src.shape)}, "
                          f"{tuple(dst.shape)}, {tuple(att.shape)}, {tuple(row.shape)} and "
                          f"{tuple(col.shape)}")


def per_edge_pair_logits(src: Tensor, dst: Tensor, row: Tensor, col: Tensor, att: Tensor,
                         negative_slope: float) -> Tensor:
    """:func:`pair_logits` by (M, H, C) per-edge tensors, as PyG's ``GATv2Conv`` computes
    them (``index_select`` gathers): its form for mixed dtypes, and the plain form it is
    timed against."""
    _check_pair_inputs("per_edge_pair_logits", src, dst, row, col, att)
    pre = src.index_select(0, col) + dst.index_select(0, row)
    return (F.leaky_relu(pre, negative_slope) * att).sum(-1)


def pair_logits(src: Tensor, dst: Tensor, row: Tensor, col: Tensor, att: Tensor,
                negative_slope: float) -> Tensor:
    r"""GATv2's logits :math:`e_{ij,h} = \sum_c a_{h,c}\,
    \mathrm{LeakyReLU}(\mathrm{src}_{j,h,c} + \mathrm{dst}_{i,h,c})` of the edges
    ``col -> row``: (M, H) from ``src`` (sources, H, C), ``dst`` (targets, H, C) and
    ``att`` (1, H, C), differentiable in all three (first order).

    Computed by chunks of edges, so that no (M, H, C) tensor is made or saved for
    backward (the per-edge form saves two: at 300,000 edges and 4 heads of 128 channels,
    1.2 GB a layer); the backward recomputes each chunk's sums. No device sync. Inputs of
    different dtypes (e.g. half-precision activations with a float32 ``att``, as under
    autocast) are first cast to the dtype torch's type promotion gives them, the dtype of
    the per-edge form's result (:func:`per_edge_pair_logits`); their gradients come back
    in their own dtypes."""
    _check_pair_inputs("pair_logits", src, dst, row, col, att)
    dtype = torch.promote_types(torch.promote_types(src.dtype, dst.dtype), att.dtype)
    same = dst is src
    src, att = src.to(dtype), att.to(dtype)  # no copy where the dtype is already that
    dst = src if same else dst.to(dtype)
    return _PairLogits.apply(src, dst, row, col, att, float(negative_slope))


class BatchRows(NamedTuple):
    r"""A batch's rows of one operator, gathered once per step and shared by every layer
    that uses the operator (their codebooks differ; the gather does not).

    The in-batch part :math:`C_{B,B}` is a (b, b) CSR matrix (``inner``). The entries from
    out-of-batch sources keep their place in the flat lists below with weight ``outer``
    (0 for in-batch sources): a layer turns them into its (b, K) low-rank part, dense or
    CSR, with its own assignment (:func:`lowrank_forward`), without sorting or merging. The backward
    term's entries (batch node ``i`` -> out-of-batch ``j``, weight :math:`C_{ji}`) come from
    the same gather when the operator's pattern is symmetric, else from one more.

    Device syncs: one to size the gather, one to select the in-batch entries.
    """

    row: Tensor  # (M,) batch position of the target
    col: Tensor  # (M,) global id of the source
    outer: Tensor  # (M,) C_ij where the source is outside the batch, else 0
    num_inner: int  # entries with in-batch sources
    crow: Tensor  # (b + 1,) CSR row pointer of C_BB
    # (num_inner,) batch positions of the in-batch sources (sorted within a row on a GPU,
    # in the operator's order on the CPU)
    inner_col: Tensor
    inner_value: Tensor  # (num_inner,) their weights
    t_row: Tensor  # (M',) batch position of the sender i
    t_target: Tensor  # (M',) global id of the receiver j
    t_outer: Tensor  # (M',) C_ji where j is outside the batch, else 0 (``outer`` if C^T = C)
    # (num_inner,) C_ji at each in-batch entry (i, j): the values of C_BB^T on the same
    # pattern, when the operator's pattern is symmetric (else None)
    inner_t_value: Optional[Tensor] = None
    # (M,) batch position of each entry's source, -1 outside the batch, and (M,) each
    # entry's weight C_ij: the per-edge lists of attention layers and of exact layers with
    # constant inputs are built from them (``batch_rows`` always sets both)
    pos: Optional[Tensor] = None
    value: Optional[Tensor] = None

    @property
    def num_rows(self) -> int:
        return self.crow.numel() - 1

    def inner(self, dtype: torch.dtype, transposed: bool = False) -> Tensor:
        """(b, b) ``torch.sparse_csr`` matrix :math:`C_{B,B}`, or with ``transposed`` its
        transpose on a symmetric pattern (built on use: plain tensors are kept, so that
        models and graphs holding them can be deep-copied). On the CPU a row's columns
        are not sorted, which torch's documented CSR invariant asks for: the products
        here take them (checked with torch 2.13 and MKL), but an operation that checks
        the invariants (``check_invariants=True``) would refuse the matrix."""
        b = self.num_rows
        value = self.inner_t_value if transposed else self.inner_value
        if value is None:
            raise ValueError("BatchRows.inner: no transposed values (the pattern is not "
                             "symmetric)")
        return csr(self.crow, self.inner_col, value.to(dtype), (b, b))

    def inner_matmul(self, x: Tensor) -> Tensor:
        r""":math:`C_{B,B}\, x` for (b, D) ``x``; its backward, on a symmetric pattern, is
        one CSR product with :math:`C_{B,B}^\top` (the same matrix for GCN's values)."""
        a = self.inner(x.dtype)
        if self.inner_t_value is None:
            return spmm(a, x)
        a_t = a if self.inner_t_value is self.inner_value else self.inner(x.dtype, True)
        return transposed_matmul(a, a_t, x)


def batch_rows(op: SparseOperator, batch: Tensor, local: Tensor, symmetric: bool) -> BatchRows:
    """:class:`BatchRows` of ``op`` for ``batch``.

    Args:
        op: the full-graph operator.
        batch: (b,) batch node ids.
        local: (N,) batch position of every node, -1 outside the batch.
        symmetric: whether ``op``'s two CSR layouts have the same pattern (then the
            backward entries reuse the forward gather).
    """
    b = batch.numel()
    # Gathers by ``index_select``: on the CPU several times faster than indexing.
    row, idx = row_positions(op.rowptr, batch)
    col = op.col.index_select(0, idx)
    pos = local.index_select(0, col)
    inside = pos >= 0
    value = op.value.index_select(0, idx)
    outer = torch.where(inside, 0.0, value)
    # In-batch entries in the gather's order: by row (no duplicates: the operator's rows
    # have none), the batch positions within a row in any order.
    sel = inside.nonzero().view(-1)
    inner_pos = pos.index_select(0, sel)
    if row.device.type != "cpu":
        # cuSPARSE documents CSR with sorted columns; torch's CPU products (MKL's and its
        # own) take them in any order, so the CPU skips this sort of the in-batch entries
        # (README, "None of 9 (b, K) configs brings Tolokers within 1.15x": the one-batch
        # configs' epochs fell by 0.02-0.04 s).
        order = torch.argsort(row.index_select(0, sel) * b + inner_pos)
        sel, inner_pos = sel.index_select(0, order), inner_pos.index_select(0, order)
    inner_row = row.index_select(0, sel)
    crow = torch.searchsorted(inner_row, torch.arange(b + 1, device=row.device))
    inner_value = value.index_select(0, sel)
    inner_t_value = None
    if symmetric:
        t_row, t_target = row, col
        if op.t_value is op.value:  # symmetric values too (GCN): C^T = C
            inner_t_value, t_outer = inner_value, outer
        else:
            t_value = op.t_value.index_select(0, idx)
            inner_t_value = t_value.index_select(0, sel)
            t_outer = torch.where(inside, 0.0, t_value)
    else:
        t_row, t_idx = row_positions(op.t_rowptr, batch)
        t_target, t_value = op.t_col.index_select(0, t_idx), op.t_value.index_select(0, t_idx)
        t_outer = torch.where(local.index_select(0, t_target) < 0, t_value, 0.0)
    return BatchRows(row, col, outer, sel.numel(), crow, inner_pos, inner_value, t_row,
                     t_target, t_outer, inner_t_value, pos, value)


def codeword_edges(rows: BatchRows, assignment: Tensor, num_codewords: int) -> BatchEdges:
    """The batch's messages as per-edge lists, every out-of-batch source replaced by its
    codeword (column ``b + c(j)``), one edge per neighbour: not merged, so no sort and no
    device sync. Sorted by row (the gather's order), ``multiplicity`` 1.

    Args:
        rows: the step's gather (:func:`step_rows`).
        assignment: (N,) codeword of every node.
        num_codewords: K.
    """
    pos, value = rows.pos, rows.value
    if pos is None or value is None:
        raise ValueError("codeword_edges: 'rows' has no source positions or values (build "
                         "it with batch_rows)")
    b = rows.num_rows
    code = assignment.index_select(0, rows.col).to(pos.dtype)
    col = torch.where(pos >= 0, pos, code + b)
    return BatchEdges(rows.row, col, value, torch.ones_like(value), b, b + num_codewords,
                      merged=False)


def _per_codeword(row: Tensor, node: Tensor, value: Tensor, assignment: Tensor, b: int,
                  num_codewords: int) -> Tensor:
    """Dense (b, K): ``value`` of each entry summed at (``row``, codeword of ``node``)."""
    out = torch.zeros(b * num_codewords, dtype=value.dtype, device=value.device)
    codes = assignment.index_select(0, node).long()
    out.index_add_(0, row * num_codewords + codes, value)
    return out.view(b, num_codewords)


def _lowrank(row: Tensor, node: Tensor, value: Tensor, assignment: Tensor, b: int,
             num_codewords: int, sparse: bool) -> Any:
    if sparse:
        return SparseLowRank(row, assignment.index_select(0, node).long(), value, b,
                             num_codewords)
    return _per_codeword(row, node, value, assignment, b, num_codewords)


def lowrank_forward(rows: BatchRows, assignment: Tensor, num_codewords: int,
                    sparse: bool = False) -> Any:
    r"""The (b, K) matrix :math:`C_{B,\bar B} R`: the weight each batch node receives
    through each codeword, for one layer's assignment; dense, or with ``sparse`` a
    :class:`SparseLowRank` over the gathered entries."""
    return _lowrank(rows.row, rows.col, rows.outer, assignment, rows.num_rows,
                    num_codewords, sparse)


def lowrank_backward_rows(rows: BatchRows, assignment: Tensor, num_codewords: int,
                          mask: Optional[Tensor] = None, sparse: bool = False) -> Any:
    r"""The (b, K) matrix :math:`W_{ik} = \sum_{j \notin B, c(j)=k} C_{ji}` of the
    backward term, from :class:`BatchRows` (dense, or with ``sparse`` a
    :class:`SparseLowRank`); ``mask`` (N,) drops receivers without a gradient."""
    value = rows.t_outer
    if mask is not None:
        mask = mask.to(device=value.device)
        value = value * mask.index_select(0, rows.t_target).to(value.dtype)
    return _lowrank(rows.t_row, rows.t_target, value, assignment, rows.num_rows,
                    num_codewords, sparse)


def step_rows(graph: VQGraph, op: SparseOperator, batch: Tensor) -> BatchRows:
    """:func:`batch_rows` of ``op`` for ``batch``, computed once per step: the layers of
    one forward that share the operator and the batch tensor share the gather.

    The graph keeps the last result (for the same operator, the same ``batch`` object and
    its unchanged contents); the operator's symmetry is checked once per operator.
    """
    last = graph.step_cache
    if last is not None and last[0] is op and last[1] is batch and last[2] == batch._version:
        return last[3]
    symmetric = graph.cached(("symmetric", id(op)), lambda: bool(
        torch.equal(op.rowptr, op.t_rowptr) and torch.equal(op.col, op.t_col)))
    local = graph.local
    local[batch] = torch.arange(batch.numel(), device=batch.device)
    try:
        rows = batch_rows(op, batch, local, symmetric)
    finally:
        local[batch] = -1
    graph.step_cache = (op, batch, batch._version, rows)
    return rows
