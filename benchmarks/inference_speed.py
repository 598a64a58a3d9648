"""Exact inference of a trained-shape VQGNN: the chunked sparse-product path against the
per-chunk gather path it replaced, and one full-graph forward, in one process.

For each graph size (synthetic, fixed average degree), a ``VQGNN`` (2 layers, GCN by
default, exact first layer with its cached aggregation, as the VQ trainer prepares it)
is evaluated three ways, each checked equal to the full-graph forward:

* ``layer-wise``: :meth:`VQGNN.inference` (every layer one sparse product per row chunk
  over all nodes' messages; the first layer's aggregation reused);
* ``gather``: the previous path, layer by layer and chunk by chunk through
  :meth:`VQConv.inference` (each chunk gathers its rows, the unique neighbours and their
  inputs);
* ``full``: one exact full-graph forward ``model(x, graph)`` (no chunks: (N, D) at once).

Usage:
    python benchmarks/inference_speed.py                         # 10^5 and 10^6 nodes
    python benchmarks/inference_speed.py --nodes 20000 --repeat 2 --conv sage
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vqgnn import VQGNN, VQGraph
from vqgnn.cli import script_parser
from vqgnn.datasets import load_dataset
from vqgnn.nn.models import BACKBONES


@torch.no_grad()
def gather_inference(model: VQGNN, x: torch.Tensor, graph: VQGraph, chunk: int) -> torch.Tensor:
    """The previous exact layer-wise inference: each chunk gathers its 1-hop inputs."""
    chunks = torch.arange(graph.num_nodes, device=x.device).split(chunk)
    h = torch.cat([model._input(x[c]) for c in chunks])
    for i, conv in enumerate(model.layers):
        conv_in = model._conv_input(i, h)
        h = torch.cat([model._after_conv(i, h[c], conv.inference(conv_in, graph, c))
                       for c in chunks])
    return model._output(h)


def timed(fn, repeat: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeat`` calls after one untimed call (operators are built and
    cached on the graph at the first)."""
    out = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out  # type: ignore[return-value]


def main(argv=None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--deg", type=int, default=10)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--conv", default="gcn", choices=list(BACKBONES))
    parser.add_argument("--chunk", type=int, default=4096, help="nodes per inference chunk")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}, conv {args.conv}, hidden {args.hidden}, "
          f"chunk {args.chunk}, median of {args.repeat}")
    print("| nodes | edges | layer-wise (s) | gather (s) | full forward (s) | gather / layer-wise "
          "| max abs difference |")
    print("|---|---|---|---|---|---|---|")
    for n in args.nodes:
        print(measure(n, args), flush=True)


def measure(n: int, args: argparse.Namespace) -> str:
    """One table row: the three paths on a graph of ``n`` nodes."""
    data = load_dataset(f"synthetic:n={n},deg={args.deg},features={args.features},"
                        f"classes=5,seed=0")
    graph = VQGraph(data.edge_index, n)
    torch.manual_seed(0)
    model = VQGNN(args.features, args.hidden, 2, 5, num_nodes=n, conv=args.conv).eval()
    model.layers[0].set_constant_input(data.x, graph)  # as the VQ trainer prepares it
    new, out_new = timed(lambda: model.inference(data.x, graph, args.chunk), args.repeat)
    old, out_old = timed(lambda: gather_inference(model, data.x, graph, args.chunk),
                         args.repeat)
    with torch.no_grad():
        full, out_full = timed(lambda: model(data.x, graph), args.repeat)
    diff = max(float((out_new - out_full).abs().max()), float((out_old - out_full).abs().max()))
    return (f"| {n:,} | {data.edge_index.size(1):,} | {new:.3f} | {old:.3f} | {full:.3f} | "
            f"{old / new:.2f}x | {diff:.1e} |")

if __name__ == "__main__":
    main()
