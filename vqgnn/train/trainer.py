"""Mini-batch VQ-GNN training (and full-graph training of the same model) with evaluation,
model selection, early stopping, checkpoints and exact resume."""
from __future__ import annotations

import copy
import math
import os
import random
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from tqdm.auto import tqdm

from vqgnn.baselines import (
    ClusterBatches,
    NeighborBatches,
    SaintBatches,
    SubgraphBatch,
    saint_roots,
)
from vqgnn.baselines.loaders import check_fanouts, fanouts_for_layers
from vqgnn.batching.graph import VQGraph
from vqgnn.batching.samplers import ClusterBatchSampler, NodeBatchSampler, metis_partition
from vqgnn.nn.models import VQGNN
from vqgnn.train.meters import SavedTensorMeter, Timer, peak_rss_bytes, reset_peak_rss

METHODS = ("vq", "full", "sage", "cluster", "saint")
SUBGRAPH_METHODS = ("sage", "cluster", "saint")
OPTIMIZERS = ("adam", "adamw", "sgd")
SAMPLERS = ("random", "metis")
INFERENCE = ("exact", "vq")


@dataclass
class TrainConfig:
    """Options of :class:`Trainer`.

    Attributes:
        method: ``'vq'`` (VQ-GNN mini-batches), ``'full'`` (full-graph training), or a
            sampling baseline (:mod:`vqgnn.baselines`) training the same model exactly on
            subgraphs: ``'sage'`` (GraphSAGE neighbour sampling, ``batch_size`` training
            nodes and their sampled neighbourhood per step), ``'cluster'`` (Cluster-GCN:
            METIS parts of about ``batch_size / 4`` nodes, four per step) or ``'saint'``
            (GraphSAINT random walks from ``batch_size / (walk_length + 1)`` roots, with
            its loss and aggregator normalisation).
        epochs: maximum epochs.
        batch_size: nodes per mini-batch.
        lr: learning rate.
        weight_decay: weight decay.
        optimizer: ``'adam'``, ``'adamw'`` or ``'sgd'``.
        sampler: ``'random'`` node batches or ``'metis'`` cluster batches.
        num_parts: METIS parts of ``sampler='metis'`` and of ``'cluster'`` (default: about
            4 per batch).
        num_neighbors: fan-outs of ``'sage'`` per layer, outermost hop last (the first
            ``num_layers`` are used).
        walk_length: random-walk length of ``'saint'``.
        saint_coverage: GraphSAINT's pre-sampling for its normalisation, in samples per node.
        batch_nodes: ``'all'``: batches partition all nodes (the loss is on the training
            nodes among them), which refreshes every node's codeword assignment each epoch;
            ``'train'``: batches partition the training nodes only (assignments of the
            other nodes then stay as k-means left them, and accuracy suffers: on Tolokers,
            split 0, GCN, 71.1 against 72.3 ROC-AUC).
        eval_every: evaluate every this many epochs (and after the last).
        patience: stop after this many evaluations without a better validation metric.
        inference: ``'exact'`` layer-wise or ``'vq'`` mini-batch inference for model
            selection; both are reported for the selected model.
        eval_batch_size: nodes per inference chunk.
        seed: seed of weights, batches and dropout.
        device: ``'cpu'`` or ``'cuda'`` (or ``'cuda:1'``...).
        checkpoint: path of a checkpoint written after every epoch (atomic).
        progress: tqdm progress bars.
        measure_memory: measure saved-tensor bytes of training steps.
    """

    method: str = "vq"
    epochs: int = 100
    batch_size: int = 1024
    lr: float = 0.01
    weight_decay: float = 0.0
    optimizer: str = "adam"
    sampler: str = "random"
    num_parts: Optional[int] = None
    num_neighbors: tuple[int, ...] = (15, 10, 5)
    walk_length: int = 2
    saint_coverage: float = 50.0
    batch_nodes: str = "all"
    eval_every: int = 1
    patience: Optional[int] = None
    inference: str = "exact"
    eval_batch_size: int = 4096
    seed: int = 0
    device: str = "cpu"
    checkpoint: Optional[str] = None
    progress: bool = False
    measure_memory: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option."""
        choices = {"method": METHODS, "optimizer": OPTIMIZERS, "sampler": SAMPLERS,
                   "batch_nodes": ("train", "all"), "inference": INFERENCE}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"'TrainConfig': '{name}' must be one of {valid}, received "
                                 f"{getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_every", "eval_batch_size", "walk_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"'TrainConfig': '{name}' must be an int >= 1, "
                                 f"received {value!r}")
        if self.lr <= 0:
            raise ValueError(f"'TrainConfig': 'lr' must be > 0, received {self.lr!r}")
        if self.num_parts is not None and (not isinstance(self.num_parts, int)
                                           or self.num_parts < 1):
            raise ValueError(f"'TrainConfig': 'num_parts' must be an int >= 1 or None, "
                             f"received {self.num_parts!r}")
        if self.method != "vq" and self.inference == "vq":
            raise ValueError(f"'TrainConfig': 'inference' 'vq' needs method 'vq' (only VQ-GNN "
                             f"trains codebooks); received method {self.method!r}")
        check_fanouts("TrainConfig", self.num_neighbors)
        if not 0 < self.saint_coverage < math.inf:
            raise ValueError(f"'TrainConfig': 'saint_coverage' must be > 0 and finite, "
                             f"received {self.saint_coverage!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"'TrainConfig': 'patience' must be >= 1 or None, "
                             f"received {self.patience!r}")


@dataclass
class EpochLog:
    """One epoch's figures."""

    epoch: int
    loss: float
    seconds: float
    train: Optional[float] = None
    val: Optional[float] = None
    test: Optional[float] = None
    usage: Optional[float] = None
    perplexity: Optional[float] = None
    quantization_error: Optional[float] = None

    def line(self, epochs: int, metric: str) -> str:
        parts = [f"epoch {self.epoch:>3}/{epochs}", f"loss {self.loss:.4f}"]
        if self.val is not None:
            parts.append(f"{metric} train {self.train:.4f} val {self.val:.4f} "
                         f"test {self.test:.4f}")
        parts.append(f"{self.seconds:.2f} s")
        if self.usage is not None:
            parts.append(f"codebook use {self.usage:.2f} ppl {self.perplexity:.1f} "
                         f"qerr {self.quantization_error:.3f}")
        return " | ".join(parts)


