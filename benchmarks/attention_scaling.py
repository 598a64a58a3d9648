"""Time and memory of one training epoch of a global attention layer against N: VQ vs exact.

One :class:`~vqgnn.nn.GlobalAttention` layer (random inputs of ``--channels`` channels, a
random linear read-out per node as the loss, Adam) is trained for one epoch over N nodes:

* ``exact``: one full-graph step, attention of every node over all N (O(N^2) time);
* ``vq``: N / b mini-batch steps of b nodes, each attending to the batch and the K
  codewords (O(b (b + K)) per step), with the backward term and the codebook update.

For each, the epoch's wall time (after one untimed warm-up step) and the largest memory a
step keeps for backward (bytes of the tensors autograd saves, plus the step's inputs:
:class:`~vqgnn.train.meters.SavedTensorMeter`) are recorded, one JSON line per (N, mode)
in ``--out``; sizes already there are skipped, so an interrupted run continues. Exact
attention is not run at sizes whose projected epoch (the last measured one times the
square of the size ratio) exceeds ``--exact-limit`` seconds: that row says so, with the
projection, and holds no measurement.

Usage:
    python benchmarks/attention_scaling.py                     # 10^3 .. 10^6 nodes
    python benchmarks/attention_scaling.py --sizes 1000,10000 --out /tmp/a.jsonl
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from vqgnn import VQGraph  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.nn import GlobalAttention  # noqa: E402
from vqgnn.train.meters import SavedTensorMeter  # noqa: E402
from vqgnn.train.records import append_result, read_records  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("exact", "vq")


def _graph(n: int) -> VQGraph:
    """A ring: attention ignores edges, the layer's batch checks need a VQGraph."""
    src = torch.arange(n)
    return VQGraph(torch.stack([src, (src + 1) % n]), n)


def epoch(mode: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measured epoch of ``mode`` on ``n`` nodes."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.randn(n, args.channels, device=device)
    readout = torch.randn(n, args.channels, device=device) / args.channels
    layer = GlobalAttention(args.channels, args.channels, args.heads, num_nodes=n,
                            num_codewords=args.num_codewords).to(device)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    graph = _graph(n).to(device)
    if mode == "vq":
        layer.init_codebook(x, seed=0)
        batches = torch.randperm(n, device=device).split(args.batch_size)
    else:
        batches = (None,)

    def step(batch: Optional[torch.Tensor]) -> int:
        optimizer.zero_grad()
        with SavedTensorMeter() as meter:
            if batch is None:
                xb = x.requires_grad_(False)
                meter.add(xb)
                loss = (layer(xb) * readout).sum() / n
            else:
                xb = x[batch]
                meter.add(xb)
                loss = (layer(xb, graph, batch) * readout[batch]).sum() / n
        loss.backward()
        optimizer.step()
        layer.update_codebook()
        return meter.bytes

    step(batches[0])  # warm-up, untimed
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    saved = max(step(batch) for batch in batches)
    sync()
    seconds = time.perf_counter() - start
    return {"n": n, "mode": mode, "status": "ok", "epoch_seconds": seconds,
            "steps": len(batches), "saved_bytes": saved, "batch_size": args.batch_size,
            "num_codewords": args.num_codewords, "channels": args.channels,
            "heads": args.heads, "threads": torch.get_num_threads(), "device": str(device)}


def table(records: list[dict[str, Any]]) -> list[str]:
    lines = ["| nodes | VQ epoch (s) | VQ steps | VQ step memory (MB) | exact epoch (s) | "
             "exact step memory (MB) | exact / VQ time |", "|---|---|---|---|---|---|---|"]
    by = {(r["n"], r["mode"]): r for r in records}
    for n in sorted({r["n"] for r in records}):
        vq, exact = by.get((n, "vq")), by.get((n, "exact"))

        def cell(r: Optional[dict[str, Any]], field: str, scale: float = 1.0) -> str:
            if r is None:
                return "-"
            if r["status"] != "ok":
                return r["status"]
            return f"{r[field] / scale:.3g}"

        ratio = (f"{exact['epoch_seconds'] / vq['epoch_seconds']:.2f}x"
                 if vq and exact and vq["status"] == exact["status"] == "ok" else "-")
        lines.append(f"| {n:,} | {cell(vq, 'epoch_seconds')} | {cell(vq, 'steps')} | "
                     f"{cell(vq, 'saved_bytes', 2**20)} | {cell(exact, 'epoch_seconds')} | "
                     f"{cell(exact, 'saved_bytes', 2**20)} | {ratio} |")
    skipped = [r for r in records if r["status"] != "ok"]
    for r in skipped:
        lines.append(f"\n{r['mode']} at {r['n']:,} nodes not run: {r['reason']}")
    return lines


def plot(records: list[dict[str, Any]], path: Path) -> Optional[Path]:
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None
    fig, axes = report.pyplot().subplots(1, 2, figsize=(11, 4))
    for field, ax, label, scale in (("epoch_seconds", axes[0], "epoch time (s)", 1.0),
                                    ("saved_bytes", axes[1], "memory a step keeps (MB)",
                                     2.0**20)):
        for mode in MODES:
            pts = sorted((r["n"], r[field] / scale) for r in ok if r["mode"] == mode)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=f"{mode} global attention")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return report.save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--sizes", default="1000,3000,10000,30000,100000,300000,1000000")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--exact-limit", type=float, default=300.0,
                        help="skip exact epochs projected to take longer (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "attention_scaling.jsonl")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    records = read_records(args.out) if args.out.exists() else []
    if not args.table_only:
        print(f"torch threads {torch.get_num_threads()}, channels {args.channels}, heads "
              f"{args.heads}, batch {args.batch_size}, K {args.num_codewords}", flush=True)
        done = {(r["n"], r["mode"]) for r in records}
        for mode in MODES:
            for n in sizes:
                if (n, mode) in done:
                    continue
                last = max((r for r in records if r["mode"] == mode and r["status"] == "ok"
                            and r["n"] < n), key=lambda r: r["n"], default=None)
                projected = (None if last is None or mode != "exact"
                             else last["epoch_seconds"] * (n / last["n"]) ** 2)
                if last is not None and projected is not None and projected > args.exact_limit:
                    record: dict[str, Any] = {
                        "n": n, "mode": mode, "status": "skipped",
                        "reason": f"projected epoch {projected:,.0f} s (the {last['n']:,}-node "
                                  f"epoch x (N ratio)^2) exceeds --exact-limit "
                                  f"{args.exact_limit:g} s"}
                else:
                    record = epoch(mode, n, args)
                append_result(args.out, record)
                records.append(record)
                print(f"{mode} {n:,}: {record.get('epoch_seconds', record['status'])}",
                      flush=True)
    print("\n".join(table(records)))
    path = plot(records, args.out.with_suffix(".png"))
    if path is not None:
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
