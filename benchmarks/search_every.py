"""VQ-GNN's nearest-codeword search on every k-th step only: its accuracy and its epoch.

Each VQ-GNN training step searches, for every quantized layer, the nearest of K codewords
for each of the b batch nodes (b x K distances and their argmin). With
``VQOptions.search_every = k`` (``--search-every``) only steps 0, k, 2k, ... of an epoch
search; the steps between add their batch's (input, gradient) pairs to the codewords the
nodes are assigned to already (their last search's) and keep the assignments. For one
dataset of the suite (its preset's model and training options), this script trains
VQ-GNN at each ``--every`` value and full-graph training, a few seeds or splits each, and
prints the test metric at the best validation epoch (mean and standard deviation over the
runs, in points), its difference to k = 1 and to full-graph training, and the median
training epoch (the run's own timing, evaluation apart: time it alone, or read only
``benchmarks/epoch_floor.py --search-every`` for the epoch).

Records go to ``--out`` (JSON lines; a run already there is skipped), the table is
printed.

``--timing-rounds R`` times the training epoch instead, in one process: the preset's
VQ-GNN at each ``--every`` value and the torch.sparse floor of ``epoch_floor.py`` (the
same 2-layer GCN trained full-graph by hand-written PyTorch), one epoch of each in turn,
R rounds after a warm-up round, medians printed and recorded (variant ``timing``). Taking
turns, the kinds share the machine's slow and fast moments: this machine's epochs differ
by 10-30 % between processes, more than the effect measured.

Usage:
    python benchmarks/search_every.py --data-root DIR                    # Tolokers, 3 splits
    python benchmarks/search_every.py --data-root DIR --dataset cora --seeds 5
    python benchmarks/search_every.py --data-root DIR --every 1,4,12 --timing-rounds 15
"""
from __future__ import annotations

