"""Time the kernel choices of VQ-GNN's lean training step against their plain forms.

Each row is one operation at the shapes of a step (Tolokers: b = K = 1,024, 2 classes;
the 10^6-node graph: b = 4,096, K = 256, 10 classes), timed both ways on random data,
best of ``--repeat`` means over ``--calls`` calls:

* ``(b, K) @ (K, D)`` and its backward ``(b, K)^T @ (b, D)``: ``a @ b`` against
  :func:`~vqgnn.batching.lowrank.thin_matmul` / ``thin_matmul_t`` (the thin operand
  transposed into a contiguous left-hand one);
* a row gather: ``x[idx]`` against ``x.index_select(0, idx)``;
* dropout, forward and backward: ``torch.nn.functional.dropout`` against
  :func:`vqgnn.nn.models.dropout` (on the CPU a mask of 16-bit random integers), and the
  same against the mask vqgnn drew before, one ``torch.rand`` float per entry;
* a layer's (b, K) low-rank part over the batch's gathered entries (M per batch row:
  89 on Tolokers, 9 on Minesweeper, with the self-loop; in-batch sources weigh 0), its
  product with the codeword messages forward and backward plus the backward term's
  product: the dense (b, K) matrix against :class:`~vqgnn.batching.lowrank.SparseLowRank`
  (CSR), each built from the entries, at the published architecture's width (D = 512, b
  = 4,096), at the suite's Tolokers shape (b = 1,024, D = 64 and a last layer's 2), at
  the 10^6-node graph's (b = 4,096, K = 256, 11 entries a row, 10 classes), and with 300
  entries a row; the row names which form
  :func:`~vqgnn.batching.lowrank.sparse_lowrank_pays` takes;
* an attention layer's aggregation, forward and backward, at the shape of the published
  architecture's GAT step on Tolokers (b = 4,096 targets, 5,120 sources, 4 heads of 128
  channels, ``--attention-edges`` edges, 300,000 as measured there): the per-edge messages
  (gather, multiply, ``index_add``) against
  :func:`~vqgnn.batching.lowrank.attention_aggregate` (a CSR product per head); it takes
  ``--calls`` / 25 calls (at least one), as the per-edge form takes seconds;
* GATv2's logits at that shape, forward and backward (gradients of sources, targets and
  the attention vector): the per-edge form
  (:func:`~vqgnn.batching.lowrank.per_edge_pair_logits`: (M, H, C) ``index_select``
  gathers, sum and LeakyReLU, as PyG's ``GATv2Conv`` computes them) against
  :func:`~vqgnn.batching.lowrank.pair_logits` (by chunks of edges, recomputed in the
  backward).

A second table gives, for the two attention rows, the peak bytes of the tensors one
forward and backward keeps alive at once (:class:`~vqgnn.train.meters.TensorMemoryMeter`).

Usage:
    python benchmarks/step_kernels.py --threads 2
"""
from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqgnn.batching.lowrank import (  # noqa: E402
    BatchEdges,
    SparseLowRank,
    attention_aggregate,
    lowrank_apply,
    lowrank_matmul,
    pair_logits,
    per_edge_aggregate,
    per_edge_pair_logits,
    sparse_lowrank_pays,
    thin_matmul,
    thin_matmul_t,
)
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.nn.models import dropout  # noqa: E402
from vqgnn.train.meters import TensorMemoryMeter  # noqa: E402


