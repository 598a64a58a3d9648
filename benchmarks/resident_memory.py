"""What VQ-GNN keeps resident while it trains, by component: bytes per node and per edge.

For three synthetic graphs (N nodes, E directed edges: ``--nodes`` at ``--deg``, twice
``--nodes`` at ``--deg``, ``--nodes`` at twice ``--deg``) a :class:`~vqgnn.train.Trainer`
for VQ-GNN is built and trained for one epoch (so that every lazily built structure
exists), then every tensor reachable from the trainer is counted once (by storage) under
the component its path names: features, labels and masks, the edge list, degrees and the
batch map, the convolution operators (CSR, both layouts), the last step's batch rows,
codeword assignments, codebooks, weights, optimizer state, the best epoch's saved state,
the batch sampler. Each component's bytes are solved exactly as ``a + b N + c E`` from the
three graphs, so the table gives the bytes it keeps per node and per edge, and what is
left that depends on neither (codebooks, weights, one batch).

Usage:
    python benchmarks/resident_memory.py                      # GCN, 2 layers, K = 256
    python benchmarks/resident_memory.py --conv sage --layers 3 --num-codewords 1024
    python benchmarks/resident_memory.py --feature-dtype bfloat16    # features in 16 bits
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.quantize.options import CodebookOptions  # noqa: E402
from vqgnn.train import ModelConfig, TrainConfig, Trainer, seed_everything  # noqa: E402
from vqgnn.train.trainer import FEATURE_DTYPES  # noqa: E402

#: (component, path fragments that put a tensor in it), first match wins; a path is the
#: chain of attribute names, keys and indices from the trainer to the tensor.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("best epoch's saved state", (".best_state",)),
    ("features", ("._constant[1]", "['x']", ".x")),
    ("exact first layer's cached aggregation", ("._constant[2]",)),
    ("message-error batch", (".error_nodes",)),
    ("optimizer state", (".optimizer",)),
    ("batch sampler", (".sampler", ".step_cache[1]")),  # the batch: a view of its permutation
    ("last step's batch rows", (".step_cache",)),
    ("convolution operators (CSR, both layouts)", ("._cache",)),
    ("degrees and batch map", (".in_degree", ".out_degree", ".local")),
    ("edge list", (".edge_index", ".edge_weight")),
    ("labels, masks, training ids", ("['y']", ".y", ".masks", ".train_idx", "_mask")),
    ("codeword assignments", ("assignment",)),
    ("codebooks and standardisers", ("codebook", "quantizer", "x_norm", "g_norm")),
    ("weights", ("_parameters",)),
)
#: Components bounded by the batch (and K), not by N or E: their bytes vary with the
#: batch's degrees, so no per-node or per-edge figure is solved for them.
BATCH_BOUNDED = ("last step's batch rows", "message-error batch")


def component_of(path: str) -> str:
    for name, fragments in COMPONENTS:
        if any(f in path for f in fragments):
            return name
    return "other"


def tensors(obj: Any, path: str = "trainer", seen: Optional[set[int]] = None
            ) -> Iterator[tuple[str, Tensor]]:
    """Every tensor reachable from ``obj`` through attributes, dicts, lists and tuples,
    with its path (each object visited once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from tensors(value, f"{path}[{key!r}]", seen)
    elif isinstance(obj, (list, tuple)):
        fields = getattr(obj, "_fields", None)  # a NamedTuple: its field names
        for i, value in enumerate(obj):
            yield from tensors(value, f"{path}.{fields[i]}" if fields else f"{path}[{i}]",
                               seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in (
            "vqgnn", "torch", "torch_geometric", "benchmarks"):
        if isinstance(obj, torch.optim.Optimizer):
            yield from tensors(obj.state, f"{path}.state", seen)
            return
        for key, value in vars(obj).items():
            yield from tensors(value, f"{path}.{key}", seen)


def resident(trainer: Trainer) -> dict[str, int]:
    """Bytes of each component, every storage counted once (under its first path)."""
    counted: set[tuple[Any, int]] = set()
    out: dict[str, int] = {}
    for path, t in tensors(trainer):
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key in counted or storage.nbytes() == 0:
            continue
        counted.add(key)
        name = component_of(path)
        out[name] = out.get(name, 0) + storage.nbytes()
    return out


def measure(n: int, deg: float, args: argparse.Namespace) -> tuple[int, int, dict[str, int]]:
    data = load_dataset(f"synthetic:n={n},deg={deg:g}", seed=0)
    data.x = data.x.to(FEATURE_DTYPES[args.feature_dtype])  # as the CLI stores them
    seed_everything(0)
    model = ModelConfig(conv=args.conv, layers=args.layers, hidden=args.hidden,
                        codebook=CodebookOptions(num_codewords=args.num_codewords)
                        ).build(data)
    trainer = Trainer(model, data, TrainConfig.create(
        "vq", epochs=1, batch_size=args.batch_size, eval_every=1, progress=False,
        feature_dtype=args.feature_dtype))
    trainer.fit()
    return n, int(data.edge_index.size(1)), resident(trainer)


def solve(points: list[tuple[int, int, dict[str, int]]], name: str) -> tuple[float, ...]:
    """``(a, b, c)`` with bytes = a + b N + c E through the three graphs."""
    rows = torch.tensor([[1.0, n, e] for n, e, _ in points], dtype=torch.float64)
    rhs = torch.tensor([p[2].get(name, 0) for p in points], dtype=torch.float64)
    return tuple(torch.linalg.solve(rows, rhs).tolist())


def table(points: list[tuple[int, int, dict[str, int]]]) -> list[str]:
    names = [c for c, _ in COMPONENTS] + ["other"]
    names = [c for c in names if any(c in p[2] for p in points)]
    lines = ["| component | bytes per node | bytes per edge | fixed (KB) | "
             + " | ".join(f"N={n:,}, E={e:,} (MB)" for n, e, _ in points) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(points)]
    total = [0.0, 0.0, 0.0]
    for name in names:
        sizes = " | ".join(f"{p[2].get(name, 0) / 2**20:.2f}" for p in points)
        if name in BATCH_BOUNDED:
            lines.append(f"| {name} (bounded by the batch) | - | - | - | {sizes} |")
            continue
        a, b, c = solve(points, name)
        total = [total[0] + a, total[1] + b, total[2] + c]
        lines.append(f"| {name} | {b:.1f} | {c:.1f} | {a / 1024:.1f} | {sizes} |")
    lines.append(f"| **total** (the per-node, per-edge and fixed sums leave out the "
                 f"batch-bounded rows) | **{total[1]:.1f}** | **{total[2]:.1f}** | "
                 f"**{total[0] / 1024:.1f}** | "
                 + " | ".join(f"**{sum(p[2].values()) / 2**20:.2f}**" for p in points) + " |")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--deg", type=float, default=10.0)
    parser.add_argument("--conv", default="gcn")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--feature-dtype", default="float32",
                        choices=list(FEATURE_DTYPES))
    args = parser.parse_args(argv)
    if args.nodes < 100 or args.deg <= 0:
        parser.error(f"--nodes must be >= 100 and --deg > 0, received {args.nodes} and "
                     f"{args.deg}")
    points = [measure(n, d, args) for n, d in ((args.nodes, args.deg),
                                                (2 * args.nodes, args.deg),
                                                (args.nodes, 2 * args.deg))]
    print(f"VQ-GNN training ({args.conv}, {args.layers} layers, {args.hidden} hidden, "
          f"K = {args.num_codewords}, batch {args.batch_size}, features in "
          f"{args.feature_dtype}): resident tensors after one "
          f"epoch, by component")
    print("\n".join(table(points)))


if __name__ == "__main__":
    main()
