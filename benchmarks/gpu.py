"""The device checks for a lent GPU machine, as one command under a wall-clock budget.

In order, each with its share of ``--budget`` seconds (a step that runs out is stopped and
recorded as such; the next one still runs):

1. the CUDA tests (``pytest`` on the tests that take a ``device``: layers, models, meters,
   trainer), their summary line kept;
2. the scaling comparison (``benchmarks/scaling.py``) on the device: vq, full, cluster,
   saint and sage on synthetic graphs of ``--sizes`` nodes (degree 10), one epoch each;
3. the global attention layer's epoch time and step memory against N
   (``benchmarks/attention_scaling.py``), VQ against exact.

Records, tables and plots go to ``--out`` (default ``benchmarks/results/gpu``; on the device
machine ``$OUT``), with ``summary.md`` naming the device. On a machine without CUDA it runs
the same steps on the CPU at the sizes given (the tests use it so, with tiny sizes).

Usage:
    python benchmarks/gpu.py --out "$OUT"                        # on the GPU machine
    python benchmarks/gpu.py --device cpu --sizes 2000 --attention-sizes 500 --budget 120
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CUDA_TESTS = ["tests/nn", "tests/quantize", "tests/train/test_meters.py",
              "tests/train/test_trainer.py"]


def run_step(name: str, command: list[str], limit: float, log: Path) -> str:
    """Run ``command`` under ``limit`` seconds, its output to ``log``; a one-line outcome."""
    start = time.time()
    with log.open("w") as handle:
        try:
            code = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=max(limit, 1.0)).returncode
        except subprocess.TimeoutExpired:
            return f"{name}: stopped after {limit:.0f} s (time share used up); log {log.name}"
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    return f"{name}: exit {code} in {time.time() - start:.0f} s; last line: {tail[0]}"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="100000,1000000,3000000")
    parser.add_argument("--attention-sizes", default="10000,100000,1000000")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for all steps together")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or
                                                         HERE / "results" / "gpu"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
              else f"cpu ({torch.get_num_threads()} threads)")
    python = sys.executable
    methods = "vq,full,cluster,saint,sage"
    shares = {"tests": 0.0 if args.skip_tests else 0.25, "scaling": 0.5, "attention": 0.25}
    seconds = {k: args.budget * v / sum(shares.values()) for k, v in shares.items()}
    runs = len(methods.split(",")) * len(args.sizes.split(","))
    attention_runs = 2 * len(args.attention_sizes.split(","))
    steps = []
    if not args.skip_tests:
        steps.append(("CUDA tests", [python, "-m", "pytest", "-q", *CUDA_TESTS],
                      seconds["tests"]))
    steps.append(("scaling", [python, str(HERE / "scaling.py"), "--device", args.device,
                              "--sizes", args.sizes, "--methods", methods,
                              "--time-limit", f"{seconds['scaling'] / runs:.0f}",
                              "--out", str(args.out / "scaling.jsonl")], seconds["scaling"]))
    steps.append(("global attention", [python, str(HERE / "attention_scaling.py"), "--device",
                                       args.device, "--sizes", args.attention_sizes,
                                       "--exact-limit",
                                       f"{seconds['attention'] / attention_runs:.0f}",
                                       "--out", str(args.out / "attention_scaling.jsonl")],
                  seconds["attention"]))
    given = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Device checks on {device}", "", f"command: python benchmarks/gpu.py {given}",
             ""]
    for name, command, limit in steps:
        log = args.out / f"{name.replace(' ', '_').lower()}.log"
        outcome = run_step(name, command, limit, log)
        print(outcome, flush=True)
        lines.append(f"- {outcome}")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"summary: {args.out / 'summary.md'}")


if __name__ == "__main__":
    main()
