"""Per-batch low-rank operators [C_BB | C_B~B R]: hand graph, dense references, large indices."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vqgnn import ConfigError
from vqgnn.batching import lowrank
from vqgnn.batching.graph import sorted_csr
from vqgnn.batching.lowrank import (
    THIN_BACKWARD,
    THIN_FORWARD,
    BackwardEdges,
    BatchEdges,
    SparseLowRank,
    attention_aggregate,
    backward_edges,
    batch_edges,
    batch_rows,
    build_operator,
    codeword_edges,
    csr_matmul,
    gather_rows,
    lowrank_apply,
    lowrank_backward,
    lowrank_matmul,
    merge_duplicates,
    operator_matmul,
    sparse_lowrank_pays,
    thin_matmul,
    thin_matmul_t,
    to_sparse_csr,
    transposed_matmul,
)

# A hand graph of 9 nodes (node 8 isolated): messages src -> dst with weight w.
EDGES = [  # (src, dst, w)
    (1, 5, 0.1), (3, 5, 0.2), (4, 5, 0.3), (0, 5, 0.4), (5, 5, 0.5),  # into batch node 5
    (1, 0, 0.6), (6, 0, 0.7), (7, 0, 0.8), (2, 0, 0.9),               # into batch node 0
    (3, 2, 1.0), (4, 2, 1.1),                                         # into batch node 2
    (5, 1, 1.2), (0, 6, 1.3), (2, 3, 1.4), (6, 7, 1.5), (1, 4, 1.6), (5, 4, 1.7),
]
N, K = 9, 3
BATCH = [5, 0, 2]  # positions 0, 1, 2 (deliberately not sorted)
# Codewords of the out-of-batch nodes 1, 3, 4 -> 1; 6, 7 -> 2; 8 -> 0. Batch nodes get 2,
# which must never be used for them.
ASSIGNMENT = [2, 1, 2, 1, 1, 2, 2, 2, 0]
# The expected (b, b + K) matrix [C_BB | C_B~B R] and its merge counts, by hand.
EXPECTED = [
    [0.5, 0.4, 0.0, 0.0, 0.1 + 0.2 + 0.3, 0.0],
    [0.0, 0.0, 0.9, 0.0, 0.6, 0.7 + 0.8],
    [0.0, 0.0, 0.0, 0.0, 1.0 + 1.1, 0.0],
]
EXPECTED_COUNT = [
    [1, 1, 0, 0, 3, 0],
    [0, 0, 1, 0, 1, 2],
    [0, 0, 0, 0, 2, 0],
]


def hand_graph(device="cpu"):
    src, dst, w = zip(*EDGES)
    edge_index = torch.tensor([src, dst], device=device)
    value = torch.tensor(w, device=device)
    dense = torch.zeros(N, N, device=device)
    dense[edge_index[1], edge_index[0]] = value  # C[i, j]: weight of j -> i
    return edge_index, value, dense


def setup(device="cpu", index_dtype=torch.long):
    edge_index, value, dense = hand_graph(device)
    op = build_operator(edge_index, value, N)
    batch = torch.tensor(BATCH, device=device)
    local = torch.full((N,), -1, dtype=torch.long, device=device)
    local[batch] = torch.arange(batch.numel(), device=device)
    assignment = torch.tensor(ASSIGNMENT, dtype=index_dtype, device=device)
    return op, batch, local, assignment, dense


def to_dense(row, col, value, shape):
    out = torch.zeros(shape, dtype=value.dtype, device=value.device)
    return out.index_put_((row, col), value, accumulate=True)


def dense_reference(dense, batch, assignment, k):
    """[C_BB | C_B~B R] from the dense N x N matrix."""
    n = dense.size(0)
    outside = torch.ones(n, dtype=torch.bool, device=dense.device)
    outside[batch] = False
    r = torch.nn.functional.one_hot(assignment.long(), k).to(dense.dtype) * outside[:, None]
    return torch.cat([dense[batch][:, batch], dense[batch] @ r], dim=1)


# --- CSR construction ---------------------------------------------------------------------


def test_build_operator_matches_dense_in_both_layouts(device):
    edge_index, value, dense = hand_graph(device)
    op = build_operator(edge_index, value, N)
    assert op.num_nodes == N
    assert op.rowptr.tolist()[-1] == len(EDGES)
    for rowptr, col, val, ref in ((op.rowptr, op.col, op.value, dense),
                                  (op.t_rowptr, op.t_col, op.t_value, dense.t())):
        row = torch.repeat_interleave(torch.arange(N, device=device), rowptr.diff())
        assert_close(to_dense(row, col, val, (N, N)), ref)
        key = row * N + col
        assert bool((key.diff() > 0).all())  # sorted by (row, col), no duplicates


def test_build_operator_shares_the_transpose_of_a_symmetric_matrix():
    src = torch.tensor([0, 1, 1, 2, 2, 3])
    dst = torch.tensor([1, 0, 2, 1, 3, 2])  # an undirected path 0 - 1 - 2 - 3
    edge_index = torch.stack([src, dst])
    deg = torch.bincount(dst, minlength=4).float()
    sym = build_operator(edge_index, (deg[src] * deg[dst]).rsqrt(), 4)  # GCN-like
    assert sym.t_rowptr is sym.rowptr and sym.t_col is sym.col and sym.t_value is sym.value
    assert sym.rowptr.dtype == sym.col.dtype == torch.int32  # N and E below 2^31
    mean = build_operator(edge_index, 1.0 / deg[dst], 4)  # one pattern, other values
    assert mean.t_rowptr is mean.rowptr and mean.t_col is mean.col
    assert mean.t_value is not mean.value
    dense = torch.zeros(4, 4)
    dense[dst, src] = 1.0 / deg[dst]
    row = torch.repeat_interleave(torch.arange(4), mean.t_rowptr.diff())
    assert_close(to_dense(row, mean.t_col, mean.t_value, (4, 4)), dense.t())
    directed = build_operator(edge_index[:, :3], torch.ones(3), 4)  # 1 -> 2 without 2 -> 1
    assert directed.t_col is not directed.col and directed.t_col.dtype == torch.int32


def test_sorted_csr_rectangular_with_empty_rows():
    row = torch.tensor([3, 0, 3, 0, 1])
    col = torch.tensor([4, 6, 0, 1, 2])
    value = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    rowptr, c, v = sorted_csr(row, col, value, num_rows=5, num_cols=7)
    assert rowptr.tolist() == [0, 2, 3, 3, 5, 5]
    assert c.tolist() == [1, 6, 2, 0, 4]
    assert v.tolist() == [4.0, 2.0, 5.0, 3.0, 1.0]


def test_gather_rows_equals_dense_row_slicing(device):
    edge_index, value, dense = hand_graph(device)
    op = build_operator(edge_index, value, N)
    rows = torch.tensor([5, 8, 0, 2, 5], device=device)  # unsorted, an empty row, a repeat
    row, col, val = gather_rows(op.rowptr, op.col, op.value, rows)
    assert_close(to_dense(row, col, val, (rows.numel(), N)), dense[rows])
    empty = gather_rows(op.rowptr, op.col, op.value, torch.tensor([8], device=device))
    assert all(t.numel() == 0 for t in empty)


# --- batch edges ------------------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_batch_edges_merged_and_unmerged_match_the_hand_matrix(device, index_dtype):
    op, batch, local, assignment, dense = setup(device, index_dtype)
    b, shape = len(BATCH), (len(BATCH), len(BATCH) + K)
    expected = torch.tensor(EXPECTED, device=device)
    assert_close(dense_reference(dense, batch, assignment, K), expected)
    merged = batch_edges(op, batch, local, assignment, K, merge=True)
    plain = batch_edges(op, batch, local, assignment, K, merge=False)
    assert isinstance(merged, BatchEdges)
    assert (merged.num_rows, merged.num_cols, merged.merged) == (b, b + K, True)
    assert (plain.num_rows, plain.num_cols, plain.merged) == (b, b + K, False)
    assert_close(to_dense(merged.row, merged.col, merged.value, shape), expected)
    assert_close(to_dense(plain.row, plain.col, plain.value, shape), expected)
    # Merged counts are the number of entries merged; unmerged counts are all one.
    count = to_dense(merged.row, merged.col, merged.multiplicity, shape)
    assert_close(count, torch.tensor(EXPECTED_COUNT, dtype=count.dtype, device=device))
    assert bool((plain.multiplicity == 1).all()) and plain.row.numel() == 11
    assert merged.row.numel() == 7
    key = merged.row * (b + K) + merged.col
    assert bool((key.diff() > 0).all())  # sorted, one entry per (row, col)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_codeword_edges_are_one_edge_per_neighbour_sorted_by_row(device, index_dtype):
    """The attention layers' lean edges: the step's gather, out-of-batch sources as
    ``b + codeword``, unmerged: the counts of the hand matrix, rows in order."""
    op, batch, local, assignment, _ = setup(device, index_dtype)
    b, shape = len(BATCH), (len(BATCH), len(BATCH) + K)
    edges = codeword_edges(batch_rows(op, batch, local, symmetric=False), assignment, K)
    assert (edges.num_rows, edges.num_cols, edges.merged) == (b, b + K, False)
    count = to_dense(edges.row, edges.col, edges.multiplicity, shape)
    assert_close(count, torch.tensor(EXPECTED_COUNT, dtype=count.dtype, device=device))
    assert bool((edges.row.diff() >= 0).all())
    plain = batch_edges(op, batch, local, assignment, K, merge=False)
    assert torch.equal(edges.row, plain.row) and torch.equal(edges.col, plain.col)
    assert torch.equal(edges.value, plain.value)  # the operator's weights C_ij
    no_pos = batch_rows(op, batch, local, symmetric=False)._replace(pos=None)
    with pytest.raises(ValueError, match="'rows' has no source positions or values"):
        codeword_edges(no_pos, assignment, K)


def test_batch_edges_maps_in_batch_sources_to_batch_positions():
    op, batch, local, assignment, _ = setup()
    plain = batch_edges(op, batch, local, assignment, K, merge=False)
    in_batch = plain.col < len(BATCH)
    pairs = sorted(zip(plain.row[in_batch].tolist(), plain.col[in_batch].tolist(),
                       plain.value[in_batch].tolist()))
    # 5 -> 5 (pos 0 -> 0), 0 -> 5 (pos 1 -> 0), 2 -> 0 (pos 2 -> 1)
    assert [(r, c) for r, c, _ in pairs] == [(0, 0), (0, 1), (1, 2)]
    assert_close(torch.tensor([v for *_, v in pairs]), torch.tensor([0.5, 0.4, 0.9]))


def test_batch_edges_and_backward_edges_leave_local_unchanged():
    op, batch, local, assignment, _ = setup()
    before = local.clone()
    batch_edges(op, batch, local, assignment, K, merge=True)
    batch_edges(op, batch, local, assignment, K, merge=False)
    backward_edges(op, batch, local, assignment)
    assert torch.equal(local, before)


def test_merge_duplicates_hand_case():
    row, col = torch.tensor([1, 0, 1, 1]), torch.tensor([2, 3, 2, 0])
    r, c, v, n = merge_duplicates(row, col, torch.tensor([1.0, 2.0, 3.0, 4.0]), num_cols=4)
    assert r.tolist() == [0, 1, 1] and c.tolist() == [3, 0, 2]
    assert v.tolist() == [2.0, 4.0, 4.0] and n.tolist() == [1.0, 1.0, 2.0]


def test_batch_without_incoming_edges_gives_empty_operators():
    op, _, _, assignment, _ = setup()
    batch = torch.tensor([8])  # the isolated node
    local = torch.full((N,), -1, dtype=torch.long)
    local[batch] = 0
    edges = batch_edges(op, batch, local, assignment, K, merge=True)
    assert edges.row.numel() == 0 and (edges.num_rows, edges.num_cols) == (1, 1 + K)
    assert_close(to_sparse_csr(edges).to_dense(), torch.zeros(1, 1 + K))
    back = backward_edges(op, batch, local, assignment)
    assert_close(lowrank_backward(back, 1, K), torch.zeros(1, K))


# --- backward edges ----------------------------------------------------------------------------


def test_backward_edges_keep_out_of_batch_targets_with_transposed_values(device):
    op, batch, local, assignment, dense = setup(device)
    edges = backward_edges(op, batch, local, assignment)
    assert isinstance(edges, BackwardEdges)
    got = sorted(zip(edges.row.tolist(), edges.target.tolist(), edges.code.tolist()))
    # Batch senders: 5 -> 1, 5 -> 4 (pos 0), 0 -> 6 (pos 1), 2 -> 3 (pos 2); 0 -> 5, 5 -> 5
    # and 2 -> 0 stay inside the batch and are dropped.
    assert got == [(0, 1, 1), (0, 4, 1), (1, 6, 2), (2, 3, 1)]
    # value = C_ji, what target j receives from sender i.
    assert_close(edges.value, dense[edges.target, batch[edges.row]])
    # Dense: C^T restricted to batch rows and out-of-batch columns.
    ref = dense.t()[batch].clone()
    ref[:, batch] = 0
    assert_close(to_dense(edges.row, edges.target, edges.value, (len(BATCH), N)), ref)


def test_lowrank_backward_equals_dense_sum(device):
    op, batch, local, assignment, dense = setup(device)
    edges = backward_edges(op, batch, local, assignment)
    out = lowrank_backward(edges, len(BATCH), K)
    outside = torch.ones(N, dtype=torch.bool, device=device)
    outside[batch] = False
    r = torch.nn.functional.one_hot(assignment, K).float() * outside[:, None]
    assert_close(out, dense.t()[batch] @ r)
    assert_close(out, torch.tensor([[0.0, 1.2 + 1.7, 0.0], [0.0, 0.0, 1.3], [0.0, 1.4, 0.0]],
                                   device=device))


# --- sparse products ----------------------------------------------------------------------------


def test_to_sparse_csr_product_equals_dense_product(device):
    op, batch, local, assignment, _ = setup(device)
    edges = batch_edges(op, batch, local, assignment, K, merge=True)
    matrix = to_sparse_csr(edges)
    assert matrix.layout == torch.sparse_csr and matrix.shape == (len(BATCH), len(BATCH) + K)
    # Valid CSR (sorted rows, columns in range) by torch's own invariant checks.
    torch.sparse_csr_tensor(matrix.crow_indices(), matrix.col_indices(), matrix.values(),
                            matrix.shape, check_invariants=True)
    y = torch.randn(len(BATCH) + K, 4, generator=torch.Generator().manual_seed(0)).to(device)
    expected = torch.tensor(EXPECTED, device=device)
    assert_close(matrix.to_dense(), expected)
    assert_close(matrix @ y, expected @ y)


def test_csr_matmul_equals_dense_product(device):
    edge_index, value, dense = hand_graph(device)
    op = build_operator(edge_index, value, N)
    y = torch.randn(N, 3, generator=torch.Generator().manual_seed(0)).to(device)
    assert_close(csr_matmul(op.rowptr, op.col, op.value, y), dense @ y)
    assert_close(csr_matmul(op.t_rowptr, op.t_col, op.t_value, y), dense.t() @ y)


# --- the lean step's products -------------------------------------------------------------


@pytest.mark.parametrize("columns", [1, THIN_FORWARD - 1, THIN_FORWARD, THIN_BACKWARD,
                                     THIN_BACKWARD + 1])
def test_thin_matmul_forms_equal_the_plain_products(device, columns):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(37, 23, generator=gen).to(device)
    b = torch.randn(23, columns, generator=gen).to(device)
    g = torch.randn(37, columns, generator=gen).to(device)
    assert_close(thin_matmul(a, b), a @ b)
    assert_close(thin_matmul_t(a, g), a.t() @ g)


@pytest.mark.parametrize("columns", [2, THIN_BACKWARD + 1])
def test_lowrank_matmul_gradients_equal_autograd_of_the_plain_product(device, columns):
    gen = torch.Generator().manual_seed(1)
    dense = torch.randn(9, 5, generator=gen, dtype=torch.float64).to(device)
    values = torch.randn(5, columns, generator=gen, dtype=torch.float64).to(device)
    grad = torch.randn(9, columns, generator=gen, dtype=torch.float64).to(device)
    d1, v1 = dense.clone().requires_grad_(), values.clone().requires_grad_()
    d2, v2 = dense.clone().requires_grad_(), values.clone().requires_grad_()
    out = lowrank_matmul(d1, v1)
    out.backward(grad)
    (d2 @ v2).backward(grad)
    assert_close(out, d2 @ v2)
    assert_close(v1.grad, v2.grad)
    assert_close(d1.grad, d2.grad)
    assert torch.autograd.gradcheck(lowrank_matmul, (d1.detach().requires_grad_(),
                                                     v1.detach().requires_grad_()))


@pytest.mark.parametrize("case", ["gcn", "mean", "directed"])
def test_inner_matmul_backward_equals_the_dense_in_batch_matrix(device, case):
    """C_BB x and its gradient C_BB^T g: one transposed CSR product on a symmetric pattern
    (the matrix itself for symmetric values), torch's own backward on a directed one."""
    src = torch.tensor([0, 1, 1, 2, 2, 3, 3, 4, 0, 4, 0, 2])
    dst = torch.tensor([1, 0, 2, 1, 3, 2, 4, 3, 4, 0, 2, 0])  # a 5-cycle and a chord 0 - 2
    if case == "directed":
        src, dst = src[::2], dst[::2]
    edge_index = torch.stack([src, dst]).to(device)
    deg = torch.bincount(dst, minlength=5).float().clamp_min(1).to(device)
    src, dst = edge_index
    value = (deg[src] * deg[dst]).rsqrt() if case == "gcn" else 1.0 / deg[dst]
    op = build_operator(edge_index, value, 5)
    symmetric = case != "directed"
    batch = torch.tensor([3, 0, 4, 1], device=device)
    local = torch.full((5,), -1, dtype=torch.long, device=device)
    local[batch] = torch.arange(4, device=device)
    rows = batch_rows(op, batch, local, symmetric)
    assert (rows.inner_t_value is rows.inner_value) == (case == "gcn")
    assert (rows.inner_t_value is None) == (case == "directed")
    if symmetric:  # node 0 (row 1) hears 1, 2, 4: batch positions 3 and 2 (2 is outside)
        inner = rows.inner_col[rows.crow[1]:rows.crow[2]].tolist()
        # the CPU keeps the gather's order (no sort); a GPU sorts within the row
        assert inner == ([3, 2] if device == "cpu" else [2, 3])
    full = torch.zeros(5, 5, device=device)
    full[dst, src] = value  # C[i, j]: weight of j -> i
    c_bb = full[batch][:, batch]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, generator=gen).to(device)
    grad = torch.randn(4, 3, generator=gen).to(device)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = rows.inner_matmul(x1)
    out.backward(grad)
    (c_bb @ x2).backward(grad)
    assert_close(out, c_bb @ x)
    assert_close(x1.grad, x2.grad)
    if symmetric:
        assert_close(rows.inner(torch.float32, transposed=True).to_dense(), c_bb.t())
    else:
        with pytest.raises(ValueError, match="not symmetric"):
            rows.inner(torch.float32, transposed=True)


