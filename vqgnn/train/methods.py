"""Training methods as strategies: how a method prepares, makes batches and computes a loss.

The :class:`~vqgnn.train.Trainer` owns the loop (optimizer steps, evaluation, model
selection, early stopping, meters, progress, logs and checkpoints) and never tests a
method's name: everything that varies by method sits behind :class:`TrainingMethod`.

* :class:`VQMethod` (``'vq'``): VQ-GNN mini-batches of a :class:`~vqgnn.nn.VQGNN`;
* :class:`FullGraphMethod` (``'full'``): one step per epoch on the whole graph;
* :class:`SubgraphMethod`, parameterised by its loader: :class:`NeighborSampling`
  (``'sage'``, GraphSAGE), :class:`ClusterGCN` (``'cluster'``) and :class:`GraphSAINT`
  (``'saint'``). The baselines train any PyG model with ``forward(x, edge_index)`` (for
  example ``torch_geometric.nn.models.GraphSAGE``), running PyG's own convolutions, or a
  ``VQGNN`` (whose convolutions then run as the PyG layers they wrap).

Each method owns an options dataclass that validates itself on construction; an option of
another method is a :class:`~vqgnn.errors.ConfigError` naming it. A new method is a
subclass plus :func:`register_method`.

Example:
    >>> @register_method
    ... class MyMethod(TrainingMethod):
    ...     name = "mine"
    ...     Options = MyOptions
    ...     def batches(self): ...
    ...     def loss(self, batch): ...
    >>> Trainer(model, data, TrainConfig.create("mine", epochs=10)).fit()
"""
from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Iterable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data

from vqgnn.baselines import (
    ClusterBatches,
    NeighborBatches,
    SaintBatches,
    SubgraphBatch,
    saint_roots,
)
from vqgnn.baselines.loaders import check_fanouts, fanouts_for_layers
from vqgnn.batching.graph import VQGraph
from vqgnn.batching.samplers import (
    ClusterBatchSampler,
    NodeBatchSampler,
    metis_partition,
    part_batches,
)
from vqgnn.datasets.metrics import score
from vqgnn.distributed import SingleProcess
from vqgnn.errors import ConfigError, ConfigTypeError
from vqgnn.nn.models import VQGNN
from vqgnn.quantize.codebook import CodebookHealth

SAMPLERS = ("random", "metis")
#: The inference mode through the codebooks (VQ-GNN's mini-batch inference).
VQ_INFERENCE = "vq"
BATCH_NODES = ("all", "train")
INFERENCE_BATCHES = ("metis", "random")


def metis_cache() -> str:
    """Folder of cached METIS partitions: ``$VQGNN_DATA/metis`` (or
    ``~/.cache/vqgnn/data/metis``)."""
    from vqgnn.datasets.guard import default_root

    return default_root("metis")


