"""One experiment: a model configuration trained on a loaded graph, as a JSON record."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from torch_geometric.data import Data

from vqgnn.nn.models import VQGNN
from vqgnn.train.trainer import TrainConfig, Trainer, seed_everything


@dataclass
class ModelConfig:
    """Architecture options of :class:`~vqgnn.nn.VQGNN` (see its docs)."""

    conv: str = "gcn"
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.5
    norm: str = "none"
    residual: bool = False
    exact_first_layer: bool = True
    num_codewords: int = 256

    def build(self, data: Data) -> VQGNN:
        return VQGNN(data.num_features, self.hidden, data.num_classes, self.layers,
                     data.num_nodes, conv=self.conv, num_codewords=self.num_codewords,
                     dropout=self.dropout, norm=self.norm, residual=self.residual,
                     exact_first_layer=self.exact_first_layer)


def run_experiment(data: Data, model: ModelConfig, train: TrainConfig,
                   log: Optional[Callable[[str], None]] = None,
                   resume: bool = False) -> dict[str, Any]:
    """Seed, build, train and measure; returns a flat JSON record.

    The record holds the dataset, split, seed, method, backbone, the metric's name,
    best validation and its test value (by the selection inference, and by both exact
    and VQ inference), median epoch time, time to the best validation, peak training
    memory with how it was measured, peak RSS and inference time, plus both configs
    and the per-epoch history.

    Args:
        data: a graph from :func:`vqgnn.datasets.load_dataset`.
        model: the architecture.
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
        "model_config": asdict(model), "train_config": asdict(train),
    }
    return record