@pytest.mark.parametrize("case", ["gcn", "mean", "directed"])
def test_operator_matmul_backward_is_the_transposed_product(device, case):
    src = torch.tensor([0, 1, 1, 2, 2, 3, 0, 2])
    dst = torch.tensor([1, 0, 2, 1, 3, 2, 2, 0])
    if case == "directed":
        src, dst = src[::2], dst[::2]
    deg = torch.bincount(dst, minlength=4).float().clamp_min(1)
    value = (deg[src] * deg[dst]).rsqrt() if case == "gcn" else 1.0 / deg[dst]
    op = build_operator(torch.stack([src, dst]).to(device), value.to(device), 4)
    dense = torch.zeros(4, 4)
    dense[dst, src] = value
    dense = dense.to(device)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, generator=gen).to(device).requires_grad_()
    grad = torch.randn(4, 2, generator=gen).to(device)
    out = operator_matmul(op, x)
    out.backward(grad)
    assert_close(out, dense @ x.detach())
    assert_close(x.grad, dense.t() @ grad)


# --- large indices: no int16 overflow -------------------------------------------------------------


@pytest.fixture(scope="module")
def path_case():
    """b = 30000 batch nodes of a 40000-node path graph, K = 5000: b + K > 32767."""
    n, b, k = 40_000, 30_000, 5_000
    gen = torch.Generator().manual_seed(0)
    path = torch.arange(n - 1)
    edge_index = torch.cat([torch.stack([path, path + 1]), torch.stack([path + 1, path])], 1)
    value = (edge_index[0] % 7 + 1).float()  # weights that depend on the source
    op = build_operator(edge_index, value, n)
    batch = torch.randperm(n, generator=gen)[:b]
    assignment = torch.randint(k, (n,), generator=gen)
    local = torch.full((n,), -1, dtype=torch.long)
    local[batch] = torch.arange(b)
    return edge_index, value, op, batch, local, assignment, b, k


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
def test_batch_plus_codewords_above_int16_range_map_correctly(path_case, index_dtype):
    edge_index, value, op, batch, local, assignment, b, k = path_case
    assignment = assignment.to(index_dtype)
    # Expected entries straight from the edge list (not through the CSR layout).
    src, dst = edge_index
    into = local[dst] >= 0
    src, dst, w = src[into], dst[into], value[into]
    exp_col = torch.where(local[src] >= 0, local[src], b + assignment[src].long())
    expected = torch.sparse_coo_tensor(torch.stack([local[dst], exp_col]), w, (b, b + k),
                                       check_invariants=True).coalesce()

    for merge in (False, True):
        edges = batch_edges(op, batch, local, assignment, k, merge=merge)
        assert edges.num_cols == b + k > 32767
        assert int(edges.col.min()) >= 0 and int(edges.col.max()) < b + k
        assert int(edges.col.max()) > 32767  # the region where int16 arithmetic wrapped
        got = torch.sparse_coo_tensor(torch.stack([edges.row, edges.col]), edges.value,
                                      (b, b + k), check_invariants=True).coalesce()
        assert torch.equal(got.indices(), expected.indices())
        assert_close(got.values(), expected.values())
    # The merged operator as a sparse product, against the coalesced reference.
    y = torch.randn(b + k, 2, generator=torch.Generator().manual_seed(1))
    assert_close(to_sparse_csr(edges) @ y, torch.sparse.mm(expected, y))
    back = backward_edges(op, batch, local, assignment)
    assert bool((local[back.target] < 0).all())
    assert torch.equal(back.code, assignment[back.target].long())
    assert int(back.code.max()) == k - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_lowrank_products_equal_the_dense_matrix(dtype):
    """The CSR low-rank part over gathered entries (repeated (row, code) pairs, zero
    weights for in-batch sources, an empty row) multiplies like the dense (b, K) matrix it
    stands for, forward, backward (the codeword messages' gradient) and without autograd.
    CPU only: no step takes it on another device (``sparse_lowrank_pays``)."""
    device = "cpu"
    gen = torch.Generator().manual_seed(2)
    b, k, d, m = 5, 4, 3, 14
    row = torch.sort(torch.randint(b, (m,), generator=gen)).values
    row[row == 2] = 3  # row 2 empty
    code = torch.randint(k, (m,), generator=gen)
    value = torch.rand(m, generator=gen, dtype=dtype)
    value[::4] = 0.0  # in-batch sources
    low = SparseLowRank(row.to(device), code.to(device), value.to(device), b, k)
    dense = torch.zeros(b, k, dtype=dtype).index_put_((row, code), value, accumulate=True)
    dense = dense.to(device)
    values = torch.randn(k, d, generator=gen, dtype=dtype).to(device).requires_grad_()
    grad = torch.randn(b, d, generator=gen, dtype=dtype).to(device)
    got = lowrank_matmul(low, values)
    want = dense @ values
    assert_close(got, want)
    assert_close(torch.autograd.grad(got, values, grad)[0],
                 torch.autograd.grad(want, values, grad)[0])
    assert_close(lowrank_apply(low, values.detach()), want.detach())
    assert_close(lowrank_apply(dense, values.detach()), want.detach())
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda v: lowrank_matmul(low, v), (values,))
    with pytest.raises(ConfigError, match=r"'values' must have shape \(4, D\), received "
                                          r"\(3, 3\)"):
        lowrank_matmul(low, values[:3])
    for part in (low, dense):
        with pytest.raises(ConfigError, match=r"'lowrank_apply': 'values' must have shape "
                                              r"\(4, D\), received \(3, 3\)"):
            lowrank_apply(part, values.detach()[:3])
    with pytest.raises(ConfigError, match=r"'lowrank_matmul': 'values' must have shape "
                                          r"\(4, D\), received \(4,\)"):
        lowrank_matmul(dense, values[:, 0])


