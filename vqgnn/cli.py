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


def _fanouts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'--num-neighbors' must be comma-separated ints such as 15,10,5, "
            f"received {text!r}") from None


def train_config(args: argparse.Namespace, method: str, checkpoint: Optional[str] = None):
    """The :class:`~vqgnn.train.TrainConfig` of one method from the command's options."""
    from vqgnn.train import TrainConfig

    return TrainConfig(
        method=method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, optimizer=args.optimizer, sampler=args.sampler,
        num_parts=args.num_parts, num_neighbors=args.num_neighbors,
        walk_length=args.walk_length, saint_coverage=args.saint_coverage,
        batch_nodes=args.batch_nodes, eval_every=args.eval_every, patience=args.patience,
        inference=args.inference, eval_batch_size=args.eval_batch_size, seed=args.seed,
        device=args.device, checkpoint=checkpoint, progress=not args.quiet)


def train_one(data, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one method with the command's options; returns its JSON record."""
    from vqgnn.train import ModelConfig, run_experiment

    checkpoint = None
    if args.checkpoint:
        checkpoint = str(Path(args.checkpoint).with_suffix(f".{method}.pt"))
    model = ModelConfig(
        conv=args.conv, hidden=args.hidden, layers=args.layers, dropout=args.dropout,
        norm=args.norm, residual=args.residual,
        exact_first_layer=not args.no_exact_first_layer, num_codewords=args.num_codewords)
    config = train_config(args, method, checkpoint)
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
        f"| peak RSS (MB) | inference (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['method']} | {_pct(r['best_val'])} | {_pct(r['test'])} | "
            f"{_pct(r['test_exact'])} | {_pct(r['test_vq'])} | {r['best_epoch']} | "
            f"{r['median_epoch_seconds']:.3f} | {r['time_to_best_seconds']:.1f} | "
            f"{_mb(r['peak_memory_bytes'])} | {_mb(r['peak_rss_bytes'])} | "
            f"{r['inference_seconds']:.2f} |")
    return lines


def cmd_train(args: argparse.Namespace) -> int:
    from vqgnn.datasets import load_dataset

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for method in methods:  # reject bad options before loading anything
        train_config(args, method).validate()
    if "sage" in methods:
        from vqgnn.baselines.loaders import fanouts_for_layers

        fanouts_for_layers(args.num_neighbors, args.layers)
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
    print(f"peak train memory: {records[0]['memory_measure']}; peak RSS: "
          f"{records[0]['rss_measure']}")
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
                        help="dataset name, a .pt file, or synthetic:key=value,...")
    parser.add_argument("--root", default=None, help="dataset folder (offline files)")
    parser.add_argument("--split", type=int, default=0, help="split index")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def build_parser() -> argparse.ArgumentParser:
    from vqgnn.nn.models import BACKBONES, NORMS
    from vqgnn.train import ModelConfig, TrainConfig
    from vqgnn.train.trainer import INFERENCE, METHODS, OPTIMIZERS, SAMPLERS

    parser = argparse.ArgumentParser(
        prog="vqgnn", description="VQ-GNN: scale PyG GNNs with vector quantization.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a dataset and print its summary",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_dataset_args(info)
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="train and print a summary table",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_dataset_args(train)
    m, t = ModelConfig(), TrainConfig()  # one source for the defaults
    train.add_argument("--method", default=t.method,
                       help=f"one of {', '.join(METHODS)}, or a comma-separated list "
                            f"(vq,full,sage) trained side by side")
    train.add_argument("--conv", default=m.conv, choices=list(BACKBONES),
                       help="backbone convolution")
    train.add_argument("--epochs", type=int, default=t.epochs, help="maximum epochs")
    train.add_argument("--batch-size", type=int, default=t.batch_size, help="nodes per mini-batch")
    train.add_argument("--num-codewords", type=int, default=m.num_codewords,
                       help="codewords K per layer")
    train.add_argument("--hidden", type=int, default=m.hidden, help="hidden channels")
    train.add_argument("--layers", type=int, default=m.layers, help="convolution layers")
    train.add_argument("--dropout", type=float, default=m.dropout, help="dropout probability")
    train.add_argument("--norm", default=m.norm, choices=list(NORMS),
                       help="normalisation between layers")
    train.add_argument("--residual", action="store_true",
                       help="input/output linear layers and residual conv blocks")
    train.add_argument("--no-exact-first-layer", action="store_true",
                       help="quantize the first layer's inputs too")
    train.add_argument("--lr", type=float, default=t.lr, help="learning rate")
    train.add_argument("--weight-decay", type=float, default=t.weight_decay, help="weight decay")
    train.add_argument("--optimizer", default=t.optimizer, choices=list(OPTIMIZERS),
                       help="optimizer")
    train.add_argument("--sampler", default=t.sampler, choices=list(SAMPLERS),
                       help="random node batches or METIS-cluster batches")
    train.add_argument("--num-parts", type=int, default=t.num_parts,
                       help="METIS parts (sampler metis, method cluster; default 4 per batch)")
    train.add_argument("--num-neighbors", type=_fanouts,
                       default=",".join(map(str, t.num_neighbors)),
                       help="fan-outs of method sage, one per layer")
    train.add_argument("--walk-length", type=int, default=t.walk_length,
                       help="random-walk length of method saint")
    train.add_argument("--saint-coverage", type=float, default=t.saint_coverage,
                       help="GraphSAINT normalisation pre-sampling, samples per node")
    train.add_argument("--batch-nodes", default=t.batch_nodes, choices=["all", "train"],
                       help="batches partition all nodes or only the training nodes")
    train.add_argument("--eval-every", type=int, default=t.eval_every,
                       help="evaluate every this many epochs")
    train.add_argument("--patience", type=int, default=t.patience,
                       help="early stopping after this many evaluations without improvement")
    train.add_argument("--inference", default=t.inference, choices=list(INFERENCE),
                       help="inference used for model selection")
    train.add_argument("--eval-batch-size", type=int, default=t.eval_batch_size,
                       help="nodes per inference chunk")
    train.add_argument("--device", default=t.device, help="cpu, cuda or cuda:N")
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
