"""Count the host synchronisations of one VQ-GNN training step, by call site.

On a GPU each of these calls waits for the device: ``Tensor.item/__bool__/__int__/
__float__/tolist`` and the ops whose output size depends on the data (``nonzero``,
``unique``, ``repeat_interleave`` without ``output_size``, ``bincount``,
``masked_select``). On the CPU they cost nothing, so this counts calls instead of
timing them: patched wrappers record the caller of each call during one step (after a
first, warm-up step). Calls from inside ``torch.optim`` read CPU step counters and are
listed apart (they are not device syncs).

Usage:
    python benchmarks/host_syncs.py                      # 3-layer GCN, batch 256, K 64
    python benchmarks/host_syncs.py --conv sage --layers 2
"""
from __future__ import annotations

import collections
import traceback
from pathlib import Path
from typing import Any, Callable, Optional
from unittest.mock import patch

import torch

import vqgnn.quantize.codebook as codebook_module
from vqgnn.cli import script_parser
from vqgnn.datasets import load_dataset
from vqgnn.nn.models import BACKBONES, VQGNN
from vqgnn.train import TrainConfig, Trainer

TENSOR_METHODS = ("item", "__bool__", "__int__", "__float__", "tolist", "nonzero")
TORCH_FUNCTIONS = ("nonzero", "unique", "repeat_interleave", "bincount", "masked_select")


ROOT = Path(__file__).resolve().parent.parent


def _short(filename: str) -> str:
    """A file relative to the repository, or to site-packages."""
    if "site-packages/" in filename:
        return filename.split("site-packages/")[-1]
    try:
        return str(Path(filename).resolve().relative_to(ROOT))
    except ValueError:
        return filename


def count_syncs(step: Callable[[], Any]) -> collections.Counter:
    """``(name, file, line) -> calls`` of the syncing calls made by ``step()``."""
    counts: collections.Counter = collections.Counter()
    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            if name == "repeat_interleave" and kwargs.get("output_size") is not None:
                return original(*args, **kwargs)
            caller = traceback.extract_stack(limit=2)[0]
            counts[(name, _short(caller.filename), caller.lineno)] += 1
            return original(*args, **kwargs)

        originals.append((owner, name, original))
        setattr(owner, name, counted)

    for name in TENSOR_METHODS:
        wrap(torch.Tensor, name)
    for name in TORCH_FUNCTIONS:
        wrap(torch, name)
    try:
        step()
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)
    return counts


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=3000)
    parser.add_argument("--conv", default="gcn", choices=list(BACKBONES))
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-codewords", type=int, default=64)
    parser.add_argument("--search-every", type=int, default=1,
                        help="VQOptions.search_every: with 2 or more the counted step (the "
                             "epoch's second) makes no nearest-codeword search")
    args = parser.parse_args(argv)
    if args.search_every < 1:
        parser.error(f"--search-every must be >= 1, received {args.search_every}")
    data = load_dataset(f"synthetic:n={args.nodes},deg=10,features=16,classes=4")
    model = VQGNN(16, 32, args.layers, 4, num_nodes=args.nodes, conv=args.conv,
                  num_codewords=args.num_codewords)
    trainer = Trainer(model, data, TrainConfig.create("vq", batch_size=args.batch_size,
                                                      epochs=1,
                                                      search_every=args.search_every))
    trainer.prepare()
    batches = list(trainer.method.batches())
    trainer._step(batches[0])  # warm-up: operators built and cached
    searches = []
    nearest = codebook_module.nearest_codeword
    with patch.object(codebook_module, "nearest_codeword",
                      lambda *a, **kw: (searches.append(1), nearest(*a, **kw))[1]):
        counts = count_syncs(lambda: trainer._step(batches[1]))
    quantized = sum(layer.has_codebook for layer in model.layers)
    device = sum(v for (name, where, _), v in counts.items() if "torch/optim" not in where)
    print(f"one VQ step: {args.layers}-layer {args.conv}, {quantized} quantized layers, "
          f"batch {args.batch_size}, K {args.num_codewords}, {len(searches)} codeword "
          f"searches (--search-every {args.search_every})")
    print("| calls | call | where |\n|---|---|---|")
    for (name, where, line), calls in sorted(counts.items(), key=lambda kv: kv[0][1:]):
        print(f"| {calls} | {name} | {where}:{line} |")
    print(f"\nsyncing calls per step: {device} (plus {sum(counts.values()) - device} in "
          f"torch.optim on CPU step counters)")


if __name__ == "__main__":
    main()
