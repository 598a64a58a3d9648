"""Where VQ mini-batch inference loses accuracy: one trained model, evaluated several ways.

A VQ-GNN is trained (``vqgnn.train``, the given options; the selected weights restored),
then its test metric is measured by exact layer-wise inference and by VQ inference under
variants that each remove one suspected cause:

* ``vq``: VQ inference as the trainer runs it (batches of contiguous node ids of the
  training batch size; codewords and assignments as training left them);
* ``vq random batches``: the same with random batches (is it the batch composition?);
* ``vq metis batches``: batches of METIS parts (most neighbours inside the batch);
* ``vq 4x batch``: batches four times larger;
* ``vq fresh assignments``: every node re-assigned to its nearest codeword (feature half)
  by its exact eval-mode layer input (are assignments stale, or from dropout-noised
  training activations?);
* ``vq fresh codewords``: also each codeword's feature half set to the mean of the exact
  eval-mode inputs assigned to it (are the codewords tuned to training-mode activations?).

These two read exact layer inputs of all nodes (O(N) memory): they locate the cause, they
are not the fix. The candidate fixes, whose memory is bounded by the batch and K
(:meth:`~vqgnn.nn.VQGNN.vq_inference`):

* ``vq refreshed``: one VQ pass over the batches re-assigns every node by its eval-mode
  input at each layer (and re-fits the codewords' feature halves to those inputs for the
  next pass), then a second pass predicts; ``vq refreshed x2``: two such passes;
* ``vq metis refreshed``: the same over METIS batches; ``vq metis 4x refreshed``: over
  METIS batches 4x larger (the memory/accuracy trade-off);
* ``vq (trainer)``: the library's VQ inference as the trainer runs it (METIS batches of
  ``--inference-batch-size``, default the training batch size; ``--inference-refresh``,
  default ``auto``: without and with one refresh pass, the better on validation), with its
  peak tensor memory (:class:`~vqgnn.train.meters.TensorMemoryMeter`) beside exact
  inference's.

With ``--sweep-batch-sizes``, each trained model is also evaluated by the trainer's VQ
inference at those batch sizes (``VQMethod.set_inference``), with the fraction of edges
inside a batch and the peak memory: the batch's accuracy/memory trade-off.

Seeds/splits given by ``--runs``; one JSON record per run in ``--out``. A run whose record
is already in ``--out`` (same options) is skipped, so an interrupted command resumes.

Usage:
    python benchmarks/vq_inference.py --dataset synthetic:n=100000,deg=20,signal=0.3 \\
        --epochs 50 --batch-size 2048 --num-codewords 512
    python benchmarks/vq_inference.py --dataset Tolokers --root data/heterophilous \\
        --epochs 100 --batch-size 1024 --num-codewords 1024 --runs 3
"""
from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import grid  # noqa: E402
from benchmarks.batch_edges import batch_labels, edges_inside  # noqa: E402
from vqgnn import VQGNN, VQGraph  # noqa: E402
from vqgnn.batching.samplers import metis_partition, part_batches  # noqa: E402
from vqgnn.cli import (
    refresh_passes,  # noqa: E402
    script_parser,  # noqa: E402
)
from vqgnn.datasets import load_dataset, score  # noqa: E402
from vqgnn.quantize.functional import nearest_codeword  # noqa: E402
from vqgnn.quantize.options import CodebookOptions  # noqa: E402
from vqgnn.train import ModelConfig, TrainConfig, Trainer, seed_everything  # noqa: E402
from vqgnn.train.meters import TensorMemoryMeter  # noqa: E402
from vqgnn.train.records import append_result, read_records  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def vq_predict(model: VQGNN, x: Tensor, graph: VQGraph, batches: list[Tensor]) -> Tensor:
    """(N, C) outputs by VQ inference over ``batches`` (a partition of the nodes)."""
    model.eval()
    out = torch.empty(graph.num_nodes, model.out_channels)
    for batch in batches:
        out[batch] = model(x[batch], graph, batch)
    return out