def test_sparse_lowrank_pays_on_few_entries_on_the_cpu_only():
    cpu, f32 = torch.device("cpu"), torch.float32
    b, k = 4096, 1024  # b K = 4,194,304
    assert sparse_lowrank_pays(4096 * 9, b, k, 512, cpu, f32)  # Minesweeper: b K / 114
    assert sparse_lowrank_pays(4096 * 89, b, k, 10, cpu, f32)  # Tolokers: b K / 11.5
    assert sparse_lowrank_pays(b * k // 8, b, k, 8, cpu, f32)  # at both limits
    assert not sparse_lowrank_pays(b * k // 8 + 1, b, k, 512, cpu, f32)
    assert not sparse_lowrank_pays(4096 * 89, b, k, 7, cpu, f32)  # thin: dense is cheap
    assert not sparse_lowrank_pays(4096 * 300, b, k, 512, cpu, f32)  # b K / 3.4: dense
    assert not sparse_lowrank_pays(4096 * 9, b, k, 512, torch.device("cuda"), f32)
    assert not sparse_lowrank_pays(4096 * 9, b, k, 512, cpu, torch.bfloat16)


def test_the_lean_products_name_the_argument_of_a_bad_shape():
    a, b = torch.zeros(4, 3), torch.zeros(5, 2)
    with pytest.raises(ConfigError, match="'thin_matmul': 'a' and 'b'.*\\(4, 3\\) and \\(5, 2\\)"):
        thin_matmul(a, b)
    with pytest.raises(ConfigError, match="'thin_matmul_t'"):
        thin_matmul_t(a, b)
    adj = torch.eye(3).to_sparse_csr()
    with pytest.raises(ConfigError, match="'transposed_matmul'.*'x' of shape \\(3, D\\)"):
        transposed_matmul(adj, adj, torch.zeros(4, 2))
    edge_index, value, _ = hand_graph()
    with pytest.raises(ConfigError, match="'operator_matmul': 'x' must have shape \\(9, D\\)"):
        operator_matmul(build_operator(edge_index, value, N), torch.zeros(8, 2))


def _attention_reference(edges: BatchEdges, alpha: torch.Tensor,
                         value: torch.Tensor) -> torch.Tensor:
    msg = value[edges.col] * alpha.unsqueeze(-1)
    return msg.new_zeros(edges.num_rows, *msg.shape[1:]).index_add(0, edges.row, msg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("duplicates", [False, True])
def test_attention_aggregate_equals_per_edge_messages_with_gradients(duplicates, dtype,
                                                                     device):
    # Row-sorted edges with an empty row (3), a source no edge reads (6), and, for a
    # per-edge list, a repeated (row, col) pair and a row whose columns are not sorted:
    # values and both gradients as the per-edge gather-multiply-scatter gives them.
    # int64 rows with int32 columns, as the full-graph operator's columns are.
    gen = torch.Generator().manual_seed(0)
    row = torch.tensor([0, 0, 0, 1, 2, 2, 4, 4, 4, 4], device=device)
    col = torch.tensor([0, 2, 5, 1, 3, 4, 0, 1, 5, 7], dtype=torch.int32, device=device)
    if duplicates:
        col[7] = 0  # row 4 reads source 0 twice
        col[0], col[2] = 5, 0  # row 0 reads 5, 2, 0
    num_rows, num_cols, heads, channels = 5, 8, 3, 4
    edges = BatchEdges(row, col, torch.ones(10), torch.ones(10), num_rows, num_cols,
                       merged=not duplicates)
    alpha = torch.rand(10, heads, generator=gen, dtype=dtype).to(device).requires_grad_()
    value = torch.randn(num_cols, heads, channels, generator=gen,
                        dtype=dtype).to(device).requires_grad_()
    grad = torch.randn(num_rows, heads, channels, generator=gen, dtype=dtype).to(device)
    got = attention_aggregate(edges, alpha, value)
    assert type(got.grad_fn).__name__ == "_AttentionAggregateBackward"  # not the fallback
    got_grads = torch.autograd.grad(got, (alpha, value), grad)
    want = _attention_reference(edges, alpha, value)
    want_grads = torch.autograd.grad(want, (alpha, value), grad)
    assert_close(got, want)
    assert got[3].abs().sum() == 0
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w)
    assert got_grads[1][6].abs().sum() == 0
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(
            lambda a, v: attention_aggregate(edges, a, v), (alpha, value))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_aggregate_with_more_edges_than_matrix_entries(dtype, device):
    """Unmerged edges of a dense batch can outnumber the rows x sources entries (the
    same pair many times; ``sampled_addmm`` refuses such a pattern): the weights'
    gradient then comes from the dense product, equal to the per-edge form's."""
    gen = torch.Generator().manual_seed(1)
    num_rows, num_cols, heads, channels = 2, 3, 2, 4
    m = num_rows * num_cols + 5  # 11 edges into 6 entries
    row = torch.sort(torch.randint(num_rows, (m,), generator=gen)).values.to(device)
    col = torch.randint(num_cols, (m,), generator=gen).to(device)
    edges = BatchEdges(row, col, torch.ones(m), torch.ones(m), num_rows, num_cols,
                       merged=False)
    alpha = torch.rand(m, heads, generator=gen, dtype=dtype).to(device).requires_grad_()
    value = torch.randn(num_cols, heads, channels, generator=gen,
                        dtype=dtype).to(device).requires_grad_()
    grad = torch.randn(num_rows, heads, channels, generator=gen, dtype=dtype).to(device)
    got = attention_aggregate(edges, alpha, value)
    assert type(got.grad_fn).__name__ == "_AttentionAggregateBackward"
    want = _attention_reference(edges, alpha, value)
    assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, (alpha, value), grad),
                    torch.autograd.grad(want, (alpha, value), grad)):
        assert_close(g, w)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(
            lambda a, v: attention_aggregate(edges, a, v), (alpha, value))


