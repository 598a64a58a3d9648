"""Benchmark VQ-GNN against full-graph training on your own graph.

Any graph saved as a PyG ``Data`` with ``torch.save`` loads through
``vqgnn.datasets.load_dataset("my_graph.pt")``. Fields: ``x`` (N, F) float, ``edge_index``
(2, E) int (made undirected), ``y`` (N,) int (-1 = unlabeled), and optionally boolean
``train_mask``/``val_mask``/``test_mask``; without masks a stratified 60/20/20 split is
drawn from the seed. This script builds such a file (a generated graph with class
communities, or your CSV files), then trains the same GCN with ``vq`` (mini-batches) and
``full`` (full graph) through ``run_experiment`` and compares them.

Run::

    python examples/own_graph.py --out my_graph.pt
    python examples/own_graph.py --edges edges.csv --features feats.csv --labels labels.csv

CSV files have no header: ``edges.csv`` one ``source,target`` pair per line (node ids from
0), ``feats.csv`` one row of F numbers per node, ``labels.csv`` one integer per node.
The same comparison from the command line::

    vqgnn train --dataset my_graph.pt --method vq,full
"""
import argparse

import numpy as np
import torch
from torch_geometric.data import Data

from vqgnn.datasets import load_dataset
from vqgnn.quantize import CodebookOptions
from vqgnn.train import ModelConfig, TrainConfig, VQOptions, run_experiment


def generate(num_nodes, num_classes=5, num_features=16, degree=10, homophily=0.6, seed=0):
    """Node classes, noisy class-mean features, and edges mostly inside a class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, num_nodes)
    x = rng.normal(size=(num_nodes, num_features)) + np.eye(num_classes, num_features)[y]
    src = np.repeat(np.arange(num_nodes), degree // 2)
    order, counts = np.argsort(y, kind="stable"), np.bincount(y, minlength=num_classes)
    start = np.cumsum(counts) - counts  # where each class begins in ``order``
    c = y[src]
    same = order[start[c] + (rng.random(src.size) * counts[c]).astype(np.int64)]
    dst = np.where(rng.random(src.size) < homophily, same, rng.integers(0, num_nodes, src.size))
    return x, np.stack([src, dst]), y


def main():
    parser = argparse.ArgumentParser(description="VQ-GNN vs full-graph training on a graph")
    parser.add_argument("--edges", help="CSV of source,target pairs (else: a generated graph)")
    parser.add_argument("--features", help="CSV of node features, one row per node")
    parser.add_argument("--labels", help="CSV of node labels, one per line")
    parser.add_argument("--num-nodes", type=int, default=5000, help="of the generated graph")
    parser.add_argument("--out", default="my_graph.pt", help="where the Data is saved")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    given = [flag for flag in ("edges", "features", "labels") if getattr(args, flag)]
    if given and len(given) < 3:
        parser.error(f"--edges, --features and --labels go together (one graph from three "
                     f"CSV files); received only {', '.join('--' + f for f in given)}")
    if args.edges:
        edge_index = np.loadtxt(args.edges, delimiter=",", dtype=np.int64, ndmin=2).T
        x = np.loadtxt(args.features, delimiter=",", dtype=np.float32, ndmin=2)
        y = np.loadtxt(args.labels, delimiter=",", dtype=np.int64, ndmin=1)
    else:
        x, edge_index, y = generate(args.num_nodes, seed=args.seed)
    data = Data(x=torch.tensor(x, dtype=torch.float), edge_index=torch.from_numpy(edge_index),
                y=torch.from_numpy(y))  # optional: train_mask=..., val_mask=..., test_mask=...
    torch.save(data, args.out)

    data = load_dataset(args.out, seed=args.seed)  # validated, undirected, split drawn
    print(f"{args.out}: {data.num_nodes:,} nodes, {data.edge_index.size(1):,} edges, "
          f"{data.num_classes} classes, train/val/test {int(data.train_mask.sum())}/"
          f"{int(data.val_mask.sum())}/{int(data.test_mask.sum())}")
    model = ModelConfig(conv="gcn", hidden=args.hidden, layers=2,
                        codebook=CodebookOptions(num_codewords=args.num_codewords))
    records = []
    trains = [TrainConfig("vq", VQOptions(batch_size=args.batch_size), epochs=args.epochs,
                          weight_decay=5e-4, seed=args.seed),
              TrainConfig("full", epochs=args.epochs, weight_decay=5e-4, seed=args.seed)]
    for train in trains:
        records.append(run_experiment(data, model, train))

    print(f"\n| method | val {data.metric} | test {data.metric} | epoch time (s) "
          f"| peak train memory (MB) |\n|---|---|---|---|---|")
    for r in records:
        print(f"| {r['method']} | {100 * r['best_val']:.2f} | {100 * r['test']:.2f} | "
              f"{r['median_epoch_seconds']:.3f} | {r['peak_memory_bytes'] / 2**20:.1f} |")
    print(f"\nThe same from the command line:\n  vqgnn train --dataset {args.out} "
          f"--method vq,full --epochs {args.epochs} --hidden {args.hidden} --weight-decay 5e-4 "
          f"--batch-size {args.batch_size} --num-codewords {args.num_codewords}")


if __name__ == "__main__":
    main()
