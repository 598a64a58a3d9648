"""Turn an existing PyG model into VQ-GNN mini-batch training, in your own training loop.

The model below is a 2-layer GCN written the usual way. Its convolutions are wrapped with
``VQConv``; nothing else changes: the same module then runs random node batches in which
every message arrives (exact inside the batch, from a codeword outside it), and exact
full-graph inference for evaluation. Steps:

1. ``graph = VQGraph(edge_index, N)``, once; wrap each conv: ``VQConv(conv, K, N)``;
2. layer 1 reads the raw features, which are constant: ``constant_input=True`` (no
   codebook) and ``set_constant_input`` (exact); layer 2: ``init_codebook`` (k-means) on
   its full-graph inputs;
3. per batch: ``model(x[batch], graph, batch)``, loss, ``backward()``, ``optimizer.step()``,
   then ``update_codebook()`` on each quantized layer (EMA k-means with the captured
   gradients).

Run (synthetic graph, no files needed)::

    python examples/wrap_pyg_model.py --epochs 20

On Cora (a PyG ``Planetoid`` folder, ``<root>/Cora/raw/...``; PyG writes ``processed/``
beside ``raw/``, so give a writable copy)::

    python examples/wrap_pyg_model.py --dataset Cora --root /path/to/planetoid --batch-size 512
"""
import argparse

import torch
import torch.nn.functional as F
from torch_geometric.nn import GCNConv

from vqgnn import VQConv, VQGraph
from vqgnn.datasets import load_dataset, score


class GCN(torch.nn.Module):
    """A 2-layer GCN as in PyG's examples; ``adj`` is ``edge_index``, or ``graph[, batch]``."""

    def __init__(self, in_channels, hidden_channels, out_channels, dropout=0.5):
        super().__init__()
        self.conv1 = GCNConv(in_channels, hidden_channels)
        self.conv2 = GCNConv(hidden_channels, out_channels)
        self.dropout = dropout

    def forward(self, x, *adj):
        x = F.relu(self.conv1(x, *adj))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, *adj)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic:n=5000,deg=15")
    parser.add_argument("--root", default=None, help="data folder (e.g. a copy of planetoid)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--num-codewords", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, root=args.root, seed=args.seed)
    n = data.num_nodes
    model = GCN(data.num_features, args.hidden, data.num_classes)

    # The only changes to the model: wrap its convolutions, and pass (graph, batch).
    graph = VQGraph(data.edge_index, n)
    model.conv1 = VQConv(model.conv1, num_nodes=n, constant_input=True)  # no codebook
    model.conv2 = VQConv(model.conv2, args.num_codewords, n)
    model.conv1.set_constant_input(data.x, graph)  # raw features: exact
    model.eval()
    with torch.no_grad():  # layer 2's inputs on the full graph, exactly
        h = F.relu(model.conv1(data.x, graph))
    model.conv2.init_codebook(h, seed=args.seed)

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_mask = data.train_mask
    # Batches of all nodes refresh every node's codeword assignment each epoch; the loss
    # is a sum over the batch's training nodes over its expected count (one scale for all).
    scale = min(args.batch_size, n) * float(train_mask.float().mean())
    for epoch in range(1, args.epochs + 1):
        model.train()
        losses = []
        for batch in torch.randperm(n).split(args.batch_size):
            optimizer.zero_grad()
            out = model(data.x[batch], graph, batch)  # (b, C)
            labeled = train_mask[batch]
            loss = F.cross_entropy(out[labeled], data.y[batch][labeled], reduction="sum") / scale
            loss.backward()
            optimizer.step()
            model.conv2.update_codebook()
            losses.append(loss.item())

        model.eval()
        with torch.no_grad():
            out = model(data.x, graph)  # exact full-graph inference, (N, C)
        val, test = score(data, out, data.val_mask), score(data, out, data.test_mask)
        h = model.conv2.health()
        print(f"epoch {epoch:3d} | loss {sum(losses) / len(losses):.4f} | "
              f"val {data.metric} {val:.4f} | test {data.metric} {test:.4f} "
              f"| codebook use {h.usage:.2f} ppl {h.perplexity:.1f} "
              f"qerr {h.quantization_error:.3f}")


if __name__ == "__main__":
    main()
