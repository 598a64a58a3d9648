"""One training step of a VQConv against the wrapped conv on the batch's 1-hop neighbourhood.

For each graph size (synthetic graphs of the data layer, fixed average degree), a
random batch of nodes runs one forward + backward step of:

* ``vq``: ``VQConv(GCNConv)`` on the batch, out-of-batch neighbours from K codewords
  (merged sparse product), backward term on, codebook update included;
* ``1-hop``: the same ``GCNConv`` on the subgraph of every edge into the batch (the
  batch's full 1-hop neighbourhood, the cost a sampler without dropping pays per layer).

Memory: the bytes of the tensors saved for backward plus the step's inputs
(saved-tensor hooks), and ``torch.cuda.max_memory_allocated`` on a GPU.

Usage:
    python benchmarks/vqconv_step.py                  # 20k, 200k and 2M nodes, degree 50
    python benchmarks/vqconv_step.py --nodes 20000 200000 --repeat 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch_geometric.nn import GCNConv

from vqgnn import VQConv, VQGraph
from vqgnn.cli import script_parser
from vqgnn.datasets import load_dataset
from vqgnn.train import SavedTensorMeter, Timer


def one_hop_subgraph(edge_index: torch.Tensor, batch: torch.Tensor, num_nodes: int):
    """Edges into ``batch``, relabelled over (batch nodes first, then their neighbours)."""
    in_batch = torch.zeros(num_nodes, dtype=torch.bool, device=batch.device)
    in_batch[batch] = True
    edges = edge_index[:, in_batch[edge_index[1]]]
    nodes = torch.cat([batch, torch.unique(edges[0][~in_batch[edges[0]]])])
    relabel = torch.full((num_nodes,), -1, dtype=torch.long, device=batch.device)
    relabel[nodes] = torch.arange(nodes.numel(), device=batch.device)
    return nodes, relabel[edges]


def measure(step, repeat: int, device: torch.device) -> tuple[float, int, int | None]:
    step()  # warm-up
    times, nbytes, peak = [], 0, None
    for _ in range(repeat):
        with Timer(device) as timer, SavedTensorMeter(device) as meter:
            step(meter)
        times.append(timer.seconds)
        nbytes, peak = meter.bytes, meter.cuda_peak
    return statistics.median(times), nbytes, peak


def run(num_nodes: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    t0 = time.perf_counter()
    data = load_dataset(f"synthetic:n={num_nodes},deg={args.degree},features={args.channels}",
                        seed=args.seed)
    gen_seconds = time.perf_counter() - t0
    x, edge_index = data.x.to(device), data.edge_index.to(device)
    graph = VQGraph(edge_index, num_nodes)
    torch.manual_seed(args.seed)
    conv = GCNConv(args.channels, args.channels).to(device)
    layer = VQConv(conv, args.num_codewords, num_nodes).to(device)
    layer.init_codebook(x)
    gen = torch.Generator().manual_seed(args.seed)
    batch = torch.randperm(num_nodes, generator=gen)[: args.batch_size].to(device)
    nodes, sub_edges = one_hop_subgraph(edge_index, batch, num_nodes)
    b = batch.numel()

    def vq_step(meter: SavedTensorMeter | None = None) -> None:
        xb = x[batch].requires_grad_()
        if meter is not None:
            meter.add(xb)
        out = layer(xb, graph, batch)
        out.pow(2).mean().backward()
        layer.update_codebook()

    def one_hop_step(meter: SavedTensorMeter | None = None) -> None:
        xs = x[nodes].requires_grad_()
        if meter is not None:
            meter.add(xs, sub_edges)
        out = conv(xs, sub_edges)[:b]
        out.pow(2).mean().backward()

    rows = []
    for method, step in (("vq", vq_step), ("1-hop", one_hop_step)):
        seconds, nbytes, peak = measure(step, args.repeat, device)
        rows.append(dict(nodes=num_nodes, edges=data.num_edges, method=method, seconds=seconds,
                         bytes=nbytes, cuda_peak=peak, gen_seconds=gen_seconds,
                         neighbourhood=nodes.numel()))
    return rows


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[20_000, 200_000, 2_000_000])
    parser.add_argument("--degree", type=float, default=50)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [row for n in args.nodes for row in run(n, args, device)]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nOne GCN layer training step on {name} ({torch.get_num_threads()} threads): batch "
          f"{args.batch_size}, K={args.num_codewords}, {args.channels} channels, average degree "
          f"{args.degree:g}, median of {args.repeat} steps")
    cuda = device.type == "cuda"
    head = "| nodes | edges | 1-hop nodes | method | step (ms) | saved + inputs (MB) |"
    print(head + (" CUDA peak (MB) |" if cuda else ""))
    print("|" + "---|" * (head.count("|") - 1 + cuda))
    for r in rows:
        line = (f"| {r['nodes']:,} | {r['edges']:,} | {r['neighbourhood']:,} | {r['method']} | "
                f"{r['seconds'] * 1e3:.1f} | {r['bytes'] / 2**20:.1f} |")
        print(line + (f" {r['cuda_peak'] / 2**20:.1f} |" if cuda else ""))
    vq = [r for r in rows if r["method"] == "vq"]
    print(f"\nvq memory, largest / smallest graph: {vq[-1]['bytes'] / vq[0]['bytes']:.3f}x; "
          f"vq / 1-hop memory at {rows[-1]['nodes']:,} nodes: "
          f"{vq[-1]['bytes'] / rows[-1]['bytes']:.3f}; time: "
          f"{vq[-1]['seconds'] / rows[-1]['seconds']:.3f}")


if __name__ == "__main__":
    main()
