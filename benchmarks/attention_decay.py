"""VQ global attention against exact global attention under several codebook EMA decays,
paired by seed: one dataset of ``benchmarks/attention.py`` (its preset, with the lr
warm-up), resumably.

A codeword's EMA weighs a step ``t`` steps back by ``decay ** t``: a memory of about
``1 / (1 - decay)`` steps, ``1 / ((1 - decay) S)`` epochs when an epoch has ``S`` steps. On
a small graph (amherst41: 2,235 nodes, batches of 512, S = 5) the default 0.99 remembers
about 20 epochs of inputs that the weights have since moved away from. Per run (seed or
given split): full-graph training of the global-attention model (``exact``) and VQ-GNN
(each of an epoch's S steps at lr / S) at each ``--decays`` value. The table gives, per
variant, the test metric, the mean best validation metric (what model selection sees), and
VQ minus exact paired by run, with its standard error.

Every run appends one record to ``--out``. A run already there is skipped if its model and
training options are the planned ones (so runs made by ``vqgnn train`` with the same options
count), and the script stops if they are not.

Usage:
    python benchmarks/attention_decay.py --data-root DIR                  # amherst41, 20 seeds
    python benchmarks/attention_decay.py --data-root DIR --decays 0.99,0.9 --runs 5
    python benchmarks/attention_decay.py --table-only
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import attention, grid  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.train.records import read_records, strict_json  # noqa: E402


def variant(record: dict[str, Any]) -> str:
    """``'exact'`` or ``'VQ, decay D'``."""
    if record["method"] == "full":
        return "exact"
    return f"VQ, decay {record['model_config']['codebook']['decay']:g}"


def run_id(record: dict[str, Any]) -> int:
    return int(record["seed"]) + 100 * int(record.get("split") or 0)


# Options that do not change what a run computes (those grid.run_key leaves out).
_IGNORED = ("progress", "checkpoint", "device")


def differences(record: dict[str, Any], run: grid.Run) -> list[str]:
    """The model and training options in which ``record`` differs from the planned
    ``run``'s: a run in ``--out`` counts as done only if this is empty (records made by
    ``vqgnn train`` with the same options count too)."""
    probe = strict_json(grid.probe_of(run))
    out = []
    for part in ("model_config", "train_config"):
        saved, values = record.get(part) or {}, probe[part]
        out += [f"{part}.{k}: {saved.get(k)!r} instead of {v!r}" for k, v in values.items()
                if k not in _IGNORED and saved.get(k) != v]
    return out


def table(records: list[dict[str, Any]], dataset: str) -> list[str]:
    """One row per variant: runs, test (mean ± std), mean best validation, and VQ minus
    exact over the runs both have (mean ± standard error, points)."""
    rows = [r for r in records if r["dataset"] == dataset and r.get("status", "ok") == "ok"]
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(variant(r), {}).setdefault(run_id(r), r)
    exact = by.get("exact", {})
    lines = ["| variant | runs | test | best validation | VQ − exact, paired | VQ ≥ exact − 1 |",
             "|---|---|---|---|---|---|"]
    names = sorted(by, key=lambda n: (n != "exact", -float(n.split()[-1]) if n != "exact"
                                      else 0.0))
    for name in names:
        runs = by[name]
        tests = [100 * r["test"] for r in runs.values()]
        vals = [100 * r["best_val"] for r in runs.values()]
        spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
        paired, met = "-", "-"
        common = sorted(set(runs) & set(exact))
        if name != "exact" and common:
            diffs = [100 * (runs[i]["test"] - exact[i]["test"]) for i in common]
            error = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
            mean = statistics.mean(diffs)
            paired = f"{mean:+.2f} ± {error:.2f} ({len(common)} runs)"
            met = "yes" if mean >= -1.0 else "NO"  # one-sided, as attention.py reads it
        lines.append(f"| {name} | {len(runs)} | {statistics.mean(tests):.2f} ± {spread:.2f} | "
                     f"{statistics.mean(vals):.2f} | {paired} | {met} |")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dataset", default="amherst41", choices=sorted(attention.DATASETS))
    parser.add_argument("--decays", default="0.99,0.9,0.8,0.7,0.5",
                        help="comma-separated codebook EMA decays, each in [0, 1)")
    parser.add_argument("--runs", type=int, default=20, help="seeds or given splits")
    parser.add_argument("--warmup-epochs", type=int, default=10, metavar="W")
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"))
    parser.add_argument("--out", type=Path,
                        default=grid.RESULTS / "attention_amherst41_decay.jsonl")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    try:
        decays = [float(d) for d in args.decays.split(",")]
    except ValueError:
        decays = []
    if not decays or not all(0.0 <= d < 1.0 for d in decays):
        parser.error(f"--decays must be comma-separated floats in [0, 1), received "
                     f"{args.decays!r}")
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, received {args.runs}")
    preset = attention.DATASETS[args.dataset]
    if not 0 <= args.warmup_epochs < preset.train["epochs"]:
        parser.error(f"--warmup-epochs must be in [0, {preset.train['epochs']}) (the preset's "
                     f"epochs), received {args.warmup_epochs}")
    dataset = grid.record_name(preset.name)
    if not args.table_only:
        args.ogb_root, args.verbose, start = None, False, time.time()  # for grid.execute
        done: dict[tuple[str, str, int], dict[str, Any]] = {}
        for r in read_records(args.out):
            done.setdefault((variant(r), r["dataset"], run_id(r)), r)
        model = replace(preset.model, global_attention=True)
        plan = [("full", None)] + [("vq", d) for d in decays]
        for index in range(args.runs):
            for method, decay in plan:
                codebook = (model.codebook if decay is None
                            else replace(model.codebook, decay=decay))
                run = grid.Run(replace(preset, model=replace(model, codebook=codebook)),
                               method, "gcn", index)
                extra = {"warmup_epochs": args.warmup_epochs}
                if method == "vq":
                    extra["lr_per_epoch"] = True
                run.train = run.train.replace(**extra)
                name = "exact" if decay is None else f"VQ, decay {decay:g}"
                key = (name, dataset, run.train.seed + 100 * run.split)
                if key in done:
                    wrong = differences(done[key], run)
                    if wrong:
                        raise SystemExit(f"attention_decay.py: error: {args.out} holds run "
                                         f"{key} with other options: {'; '.join(wrong)}")
                    continue
                # grid.execute: loads the data, records a diverged run and goes on
                grid.execute(run, name, args.out, set(), args, start)
    print(f"\n{dataset}, global attention, {args.warmup_epochs} warm-up epochs; command: python "
          f"benchmarks/attention_decay.py {' '.join(argv if argv is not None else sys.argv[1:])}"
          "\n")
    print("\n".join(table(read_records(args.out), dataset)))


if __name__ == "__main__":
    main()
