"""Data parallelism under torchrun (gloo, on this machine): each test starts ranks with
``torch.distributed.run`` (torchrun) on ``tests/dist_worker.py`` and bounds its own time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vqgnn.distributed import DataParallel, SingleProcess, current, launched

WORKER = Path(__file__).with_name("dist_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, *args: str, timeout: float = 240, env: dict | None = None,
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc ARGS`` (a worker script or ``-m vqgnn``)."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    environ.pop("WORLD_SIZE", None)
    # --standalone: a local c10d rendezvous on a free port (it also serves restarts).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), *extra, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=environ, cwd=ROOT)


def run_worker(nproc: int, mode: str, out: Path, *options: str) -> list[dict]:
    """The worker on ``nproc`` torchrun ranks; ``nproc=0``: one plain process, no torchrun."""
    if nproc == 0:
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
        done = subprocess.run([sys.executable, str(WORKER), mode, str(out), *options],
                              capture_output=True, text=True, timeout=240, cwd=ROOT,
                              env={**environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr[-3000:]
        return [torch.load(out / "rank0.pt", weights_only=False)]
    done = torchrun(nproc, str(WORKER), mode, str(out), *options)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]


def test_single_process_strategy_is_the_identity() -> None:
    single = current()
    assert isinstance(single, SingleProcess) and not launched()
    assert single.world_size == 1 and single.is_main
    model = torch.nn.Linear(2, 2)
    assert single.wrap(model) is model
    assert list(single.share(iter([1, 2, 3]))) == [1, 2, 3]
    assert single.mean(2.5) == 2.5 and single.decide(True) and single.num_shared(7) == 7


def test_data_parallel_needs_a_process_group_and_a_valid_timeout() -> None:
    from vqgnn import ConfigError

    with pytest.raises(ConfigError, match="no process group is initialised"):
        DataParallel()
    with pytest.raises(ConfigError, match="'timeout' must be a number of seconds > 0, "
                                          "received -1"):
        DataParallel.from_env("cpu", timeout=-1)


def test_share_takes_every_pth_batch_and_drops_the_last_incomplete_round() -> None:
    shares = []
    for rank in range(3):
        fake = DataParallel.__new__(DataParallel)
        fake.rank, fake.world_size = rank, 3
        shares.append(list(fake.share(iter(range(8)))))
        assert fake.num_shared(8) == 2
    assert shares == [[0, 3], [1, 4], [2, 5]]  # batches 6 and 7 (a short round) dropped


@pytest.mark.parametrize("inference,search_every", [("exact", 1), ("vq", 1), ("exact", 3)])
def test_two_ranks_end_with_identical_weights_codebooks_and_assignments(tmp_path, inference,
                                                                       search_every):
    """Model selection by VQ inference (rank 0 only) refreshes rank 0's assignments; the
    ranks then take rank 0's buffers, so they keep training the same model. With
    ``search_every=3`` the steps without a search exchange no assignments, and the ranks
    still agree."""
    ranks = run_worker(2, "fit", tmp_path, "epochs=2", f"inference={inference}",
                       f"search_every={search_every}")
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys()
    assignments = [k for k in a if k.endswith("assignment")]
    assert len(assignments) == 4  # two convolutions and two attention layers
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise
    # The attention counts kept incrementally through the exchanges equal a recount.
    for counts_a, counts_b, key in zip(ranks[0]["counts"], ranks[1]["counts"],
                                       [k for k in assignments if "attention" in k]):
        recount = torch.bincount(a[key].long(), minlength=counts_a.numel())
        assert torch.equal(counts_a, recount) and torch.equal(counts_b, recount)
    result = ranks[0]["result"]
    assert result["world_size"] == 2 and ranks[1]["result"] == result
    # 400 nodes in batches of 50: 8 batches, 4 steps per rank and epoch, of which steps 0
    # and 3 search with search_every=3.
    searched = 4 if search_every == 1 else 2
    # epochs, steps, (L+1), width+1, int32
    assert ranks[0]["exchanged_bytes"] == 2 * searched * 5 * 52 * 4


def test_two_ranks_with_batch_b_equal_one_process_with_the_union_batch(tmp_path) -> None:
    """With an oracle codebook the step of 2 ranks on halves of a batch gives the summed
    parameter gradients and the codebook statistics of one process on the whole batch."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        import dist_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    ranks = run_worker(2, "step", tmp_path)
    model, data, union = dist_worker.oracle_setup()
    dist_worker.step(model, model, data, union, union.numel(), 1)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    buffers = dict(model.named_buffers())
    for rank in ranks:
        assert rank["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6,
                                       msg=name)
        for name, value in buffers.items():
            if value.is_floating_point():
                torch.testing.assert_close(rank["buffers"][name], value, rtol=1e-4, atol=1e-6,
                                           equal_nan=True, msg=name)
            else:
                assert torch.equal(rank["buffers"][name], value), name