@torch.no_grad()
def refresh(model: VQGNN, x: Tensor, graph: VQGraph, codewords: bool, chunk: int) -> None:
    """Re-assign every node by its exact eval-mode input at each quantized layer (the
    feature half), and with ``codewords`` set each codeword's feature half to the mean of
    the inputs assigned to it."""
    model.eval()

    def layer_inputs(i: int, conv_in: Tensor) -> None:
        for layer in (model.layers[i], model.attention(i)):
            if layer is None or not layer.initialized:
                continue
            q = layer.quantizer
            assert q is not None
            dim = q.feature_dim
            z = q.x_norm(conv_in)  # standardised, as the codebook stores them
            codes = nearest_codeword(z, q.codebook.embed[:, :dim], chunk)
            q.assignment.copy_(codes.to(q.assignment.dtype))
            if codewords:
                sums = torch.zeros(q.num_codewords, dim).index_add_(0, codes, z)
                counts = torch.bincount(codes, minlength=q.num_codewords).unsqueeze(1)
                used = counts.squeeze(1) > 0
                q.codebook.embed[used, :dim] = sums[used] / counts[used]

    model._layerwise(x, graph, chunk, False, before_layer=layer_inputs)


#: The record fields that identify a run: a record with the same values is not measured
#: again.
RUN_KEY = ("arg_dataset", "arg_root", "split", "seed", "conv", "epochs", "batch_size",
           "num_codewords", "dropout", "inference_batch_size", "inference_refresh", "quick",
           "sweep_batch_sizes")


def run_fields(args: argparse.Namespace, split: int, seed: int) -> dict[str, Any]:
    """The :data:`RUN_KEY` fields of the run ``(split, seed)`` of ``args`` (its record
    holds them)."""
    return {"arg_dataset": args.dataset, "arg_root": args.root is not None, "split": split,
            "seed": seed, "conv": args.conv, "epochs": args.epochs,
            "batch_size": args.batch_size, "num_codewords": args.num_codewords,
            "dropout": args.dropout, "inference_batch_size": args.inference_batch_size,
            "inference_refresh": args.inference_refresh, "quick": args.quick,
            # absent from records before the sweep existed: None, as without one
            "sweep_batch_sizes": args.sweep_batch_sizes or None}


def run_key(fields: dict[str, Any]) -> tuple[str, ...]:
    """A run's identity from its record (or :func:`run_fields`)."""
    return tuple(str(fields.get(k)) for k in RUN_KEY)


