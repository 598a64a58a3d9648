"""Data-parallel throughput: VQ-GNN under torchrun with 1, 2 and 4 processes.

Usage:
    python benchmarks/data_parallel.py --nproc 1,2,4 --num-nodes 1000000 --epochs 3
    python benchmarks/data_parallel.py --table-only

For each process count P it starts ``torchrun --standalone --nproc_per_node P`` on this
script's worker, which trains VQ-GNN (GCN, 3 layers, 64 hidden, K = 256, b = 4,096 per rank)
on the synthetic graph and appends one record (rank 0) to ``--out``: the median epoch time,
the training throughput (batch nodes per second over all ranks), the scaling efficiency
against P = 1 and the communication volume per step and rank, by kind (gradients, codebook
statistics, assignment exchange), counted by wrapping ``torch.distributed``'s collectives.
Each rank runs ``max(1, cores // P)`` torch threads. A P already in ``--out`` is skipped
(resumable). On a machine with fewer cores than P, the ranks share cores: the point is
then correctness and the recorded volumes, not speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from vqgnn.cli import script_parser
from vqgnn.train.records import append_result

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "data_parallel.jsonl"


class CommMeter:
    """Bytes this rank contributes to each collective, by the caller's kind."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.kind = "other"

    def install(self) -> None:
        for name in ("all_reduce", "all_gather", "broadcast"):
            original = getattr(dist, name)

            def counted(tensor_or_list: Any, *args: Any, __f: Any = original,
                        __name: str = name, **kwargs: Any) -> Any:
                tensor = args[0] if __name == "all_gather" else tensor_or_list
                self.bytes[self.kind] = (self.bytes.get(self.kind, 0)
                                         + tensor.numel() * tensor.element_size())
                return __f(tensor_or_list, *args, **kwargs)

            setattr(dist, name, counted)


def tag(cls: type, name: str, kind: str, meter: CommMeter,
        steps: Optional[dict[str, int]] = None) -> None:
    """Count the collectives from ``cls.name`` (and those after it, until the next tag) as
    ``kind``; with ``steps``, count the calls as steps."""
    original = getattr(cls, name)

    def tagged(*args: Any, **kwargs: Any) -> Any:
        meter.kind = kind
        out = original(*args, **kwargs)
        if steps is not None:
            steps["n"] += 1
            meter.kind = "other"
        return out

    setattr(cls, name, tagged)


def worker(args: argparse.Namespace) -> None:
    from vqgnn import VQGNN
    from vqgnn.datasets import load_dataset
    from vqgnn.distributed import DataParallel
    from vqgnn.quantize import CodebookOptions
    from vqgnn.train import TrainConfig, Trainer, seed_everything
    from vqgnn.train.methods import VQMethod

    parallel = DataParallel.from_env("cpu", timeout=1800)
    world = parallel.world_size
    threads = max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    data = load_dataset(f"synthetic:n={args.n},deg={args.deg:g}", seed=0)
    seed_everything(0)
    model = VQGNN(data.num_features, 64, 3, data.num_classes, num_nodes=data.num_nodes,
                  codebook=CodebookOptions(num_codewords=args.num_codewords))
    config = TrainConfig.create("vq", epochs=args.epochs, batch_size=args.batch_size,
                                eval_every=args.epochs, measure_memory=False, seed=0)
    trainer = Trainer(model, data, config, parallel=parallel)
    meter = CommMeter()
    steps = {"n": 0}
    if world > 1:
        meter.install()
        # Kinds: the DDP hook's all-reduce runs in backward (after the loss), the codebook
        # statistics in update_codebooks, then the assignment exchange.
        tag(VQMethod, "loss", "gradients", meter)
        tag(VQGNN, "update_codebooks", "codebooks", meter)
        tag(DataParallel, "exchange_assignments", "assignments", meter, steps)
    result = trainer.fit()
    if parallel.is_main:
        seconds = [h.seconds for h in result.history]
        steps_per_epoch = parallel.num_shared(trainer.method.num_batches())
        nodes_per_epoch = steps_per_epoch * world * args.batch_size
        epoch = statistics.median(seconds[1:] if len(seconds) > 1 else seconds)
        record = {
            "world_size": world, "threads_per_rank": threads, "n": args.n, "deg": args.deg,
            "batch_size": args.batch_size, "num_codewords": args.num_codewords,
            "epochs": args.epochs, "epoch_seconds": seconds,
            "median_epoch_seconds_after_first": epoch,
            "steps_per_epoch_per_rank": steps_per_epoch,
            "train_nodes_per_second": nodes_per_epoch / epoch,
            "bytes_per_step_per_rank": {k: v / max(steps["n"], 1)
                                        for k, v in meter.bytes.items()},
            "parameters": sum(p.numel() for p in model.parameters()),
            "test_exact": result.test_exact, "backend": getattr(parallel, "backend", None),
            "cores": os.cpu_count(),
        }
        append_result(args.out, record)
    parallel.close()


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(records: list[dict[str, Any]]) -> str:
    base = next((r for r in records if r["world_size"] == 1), None)
    lines = ["| processes | threads per rank | epoch (s) | train nodes/s | scaling efficiency "
             "| gradients (KB/step/rank) | codebook stats (KB/step/rank) "
             "| assignments (KB/step/rank) | test acc (exact) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: r["world_size"]):
        eff = (r["train_nodes_per_second"] / (r["world_size"] * base["train_nodes_per_second"])
               if base else float("nan"))
        comm = r["bytes_per_step_per_rank"]
        kb = [f"{comm.get(k, 0) / 1e3:.1f}" for k in ("gradients", "codebooks", "assignments")]
        lines.append(f"| {r['world_size']} | {r['threads_per_rank']} | "
                     f"{r['median_epoch_seconds_after_first']:.2f} | "
                     f"{r['train_nodes_per_second']:,.0f} | {eff:.2f} | {' | '.join(kb)} | "
                     f"{100 * r['test_exact']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--nproc", default="1,2,4", help="comma-separated process counts")
    parser.add_argument("--num-nodes", dest="n", type=int, default=1_000_000,
                        help="synthetic graph nodes")
    parser.add_argument("--deg", type=float, default=10.0, help="average degree")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096, help="nodes per rank and step")
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if not args.table_only:
        done = {(r["world_size"], r["n"]) for r in read(args.out)}
        for nproc in [int(p) for p in args.nproc.split(",")]:
            if (nproc, args.n) in done:
                print(f"P={nproc}: already in {args.out}")
                continue
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", str(nproc), str(Path(__file__).resolve()),
                       "--worker", "--num-nodes", str(args.n), "--deg", str(args.deg),
                       "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                       "--num-codewords", str(args.num_codewords), "--out", str(args.out)]
            print(f"P={nproc}: {' '.join(command[1:])}", flush=True)
            env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
            subprocess.run(command, check=True, env=env)
    print(table([r for r in read(args.out) if r["n"] == args.n]))


if __name__ == "__main__":
    main()
