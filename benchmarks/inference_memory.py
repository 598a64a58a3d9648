"""Peak inference memory against graph size: VQ inference, exact layer-wise, exact full-graph.

Usage:
    python benchmarks/inference_memory.py --sizes 10000,100000,1000000,10000000 \
        --init-nodes 65536
    python benchmarks/inference_memory.py --table-only

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
One record per (N, mode) in ``--out``; sizes already there are skipped (resumable).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqgnn import VQGNN, VQGraph  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.train.meters import TensorMemoryMeter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("vq", "exact layer-wise", "exact full-graph")


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(n: int, args: argparse.Namespace, skip: set[str]) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    start = time.perf_counter()
    data = load_dataset(f"synthetic:n={n},deg={args.deg:g}", seed=0)
    graph = VQGraph(data.edge_index, n)
    model = VQGNN(data.num_features, 64, 3, data.num_classes, num_nodes=n,
                  num_codewords=args.num_codewords).eval()
    model.prepare(data.x, graph, args.batch_size, init_nodes=args.init_nodes)
    setup = time.perf_counter() - start
    batches = list(torch.randperm(n).split(args.batch_size))

    def vq() -> None:
        for _batch, _out in model.vq_batches(data.x, graph, batches):
            pass

    runs: dict[str, Callable[[], Any]] = {
        "vq": vq,
        "exact layer-wise": lambda: model.inference(data.x, graph, args.batch_size),
        "exact full-graph": lambda: model(data.x, graph),
    }
    records = []
    for mode, run in runs.items():
        record: dict[str, Any] = {"num_nodes": n, "num_edges": int(data.edge_index.size(1)),
                                  "mode": mode, "batch_size": args.batch_size,
                                  "num_codewords": args.num_codewords, "setup_seconds": setup,
                                  "init_nodes": args.init_nodes}
        if mode in skip:
            record["status"] = f"not run: projected above --memory-gb {args.memory_gb:g}"
            records.append(record)
            continue
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
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


def table(records: list[dict[str, Any]]) -> str:
    sizes = sorted({r["num_nodes"] for r in records})
    lines = ["| nodes | " + " | ".join(f"{m} (MB)" for m in MODES) + " |",
             "|---:|" + "---:|" * len(MODES)]
    for n in sizes:
        cells = []
        for mode in MODES:
            r = next((r for r in records if r["num_nodes"] == n and r["mode"] == mode), None)
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
    for mode in MODES:
        points = sorted((r["num_nodes"], r["peak_bytes"] / 2**20) for r in records
                        if r["mode"] == mode and r["status"] == "ok")
        if points:
            ax.plot(*zip(*points), marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes N")
    ax.set_ylabel("peak inference tensor memory (MB)")
    ax.set_title("Inference memory against N (GCN, 3 layers, 64 hidden)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--deg", type=float, default=10.0)
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
    args = parser.parse_args(argv)
    if not args.table_only:
        done = {r["num_nodes"] for r in read(args.out)}
        previous: dict[str, tuple[int, int]] = {}
        for r in read(args.out):
            if r["status"] == "ok":
                previous[r["mode"]] = max(previous.get(r["mode"], (0, 0)),
                                          (r["num_nodes"], r["peak_bytes"]))
        for n in sorted(int(s) for s in args.sizes.split(",")):
            if n in done:
                continue
            skip = {mode for mode, (m, peak) in previous.items()
                    if peak * n / m > args.memory_gb * 2**30}
            for r in measure(n, args, skip):
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
                if r["status"] == "ok":
                    previous[r["mode"]] = (n, r["peak_bytes"])
    records = read(args.out)
    print(table(records))
    if records:
        plot(records, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
