"""One experiment: a model configuration trained on a loaded graph, as a JSON record."""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from torch_geometric.data import Data

from vqgnn.distributed import SingleProcess
from vqgnn.errors import DivergenceError
from vqgnn.nn.models import VQGNN, ResidualFFNGNN
from vqgnn.nn.quantized import CodebookSizeWarning
from vqgnn.quantize.options import CodebookOptions
from vqgnn.train.checkpoint import CheckpointError, load_state
from vqgnn.train.methods import VQ_INFERENCE, reads_codebooks
from vqgnn.train.records import strict_json
from vqgnn.train.trainer import TrainConfig, Trainer, TrainResult, seed_everything


@dataclass
class ModelConfig:
    """Architecture options of :class:`~vqgnn.nn.VQGNN` (see its docs).

    Attributes:
        conv: backbone (``'gcn'``, ``'sage'``, ``'gat'``, ``'gin'``).
        hidden: hidden channels.
        layers: convolution layers.
        dropout: dropout probability.
        norm: ``'none'``, ``'layer'`` or ``'batch'``.
        residual: the residual layout.
        exact_first_layer: the first layer reads raw features exactly (no codebook).
        codebook: the codebook options of every quantized layer.
        act: the activation.
        ffn: residual blocks with a feed-forward module and a final normalisation, the
            heterophilous-graph benchmark's architecture (:class:`~vqgnn.nn.ResidualFFNGNN`;
            implies the residual layout).
        backward_approx: add the out-of-batch neighbours' approximated gradient messages
            in backward (VQ-GNN's backward term; off only to measure what it does).
        global_attention: a :class:`~vqgnn.nn.GlobalAttention` beside every convolution
            (hybrid blocks; needs ``residual`` or ``ffn``).
        attention_heads: heads of the global attention layers.
    """

    conv: str = "gcn"
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.2
    norm: str = "none"
    residual: bool = False
    exact_first_layer: bool = True
    codebook: CodebookOptions = field(default_factory=CodebookOptions)
    act: str = "relu"
    ffn: bool = False
    backward_approx: bool = True
    global_attention: bool = False
    attention_heads: int = 4

    def build(self, data: Data) -> VQGNN:
        """The model for ``data`` (its features, classes and nodes)."""
        common = {"num_nodes": data.num_nodes, "conv": self.conv, "codebook": self.codebook,
                  "dropout": self.dropout, "norm": self.norm, "act": self.act,
                  "backward_approx": self.backward_approx,
                  "global_attention": self.global_attention,
                  "attention_heads": self.attention_heads}
        if self.ffn:
            return ResidualFFNGNN(data.num_features, self.hidden, self.layers,
                                  data.num_classes, **common)
        return VQGNN(data.num_features, self.hidden, self.layers, data.num_classes,
                     residual=self.residual, exact_first_layer=self.exact_first_layer,
                     **common)


def run_experiment(data: Data, model: ModelConfig, train: TrainConfig,
                   log: Optional[Callable[[str], None]] = None,
                   resume: bool = False,
                   parallel: Optional[SingleProcess] = None,
                   on_resumed: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Seed, build, train and measure; returns a flat JSON record.

    The record holds the dataset, split, seed, method, backbone, the metric's name,
    best validation and its test value (by the selection inference, and by every
    inference mode of the method), median epoch time, time to the best validation, peak
    training memory with how it was measured, peak RSS and inference time, plus both
    configs (``train_config`` flat: the shared options and the method's), the per-epoch
    history and ``status`` (``'ok'`` or ``'diverged'``).

    With ``train.checkpoint`` set, an existing file there is resumed when ``resume`` is
    true (after checking that it belongs to this run), and otherwise overwritten only
    when it belongs to this same run: another run's checkpoint is never replaced.

    Args:
        data: a graph from :func:`vqgnn.datasets.load_dataset`.
        model: the architecture (the same for every method: the sampling baselines run
            its PyG convolutions on their subgraphs).
        train: the training options (``train.seed`` seeds everything).
        log: per-epoch log lines.
        resume: resume from ``train.checkpoint`` when that file exists.
        parallel: the data-parallel strategy (default: the :class:`Trainer`'s).
        on_resumed: called with the checkpoint's epoch once a resumed checkpoint has been
            checked and loaded (:meth:`Trainer.fit`).

    Raises:
        CheckpointError: the checkpoint cannot be read, or belongs to another run.
        DivergenceError: training diverged; its ``record`` attribute holds the record
            (``status='diverged'``).
    """
    train.validate()
    seed_everything(train.seed)
    with warnings.catch_warnings():
        if not reads_codebooks(train.method):
            # K > N concerns codebooks that a method without VQ inference never reads.
            warnings.simplefilter("ignore", CodebookSizeWarning)
        built = model.build(data)
    trainer = Trainer(built, data, train, log=log,
                      identity={"model_config": asdict(model)}, parallel=parallel)
    checkpoint = train.checkpoint
    resume_from = None
    if checkpoint and os.path.exists(checkpoint):
        if resume:
            resume_from = checkpoint
        else:
            changed = trainer.differences(load_state(checkpoint))
            if changed:
                raise CheckpointError(
                    f"{checkpoint!r} holds the checkpoint of another run ({changed[0]}"
                    f"{'; ...' if len(changed) > 1 else ''}); it is not overwritten: give "
                    f"another checkpoint path, or delete that file")
    try:
        result = trainer.fit(resume_from=resume_from, on_resumed=on_resumed)
    except DivergenceError as err:
        err.record = _record(data, model, train, trainer, err.result)  # type: ignore[arg-type]
        raise
    return _record(data, model, train, trainer, result)


def _record(data: Data, model: ModelConfig, train: TrainConfig, trainer: Trainer,
            result: TrainResult) -> dict[str, Any]:
    return {
        "dataset": str(data.name), "split": int(data.split), "seed": train.seed,
        "conv": model.conv, "device": str(trainer.device),
        **result.record(),
        "inference_seconds": (result.inference_seconds_vq
                              if result.selection_inference == VQ_INFERENCE
                              else result.inference_seconds_exact),
        "model_config": asdict(model),
        "train_config": {"method": train.method, **config_values(train)},
    }


def config_values(train: TrainConfig) -> dict[str, Any]:
    """The shared and method options of ``train`` as JSON values (tuples as lists)."""
    return strict_json(train.flat())
