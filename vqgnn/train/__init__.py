"""Training: the mini-batch trainer, evaluation, checkpoints, memory and time meters."""
from vqgnn.train.experiment import ModelConfig, run_experiment
from vqgnn.train.meters import SavedTensorMeter, Timer, peak_rss_bytes, reset_peak_rss
from vqgnn.train.trainer import (
    EpochLog,
    TrainConfig,
    Trainer,
    TrainResult,
    clone_config,
    seed_everything,
)

__all__ = [
    "SavedTensorMeter", "Timer", "peak_rss_bytes", "reset_peak_rss", "EpochLog", "TrainConfig",
    "Trainer", "TrainResult", "clone_config", "seed_everything", "ModelConfig", "run_experiment",
]
