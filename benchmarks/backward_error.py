"""How close VQ-GNN's backward term is to the exact gradient it stands for, by degree.

A 2-layer ``VQGNN`` (exact first layer, quantized second layer, no dropout) trains by
VQ-GNN steps (Adam, ``--lr`` per step). At each step of ``--at``, on a fixed batch of
``--batch-size`` random nodes, the script compares, at the second layer's inputs of the
batch nodes:

* the backward term: the gradient with it minus the gradient without it;
* the exact term it approximates: the gradient, through the exact full-graph second layer,
  of the losses of the labelled nodes outside the batch, weighted as the batch loss weighs
  its own nodes (1 / the labelled nodes in the batch).

It prints, over all batch nodes, the norm ratio ``||term|| / ||exact||``, the relative
error ``||term - exact|| / ||exact||`` and the cosine of the two, then the cosine by bins of
a node's out-of-batch out-degree (the number of messages it sends to nodes outside the
batch: with sum aggregation, the term adds one codeword gradient per such message at
weight 1). A cosine near 0 and a relative error near 1 say the term carries little of the
exact gradient. With ``--loss-aware`` the term leaves out the nodes without a loss
(:meth:`~vqgnn.nn.VQGNN.set_loss_nodes`, ``--loss-aware-backward`` in training).

Usage:
    python benchmarks/backward_error.py --dataset Cora --root DATA/planetoid --conv gin
    python benchmarks/backward_error.py --conv gcn --at 0,10,100
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from vqgnn import VQGraph  # noqa: E402
from vqgnn.cli import script_parser  # noqa: E402
from vqgnn.datasets import load_dataset  # noqa: E402
from vqgnn.nn.models import BACKBONES, VQGNN  # noqa: E402
from vqgnn.train.trainer import seed_everything  # noqa: E402

#: Out-of-batch out-degree bins [lo, hi) (None: no upper end); degree 0 sends no term.
BINS = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, None))


def _bin_label(lo: int, hi: Optional[int]) -> str:
    if hi is None:
        return f">= {lo}"
    return f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}"


def _input_gradient(model: VQGNN, x: Tensor, graph: VQGraph, batch: Optional[Tensor],
                    loss_of: Callable[[Tensor], Tensor]) -> Tensor:
    """The gradient of ``loss_of(out)`` at the second layer's input (rows of ``batch``, or
    of every node when ``batch`` is None)."""
    seen: dict[str, Tensor] = {}

    def keep(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        args[0].retain_grad()
        seen["h"] = args[0]

    hook = model.layers[1].register_forward_pre_hook(keep)
    try:
        out = model(x if batch is None else x[batch], graph, batch)
        model.zero_grad()
        loss_of(out).backward()
    finally:
        hook.remove()
    model.layers[1].take_captured()  # a measurement: the codebook does not learn from it
    grad = seen["h"].grad
    if grad is None:  # the loss does not depend on the second layer's inputs
        return torch.zeros_like(seen["h"]).detach()
    return grad.detach()


def measure(model: VQGNN, data, graph: VQGraph, batch: Tensor) -> dict[str, Tensor]:
    """The backward term and the exact term at the batch nodes' second-layer inputs, and
    each batch node's out-of-batch out-degree."""
    labelled = data.train_mask
    in_batch = torch.zeros(data.num_nodes, dtype=torch.bool)
    in_batch[batch] = True
    count = int(labelled[batch].sum())
    if count == 0:
        raise SystemExit("the fixed batch holds no labelled node: use a larger --batch-size")

    def batch_loss(out: Tensor) -> Tensor:
        mask = labelled[batch]
        return F.cross_entropy(out[mask], data.y[batch][mask])

    def outside_loss(out: Tensor) -> Tensor:
        mask = labelled & ~in_batch
        return F.cross_entropy(out[mask], data.y[mask], reduction="sum") / count

    layer = model.layers[1]
    setting = layer.backward_approx
    try:
        layer.backward_approx = True
        with_term = _input_gradient(model, data.x, graph, batch, batch_loss)
        layer.backward_approx = False
        without = _input_gradient(model, data.x, graph, batch, batch_loss)
    finally:
        layer.backward_approx = setting
    exact = _input_gradient(model, data.x, graph, None, outside_loss)[batch]
    src, dst = data.edge_index
    leaving = in_batch[src] & ~in_batch[dst]
    degree = torch.bincount(src[leaving], minlength=data.num_nodes)[batch]
    return {"term": with_term - without, "exact": exact, "degree": degree}