def test_attention_aggregate_other_dtypes_and_no_edges():
    row, col = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    edges = BatchEdges(row, col, torch.ones(3), torch.ones(3), 2, 3, merged=True)
    alpha = torch.rand(3, 2)
    value = torch.randn(3, 2, 4)
    want = _attention_reference(edges, alpha, value)
    got = attention_aggregate(edges, alpha.bfloat16(), value.bfloat16())
    assert got.dtype == torch.bfloat16
    assert_close(got.float(), want, atol=0.05, rtol=0.05)
    none = BatchEdges(row[:0], col[:0], torch.ones(0), torch.ones(0), 2, 3, merged=True)
    a0 = torch.rand(0, 2, requires_grad=True)
    v0 = torch.randn(3, 2, 4, requires_grad=True)
    out = attention_aggregate(none, a0, v0)
    out.sum().backward()
    assert out.shape == (2, 2, 4) and out.abs().sum() == 0
    assert v0.grad is not None and v0.grad.abs().sum() == 0
    with pytest.raises(ConfigError, match="'alpha' must have shape"):
        attention_aggregate(edges, alpha[:, :1], value)
    with pytest.raises(ConfigError, match=r"received \(3, 2\) and \(2, 2, 4\)"):
        attention_aggregate(edges, alpha, value[:2])


