"""Run a grid of experiments (datasets x methods x backbones x seeds/splits), resumably.

Every finished run appends one JSON record to ``--out`` (JSON lines); a run already
there (same dataset, split, seed, method, backbone and configuration) is skipped, so
an interrupted grid continues where it stopped. At the end the Markdown tables of the
records are printed and written next to ``--out`` (``.md``, by a run, not by
``--table-only``), with the plots
(``--plots``, default beside ``--out``).

Presets:
    suite     the default: Cora, CiteSeer, Tolokers, Minesweeper and Actor, VQ-GNN
              against full-graph training, GraphSAGE sampling, Cluster-GCN and GraphSAINT
              (GCN backbone, 3 seeds or given splits). Table, the targets of the
              comparison, and the plot of validation metric against training time.
    accuracy  VQ-GNN against full-graph training, GCN, SAGE and GAT backbones, 5 seeds
              (10 given splits on Tolokers).
    batch     peak training memory against batch size on a synthetic graph.
    all-quantized
              the accuracy preset's Cora and CiteSeer with every layer quantized (the
              first layer's raw features through a codebook too).
    converge  time to 99% of full-graph training's best validation accuracy on the
              10^6-node synthetic graph of the scaling run, all five methods.
    ogbn-arxiv, ogbn-products
              OGB-example hyper-parameters (see ``benchmarks/ogb.py``).

Real datasets are read from ``--data-root`` (default: ``$VQGNN_DATA_ROOT``), a folder
holding ``planetoid/`` (PyG ``Planetoid``: ``Cora/raw``, ``CiteSeer/raw``),
``heterophilous/`` (PyG ``HeterophilousGraphDataset``: ``tolokers/raw``, ...) and
``actor/`` (PyG ``Actor``: ``raw``), after copying each folder to
``benchmarks/results/data`` (PyG writes ``processed/`` beside ``raw/``; the given folder
stays untouched). OGB datasets are read from (or downloaded to)
``--ogb-root``.

Usage:
    python benchmarks/grid.py                                  # the suite (under an hour)
    python benchmarks/grid.py --preset accuracy                # VQ against full, 3 backbones
    python benchmarks/grid.py --preset batch                   # memory against batch size
    python benchmarks/grid.py --datasets cora --methods vq,sage --runs 1
    python benchmarks/grid.py --table-only                     # tables of the records
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset, parse_synthetic  # noqa: E402
from vqgnn.errors import DivergenceError  # noqa: E402
from vqgnn.nn.models import BACKBONES  # noqa: E402
from vqgnn.quantize import CodebookOptions  # noqa: E402
from vqgnn.train import ModelConfig, TrainConfig, run_experiment  # noqa: E402
from vqgnn.train.checkpoint import CheckpointError  # noqa: E402
from vqgnn.train.experiment import config_values  # noqa: E402
from vqgnn.train.records import append_result  # noqa: E402
from vqgnn.train.trainer import PRECISIONS  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass
class DatasetPreset:
    """How one dataset is run: name, data folder, split or seed variation, configs.

    ``source`` is ``'shared'`` (a folder under ``--data-root``, copied first), ``'ogb'``
    (``--ogb-root``) or ``None`` (synthetic).
    """

    name: str  # load_dataset name
    family: Optional[str]  # folder under --data-root
    vary: str  # "seed" (random/public split, seeds vary) or "split" (given splits)
    model: ModelConfig
    train: dict[str, Any]  # flat training options (TrainConfig.create's keywords)
    runs: int = 5
    source: Optional[str] = "shared"
    # per-method overrides of ``train`` (e.g. more epochs for full-graph training's one
    # step per epoch)
    method_train: dict[str, dict[str, Any]] = field(default_factory=dict)


def _cfg(**kw: Any) -> dict[str, Any]:
    """Flat training options; each run passes a method the ones it takes."""
    return kw


def _model(num_codewords: int, **kw: Any) -> ModelConfig:
    return ModelConfig(codebook=CodebookOptions(num_codewords=num_codewords), **kw)


_PLANETOID_MODEL = _model(256, hidden=64, layers=2, dropout=0.5)
_PLANETOID_TRAIN = _cfg(epochs=200, batch_size=512, lr=0.01, weight_decay=5e-4)
# The suite's: --lr is an epoch's (each of the S = 6 steps of an epoch takes lr / 6). At
# lr 0.01 per step VQ-GNN's Cora validation curve falls up to 40 points below its best
# after epoch 20; with lr / S, 4.3 (full-graph training: 3.7). benchmarks/stability.py,
# README "Stability". With lr / S the curve still sinks after its best on CiteSeer (best
# minus the mean of the last 20 evaluations: 3.7 points, full-graph training 1.8); a cosine
# decay of the lr takes it to 2.2 at the same test accuracy, the backward term off to 3.3
# (stability.py --dataset citeseer, 3 seeds): the late steps at full lr are what moves it.
_PLANETOID_SUITE = {**_PLANETOID_TRAIN, "lr_per_epoch": True, "lr_schedule": "cosine"}
# K about N / 10 here as for Cora (2,708 nodes, K = 256); with K = 256 the VQ model
# trails full-graph training by about 2 points on Tolokers split 0 (72.3 against 74.3
# after 100 epochs, GCN), with K = 512 by 0.8 after 200.
_TOLOKERS = DatasetPreset(
    "Tolokers", "heterophilous", "split",
    _model(1024, hidden=64, layers=2, dropout=0.2),
    _cfg(epochs=200, batch_size=1024, lr=0.01, weight_decay=0.0, eval_every=5), runs=10)

_CORA = DatasetPreset("Cora", "planetoid", "seed", _PLANETOID_MODEL, _PLANETOID_TRAIN)
_CITESEER = DatasetPreset("CiteSeer", "planetoid", "seed", _PLANETOID_MODEL, _PLANETOID_TRAIN)


# The heterophilous-graph benchmark's architecture and hyper-parameters (Platonov et al.,
# ICLR 2023): input linear, 3 residual blocks h + FFN(conv(LN(h))), final LayerNorm and
# linear, hidden 512, GELU, dropout 0.2, Adam lr 3e-5, 1,000 epochs (full-graph training:
# 1,000 optimizer steps), evaluation every 10 epochs. VQ-GNN quantizes every convolution
# (K = 1,024) and takes the same 1,000 epochs at the same lr per step, in batches of
# 4,096 (3 steps per epoch on these graphs). Preset 'published-steps' gives VQ-GNN the
# same 1,000 optimizer steps instead (batches of 2,048, ceil(1,000 / S) epochs).
_PUBLISHED_MODEL = _model(1024, hidden=512, layers=3, dropout=0.2, norm="layer", act="gelu",
                          ffn=True)


def _published(name: str, num_nodes: int, same_steps: bool = False) -> DatasetPreset:
    vq: dict[str, Any] = {"batch_size": 4096}
    if same_steps:
        steps = -(-num_nodes // 2048)  # per epoch
        vq = {"batch_size": 2048, "epochs": -(-1000 // steps),
              "eval_every": max(1, 10 // steps)}
    return DatasetPreset(
        name, "heterophilous", "split", _PUBLISHED_MODEL,
        _cfg(epochs=1000, lr=3e-5, eval_every=10), runs=10, method_train={"vq": vq})


def _all_quantized(preset: DatasetPreset) -> DatasetPreset:
    return replace(preset, model=replace(preset.model, exact_first_layer=False))


PRESETS: dict[str, dict[str, DatasetPreset]] = {
    "suite": {
        "cora": DatasetPreset("Cora", "planetoid", "seed", _PLANETOID_MODEL, _PLANETOID_SUITE,
                              runs=3),
        "citeseer": DatasetPreset("CiteSeer", "planetoid", "seed", _PLANETOID_MODEL,
                                  _PLANETOID_SUITE, runs=3),
        "tolokers": replace(_TOLOKERS, runs=3),
        "minesweeper": DatasetPreset(
            "Minesweeper", "heterophilous", "split",
            _model(1024, hidden=64, layers=2, dropout=0.2),
            _cfg(epochs=200, batch_size=1024, lr=0.01, eval_every=5), runs=3),
        "actor": DatasetPreset(
            "Actor", "actor", "split",
            _model(512, hidden=64, layers=2, dropout=0.5),
            _cfg(epochs=200, batch_size=1024, lr=0.01, weight_decay=5e-4, eval_every=5),
            runs=3),
    },
    # Issue 5's accuracy table: VQ-GNN against full-graph training of the same
    # architecture with the same hyper-parameters.
    "accuracy": {
        "cora": _CORA,
        "citeseer": _CITESEER,
        "tolokers": _TOLOKERS,
    },
    # The accuracy preset's Cora and CiteSeer with both layers quantized (the first layer's
    # raw features through a codebook too, not exact): every layer of the model quantized.
    "all-quantized": {"cora": _all_quantized(_CORA), "citeseer": _all_quantized(_CITESEER)},
    # The same with VQ-GNN's batches METIS parts (``sampler='metis'``): most of a batch
    # node's neighbours then inside the batch, fewer of the first layer's raw-feature
    # messages quantized (full-graph training's runs are the all-quantized preset's).
    "all-quantized-metis": {
        key: replace(_all_quantized(preset), method_train={"vq": {"sampler": "metis"}})
        for key, preset in (("cora", _CORA), ("citeseer", _CITESEER))},
    # Issue 11: full-graph training of the heterophilous benchmark's architecture at its
    # published width and steps against the published figures, and VQ-GNN against it.
    "published": {"tolokers": _published("Tolokers", 11758),
                  "minesweeper": _published("Minesweeper", 10000)},
    "published-steps": {"tolokers": _published("Tolokers", 11758, same_steps=True),
                        "minesweeper": _published("Minesweeper", 10000, same_steps=True)},
    # Peak training memory against batch size (--batch-sizes), a few epochs each.
    "batch": {
        "synthetic": DatasetPreset(
            "synthetic:n=100000,deg=20,classes=5,features=64,seed=0", None, "seed",
            _model(256, hidden=64, layers=2, dropout=0.5),
            _cfg(epochs=2, lr=0.01, eval_every=2, saint_coverage=10.0), runs=1, source=None),
    },
    # Time to 99% of full-graph training's best validation accuracy on the scaling run's
    # 10^6-node graph (GCN, batches of 4,096, K = 256): every method evaluated after every
    # epoch; full-graph training takes one step per epoch, so it gets 150 epochs, the
    # mini-batch methods 10 (GraphSAGE, at about 2 minutes an epoch here, 3).
    "converge": {
        "synthetic": DatasetPreset(
            "synthetic:n=1000000,deg=10,classes=10,features=32,seed=0", None, "seed",
            _model(256, hidden=64, layers=2, dropout=0.2),
            _cfg(epochs=10, batch_size=4096, lr=0.01, eval_every=1, init_nodes=65536,
                 inference_batches="random", saint_coverage=5.0),
            runs=1, source=None,
            method_train={"full": {"epochs": 150}, "sage": {"epochs": 3}}),
    },
    # OGB examples' hyper-parameters (examples/nodeproppred/{arxiv,products}/gnn.py):
    # 3 layers, 256 hidden channels, dropout 0.5, Adam lr 0.01; batch norm for arxiv.
    "ogbn-arxiv": {
        "ogbn-arxiv": DatasetPreset(
            "ogbn-arxiv", None, "seed",
            _model(1024, hidden=256, layers=3, dropout=0.5, norm="batch"),
            _cfg(epochs=500, batch_size=8192, lr=0.01, eval_every=5, saint_coverage=20.0),
            runs=1, source="ogb"),
    },
    "ogbn-products": {
        "ogbn-products": DatasetPreset(
            "ogbn-products", None, "seed",
            _model(4096, hidden=256, layers=3, dropout=0.5),
            _cfg(epochs=20, batch_size=8192, lr=0.001, eval_every=5, saint_coverage=20.0,
                 eval_batch_size=65536), runs=1, source="ogb"),
    },
}
ALL_METHODS = "vq,full,sage,cluster,saint"
DEFAULT_METHODS = {"suite": ALL_METHODS, "accuracy": "vq,full", "batch": ALL_METHODS,
                   "converge": ALL_METHODS, "all-quantized": "vq,full",
                   "all-quantized-metis": "vq,full",
                   "published": "vq,full", "published-steps": "vq,full",
                   "ogbn-arxiv": ALL_METHODS, "ogbn-products": "vq,sage,cluster,saint"}
DEFAULT_CONVS = {"suite": "gcn", "accuracy": "gcn,sage,gat", "batch": "gcn", "converge": "gcn",
                 "all-quantized": "gcn,sage,gat", "all-quantized-metis": "gcn,sage",
                 "published": "gcn,sage", "published-steps": "gcn,sage",
                 "ogbn-arxiv": "gcn", "ogbn-products": "sage"}
BATCH_SIZES = "256,512,1024,2048,4096"

VQ_INFERENCE_OPTIONS = ("inference_batch_size", "inference_memory_mb", "inference_batches",
                        "inference_refresh")


def _defaults(kind: str, method: str) -> dict[str, Any]:
    if kind == "model_config":
        return asdict(ModelConfig())
    return {"method": method, **config_values(TrainConfig.create(method))}


def _non_default(kind: str, config: dict[str, Any], method: str) -> dict[str, Any]:
    """The options that differ from the dataclass defaults: keys stay the same when an
    option is added later with a default (older records still match)."""
    defaults = json.loads(json.dumps(_defaults(kind, method)))
    config = json.loads(json.dumps(config))
    if kind == "train_config":  # options of other methods do not change this run
        config = {k: v for k, v in config.items() if k in defaults}
        if config.get("inference", "exact") == "exact":
            # Selected by exact inference, the run (its training and the selected model)
            # does not depend on how VQ inference runs; the record says how it did
            # (``vq_inference``).
            config = {k: v for k, v in config.items() if k not in VQ_INFERENCE_OPTIONS}
    return {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}


def run_key(record_or_parts: dict[str, Any]) -> str:
    """Identity of a run: dataset, split, seed, method, and both configurations."""
    r = record_or_parts
    model = _non_default("model_config", r["model_config"], r["method"])
    train = {k: v for k, v in _non_default("train_config", r["train_config"], r["method"]).items()
             if k not in ("progress", "checkpoint", "checkpoint_every", "device")}
    text = json.dumps([r["dataset"], r["split"], r["seed"], r["method"], model, train],
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def prepare_root(preset: DatasetPreset, data_root: Optional[str], ogb_root: Optional[str]
                 ) -> Optional[str]:
    """The dataset's root: a copy of ``data_root/family`` made once, or the OGB root."""
    if preset.source == "ogb":
        return ogb_root
    if preset.source is None or preset.family is None:
        return None
    if data_root is None:
        raise SystemExit(f"grid.py: error: {preset.name} needs --data-root (or "
                         f"$VQGNN_DATA_ROOT): the folder holding {preset.family}/")
    return copy_root(Path(data_root) / preset.family)


