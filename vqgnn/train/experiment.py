"""One experiment: a model configuration trained on a loaded graph, as a JSON record."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from torch_geometric.data import Data

from vqgnn.nn.models import VQGNN
from vqgnn.quantize.options import CodebookOptions
from vqgnn.train.trainer import TrainConfig, Trainer, seed_everything


@dataclass
class ModelConfig:
    """Architecture options of :class:`~vqgnn.nn.VQGNN` (see its docs).

    Attributes:
        conv: backbone (``'gcn'``, ``'sage'``, ``'gat'``).
        hidden: hidden channels.
        layers: convolution layers.
        dropout: dropout probability.
        norm: ``'none'``, ``'layer'`` or ``'batch'``.
        residual: the residual layout.
        exact_first_layer: the first layer reads raw features exactly (no codebook).
        codebook: the codebook options of every quantized layer.
    """

    conv: str = "gcn"
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.5
    norm: str = "none"
    residual: bool = False
    exact_first_layer: bool = True
    codebook: CodebookOptions = field(default_factory=CodebookOptions)

    @property
    def num_codewords(self) -> int:
        return self.codebook.num_codewords

    def build(self, data: Data) -> VQGNN:
        """The model for ``data`` (its features, classes and nodes)."""
        return VQGNN(data.num_features, self.hidden, self.layers, data.num_classes,
                     num_nodes=data.num_nodes, conv=self.conv, codebook=self.codebook,
                     dropout=self.dropout, norm=self.norm, residual=self.residual,
                     exact_first_layer=self.exact_first_layer)


def run_experiment(data: Data, model: ModelConfig, train: TrainConfig,
                   log: Optional[Callable[[str], None]] = None,
                   resume: bool = False) -> dict[str, Any]:
    """Seed, build, train and measure; returns a flat JSON record.

    The record holds the dataset, split, seed, method, backbone, the metric's name,
    best validation and its test value (by the selection inference, and by every
    inference mode of the method), median epoch time, time to the best validation, peak
    training memory with how it was measured, peak RSS and inference time, plus both
    configs (``train_config`` flat: the shared options and the method's) and the
    per-epoch history.

    Args:
        data: a graph from :func:`vqgnn.datasets.load_dataset`.
        model: the architecture (the same for every method: the sampling baselines run
            its PyG convolutions on their subgraphs).
        train: the training options (``train.seed`` seeds everything).
        log: per-epoch log lines.
        resume: resume from ``train.checkpoint`` when that file exists.
    """
    train.validate()
    seed_everything(train.seed)
    trainer = Trainer(model.build(data), data, train, log=log)
    checkpoint = train.checkpoint
    resume_from = checkpoint if resume and checkpoint and os.path.exists(checkpoint) else None
    result = trainer.fit(resume_from=resume_from)
    record: dict[str, Any] = {
        "dataset": str(data.name), "split": int(data.split), "seed": train.seed,
        "conv": model.conv, "device": str(trainer.device),
        **result.record(),
        "inference_seconds": (result.inference_seconds_vq if train.inference == "vq"
                              else result.inference_seconds_exact),
        "model_config": asdict(model),
        "train_config": {"method": train.method, **config_values(train)},
    }
    return record


def config_values(train: TrainConfig) -> dict[str, Any]:
    """The shared and method options of ``train`` as JSON values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in train.flat().items()}
