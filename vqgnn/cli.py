"""The ``vqgnn`` command line.

* ``vqgnn info --dataset NAME [--root DIR] [--split I] [--seed S]`` loads a dataset
  through :func:`vqgnn.datasets.load_dataset` and prints its summary.
* ``vqgnn train --dataset NAME --method vq --conv gcn ...`` trains and prints a summary
  table; ``--method vq,full`` runs several methods side by side; ``--json PATH`` writes
  one JSON record per run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence


def dataset_summary(data) -> list[tuple[str, str]]:
    """(field, value) rows describing a loaded dataset."""
    n, e = data.num_nodes, data.edge_index.size(1)
    rows = [
        ("dataset", str(data.name)),
        ("nodes", f"{n:,}"),
        ("edges (directed)", f"{e:,}"),
        ("average degree", f"{e / max(n, 1):.2f}"),
        ("features", f"{data.x.size(1):,}"),
        ("classes" if data.y.dim() == 1 else "tasks", f"{data.num_classes:,}"),
        ("metric", str(data.metric)),
        ("split", str(data.split)),
    ]
    for mask in ("train_mask", "val_mask", "test_mask"):
        count = int(data[mask].sum())
        rows.append((mask.replace("_mask", " nodes"), f"{count:,} ({count / n:.1%})"))
    if data.y.dim() == 1 and e > 0:
        src, dst = data.edge_index
        labeled = (data.y[src] >= 0) & (data.y[dst] >= 0)
        same = (data.y[src] == data.y[dst]) & labeled
        rows.append(("edge homophily", f"{float(same.sum()) / max(int(labeled.sum()), 1):.3f}"))
    return rows


def print_table(rows: Sequence[tuple[str, str]], header: tuple[str, str]) -> None:
    """Print two-column rows as a Markdown table."""
    width = max(len(r[0]) for r in [header, *rows])
    print(f"| {header[0]:<{width}} | {header[1]} |")
    print(f"|{'-' * (width + 2)}|---|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")


def cmd_info(args: argparse.Namespace) -> int:
    from vqgnn.datasets import load_dataset

    start = time.perf_counter()
    data = load_dataset(args.dataset, root=args.root, split=args.split, seed=args.seed)
    seconds = time.perf_counter() - start
    print_table(dataset_summary(data) + [("load time", f"{seconds:.2f} s")], ("field", "value"))
    return 0


def train_one(data, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one method with the command's options; returns its JSON record."""
    from vqgnn.train import ModelConfig, TrainConfig, run_experiment

    checkpoint = None
    if args.checkpoint:
        checkpoint = str(Path(args.checkpoint).with_suffix(f".{method}.pt"))
    model = ModelConfig(
        conv=args.conv, hidden=args.hidden, layers=args.layers, dropout=args.dropout,
        norm=args.norm, residual=args.residual,
        exact_first_layer=not args.no_exact_first_layer, num_codewords=args.num_codewords)
    config = TrainConfig(
        method=method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, optimizer=args.optimizer, sampler=args.sampler,
        batch_nodes=args.batch_nodes, eval_every=args.eval_every, patience=args.patience,
        inference=args.inference, eval_batch_size=args.eval_batch_size, seed=args.seed,
        device=args.device, checkpoint=checkpoint, progress=not args.quiet)
    log = None if args.quiet else (lambda line: print(f"[{method}] {line}", flush=True))
    return run_experiment(data, model, config, log=log, resume=args.resume)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _mb(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def summary_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown rows comparing the runs."""
    metric = records[0]["metric"]
    lines = [
        f"| method | best val {metric} | test {metric} | test (exact) | test (vq inference) "
        f"| best epoch | epoch time (s) | time to best (s) | peak train memory (MB) "
        f"| inference (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['method']} | {_pct(r['best_val'])} | {_pct(r['test'])} | "
            f"{_pct(r['test_exact'])} | {_pct(r['test_vq'])} | {r['best_epoch']} | "
            f"{r['median_epoch_seconds']:.3f} | {r['time_to_best_seconds']:.1f} | "
            f"{_mb(r['peak_memory_bytes'])} | {r['inference_seconds']:.2f} |")
    return lines


def cmd_train(args: argparse.Namespace) -> int:
    from vqgnn.datasets import load_dataset
    from vqgnn.train import TrainConfig

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for method in methods:  # reject bad options before loading anything
        TrainConfig(method=method, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, sampler=args.sampler, batch_nodes=args.batch_nodes,
                    inference=args.inference, optimizer=args.optimizer,
                    patience=args.patience, eval_every=args.eval_every).validate()
    data = load_dataset(args.dataset, root=args.root, split=args.split, seed=args.seed)
    if not args.quiet:
        print_table(dataset_summary(data), ("field", "value"))
        print()
    records = [train_one(data, method, args) for method in methods]
    print()
    print(f"{data.name} (split {data.split}), conv={args.conv}, hidden={args.hidden}, "
          f"layers={args.layers}, batch={args.batch_size}, K={args.num_codewords}, "
          f"seed={args.seed}, device={records[0]['device']}")
    print("\n".join(summary_table(records)))
    print(f"peak memory: {records[0]['memory_measure']}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        print(f"records appended to {path}")
    return 0


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synthetic",
                        help="dataset name, a .pt file, or synthetic:key=value,... "
                             "(default: synthetic)")
    parser.add_argument("--root", default=None, help="dataset folder (offline files)")
    parser.add_argument("--split", type=int, default=0, help="split index (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgnn", description="VQ-GNN: scale PyG GNNs with vector quantization.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a dataset and print its summary")
    _add_dataset_args(info)
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="train and print a summary table",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_dataset_args(train)
    train.add_argument("--method", default="vq",
                       help="vq or full, or a comma-separated list (vq,full)")
    train.add_argument("--conv", default="gcn", choices=["gcn", "sage", "gat"])
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=1024)
    train.add_argument("--num-codewords", type=int, default=256)
    train.add_argument("--hidden", type=int, default=64)
    train.add_argument("--layers", type=int, default=2)
    train.add_argument("--dropout", type=float, default=0.5)
    train.add_argument("--norm", default="none", choices=["none", "layer", "batch"])
    train.add_argument("--residual", action="store_true",
                       help="input/output linear layers and residual conv blocks")
    train.add_argument("--no-exact-first-layer", action="store_true",
                       help="quantize the first layer's inputs too")
    train.add_argument("--lr", type=float, default=0.01)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    train.add_argument("--sampler", default="random", choices=["random", "metis"])
    train.add_argument("--batch-nodes", default="all", choices=["train", "all"],
                       help="batches partition the training nodes or all nodes")
    train.add_argument("--eval-every", type=int, default=1)
    train.add_argument("--patience", type=int, default=None)
    train.add_argument("--inference", default="exact", choices=["exact", "vq"],
                       help="inference used for model selection")
    train.add_argument("--eval-batch-size", type=int, default=4096)
    train.add_argument("--device", default="cpu")
    train.add_argument("--checkpoint", default=None,
                       help="checkpoint path (one file per method, written every epoch)")
    train.add_argument("--resume", action="store_true", help="resume from --checkpoint")
    train.add_argument("--json", default=None, help="append one JSON record per run here")
    train.add_argument("--quiet", action="store_true", help="no progress bars or epoch logs")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"vqgnn {args.command}: error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)
