"""What a hybrid block's global attention adds, epoch by epoch: the size of its output and
how much that output differs from node to node, beside the convolution's.

While its attention is near-uniform, a :class:`~vqgnn.nn.GlobalAttention` layer gives
every node nearly the same vector (the mean of the values). This script trains one run of
``benchmarks/attention.py``'s global-attention model (same preset: residual FFN blocks, 64
hidden, GCN + global attention) and prints, after every epoch, the training loss and, per
block, the mean row norm and the spread across nodes (standard deviation over rows,
averaged over channels) of the convolution's and the attention's outputs in the epoch's
last training forward (taken before that epoch's last optimizer step; epoch 1's is the
initial model's), with the epoch's loss and validation metric. It is how the stalled
full-graph runs of exact global attention were explained (README, "Global attention: VQ
against exact").

Usage:
    python benchmarks/attention_outputs.py --data-root DATA --dataset minesweeper \\
        --method full --epochs 30
    python benchmarks/attention_outputs.py --data-root DATA --dataset minesweeper \\
        --method full --epochs 40 --warmup-epochs 10
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.attention import DATASETS  # noqa: E402
from benchmarks.grid import Run, prepare_root  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.errors import DivergenceError  # noqa: E402
from vqgnn.train import Trainer, TrainResult  # noqa: E402
from vqgnn.train.records import append_result  # noqa: E402
from vqgnn.train.trainer import seed_everything  # noqa: E402


def output_figures(out: torch.Tensor) -> tuple[float, float]:
    """(mean row norm, spread across rows: the std over rows averaged over channels)."""
    out = out.detach().float()
    spread = out.std(0).mean().item() if out.size(0) > 1 else 0.0
    return out.norm(dim=1).mean().item(), spread


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dataset", default="minesweeper", choices=list(DATASETS))
    parser.add_argument("--data-root", default=os.environ.get("VQGNN_DATA_ROOT"))
    parser.add_argument("--method", default="full", choices=["full", "vq"])
    parser.add_argument("--index", type=int, default=0, help="split or seed (0)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=None, help="the preset's by default")
    parser.add_argument("--warmup-epochs", type=int, default=0)
    parser.add_argument("--lr-per-epoch", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="append one record here")
    args = parser.parse_args(argv)
    for option, value, least in (("--epochs", args.epochs, 1), ("--index", args.index, 0),
                                 ("--warmup-epochs", args.warmup_epochs, 0)):
        if value < least:
            parser.error(f"{option} must be >= {least}, received {value}")
    if args.warmup_epochs >= args.epochs:
        parser.error(f"--warmup-epochs must be below --epochs ({args.epochs}), received "
                     f"{args.warmup_epochs}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, received {args.lr}")
    preset = DATASETS[args.dataset]
    preset = replace(preset, model=replace(preset.model, global_attention=True))
    run = Run(preset, args.method, "gcn", args.index, None, args.epochs)
    changes: dict[str, Any] = {"warmup_epochs": args.warmup_epochs,
                               "lr_per_epoch": args.lr_per_epoch}
    if args.lr is not None:
        changes["lr"] = args.lr
    config = run.train.replace(**changes)
    data = load_dataset(preset.name, root=prepare_root(preset, args.data_root, None),
                        split=run.split, seed=config.seed)
    seed_everything(config.seed)
    model = run.model.build(data)
    last: dict[str, tuple[float, float]] = {}

    def hook(tag: str) -> Any:
        def record(module: torch.nn.Module, inputs: Any, out: torch.Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                last[tag] = output_figures(out)
        return record

    for i in range(len(model.layers)):
        model.layers[i].register_forward_hook(hook(f"conv{i}"))
        attention = model.attention(i)
        assert attention is not None
        attention.register_forward_hook(hook(f"attn{i}"))
    rows: list[dict[str, Any]] = []

    def log(_line: str) -> None:  # the trainer's line; its history holds the figures
        entry = trainer.history[-1]  # this epoch's: its loss and validation metric
        row = {"epoch": entry.epoch, "loss": entry.loss, "val": entry.val,
               **{f"{k} {w}": round(v[j], 4) for k, v in last.items()
                  for j, w in enumerate(("norm", "spread"))}}
        rows.append(row)
        print(f"epoch {entry.epoch:>3}/{config.epochs} | loss {entry.loss:.4f} |",
              "  ".join(f"{k} {v[0]:.2f}/{v[1]:.3f}" for k, v in last.items()), flush=True)

    print(f"{preset.name}, {args.method}, lr {config.lr}, warm-up {config.warmup_epochs}, "
          f"lr per epoch {config.lr_per_epoch}; per block: output norm / spread across nodes")
    trainer = Trainer(model, data, config, log=log)
    status = "ok"
    try:
        result = trainer.fit()
    except DivergenceError as err:  # the rows so far are still worth keeping
        assert isinstance(err.result, TrainResult)
        status, result = "diverged", err.result
        print(err)
    if result.best_val is not None and result.test is not None:
        print(f"best validation {100 * result.best_val:.2f} at epoch {result.best_epoch}, "
              f"test {100 * result.test:.2f}")
    if args.json is not None:
        append_result(args.json, {"dataset": preset.name, "method": args.method,
                                  "index": args.index, "lr": config.lr,
                                  "warmup_epochs": config.warmup_epochs,
                                  "lr_per_epoch": config.lr_per_epoch,
                                  "threads": torch.get_num_threads(), "status": status,
                                  "best_val": result.best_val, "test": result.test,
                                  "epochs": rows})


if __name__ == "__main__":
    main()