def metis_parts(owner: str, num_nodes: int, batch_size: int, num_parts: Optional[int]) -> int:
    """METIS parts: ``num_parts``, or about 4 per batch; at most ``num_nodes``."""
    parts = num_parts or min(num_nodes, max(1, 4 * num_nodes // batch_size))
    if parts > num_nodes:
        raise ConfigError(f"'{owner}': 'num_parts' must be at most the number of nodes "
                          f"({num_nodes}), received {parts}")
    return parts


# ------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class MethodOptions:
    """Base of the methods' options: every subclass validates itself on construction."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~vqgnn.errors.ConfigError` naming the first bad option."""

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def accepts(cls, key: str, values: dict[str, Any]) -> bool:
        """Whether option ``key`` applies given the other ``values`` being set (the
        command line passes a flag to each listed method it applies to)."""
        return key in cls.option_names()

    def _check_int(self, name: str, optional: bool = False) -> None:
        value = getattr(self, name)
        if optional and value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            extra = " or None" if optional else ""
            raise ConfigError(f"'{type(self).__name__}': '{name}' must be an int >= 1{extra}, "
                              f"received {value!r}")

    def _check_choice(self, name: str, valid: tuple[str, ...]) -> None:
        if getattr(self, name) not in valid:
            raise ConfigError(f"'{type(self).__name__}': '{name}' must be one of {valid}, "
                              f"received {getattr(self, name)!r}")


@dataclass(frozen=True)
class VQOptions(MethodOptions):
    """Options of VQ-GNN training (``'vq'``).

    Attributes:
        batch_size: nodes per mini-batch.
        sampler: ``'random'`` node batches or ``'metis'`` batches of whole METIS parts.
        num_parts: METIS parts of ``sampler='metis'`` (default: about 4 per batch).
        batch_nodes: ``'all'``: batches partition all nodes (the loss is on the training
            nodes among them), which refreshes every node's codeword assignment each epoch;
            ``'train'``: batches partition the training nodes only (assignments of the
            other nodes then stay as k-means left them, and accuracy suffers: on Tolokers,
            split 0, GCN, 71.1 against 72.3 ROC-AUC).
        loss_aware_backward: the backward term sends no gradient message from out-of-batch
            nodes whose gradient is exactly zero: at the last layer the nodes without a
            loss (:meth:`~vqgnn.nn.VQGNN.set_loss_nodes`). Experimental (see the README's
            stability section).
        inference_batch_size: nodes per batch of VQ inference (``'vq'`` mode; default:
            ``batch_size``). Its memory is bounded by this and K, whatever N is.
        inference_memory_mb: instead, the largest VQ inference batch whose activations fit
            in this many MB, from one probe batch measured by
            :class:`~vqgnn.train.meters.TensorMemoryMeter` and scaled linearly.
        inference_batches: ``'metis'`` (METIS parts: most neighbours of a batch are in it,
            so fewer messages go through the codebooks) or ``'random'``.
        inference_refresh: passes that re-assign every node by its eval-mode inputs before
            the pass that predicts (:meth:`~vqgnn.nn.VQGNN.vq_batches`), or ``'auto'``:
            VQ inference without and with one refresh pass, keeping the one with the better
            validation metric (the refresh helps on most graphs and hurts on some, e.g.
            amherst41 with GCN; see the README). The record's ``vq_inference`` says which.
        init_nodes: initialise the codebooks by k-means on the layer inputs of this many
            random nodes, with memory bounded by the batch and K
            (:meth:`~vqgnn.nn.VQGNN.prepare`); None: exact layer-wise inputs of every
            node (O(N * hidden) memory at set-up).
        search_every: run the nearest-codeword search (b x K distances per quantized
            layer) on the first of every ``search_every`` steps of an epoch; the steps
            between add their batch's pairs to the codewords the nodes are assigned to
            already (their last search's) and keep the assignments
            (:meth:`~vqgnn.nn.VQGNN.update_codebooks`). 1: every step (the default).
    """

    batch_size: int = 1024
    sampler: str = "random"
    num_parts: Optional[int] = None
    batch_nodes: str = "all"
    loss_aware_backward: bool = False
    inference_batch_size: Optional[int] = None
    inference_memory_mb: Optional[float] = None
    inference_batches: str = "metis"
    inference_refresh: Union[int, str] = "auto"
    init_nodes: Optional[int] = None
    search_every: int = 1

    @classmethod
    def accepts(cls, key: str, values: dict[str, Any]) -> bool:
        if key == "num_parts":
            return values.get("sampler") == "metis"
        return super().accepts(key, values)

    def validate(self) -> None:
        self._check_int("batch_size")
        self._check_choice("sampler", SAMPLERS)
        self._check_int("num_parts", optional=True)
        self._check_choice("batch_nodes", BATCH_NODES)
        self._check_int("inference_batch_size", optional=True)
        self._check_int("init_nodes", optional=True)
        self._check_int("search_every")
        self._check_choice("inference_batches", INFERENCE_BATCHES)
        memory = self.inference_memory_mb
        if memory is not None and (not isinstance(memory, (int, float)) or isinstance(
                memory, bool) or not 0 < memory < math.inf):
            raise ConfigError(f"'VQOptions': 'inference_memory_mb' must be a number > 0 or "
                              f"None, received {memory!r}")
        if memory is not None and self.inference_batch_size is not None:
            raise ConfigError(f"'VQOptions': give 'inference_batch_size' "
                              f"({self.inference_batch_size!r}) or 'inference_memory_mb' "
                              f"({memory!r}), not both")
        refresh = self.inference_refresh
        if refresh != "auto" and (not isinstance(refresh, int) or isinstance(refresh, bool)
                                  or refresh < 0):
            raise ConfigError(f"'VQOptions': 'inference_refresh' must be an int >= 0 or "
                              f"'auto', received {refresh!r}")
        if self.num_parts is not None and self.sampler != "metis":
            raise ConfigError(f"'VQOptions': 'num_parts' applies to sampler 'metis' only, "
                              f"received sampler {self.sampler!r} with num_parts "
                              f"{self.num_parts!r}")


@dataclass(frozen=True)
class FullGraphOptions(MethodOptions):
    """Full-graph training (``'full'``) has no options of its own."""


@dataclass(frozen=True)
class NeighborOptions(MethodOptions):
    """GraphSAGE neighbour sampling (``'sage'``, PyG's ``NeighborLoader``).

    Attributes:
        batch_size: seed (training) nodes per step.
        num_neighbors: fan-outs per layer, outermost hop last (the first ``num_layers``
            are used; ``-1``: all neighbours).
    """

    batch_size: int = 1024
    num_neighbors: tuple[int, ...] = (15, 10, 5)

    def validate(self) -> None:
        self._check_int("batch_size")
        check_fanouts(type(self).__name__, self.num_neighbors)
        object.__setattr__(self, "num_neighbors", tuple(self.num_neighbors))


@dataclass(frozen=True)
class ClusterOptions(MethodOptions):
    """Cluster-GCN (``'cluster'``): METIS parts of about ``batch_size / 4`` nodes, four
    per step (PyG's ``ClusterData``/``ClusterLoader``, METIS by pymetis).

    Attributes:
        batch_size: nodes per step (about).
        num_parts: METIS parts (default: about 4 per batch).
    """

    batch_size: int = 1024
    num_parts: Optional[int] = None

    def validate(self) -> None:
        self._check_int("batch_size")
        self._check_int("num_parts", optional=True)


@dataclass(frozen=True)
class SaintOptions(MethodOptions):
    """GraphSAINT random walks (``'saint'``) from ``batch_size / (walk_length + 1)`` roots,
    with its loss and aggregator normalisation.

    Attributes:
        batch_size: nodes per step (about).
        walk_length: random-walk length.
        saint_coverage: pre-sampling for the normalisation, in samples per node.
    """

    batch_size: int = 1024
    walk_length: int = 2
    saint_coverage: float = 50.0

    def validate(self) -> None:
        self._check_int("batch_size")
        self._check_int("walk_length")
        if not isinstance(self.saint_coverage, (int, float)) or not (
                0 < self.saint_coverage < math.inf):
            raise ConfigError(f"'SaintOptions': 'saint_coverage' must be > 0 and finite, "
                              f"received {self.saint_coverage!r}")


# ------------------------------------------------------------------------------ context
@dataclass
class TrainContext:
    """What a method works on: the model and the graph on the training device.

    Attributes:
        model: the model being trained.
        data: the graph (on the CPU, as loaded).
        x: (N, F) features on ``device``.
        y: (N,) labels (or (N, T) multi-label targets) on ``device``.
        masks: ``'train'``, ``'val'``, ``'test'`` boolean masks on ``device``.
        train_idx: (n_train,) training node ids on ``device``.
        graph: the full graph as a :class:`~vqgnn.batching.VQGraph` on ``device``.
        device: the training device.
        seed: the run's seed.
        eval_batch_size: nodes per inference chunk.
        progress: show progress bars.
        parallel: the data-parallel strategy (:mod:`vqgnn.distributed`; one process by
            default).
        forward_model: the module that runs training forwards when not ``model`` itself:
            its ``DistributedDataParallel`` wrapper under torchrun (set by the trainer).
    """

    model: torch.nn.Module
    data: Data
    x: Tensor
    y: Tensor
    masks: dict[str, Tensor]
    train_idx: Tensor
    graph: VQGraph
    device: torch.device
    seed: int
    eval_batch_size: int
    progress: bool
    parallel: SingleProcess = field(default_factory=SingleProcess)
    forward_model: Optional[torch.nn.Module] = None

    @property
    def train_model(self) -> torch.nn.Module:
        """The module of training forwards (``forward_model``, else ``model``)."""
        return self.model if self.forward_model is None else self.forward_model

    def features(self, x: Tensor) -> Tensor:
        """Feature rows ``x`` (stored in ``TrainConfig.feature_dtype``) in the model's
        floating dtype, for models that do not cast them themselves (a plain PyG model)."""
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()),
                     torch.get_default_dtype())
        return x if x.dtype == dtype or not x.is_floating_point() else x.to(dtype)

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    @property
    def multilabel(self) -> bool:
        return self.y.dim() == 2

    def weighted_loss(self, out: Tensor, target: Tensor, weight: Union[Tensor, float]) -> Tensor:
        """``sum(weight * loss)`` over the rows of ``out`` (cross-entropy, or binary
        cross-entropy summed over the tasks of a multi-label target)."""
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(out, target.float(), reduction="none")
            loss = loss.sum(-1)
        else:
            loss = F.cross_entropy(out, target, reduction="none")
        return (loss * weight).sum()

    def node_loss(self, out: Tensor, nodes: Tensor, scale: float) -> Tensor:
        """The loss of the training nodes among ``nodes`` (rows of ``out``), over ``scale``."""
        labeled = self.masks["train"].index_select(0, nodes)
        return self.weighted_loss(out[labeled], self.y.index_select(0, nodes)[labeled],
                                  1.0 / scale)