def _fused(out: torch.Tensor) -> bool:
    """Whether ``out`` comes from the fused form (directly, or through one cast)."""
    fn = out.grad_fn
    while fn is not None and type(fn).__name__ == "ToCopyBackward0":
        fn = fn.next_functions[0][0]
    return type(fn).__name__ == "_AttentionAggregateBackward"


@pytest.mark.parametrize("autocast", [False, True])
def test_attention_aggregate_half_and_mixed_dtypes_on_the_cpu(autocast):
    """On the CPU (no half-precision sparse kernels) half-precision and mixed inputs go
    through the fused form in float32: the per-edge form's result dtype and values, the
    gradients in the inputs' dtypes; also with forward and backward under autocast."""
    gen = torch.Generator().manual_seed(3)
    row = torch.tensor([0, 0, 1, 1, 1, 3, 3])
    col = torch.tensor([2, 0, 1, 4, 2, 0, 3])
    edges = BatchEdges(row, col, torch.ones(7), torch.ones(7), 4, 5, merged=True)
    alpha = torch.rand(7, 2, generator=gen)
    value = torch.randn(5, 2, 4, generator=gen)
    grad = torch.randn(4, 2, 4, generator=gen)
    for a_dtype, v_dtype, out_dtype in ((torch.bfloat16, torch.bfloat16, torch.bfloat16),
                                        (torch.float16, torch.float16, torch.float16),
                                        (torch.float32, torch.bfloat16, torch.float32)):
        a = alpha.to(a_dtype).requires_grad_()
        v = value.to(v_dtype).requires_grad_()
        a_ref, v_ref = a.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = attention_aggregate(edges, a, v)
            got_grads = torch.autograd.grad(got, (a, v), grad.to(got.dtype))
        want = _attention_reference(edges, a_ref, v_ref)
        want_grads = torch.autograd.grad(want, (a_ref, v_ref), grad.to(want.dtype))
        assert _fused(got) and got.dtype == want.dtype == out_dtype
        assert_close(got.float(), want.float(), atol=0.05, rtol=0.05)
        for g, w, t in zip(got_grads, want_grads, (a, v)):
            assert g.dtype == t.dtype
            assert_close(g.float(), w.float(), atol=0.05, rtol=0.05)


