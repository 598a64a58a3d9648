"""The device checks for a lent GPU machine, as one command under a wall-clock budget.

In order, each with its share of ``--budget`` seconds (a step that runs out is stopped,
with every process it started, and recorded as such; the next one still runs):

1. the CUDA tests (``pytest -k cuda`` on the tests that take a ``device``: batching,
   layers, models, codebooks, meters, trainer), their summary line kept;
2. with ``--data-root``: the published-width accuracy runs of issue 11
   (``grid.py --preset published``: GCN, SAGE and GAT on split 0 of Tolokers and
   Minesweeper, then GCN and SAGE on further splits while the share lasts), ``--workers``
   runs at once on the one GPU (accuracy only: their epoch times share the machine);
3. the scaling comparison (``benchmarks/scaling.py``) on the device, alone: vq, full,
   cluster, saint and sage on synthetic graphs of ``--sizes`` nodes (degree 10), one epoch
   each;
4. the global attention layer's epoch time and step memory against N
   (``benchmarks/attention_scaling.py``), VQ against exact, alone.

Records, tables and plots go to ``--out`` (default ``benchmarks/results/gpu``; on the device
machine ``$OUT``), with ``summary.md`` naming the device. On a machine without CUDA it runs
the same steps on the CPU at the sizes given (the tests use it so, with tiny sizes).

Usage:
    python benchmarks/gpu.py --out "$OUT" --data-root DATA        # on the GPU machine
    python benchmarks/gpu.py --device cpu --sizes 2000 --attention-sizes 500 --budget 120
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from vqgnn.cli import script_parser

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CUDA_TESTS = ["tests/batching", "tests/nn", "tests/quantize", "tests/train/test_meters.py",
              "tests/train/test_trainer.py"]


def run_step(name: str, commands: list[list[str]], limit: float, log: Path) -> str:
    """Run ``commands`` one after another under ``limit`` seconds together, their output to
    ``log``; a one-line outcome. At the limit the running command's whole process group
    (worker processes included) is killed."""
    start = time.time()
    code = 0
    with log.open("w") as handle:
        for command in commands:
            left = limit - (time.time() - start)
            if left < 1:
                return f"{name}: stopped after {limit:.0f} s (time share used up); log {log.name}"
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=left) or code  # the first failure is kept
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return f"{name}: stopped after {limit:.0f} s (time share used up); log {log.name}"
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    return f"{name}: exit {code} in {time.time() - start:.0f} s; last line: {tail[0]}"


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="100000,1000000,3000000")
    parser.add_argument("--attention-sizes", default="10000,100000,1000000")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for all steps together")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--data-root", default=None,
                        help="folder holding heterophilous/ (the published-width runs; "
                             "without it that step is skipped)")
    parser.add_argument("--methods", default="vq,full,cluster,saint,sage",
                        help="methods of the scaling step (sage and saint need torch-sparse)")
    parser.add_argument("--workers", type=int, default=8,
                        help="published-width runs at once on the device")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or
                                                         HERE / "results" / "gpu"))
    args = parser.parse_args(argv)
    if args.workers < 1 or args.budget <= 0:
        parser.error(f"--workers must be >= 1 and --budget > 0, received {args.workers} and "
                     f"{args.budget}")
    args.out.mkdir(parents=True, exist_ok=True)
    device = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
              else f"cpu ({torch.get_num_threads()} threads)")
    python = sys.executable
    methods = args.methods
    shares = {"tests": 0.0 if args.skip_tests else 0.14,
              "published": 0.0 if args.data_root is None else 0.5,
              "scaling": 0.27, "attention": 0.09}
    seconds = {k: args.budget * v / sum(shares.values()) for k, v in shares.items()}
    runs = len(methods.split(",")) * len(args.sizes.split(","))
    attention_runs = 2 * len(args.attention_sizes.split(","))
    steps: list[tuple[str, list[list[str]], float]] = []
    if not args.skip_tests:
        steps.append(("CUDA tests", [[python, "-m", "pytest", "-q", "-k", args.device.split(":")[0],
                                      *CUDA_TESTS]], seconds["tests"]))
    if args.data_root is not None:
        grid = [python, str(HERE / "grid.py"), "--preset", "published", "--device", args.device,
                "--data-root", args.data_root, "--workers", str(args.workers),
                "--out", str(args.out / "published.jsonl"), "--plots", str(args.out)]
        # split 0 of every backbone first, then GCN and SAGE split by split
        steps.append(("published", [grid + ["--convs", "gcn,sage,gat", "--runs", "1"],
                                    grid + ["--convs", "gcn,sage", "--interleave"]],
                      seconds["published"]))
    steps.append(("scaling", [[python, str(HERE / "scaling.py"), "--device", args.device,
                               "--sizes", args.sizes, "--methods", methods,
                               "--time-limit", f"{seconds['scaling'] / runs:.0f}",
                               "--init-nodes", "65536", "--vq-inference-batches", "random",
                               "--out", str(args.out / "scaling.jsonl")]], seconds["scaling"]))
    steps.append(("global attention", [[python, str(HERE / "attention_scaling.py"), "--device",
                                        args.device, "--sizes", args.attention_sizes,
                                        "--exact-limit",
                                        f"{seconds['attention'] / attention_runs:.0f}",
                                        "--out", str(args.out / "attention_scaling.jsonl")]],
                  seconds["attention"]))
    given = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Device checks on {device}", "", f"command: python benchmarks/gpu.py {given}",
             ""]
    for name, command, limit in steps:
        log = args.out / f"{name.replace(' ', '_').lower()}.log"
        outcome = run_step(name, command, limit, log)
        print(outcome, flush=True)
        lines.append(f"- {outcome}")
    if args.data_root is not None:  # the table of every published-width run recorded
        table = subprocess.run(grid + ["--convs", "gcn,sage,gat", "--table-only"], cwd=ROOT,
                               capture_output=True, text=True)
        lines += ["", table.stdout.strip() or table.stderr.strip()[-2000:]]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"summary: {args.out / 'summary.md'}")


if __name__ == "__main__":
    main()