class Step(NamedTuple):
    """A training step's loss and its inputs (counted in the step's memory)."""

    loss: Tensor
    inputs: tuple[Tensor, ...]


def _accepts(module: torch.nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _check_vqgnn_nodes(owner: str, model: torch.nn.Module, num_nodes: int) -> None:
    if isinstance(model, VQGNN) and model.num_nodes != num_nodes:
        raise ConfigError(f"'{owner}': the model was built for {model.num_nodes} nodes, the "
                          f"graph has {num_nodes}")


@torch.no_grad()
def exact_predict(ctx: TrainContext, message_error_nodes: Optional[Tensor] = None) -> Tensor:
    """(N, C) exact outputs of all nodes: layer-wise in chunks for a ``VQGNN`` (which also
    measures its codebooks' message errors on ``message_error_nodes``, if given), one
    full-graph forward ``model(x, edge_index)`` for any other model."""
    model = ctx.model
    if isinstance(model, VQGNN):
        return model.inference(ctx.x, ctx.graph, ctx.eval_batch_size, progress=ctx.progress,
                               message_error_nodes=message_error_nodes)
    return model(ctx.features(ctx.x), ctx.graph.edge_index)


# ------------------------------------------------------------------------------ protocol
class TrainingMethod:
    """How one method trains: the protocol the :class:`~vqgnn.train.Trainer` drives.

    The trainer calls, in order: :meth:`check_model`, :meth:`check_schedule` and
    :meth:`setup` (once, timed as set-up), :meth:`prepare` (before the first epoch, or on
    resume), then per epoch :meth:`batches`; per batch :meth:`loss` (None skips the
    batch), ``backward()``, the optimizer step and :meth:`after_step`. Evaluation calls
    :meth:`predict` with one of :attr:`inference_modes`; :meth:`health` is logged each
    epoch; :meth:`state_dict` travels in checkpoints.

    Subclasses set :attr:`name`, :attr:`Options` and override what differs.
    """

    #: The registry name (``--method``).
    name: ClassVar[str] = ""
    #: The options dataclass.
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: Inference modes of :meth:`predict`; the first is the default.
    inference_modes: ClassVar[tuple[str, ...]] = ("exact",)
    #: Why the method cannot run on several ranks (torchrun), or None when it can: its
    #: batches are then shared between the ranks (:mod:`vqgnn.distributed`).
    no_data_parallel: ClassVar[Optional[str]] = None

    def __init__(self, options: Optional[MethodOptions] = None) -> None:
        if options is None:
            options = self.Options()
        if type(options) is not self.Options:
            raise ConfigTypeError(f"'{type(self).__name__}': 'options' must be a "
                                  f"{self.Options.__name__}, received {type(options).__name__}")
        self.options = options
        self._ctx: Optional[TrainContext] = None

    @property
    def ctx(self) -> TrainContext:
        if self._ctx is None:
            raise RuntimeError(f"'{type(self).__name__}': setup() was not called")
        return self._ctx

    def check_model(self, model: torch.nn.Module, data: Data) -> None:
        """Raise :class:`~vqgnn.errors.ConfigError` unless the method can train ``model``."""
        if not isinstance(model, torch.nn.Module):
            raise ConfigTypeError(f"'{type(self).__name__}': 'model' must be a torch.nn.Module, "
                                  f"received {type(model).__name__}")

    def check_schedule(self, model: torch.nn.Module, warmup_epochs: int) -> None:
        """Warn when the learning-rate schedule does not suit training ``model`` this way
        (``warmup_epochs``: the run's lr warm-up); nothing by default."""

    def setup(self, ctx: TrainContext) -> None:
        """Once, before training: keep the context and build what batches need."""
        self._ctx = ctx

    def prepare(self, init: bool) -> None:
        """Before the first epoch (``init=True``) or after a resume (``init=False``: the
        checkpoint restores what ``init`` would have computed)."""

    def batches(self) -> Iterable[Any]:
        """One epoch's batches."""
        raise NotImplementedError

    def num_batches(self) -> int:
        """Batches per epoch (for progress bars)."""
        raise NotImplementedError

    def loss(self, batch: Any) -> Optional[Step]:
        """The loss of one batch (None: the batch has no loss and is skipped)."""
        raise NotImplementedError

    def after_step(self, batch: Any) -> None:
        """After the optimizer step."""

    def predict(self, mode: str) -> Tensor:
        """(N, C) outputs of all nodes by inference ``mode`` (one of
        :attr:`inference_modes`)."""
        self.check_mode(mode)
        return exact_predict(self.ctx)

    def check_mode(self, mode: str) -> None:
        if mode not in self.inference_modes:
            raise ConfigError(f"'{type(self).__name__}.predict': 'mode' must be one of "
                              f"{self.inference_modes}, received {mode!r}")

    def health(self) -> Optional[CodebookHealth]:
        """Codebook figures of the epoch's log, if the method keeps codebooks."""
        return None

    def inference_summary(self) -> Optional[dict[str, Any]]:
        """How the method's own inference mode ran (for the record), or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ConfigError(f"'{type(self).__name__}.load_state_dict': expected an empty "
                              f"state, received keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


METHODS: dict[str, type[TrainingMethod]] = {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Register a :class:`TrainingMethod` subclass under its ``name`` (a decorator).

    Registering a name again replaces the earlier class.
    """
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise ConfigTypeError(f"register_method: expected a TrainingMethod subclass, "
                              f"received {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise ConfigError(f"register_method: '{cls.__name__}.name' must be a non-empty str, "
                          f"received {cls.name!r}")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, MethodOptions)):
        raise ConfigTypeError(f"register_method: '{cls.__name__}.Options' must be a "
                              f"MethodOptions subclass, received {cls.Options!r}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[TrainingMethod]:
    """The registered class of method ``name``."""
    if name not in METHODS:
        raise ConfigError(f"'method' must be one of {tuple(METHODS)}, received {name!r}")
    return METHODS[name]


def reads_codebooks(method: str) -> bool:
    """Whether method ``method`` reads its model's codebooks (it has VQ inference); the
    others build a model with codebooks and never use them."""
    return VQ_INFERENCE in method_class(method).inference_modes


def data_parallel_refusal(method: str, world_size: int) -> Optional[str]:
    """Why method ``method`` cannot run on ``world_size`` ranks (``"'full' cannot run on 2
    ranks: ..."``), or None when it can."""
    reason = method_class(method).no_data_parallel
    if world_size > 1 and reason is not None:
        return f"{method!r} cannot run on {world_size} ranks: {reason}"
    return None


def make_options(method: str, **options: Any) -> MethodOptions:
    """The options dataclass of ``method`` from keyword options; an option of another
    method (or of none) is an error naming it and the methods that take it."""
    cls = method_class(method).Options
    own = set(cls.option_names())
    foreign = [k for k in options if k not in own]
    if foreign:
        key = foreign[0]
        owners = [name for name, m in METHODS.items() if key in m.Options.option_names()]
        valid = ", ".join(sorted(own)) or "none"
        if not owners:
            raise ConfigError(f"unknown option {key!r} (no method takes it; {method!r} takes: "
                              f"{valid})")
        raise ConfigError(f"option {key!r} does not apply to method {method!r} (it is an "
                          f"option of {', '.join(owners)}; {method!r} takes: {valid})")
    return cls(**options)


# ------------------------------------------------------------------------------ methods
@register_method
class VQMethod(TrainingMethod):
    """VQ-GNN: mini-batches of nodes; messages from outside the batch through the
    codebooks, which are updated after every step (:meth:`~vqgnn.nn.VQGNN.update_codebooks`).

    Inference modes: ``'exact'`` (layer-wise, every message exact, in chunks of
    ``eval_batch_size``) and ``'vq'`` (mini-batch inference through the codebooks,
    :meth:`~vqgnn.nn.VQGNN.vq_batches`: by default over METIS batches of the training
    ``batch_size``, after one pass that refreshes every node's assignments from eval-mode
    inputs; see :class:`VQOptions`' ``inference_*`` options).
    """

    name = "vq"
    Options = VQOptions
    inference_modes = ("exact", VQ_INFERENCE)
    options: VQOptions

    def check_model(self, model: torch.nn.Module, data: Data) -> None:
        if not isinstance(model, VQGNN):
            raise ConfigTypeError(f"'VQMethod': 'model' must be a VQGNN, received "
                                  f"{type(model).__name__} (VQ-GNN training needs its VQConv "
                                  f"layers)")
        _check_vqgnn_nodes("VQMethod", model, data.num_nodes)

    @property
    def model(self) -> VQGNN:
        return self.ctx.model  # type: ignore[return-value]

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        opts = self.options
        n = ctx.num_nodes
        pool = (ctx.train_idx if opts.batch_nodes == "train"
                else torch.arange(n, device=ctx.device))
        # Loss per training node, divided by the expected training nodes of a full batch,
        # so that every batch's gradients share one scale.
        self.loss_scale = (min(opts.batch_size, pool.numel()) * ctx.train_idx.numel()
                           / pool.numel())
        if opts.sampler == "metis":
            num_parts = metis_parts("VQOptions", n, opts.batch_size, opts.num_parts)
            parts = metis_partition(ctx.graph.edge_index.cpu(), n, num_parts, seed=ctx.seed,
                                    cache_dir=metis_cache())
            self.sampler: Union[NodeBatchSampler, ClusterBatchSampler] = ClusterBatchSampler(
                pool.cpu(), opts.batch_size, parts, seed=ctx.seed)
        else:
            self.sampler = NodeBatchSampler(pool.cpu(), opts.batch_size, seed=ctx.seed)
        # A fixed batch (seeded) on which every exact evaluation measures the codebooks'
        # message errors (VQConv.message_error).
        generator = torch.Generator().manual_seed(ctx.seed)
        # (cloned: a slice would keep the whole (N,) permutation alive)
        self.error_nodes = torch.randperm(n, generator=generator)[:min(opts.batch_size, n)].clone(
            ).to(ctx.device)
        self._errors_fresh = False
        self._steps = 0  # steps taken in the current epoch (reset by batches())
        self._inference_batches: Optional[list[Tensor]] = None
        self._probed_size: Optional[int] = None
        self._prepared = False  # prepare() ran: the codebooks that VQ inference reads
        # What the last VQ inference used ('auto': the choice and its validation scores).
        self._refresh_chosen: Optional[int] = None
        self._refresh_scores: Optional[dict[int, float]] = None

    def prepare(self, init: bool) -> None:
        ctx, model = self.ctx, self.model
        if init:
            model.prepare(ctx.x, ctx.graph, ctx.eval_batch_size, seed=ctx.seed,
                          progress=ctx.progress, init_nodes=self.options.init_nodes)
        elif model.exact_first_layer:
            model.layers[0].set_constant_input(ctx.x, ctx.graph)
        if self.options.loss_aware_backward:
            model.set_loss_nodes(ctx.masks["train"], ctx.graph)
        self._prepared = True  # only once all of it ran

    def batches(self) -> Iterable[Tensor]:
        device = self.ctx.device
        self._steps = 0  # this epoch's steps taken (after_step): they decide the searches
        return (batch.to(device) for batch in self.sampler)

    def num_batches(self) -> int:
        return len(self.sampler)

    def loss(self, batch: Tensor) -> Step:
        ctx = self.ctx
        xb = ctx.x.index_select(0, batch)  # on the CPU several times faster than x[batch]
        out = ctx.train_model(xb, ctx.graph, batch)
        return Step(ctx.node_loss(out, batch, self.loss_scale), (xb, batch))

    def after_step(self, batch: Tensor) -> None:
        # Steps 0, k, 2k, ... of the epoch search: the same steps on every rank (each
        # takes as many), and after a resume (which starts at an epoch). A codebook not
        # yet initialised assigns its batch by k-means at its first update, which every
        # rank must then exchange: that step searches too (host flags, no device sync).
        layers = self.model.quantized_layers
        search = (self._steps % self.options.search_every == 0
                  or any(layer.has_codebook and not layer.initialized for layer in layers))
        self._steps += 1
        self.model.update_codebooks(search=search)
        # Under torchrun, every rank learns the other ranks' refreshed assignments (a
        # step without the search refreshes none: every rank skips it alike).
        if search:
            self.ctx.parallel.exchange_assignments(layers, batch, self.sampler.max_batch_size)

    @torch.no_grad()
    def predict(self, mode: str) -> Tensor:
        self.check_mode(mode)
        ctx = self.ctx
        if mode == "exact":
            # The exact pass also measures each codebook's message error on a fixed batch.
            self._errors_fresh = True
            return exact_predict(ctx, self.error_nodes)
        if not self._prepared:
            raise ConfigError("'Trainer.predict': mode 'vq' reads the codebooks (and the exact "
                              "first layer's cached aggregation), which fit() or prepare() "
                              "sets up; call one of them first, or use mode 'exact'")
        refresh = self.options.inference_refresh
        if refresh == "auto":
            return self._auto_refresh()
        self._refresh_chosen = int(refresh)
        return self.model.vq_inference(ctx.x, ctx.graph, self.inference_batches(),
                                       refresh=int(refresh), progress=ctx.progress)

    def _auto_refresh(self) -> Tensor:
        """``inference_refresh='auto'``: VQ inference as training left the assignments,
        then with one refresh pass; the outputs (and assignments) of the one with the
        better validation metric are kept (ties keep the refresh). Three passes over the
        batches; memory as one VQ inference, plus the other variant's (N, C) outputs and a
        copy of the (N,) assignments per layer until the choice."""
        ctx, model = self.ctx, self.model
        batches = self.inference_batches()
        stale = model.assignments()
        kept = model.vq_inference(ctx.x, ctx.graph, batches, refresh=0, progress=ctx.progress)
        fresh = model.vq_inference(ctx.x, ctx.graph, batches, refresh=1, progress=ctx.progress)
        val = ctx.masks["val"]
        if not bool(val.any()):  # nothing to choose by: the refresh, as refresh=1
            self._refresh_chosen = 1
            return fresh
        mask = val.cpu()
        self._refresh_scores = {0: score(ctx.data, kept.cpu(), mask),
                                1: score(ctx.data, fresh.cpu(), mask)}
        if self._refresh_scores[0] > self._refresh_scores[1]:
            model.restore_assignments(stale)
            self._refresh_chosen = 0
            return kept
        self._refresh_chosen = 1
        return fresh

    #: The options :meth:`set_inference` may change after training.
    INFERENCE_OPTIONS = ("inference_batch_size", "inference_memory_mb", "inference_batches",
                         "inference_refresh")

    def set_inference(self, **changes: Any) -> None:
        """Change VQ inference's options (``inference_batch_size``, ``inference_memory_mb``,
        ``inference_batches``, ``inference_refresh``) of a set-up method, e.g. to evaluate
        one trained model at several batch sizes; the cached batches are dropped.

        Example:
            >>> trainer.method.set_inference(inference_batch_size=65536)
            >>> out = trainer.predict("vq")
        """
        unknown = sorted(set(changes) - set(self.INFERENCE_OPTIONS))
        if unknown:
            raise ConfigError(f"'VQMethod.set_inference': unknown option(s) {unknown}; "
                              f"expected some of {list(self.INFERENCE_OPTIONS)}")
        self.options = replace(self.options, **changes)  # validated again
        self._inference_batches = None
        self._probed_size = None

    def inference_batches(self) -> list[Tensor]:
        """VQ inference's batches (cached): METIS parts or a random partition, of
        :meth:`inference_batch_size` nodes."""
        if self._inference_batches is None:
            ctx, opts = self.ctx, self.options
            n, size = ctx.num_nodes, self.inference_batch_size()
            if opts.inference_batches == "metis" and size < n:
                batches = part_batches(metis_partition(ctx.graph.edge_index.cpu(), n,
                                                       -(-n // size), seed=ctx.seed,
                                                       cache_dir=metis_cache()))
            else:
                generator = torch.Generator().manual_seed(ctx.seed)
                batches = list(torch.randperm(n, generator=generator).split(size))
            self._inference_batches = [b.to(ctx.device) for b in batches]
        return self._inference_batches

    def inference_summary(self) -> Optional[dict[str, Any]]:
        """VQ inference's batches: their kind, number, size and the refresh passes."""
        if self._inference_batches is None:
            return None
        sizes = [b.numel() for b in self._inference_batches]
        return {"batches": self.options.inference_batches, "num_batches": len(sizes),
                "batch_size": self.inference_batch_size(), "max_batch_nodes": max(sizes),
                "refresh": self.options.inference_refresh,
                "refresh_used": self._refresh_chosen,
                "val_by_refresh": self._refresh_scores,
                "memory_budget_mb": self.options.inference_memory_mb}

    def inference_batch_size(self) -> int:
        """Nodes per VQ inference batch: ``inference_batch_size``, ``batch_size``, or the
        largest that fits ``inference_memory_mb`` by a probe batch's measured peak (the
        activations of a batch grow linearly with its nodes)."""
        opts, ctx = self.options, self.ctx
        if opts.inference_memory_mb is None:
            return min(opts.inference_batch_size or opts.batch_size, ctx.num_nodes)
        if self._probed_size is None:
            from vqgnn.train.meters import TensorMemoryMeter

            probe = torch.arange(min(opts.batch_size, ctx.num_nodes), device=ctx.device)
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad(), TensorMemoryMeter() as meter:
                self.model(ctx.x[probe], ctx.graph, probe)
            self.model.train(was_training)
            per_node = max(meter.peak, 1) / probe.numel()
            size = int(opts.inference_memory_mb * 2**20 / per_node)
            if size < 1:
                raise ConfigError(f"'VQOptions': 'inference_memory_mb' "
                                  f"({opts.inference_memory_mb!r}) is below one node's "
                                  f"inference memory ({per_node / 2**20:.3g} MB)")
            self._probed_size = min(size, ctx.num_nodes)
        return self._probed_size

    def health(self) -> Optional[CodebookHealth]:
        """The codebooks' figures, with the message errors of this epoch's exact
        evaluation (none in an epoch without one)."""
        health = self.model.codebook_health()
        if health is not None and self._errors_fresh:
            errors = self.model.message_errors
            measured = [e for e in errors if e is not None]
            health = replace(health, message_errors=list(errors),
                             message_error=sum(measured) / len(measured) if measured else None)
        self._errors_fresh = False
        return health

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])


