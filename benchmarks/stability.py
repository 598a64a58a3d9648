"""How stable VQ-GNN's validation curve is, and what moves it: one dataset of the suite
(its preset's model and training options), VQ-GNN under codebook and optimiser variants
beside full-graph training, a few seeds each.

For every run, from its per-epoch validation metric:

* ``max drop``: the largest fall below the running best after epoch ``--after``;
* ``last-20 gap``: the best minus the mean of the last 20 evaluations, and its two parts
  (:func:`~benchmarks.report.gap_parts`): the best minus the mean of the evaluations after
  epoch ``--after`` (the noise the max picks) plus that mean minus the last 20's (how far
  the curve sinks), beside the evaluations' spread before the last 20;

all in points, averaged over the seeds. The variants ``pyg-reference`` and
``pyg-reference-cosine`` train PyG's own convolutions in the textbook full-batch loop
(:func:`reference_run`, no vqgnn code in the step): the bound's noise floor. Records go
to ``--out`` (JSON lines; a run already there is skipped), the table is printed.

Usage:
    python benchmarks/stability.py --data-root DIR                      # Cora, 3 seeds
    python benchmarks/stability.py --data-root DIR --dataset citeseer --variants default,no-restarts
    python benchmarks/stability.py --data-root DIR --conv gin --out gin_stability.jsonl
"""
from __future__ import annotations

import os
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402
from torch_geometric.data import Data  # noqa: E402

from benchmarks import grid  # noqa: E402
from benchmarks.report import curve_figures, gap_parts  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.datasets.metrics import score  # noqa: E402
from vqgnn.errors import ConfigError  # noqa: E402
from vqgnn.nn.models import BACKBONES, backbone_factory, resolve_act  # noqa: E402
from vqgnn.train import ModelConfig, TrainConfig, run_experiment  # noqa: E402
from vqgnn.train.records import append_result, read_records, strict_json  # noqa: E402
from vqgnn.train.trainer import seed_everything  # noqa: E402

#: The method of the reference variants: :func:`reference_run`, not a vqgnn method.
REFERENCE = "pyg-reference"

#: name -> (method, codebook changes, training changes, model changes)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "full": ("full", {}, {}, {}),
    "default": ("vq", {}, {}, {}),
    "no-restarts": ("vq", {"dead_threshold": 0.0}, {}, {}),
    "decay-0.9": ("vq", {"decay": 0.9}, {}, {}),
    "decay-0.999": ("vq", {"decay": 0.999}, {}, {}),
    "lr-0.005": ("vq", {}, {"lr": 0.005}, {}),
    "K-1024": ("vq", {"num_codewords": 1024}, {}, {}),
    "batch-1024": ("vq", {}, {"batch_size": 1024}, {}),
    "no-backward": ("vq", {}, {}, {"backward_approx": False}),
    "batch-train": ("vq", {}, {"batch_nodes": "train"}, {}),
    "cluster": ("cluster", {}, {}, {}),
    "loss-aware": ("vq", {}, {"loss_aware_backward": True}, {}),
    # The optimiser's side: the lr divided by the steps per epoch (an epoch moves the
    # weights as far as full-graph training's one step), a cosine decay, clipping.
    "lr-per-epoch": ("vq", {}, {"lr_per_epoch": True}, {}),
    "cosine": ("vq", {}, {"lr_schedule": "cosine"}, {}),
    "clip-1": ("vq", {}, {"grad_clip": 1.0}, {}),
    # Is it the lr alone? lr-per-epoch's per-step lr as a constant, and full-graph
    # training at the lr times the steps per epoch of Cora's batches (6).
    "lr-0.002": ("vq", {}, {"lr": 0.002}, {}),
    "full-lr-0.06": ("full", {}, {"lr": 0.06}, {}),
    "cluster-lr-per-epoch": ("cluster", {}, {"lr_per_epoch": True}, {}),
    # What still moves the curve at lr / S (CiteSeer's last-20 gap): the late steps' size
    # (a cosine decay to 0) and the backward term.
    "lr-per-epoch-cosine": ("vq", {}, {"lr_per_epoch": True, "lr_schedule": "cosine"}, {}),
    "lr-per-epoch-no-backward": ("vq", {}, {"lr_per_epoch": True}, {"backward_approx": False}),
    # The backward term under the suite's options (sum aggregation: benchmarks with --conv gin).
    "lr-per-epoch-cosine-no-backward": ("vq", {}, {"lr_per_epoch": True, "lr_schedule": "cosine"},
                                        {"backward_approx": False}),
    "lr-per-epoch-cosine-loss-aware": ("vq", {}, {"lr_per_epoch": True, "lr_schedule": "cosine",
                                                  "loss_aware_backward": True}, {}),
    # Full-graph training with the suite's cosine decay (lr / S is lr for it: S = 1).
    "full-cosine": ("full", {}, {"lr_schedule": "cosine"}, {}),
    # The bound's noise floor: PyG's own convolutions in the textbook full-batch loop, no
    # vqgnn code in the step (:func:`reference_run`), at a constant lr and with the decay.
    "pyg-reference": (REFERENCE, {}, {}, {}),
    "pyg-reference-cosine": (REFERENCE, {}, {"lr_schedule": "cosine"}, {}),
}