def measure(args: argparse.Namespace, run: int) -> dict[str, Any]:
    split, seed = (run, 0) if args.vary == "split" else (0, run)
    # A copy of the data folder (processing writes beside raw/): the source stays.
    root = grid.copy_root(Path(args.root)) if args.root else None
    data = load_dataset(args.dataset, root=root, split=split, seed=seed)
    model_cfg = ModelConfig(conv=args.conv, hidden=args.hidden, layers=args.layers,
                            dropout=args.dropout,
                            codebook=CodebookOptions(num_codewords=args.num_codewords))
    seed_everything(seed)
    model = model_cfg.build(data)
    trainer = Trainer(model, data, TrainConfig.create(
        "vq", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
        eval_every=args.eval_every, inference_batch_size=args.inference_batch_size,
        inference_refresh=args.inference_refresh))
    trainer.fit()
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    x, graph = trainer.ctx.x, trainer.graph
    n = data.num_nodes
    test = data.test_mask

    def metric(out: Tensor) -> float:
        return 100 * score(data, out, test)

    nodes = torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    def metis_batches_of(size: int) -> list[Tensor]:
        return part_batches(metis_partition(data.edge_index, n, max(1, n // size), seed=seed))

    metis_batches = [] if args.quick else metis_batches_of(args.batch_size)
    metis_4x = functools.cache(lambda: metis_batches_of(4 * args.batch_size))
    variants: dict[str, Callable[[VQGNN], Tensor]] = {
        "vq": lambda m: vq_predict(m, x, graph, list(nodes.split(args.batch_size))),
        "vq random batches": lambda m: vq_predict(
            m, x, graph, list(torch.randperm(n, generator=generator).split(args.batch_size))),
        "vq metis batches": lambda m: vq_predict(m, x, graph, metis_batches),
        "vq 4x batch": lambda m: vq_predict(m, x, graph, list(nodes.split(4 * args.batch_size))),
        # Candidate fixes with bounded memory (VQGNN.vq_inference): assignments refreshed
        # from eval-mode inputs by VQ passes over the same batches.
        "vq refreshed": lambda m: m.vq_inference(x, graph, list(nodes.split(args.batch_size))),
        "vq refreshed x2": lambda m: m.vq_inference(x, graph, list(nodes.split(args.batch_size)),
                                                    refresh=2),
        "vq metis refreshed": lambda m: m.vq_inference(x, graph, metis_batches),
        # The batch-size trade-off: METIS batches 4x larger (fewer messages through codewords,
        # 4x the inference memory, still independent of N).
        "vq metis 4x refreshed": lambda m: m.vq_inference(x, graph, metis_4x()),
    }
    record: dict[str, Any] = {"dataset": data.name if hasattr(data, "name") else args.dataset,
                              "num_nodes": n, "metric": data.metric,
                              **run_fields(args, split, seed),
                              "exact": metric(model.inference(x, graph, args.batch_size))}
    trained = copy.deepcopy(model.state_dict())  # refreshing variants change assignments
    if args.quick:  # only the VQ inference as trained and as the trainer runs it (and the
        # 4x METIS batches, unless the trainer's inference batches are set already)
        variants = {"vq": variants["vq"], **({} if args.inference_batch_size else {
            "vq metis 4x refreshed": variants["vq metis 4x refreshed"]})}
    for name, predict in variants.items():
        model.load_state_dict(trained)
        record[name] = metric(predict(model))
    model.load_state_dict(trained)
    # The library's VQ inference as the trainer runs it (METIS batches of
    # --inference-batch-size, --inference-refresh), with its peak tensor memory (of the
    # inference: the METIS partition is made before, as a deployment would keep it).
    trainer.method.inference_batches()  # type: ignore[attr-defined]
    with TensorMemoryMeter() as meter:
        record["vq (trainer)"] = metric(trainer.predict("vq"))
    record["vq (trainer) peak MB"] = meter.peak / 2**20
    record["vq (trainer) batches"] = trainer.method.inference_summary()
    # The same trained model by the trainer's VQ inference at other batch sizes: the
    # accuracy/memory trade-off of the batch (fewer messages through the codebooks).
    sweep: dict[str, dict[str, Any]] = {}
    for size in args.sweep_batch_sizes or ():
        model.load_state_dict(trained)
        trainer.method.set_inference(inference_batch_size=size)  # type: ignore[attr-defined]
        trainer.method.inference_batches()  # type: ignore[attr-defined]
        with TensorMemoryMeter() as meter:
            value = metric(trainer.predict("vq"))
        batches = trainer.method.inference_summary()
        sweep[str(size)] = {"test": value, "peak MB": meter.peak / 2**20, "batches": batches,
                            "edges inside": edges_inside(data.edge_index, batch_labels(
                                trainer.method.inference_batches(), n))}  # type: ignore[attr-defined]
        print(f"sweep {size}: {value:.2f} (exact {record['exact']:.2f}), "
              f"{meter.peak / 2**20:.1f} MB", flush=True)
    if sweep:
        record["vq sweep"] = sweep
    with TensorMemoryMeter() as meter:
        model.eval()
        model.inference(x, graph, args.batch_size)
    record["exact peak MB"] = meter.peak / 2**20
    model.load_state_dict(trained)
    for name, codewords in (() if args.quick else (("vq fresh assignments", False),
                                                    ("vq fresh codewords", True))):
        fresh = copy.deepcopy(model, {id(graph): graph, id(x): x})  # the same graph
        refresh(fresh, x, graph, codewords, args.batch_size)
        record[name] = metric(vq_predict(fresh, x, graph, list(nodes.split(args.batch_size))))
    return record


VARIANTS = ("vq", "vq random batches", "vq metis batches", "vq 4x batch",
            "vq fresh assignments", "vq fresh codewords", "vq refreshed", "vq refreshed x2",
            "vq metis refreshed", "vq metis 4x refreshed", "vq (trainer)")


def table(records: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant | test metric (mean over runs) | minus exact |", "|---|---|---|"]
    exact = statistics.mean(r["exact"] for r in records)
    lines.append(f"| exact | {exact:.2f} | - |")
    for name in VARIANTS:
        if any(name not in r for r in records):
            continue  # a record from before the variant existed
        value = statistics.mean(r[name] for r in records)
        lines.append(f"| {name} | {value:.2f} | {value - exact:+.2f} |")
    return lines


def summary(records: list[dict[str, Any]], refresh: Optional[str] = None) -> list[str]:
    """One row per (dataset, conv, ``inference_refresh``, dropout, K, epochs, inference
    batch size, sweep; only the ``inference_refresh`` setting ``refresh`` if given): the
    library's VQ inference against exact inference. "refresh (used)": the setting and, per
    run, the passes it used ('auto' chooses 0 or 1 by the validation metric)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        if "vq (trainer)" in r and (refresh is None
                                    or str(r.get("inference_refresh", 1)) == refresh):
            groups.setdefault((str(r["dataset"]).split(",seed")[0], r["conv"],
                               r.get("inference_refresh", 1), r["dropout"],
                               r["num_codewords"], r["epochs"],
                               r.get("inference_batch_size"),
                               str(r.get("sweep_batch_sizes"))), []).append(r)
    lines = ["| dataset | nodes | conv | dropout | K | epochs | runs | VQ batches (size, number) "
             "| refresh (used) | "
             "exact | VQ inference (trainer) | minus exact | within 1 pt | VQ as trained "
             "(contiguous, stale) | peak MB: VQ / exact layer-wise | METIS 4x batches + "
             "refresh |",
             "|---|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|---|---:|---|---:|"]
    for (name, conv, setting, dropout, k, epochs, _, _), rs in groups.items():
        exact = statistics.mean(r["exact"] for r in rs)
        vq = statistics.mean(r["vq (trainer)"] for r in rs)
        old = statistics.mean(r["vq"] for r in rs)
        b = rs[0]["vq (trainer) batches"]
        four = (f"{statistics.mean(r['vq metis 4x refreshed'] for r in rs) - exact:+.2f}"
                if all("vq metis 4x refreshed" in r for r in rs) else "-")
        peaks = (f"{statistics.mean(r['vq (trainer) peak MB'] for r in rs):.1f} / "
                 f"{statistics.mean(r['exact peak MB'] for r in rs):.1f}")
        used = "".join(str(r["vq (trainer) batches"].get("refresh_used", setting)) for r in rs)
        lines.append(f"| {name} | {rs[0].get('num_nodes', '-')} | {conv} | {dropout:g} | {k} | "
                     f"{epochs} | {len(rs)} | "
                     f"{b['batch_size']}, {b['num_batches']} | {setting} ({used}) | "
                     f"{exact:.2f} | {vq:.2f} | "
                     f"{vq - exact:+.2f} | {'yes' if abs(vq - exact) <= 1 else 'NO'} | "
                     f"{old:.2f} | {peaks} | {four} |")
    return lines


def positive_ints(text: str) -> list[int]:
    """``--sweep-batch-sizes``: comma-separated ints >= 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 1, received "
                                         f"{text!r}")
    return values


def sweep_summary(records: list[dict[str, Any]]) -> list[str]:
    """One row per (dataset, conv, K, epochs, swept batch size) of the records with a
    ``--sweep-batch-sizes`` sweep: VQ inference of the same trained models at that batch
    size against exact inference, with the edges inside a batch and the peak memory."""
    groups: dict[tuple[Any, ...], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for r in records:
        for size, point in r.get("vq sweep", {}).items():
            groups.setdefault((str(r["dataset"]).split(",seed")[0], r["conv"],
                               r["num_codewords"], r["epochs"], int(size)), []).append(
                (r, point))
    if not groups:
        return []
    lines = ["| dataset | conv | K | epochs | runs | VQ batches (size, number) | edges inside "
             "a batch | refresh used per run | exact | VQ inference | minus exact | "
             "within 1 pt | peak MB: VQ / exact layer-wise |",
             "|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---|---|"]
    for (name, conv, k, epochs, size), pairs in sorted(groups.items()):
        exact = statistics.mean(r["exact"] for r, _ in pairs)
        vq = statistics.mean(p["test"] for _, p in pairs)
        inside = statistics.mean(p["edges inside"] for _, p in pairs)
        used = ", ".join(str(p["batches"]["refresh_used"]) for _, p in pairs)
        peaks = (f"{statistics.mean(p['peak MB'] for _, p in pairs):.1f} / "
                 f"{statistics.mean(r['exact peak MB'] for r, _ in pairs):.1f}")
        lines.append(f"| {name} | {conv} | {k} | {epochs} | {len(pairs)} | {size}, "
                     f"{pairs[0][1]['batches']['num_batches']} | {100 * inside:.1f}% | {used} | "
                     f"{exact:.2f} | {vq:.2f} | {vq - exact:+.2f} | "
                     f"{'yes' if abs(vq - exact) <= 1 else 'NO'} | {peaks} |")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dataset", default="synthetic:n=100000,deg=20,signal=0.3")
    parser.add_argument("--root", default=None)
    parser.add_argument("--vary", choices=["seed", "split"], default="seed")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--conv", default="gcn")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=ModelConfig().dropout)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--num-codewords", type=int, default=512)
    parser.add_argument("--inference-batch-size", type=int, default=None,
                        help="nodes per VQ inference batch of the trainer (default: "
                             "--batch-size)")
    parser.add_argument("--inference-refresh", type=refresh_passes, default="auto",
                        help="the trainer's VQ inference refresh: passes or 'auto'")
    parser.add_argument("--sweep-batch-sizes", type=positive_ints, default=None,
                        help="also run the trainer's VQ inference of each trained model at "
                             "these batch sizes (comma-separated), with its peak memory")
    parser.add_argument("--out", type=Path, default=RESULTS / "vq_inference.jsonl")
    parser.add_argument("--quick", action="store_true",
                        help="skip the diagnostic variants (for large graphs)")
    parser.add_argument("--summary", action="store_true",
                        help="print the summary table of every record in --out and stop "
                             "(with --summary-refresh, only that setting's rows)")
    parser.add_argument("--summary-refresh", default=None)
    args = parser.parse_args(argv)
    done = read_records(args.out) if args.out.exists() else []
    if args.summary:
        print("\n".join(summary(done, args.summary_refresh)))
        sweep = sweep_summary(done)
        if sweep:
            print("\nVQ inference of the same models at other batch sizes "
                  "(--sweep-batch-sizes):\n" + "\n".join(sweep))
        return
    records = []
    for run in range(args.runs):
        split, seed = (run, 0) if args.vary == "split" else (0, run)
        if run_key(run_fields(args, split, seed)) in {run_key(r) for r in done}:  # resumable
            print(f"run {run}: done before, skipped", flush=True)
            continue
        record = measure(args, run)
        append_result(args.out, record)
        records.append(record)
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in record.items()), flush=True)
    if records:
        print("\n".join(table(records)))


if __name__ == "__main__":
    main()