def copy_root(source: Path) -> str:
    """A copy of the dataset folder ``source`` under ``RESULTS/data``, made once: PyG
    processes a dataset beside its ``raw/`` files, and the source stays as it is (it may be
    shared or read-only)."""
    target = RESULTS / "data" / source.name
    if not target.exists():
        if not source.exists():
            raise FileNotFoundError(f"grid: no dataset folder {source} (see --data-root)")
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        tmp.replace(target)
    return str(target)


def record_name(name: str) -> str:
    """The ``dataset`` field of a record of ``load_dataset(name)`` (synthetic names are
    written out in full)."""
    if name.startswith("synthetic"):
        return parse_synthetic(name).name
    return name


@dataclass
class Run:
    preset: DatasetPreset
    method: str
    conv: str
    index: int
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    precision: Optional[str] = None
    model: ModelConfig = field(init=False)
    train: TrainConfig = field(init=False)

    def __post_init__(self) -> None:
        self.model = replace(self.preset.model, conv=self.conv)
        seed = self.index if self.preset.vary == "seed" else 0
        values: dict[str, Any] = {**self.preset.train,
                                  **self.preset.method_train.get(self.method, {}), "seed": seed}
        if self.batch_size is not None:
            values["batch_size"] = self.batch_size
        if self.epochs is not None:
            values["epochs"] = self.epochs
            values["eval_every"] = min(values.get("eval_every", 1), self.epochs)
        if self.precision is not None:
            values["precision"] = self.precision
        takes = set(TrainConfig.create(self.method).flat())
        self.train = TrainConfig.create(self.method, **{k: v for k, v in values.items()
                                                        if k in takes})

    @property
    def split(self) -> int:
        return self.index if self.preset.vary == "split" else 0


