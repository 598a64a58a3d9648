"""The codebook's EMA decay on a graph of few mini-batches per epoch: how fast VQ-GNN
learns in its first epochs, and where it ends.

Each codeword moves towards the mean of the layer inputs assigned to it by a fraction
``1 - decay`` per step, so the codebook averages the inputs of about ``1 / (1 - decay)``
steps: 100 at the default 0.99, that is 17 epochs of Cora's 6 batches, while the hidden
layers' inputs change fastest. For one dataset of the suite (its preset's model and
training options: for Cora and CiteSeer lr / S per step with a cosine decay), with
``--layers`` layers (every layer after the first quantized, each with its own codebook),
this script trains VQ-GNN at each ``--decays`` value and full-graph training, a few
seeds each, and prints the validation metric at a few early epochs, the best, and the
test metric at the best validation epoch (means over the seeds, in points). ``1-1/S``
among the decays stands for ``1 - 1/S`` with S the steps per epoch (the codebook then
averages about one epoch of batches, each node's latest inputs once).

Records go to ``--out`` (JSON lines; a run already there is skipped), the table is
printed.

Usage:
    python benchmarks/codebook_decay.py --data-root DIR                  # Cora, 3 layers
    python benchmarks/codebook_decay.py --data-root DIR --dataset citeseer --seeds 5
"""
from __future__ import annotations

import math
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import grid  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.train import run_experiment  # noqa: E402
from vqgnn.train.records import append_result, read_records, strict_json  # noqa: E402

#: The decay whose value depends on the steps per epoch S: ``1 - 1/S``.
PER_EPOCH = "1-1/S"


def resolve_decay(name: str, steps: int) -> float:
    """A ``--decays`` entry as a number: a float in [0, 1), or ``1-1/S`` for S steps."""
    if name == PER_EPOCH:
        return 1.0 - 1.0 / steps
    try:
        value = float(name)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise ValueError(f"--decays: each value must be a float in [0, 1) or {PER_EPOCH!r}, "
                         f"received {name!r}")
    return value


def _value_at(history: list[dict[str, Any]], epoch: int) -> Optional[float]:
    """The validation metric of the last evaluation at or before ``epoch``."""
    seen = [h["val"] for h in history if h["epoch"] <= epoch and h.get("val") is not None]
    return seen[-1] if seen else None


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dataset", default="cora", choices=sorted(grid.PRESETS["suite"]))
    parser.add_argument("--decays", default=f"0.99,0.9,{PER_EPOCH},0.5")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every run (default: the preset's)")
    parser.add_argument("--at", default="5,10,20,50",
                        help="epochs at which the validation metric is shown")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"))
    parser.add_argument("--out", default=str(grid.RESULTS / "codebook_decay.jsonl"))
    args = parser.parse_args(argv)
    if args.layers < 2:
        parser.error(f"--layers must be >= 2 (the first layer has no codebook), received "
                     f"{args.layers}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, received {args.seeds}")
    try:
        at = [int(v) for v in args.at.split(",")]
    except ValueError:
        at = []
    if not at or min(at) < 1:
        parser.error(f"--at must be comma-separated epochs >= 1, received {args.at!r}")
    names = args.decays.split(",")
    for name in names:
        try:
            resolve_decay(name, 2)
        except ValueError as err:
            parser.error(str(err))
    preset = grid.PRESETS["suite"][args.dataset]
    root = grid.prepare_root(preset, args.data_root, None)
    out = Path(args.out)
    recorded = {(r["variant"], r["dataset"], r["seed"], r["model_config"]["layers"],
                 r["train_config"]["epochs"]): r for r in read_records(out)}
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in ["full", *names]:
        method = "full" if name == "full" else "vq"
        for index in range(args.seeds):
            run = grid.Run(preset, method, "gcn", index, epochs=args.epochs)
            data = load_dataset(preset.name, root=root, split=run.split, seed=run.train.seed)
            seed = run.train.seed + 100 * run.split
            key = (name, str(data.name), seed, args.layers, run.train.epochs)
            if key not in recorded:
                model = replace(run.model, layers=args.layers)
                if method == "vq":
                    steps = math.ceil(data.num_nodes / run.train.batch_size)
                    decay = resolve_decay(name, steps)
                    model = replace(model, codebook=replace(model.codebook, decay=decay))
                record = run_experiment(data, model, run.train)
                record.update(variant=name, seed=seed)
                recorded[key] = strict_json(append_result(out, record))  # as read back
            record = recorded[key]
            rows.setdefault(name, []).append(record)
            shown = ", ".join(f"epoch {e} {100 * v:.1f}" for e in at
                              if (v := _value_at(record["history"], e)) is not None)
            print(f"{name} seed/split {seed}: val {shown}; best {100 * record['best_val']:.2f} "
                  f"(test {100 * record['test']:.2f})", flush=True)
    epochs = rows["full"][0]["train_config"]["epochs"]
    print(f"\n{preset.name}, GCN, {args.layers} layers ({args.layers - 1} quantized), the "
          f"suite's options, {epochs} epochs, {args.seeds} seeds/splits; validation "
          f"{rows['full'][0]['metric']} (points, mean over the runs); command: python "
          f"benchmarks/codebook_decay.py {' '.join(argv or sys.argv[1:])}\n")
    print("| method | codebook decay | " + " | ".join(f"val, epoch {e}" for e in at)
          + " | best val | test at best val |")
    print("|---|---|" + "---|" * (len(at) + 2))
    for name, records in rows.items():
        cells = []
        for e in at:
            values = [v for r in records if (v := _value_at(r["history"], e)) is not None]
            cells.append(f"{100 * statistics.mean(values):.1f}" if values else "-")
        decays = sorted({r["model_config"]["codebook"]["decay"] for r in records})
        label = "-" if name == "full" else (
            f"{name} = {decays[0]:.3f}" if name == PER_EPOCH else name)
        best = statistics.mean(100 * r["best_val"] for r in records)
        test = statistics.mean(100 * r["test"] for r in records)
        print(f"| {'full' if name == 'full' else 'vq'} | {label} | " + " | ".join(cells)
              + f" | {best:.2f} | {test:.2f} |")


if __name__ == "__main__":
    main()
