"""VQ-GNN on an OGB node property prediction dataset (ogbn-arxiv by default).

``VQGNN`` + ``Trainer`` with the hyper-parameters of OGB's arxiv GCN example
(``examples/nodeproppred/arxiv/gnn.py``: 3 layers, 256 hidden channels, batch norm,
dropout 0.5, Adam with lr 0.01), trained on random node batches with K = 256 codewords per
layer instead of on the full graph. Every epoch is evaluated by exact layer-wise
inference; the final summary is scored with OGB's official ``Evaluator`` (which
``vqgnn.datasets.score`` uses for OGB data).

Run (ogb downloads the dataset into ``--root`` on first use, about 80 MB for arxiv)::

    python examples/ogb_arxiv.py --root data/ogb
    python examples/ogb_arxiv.py --root data/ogb --dataset ogbn-products --batch-size 8192

Offline, ``--root`` must hold ``ogbn_arxiv/`` in OGB's format (``raw/*.csv.gz`` and
``split/time/*.csv.gz``, or ogb's ``processed/`` file).
"""
import argparse

import torch

from vqgnn.datasets import load_dataset, score
from vqgnn.nn import VQGNN
from vqgnn.train import TrainConfig, Trainer, VQOptions, seed_everything


def main():
    parser = argparse.ArgumentParser(description="VQ-GNN on OGB node property prediction")
    parser.add_argument("--dataset", default="ogbn-arxiv")
    parser.add_argument("--root", default=None, help="folder of the OGB datasets "
                        "(default: $VQGNN_DATA/ogb or ~/.cache/vqgnn/data/ogb)")
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    data = load_dataset(args.dataset, root=args.root)
    print(f"{data.name}: {data.num_nodes:,} nodes, {data.edge_index.size(1):,} edges, "
          f"{data.num_features} features, {data.num_classes} classes, "
          f"train/val/test {int(data.train_mask.sum())}/{int(data.val_mask.sum())}/"
          f"{int(data.test_mask.sum())}")

    seed_everything(args.seed)
    model = VQGNN(data.num_features, args.hidden, args.num_layers, data.num_classes,
                  num_nodes=data.num_nodes, conv="gcn", num_codewords=args.num_codewords,
                  dropout=args.dropout, norm="batch", residual=False)
    print(model)
    config = TrainConfig("vq", VQOptions(batch_size=args.batch_size), epochs=args.epochs,
                         lr=args.lr, eval_every=args.eval_every, seed=args.seed,
                         device=args.device)
    trainer = Trainer(model, data, config, log=print)
    result = trainer.fit()  # loads the best model (by validation) when it returns

    out = trainer.predict("exact").cpu()  # (N, C) logits of the best model
    scores = {split: score(data, out, data[f"{split}_mask"]) for split in ("train", "val",
                                                                           "test")}
    print(f"Best epoch {result.best_epoch}/{result.epochs_run} "
          f"(OGB Evaluator, {data.metric}, exact inference): "
          f"train {100 * scores['train']:.2f}% | valid {100 * scores['val']:.2f}% | "
          f"test {100 * scores['test']:.2f}%")
    print(f"VQ mini-batch inference: valid {100 * result.val_vq:.2f}% | "
          f"test {100 * result.test_vq:.2f}%")
    memory = result.peak_memory_bytes or 0
    print(f"median epoch {result.median_epoch_seconds:.2f} s | peak training memory "
          f"{memory / 2**20:.1f} MB ({result.memory_measure})")


if __name__ == "__main__":
    main()