import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import grid  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.train import Trainer, run_experiment, seed_everything  # noqa: E402
from vqgnn.train.records import append_result, read_records, strict_json  # noqa: E402


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def timing(data: Any, run: grid.Run, every: list[int], rounds: int) -> dict[str, list[float]]:
    """Epoch times of VQ-GNN at each ``every`` value and of the floor, taking turns."""
    from benchmarks import epoch_floor

    kinds: dict[str, Callable[[], Any]] = {}
    for k in every:
        seed_everything(0)
        model = run.model.build(data)
        train = replace(run.train, progress=False, epochs=1,
                        options=replace(run.train.options, search_every=k))
        trainer = Trainer(model, data, train)
        trainer.fit()  # set-up (k-means) and one epoch
        kinds[str(k)] = trainer.train_epoch
    kinds["floor"] = epoch_floor.floor_epoch(data)
    return epoch_floor.take_turns(kinds, rounds)


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dataset", default="tolokers", choices=sorted(grid.PRESETS["suite"]))
    parser.add_argument("--every", default="1,2,4,12",
                        help="comma-separated values of search_every (ints >= 1)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every run (default: the preset's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds (or splits) per value")
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"))
    parser.add_argument("--out", default=str(grid.RESULTS / "search_every.jsonl"))
    parser.add_argument("--timing-rounds", type=int, default=0,
                        help="time the epochs in one process, taking turns, this many rounds "
                             "(instead of training runs)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, received {args.threads}")
        torch.set_num_threads(args.threads)
    if args.timing_rounds < 0:
        parser.error(f"--timing-rounds must be >= 0, received {args.timing_rounds}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, received {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, received {args.epochs}")
    try:
        every = sorted({int(v) for v in args.every.split(",")})  # each value once
    except ValueError:
        every = []
    if not every or min(every) < 1:
        parser.error(f"--every must be comma-separated ints >= 1, received {args.every!r}")
    base = str(every[0])  # the ratios' and differences' reference: the most searches
    preset = grid.PRESETS["suite"][args.dataset]
    root = grid.prepare_root(preset, args.data_root, None)
    out = Path(args.out)
    if args.timing_rounds:
        run = grid.Run(preset, "vq", "gcn", 0)
        data = load_dataset(preset.name, root=root, split=run.split, seed=run.train.seed)
        times = timing(data, run, every, args.timing_rounds)
        append_result(out, {"variant": "timing", "dataset": str(data.name),
                            "epoch_seconds": times, "threads": torch.get_num_threads(),
                            "batch_size": run.train.batch_size,
                            "num_codewords": run.model.codebook.num_codewords})
        floor = statistics.median(times["floor"])
        print(f"\n{preset.name}, epochs taking turns in one process, {args.timing_rounds} "
              f"rounds, {torch.get_num_threads()} torch threads; command: python "
              f"benchmarks/search_every.py {' '.join(argv or sys.argv[1:])}\n")
        print(f"| kind | median epoch (s) | vs search every {base} | vs the floor |")
        print("|---|---|---|---|")
        reference = statistics.median(times[base])
        for name, values in times.items():
            med = statistics.median(values)
            label = "floor (torch.sparse, full graph)" if name == "floor" else (
                f"VQ-GNN, search every {name}")
            ratio = "-" if name == "floor" else f"{med / reference:.2f}x"
            print(f"| {label} | {med:.3f} | {ratio} | {med / floor:.2f}x |")
        return
    # a run's identity: its configurations, split and training seed (grid.run_key); the
    # record's own 'seed' may say seed + 100 * split (this script's first records did)
    recorded = {grid.run_key({**r, "seed": r["train_config"]["seed"]}): r
                for r in read_records(out) if r.get("variant") != "timing"}
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in ["full", *map(str, every)]:
        method = "full" if name == "full" else "vq"
        for index in range(args.seeds):
            run = grid.Run(preset, method, "gcn", index, epochs=args.epochs)
            if method == "vq":
                run.train = replace(run.train, options=replace(run.train.options,
                                                               search_every=int(name)))
            key = grid.run_key(grid.probe_of(run))
            if key not in recorded:
                data = load_dataset(preset.name, root=root, split=run.split,
                                    seed=run.train.seed)
                record = run_experiment(data, run.model, run.train)
                record.update(variant=name)
                recorded[key] = strict_json(append_result(out, record))  # as read back
            record = recorded[key]
            rows.setdefault(name, []).append(record)
            print(f"{name} split {run.split} seed {run.train.seed}: test "
                  f"{100 * record['test']:.2f}, best val {100 * record['best_val']:.2f}, "
                  f"epoch {record['median_epoch_seconds']:.3f} s", flush=True)
    first = rows["full"][0]
    print(f"\n{preset.name}, GCN, {first['model_config']['layers']} layers, the suite's "
          f"options, {first['train_config']['epochs']} epochs, {args.seeds} seeds/splits; "
          f"test {first['metric']} at the best validation epoch (points); command: python "
          f"benchmarks/search_every.py {' '.join(argv or sys.argv[1:])}\n")
    print(f"| method | search every | test | vs search every {base} | vs full | best val | "
          f"median epoch (s) | epoch vs search every {base} |")
    print("|---|---|---|---|---|---|---|---|")
    tests = {name: [100 * r["test"] for r in records] for name, records in rows.items()}
    epochs = {name: statistics.median(r["median_epoch_seconds"] for r in records)
              for name, records in rows.items()}
    for name, records in rows.items():
        mean = statistics.mean(tests[name])
        vs_base = "-" if name in ("full", base) else f"{mean - statistics.mean(tests[base]):+.2f}"
        vs_full = "-" if name == "full" else f"{mean - statistics.mean(tests['full']):+.2f}"
        ratio = "-" if name == "full" else f"{epochs[name] / epochs[base]:.2f}x"
        best = statistics.mean(100 * r["best_val"] for r in records)
        print(f"| {'full' if name == 'full' else 'vq'} | {'-' if name == 'full' else name} | "
              f"{_mean_std(tests[name])} | {vs_base} | {vs_full} | {best:.2f} | "
              f"{epochs[name]:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