@pytest.mark.parametrize("first,second", [(2, 0), (0, 2)])
def test_resume_across_world_sizes_continues_the_same_training(tmp_path, first, second):
    """2 ranks -> one process without torchrun, and back (0: no torchrun)."""
    checkpoint = str(tmp_path / "ck.pt")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = run_worker(first, "fit", tmp_path / "a", "epochs=2", f"checkpoint={checkpoint}")
    after = run_worker(second, "fit", tmp_path / "b", "epochs=3", f"checkpoint={checkpoint}",
                       f"resume={checkpoint}")
    result = after[0]["result"]
    assert result["resumed_at_epoch"] == 2 and result["epochs_run"] == 3
    assert result["world_size"] == max(second, 1)
    # The first two epochs are the checkpointed run's, and the third trained from them.
    assert result["history"][:2] == before[0]["result"]["history"]
    assert result["history"][2]["epoch"] == 3
    for rank in after[1:]:
        for key, value in rank["state"].items():
            assert torch.equal(value, after[0]["state"][key]), key


def test_full_graph_training_refuses_several_ranks(tmp_path) -> None:
    """Before any method trains: `vq,full` under torchrun once trained vq to the end, then
    refused full."""
    out = tmp_path / "records.jsonl"
    done = torchrun(2, "-m", "vqgnn", "train", "--dataset", "synthetic:n=300", "--method",
                    "vq,full", "--epochs", "1", "--batch-size", "50", "--json", str(out))
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "'--method': 'full' cannot run on 2 ranks: full-graph training takes one step" in text
    assert "[vq] epoch" not in text and not out.exists()  # vq never started


def test_cli_under_torchrun_writes_one_record_from_rank_0(tmp_path) -> None:
    out = tmp_path / "records.jsonl"
    done = torchrun(2, "-m", "vqgnn", "train", "--dataset", "synthetic:n=600", "--method",
                    "vq,sage,cluster,saint", "--epochs", "2", "--batch-size", "100", "--quiet",
                    "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # One record per method, from rank 0: the baselines run under torchrun too.
    assert [r["method"] for r in records] == ["vq", "sage", "cluster", "saint"]
    assert all(r["world_size"] == 2 for r in records)
    assert done.stdout.count("ranks=2") == 1  # the summary is printed once


@pytest.mark.parametrize("kind", ["exit", "hang"])
def test_a_failed_rank_stops_the_run_within_the_timeout(tmp_path, kind) -> None:
    start = time.monotonic()
    done = torchrun(2, str(WORKER), "cli", str(tmp_path), "train", "--dataset",
                    "synthetic:n=600", "--epochs", "3", "--batch-size", "100", "--quiet",
                    "--dist-timeout", "20", env={"VQGNN_TEST_FAULT": f"1:2:1:{kind}"},
                    timeout=200)
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    output = done.stdout + done.stderr
    if kind == "exit":
        assert "rank      : 1 (local_rank: 1)" in output  # torchrun names the rank
        assert "exitcode  : 9" in output
    else:  # rank 0 times out in a collective and says so, naming itself
        assert "vqgnn train: error: rank 0 of 2 (gloo): epoch 2 failed" in output, output[-3000:]
        assert "20 s timeout" in output
    assert elapsed < 120, elapsed


def test_torchrun_restart_resumes_from_the_last_checkpoint(tmp_path) -> None:
    out = tmp_path / "records.jsonl"
    checkpoint = tmp_path / "ck"
    done = torchrun(2, str(WORKER), "cli", str(tmp_path), "train", "--dataset",
                    "synthetic:n=600", "--epochs", "3", "--batch-size", "100", "--quiet",
                    "--checkpoint", str(checkpoint), "--resume", "--json", str(out),
                    "--dist-timeout", "60",
                    env={"VQGNN_TEST_FAULT": "1:2:1:exit",
                         "VQGNN_TEST_FAULT_ONCE": str(tmp_path / "failed-once")},
                    extra=("--max-restarts", "1"), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "failed-once").exists()
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["resumed_at_epoch"] == 1 and record["epochs_run"] == 3
    assert record["world_size"] == 2


def test_failure_names_the_rank_for_collective_errors_only() -> None:
    from vqgnn.errors import DivergenceError

    fake = DataParallel.__new__(DataParallel)
    fake.rank, fake.world_size, fake.backend, fake.timeout = 1, 2, "gloo", 30.0
    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    failure = fake.failure(gone, "epoch 3")
    assert failure is not None and str(failure).startswith(
        "rank 1 of 2 (gloo): epoch 3 failed: [../gloo/transport/tcp/pair.cc:534] Connection "
        "closed by peer. Another rank died, hangs, or exceeded the 30 s timeout")
    # A divergence or a bug is not a peer's failure: it is shown as it is.
    assert fake.failure(DivergenceError("training diverged at epoch 3", 3), "epoch 3") is None
    assert fake.failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "x") is None
    assert fake.failure(ValueError("bad"), "x") is None
