"""Training: the loop, the training methods, evaluation, checkpoints, memory and time meters."""
from vqgnn.train.experiment import ModelConfig, run_experiment
from vqgnn.train.meters import SavedTensorMeter, Timer, peak_rss_bytes, reset_peak_rss
from vqgnn.train.methods import (
    METHODS,
    ClusterGCN,
    ClusterOptions,
    FullGraphMethod,
    FullGraphOptions,
    GraphSAINT,
    MethodOptions,
    NeighborOptions,
    NeighborSampling,
    SaintOptions,
    Step,
    SubgraphMethod,
    TrainContext,
    TrainingMethod,
    VQMethod,
    VQOptions,
    make_options,
    method_class,
    register_method,
)
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
    "METHODS", "TrainingMethod", "MethodOptions", "TrainContext", "Step", "VQMethod",
    "VQOptions", "FullGraphMethod", "FullGraphOptions", "SubgraphMethod", "NeighborSampling",
    "NeighborOptions", "ClusterGCN", "ClusterOptions", "GraphSAINT", "SaintOptions",
    "register_method", "method_class", "make_options",
]