@register_method
class FullGraphMethod(TrainingMethod):
    """Full-graph training: one step per epoch over every node and edge.

    A ``VQGNN`` runs its exact full-graph forward (one sparse product per linear layer);
    any other model runs ``model(x, edge_index)``.
    """

    name = "full"
    Options = FullGraphOptions
    no_data_parallel = ("full-graph training takes one step per epoch on the whole graph, so "
                        "there is no batch to share between ranks (every rank would repeat the "
                        "same step); run it as one process, or use method 'vq'")

    def check_model(self, model: torch.nn.Module, data: Data) -> None:
        super().check_model(model, data)
        _check_vqgnn_nodes("FullGraphMethod", model, data.num_nodes)

    def check_schedule(self, model: torch.nn.Module, warmup_epochs: int) -> None:
        if getattr(model, "global_attention", False) and warmup_epochs == 0:
            # benchmarks/attention_outputs.py: near-uniform attention gives every node the
            # same output, which full-lr Adam steps over the whole graph grow until it
            # drowns the node features.
            warnings.warn("'FullGraphMethod': full-graph training of a model with global "
                          "attention and 'warmup_epochs' 0: its first full-lr steps can grow "
                          "the attention's common output until the loss stays at the class "
                          "prior; set warmup_epochs (e.g. 10, --warmup-epochs 10)",
                          stacklevel=3)

    def batches(self) -> Iterable[None]:
        return [None]

    def num_batches(self) -> int:
        return 1

    def loss(self, batch: None) -> Step:
        ctx, model = self.ctx, self.ctx.model
        graph: Union[VQGraph, Tensor] = (ctx.graph if isinstance(model, VQGNN)
                                         else ctx.graph.edge_index)
        out = model(ctx.features(ctx.x), graph)  # (a VQGNN casts the rows itself)
        nodes = torch.arange(ctx.num_nodes, device=ctx.device)
        loss = ctx.node_loss(out, nodes, ctx.train_idx.numel())
        return Step(loss, (ctx.x, ctx.graph.edge_index))


