"""What ``vqgnn train`` gives with no options but ``--dataset/--root/--method``: VQ-GNN
against full-graph training, and the dropout that chose the default.

Runs ``vqgnn train --dataset D --root R --method vq,full`` (Cora seed 0, Tolokers split 0)
with the defaults and with ``--dropout 0.5`` (the default before it became 0.2), and prints
per run the test metric, VQ minus full, and the VQ codebooks' training quantisation error
at the last epoch (the relative error of the quantized training-mode layer inputs).

Usage:
    python benchmarks/defaults.py --data-root DIR    # DIR holds planetoid/ and heterophilous/
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import grid  # noqa: E402
from vqgnn.cli import run as vqgnn_run  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.train.records import append_result, read_records  # noqa: E402

#: (key, what the user types as --dataset, the suite preset whose data folder it reads;
#: None: no --root)
DATASETS: tuple[tuple[str, str, Optional[str]], ...] = (
    ("cora", "Cora", "cora"), ("tolokers", "Tolokers", "tolokers"))
VARIANTS: tuple[tuple[str, list[str]], ...] = (("defaults", []),
                                              ("--dropout 0.5", ["--dropout", "0.5"]))


def run(dataset: str, root: Optional[str], extra: list[str]) -> list[dict[str, Any]]:
    """One ``vqgnn train`` command (vq then full); its two records."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.jsonl"
        code = vqgnn_run(["train", "--dataset", dataset,
                                *(["--root", root] if root else []), "--method", "vq,full",
                                "--quiet", "--json", str(path), *extra])
        if code != 0:
            raise SystemExit(f"defaults.py: vqgnn train exited {code}")
        return read_records(path)


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"))
    parser.add_argument("--datasets", default=",".join(k for k, _, _ in DATASETS))
    parser.add_argument("--out", type=Path, default=grid.RESULTS / "defaults.jsonl")
    args = parser.parse_args(argv)
    keys = args.datasets.split(",")
    done = {(r["variant"], r["defaults_dataset"], r["method"]): r
            for r in (read_records(args.out) if args.out.exists() else [])}
    lines = ["| dataset | options | vq test | full test | vq − full | within 1 pt | "
             "vq quantisation error (last epoch) |", "|---|---|---:|---:|---:|---|---:|"]
    for key, name, preset in DATASETS:
        if key not in keys:
            continue
        # A copy of the data folder (processing writes beside raw/): the source stays.
        root = (grid.prepare_root(grid.PRESETS["suite"][preset], args.data_root, None)
                if preset else None)
        for variant, extra in VARIANTS:
            if (variant, name, "vq") not in done:
                for record in run(name, root, extra):
                    record.update(variant=variant, defaults_dataset=name)
                    append_result(args.out, record)
                    done[(variant, name, record["method"])] = record
            vq, full = done[(variant, name, "vq")], done[(variant, name, "full")]
            gap = 100 * (vq["test"] - full["test"])
            error = next(h["quantization_error"] for h in reversed(vq["history"])
                         if h.get("quantization_error") is not None)
            lines.append(f"| {name} | {variant} | {100 * vq['test']:.2f} | "
                         f"{100 * full['test']:.2f} | {gap:+.2f} | "
                         f"{'yes' if gap >= -1.0 else 'NO'} | {error:.3f} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
