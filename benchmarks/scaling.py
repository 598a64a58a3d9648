"""Scaling run: epoch time and peak memory per method on synthetic graphs of growing size.

Each (size, method) trains in its own process (``vqgnn train ... --json``) under a time
limit, so that a run that exhausts memory or time is recorded as such (``oom``,
``timeout``) instead of taking the suite down; a method that failed at one size is
recorded as ``skipped`` at the larger ones. Records go to ``--out`` (JSON lines,
resumable); the table and the plot (peak training memory and epoch time against nodes)
go beside it.

The average degree is fixed (``--deg``), and so is the batch size: VQ-GNN's training
memory should not grow with the graph, full-graph training's does.

Usage:
    python benchmarks/scaling.py                                   # 10^4 .. 2*10^6 nodes
    python benchmarks/scaling.py --sizes 10000,100000 --methods vq,full --time-limit 120
    python benchmarks/scaling.py --table-only
    python benchmarks/scaling.py --sizes 10000,100000,1000000,10000000 --threads 2 \
        --init-nodes 65536 --vq-inference-batches random     # to 10^7, on 24 GB
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.train.records import append_result  # noqa: E402

HERE = Path(__file__).resolve().parent
OOM_MARKERS = ("MemoryError", "out of memory", "can't allocate memory", "DefaultCPUAllocator",
               "Cannot allocate memory")


def dataset(n: int, args: argparse.Namespace) -> str:
    return (f"synthetic:n={n},deg={args.deg},classes={args.classes},features={args.features},"
            f"seed=0")


def command(n: int, method: str, json_path: str, args: argparse.Namespace) -> list[str]:
    from vqgnn.train import method_class

    takes = method_class(method).Options.option_names()
    own = [flag for name, flag, value in (
        ("batch_size", "--batch-size", args.batch_size),
        ("saint_coverage", "--saint-coverage", args.saint_coverage),
        ("init_nodes", "--init-nodes", args.init_nodes),
        ("inference_batches", "--inference-batches", args.vq_inference_batches)) if name in takes
        and value is not None for flag in (flag, str(value))]
    return [sys.executable, "-m", "vqgnn", "train", "--dataset", dataset(n, args),
            "--method", method, "--conv", args.conv, "--epochs", str(args.epochs),
            "--eval-every", str(args.epochs), *own,
            "--num-codewords", str(args.num_codewords), "--hidden", str(args.hidden),
            "--layers", str(args.layers), "--device", args.device, "--quiet",
            "--json", json_path]


def child_env(args: argparse.Namespace) -> Optional[dict[str, str]]:
    """The child's environment: ``--threads`` torch (OpenMP) threads, else inherited."""
    if args.threads is None:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads)}


def _limit_memory(gib: Optional[float]) -> Any:
    if gib is None:
        return None

    def limit() -> None:
        import resource

        size = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return limit


KEY_FIELDS = ("n", "deg", "classes", "features", "method", "conv", "batch_size", "epochs",
              "num_codewords", "hidden", "layers", "saint_coverage", "device", "threads",
              "init_nodes", "vq_inference_batches")
SERIES_FIELDS = tuple(k for k in KEY_FIELDS if k not in ("n", "method"))