def test_attention_aggregate_in_half_precision_keeps_no_per_edge_tensor():
    """bfloat16 values with float32 weights (autocast's mix) by the fused form: no
    (M, H, C) tensor is made, as in float32."""
    from vqgnn.train.meters import TensorMemoryMeter

    gen = torch.Generator().manual_seed(6)
    m, rows, cols, heads, channels = 20_000, 300, 400, 2, 16  # (M, H, C): 2.5 MB in fp32
    row = torch.randint(0, rows, (m,), generator=gen).sort().values
    col = torch.randint(0, cols, (m,), generator=gen)
    edges = BatchEdges(row, col, torch.ones(m), torch.ones(m), rows, cols, merged=False)
    alpha = torch.rand(m, heads, generator=gen, requires_grad=True)
    value = torch.randn(cols, heads, channels, generator=gen).bfloat16().requires_grad_()
    grad = torch.randn(rows, heads, channels, generator=gen)
    peaks = []
    for fn in (_attention_reference, attention_aggregate):
        with TensorMemoryMeter() as meter:
            torch.autograd.grad(fn(edges, alpha, value), (alpha, value), grad)
        peaks.append(meter.peak)
    per_edge = m * heads * channels * 4
    assert peaks[0] >= per_edge  # the reference makes the (M, H, C) messages
    assert peaks[1] < per_edge / 2, peaks


def test_attention_aggregate_makes_no_syncing_call():
    # Forward and backward of the fused form call none of the data-dependent ops and
    # host reads that wait for a GPU (counted by benchmarks/host_syncs.py's patches).
    from benchmarks.host_syncs import count_syncs

    gen = torch.Generator().manual_seed(0)
    row = torch.randint(0, 50, (400,), generator=gen).sort().values
    col = torch.randint(0, 80, (400,), generator=gen)
    edges = BatchEdges(row, col, torch.ones(400), torch.ones(400), 50, 80, merged=False)
    alpha = torch.rand(400, 2, generator=gen, requires_grad=True)
    value = torch.randn(80, 2, 8, generator=gen, requires_grad=True)

    def step():
        attention_aggregate(edges, alpha, value).sum().backward()

    assert count_syncs(step) == {}
    assert alpha.grad is not None and value.grad is not None
    # the counter sees a syncing call when one is made:
    assert sum(count_syncs(lambda: torch.unique(col)).values()) == 1


