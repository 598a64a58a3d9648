"""Peak inference memory against graph size: VQ inference, exact layer-wise, exact full-graph.

Usage:
    python benchmarks/inference_memory.py --sizes 10000,100000,1000000,10000000 \
        --init-nodes 65536
    python benchmarks/inference_memory.py --table-only
    python benchmarks/inference_memory.py --power 10 --modes vq --init-nodes 65536 \
        --out benchmarks/results/inference_memory_flat.jsonl \
        --plot benchmarks/results/inference_memory_flat.png \
        --plot-with benchmarks/results/inference_memory.jsonl

``--power`` sets the degrees' power-law exponent (2.5 by default: hubs whose degree grows
with N, so the largest batch's in-edges do too; 10: nearly uniform degrees). ``--modes``
measures only some modes.

For each size N a synthetic graph (average degree 10, 32 features) and a VQ-GNN (GCN, 3
layers, 64 hidden, K = 256, prepared: k-means codebooks) are built, then one inference of
every node is measured three ways by :class:`~vqgnn.train.meters.TensorMemoryMeter` (the
peak bytes of the tensors the inference creates and holds at once, on top of the graph,
features and model that exist before it):

* ``vq``: VQ inference (:meth:`~vqgnn.nn.VQGNN.vq_batches`, one refresh pass) over random
  batches of ``--batch-size`` nodes, each batch's outputs consumed as they come (a
  streaming evaluation; gathering all outputs adds N x C floats);
* ``exact layer-wise``: :meth:`~vqgnn.nn.VQGNN.inference` in chunks of ``--batch-size``;
* ``exact full-graph``: one full-graph forward ``model(x, graph)``.

The codebooks' initialisation (``--init-nodes``) changes their values, not the shapes of
what inference creates, so the measured peaks do not depend on it; at 10^7 nodes only the
bounded initialisation fits beside the graph in 24 GB (the exact one was killed by the
kernel at 22.8 GB resident).

A mode whose projected peak (linear in N from the previous size) exceeds ``--memory-gb``
is not run at that size and says so; one that runs out of memory is recorded as such.
One record per (N, mode) in ``--out``; modes already there are skipped (resumable). Each
size runs in a child process: one the kernel kills (out of memory) is recorded as such.
"""
from __future__ import annotations

import argparse
import gc
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqgnn import VQGNN, VQGraph  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.train.meters import TensorMemoryMeter  # noqa: E402
from vqgnn.train.records import append_result, read_records  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("vq", "exact layer-wise", "exact full-graph")


def read(path: Path, power: float = 2.5) -> list[dict[str, Any]]:
    """The records of ``path`` for graphs of power-law exponent ``power`` (records from
    before ``--power`` existed: 2.5)."""
    records = read_records(path) if path.exists() else []
    return [r for r in records if r.get("power", 2.5) == power]


def measure(n: int, args: argparse.Namespace, skip: set[str], done: set[str]) -> None:
    """Build the graph and model of size ``n`` and measure every mode not in ``done``
    (those in ``skip`` are recorded as not run); each record is appended to ``args.out``
    as soon as it exists, after a ``'started'`` one, so that a process killed in a mode
    (the kernel's out-of-memory killer) leaves that mode marked."""
    torch.manual_seed(0)
    start = time.perf_counter()
    data = load_dataset(f"synthetic:n={n},deg={args.deg:g},power={args.power:g}", seed=0)
    graph = VQGraph(data.edge_index, n)
    model = VQGNN(data.num_features, 64, 3, data.num_classes, num_nodes=n,
                  num_codewords=args.num_codewords).eval()
    model.prepare(data.x, graph, args.batch_size, init_nodes=args.init_nodes)
    setup = time.perf_counter() - start
    batches = list(torch.randperm(n).split(args.batch_size))
    # What one VQ batch holds grows with its in-edges: on a power-law graph the hubs, and
    # so the largest batch's edges, grow with N.
    max_batch_edges = max(int(graph.in_degree[b].sum()) for b in batches)
    max_degree = int(graph.in_degree.max())

    def vq() -> None:
        for _batch, _out in model.vq_batches(data.x, graph, batches):
            pass

    runs: dict[str, Callable[[], Any]] = {
        "vq": vq,
        "exact layer-wise": lambda: model.inference(data.x, graph, args.batch_size),
        "exact full-graph": lambda: model(data.x, graph),
    }
    for mode, run in runs.items():
        record: dict[str, Any] = {"num_nodes": n, "num_edges": int(data.edge_index.size(1)),
                                  "mode": mode, "batch_size": args.batch_size,
                                  "num_codewords": args.num_codewords, "setup_seconds": setup,
                                  "init_nodes": args.init_nodes,
                                  "max_batch_edges": max_batch_edges,
                                  "max_degree": max_degree, "power": args.power}
        if mode in done or mode not in args.modes:
            continue
        if mode in skip:
            record["status"] = f"not run: projected above --memory-gb {args.memory_gb:g}"
            append_result(args.out, record)
            continue
        append_result(args.out, {**record, "status": "started"})
        gc.collect()
        try:
            with torch.no_grad(), TensorMemoryMeter() as meter:
                began = time.perf_counter()
                out = run()
                del out
            record.update(status="ok", peak_bytes=meter.peak,
                          seconds=time.perf_counter() - began)
        except (RuntimeError, MemoryError) as err:  # an allocation that does not fit
            record.update(status=f"failed: {str(err).splitlines()[0][:200]}")
        append_result(args.out, record)
        print(json.dumps(record), flush=True)


