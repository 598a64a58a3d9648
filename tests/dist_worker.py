"""One rank of the data-parallel tests (tests/test_distributed.py), started by torchrun.

    torchrun --nproc_per_node P tests/dist_worker.py MODE OUT [CLI ARGS...]

Modes:

* ``fit``: trains a small all-quantized VQGNN (with global attention) by the Trainer and
  saves this rank's final state (weights, codebooks, assignments, attention counts) and
  result to ``OUT/rank{r}.pt``; the CLI-style options after OUT are ``key=value`` pairs;
* ``step``: one step of an oracle-codebook model on this rank's half of a fixed union batch;
  saves the summed parameter gradients and the codebook statistics;
* ``cli``: ``vqgnn train`` with the arguments after OUT, with an optional fault injected by
  ``VQGNN_TEST_FAULT=rank:epoch:step:exit|hang`` (once, if ``VQGNN_TEST_FAULT_ONCE`` names a
  marker file that does not exist yet).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def small_data(n: int = 400):
    from vqgnn.datasets import load_dataset

    return load_dataset(f"synthetic:n={n},deg=8,features=8,classes=3", seed=0)


def small_model(data, attention: bool = True):
    from vqgnn import VQGNN
    from vqgnn.quantize import CodebookOptions

    return VQGNN(data.num_features, 16, 2, data.num_classes, num_nodes=data.num_nodes,
                 residual=True, exact_first_layer=False, global_attention=attention,
                 attention_heads=2, dropout=0.0,
                 codebook=CodebookOptions(num_codewords=16))


def fit(out: Path, options: dict[str, str]) -> None:
    from vqgnn.distributed import DataParallel
    from vqgnn.train import TrainConfig, Trainer, seed_everything

    parallel = DataParallel.from_env("cpu", timeout=60)
    data = small_data()
    seed_everything(0)
    model = small_model(data)
    epochs = int(options.get("epochs", 2))
    config = TrainConfig.create("vq", epochs=epochs, batch_size=int(options.get("batch", 50)),
                                seed=0, checkpoint=options.get("checkpoint"),
                                measure_memory=False,
                                inference=options.get("inference", "exact"),
                                search_every=int(options.get("search_every", 1)))
    trainer = Trainer(model, data, config, parallel=parallel)
    resume = options.get("resume")
    result = trainer.fit(resume_from=resume if resume and os.path.exists(resume) else None)
    counts = [a._codeword_counts()[0].clone() for a in model.attentions]
    torch.save({"state": model.state_dict(), "counts": counts, "result": result.record(),
                "exchanged_bytes": getattr(parallel, "exchanged_bytes", 0),
                "world_size": parallel.world_size}, out / f"rank{parallel.rank}.pt")
    parallel.close()


def oracle_step(out: Path) -> None:
    """One step with an oracle codebook (K = N, each node its own codeword holding its
    exact input and the full-graph gradient of the union objective): this rank's half of
    the union batch. The test runs the union batch on one process and compares."""
    from vqgnn.distributed import DataParallel, SingleProcess

    parallel: SingleProcess = DataParallel.from_env("cpu", timeout=60)
    model, data, union = oracle_setup()
    half = union.chunk(parallel.world_size)[parallel.rank]
    ddp = parallel.wrap(model)
    parallel.attach(model)
    # The loss of a batch of b over b (the trainer's scale), divided by P: the ranks'
    # summed gradients are the union batch's loss over 2b.
    step(ddp, model, data, half, half.numel(), parallel.world_size)
    save_step(model, out / f"rank{parallel.rank}.pt")
    parallel.close()


def oracle_setup():
    from vqgnn import VQGNN
    from vqgnn.batching import VQGraph
    from vqgnn.quantize import CodebookOptions

    torch.manual_seed(0)
    data = small_data(60)
    n = data.num_nodes
    model = VQGNN(data.num_features, 8, 2, data.num_classes, num_nodes=n, residual=True,
                  exact_first_layer=False, dropout=0.0,
                  codebook=CodebookOptions(num_codewords=n, dead_threshold=0.0))
    data.graph = VQGraph(data.edge_index, n)
    union = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:24]
    # The oracle: every node's exact layer inputs and the full-graph gradients at each
    # layer's aggregated output of the union batch's loss (a batch holding every node).
    everyone = torch.arange(n)
    out = model(data.x, data.graph, everyone)
    loss_on(out[union], data.y[union], union.numel()).backward()
    for layer in model.quantized_layers:
        captured = layer.take_captured()
        layer.set_codewords(captured.x, captured.grad, everyone)
    model.zero_grad()
    return model, data, union


def loss_on(out: torch.Tensor, y: torch.Tensor, scale: int) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="sum") / scale


def step(forward, model, data, batch, scale: int, world: int) -> None:
    out = forward(data.x[batch], data.graph, batch)
    (loss_on(out, data.y[batch], scale) / world).backward()
    model.update_codebooks()


def save_step(model, path: Path) -> None:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    torch.save({"grads": grads, "buffers": buffers}, path)


def cli(args: list[str]) -> None:
    fault = os.environ.get("VQGNN_TEST_FAULT")
    if fault:
        inject(fault, os.environ.get("VQGNN_TEST_FAULT_ONCE"))
    from vqgnn.cli import main

    main(args)


def inject(fault: str, once: str | None) -> None:
    """Make rank ``r`` exit or hang at ``step`` of ``epoch`` (both from 1)."""
    from vqgnn.train.methods import VQMethod

    rank, epoch, at, kind = fault.split(":")
    if int(os.environ.get("RANK", "0")) != int(rank):
        return
    if once is not None and os.path.exists(once):
        return  # the fault already happened: this is torchrun's restart
    original = VQMethod.after_step
    counter = {"steps": 0}

    def after_step(self, batch):
        counter["steps"] += 1
        steps_per_epoch = self.ctx.parallel.num_shared(self.num_batches())
        done_epochs, in_epoch = divmod(counter["steps"] - 1, steps_per_epoch)
        if done_epochs + 1 == int(epoch) and in_epoch + 1 == int(at):
            if once is not None:
                Path(once).touch()
            if kind == "exit":
                os._exit(9)
            time.sleep(3600)
        original(self, batch)

    VQMethod.after_step = after_step  # type: ignore[method-assign]


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out_dir, *rest = sys.argv[1:]
    if mode == "fit":
        fit(Path(out_dir), dict(kv.split("=", 1) for kv in rest))
    elif mode == "step":
        oracle_step(Path(out_dir))
    elif mode == "cli":
        cli(rest)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