def base_record(n: int, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The configuration of one run (its identity: :data:`KEY_FIELDS`)."""
    return {"n": n, "deg": args.deg, "classes": args.classes, "features": args.features,
            "method": method, "conv": args.conv, "batch_size": args.batch_size,
            "epochs": args.epochs, "num_codewords": args.num_codewords, "hidden": args.hidden,
            "layers": args.layers, "saint_coverage": args.saint_coverage,
            "device": args.device, "threads": args.threads, "init_nodes": args.init_nodes,
            "vq_inference_batches": args.vq_inference_batches,
            "time_limit": args.time_limit,
            "memory_limit_gib": args.memory_gib}


def needs_run(record: Optional[dict[str, Any]], args: argparse.Namespace) -> bool:
    """Whether a size must (re)run: never run, an error, or a failure under a tighter
    time or memory limit than this command's."""
    if record is None or record["status"] == "error":
        return True
    if record["status"] in ("timeout", "skipped") and record["time_limit"] < args.time_limit:
        return True
    if record["status"] == "oom":
        old, new = record["memory_limit_gib"], args.memory_gib
        return old is not None and (new is None or new > old)
    return False


def run_one(n: int, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one method on one graph size in a child process; a record with ``status``."""
    base = base_record(n, method, args)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "record.jsonl")
        start = time.time()
        try:
            proc = subprocess.run(command(n, method, path, args), capture_output=True,
                                  text=True, timeout=args.time_limit, env=child_env(args),
                                  preexec_fn=_limit_memory(args.memory_gib))
        except subprocess.TimeoutExpired:
            return {**base, "status": "timeout", "wall_seconds": time.time() - start}
        wall = time.time() - start
        if proc.returncode == 0 and os.path.exists(path):
            record = report.load_records(Path(path))[0]
            keep = ("median_epoch_seconds", "peak_memory_bytes", "memory_measure",
                    "peak_rss_bytes", "rss_measure", "test", "metric", "inference_seconds")
            return {**base, "status": "ok", "wall_seconds": wall,
                    **{k: record.get(k) for k in keep}}
        tail = (proc.stderr or proc.stdout)[-600:]
        return {**base, "status": failure_status(proc.returncode, tail), "wall_seconds": wall,
                "returncode": proc.returncode, "error": tail}


def failure_status(returncode: int, output_tail: str) -> str:
    """``'oom'`` for a child killed by the kernel (SIGKILL: the OOM killer) or one that
    failed to allocate, else ``'error'``."""
    killed = returncode in (-9, 137)
    return "oom" if killed or any(m in output_tail for m in OOM_MARKERS) else "error"


def _key(r: dict[str, Any]) -> tuple:
    return tuple(r.get(k) for k in KEY_FIELDS)  # records before 'threads': None


def _first_failure(failed: Optional[dict[str, Any]], record: dict[str, Any]
                   ) -> Optional[dict[str, Any]]:
    """The failure that stops a method's larger sizes: the first ``oom``/``timeout`` (a
    ``skipped`` record names it already)."""
    if failed is None and record["status"] in ("oom", "timeout", "skipped"):
        return record
    return failed


def table(records: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """Markdown: one row per size, epoch time and training memory of each method."""
    head = ["nodes"] + [f"{m} epoch (s)" for m in methods] + [f"{m} MB" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["n"], r["method"]): r for r in records}
    for n in sorted({r["n"] for r in records}):
        cells = [f"{n:,}"]
        for field in ("median_epoch_seconds", "peak_memory_bytes"):
            for m in methods:
                r = by.get((n, m))
                if r is None:
                    cells.append("-")
                elif r["status"] != "ok":
                    cells.append(r["status"])
                elif field == "peak_memory_bytes":
                    cells.append(f"{r[field] / 2**20:.1f}")
                else:
                    cells.append(f"{r[field]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def memory_targets(records: list[dict[str, Any]]) -> list[str]:
    """VQ-GNN's training memory growth from the smallest to the largest graph (< 1.3x),
    and full-graph training's."""
    lines = ["| method | nodes | training memory growth | target | met |", "|---|---|---|---|---|"]
    for method, target in (("vq", "< 1.3x"), ("full", "grows with the graph")):
        ok = sorted((r["n"], r["peak_memory_bytes"]) for r in records
                    if r["method"] == method and r["status"] == "ok")
        if len(ok) < 2:
            continue
        growth = ok[-1][1] / ok[0][1]
        met = growth < 1.3 if method == "vq" else growth > 1.3
        lines.append(f"| {method} | {ok[0][0]:,} to {ok[-1][0]:,} | {growth:.2f}x | {target} | "
                     f"{'yes' if met else 'NO'} |")
    return lines


def plot(records: list[dict[str, Any]], methods: list[str], path: Path) -> Optional[Path]:
    if not records:
        return None
    fig, axes = report.pyplot().subplots(1, 2, figsize=(11, 4))
    for field, ax, label in (("peak_memory_bytes", axes[0], "peak training memory (MB)"),
                             ("median_epoch_seconds", axes[1], "epoch time (s)")):
        for m in methods:
            ok = sorted((r["n"], r[field]) for r in records
                        if r["method"] == m and r["status"] == "ok")
            if not ok:
                continue
            scale = 2**20 if field == "peak_memory_bytes" else 1
            line = ax.plot([n for n, _ in ok], [v / scale for _, v in ok], marker="o",
                           label=m)[0]
            failed = [r for r in records if r["method"] == m and r["status"] in
                      ("oom", "timeout")]
            for r in failed:  # where the method stopped: a cross at its last value
                ax.plot([r["n"]], [ok[-1][1] / scale], marker="x", markersize=10,
                        color=line.get_color())
                ax.annotate(r["status"], (r["n"], ok[-1][1] / scale), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes (average degree fixed)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return report.save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000,2000000")
    parser.add_argument("--methods", default="vq,full,sage,cluster,saint")
    parser.add_argument("--deg", type=int, default=10, help="average degree")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--conv", default="gcn")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--saint-coverage", type=float, default=5.0,
                        help="GraphSAINT pre-sampling (samples per node)")
    parser.add_argument("--time-limit", type=float, default=900.0,
                        help="seconds per run, graph generation and evaluation included")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="address-space limit per run (default: the machine's memory)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each run (OMP_NUM_THREADS; default: "
                             "inherited); part of a record's identity")
    parser.add_argument("--init-nodes", type=int, default=None,
                        help="vq: codebook k-means on this many nodes' inputs, memory "
                             "bounded by the batch (needed at 10^7 nodes on 24 GB)")
    parser.add_argument("--vq-inference-batches", choices=["metis", "random"], default=None,
                        help="vq: the batches of the record's VQ inference after training "
                             "(default: the library's, METIS; its partition took 327 of a "
                             "3*10^6-node run's 384 s, and more than the limit at 10^7)")
    parser.add_argument("--out", default=str(HERE / "results" / "scaling.jsonl"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    try:
        sizes = sorted(int(v) for v in args.sizes.split(","))
    except ValueError:
        parser.error(f"--sizes must be comma-separated ints, received {args.sizes!r}")
    methods = args.methods.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = report.load_records(out)
    done = {_key(r): r for r in records}
    for method in [] if args.table_only else methods:
        failed: Optional[dict[str, Any]] = None
        for n in sizes:
            key = _key(base_record(n, method, args))
            previous = done.get(key)
            if previous is not None and (failed is not None or not needs_run(previous, args)):
                print(f"{method} n={n:,}: done before ({previous['status']})", flush=True)
                failed = _first_failure(failed, previous)
                continue
            if failed is not None:
                reason = failed.get("reason") or f"{failed['status']} at n={failed['n']}"
                record = {**base_record(n, method, args), "status": "skipped", "reason": reason}
            else:
                record = run_one(n, method, args)
            append_result(out, record)
            records.append(record)
            done[key] = record
            shown = (f"{record['median_epoch_seconds']:.2f} s/epoch, "
                     f"{record['peak_memory_bytes'] / 2**20:.1f} MB"
                     if record["status"] == "ok" else record["status"])
            print(f"{method} n={n:,}: {shown}", flush=True)
            failed = _first_failure(failed, record)
    series = {k: v for k, v in base_record(0, "", args).items() if k in SERIES_FIELDS}
    shown_records = [r for r in records if r["method"] in methods
                     and all(r.get(k) == v for k, v in series.items())]
    given = " ".join(sys.argv[1:] if argv is None else argv)
    threads = "inherited" if args.threads is None else args.threads
    title = (f"Scaling ({args.conv}, average degree {args.deg}, batch {args.batch_size}, "
             f"K {args.num_codewords}, device {args.device}, threads {threads}, "
             f"{args.time_limit:.0f} s per run); "
             f"command: python benchmarks/scaling.py {given}")
    text = "\n".join([title, "", *table(shown_records, methods), "",
                      *memory_targets(shown_records)]) + "\n"
    print("\n" + text)
    out.with_suffix(".md").write_text(text)
    written = plot(shown_records, methods, out.with_suffix(".png"))
    if written:
        print(f"plot: {written}")


if __name__ == "__main__":
    main()