def outcome(records: list[dict[str, Any]], n: int, mode: str) -> Optional[dict[str, Any]]:
    """The last record of (n, mode): its result, or ``'started'`` for a mode whose process
    ended without one."""
    found = [r for r in records if r["num_nodes"] == n and r["mode"] == mode]
    return found[-1] if found else None


def unfinished(records: list[dict[str, Any]], n: int,
               modes: tuple[str, ...] = MODES) -> list[str]:
    """The ``modes`` of size ``n`` without a result (none, or only ``'started'``)."""
    return [m for m in modes if (o := outcome(records, n, m)) is None
            or o["status"] == "started"]


def table(records: list[dict[str, Any]]) -> str:
    sizes = sorted({r["num_nodes"] for r in records})
    lines = ["| nodes | " + " | ".join(f"{m} (MB)" for m in MODES) + " |",
             "|---:|" + "---:|" * len(MODES)]
    for n in sizes:
        cells = []
        for mode in MODES:
            r = outcome(records, n, mode)
            if r is None:
                cells.append("-")
            elif r["status"] == "ok":
                cells.append(f"{r['peak_bytes'] / 2**20:,.1f}")
            else:
                cells.append(r["status"])
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    powers = sorted({r.get("power", 2.5) for r in records})
    for power in powers:
        for mode in MODES:
            points = sorted((r["num_nodes"], r["peak_bytes"] / 2**20) for r in records
                            if r["mode"] == mode and r["status"] == "ok"
                            and r.get("power", 2.5) == power)
            if points:  # one series per mode and degree exponent
                label = mode if len(powers) == 1 else f"{mode}, degree exponent {power:g}"
                ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes N")
    ax.set_ylabel("peak inference tensor memory (MB)")
    ax.set_title("Inference memory against N (GCN, 3 layers, 64 hidden)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_size(n: int, args: argparse.Namespace) -> None:
    """Measure size ``n`` in a child process, unless every mode has a result. A child
    killed by a signal (SIGKILL: on Linux, the kernel's out-of-memory killer) gets its
    unfinished mode recorded as killed, and the modes after it as not run."""
    records = read(args.out, args.power)
    if not unfinished(records, n, args.modes):
        return
    previous: dict[str, tuple[int, int]] = {}
    for r in records:  # the largest measured size of each mode, for the projection
        if r["status"] == "ok" and r["num_nodes"] < n:
            previous[r["mode"]] = max(previous.get(r["mode"], (0, 0)),
                                      (r["num_nodes"], r["peak_bytes"]))
    skip = [mode for mode, (m, peak) in previous.items()
            if peak * n / m > args.memory_gb * 2**30]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--sizes", str(n),
               "--deg", str(args.deg), "--power", str(args.power),
               "--modes", ",".join(args.modes), "--batch-size", str(args.batch_size),
               "--num-codewords", str(args.num_codewords), "--out", str(args.out),
               "--skip", ",".join(skip),
               *(["--init-nodes", str(args.init_nodes)] if args.init_nodes else [])]
    code = subprocess.run(command).returncode
    if code == 0:
        return
    records = read(args.out, args.power)
    for i, mode in enumerate(unfinished(records, n, args.modes)):
        started = outcome(records, n, mode)
        status = (("killed by signal " + str(-code) + (" (SIGKILL: on Linux, the kernel's "
                   "out-of-memory killer)" if code == -signal.SIGKILL else ""))
                  if code < 0 else f"failed: exit status {code}")
        if i > 0 or started is None:
            status = f"not run: the process ended in an earlier mode ({status})"
        base = started or {"num_nodes": n, "mode": mode, "batch_size": args.batch_size,
                           "num_codewords": args.num_codewords, "init_nodes": args.init_nodes,
                           "power": args.power}  # its series (read() selects by power)
        append_result(args.out, {**base, "status": status})


def modes_list(text: str) -> tuple[str, ...]:
    """``--modes``: comma-separated names from :data:`MODES`."""
    modes = tuple(m.strip() for m in text.split(","))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"expected modes among {', '.join(MODES)}; "
                                         f"received {text!r}")
    return modes


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--deg", type=float, default=10.0)
    parser.add_argument("--power", type=float, default=2.5,
                        help="power-law exponent of the degrees (2.5: hubs that grow with N; "
                             "10: nearly uniform degrees, the largest about N^(1/9) times "
                             "the smallest propensity)")
    parser.add_argument("--modes", type=modes_list, default=MODES,
                        help="comma-separated modes to measure (default: all of "
                             + ", ".join(MODES) + ")")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--init-nodes", type=int, default=None,
                        help="codebook k-means on this many nodes' inputs, with memory "
                             "bounded by the batch (VQGNN.prepare); default: every node's "
                             "exact inputs (about 22 GB of set-up at 10^7 nodes)")
    parser.add_argument("--memory-gb", type=float, default=20.0,
                        help="skip a mode whose projected peak exceeds this")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference_memory.jsonl")
    parser.add_argument("--plot", type=Path, default=RESULTS / "inference_memory.png")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--plot-with", type=Path, default=None,
                        help="another records file whose series the plot also draws "
                             "(e.g. the exact modes of another degree exponent)")
    parser.add_argument("--skip", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one size, in a process of its own (see below)
        n = int(args.sizes)
        done = set(MODES) - set(unfinished(read(args.out, args.power), n))
        measure(n, args, set(args.skip.split(",")) if args.skip else set(), done)
        return
    if not args.table_only:
        for n in sorted(int(s) for s in args.sizes.split(",")):
            run_size(n, args)
    records = [r for r in read(args.out, args.power) if r["status"] != "started"]
    print(table(records))
    if records:
        others = [r for r in (read_records(args.plot_with) if args.plot_with else [])
                  if r["status"] != "started"]  # drawn beside, every exponent
        plot(records + others, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