def summary(term: Tensor, exact: Tensor) -> tuple[float, float, float]:
    """(norm ratio, relative error, cosine) of the stacked rows; NaN where the exact term
    is zero (a model whose units are all inactive sends no gradient back)."""
    if float(exact.norm()) == 0.0:
        return (float("nan"),) * 3
    scale = exact.norm()
    cosine = float((term * exact).sum() / (term.norm() * scale).clamp_min(1e-30))
    return float(term.norm() / scale), float((term - exact).norm() / scale), cosine


def main(argv: Optional[list[str]] = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dataset", default="synthetic:n=3000,deg=10,features=32,classes=5")
    parser.add_argument("--root", default=None, help="folder of a named dataset")
    parser.add_argument("--conv", default="gcn", choices=list(BACKBONES))
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's lr per step")
    parser.add_argument("--at", default="0,10,30,100",
                        help="comma-separated training steps at which to measure")
    parser.add_argument("--loss-aware", action="store_true",
                        help="no backward message from nodes without a loss")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        steps = sorted({int(s) for s in args.at.split(",")})
    except ValueError:
        steps = [-1]
    if steps[0] < 0:
        parser.error(f"--at must list steps >= 0, received {args.at!r}")
    for name, value in (("--batch-size", args.batch_size), ("--num-codewords",
                                                          args.num_codewords)):
        if value < 1:
            parser.error(f"{name} must be >= 1, received {value}")
    seed_everything(args.seed)
    data = load_dataset(args.dataset, root=args.root)
    graph = VQGraph(data.edge_index, data.num_nodes)
    model = VQGNN(data.num_features, args.hidden, 2, data.num_classes, num_nodes=data.num_nodes,
                  conv=args.conv, num_codewords=args.num_codewords, dropout=0.0)
    model.prepare(data.x, graph)
    if args.loss_aware:
        model.set_loss_nodes(data.train_mask, graph)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    fixed = torch.randperm(data.num_nodes, generator=torch.Generator().manual_seed(args.seed))
    fixed = fixed[:args.batch_size]
    print(f"{data.name}, {args.conv}, 2 layers (the second quantized, K = "
          f"{args.num_codewords}), batches of {args.batch_size}, Adam lr {args.lr} per step; "
          f"command: python benchmarks/backward_error.py {' '.join(argv or sys.argv[1:])}\n")
    print("| step | exact term's norm | term's norm | norm ratio | relative error | cosine | "
          + " | ".join(f"cosine, out-of-batch degree {_bin_label(lo, hi)}" for lo, hi in BINS)
          + " |")
    print("|" + "---|" * (6 + len(BINS)))
    step = 0
    for target in steps:
        while step < target:
            batch = torch.randperm(data.num_nodes)[:args.batch_size]
            out = model(data.x[batch], graph, batch)
            mask = data.train_mask[batch]
            loss = F.cross_entropy(out[mask], data.y[batch][mask]) if bool(mask.any()) \
                else out.sum() * 0.0
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.update_codebooks()
            step += 1
        m = measure(model, data, graph, fixed)
        ratio, error, cosine = summary(m["term"], m["exact"])
        cells = []
        for lo, hi in BINS:
            rows = (m["degree"] >= lo) & (m["degree"] < hi if hi is not None else True)
            cells.append(f"{summary(m['term'][rows], m['exact'][rows])[2]:+.2f} "
                         f"({int(rows.sum())} nodes)" if bool(rows.any()) else "-")
        print(f"| {step} | {float(m['exact'].norm()):.3g} | {float(m['term'].norm()):.3g} | "
              f"{ratio:.3g} | {error:.3g} | {cosine:+.2f} | " + " | ".join(cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
