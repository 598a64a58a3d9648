"""Accuracy against the codebook size K and against the number of quantized layers.

The heterophilous benchmark's architecture (``ModelConfig(ffn=True)``: input linear, L
residual blocks ``h + FFN(conv(LayerNorm(h)))``, every convolution quantized with its own
codebook), GCN, 64 hidden, dropout 0.2, lr 0.01, batches of 1,024, on one graph and split:

* against K (``--ks``, at ``--layers-for-k`` blocks), VQ-GNN's test metric and the mean
  message error of its codebooks at the selected epoch (the relative error of quantized
  out-of-batch messages against exact ones on a fixed batch);
* against L (``--layers``, at ``--k-for-layers``), VQ-GNN beside full-graph training of the
  same architecture: how the error of L quantized layers compounds.

One record per run in ``--out`` (a run already there is skipped); prints the tables and
writes a plot.

Usage:
    python benchmarks/codebook_size.py --data-root DIR      # Tolokers split 0
    python benchmarks/codebook_size.py --data-root DIR --ks 64,256 --layers 1,2 --epochs 20
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import grid, report  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.quantize.options import CodebookOptions  # noqa: E402
from vqgnn.train import ModelConfig, TrainConfig, run_experiment  # noqa: E402
from vqgnn.train.records import append_result, read_records  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def model_config(k: int, layers: int, conv: str) -> ModelConfig:
    return ModelConfig(conv=conv, hidden=64, layers=layers, dropout=0.2, norm="layer",
                       act="gelu", ffn=True, codebook=CodebookOptions(num_codewords=k))


def message_error(record: dict[str, Any]) -> Optional[float]:
    """Mean message error of the codebooks at the best epoch's evaluation (or the last
    one that measured it)."""
    measured = [h for h in record["history"] if h.get("message_error") is not None]
    best = [h for h in measured if h["epoch"] <= record.get("best_epoch", 0)]
    chosen = (best or measured)[-1:] if measured else []
    return chosen[0]["message_error"] if chosen else None


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dataset", default="tolokers",
                        help="a suite preset key (its data under --data-root) or a dataset "
                             "name load_dataset knows (e.g. synthetic:n=...)")
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"))
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--conv", default="gcn")
    parser.add_argument("--ks", type=_ints, default=_ints("64,256,1024,4096"))
    parser.add_argument("--layers-for-k", type=int, default=3)
    parser.add_argument("--layers", type=_ints, default=_ints("1,2,3,4"))
    parser.add_argument("--k-for-layers", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=grid.RESULTS / "codebook_size.jsonl")
    parser.add_argument("--plot", type=Path, default=grid.RESULTS / "codebook_size.png")
    args = parser.parse_args(argv)
    preset = grid.PRESETS["suite"].get(args.dataset)
    # A copy of the preset's data folder (processing writes beside raw/): the source stays.
    root = grid.prepare_root(preset, args.data_root, None) if preset else None
    name = preset.name if preset else args.dataset
    data = load_dataset(name, root=root, split=args.split, seed=0)
    done = {(r["method"], r["model_config"]["codebook"]["num_codewords"],
             r["model_config"]["layers"], r["split"]): r
            for r in (read_records(args.out) if args.out.exists() else [])}
    plan = ([("vq", k, args.layers_for_k) for k in args.ks]
            + [(m, args.k_for_layers, layers) for layers in args.layers for m in ("vq", "full")])
    for method, k, layers in dict.fromkeys(plan):
        key = (method, k, layers, args.split)
        if key not in done:
            train = TrainConfig.create(method, epochs=args.epochs, lr=0.01, eval_every=5,
                                       seed=0, **({"batch_size": 1024} if method == "vq" else {}))
            record = run_experiment(data, model_config(k, layers, args.conv), train)
            append_result(args.out, record)
            done[key] = record
        r = done[key]
        print(f"{method} K={k} L={layers}: test {100 * r['test']:.2f}", flush=True)

    def row(method: str, k: int, layers: int) -> dict[str, Any]:
        return done[(method, k, layers, args.split)]

    lines = [f"{name} split {args.split}, {args.conv}, {args.layers_for_k} blocks, every "
             f"conv quantized; test {data.metric} by exact inference", "",
             "| K | VQ test | message error |", "|---:|---:|---:|"]
    for k in args.ks:
        r = row("vq", k, args.layers_for_k)
        error = message_error(r)
        lines.append(f"| {k} | {100 * r['test']:.2f} | "
                     f"{'-' if error is None else f'{error:.3f}'} |")
    lines += ["", f"K = {args.k_for_layers}:", "",
              "| quantized layers | VQ test | full test | VQ − full | message error |",
              "|---:|---:|---:|---:|---:|"]
    for layers in args.layers:
        vq, full = row("vq", args.k_for_layers, layers), row("full", args.k_for_layers, layers)
        error = message_error(vq)
        lines.append(f"| {layers} | {100 * vq['test']:.2f} | {100 * full['test']:.2f} | "
                     f"{100 * (vq['test'] - full['test']):+.2f} | "
                     f"{'-' if error is None else f'{error:.3f}'} |")
    print("\n".join(lines))
    plt = report.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(args.ks, [100 * row("vq", k, args.layers_for_k)["test"] for k in args.ks],
              marker="o")
    left.set_xscale("log", base=2)
    left.set_xlabel("codewords K per layer")
    left.set_ylabel(f"test {data.metric}")
    left.set_title(f"{name.split(',')[0]}: VQ-GNN against K ({args.layers_for_k} blocks)")
    for method in ("vq", "full"):
        right.plot(args.layers, [100 * row(method, args.k_for_layers, layers)["test"]
                                 for layers in args.layers], marker="o", label=method)
    right.set_xlabel("quantized layers (residual blocks)")
    right.set_title(f"against depth (K = {args.k_for_layers})")
    right.legend()
    print(f"plot: {report.save_figure(fig, args.plot)}")


if __name__ == "__main__":
    main()