class SubgraphMethod(TrainingMethod):
    """A sampling baseline: the model runs exactly on each sampled subgraph, as
    ``model(x[n_id], edge_index, edge_weight=...)`` (PyG's convolutions), with the
    loader's loss weights. Subclasses give the options and :meth:`make_loader`."""

    def make_loader(self, ctx: TrainContext) -> Any:
        """The loader: yields :class:`~vqgnn.baselines.SubgraphBatch` es."""
        raise NotImplementedError

    def check_model(self, model: torch.nn.Module, data: Data) -> None:
        super().check_model(model, data)
        if getattr(model, "global_attention", False):
            raise ConfigError(f"'{type(self).__name__}': the model has global attention, "
                              f"which attends to all N nodes; on a sampled subgraph it would "
                              f"attend to the subgraph's nodes only, which drops the global "
                              f"context it exists for: train it with method 'vq' or 'full'")

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.loader = self.make_loader(ctx)
        self._edge_weight = isinstance(ctx.model, VQGNN) or _accepts(ctx.model, "edge_weight")

    def batches(self) -> Iterable[SubgraphBatch]:
        return self.loader

    def num_batches(self) -> int:
        return len(self.loader)

    def loss(self, sub: SubgraphBatch) -> Optional[Step]:
        ctx = self.ctx
        if sub.loss_index.numel() == 0 and ctx.parallel.world_size == 1:
            # A subgraph without training nodes has no loss. Under torchrun the step runs
            # (with zero gradients): every rank must take part in each step's all-reduce.
            return None
        n_id = sub.n_id.to(ctx.device)
        edge_index = sub.edge_index.to(ctx.device)
        loss_index = sub.loss_index.to(ctx.device)
        xb = ctx.features(ctx.x[n_id])
        model = ctx.train_model
        if sub.edge_weight is not None and self._edge_weight:
            out = model(xb, edge_index, edge_weight=sub.edge_weight.to(ctx.device))
        else:
            out = model(xb, edge_index)
        loss = ctx.weighted_loss(out[loss_index], ctx.y[n_id[loss_index]],
                                 sub.loss_weight.to(ctx.device))
        return Step(loss, (xb, edge_index))

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])


