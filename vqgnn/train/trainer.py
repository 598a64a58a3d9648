"""The training loop: evaluation, model selection, early stopping, checkpoints and exact
resume, for every training method (:mod:`vqgnn.train.methods`)."""
from __future__ import annotations

import copy
import math
import os
import random
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from tqdm.auto import tqdm

from vqgnn.batching.graph import VQGraph
from vqgnn.datasets.checks import (
    check_finite_features,
    check_output_width,
    check_training_graph,
)
from vqgnn.distributed import SingleProcess, current
from vqgnn.errors import ConfigError, ConfigTypeError, DivergenceError
from vqgnn.train.checkpoint import (
    CheckpointError,
    differences,
    graph_fingerprint,
    load_state,
    model_signature,
    rng_state,
    save_state,
    set_rng_state,
)
from vqgnn.train.meters import (
    PeakMemory,
    SavedTensorMeter,
    Timer,
    peak_rss_bytes,
    reset_peak_rss,
)
from vqgnn.train.methods import (
    METHODS,
    VQ_INFERENCE,
    MethodOptions,
    TrainContext,
    TrainingMethod,
    data_parallel_refusal,
    make_options,
    method_class,
)
from vqgnn.train.records import strict_json

OPTIMIZERS = ("adam", "adamw", "sgd")

#: Steps between the progress bar's loss updates (each is a host synchronisation).
PROGRESS_EVERY = 20

#: Shared options a resumed run may change (every other option must match the checkpoint's).
RESUMABLE = ("epochs", "checkpoint", "checkpoint_every", "progress", "device", "patience",
             "measure_memory")

_COMMON_OPTIONS = ("epochs", "lr", "weight_decay", "optimizer", "lr_schedule",
                   "warmup_epochs", "grad_clip", "lr_per_epoch", "eval_every", "patience",
                   "inference", "eval_batch_size", "seed", "device", "checkpoint",
                   "checkpoint_every", "progress", "measure_memory", "feature_dtype",
                   "precision")