def best_ms(fn: Callable[[], object], calls: int, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def _dropout_step(fn: Callable[..., Tensor], x: Tensor, grad: Tensor) -> None:
    fn(x, 0.2, True).backward(grad)


def _rand_mask_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """vqgnn's CPU dropout up to commit a61780e: a mask of ``torch.rand`` floats."""
    return (x * (torch.rand(x.shape) >= p)) * (1.0 / (1.0 - p))


def _attention_step(fn: Callable[..., Tensor], edges: BatchEdges, alpha: Tensor,
                    value: Tensor, grad: Tensor) -> None:
    torch.autograd.grad(fn(edges, alpha, value), (alpha, value), grad)


def _logits_step(fn: Callable[..., Tensor], src: Tensor, dst: Tensor, row: Tensor,
                 col: Tensor, att: Tensor, grad: Tensor) -> None:
    torch.autograd.grad(fn(src, dst, row, col, att, 0.2), (src, dst, att), grad)


def peak_mb(fn: Callable[[], object]) -> float:
    """Peak MB of the tensors ``fn`` keeps alive at once (its outputs included)."""
    with TensorMemoryMeter() as meter:
        fn()
    return meter.peak / 2**20


def _lowrank_step(sparse: bool, parts: tuple, values: Tensor, grad: Tensor,
                  grads: Tensor) -> None:
    """A low-rank part built from the gathered entries (as ``lowrank_forward`` does),
    its product with ``values`` forward and backward, and the backward term's product."""
    entry_row, flat, code, weight, b, k = parts
    low: object = (SparseLowRank(entry_row, code, weight, b, k) if sparse else
                   torch.zeros(b * k).index_add_(0, flat, weight).view(b, k))
    torch.autograd.grad(lowrank_matmul(low, values), values, grad)
    lowrank_apply(low, grads)


def rows(calls: int, repeat: int, attention_edges: int = 300_000,
         memory: Optional[list[tuple[str, str, float, float]]] = None
         ) -> list[tuple[str, str, float, float]]:
    """The timed rows: (operation, shape, plain ms, vqgnn's ms). The attention rows'
    peak tensor MB, both ways, are appended to ``memory`` when given."""
    gen = torch.Generator().manual_seed(0)
    out = []

    def row(name: str, shape: str, plain: Callable[[], object],
            ours: Callable[[], object], n: int = calls, measure: bool = False) -> None:
        out.append((name, shape, best_ms(plain, n, repeat), best_ms(ours, n, repeat)))
        if measure and memory is not None:
            memory.append((name, shape, peak_mb(plain), peak_mb(ours)))

    for b, k, d in ((1024, 1024, 2), (4096, 256, 10), (1024, 1024, 64)):
        a = torch.rand(b, k, generator=gen)
        v = torch.randn(k, d, generator=gen)
        g = torch.randn(b, d, generator=gen)
        shape = f"b={b}, K={k}, D={d}"
        row("(b, K) @ (K, D)", shape, partial(torch.matmul, a, v), partial(thin_matmul, a, v))
        row("(b, K)^T @ (b, D)", shape, partial(torch.matmul, a.t(), g),
            partial(thin_matmul_t, a, g))
    for n, size, d in ((1_000_000, 4096, 32), (1_000_000, 40_960, 1)):
        x = torch.randn(n, d, generator=gen).squeeze(1)
        idx = torch.randperm(n, generator=gen)[:size]
        row("gather", f"{size:,} of {n:,} rows x {d}", partial(x.__getitem__, idx),
            partial(x.index_select, 0, idx))
    for dims in ((1024, 64), (4096, 64)):
        x = torch.randn(*dims, generator=gen, requires_grad=True)
        grad = torch.randn(*dims, generator=gen)
        row("dropout 0.2, forward + backward", f"{dims[0]:,} x {dims[1]}",
            partial(_dropout_step, F.dropout, x, grad), partial(_dropout_step, dropout, x, grad))
        row("dropout 0.2, torch.rand mask against 16-bit lanes", f"{dims[0]:,} x {dims[1]}",
            partial(_dropout_step, _rand_mask_dropout, x, grad),
            partial(_dropout_step, dropout, x, grad))
    for b, k, per_row, d in ((4096, 1024, 89, 512), (4096, 1024, 9, 512), (1024, 1024, 89, 64),
                             (4096, 256, 11, 10), (1024, 1024, 89, 2), (4096, 1024, 300, 64)):
        m = b * per_row
        entry_row = torch.arange(b).repeat_interleave(per_row)
        code = torch.randint(0, k, (m,), generator=gen)
        weight = torch.rand(m, generator=gen)
        weight[::3] = 0.0  # in-batch sources
        values = torch.randn(k, d, generator=gen, requires_grad=True)
        grad, grads = torch.randn(b, d, generator=gen), torch.randn(k, d, generator=gen)
        form = "CSR" if sparse_lowrank_pays(m, b, k, d, torch.device("cpu"),
                                            torch.float32) else "dense"
        parts = (entry_row, entry_row * k + code, code, weight, b, k)
        row(f"low-rank part, dense vs CSR ({form} taken)",
            f"b={b}, K={k}, {per_row} entries a row, D={d}",
            partial(_lowrank_step, False, parts, values, grad, grads),
            partial(_lowrank_step, True, parts, values, grad, grads))
    b, sources, heads, channels, m = 4096, 5120, 4, 128, attention_edges
    edge_row = torch.randint(0, b, (m,), generator=gen).sort().values
    edges = BatchEdges(edge_row, torch.randint(0, sources, (m,), generator=gen),
                       torch.ones(m), torch.ones(m), b, sources, merged=False)
    alpha = torch.rand(m, heads, generator=gen, requires_grad=True)
    value = torch.randn(sources, heads, channels, generator=gen, requires_grad=True)
    grad = torch.randn(b, heads, channels, generator=gen)
    shape = f"{m:,} edges, {b:,} x {sources:,}, {heads} x {channels}"
    row("attention aggregation, forward + backward", shape,
        partial(_attention_step, per_edge_aggregate, edges, alpha, value, grad),
        partial(_attention_step, attention_aggregate, edges, alpha, value, grad),
        n=max(1, calls // 25), measure=True)
    src = torch.randn(sources, heads, channels, generator=gen, requires_grad=True)
    dst = torch.randn(b, heads, channels, generator=gen, requires_grad=True)
    att = torch.randn(1, heads, channels, generator=gen, requires_grad=True)
    grad_logit = torch.randn(m, heads, generator=gen)
    row("GATv2 logits, forward + backward", shape,
        partial(_logits_step, per_edge_pair_logits, src, dst, edges.row, edges.col, att,
                grad_logit),
        partial(_logits_step, pair_logits, src, dst, edges.row, edges.col, att, grad_logit),
        n=max(1, calls // 25), measure=True)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--calls", type=int, default=50, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=3, help="timings per row (best kept)")
    parser.add_argument("--attention-edges", type=int, default=300_000,
                        help="edges of the attention aggregation row")
    args = parser.parse_args(argv)
    for name, value in (("--threads", args.threads), ("--calls", args.calls),
                        ("--repeat", args.repeat), ("--attention-edges", args.attention_edges)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, received {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; best of {args.repeat} means over "
          f"{args.calls} calls")
    print("| operation | shape | plain (ms) | vqgnn's (ms) | plain / vqgnn's |")
    print("|---|---|---|---|---|")
    memory: list[tuple[str, str, float, float]] = []
    for name, shape, plain, ours in rows(args.calls, args.repeat, args.attention_edges,
                                         memory):
        print(f"| {name} | {shape} | {plain:.3f} | {ours:.3f} | {plain / ours:.2f}x |")
    print("\n| operation | shape | plain: peak tensors (MB) | vqgnn's (MB) | plain / vqgnn's |")
    print("|---|---|---|---|---|")
    for name, shape, plain, ours in memory:
        print(f"| {name} | {shape} | {plain:.1f} | {ours:.1f} | {plain / ours:.2f}x |")


if __name__ == "__main__":
    main()