def _pair_logits_reference(src, dst, row, col, att, slope):
    return (F.leaky_relu(src[col] + dst[row], slope) * att).sum(-1)


@pytest.mark.parametrize("chunk_elements", [None, 24])  # one chunk; chunks of 2 edges
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_logits_equal_the_per_edge_form_with_gradients(dtype, chunk_elements, device,
                                                            monkeypatch):
    """GATv2's logits by chunks of edges: values and the gradients of sources, targets and
    the attention vector as the per-edge (M, H, C) form gives them, with repeated pairs,
    a source no edge reads, sums exactly at 0 (leaky_relu's kink), int32 columns, and an
    edge count that the chunk does not divide."""
    if chunk_elements is not None:  # H * C = 12: 2 edges a chunk, 11 edges
        monkeypatch.setattr(lowrank, "PAIR_LOGIT_CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(3)
    heads, channels, slope = 3, 4, 0.2
    row = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3, 4, 4], device=device)
    col = torch.tensor([0, 2, 1, 1, 5, 3, 0, 4, 2, 5, 0], dtype=torch.int32, device=device)
    src = torch.randn(7, heads, channels, generator=gen, dtype=dtype).to(device)
    dst = torch.randn(5, heads, channels, generator=gen, dtype=dtype).to(device)
    dst[2] = -src[3]  # edge 3 -> 2 sums to exactly 0
    src.requires_grad_(), dst.requires_grad_()
    att = torch.randn(1, heads, channels, generator=gen, dtype=dtype).to(device)
    att.requires_grad_()
    grad = torch.randn(row.numel(), heads, generator=gen, dtype=dtype).to(device)
    got = lowrank.pair_logits(src, dst, row, col, att, slope)
    want = _pair_logits_reference(src, dst, row, col.long(), att, slope)
    assert_close(got, want)
    got_grads = torch.autograd.grad(got, (src, dst, att), grad)
    want_grads = torch.autograd.grad(want, (src, dst, att), grad)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w)
    assert got_grads[0][6].abs().sum() == 0
    if dtype == torch.float64:
        dst_smooth = dst.detach().clone()
        dst_smooth[2] += 0.5  # gradcheck's finite differences need no kink on an edge
        assert torch.autograd.gradcheck(
            lambda s, d, a: lowrank.pair_logits(s, d, row, col, a, slope),
            (src, dst_smooth.requires_grad_(), att))


def test_pair_logits_no_edges_bad_shapes_and_no_syncing_call():
    from benchmarks.host_syncs import count_syncs

    src = torch.randn(4, 2, 3, requires_grad=True)
    dst = torch.randn(3, 2, 3, requires_grad=True)
    att = torch.randn(1, 2, 3, requires_grad=True)
    none = torch.zeros(0, dtype=torch.long)
    out = lowrank.pair_logits(src, dst, none, none, att, 0.2)
    out.sum().backward()
    assert out.shape == (0, 2) and src.grad.abs().sum() == 0 and att.grad.abs().sum() == 0
    with pytest.raises(ConfigError, match=r"'pair_logits': .* received \(4, 2, 3\), "
                                          r"\(3, 2, 3\), \(2, 3\)"):
        lowrank.pair_logits(src, dst, none, none, att[0], 0.2)
    row, col = torch.tensor([0, 1, 2, 2]), torch.tensor([3, 0, 1, 3])

    def step():
        lowrank.pair_logits(src, dst, row, col, att, 0.2).sum().backward()

    assert count_syncs(step) == {}


def test_pair_logits_keep_no_per_edge_tensor(monkeypatch):
    """By chunks, one forward and backward keeps far less alive than the per-edge form,
    which saves (M, H, C) tensors for its backward."""
    from vqgnn.train.meters import TensorMemoryMeter

    monkeypatch.setattr(lowrank, "PAIR_LOGIT_CHUNK_ELEMENTS", 1 << 14)  # 512 edges a chunk
    gen = torch.Generator().manual_seed(4)
    m, heads, channels = 20_000, 2, 16  # (M, H, C): 2.5 MB in float32
    row = torch.randint(0, 300, (m,), generator=gen).sort().values
    col = torch.randint(0, 400, (m,), generator=gen)
    src = torch.randn(400, heads, channels, generator=gen, requires_grad=True)
    dst = torch.randn(300, heads, channels, generator=gen, requires_grad=True)
    att = torch.randn(1, heads, channels, generator=gen, requires_grad=True)
    grad = torch.randn(m, heads, generator=gen)
    peaks = []
    for fn in (_pair_logits_reference, lowrank.pair_logits):
        with TensorMemoryMeter() as meter:
            torch.autograd.grad(fn(src, dst, row, col, att, 0.2), (src, dst, att), grad)
        peaks.append(meter.peak)
    # half-precision activations with a float32 attention vector (autocast's mix): by
    # chunks too, after one cast of the node-level inputs
    half = [src.detach().bfloat16().requires_grad_(), dst.detach().bfloat16().requires_grad_()]
    with TensorMemoryMeter() as meter:
        torch.autograd.grad(lowrank.pair_logits(*half, row, col, att, 0.2), (*half, att), grad)
    peaks.append(meter.peak)
    per_edge = m * heads * channels * 4
    assert peaks[0] >= 2 * per_edge  # the reference keeps two (M, H, C) tensors
    assert peaks[1] < per_edge / 2, peaks
    assert peaks[2] < per_edge / 2, peaks