def _num_layers(model: torch.nn.Module) -> Optional[int]:
    value = getattr(model, "num_layers", None)
    return value if isinstance(value, int) and value >= 1 else None


@register_method
class NeighborSampling(SubgraphMethod):
    """GraphSAGE neighbour sampling (PyG's ``NeighborLoader``)."""

    name = "sage"
    Options = NeighborOptions
    options: NeighborOptions

    def make_loader(self, ctx: TrainContext) -> NeighborBatches:
        layers = _num_layers(ctx.model)
        fanouts = (fanouts_for_layers(self.options.num_neighbors, layers) if layers
                   else list(self.options.num_neighbors))
        return NeighborBatches(ctx.graph.edge_index.cpu(), ctx.num_nodes, ctx.train_idx.cpu(),
                               fanouts, self.options.batch_size)


@register_method
class ClusterGCN(SubgraphMethod):
    """Cluster-GCN (PyG's ``ClusterData``/``ClusterLoader``; METIS by pymetis)."""

    name = "cluster"
    Options = ClusterOptions
    options: ClusterOptions

    def make_loader(self, ctx: TrainContext) -> ClusterBatches:
        n, opts = ctx.num_nodes, self.options
        num_parts = metis_parts("ClusterOptions", n, opts.batch_size, opts.num_parts)
        parts_per_batch = min(num_parts, max(1, round(num_parts * opts.batch_size / n)))
        return ClusterBatches(ctx.graph.edge_index.cpu(), n, ctx.masks["train"].cpu(),
                              num_parts, parts_per_batch, seed=ctx.seed,
                              cache_dir=metis_cache())


@register_method
class GraphSAINT(SubgraphMethod):
    """GraphSAINT random-walk subgraphs (PyG's sampler, with GraphSAINT's normalisation)."""

    name = "saint"
    Options = SaintOptions
    options: SaintOptions

    def make_loader(self, ctx: TrainContext) -> SaintBatches:
        n, opts = ctx.num_nodes, self.options
        return SaintBatches(ctx.graph.edge_index.cpu(), n, ctx.masks["train"].cpu(),
                            saint_roots(opts.batch_size, opts.walk_length), opts.walk_length,
                            num_steps=max(1, -(-n // opts.batch_size)),
                            coverage=opts.saint_coverage, progress=ctx.progress)


__all__ = [
    "MethodOptions", "VQOptions", "FullGraphOptions", "NeighborOptions", "ClusterOptions",
    "SaintOptions", "TrainContext", "Step", "TrainingMethod", "VQMethod", "FullGraphMethod",
    "SubgraphMethod", "NeighborSampling", "ClusterGCN", "GraphSAINT", "METHODS",
    "register_method", "method_class", "make_options", "exact_predict",
    "metis_cache", "VQ_INFERENCE",
]