def reference_run(data: Data, model: ModelConfig, config: TrainConfig) -> dict[str, Any]:
    """Full-graph training of PyG's own convolutions in the textbook loop, with no vqgnn
    code in the step: ``model.layers`` convolutions of the backbone
    (:func:`~vqgnn.nn.models.backbone_factory`) with ``model.hidden`` channels and, between
    them, ``model.act`` and dropout ``model.dropout``; Adam (``config.lr``,
    ``config.weight_decay``, ``config``'s schedule), one step per epoch on the training
    nodes' cross-entropy, evaluated every epoch; the test metric at the best validation
    epoch (the first of equals), on ``config.device``. Its curve is what a plain PyG user
    sees, so its last-20 gap is the noise floor of the stability bound. The plain stack
    only: a model with normalisation, the residual layout, FFN blocks or global attention
    is refused, and so are early stopping and gradient clipping. Returns a record with the
    fields that :func:`main` reads (``history``, ``test``) and the run's options."""
    if model.layers < 1:
        raise ConfigError(f"'reference_run': 'model.layers' must be >= 1, received "
                          f"{model.layers!r}")
    for key, plain in (("norm", "none"), ("residual", False), ("ffn", False),
                       ("global_attention", False)):
        if getattr(model, key) != plain:
            raise ConfigError(f"'reference_run' trains the plain stack: 'model.{key}' must "
                              f"be {plain!r}, received {getattr(model, key)!r}")
    for key in ("patience", "grad_clip"):
        if getattr(config, key) is not None:
            raise ConfigError(f"'reference_run' takes no '{key}', received "
                              f"{getattr(config, key)!r}")
    seed_everything(config.seed)
    data = data.to(config.device)
    factory = backbone_factory(model.conv)
    sizes = [data.num_features] + [model.hidden] * (model.layers - 1) + [data.num_classes]
    convs = torch.nn.ModuleList(factory(a, b, i) for i, (a, b) in
                                enumerate(zip(sizes[:-1], sizes[1:]))).to(config.device)
    act = resolve_act(model.act, "reference_run")
    optimizer = torch.optim.Adam(convs.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)

    def forward(training: bool) -> Tensor:
        convs.train(training)
        h = data.x
        for i, conv in enumerate(convs):
            h = conv(h, data.edge_index)
            if i < len(convs) - 1:
                h = F.dropout(act(h), model.dropout, training)
        return h

    history: list[dict[str, Any]] = []
    best = (-float("inf"), 0.0, 0)  # validation, test, epoch
    for epoch in range(1, config.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(epoch)
        optimizer.zero_grad()
        out = forward(True)
        loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            out = forward(False)
        val, test = score(data, out, data.val_mask), score(data, out, data.test_mask)
        history.append({"epoch": epoch, "loss": float(loss.detach()), "val": val, "test": test})
        if val > best[0]:
            best = (val, test, epoch)
    return {"dataset": str(data.name), "split": int(data.split), "seed": config.seed,
            "conv": model.conv, "method": REFERENCE, "metric": str(data.metric),
            "best_val": best[0], "test": best[1], "best_epoch": best[2],
            "epochs_run": config.epochs, "history": history,
            "model_config": asdict(model),
            "train_config": {k: getattr(config, k) for k in
                             ("epochs", "lr", "weight_decay", "lr_schedule", "warmup_epochs",
                              "seed")}}


def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    """A record's run: variant, dataset, seed and backbone (records written before
    ``--conv`` hold no backbone: they are GCN's)."""
    return record["variant"], record["dataset"], record["seed"], record.get("conv", "gcn")


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dataset", default="cora", choices=sorted(grid.PRESETS["suite"]))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--conv", default="gcn", choices=BACKBONES,
                        help="backbone convolution of every variant")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--after", type=int, default=20)
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"))
    parser.add_argument("--out", default=str(grid.RESULTS / "stability.jsonl"))
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {list(VARIANTS)}")
    preset = grid.PRESETS["suite"][args.dataset]
    root = grid.prepare_root(preset, args.data_root, None)
    out = Path(args.out)
    recorded = {_key(r): r for r in read_records(out)}
    rows: dict[str, list[tuple[float, ...]]] = {}
    for name in names:
        method, codebook, training, changes = VARIANTS[name]
        model = replace(preset.model, conv=args.conv,
                        codebook=replace(preset.model.codebook, **codebook),
                        **changes)
        for index in range(args.seeds):
            # the reference takes full-graph training's options (lr, weight decay, epochs)
            run = grid.Run(preset, "full" if method == REFERENCE else method, args.conv, index)
            seed, split = run.train.seed, run.split
            data = load_dataset(preset.name, root=root, split=split, seed=seed)
            key = (name, str(data.name), seed + 100 * split, args.conv)
            if key not in recorded:
                # The variants are changes to the suite's options with a constant lr per
                # step (the suite's Cora and CiteSeer take --lr-per-epoch and a cosine
                # decay since these measurements).
                config: TrainConfig = run.train.replace(
                    **{"lr_per_epoch": False, "lr_schedule": "constant", **training})
                run_fn = reference_run if method == REFERENCE else run_experiment
                record = run_fn(data, model, config)
                record.update(variant=name, seed=key[2])
                recorded[key] = strict_json(append_result(out, record))  # as read back
            record = recorded[key]
            drop, gap = curve_figures(record["history"], args.after)
            reaches = record["history"][-1]["epoch"] > args.after
            excess, drift, spread = (gap_parts(record["history"], args.after) if reaches
                                     else (float("nan"),) * 3)
            rows.setdefault(name, []).append(
                (drop, gap, excess, drift, spread, 100 * record["test"]))
            print(f"{name} seed/split {key[2]}: max drop {drop:.1f}, last-20 gap {gap:.1f} "
                  f"= {excess:.1f} + {drift:.1f}, test {100 * record['test']:.2f}", flush=True)
    print(f"\n{preset.name}, {args.conv.upper()}, the suite's options, {args.seeds} "
          f"seeds/splits; points; command: python benchmarks/stability.py "
          f"{' '.join(argv or sys.argv[1:])}\n")
    print(f"| variant | runs | max drop after epoch {args.after} | last-20 gap (± standard "
          f"error) | = best - mean "
          f"after epoch {args.after} | + sinking (that mean - last 20's) | spread of the "
          "evaluations | test |")
    print("|---|---|---|---|---|---|---|---|")
    for name, values in rows.items():
        drop, gap, excess, drift, spread, test = (
            statistics.mean(v[i] for v in values) for i in range(6))
        worst = max(v[0] for v in values)
        error = (statistics.stdev(v[1] for v in values) / len(values) ** 0.5
                 if len(values) > 1 else 0.0)  # the gap's standard error over the seeds
        print(f"| {name} | {len(values)} | {drop:.1f} (worst {worst:.1f}) | {gap:.2f} ± "
              f"{error:.2f} | "
              f"{excess:.1f} | {drift:+.1f} | {spread:.2f} | {test:.2f} |")


if __name__ == "__main__":
    main()