LR_SCHEDULES = ("constant", "cosine")
#: Options added after checkpoints were written, at their defaults: left out of a run's
#: identity, so that an older checkpoint (which lacks them) still resumes.
_ADDED_AT_DEFAULT: dict[str, Any] = {"feature_dtype": "float32", "precision": "float32"}
#: The same for the methods' own options (``train_config.options``).
_OPTIONS_ADDED_AT_DEFAULT: dict[str, Any] = {"search_every": 1}
#: Storage dtypes of the node features (computation stays in the model's float32).
FEATURE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                  "float16": torch.float16}
#: Precisions of the training forward: float32, or ``torch.autocast`` in bfloat16.
PRECISIONS = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    """Options of :class:`Trainer`: the method and its own options, then what every
    method shares. Validated on construction.

    Attributes:
        method: a registered method name (:data:`~vqgnn.train.methods.METHODS`):
            ``'vq'`` (VQ-GNN mini-batches), ``'full'`` (full-graph training), or a sampling
            baseline training the model exactly on subgraphs: ``'sage'`` (GraphSAGE
            neighbour sampling), ``'cluster'`` (Cluster-GCN) or ``'saint'`` (GraphSAINT).
        options: the method's options dataclass (:class:`~vqgnn.train.VQOptions`,
            :class:`~vqgnn.train.NeighborOptions`, ...); None: its defaults. An options
            object of another method is an error.
        epochs: maximum epochs.
        lr: learning rate.
        weight_decay: weight decay.
        optimizer: ``'adam'``, ``'adamw'`` or ``'sgd'`` (momentum 0.9).
        lr_schedule: ``'constant'``, or ``'cosine'``: after the warm-up the learning rate
            falls from ``lr`` to 0 along a half cosine over the remaining epochs.
        warmup_epochs: the learning rate rises linearly to ``lr`` over this many epochs
            (epoch ``e`` of the warm-up, from 1, trains at ``lr * e / warmup_epochs``).
        grad_clip: clip the gradient's total norm to this value before each step (None:
            no clipping).
        lr_per_epoch: ``lr`` is an epoch's: each of an epoch's S steps uses ``lr / S``
            (S = the method's batches per epoch; 1 for full-graph training). The losses of
            all methods are on the full graph's scale, so an epoch of mini-batch steps then
            moves the weights about as far as one full-graph step (the linear scaling rule
            between batch size and learning rate); off, an epoch of S steps moves them
            about S times as far.
        eval_every: evaluate every this many epochs (and after the last).
        patience: stop after this many evaluations without a better validation metric.
        inference: the inference mode of model selection, one of the method's (default:
            its first, ``'exact'`` for the built-in methods; VQ-GNN also has ``'vq'``);
            every mode is reported for the selected model.
        eval_batch_size: nodes per inference chunk.
        seed: seed of weights, batches and dropout.
        device: ``'cpu'`` or ``'cuda'`` (or ``'cuda:1'``...).
        checkpoint: path of a checkpoint written after every ``checkpoint_every`` epochs
            and after the last (also the one early stopping ends at; atomic).
        checkpoint_every: epochs between checkpoints (a resumed run redoes at most
            ``checkpoint_every - 1`` epochs; writing one costs about 0.1-0.2 s for a
            100 MB state on a CPU).
        progress: tqdm progress bars.
        measure_memory: measure saved-tensor bytes of training steps.
        feature_dtype: storage of the node features on the device (and of the exact first
            layer's cached aggregation): ``'float32'``, or ``'bfloat16'``/``'float16'``
            to halve them; rows are cast to the model's float32 where they are read.
        precision: ``'float32'``, or ``'bfloat16'``: each training step's forward and loss
            run under ``torch.autocast`` in bfloat16 on the device (the matrix products
            in bfloat16, the weights, gradients, optimizer and codebooks in float32; no
            gradient scaling is needed for bfloat16). Evaluation stays float32.

    Example:
        >>> TrainConfig.create("cluster", epochs=50, batch_size=512, num_parts=32)
        >>> TrainConfig("vq", VQOptions(batch_size=512, sampler="metis"), epochs=50)
    """

    method: str = "vq"
    options: Optional[MethodOptions] = None
    epochs: int = 100
    lr: float = 0.01
    weight_decay: float = 0.0
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    grad_clip: Optional[float] = None
    lr_per_epoch: bool = False
    eval_every: int = 1
    patience: Optional[int] = None
    inference: Optional[str] = None
    eval_batch_size: int = 4096
    seed: int = 0
    device: str = "cpu"
    checkpoint: Optional[str] = None
    checkpoint_every: int = 1
    progress: bool = False
    measure_memory: bool = True
    feature_dtype: str = "float32"
    precision: str = "float32"

    def __post_init__(self) -> None:
        cls = method_class(self.method) if isinstance(self.method, str) else None
        if cls is None:
            raise ConfigTypeError(f"'TrainConfig': 'method' must be a method name, received "
                                  f"{type(self.method).__name__}")
        if self.options is None:
            self.options = cls.Options()
        elif type(self.options) is not cls.Options:
            raise ConfigTypeError(f"'TrainConfig': method {self.method!r} takes "
                                  f"{cls.Options.__name__}, received "
                                  f"{type(self.options).__name__}")
        if self.inference is None:
            self.inference = cls.inference_modes[0]
        self.validate()

    @classmethod
    def create(cls, method: str = "vq", **options: Any) -> TrainConfig:
        """A config from flat keyword options: the shared ones (``epochs``, ``lr``, ...) and
        the method's own (``batch_size``, ``num_parts``, ...). An option of another method
        is a :class:`~vqgnn.errors.ConfigError` naming it."""
        common = {k: options.pop(k) for k in list(options) if k in _COMMON_OPTIONS}
        return cls(method, make_options(method, **options), **common)

    def flat(self) -> dict[str, Any]:
        """The shared options and the method's, in one dict (``create``'s keywords)."""
        out = {k: getattr(self, k) for k in _COMMON_OPTIONS}
        out.update(asdict(self.options))  # type: ignore[arg-type]
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (shared or method options; a new ``method`` keeps the
        options it also takes)."""
        method = changes.pop("method", self.method)
        values = self.flat()
        values.update(changes)
        options = method_class(method).Options
        values = {k: v for k, v in values.items()
                  if k in _COMMON_OPTIONS or k in changes or options.accepts(k, values)}
        return TrainConfig.create(method, **values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: ``method``, ``options`` (a dict) and the shared options."""
        out: dict[str, Any] = {"method": self.method,
                               "options": strict_json(asdict(self.options))}  # type: ignore[arg-type]
        out.update({k: getattr(self, k) for k in _COMMON_OPTIONS})
        return out

    @property
    def selection(self) -> str:
        """The inference mode of model selection (``inference``, resolved)."""
        return self.inference or method_class(self.method).inference_modes[0]

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (from 1) under the warm-up and schedule."""
        if epoch <= self.warmup_epochs:
            return self.lr * epoch / self.warmup_epochs
        if self.lr_schedule == "cosine":
            done = (epoch - 1 - self.warmup_epochs) / max(self.epochs - self.warmup_epochs, 1)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * done))
        return self.lr

    @property
    def batch_size(self) -> Optional[int]:
        """The method's batch size (None for full-graph training)."""
        return getattr(self.options, "batch_size", None)

    def validate(self) -> None:
        """Raise :class:`~vqgnn.errors.ConfigError` naming the first bad option."""
        name = "TrainConfig"
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"'{name}': 'optimizer' must be one of {OPTIMIZERS}, received "
                              f"{self.optimizer!r}")
        for key in ("epochs", "eval_every", "eval_batch_size", "checkpoint_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'{name}': '{key}' must be an int >= 1, received {value!r}")
        for key, low in (("lr", "> 0"), ("weight_decay", ">= 0")):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigTypeError(f"'{name}': '{key}' must be a number, received "
                                      f"{type(value).__name__}")
            if not math.isfinite(value):
                raise ConfigError(f"'{name}': '{key}' must be finite, received {value!r}")
            if value < 0 or (key == "lr" and value == 0):
                raise ConfigError(f"'{name}': '{key}' must be {low}, received {value!r}")
        modes = method_class(self.method).inference_modes
        if self.inference not in modes:
            owners = [repr(m) for m, c in METHODS.items() if self.inference in c.inference_modes]
            if not owners:
                raise ConfigError(f"'{name}': 'inference' must be one of {modes} for method "
                                  f"{self.method!r}, received {self.inference!r}")
            raise ConfigError(f"'{name}': 'inference' {self.inference!r} needs method "
                              f"{' or '.join(owners)} (received method {self.method!r}, whose "
                              f"modes are {modes})")
        check_device(self.device, name)
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ConfigError(f"'{name}': 'feature_dtype' must be one of "
                              f"{tuple(FEATURE_DTYPES)}, received {self.feature_dtype!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"'{name}': 'precision' must be one of {PRECISIONS}, received "
                              f"{self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"'{name}': 'lr_schedule' must be one of {LR_SCHEDULES}, "
                              f"received {self.lr_schedule!r}")
        if (not isinstance(self.warmup_epochs, int) or isinstance(self.warmup_epochs, bool)
                or not 0 <= self.warmup_epochs < self.epochs):
            raise ConfigError(f"'{name}': 'warmup_epochs' must be an int in [0, epochs) = "
                              f"[0, {self.epochs}), received {self.warmup_epochs!r}")
        if not isinstance(self.lr_per_epoch, bool):
            raise ConfigError(f"'{name}': 'lr_per_epoch' must be a bool, received "
                              f"{self.lr_per_epoch!r}")
        if self.grad_clip is not None and (
                not isinstance(self.grad_clip, (int, float)) or isinstance(self.grad_clip, bool)
                or not math.isfinite(self.grad_clip) or self.grad_clip <= 0):
            raise ConfigError(f"'{name}': 'grad_clip' must be a finite number > 0 or None, "
                              f"received {self.grad_clip!r}")
        if self.patience is not None and (not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ConfigError(f"'{name}': 'patience' must be >= 1 or None, "
                              f"received {self.patience!r}")


def _without_defaults(values: dict[str, Any], added: dict[str, Any],
                      skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` without the keys in ``skip`` and those of ``added`` at their value there
    (options added after checkpoints were written: an older checkpoint lacks them)."""
    return {k: v for k, v in values.items()
            if k not in skip and not (k in added and added[k] == v)}


def _fill_defaults(saved: dict[str, Any], current: dict[str, Any],
                   added: dict[str, Any]) -> None:
    """Give both sides every ``added`` option they lack, at its default (identities leave
    it out there; a checkpoint may also predate it, or hold it at its default)."""
    for side in (saved, current):
        for key, default in added.items():
            side.setdefault(key, default)


def _stored_features(x: Tensor, name: str, device: torch.device) -> Tensor:
    """``x`` on ``device`` in the storage dtype ``name``; a
    :class:`~vqgnn.errors.ConfigError` when a finite feature does not fit (float16
    overflows above 65,504)."""
    stored = x.to(device, FEATURE_DTYPES[name])
    # float16 only: bfloat16 has float32's range (and the features are finite)
    if stored.dtype == torch.float16 != x.dtype and bool(torch.isinf(stored).any()):
        raise ConfigError(f"'TrainConfig': 'feature_dtype' {name!r} cannot hold these "
                          f"features (largest magnitude {float(x.abs().max()):.4g}, float16's "
                          f"is 65,504); use 'bfloat16' or 'float32'")
    return stored


def check_device(device: str, owner: str = "TrainConfig") -> torch.device:
    """``device`` parsed; :class:`~vqgnn.errors.ConfigError` for a malformed name or a
    device this machine does not have."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"'{owner}': 'device' must be 'cpu', 'cuda' or 'cuda:N', received "
                          f"{device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"'{owner}': 'device' {device!r} needs CUDA, which this "
                              f"machine's torch does not have (torch.cuda.is_available() is "
                              f"False; torch {torch.__version__})")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"'{owner}': 'device' {device!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise ConfigError(f"'{owner}': 'device' must be 'cpu', 'cuda' or 'cuda:N', received "
                          f"{device!r}")
    return parsed


@dataclass
class EpochLog:
    """One epoch's figures."""

    epoch: int
    loss: float
    seconds: float  # training only
    train: Optional[float] = None
    val: Optional[float] = None
    test: Optional[float] = None
    usage: Optional[float] = None
    perplexity: Optional[float] = None
    quantization_error: Optional[float] = None
    eval_seconds: Optional[float] = None  # the evaluation after the epoch, if any
    # Relative error of the quantized out-of-batch messages, per quantized layer, measured
    # at the epoch's exact evaluation (VQ-GNN); the mean over layers.
    message_error: Optional[float] = None
    message_errors: Optional[list[Optional[float]]] = None

    def line(self, epochs: int, metric: str) -> str:
        parts = [f"epoch {self.epoch:>3}/{epochs}", f"loss {self.loss:.4f}"]
        if self.val is not None:
            parts.append(f"{metric} train {self.train:.4f} val {self.val:.4f} "
                         f"test {self.test:.4f}")
        parts.append(f"{self.seconds:.2f} s")
        if self.usage is not None:
            parts.append(f"codebook use {self.usage:.2f} ppl {self.perplexity:.1f} "
                         f"qerr {self.quantization_error:.3f}")
        if self.message_errors:
            parts.append("message error " + " ".join(
                "-" if e is None else f"{e:.3f}" for e in self.message_errors))
        return " | ".join(parts)


@dataclass
class TrainResult:
    """What a training run produced: the figures of its JSON record."""

    method: str
    metric: str
    best_epoch: int
    best_val: Optional[float]
    test: Optional[float]
    selection_inference: str
    val_exact: Optional[float]
    test_exact: Optional[float]
    val_vq: Optional[float]
    test_vq: Optional[float]
    epochs_run: int
    median_epoch_seconds: float
    time_to_best_seconds: float
    #: Seconds of every evaluation during training (not in the epoch times).
    eval_seconds_total: float
    peak_memory_bytes: Optional[int]
    memory_measure: str
    peak_rss_bytes: int
    rss_measure: str
    setup_seconds: float
    inference_seconds_exact: Optional[float]
    inference_seconds_vq: Optional[float]
    #: Peak memory of the final inference by each mode above what was in use before it
    #: (:class:`~vqgnn.train.meters.PeakMemory`; None where not measured).
    inference_peak_bytes_exact: Optional[int] = None
    inference_peak_bytes_vq: Optional[int] = None
    inference_memory_measure: Optional[str] = None
    history: list[EpochLog] = field(default_factory=list)
    #: ``'ok'``, or ``'diverged'`` (non-finite loss or parameters at ``diverged_epoch``:
    #: the figures are the best model's before it, None when there was none).
    status: str = "ok"
    diverged_epoch: Optional[int] = None
    #: The epoch a resumed run continued from (None: trained from the start here).
    resumed_at_epoch: Optional[int] = None
    #: Processes that trained the model (torchrun's ranks; 1 without torchrun).
    world_size: int = 1
    #: How the method's own inference mode ran (VQ-GNN: the VQ inference batches), if it did.
    vq_inference: Optional[dict[str, Any]] = None

    def record(self) -> dict[str, Any]:
        """A flat JSON-serialisable dict (history as a list of dicts)."""
        out = asdict(self)
        out["history"] = [asdict(h) for h in self.history]
        return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains a model on one graph by a :class:`~vqgnn.train.methods.TrainingMethod`.

    The trainer owns the loop, evaluation, model selection, early stopping, meters,
    progress bars, logs and checkpoints; the method (``config.method``, from the
    registry) decides how batches are made and what a step's loss is.

    Args:
        model: the model: a :class:`~vqgnn.nn.VQGNN` (every method), or any PyG model
            with ``forward(x, edge_index)`` (full-graph training and the sampling
            baselines).
        data: a graph from :func:`vqgnn.datasets.load_dataset` (``x``, ``edge_index``,
            ``y``, masks, ``metric``).
        config: :class:`TrainConfig`.
        log: called with one line per epoch (default: silent).
        optimizer: an optimizer over ``model``'s parameters, in place of the one
            ``config.optimizer`` names (any ``torch.optim.Optimizer``).
        identity: more of what identifies the run (e.g. the model's configuration),
            stored in checkpoints and compared on resume with the configuration, the
            model's parameter shapes and the graph's fingerprint.
        parallel: the data-parallel strategy (:mod:`vqgnn.distributed`). Default: the
            initialised process group if it has several ranks (under torchrun, after
            :meth:`~vqgnn.distributed.DataParallel.from_env`), else one process. With
            several ranks, each takes a share of every epoch's batches, and evaluation,
            logs and checkpoints come from rank 0; every rank returns rank 0's result.

    Raises:
        ConfigError: bad configuration, a model the method cannot train, a graph without
            training, validation or test nodes, or non-finite features.

    Example:
        >>> trainer = Trainer(model, data, TrainConfig.create("vq", epochs=50, batch_size=512))
        >>> result = trainer.fit()
    """

    def __init__(self, model: torch.nn.Module, data: Data, config: TrainConfig,
                 log: Optional[Callable[[str], None]] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 identity: Optional[dict[str, Any]] = None,
                 parallel: Optional[SingleProcess] = None) -> None:
        if not isinstance(config, TrainConfig):
            raise ConfigTypeError(f"'Trainer': 'config' must be a TrainConfig, received "
                                  f"{type(config).__name__}")
        config.validate()
        check_training_graph(data, "Trainer")  # before any set-up (metric, masks, labels)
        check_finite_features(data, "Trainer")  # before the peak RSS is reset: not the run's
        self.fingerprint = graph_fingerprint(data)
        # The peak RSS counts from here: samplers' set-up (METIS, GraphSAINT's
        # pre-sampling) and k-means belong to the run.
        self.rss_reset = reset_peak_rss()
        setup_start = time.perf_counter()
        self.method: TrainingMethod = method_class(config.method)(config.options)
        self.method.check_model(model, data)
        check_output_width(model, data, "Trainer")
        self.method.check_schedule(model, config.warmup_epochs)
        if parallel is not None and not isinstance(parallel, SingleProcess):
            raise ConfigTypeError(f"'Trainer': 'parallel' must be a SingleProcess or "
                                  f"DataParallel, received {type(parallel).__name__}")
        self.parallel = parallel if parallel is not None else current()
        refusal = data_parallel_refusal(config.method, self.parallel.world_size)
        if refusal is not None:
            raise ConfigError(f"'Trainer': method {refusal}")
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.data = data
        self.log = log if self.parallel.is_main else None
        masks = {s: data[f"{s}_mask"].to(self.device) for s in ("train", "val", "test")}
        train_idx = masks["train"].nonzero().view(-1)
        if train_idx.numel() == 0:
            raise ConfigError("'Trainer': the graph has no training nodes (train_mask is empty)")
        for split in ("val", "test"):  # once per graph: model selection and the result
            if not bool(masks[split].any()):
                raise ConfigError(f"'Trainer': the graph has no {split} nodes ({split}_mask "
                                  f"is empty); model selection and the result need them")
        self.extra_identity = dict(identity or {})
        self.ctx = TrainContext(
            model=self.model, data=data,
            x=_stored_features(data.x, config.feature_dtype, self.device),
            # class ids as int64, what the cross-entropy takes (an int32 y from numpy)
            y=(data.y if data.y.is_floating_point() else data.y.long()).to(self.device),
            masks=masks, train_idx=train_idx,
            graph=VQGraph(data.edge_index.to(self.device), data.num_nodes), device=self.device,
            seed=config.seed, eval_batch_size=config.eval_batch_size,
            progress=config.progress and self.parallel.is_main, parallel=self.parallel)
        self.method.setup(self.ctx)
        shared = self.parallel.num_shared(self.method.num_batches())
        if shared < 1:
            raise ConfigError(f"'Trainer': {self.parallel.world_size} ranks share "
                              f"{self.method.num_batches()} batch(es) per epoch, fewer than one "
                              f"each: use a smaller 'batch_size' or fewer processes")
        self.setup_seconds = time.perf_counter() - setup_start
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigTypeError(f"'Trainer': 'optimizer' must be a torch.optim.Optimizer, "
                                  f"received {type(optimizer).__name__}")
        self.optimizer = optimizer if optimizer is not None else self._make_optimizer()
        self.epoch = 0
        self.history: list[EpochLog] = []
        self.best_val = -float("inf")
        self.best_epoch = 0
        self.best_state: Optional[dict[str, Tensor]] = None
        self.bad_evals = 0
        self.elapsed = 0.0
        self.time_to_best = 0.0
        self.peak_bytes = 0
        self.prepared = False
        self.diverged_epoch: Optional[int] = None
        self.resumed_at_epoch: Optional[int] = None
        self.last_steps = 0

    @property
    def graph(self) -> VQGraph:
        """The full graph on the training device."""
        return self.ctx.graph

    # ----------------------------------------------------------------- set-up
    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.model.parameters()
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)

    def prepare(self, init_codebooks: bool = True) -> None:
        """The method's preparation before the first epoch (VQ-GNN: the exact first
        layer and the codebooks' k-means); ``init_codebooks=False`` on resume."""
        start = time.perf_counter()
        self.method.prepare(init_codebooks)
        self.prepared = True
        self.setup_seconds += time.perf_counter() - start

    def _attach(self) -> None:
        """Once prepared: the training forward module (under torchrun, the model in
        DistributedDataParallel, which broadcasts rank 0's state) and the codebooks'
        all-reduce."""
        if self.ctx.forward_model is None:
            self.ctx.forward_model = self.parallel.wrap(self.model)
            self.parallel.attach(self.model)

    # ------------------------------------------------------------------- steps
    def _step(self, batch: Any) -> Optional[Tensor]:
        """One optimizer step on ``batch``; its detached loss (None: skipped)."""
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        with (SavedTensorMeter(self.device) if self.config.measure_memory
              else nullcontext()) as meter:
            # float32 leaves any autocast the caller opened as it is
            with (torch.autocast(self.device.type, dtype=torch.bfloat16)
                  if self.config.precision == "bfloat16" else nullcontext()):
                step = self.method.loss(batch)
            if step is None:
                return None
            if meter is not None:
                meter.add(*step.inputs)
            # Gradients are summed over the ranks: each loss is its share of the step's.
            (step.loss / self.parallel.world_size).backward()
        if self.config.grad_clip is not None:  # no host sync: the scale is a tensor
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if meter is not None:
            measured = meter.cuda_peak if meter.cuda_peak is not None else meter.bytes
            self.peak_bytes = max(self.peak_bytes, measured)
        opt.step()
        self.method.after_step(batch)
        return step.loss.detach()

    def train_epoch(self) -> float:
        """One epoch; returns the mean batch loss (one host synchronisation, at the end;
        with progress bars, also one every ``PROGRESS_EVERY`` steps for the bar's loss)."""
        self.model.train()
        losses: list[Tensor] = []
        progress = self.config.progress and self.parallel.is_main
        bar = tqdm(self.parallel.share(self.method.batches()),
                   total=self.parallel.num_shared(self.method.num_batches()),
                   desc=f"epoch {self.epoch + 1}", disable=not progress, leave=False)
        for batch in bar:
            loss = self._step(batch)
            if loss is None:
                continue
            losses.append(loss)
            if progress and len(losses) % PROGRESS_EVERY == 1:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        self.last_steps = len(losses)
        if not losses:
            return float("nan")  # no batch had a loss (no training node in any)
        return self.parallel.mean(float(torch.stack(losses).mean()))

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, mode: str = "exact") -> Tensor:
        """(N, C) outputs of all nodes by one of the method's inference modes
        (``'exact'`` layer-wise; VQ-GNN also ``'vq'`` mini-batch inference, which reads
        the codebooks :meth:`fit` or :meth:`prepare` sets up)."""
        self.method.check_mode(mode)
        self.model.eval()
        return self.method.predict(mode)

    def evaluate(self, mode: str = "exact") -> dict[str, float]:
        """The metric on the train, val and test nodes."""
        from vqgnn.datasets import score

        out = self.predict(mode).cpu()
        return {split: score(self.data, out, self.ctx.masks[split].cpu())
                for split in ("train", "val", "test")}

    # ---------------------------------------------------------------- training
    def fit(self, resume_from: Optional[Union[str, os.PathLike]] = None,
            on_resumed: Optional[Callable[[int], None]] = None) -> TrainResult:
        """Train until ``epochs`` or early stopping; returns the selected model's figures.

        Args:
            resume_from: a checkpoint written by this trainer (:meth:`save_checkpoint`).
            on_resumed: called with the checkpoint's epoch once it has been checked and
                loaded (not when it is refused), before training goes on.
        """
        try:
            return self._fit(resume_from, on_resumed)
        except Exception as err:
            failure = self.parallel.failure(err, f"epoch {self.epoch + 1}")
            if failure is None:
                raise
            raise failure from err

    def _fit(self, resume_from: Optional[Union[str, os.PathLike]],
             on_resumed: Optional[Callable[[int], None]] = None) -> TrainResult:
        cfg = self.config
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            if on_resumed is not None:
                on_resumed(self.epoch)
        elif not self.prepared:
            seed_everything(cfg.seed)
            self.prepare()
        self._attach()
        main = self.parallel.is_main
        metric = str(self.data.metric)
        while self.epoch < cfg.epochs and not self.parallel.decide(self._stopped()):
            if cfg.lr_schedule != "constant" or cfg.warmup_epochs or cfg.lr_per_epoch:
                steps = (max(self.parallel.num_shared(self.method.num_batches()), 1)
                         if cfg.lr_per_epoch else 1)
                for group in self.optimizer.param_groups:
                    group["lr"] = cfg.learning_rate(self.epoch + 1) / steps
            with Timer(self.device) as timer:
                loss = self.train_epoch()
            self.epoch += 1
            self.elapsed += timer.seconds
            entry = EpochLog(self.epoch, loss, timer.seconds)
            problem = self._divergence(loss)
            if problem is not None:
                self.history.append(entry)
                self.diverged_epoch = self.epoch
                message = (f"training diverged at epoch {self.epoch}: {problem}; the run is "
                           f"stopped (try a lower learning rate)")
                if self.log is not None:
                    self.log(f"epoch {self.epoch:>3}/{cfg.epochs} | {message}")
                raise DivergenceError(message, self.epoch, self.result())
            evaluate = self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs
            if main and evaluate:
                with Timer(self.device) as eval_timer:
                    scores = self.evaluate(cfg.selection)
                entry.eval_seconds = eval_timer.seconds
                entry.train, entry.val, entry.test = scores["train"], scores["val"], scores["test"]
                if scores["val"] > self.best_val:
                    self.best_val, self.best_epoch = scores["val"], self.epoch
                    self.time_to_best = self.elapsed
                    self.best_state = {k: v.detach().cpu().clone()
                                       for k, v in self.model.state_dict().items()}
                    self.bad_evals = 0
                else:
                    self.bad_evals += 1
            if evaluate:  # an inference may change buffers (VQ inference's assignments)
                self.parallel.sync_buffers(self.model)
            health = self.method.health() if main else None
            if health is not None:
                entry.usage, entry.perplexity = health.usage, health.perplexity
                entry.quantization_error = health.quantization_error
                entry.message_error = health.message_error
                entry.message_errors = health.message_errors
            self.history.append(entry)
            # the checkpoint before the log line: a run stopped from the log callback (or
            # interrupted while it prints) keeps this epoch
            if cfg.checkpoint and main and (self.epoch % cfg.checkpoint_every == 0
                                            or self.epoch == cfg.epochs or self._stopped()):
                self.save_checkpoint(cfg.checkpoint)
            if self.log is not None:
                self.log(entry.line(cfg.epochs, metric))
        return self.result()

    def _divergence(self, loss: float) -> Optional[str]:
        """What is non-finite after an epoch (one host synchronisation), or None."""
        if self.last_steps and not math.isfinite(loss):
            return f"the mean training loss is {loss}"
        # Parameters and floating buffers (codewords, EMA statistics, standardisers, norm
        # statistics); a codebook's ``last_error`` is NaN until its first update.
        named = [(n, t.detach()) for n, t in [*self.model.named_parameters(),
                                              *self.model.named_buffers()]
                 if t.is_floating_point() and not n.endswith("last_error") and t.numel()]
        if named and not bool(torch.stack([torch.isfinite(t).all() for _, t in named]).all()):
            bad = [n for n, t in named if not bool(t.isfinite().all())]
            more = ", ..." if len(bad) > 3 else ""
            return f"non-finite parameters or statistics ({', '.join(bad[:3])}{more})"
        return None

    def _stopped(self) -> bool:
        patience = self.config.patience
        return patience is not None and self.bad_evals >= patience

    def result(self) -> TrainResult:
        """Load the best model and measure it by every inference mode of the method
        (on rank 0 under torchrun; every rank returns its result)."""
        main = self.parallel.is_main
        result = self._result() if main else None
        if self.parallel.world_size == 1:
            return result  # type: ignore[return-value]
        # Every rank returns rank 0's result and holds its model: the selected weights, and
        # the assignments its VQ inference refreshed.
        state = {k: v.cpu() for k, v in self.model.state_dict().items()} if main else None
        result, state = self.parallel.broadcast_object((result, state))
        if not main:
            self.model.load_state_dict(state)
        return result  # type: ignore[no-any-return]

    def _result(self) -> TrainResult:
        cfg = self.config
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        none = {"train": None, "val": None, "test": None}
        scores: dict[str, dict[str, Optional[float]]] = {}
        seconds: dict[str, Optional[float]] = {}
        inference_bytes: dict[str, Optional[int]] = {}
        run_peak_rss = 0  # resetting the peak RSS for each inference mode keeps the maximum
        for mode in self.method.inference_modes:
            if self.diverged_epoch is not None and self.best_state is None:
                scores[mode], seconds[mode] = dict(none), None  # no model worth measuring
                continue
            with Timer(self.device) as timer, PeakMemory(self.device) as memory:
                scores[mode] = dict(self.evaluate(mode))
            seconds[mode] = timer.seconds
            inference_bytes[mode] = memory.bytes
            run_peak_rss = max(run_peak_rss, memory.previous_peak_rss)
        chosen = scores[cfg.selection]
        vq = scores.get(VQ_INFERENCE)
        measure = ("torch.cuda.max_memory_allocated per training step"
                   if self.device.type == "cuda" else
                   "bytes of tensors saved for backward plus step inputs (saved-tensor hooks)")
        times = [h.seconds for h in self.history]
        return TrainResult(
            method=cfg.method, metric=str(self.data.metric), best_epoch=self.best_epoch,
            best_val=chosen["val"], test=chosen["test"], selection_inference=cfg.selection,
            val_exact=scores.get("exact", none)["val"],
            test_exact=scores.get("exact", none)["test"],
            val_vq=None if vq is None else vq["val"], test_vq=None if vq is None else vq["test"],
            epochs_run=self.epoch,
            median_epoch_seconds=statistics.median(times) if times else float("nan"),
            time_to_best_seconds=self.time_to_best,
            eval_seconds_total=sum(h.eval_seconds or 0.0 for h in self.history),
            peak_memory_bytes=self.peak_bytes if cfg.measure_memory else None,
            memory_measure=measure, peak_rss_bytes=max(run_peak_rss, peak_rss_bytes()),
            setup_seconds=self.setup_seconds,
            rss_measure=("process peak RSS since the Trainer was built (Linux VmHWM, reset)"
                         if self.rss_reset else
                         "process peak RSS over its lifetime"),
            inference_seconds_exact=seconds.get("exact"),
            inference_seconds_vq=seconds.get(VQ_INFERENCE),
            inference_peak_bytes_exact=inference_bytes.get("exact"),
            inference_peak_bytes_vq=inference_bytes.get(VQ_INFERENCE),
            inference_memory_measure=PeakMemory(self.device).measure,
            history=list(self.history),
            status="ok" if self.diverged_epoch is None else "diverged",
            diverged_epoch=self.diverged_epoch, resumed_at_epoch=self.resumed_at_epoch,
            world_size=self.parallel.world_size, vq_inference=self.method.inference_summary())

    # ------------------------------------------------------------- checkpoints
    def identity(self) -> dict[str, Any]:
        """What a checkpoint must share with the run that resumes it: the configuration
        (but for :data:`RESUMABLE` options), the model and the graph."""
        config = _without_defaults(self.config.to_dict(), _ADDED_AT_DEFAULT, RESUMABLE)
        config["options"] = _without_defaults(config["options"], _OPTIONS_ADDED_AT_DEFAULT)
        return {"train_config": config,
                **({"run": self.extra_identity} if self.extra_identity else {}),
                "model": model_signature(self.model), "graph": self.fingerprint}

    def save_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        """Everything needed to resume exactly, with the run's identity, written
        atomically (see :mod:`vqgnn.train.checkpoint`)."""
        save_state({
            "identity": self.identity(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_evals": self.bad_evals,
            "elapsed": self.elapsed,
            "time_to_best": self.time_to_best,
            "peak_bytes": self.peak_bytes,
            "setup_seconds": self.setup_seconds,
            "history": [asdict(h) for h in self.history],
            "config": self.config.to_dict(),
        }, path)

    def differences(self, state: dict[str, Any]) -> list[str]:
        """How a loaded checkpoint's identity differs from this run's (empty: the same)."""
        saved, current = copy.deepcopy(state.get("identity", {})), self.identity()
        # An option added at its default is left out of identities: a checkpoint without
        # it was written at that default. Said so ("checkpoint 1, now 2") where this run
        # sets another value, rather than "not in the checkpoint".
        config, now = saved.get("train_config"), current["train_config"]
        if isinstance(config, dict):
            _fill_defaults(config, now, _ADDED_AT_DEFAULT)
            if isinstance(config.get("options"), dict):
                _fill_defaults(config["options"], now["options"], _OPTIONS_ADDED_AT_DEFAULT)
        return differences(saved, current)

    def check_checkpoint(self, state: dict[str, Any], path: Union[str, os.PathLike]) -> None:
        """Raise :class:`~vqgnn.train.checkpoint.CheckpointError` unless ``state`` (a
        loaded checkpoint) belongs to this run: the same configuration but for
        :data:`RESUMABLE` options, the same model and graph, and no more epochs than
        ``config.epochs``."""
        changed = self.differences(state)
        if changed:
            shown = "; ".join(changed[:6]) + ("; ..." if len(changed) > 6 else "")
            raise CheckpointError(f"the checkpoint {os.fspath(path)!r} belongs to another run "
                                  f"({len(changed)} difference(s): {shown}); resume with the "
                                  f"same options, or start without resuming")
        if state["epoch"] > self.config.epochs:
            raise CheckpointError(f"the checkpoint {os.fspath(path)!r} has trained "
                                  f"{state['epoch']} epochs, more than 'epochs' "
                                  f"({self.config.epochs}); give at least {state['epoch']}")

    def load_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        """Restore a :meth:`save_checkpoint` state after :meth:`check_checkpoint`."""
        # On the CPU: load_state_dict moves weights and optimizer state to the parameters'
        # device; generator states must stay CPU tensors.
        state = load_state(path, "cpu")
        self.check_checkpoint(state, path)
        self.prepare(init_codebooks=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        set_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.best_state = state["best_state"]
        self.bad_evals = state["bad_evals"]
        self.elapsed, self.time_to_best = state["elapsed"], state["time_to_best"]
        self.peak_bytes = state["peak_bytes"]
        self.setup_seconds = state["setup_seconds"]
        self.resumed_at_epoch = self.epoch
        self.history = [EpochLog(**h) for h in state["history"]]


def clone_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with ``changes`` (shared or method options)."""
    return config.replace(**changes)