def test_pair_logits_other_dtypes_partial_gradients_and_shared_inputs():
    """Half precision by chunks (against float64), mixed dtypes by chunks in the dtype of
    torch's promotion (half activations with a float32 attention vector, as under
    autocast), gradients for only some inputs, and ``src`` and ``dst`` one tensor."""
    gen = torch.Generator().manual_seed(5)
    row = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    col = torch.tensor([1, 3, 0, 2, 0, 3, 3])
    src = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)
    dst = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)
    att = torch.randn(1, 2, 3, generator=gen, dtype=torch.float64)
    grad = torch.randn(7, 2, generator=gen, dtype=torch.float64)

    def grads(fn, s, d, a, inputs):
        out = fn(s, d, row, col, a, 0.2)
        return out, torch.autograd.grad(out, inputs, grad.to(out.dtype))

    ref = [t.clone().requires_grad_() for t in (src, dst, att)]
    want, want_grads = grads(_pair_logits_reference, *ref, ref)
    for dtype in (torch.bfloat16, torch.float16):  # by chunks, in that dtype
        low = [t.to(dtype).requires_grad_() for t in (src, dst, att)]
        got, got_grads = grads(lowrank.pair_logits, *low, low)
        assert type(got.grad_fn).__name__ == "_PairLogitsBackward"
        assert got.dtype == dtype
        assert_close(got.double(), want, atol=0.05, rtol=0.05)
        for g, w in zip(got_grads, want_grads):
            assert_close(g.double(), w, atol=0.05, rtol=0.05)
    half = [src.bfloat16().requires_grad_(), dst.bfloat16().requires_grad_(),
            att.float().requires_grad_()]
    got, got_grads = grads(lowrank.pair_logits, *half, half)  # by chunks, promoted
    assert got.dtype == torch.float32 and type(got.grad_fn).__name__ == "_PairLogitsBackward"
    assert [g.dtype for g in got_grads] == [torch.bfloat16, torch.bfloat16, torch.float32]
    assert_close(got.double(), want, atol=0.05, rtol=0.05)
    # the per-edge form promotes the same way: the same dtypes, values and gradients
    edge, edge_grads = grads(lowrank.per_edge_pair_logits, *half, half)
    assert edge.dtype == torch.float32
    assert_close(got, edge, atol=0.02, rtol=0.02)
    for g, w in zip(got_grads, edge_grads):
        assert g.dtype == w.dtype
        assert_close(g.float(), w.float(), atol=0.02, rtol=0.02)
    shared = src.bfloat16().requires_grad_()  # one half-precision tensor on both sides
    got, (g_shared,) = grads(lowrank.pair_logits, shared, shared, att.float(), [shared])
    want_s, (w_shared,) = grads(lowrank.per_edge_pair_logits, shared, shared, att.float(),
                                [shared])
    assert g_shared.dtype == torch.bfloat16
    assert_close(got, want_s, atol=0.02, rtol=0.02)
    assert_close(g_shared.float(), w_shared.float(), atol=0.05, rtol=0.05)
    # only the sources need a gradient (a frozen attention vector, a constant target side)
    s1 = src.clone().requires_grad_()
    got, (g_src,) = grads(lowrank.pair_logits, s1, dst, att, [s1])
    assert_close(g_src, want_grads[0])
    a1 = att.clone().requires_grad_()
    got, (g_att,) = grads(lowrank.pair_logits, src, dst, a1, [a1])
    assert_close(g_att, want_grads[2])
    # one tensor on both sides: the two gradients add up
    x = src.clone().requires_grad_()
    xr = src.clone().requires_grad_()
    got, (g_x,) = grads(lowrank.pair_logits, x, x, att, [x])
    want_x, (w_x,) = grads(_pair_logits_reference, xr, xr, att, [xr])
    assert_close(got, want_x)
    assert_close(g_x, w_x)


def test_spmm_and_the_per_edge_logits_name_bad_shapes():
    a = lowrank.csr(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.ones(2), (2, 3))
    with pytest.raises(ConfigError, match=r"'spmm': 'a' \(n, m\) and 'x' \(m, D\) expected, "
                                          r"received \(2, 3\) and \(2, 4\)"):
        lowrank.spmm(a, torch.randn(2, 4))
    src, att, edges = torch.randn(4, 2, 3), torch.randn(1, 2, 3), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match=r"'per_edge_pair_logits': .* received \(4, 2, 3\), "
                                          r"\(4, 2, 3\), \(1, 2, 3\), \(2,\) and \(1,\)"):
        lowrank.per_edge_pair_logits(src, src, edges, edges[:1], att, 0.2)


def test_the_fused_kernels_ignore_an_autocast_around_them():
    """Under CPU autocast, float32 inputs give exactly what they give without it (the
    kernels turn autocast off inside, so a product never runs in half precision beside
    float32 saved tensors): GATv2's logits, the attention aggregation and the sparse
    product, values and gradients."""
    gen = torch.Generator().manual_seed(7)
    row = torch.tensor([0, 0, 1, 2, 2, 3])
    col = torch.tensor([1, 3, 0, 2, 0, 3])
    src, dst = torch.randn(4, 2, 3, generator=gen), torch.randn(4, 2, 3, generator=gen)
    att = torch.randn(1, 2, 3, generator=gen)
    edges = BatchEdges(row, col, torch.ones(6), torch.ones(6), 4, 4, merged=True)
    alpha = torch.rand(6, 2, generator=gen)
    a = torch.sparse_coo_tensor(torch.stack([row, col]), torch.rand(6, generator=gen),
                                (4, 4)).to_sparse_csr()
    x = torch.randn(4, 5, generator=gen)
    calls = [
        (lambda t: lowrank.pair_logits(t[0], t[1], row, col, t[2], 0.2), [src, dst, att]),
        (lambda t: attention_aggregate(edges, t[0], t[1]), [alpha, src]),
        (lambda t: lowrank.spmm(a, t[0]), [x]),
    ]
    for fn, inputs in calls:
        results = []
        for autocast in (False, True):
            leaves = [t.clone().requires_grad_() for t in inputs]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = fn(leaves)
                loss = out.pow(2).sum()
            results.append((out, torch.autograd.grad(loss, leaves)))  # outside, as advised
        (want, want_grads), (got, got_grads) = results
        assert got.dtype == torch.float32
        assert torch.equal(got, want)
        for g, w in zip(got_grads, want_grads):
            assert torch.equal(g, w)