@dataclass
class TrainResult:
    """What a training run produced: the figures of its JSON record."""

    method: str
    metric: str
    best_epoch: int
    best_val: float
    test: float
    selection_inference: str
    val_exact: float
    test_exact: float
    val_vq: Optional[float]
    test_vq: Optional[float]
    epochs_run: int
    median_epoch_seconds: float
    time_to_best_seconds: float
    peak_memory_bytes: Optional[int]
    memory_measure: str
    peak_rss_bytes: int
    rss_measure: str
    setup_seconds: float
    inference_seconds_exact: float
    inference_seconds_vq: Optional[float]
    history: list[EpochLog] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """A flat JSON-serialisable dict (history as a list of dicts)."""
        out = asdict(self)
        out["history"] = [asdict(h) for h in self.history]
        return out


def metis_cache() -> str:
    """Folder of cached METIS partitions: ``$VQGNN_DATA/metis`` (or
    ``~/.cache/vqgnn/data/metis``)."""
    from vqgnn.datasets.guard import default_root

    return default_root("metis")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains a :class:`~vqgnn.nn.VQGNN` on one graph.

    Args:
        model: the model (its ``num_nodes`` must be the graph's).
        data: a graph from :func:`vqgnn.datasets.load_dataset` (``x``, ``edge_index``,
            ``y``, masks, ``metric``).
        config: :class:`TrainConfig`.
        log: called with one line per epoch (default: silent).
        optimizer: an optimizer over ``model``'s parameters, in place of the one
            ``config.optimizer`` names (any ``torch.optim.Optimizer``).

    Example:
        >>> trainer = Trainer(model, data, TrainConfig(epochs=50, batch_size=512))
        >>> result = trainer.fit()
    """

    def __init__(self, model: VQGNN, data: Data, config: TrainConfig,
                 log: Optional[Callable[[str], None]] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        config.validate()
        # The peak RSS counts from here: samplers' set-up (METIS, GraphSAINT's
        # pre-sampling) and k-means belong to the run.
        self.rss_reset = reset_peak_rss()
        setup_start = time.perf_counter()
        if not isinstance(model, VQGNN):
            raise TypeError(f"'Trainer': 'model' must be a VQGNN, received "
                            f"{type(model).__name__}")
        if model.layers[0].num_nodes != data.num_nodes:
            raise ValueError(f"'Trainer': the model was built for "
                             f"{model.layers[0].num_nodes} nodes, the graph has {data.num_nodes}")
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.data = data
        self.log = log
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)
        self.graph = VQGraph(data.edge_index.to(self.device), data.num_nodes)
        self.masks = {s: data[f"{s}_mask"].to(self.device) for s in ("train", "val", "test")}
        self.train_idx = self.masks["train"].nonzero().view(-1)
        if self.train_idx.numel() == 0:
            raise ValueError("'Trainer': the graph has no training nodes (train_mask is empty)")
        self.multilabel = data.y.dim() == 2
        pool = (self.train_idx if config.batch_nodes == "train"
                else torch.arange(data.num_nodes, device=self.device))
        # Loss per training node, divided by the expected training nodes of a full batch,
        # so that every batch's gradients share one scale.
        self.loss_scale = (min(config.batch_size, pool.numel()) * self.train_idx.numel()
                           / pool.numel())
        self.sampler = self._make_sampler(pool)
        self.setup_seconds = time.perf_counter() - setup_start
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"'Trainer': 'optimizer' must be a torch.optim.Optimizer, "
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

    # ----------------------------------------------------------------- set-up
    def _num_parts(self) -> int:
        cfg = self.config
        if cfg.num_parts is not None:
            return cfg.num_parts
        return min(self.data.num_nodes, max(1, 4 * self.data.num_nodes // cfg.batch_size))

    def _make_sampler(self, pool: Tensor) -> Any:
        cfg = self.config
        n, edge_index = self.data.num_nodes, self.data.edge_index
        if cfg.method == "sage":
            fanouts = fanouts_for_layers(cfg.num_neighbors, self.model.num_layers)
            return NeighborBatches(edge_index, n, self.train_idx.cpu(), fanouts, cfg.batch_size)
        if cfg.method == "cluster":
            num_parts = self._num_parts()
            parts_per_batch = min(num_parts, max(1, round(num_parts * cfg.batch_size / n)))
            return ClusterBatches(edge_index, n, self.masks["train"], num_parts,
                                  parts_per_batch, seed=cfg.seed, cache_dir=metis_cache())
        if cfg.method == "saint":
            return SaintBatches(edge_index, n, self.masks["train"],
                                saint_roots(cfg.batch_size, cfg.walk_length), cfg.walk_length,
                                num_steps=max(1, -(-n // cfg.batch_size)),
                                coverage=cfg.saint_coverage, progress=cfg.progress)
        if cfg.sampler == "metis":
            parts = metis_partition(edge_index, n, self._num_parts(), seed=cfg.seed,
                                    cache_dir=metis_cache())
            return ClusterBatchSampler(pool.cpu(), cfg.batch_size, parts, seed=cfg.seed)
        return NodeBatchSampler(pool.cpu(), cfg.batch_size, seed=cfg.seed)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.model.parameters()
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)

    def prepare(self, init_codebooks: bool = True) -> None:
        """Exact first layer and (for ``'vq'``) k-means initialisation of the codebooks."""
        start = time.perf_counter()
        self._prepare(init_codebooks)
        self.setup_seconds += time.perf_counter() - start

    def _prepare(self, init_codebooks: bool) -> None:
        if self.config.method == "vq":
            if init_codebooks:
                self.model.prepare(self.x, self.graph, self.config.eval_batch_size,
                                   seed=self.config.seed, progress=self.config.progress)
            elif self.model.exact_first_layer:
                self.model.layers[0].set_constant_input(self.x, self.graph)
        self.prepared = True

    # ------------------------------------------------------------------- steps
    def _weighted_loss(self, out: Tensor, target: Tensor, weight: Union[Tensor, float]
                       ) -> Tensor:
        """``sum(weight * loss)`` over the rows of ``out`` (cross-entropy, or binary
        cross-entropy summed over the tasks of a multi-label target)."""
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(out, target.float(), reduction="none")
            loss = loss.sum(-1)
        else:
            loss = F.cross_entropy(out, target, reduction="none")
        return (loss * weight).sum()

    def _loss(self, out: Tensor, nodes: Tensor, reduction_scale: float) -> Tensor:
        labeled = self.masks["train"][nodes]
        return self._weighted_loss(out[labeled], self.y[nodes][labeled], 1.0 / reduction_scale)

    def _record_peak(self, meter: Optional[SavedTensorMeter]) -> None:
        if meter is not None:
            measured = meter.cuda_peak if meter.cuda_peak is not None else meter.bytes
            self.peak_bytes = max(self.peak_bytes, measured)

    def _subgraph_step(self, sub: SubgraphBatch) -> float:
        """One step of a sampling baseline: the model run exactly on the subgraph."""
        model, opt = self.model, self.optimizer
        opt.zero_grad(set_to_none=True)
        n_id = sub.n_id.to(self.device)
        edge_index = sub.edge_index.to(self.device)
        weight = None if sub.edge_weight is None else sub.edge_weight.to(self.device)
        graph = VQGraph(edge_index, sub.num_nodes, weight)
        loss_index = sub.loss_index.to(self.device)
        with (SavedTensorMeter(self.device) if self.config.measure_memory
              else nullcontext()) as meter:
            xb = self.x[n_id]
            if meter is not None:
                meter.add(xb, edge_index)
            out = model(xb, graph)[loss_index]
            loss = self._weighted_loss(out, self.y[n_id[loss_index]],
                                       sub.loss_weight.to(self.device))
            loss.backward()
        self._record_peak(meter)
        opt.step()
        return loss.item()

    def _step(self, batch: Optional[Tensor]) -> float:
        model, opt = self.model, self.optimizer
        opt.zero_grad(set_to_none=True)
        measure = self.config.measure_memory
        with SavedTensorMeter(self.device) if measure else nullcontext() as meter:
            if batch is None:  # full graph
                if meter is not None:
                    meter.add(self.x, self.graph.edge_index)
                nodes = torch.arange(self.data.num_nodes, device=self.device)
                loss = self._loss(model(self.x, self.graph), nodes, self.train_idx.numel())
            else:
                xb = self.x[batch]
                if meter is not None:
                    meter.add(xb, batch)
                loss = self._loss(model(xb, self.graph, batch), batch, self.loss_scale)
            loss.backward()
        self._record_peak(meter)
        opt.step()
        if batch is not None:
            model.update_codebooks()
        return loss.item()

    def train_epoch(self) -> float:
        """One epoch; returns the mean batch loss."""
        self.model.train()
        if self.config.method == "full":
            return self._step(None)
        losses = []
        bar = tqdm(self.sampler, total=len(self.sampler), desc=f"epoch {self.epoch + 1}",
                   disable=not self.config.progress, leave=False)
        subgraphs = self.config.method in SUBGRAPH_METHODS
        for batch in bar:
            if subgraphs:
                if batch.loss_index.numel() == 0:
                    continue  # a subgraph without training nodes has no loss
                losses.append(self._subgraph_step(batch))
            else:
                losses.append(self._step(batch.to(self.device)))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if not losses:
            return float("nan")
        return sum(losses) / len(losses)

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, mode: str = "exact") -> Tensor:
        """(N, C) outputs of all nodes: ``'exact'`` layer-wise or ``'vq'`` mini-batch inference."""
        if mode not in INFERENCE:
            raise ValueError(f"'Trainer.predict': 'mode' must be one of {INFERENCE}, "
                             f"received {mode!r}")
        self.model.eval()
        if mode == "exact":
            return self.model.inference(self.x, self.graph, self.config.eval_batch_size,
                                        progress=self.config.progress)
        nodes = torch.arange(self.data.num_nodes, device=self.device)
        return torch.cat([self.model(self.x[b], self.graph, b)
                          for b in nodes.split(self.config.eval_batch_size)])

    def evaluate(self, mode: str = "exact") -> dict[str, float]:
        """The metric on the train, val and test nodes."""
        from vqgnn.datasets import score

        out = self.predict(mode).cpu()
        return {split: score(self.data, out, self.masks[split].cpu())
                for split in ("train", "val", "test")}

    # ---------------------------------------------------------------- training
    def fit(self, resume_from: Optional[Union[str, os.PathLike]] = None) -> TrainResult:
        """Train until ``epochs`` or early stopping; returns the selected model's figures.

        Args:
            resume_from: a checkpoint written by this trainer (:meth:`save_checkpoint`).
        """
        cfg = self.config
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        elif not self.prepared:
            seed_everything(cfg.seed)
            self.prepare()
        metric = str(self.data.metric)
        while self.epoch < cfg.epochs and not self._stopped():
            with Timer(self.device) as timer:
                loss = self.train_epoch()
            self.epoch += 1
            self.elapsed += timer.seconds
            entry = EpochLog(self.epoch, loss, timer.seconds)
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                scores = self.evaluate(cfg.inference)
                entry.train, entry.val, entry.test = scores["train"], scores["val"], scores["test"]
                if scores["val"] > self.best_val:
                    self.best_val, self.best_epoch = scores["val"], self.epoch
                    self.time_to_best = self.elapsed
                    self.best_state = {k: v.detach().cpu().clone()
                                       for k, v in self.model.state_dict().items()}
                    self.bad_evals = 0
                else:
                    self.bad_evals += 1
            health = self.model.codebook_health() if cfg.method == "vq" else None
            if health is not None:
                entry.usage, entry.perplexity = health.usage, health.perplexity
                entry.quantization_error = health.quantization_error
            self.history.append(entry)
            if self.log is not None:
                self.log(entry.line(cfg.epochs, metric))
            if cfg.checkpoint:
                self.save_checkpoint(cfg.checkpoint)
        return self.result()

    def _stopped(self) -> bool:
        patience = self.config.patience
        return patience is not None and self.bad_evals >= patience

    def result(self) -> TrainResult:
        """Load the best model and measure it by both inference modes."""
        cfg = self.config
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        with Timer(self.device) as exact_timer:
            exact = self.evaluate("exact")
        vq: Optional[dict[str, float]] = None
        vq_seconds = None
        if cfg.method == "vq":
            with Timer(self.device) as vq_timer:
                vq = self.evaluate("vq")
            vq_seconds = vq_timer.seconds
        chosen = exact if cfg.inference == "exact" or vq is None else vq
        measure = ("torch.cuda.max_memory_allocated per training step"
                   if self.device.type == "cuda" else
                   "bytes of tensors saved for backward plus step inputs (saved-tensor hooks)")
        times = [h.seconds for h in self.history]
        return TrainResult(
            method=cfg.method, metric=str(self.data.metric), best_epoch=self.best_epoch,
            best_val=chosen["val"], test=chosen["test"], selection_inference=cfg.inference,
            val_exact=exact["val"], test_exact=exact["test"],
            val_vq=None if vq is None else vq["val"], test_vq=None if vq is None else vq["test"],
            epochs_run=self.epoch,
            median_epoch_seconds=statistics.median(times) if times else float("nan"),
            time_to_best_seconds=self.time_to_best,
            peak_memory_bytes=self.peak_bytes if cfg.measure_memory else None,
            memory_measure=measure, peak_rss_bytes=peak_rss_bytes(),
            setup_seconds=self.setup_seconds,
            rss_measure=("process peak RSS since the Trainer was built (Linux VmHWM, reset)"
                         if self.rss_reset else
                         "process peak RSS over its lifetime"),
            inference_seconds_exact=exact_timer.seconds, inference_seconds_vq=vq_seconds,
            history=list(self.history))

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        """Everything needed to resume exactly, written atomically."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": _rng_state(),
            "epoch": self.epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_evals": self.bad_evals,
            "elapsed": self.elapsed,
            "time_to_best": self.time_to_best,
            "peak_bytes": self.peak_bytes,
            "history": [asdict(h) for h in self.history],
            "config": asdict(self.config),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: Union[str, os.PathLike]) -> None:
        """Restore a :meth:`save_checkpoint` state (the model must have the same shape)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"'Trainer.load_checkpoint': no checkpoint at {path}")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.prepare(init_codebooks=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.best_state = state["best_state"]
        self.bad_evals = state["bad_evals"]
        self.elapsed, self.time_to_best = state["elapsed"], state["time_to_best"]
        self.peak_bytes = state["peak_bytes"]
        self.history = [EpochLog(**h) for h in state["history"]]


def clone_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with ``changes``."""
    new = copy.copy(config)
    for key, value in changes.items():
        if not hasattr(new, key):
            raise ValueError(f"clone_config: unknown option {key!r}")
        setattr(new, key, value)
    return new