def _ints(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"grid.py: error: {option} must be comma-separated ints >= 1, "
                         f"received {text!r}")
    return values


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--preset", default="suite", choices=sorted(PRESETS))
    parser.add_argument("--datasets", default=None, help="comma-separated preset keys")
    parser.add_argument("--methods", default=None,
                        help="comma-separated (default: the preset's)")
    parser.add_argument("--convs", default=None, help="comma-separated backbones "
                        "(default: the preset's)")
    parser.add_argument("--runs", type=int, default=None,
                        help="seeds (or given splits) per configuration (default: preset's)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's")
    parser.add_argument("--precision", default=None,
                        help=f"training precision, one of {PRECISIONS} (default: the "
                             f"preset's, float32; bfloat16: each step's forward under "
                             f"torch.autocast), or several, comma-separated, for a table "
                             f"of float32 against bfloat16")
    parser.add_argument("--batch-sizes", default=None,
                        help=f"comma-separated batch sizes (preset batch: {BATCH_SIZES})")
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"),
                        help="folder of planetoid/, heterophilous/, actor/ "
                             "(default: $VQGNN_DATA_ROOT)")
    parser.add_argument("--ogb-root", default=None, help="folder of the OGB datasets")
    parser.add_argument("--out", default=None, help="JSON lines file (default: results/)")
    parser.add_argument("--plots", default=None,
                        help="folder of the PNG plots (default: beside --out)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--verbose", action="store_true", help="per-epoch logs")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: print the tables of the records in --out and "
                             "redraw the plots (the .md beside --out is left as the run "
                             "that wrote it)")
    parser.add_argument("--interleave", action="store_true",
                        help="run split (or seed) 0 of every configuration, then 1, ...")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at once, each in its own process (timings then share "
                             "the machine: for accuracy grids, e.g. on a GPU)")
    parser.add_argument("--checkpoints", default=None, metavar="DIR",
                        help="checkpoint every run in DIR (every --checkpoint-every epochs) "
                             "and resume a run stopped half-way from its checkpoint (long "
                             "runs)")
    parser.add_argument("--checkpoint-every", type=int, default=1, metavar="EPOCHS",
                        help="epochs between a run's checkpoints (with --checkpoints)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="start no run after this many seconds (the grid resumes later)")
    args = parser.parse_args(argv)
    presets = PRESETS[args.preset]
    args.keys = args.datasets.split(",") if args.datasets else list(presets)
    unknown = [k for k in args.keys if k not in presets]
    if unknown:
        parser.error(f"unknown datasets {unknown}; preset {args.preset!r} has {list(presets)}")
    args.method_list = (args.methods or DEFAULT_METHODS[args.preset]).split(",")
    args.conv_list = (args.convs or DEFAULT_CONVS[args.preset]).split(",")
    unknown = [c for c in args.conv_list if c not in BACKBONES]
    if unknown:
        parser.error(f"unknown backbones {unknown} in --convs; valid: {list(BACKBONES)}")
    batch_sizes = args.batch_sizes or (BATCH_SIZES if args.preset == "batch" else None)
    args.batch_size_list = _ints(batch_sizes, "--batch-sizes") or [None]
    args.precision_list = args.precision.split(",") if args.precision else [None]
    bad = [p for p in args.precision_list if p is not None and p not in PRECISIONS]
    if bad:
        parser.error(f"--precision takes values in {PRECISIONS}, received {args.precision!r}")
    for name, value in (("--runs", args.runs), ("--epochs", args.epochs),
                        ("--workers", args.workers), ("--checkpoint-every", args.checkpoint_every)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, received {value}")
    if args.checkpoint_every != 1 and not args.checkpoints:
        parser.error(f"--checkpoint-every needs --checkpoints DIR (received "
                     f"--checkpoint-every {args.checkpoint_every} without it)")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be > 0 seconds, received {args.time_budget}")
    return args


def plan(args: argparse.Namespace) -> list[Run]:
    presets = PRESETS[args.preset]
    runs = []
    for key in args.keys:
        for conv in args.conv_list:
            for index in range(args.runs or presets[key].runs):
                for batch_size in args.batch_size_list:
                    for method in args.method_list:
                        if method == "full" and batch_size not in (None,
                                                                   args.batch_size_list[0]):
                            continue  # full-graph training has no batch size
                        for precision in getattr(args, "precision_list", [None]):
                            runs.append(Run(presets[key], method, conv, index, batch_size,
                                            args.epochs, precision))
    if getattr(args, "interleave", False):
        runs.sort(key=lambda run: run.index)  # stable: the order within a split stays
    return runs


def probe_of(run: Run) -> dict[str, Any]:
    """The fields of ``run``'s record that :func:`run_key` reads."""
    return {"dataset": record_name(run.preset.name), "split": run.split,
            "seed": run.train.seed, "method": run.method, "model_config": asdict(run.model),
            "train_config": {"method": run.method, **config_values(run.train)}}


def checkpoint_path(run_or_record: Any, folder: Optional[str]) -> Optional[Path]:
    """Where ``--checkpoints`` keeps a run's checkpoint: one file per run key (of a
    :class:`Run`, or of its record)."""
    if folder is None:
        return None
    probe = probe_of(run_or_record) if isinstance(run_or_record, Run) else run_or_record
    return Path(folder) / f"{run_key(probe)}.pt"


def drop_checkpoint(run_or_record: Any, args: argparse.Namespace) -> None:
    """Delete a recorded run's ``--checkpoints`` file and any half-written ``.tmp`` of it
    (also for a run found done before: a process killed between the two left them)."""
    path = checkpoint_path(run_or_record, getattr(args, "checkpoints", None))
    if path is not None:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)


def execute(run: Run, counter: str, out: Optional[Path], done: set[str],
            args: argparse.Namespace, start: float) -> Optional[dict[str, Any]]:
    """Run one configuration unless ``done`` holds its key; append its record to ``out``
    (None: the caller appends it).

    ``args`` gives ``device``, ``data_root``, ``ogb_root``, ``verbose`` and optionally
    ``checkpoints``: a folder where the run writes a checkpoint (every ``checkpoint_every``
    epochs) and resumes from it when it is there (a run stopped half-way goes on at its
    last checkpointed epoch);
    it is deleted once the record is appended (here, or by the caller that appends it).
    A checkpoint that does not belong to the run raises :class:`CheckpointError` naming the
    file. A diverged run is recorded (status ``'diverged'``) and the caller goes on.
    Returns the record, or None when the run was done before.
    """
    run.train = run.train.replace(device=args.device)
    probe = probe_of(run)
    label = (f"{counter} {probe['dataset']} split {run.split} seed "
             f"{run.train.seed} {run.method} {run.conv} batch {run.train.batch_size}")
    if run_key(probe) in done:  # before loading anything
        print(f"{label}: done before, skipped", flush=True)
        drop_checkpoint(run, args)
        return None
    root = prepare_root(run.preset, args.data_root, args.ogb_root)
    data = load_dataset(run.preset.name, root=root, split=run.split, seed=run.train.seed)
    log = (lambda line: print("   ", line, flush=True)) if args.verbose else None
    checkpoint = checkpoint_path(run, getattr(args, "checkpoints", None))
    if checkpoint is not None:  # not part of the run's key
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        if checkpoint.exists():
            print(f"{label}: resuming from {checkpoint}", flush=True)
        run.train = run.train.replace(checkpoint=str(checkpoint), checkpoint_every=getattr(
            args, "checkpoint_every", 1))
    try:
        record = run_experiment(data, run.model, run.train, log=log, resume=True)
    except DivergenceError as err:  # recorded (status 'diverged'), and the grid goes on
        record = err.record  # type: ignore[assignment]
        print(f"{label}: {err}", flush=True)
    except CheckpointError as err:  # e.g. written by code that built another model
        raise CheckpointError(f"{label}: cannot resume from {checkpoint}: {err}; delete that "
                              "file to run this configuration afresh") from err
    record["threads"] = torch.get_num_threads()
    if out is not None:
        append_result(out, record)
        drop_checkpoint(record, args)  # recorded: the checkpoint has served
    done.add(run_key(record))
    if record.get("status", "ok") == "ok":
        print(f"{label}: test {record['metric']} {100 * record['test']:.2f}, "
              f"{record['median_epoch_seconds']:.3f} s/epoch "
              f"({time.time() - start:.0f} s so far)", flush=True)
    return record


def _in_worker(run: Run, counter: str, args: argparse.Namespace, start: float,
               threads: int) -> Optional[dict[str, Any]]:
    """:func:`execute` in a worker process of ``--workers``; the parent appends the record."""
    torch.set_num_threads(threads)
    return execute(run, counter, None, set(), args, start)


def run_all(runs: list[Run], out: Path, done: set[str], args: argparse.Namespace,
            clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Execute the runs not in ``done``, one at a time or ``args.workers`` at once (each in
    its own process, with ``cpu_count / workers`` torch threads; the records are appended
    here as runs finish), starting none after ``args.time_budget`` seconds. Returns the
    runs that raised in a worker (the others went on), one line each."""
    start, wall = clock(), time.time()
    budget = args.time_budget if args.time_budget is not None else float("inf")
    todo = [(f"[{n}/{len(runs)}]", run) for n, run in enumerate(runs, 1)]

    def over_budget(counter: str) -> bool:
        if clock() - start <= budget:
            return False
        print(f"time budget of {budget:.0f} s used: {counter} and later not started",
              flush=True)
        return True

    if args.workers == 1:
        for counter, run in todo:
            if over_budget(counter):
                break
            execute(run, counter, out, done, args, wall)
        return []
    failed: list[str] = []
    queued: set[str] = set()
    planned, todo = todo, []
    for counter, run in planned:  # done before, or planned twice: not run again
        key = run_key(probe_of(run))
        if key in done or key in queued:
            print(f"{counter}: done before, skipped", flush=True)
            if key in done:
                drop_checkpoint(run, args)
        else:
            queued.add(key)
            todo.append((counter, run))
    shared = {id(r.preset): r for _, r in todo if r.preset.source == "shared"}
    for run in shared.values():  # PyG writes processed/ once, here, not in every worker
        load_dataset(run.preset.name, root=prepare_root(run.preset, args.data_root,
                                                        args.ogb_root), split=0)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        running: set[Future] = set()
        labels: dict[Future, str] = {}
        while todo or running:
            while todo and len(running) < args.workers:
                if over_budget(todo[0][0]):
                    todo = []
                    break
                counter, run = todo.pop(0)
                future = pool.submit(_in_worker, run, counter, args, wall, threads)
                labels[future] = counter
                running.add(future)
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    record = future.result()
                except BrokenProcessPool as err:  # a worker died (killed, out of memory):
                    # the pool takes no more runs; what finished is recorded
                    failed.append(f"{labels[future]}: a worker process died ({err})")
                    print(f"{failed[-1]}; {len(todo)} runs not started", flush=True)
                    todo = []
                    continue
                except Exception as err:  # one failed run: the others go on
                    failed.append(f"{labels[future]}: {type(err).__name__}: {err}")
                    print(f"{failed[-1]} (run failed, not recorded)", flush=True)
                    continue
                if record is not None:
                    append_result(out, record)
                    done.add(run_key(record))
                    drop_checkpoint(record, args)  # recorded: the checkpoint has served
    return failed


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / f"{args.preset}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(r) for r in report.load_records(out)}
    runs = plan(args)
    failed = [] if args.table_only else run_all(runs, out, done, args)

    # The tables hold the records of this plan's runs only: a record of an earlier
    # configuration of a preset (other options) stays in the file, out of the tables.
    planned = {run_key(probe_of(run)) for run in runs}
    records = [r for r in report.load_records(out) if run_key(r) in planned]
    diverged = [r for r in records if r.get("status", "ok") != "ok"]
    records = [r for r in records if r.get("status", "ok") == "ok"]
    for r in diverged:
        print(f"not in the tables: {r['dataset']} split {r['split']} seed {r['seed']} "
              f"{r['method']} {r['conv']} (status {r['status']!r} at epoch "
              f"{r.get('diverged_epoch')})")
    device = records[0]["device"] if records else args.device
    threads = sorted({r.get("threads", torch.get_num_threads()) for r in records})
    title = (f"Grid '{args.preset}' ({len(records)} runs, device {device}, torch threads "
             f"{'/'.join(map(str, threads))}); command: python benchmarks/grid.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}")
    if len(getattr(args, "precision_list", [None])) > 1:
        tables = report.precision_table(records)
    elif args.preset in ("accuracy", "all-quantized", "all-quantized-metis"):
        tables = report.accuracy_table(records, args.method_list)
    elif args.preset in ("published", "published-steps"):
        tables = report.published_table(records)
    elif args.preset == "batch":
        tables = report.batch_table(records)
    else:
        tables = report.suite_table(records, args.method_list)
        if args.preset in report.REFERENCES:
            tables += ["", "Published (not measured here): "
                       + "; ".join(report.REFERENCES[args.preset]) + "."]
        else:
            tables += [""] + report.targets(records)
    text = title + "\n\n" + "\n".join(tables) + "\n"
    print("\n" + text)
    if not args.table_only:  # the .md keeps the command that ran the records
        out.with_suffix(".md").write_text(text)
    plots = Path(args.plots) if args.plots else out.parent
    written = report.plot_grid(records, args.preset, plots / out.stem)
    for path in written:
        print(f"plot: {path}")
    if failed:
        raise SystemExit(f"grid.py: {len(failed)} run(s) failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
