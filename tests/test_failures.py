"""Runs that never lie and never lose work: the ten failures of issue 15, each checked
through the command line (or the library where that is where it happened), and a
fault-injection test that kills training at random points."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from vqgnn.cli import EXIT_DIVERGED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_IO, main
from vqgnn.datasets import load_dataset
from vqgnn.errors import ConfigError
from vqgnn.nn.models import VQGNN
from vqgnn.train import TrainConfig, Trainer
from vqgnn.train.checkpoint import CheckpointError, checkpoint_path, load_state, save_state
from vqgnn.train.records import append_record, read_records

DATASET = "synthetic:n=300,deg=6,features=8,classes=3"
OTHER = "synthetic:n=300,deg=6,features=8,classes=3,seed=5"  # same sizes, another graph
SMALL = ["--hidden", "16", "--num-codewords", "16", "--batch-size", "64", "--quiet"]
ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def train(*argv: str) -> list[str]:
    return ["train", "--dataset", DATASET, *SMALL, *argv]


def strict_lines(path: Path) -> list[dict]:
    """Every line parses as strict JSON (no NaN or Infinity tokens)."""

    def refuse(token: str):
        raise AssertionError(f"non-JSON constant {token} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


# ------------------------------------------------------ 1. checkpoint paths
@pytest.mark.parametrize("base, method, expected", [
    ("ck/exp.v1", "vq", "ck/exp.v1.vq.pt"), ("ck/exp.v2", "vq", "ck/exp.v2.vq.pt"),
    ("ck/a.vq.pt", "vq", "ck/a.vq.pt"), ("ck/a.pt", "full", "ck/a.full.pt"),
    ("ck/a.vq.pt", "full", "ck/a.vq.full.pt"), ("run", "sage", "run.sage.pt")])
def test_checkpoint_names_never_collide(base, method, expected):
    assert str(checkpoint_path(base, method)) == expected


def test_two_runs_keep_two_checkpoints_and_a_given_name_resumes(tmp_path, capsys):
    v1, v2 = tmp_path / "exp.v1", tmp_path / "exp.v2"
    assert run(train("--epochs", "2", "--checkpoint", str(v1))) == 0
    assert run(train("--epochs", "2", "--lr", "0.02", "--checkpoint", str(v2))) == 0
    assert (tmp_path / "exp.v1.vq.pt").is_file() and (tmp_path / "exp.v2.vq.pt").is_file()
    written = tmp_path / "exp.v1.vq.pt"
    assert run(train("--epochs", "3", "--checkpoint", str(written), "--resume")) == 0
    assert load_state(written)["epoch"] == 3  # resumed, not restarted
    assert not (tmp_path / "exp.v1.vq.vq.pt").exists()
    assert f"[vq] resuming from {written} after epoch 2\n" in capsys.readouterr().err


def test_another_runs_checkpoint_is_not_overwritten(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert run(train("--epochs", "2", "--checkpoint", str(ck))) == 0
    before = (tmp_path / "ck.vq.pt").read_bytes()
    assert run(train("--epochs", "2", "--lr", "0.5", "--checkpoint", str(ck))) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "holds the checkpoint of another run (train_config.lr: checkpoint 0.01, now 0.5)" in err
    assert (tmp_path / "ck.vq.pt").read_bytes() == before
    assert run(train("--epochs", "2", "--checkpoint", str(ck))) == 0  # the same run may


# ------------------------------------------------------ 2. records
def test_a_torn_tail_is_closed_and_skipped_never_glued(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"a": 1})
    with path.open("a") as f:
        f.write('{"b": 2, "tru')  # what ENOSPC or a crash left behind
    with pytest.warns(UserWarning, match="the last line was torn"):
        append_record(path, {"c": 3})
    with pytest.warns(UserWarning, match="r.jsonl:2: not a JSON record"):
        records = read_records(path)
    assert records == [{"a": 1}, {"c": 3}]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_result_says_what_code_produced_it(tmp_path):
    """append_result adds vqgnn's and torch's versions and the checkout's commit (this
    test runs in a git checkout: the repository's clone); a record's own 'code' stays."""
    import torch

    import vqgnn
    from vqgnn.train.records import append_result

    path = tmp_path / "r.jsonl"
    append_result(path, {"a": 1})
    append_result(path, {"b": 2, "code": "given"})
    first, second = read_records(path)
    root = Path(vqgnn.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    code = first.pop("code")
    assert first == {"a": 1}
    assert code == {"vqgnn": vqgnn.__version__, "commit": head or None,
                    "dirty": code["dirty"], "torch": torch.__version__}
    assert isinstance(code["dirty"], bool) if head else code["dirty"] is None
    assert second == {"b": 2, "code": "given"}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_counts_python_files_only(tmp_path, monkeypatch):
    """A benchmark appends to tracked result files: they leave 'dirty' False; an edited
    tracked .py file makes it True; no checkout gives (None, None)."""
    from vqgnn.train.records import git_state

    assert git_state(tmp_path) == (None, None)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results.jsonl").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "results.jsonl").write_text("{}\n{}\n")
    (tmp_path / "new.py").write_text("untracked\n")
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (head, True)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "second")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mod.py").write_text("y = 1\n")
    git("add", "sub/mod.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "third")
    (tmp_path / "sub" / "mod.py").write_text("y = 2\n")  # a tracked .py in a folder
    assert git_state(tmp_path) == (git("rev-parse", "HEAD"), True)
    # a git hook's environment names another repository and literal pathspecs: ignored
    monkeypatch.setenv("GIT_DIR", str(Path(__file__).resolve().parent.parent / ".git"))
    monkeypatch.setenv("GIT_LITERAL_PATHSPECS", "1")
    assert git_state(tmp_path) == (git("--git-dir", str(tmp_path / ".git"), "rev-parse",
                                       "HEAD"), True)


def test_a_full_disk_leaves_the_earlier_records_and_exits_with_its_status(tmp_path, monkeypatch,
                                                                          capsys):
    path = tmp_path / "r.jsonl"
    import vqgnn.train.records as records_module

    calls = []
    original = records_module.append_record

    def full_disk(p, record):
        calls.append(record["method"])
        if record["method"] == "full":
            with open(p, "a") as f:
                f.write('{"partial": ')  # a torn fragment, then the error
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        original(p, record)

    monkeypatch.setattr(records_module, "append_record", full_disk)
    code = run(train("--method", "vq,full,sage", "--epochs", "1", "--num-neighbors", "4,3",
                     "--json", str(path)))
    assert code == EXIT_IO and calls == ["vq", "full"]  # stopped at the failure
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.setattr(records_module, "append_record", original)
    assert run(train("--method", "sage", "--epochs", "1", "--num-neighbors", "4,3",
                     "--json", str(path))) == 0
    with pytest.warns(UserWarning):
        assert [r["method"] for r in read_records(path)] == ["vq", "sage"]


def test_each_record_is_written_when_its_method_finishes(tmp_path, monkeypatch, capsys):
    from vqgnn.train.methods import FullGraphMethod

    def interrupt(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(FullGraphMethod, "loss", interrupt)
    path = tmp_path / "r.jsonl"
    assert run(train("--method", "vq,full", "--epochs", "2", "--json", str(path))) \
        == EXIT_INTERRUPTED
    assert [r["method"] for r in strict_lines(path)] == ["vq"]
    err = capsys.readouterr().err
    assert f"interrupted while training full; the records of vq are in {path}" in err
    other = tmp_path / "none.jsonl"
    assert run(train("--method", "full,vq", "--epochs", "2", "--json", str(other))) \
        == EXIT_INTERRUPTED
    assert ("interrupted while training full; no method had finished: no record was "
            "written") in capsys.readouterr().err
    assert not other.exists() or not other.read_text().strip()


# ------------------------------------------------------ 3. resume checks its run
@pytest.mark.parametrize("change, named", [
    (["--lr", "0.02"], "train_config.lr: checkpoint 0.01, now 0.02"),
    (["--hidden", "32"], "run.model_config.hidden: checkpoint 16, now 32"),
    (["--optimizer", "sgd"], "train_config.optimizer: checkpoint 'adam', now 'sgd'"),
    (["--dataset", OTHER], "graph."),
    (["--epochs", "2"], "has trained 4 epochs, more than 'epochs' (2)"),
])
def test_resume_refuses_another_configuration(tmp_path, capsys, change, named):
    ck = tmp_path / "ck"
    assert run(train("--epochs", "4", "--checkpoint", str(ck))) == 0
    capsys.readouterr()
    argv = train("--epochs", "6", "--checkpoint", str(ck), "--resume")
    argv = [*argv, *change] if change[0] != "--dataset" else [
        "train", "--dataset", OTHER, *SMALL, "--epochs", "6", "--checkpoint", str(ck),
        "--resume"]
    assert run(argv) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err  # one line
    assert "resuming from" not in err  # said only of a checkpoint that was taken
    assert load_state(tmp_path / "ck.vq.pt")["epoch"] == 4  # untouched


# ------------------------------------------------------ 4. resume is never silent
def test_resume_says_when_nothing_is_resumed(tmp_path, capsys):
    assert run(train("--epochs", "1", "--resume")) == EXIT_INPUT
    assert "'--resume' needs '--checkpoint PATH'" in capsys.readouterr().err
    assert run(train("--epochs", "1", "--resume", "--checkpoint", str(tmp_path / "no"))) == 0
    assert "no checkpoint at" in capsys.readouterr().err and "starting from epoch 1"


# ------------------------------------------------------ 5. divergence
def test_divergence_stops_the_run_and_the_record_says_so(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    # The case of the issue: SGD at lr 1e6 gave a NaN loss from epoch 1, exit 0, and chance
    # accuracy reported as the result.
    code = run(["train", "--dataset", "synthetic:n=2000,deg=10", "--method", "vq",
                "--batch-size", "256", "--num-codewords", "64", "--optimizer", "sgd", "--lr",
                "1e6", "--epochs", "5", "--quiet", "--json", str(path)])
    assert code == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "training diverged at epoch" in err
    (record,) = strict_lines(path)
    assert record["status"] == "diverged" and record["diverged_epoch"] >= 1
    assert record["epochs_run"] == record["diverged_epoch"] < 5
    if record["best_epoch"] == 0:  # diverged before any evaluation: no figure claimed
        assert record["test"] is None and record["best_val"] is None


@pytest.mark.parametrize("lr", ["inf", "nan"])
def test_a_non_finite_learning_rate_is_rejected(capsys, lr):
    assert run(train("--lr", lr, "--epochs", "1")) == EXIT_INPUT
    assert f"'lr' must be finite, received {lr}" in capsys.readouterr().err


# ------------------------------------------------------ 6. non-finite features
def test_non_finite_features_are_rejected_at_load_time(tmp_path):
    data = load_dataset(DATASET)
    data.x[3, 1] = float("nan")
    data.x[7, 0] = float("inf")
    path = tmp_path / "g.pt"
    torch.save(Data(x=data.x, edge_index=data.edge_index, y=data.y), path)
    with pytest.raises(ConfigError, match=r"NaN or infinite values in 2 node\(s\) "
                                          r"\(first: \[3, 7\]\)"):
        load_dataset(str(path))
    model = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes)
    with pytest.raises(ConfigError, match="'Trainer': the features hold NaN"):
        Trainer(model, data, TrainConfig.create("full"))


# ------------------------------------------------------ 8. messages, not tracebacks
@pytest.mark.parametrize("name, message", [
    ("cdua", "'device' must be 'cpu', 'cuda' or 'cuda:N', received 'cdua'"),
    ("cuda:99", "'device'")])
def test_bad_devices_are_one_line(capsys, name, message):
    if name == "cuda:99" and not torch.cuda.is_available():
        message = "needs CUDA, which this machine's torch does not have"
    assert run(train("--device", name, "--epochs", "1")) == EXIT_INPUT
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes)"), (b"garbage, not a zip", "cannot be read"),
    (None, "cannot be read")])  # None: a real checkpoint, truncated
def test_unreadable_checkpoints_are_one_line(tmp_path, capsys, content, message):
    ck = tmp_path / "ck"
    target = tmp_path / "ck.vq.pt"
    if content is None:
        assert run(train("--epochs", "1", "--checkpoint", str(ck))) == 0
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.write_bytes(content)
    capsys.readouterr()
    assert run(train("--epochs", "2", "--checkpoint", str(ck), "--resume")) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("vqgnn train: error:")


def _interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    """Full-graph training (one step an epoch) raises KeyboardInterrupt in ``epoch``."""
    from vqgnn.train.methods import FullGraphMethod

    original = FullGraphMethod.loss
    calls = []

    def loss(self, batch):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(FullGraphMethod, "loss", loss)


def test_ctrl_c_names_only_a_checkpoint_this_run_can_continue(tmp_path, monkeypatch, capsys):
    ck = str(tmp_path / "ck")

    def train_full(*argv: str) -> list[str]:
        return ["train", "--dataset", DATASET, "--hidden", "16", "--quiet", "--method",
                "full", "--checkpoint", ck, *argv]
    # Nothing written yet: no file is named.
    _interrupt_at_epoch(monkeypatch, 2)
    assert run(train_full("--epochs", "5", "--checkpoint-every", "3")) == EXIT_INTERRUPTED
    assert ("interrupted while training full; no checkpoint was written yet (one is "
            "written every 3 epochs)") in capsys.readouterr().err
    assert not (tmp_path / "ck.full.pt").exists()
    # This run's own checkpoint (epoch 1 of 5, interrupted in epoch 2).
    _interrupt_at_epoch(monkeypatch, 2)
    assert run(train_full("--epochs", "5")) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert f"; the last checkpoint is {ck}.full.pt (continue with --resume)" in err
    assert load_state(f"{ck}.full.pt")["epoch"] == 1
    # A new run of the same configuration, without --resume, interrupted before its
    # first checkpoint: the file is the earlier run's, and the message says so.
    _interrupt_at_epoch(monkeypatch, 2)
    assert run(train_full("--epochs", "5", "--checkpoint-every", "3")) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "the last checkpoint is" not in err
    assert (f"; this run wrote no checkpoint yet (one is written every 3 epochs): "
            f"{ck}.full.pt is an earlier run's, which --resume would continue") in err
    # Resumed at epoch 1 and interrupted before writing another: still the resumed one.
    _interrupt_at_epoch(monkeypatch, 1)
    assert run(train_full("--epochs", "5", "--checkpoint-every", "3", "--resume")) \
        == EXIT_INTERRUPTED
    assert (f"; no checkpoint was written since resuming: {ck}.full.pt is still the one "
            f"resumed (continue with --resume)") in capsys.readouterr().err
    assert load_state(f"{ck}.full.pt")["epoch"] == 1


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04 broken"])
def test_a_pt_file_that_is_not_a_torch_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "g.pt"
    path.write_bytes(content)
    assert run(["train", "--dataset", str(path), "--epochs", "1", "--quiet"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.startswith("vqgnn train: error: load_dataset:") and err.count("\n") == 1


def test_bad_json_paths_fail_before_training(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("trained before checking --json")

    monkeypatch.setattr("vqgnn.train.run_experiment", never)
    assert run(train("--json", str(tmp_path))) == EXIT_INPUT
    assert "is a directory" in capsys.readouterr().err
    original = Path.open

    def read_only(self, mode="r", *args, **kwargs):
        if self.name == "ro.jsonl" and "a" in mode:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return original(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", read_only)
    assert run(train("--json", str(tmp_path / "ro.jsonl"))) == EXIT_INPUT
    assert "cannot append to" in capsys.readouterr().err


def test_bad_checkpoint_paths_fail_before_training(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("trained before checking --checkpoint")

    monkeypatch.setattr("vqgnn.train.run_experiment", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder should be
    assert run(train("--checkpoint", str(blocker / "sub" / "ck"))) == EXIT_INPUT
    err = capsys.readouterr().err
    assert f"'--checkpoint': cannot write a checkpoint at '{blocker}/sub/ck.vq.pt'" in err
    (tmp_path / "d.vq.pt").mkdir()
    assert run(train("--checkpoint", str(tmp_path / "d"))) == EXIT_INPUT
    assert "'--checkpoint': " + repr(str(tmp_path / "d.vq.pt")) + " is a directory" in \
        capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.vq.pt", "file"]  # nothing left


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "vqgnn", "train", "--dataset", DATASET, *SMALL, *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_ctrl_c_exits_with_a_line_and_the_last_checkpoint_resumes(tmp_path):
    ck = tmp_path / "ck"
    # Enough epochs that the run cannot finish before the signal lands, even when this
    # process is starved of CPU on a loaded machine (400 epochs of this tiny graph take
    # seconds; a run that ended first exits 0, as two loaded CI runs here saw).
    # The child starts with SIGINT at its default, as a command started from a shell does:
    # a disposition of "ignore" is inherited through exec, and in the full suite the
    # pytest process can hold one (two CI runs here saw the signal ignored).
    proc = subprocess.Popen(_cli("--epochs", "20000", "--checkpoint", str(ck)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    target = tmp_path / "ck.vq.pt"
    deadline = time.time() + 60
    while not target.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert target.exists(), "no checkpoint was written within 60 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, (
        f"exit {proc.returncode}; SIGINT in this pytest process: "
        f"{signal.getsignal(signal.SIGINT)!r}; stderr: {err[-2000:]}")
    assert "interrupted while training vq; the last checkpoint is" in err
    assert "Traceback" not in err
    epoch = load_state(target)["epoch"]
    assert 1 <= epoch < 20000


# ------------------------------------------------------ 9. safe checkpoint loading
class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    save_state({"epoch": 1, "evil": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="holds objects that are not weights: it would "
                                              "import \\S+; it is refused rather than "
                                              "run") as info:
        load_state(path)
    assert not marker.exists()  # nothing ran
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)  # one plain line


# ------------------------------------------------------ 10. smaller ones
def test_too_many_parts_is_one_line_without_metis_output(capfd):
    assert run(train("--method", "cluster", "--num-parts", "301", "--epochs", "1")) == EXIT_INPUT
    out, err = capfd.readouterr()
    assert "'num_parts' must be at most the number of nodes (300), received 301" in err
    assert len((out + err).splitlines()) <= 2


def test_more_codewords_than_nodes_warns():
    data = load_dataset(DATASET)
    with pytest.warns(UserWarning, match="K=512 exceeds the graph's 300 nodes") as caught:
        model = VQGNN(8, 16, 2, 3, num_nodes=data.num_nodes, num_codewords=512)
    Trainer(model, data, TrainConfig.create("vq", epochs=1))
    from torch_geometric.nn import GCNConv

    from vqgnn import VQConv

    with pytest.warns(UserWarning, match="'VQConv': num_codewords K=301 exceeds the graph's "
                                         "300 nodes") as again:  # a layer of one's own, too
        VQConv(GCNConv(8, 4), num_codewords=301, num_nodes=300)
    # Both name this file, the user's line, not the library's (VQGNN builds its layers
    # through torch's ModuleList).
    assert {w.filename for w in [*caught, *again]} == {__file__}


@pytest.mark.parametrize("method", ["vq", "full", "sage", "cluster", "saint"])
def test_more_codewords_than_nodes_warns_only_the_method_that_uses_codebooks(method):
    import warnings

    from vqgnn.quantize import CodebookOptions
    from vqgnn.train import ModelConfig, run_experiment

    model = ModelConfig(hidden=8, codebook=CodebookOptions(num_codewords=512))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_experiment(load_dataset(DATASET), model, TrainConfig.create(
            method, epochs=1, measure_memory=False, **({} if method == "full" else
                                                       {"batch_size": 100})))
    warned = [w for w in caught if "K=512 exceeds the graph's 300 nodes" in str(w.message)]
    assert bool(warned) == (method == "vq"), [str(w.message) for w in caught]


def test_an_empty_validation_mask_is_an_error_before_training():
    data = load_dataset(DATASET)
    data.val_mask = torch.zeros_like(data.val_mask)
    with pytest.raises(ConfigError, match="no val nodes \\(val_mask is empty\\)"):
        Trainer(VQGNN(8, 16, 2, 3, num_nodes=300), data, TrainConfig.create("full"))


def test_after_a_state_dict_round_trip_the_error_names_set_constant_input():
    from vqgnn.batching.graph import VQGraph

    data = load_dataset(DATASET)
    graph = VQGraph(data.edge_index, data.num_nodes)
    model = VQGNN(8, 16, 2, 3, num_nodes=300, num_codewords=16)
    model.prepare(data.x, graph)
    again = VQGNN(8, 16, 2, 3, num_nodes=300, num_codewords=16)
    again.load_state_dict(model.state_dict())
    batch = torch.arange(10)
    with pytest.raises(ConfigError, match="call set_constant_input\\(x, graph\\)"):
        again(data.x[batch], graph, batch)


def test_vq_inference_uses_training_sized_batches(monkeypatch):
    """On a graph smaller than eval_batch_size, VQ inference still runs batches of the
    training size (a batch of every node would be exact inference under another name)."""
    data = load_dataset(DATASET)
    model = VQGNN(8, 16, 2, 3, num_nodes=300, num_codewords=16)
    trainer = Trainer(model, data, TrainConfig.create("vq", batch_size=64, epochs=1,
                                                       eval_batch_size=4096,
                                                       inference_batches="random"))
    trainer.prepare()
    sizes = []
    forward = model._forward

    def spy(x, graph, batch=None, edge_weight=None, before_layer=None):
        if batch is not None:
            sizes.append(batch.numel())
        return forward(x, graph, batch, edge_weight, before_layer)

    monkeypatch.setattr(model, "_forward", spy)
    trainer.predict("vq")
    # Three passes over the same batches ('auto'): the prediction as training left the
    # assignments, the refresh, and the prediction after it.
    assert max(sizes) == 64 and sum(sizes) == 3 * 300


# ------------------------------------------------------ fault injection
def _final_record(path: Path) -> dict:
    records = strict_lines(path)
    assert records, f"no record in {path}"
    return records[-1]


@pytest.mark.slow
def test_killed_at_random_points_every_record_parses_and_resume_matches(tmp_path):
    """SIGKILL during training (and maybe during a checkpoint or record write), several
    seeds; then ``--resume`` until done. The record files always parse, and the resumed
    run ends where an uninterrupted run ends (the same per-epoch losses and result)."""
    epochs = "12"
    reference = tmp_path / "reference.jsonl"
    subprocess.run(_cli("--method", "vq,full", "--epochs", epochs, "--json", str(reference)),
                   env=_env(), check=True, timeout=300, capture_output=True)
    expected = {r["method"]: r for r in strict_lines(reference)}
    started = time.time()
    for seed in range(3):
        rng = random.Random(seed)
        folder = tmp_path / f"run{seed}"
        folder.mkdir()
        ck, records = folder / "ck", folder / "r.jsonl"
        argv = _cli("--method", "vq,full", "--epochs", epochs, "--checkpoint", str(ck),
                    "--json", str(records))
        for _ in range(2):  # two kills per seed, at random moments
            proc = subprocess.Popen(argv + (["--resume"] if (folder / "ck.vq.pt").exists()
                                            else []), env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(2.0, 6.0))
            proc.kill()
            proc.wait(timeout=30)
            if records.exists():
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # not even a torn line
                    read_records(records)
                strict_lines(records)
        done = subprocess.run(argv + ["--resume"], env=_env(), timeout=300,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        got = {r["method"]: r for r in strict_lines(records)}
        for method, want in expected.items():
            have = got[method]
            assert [h["loss"] for h in have["history"]] == [h["loss"] for h in want["history"]]
            assert (have["best_epoch"], have["best_val"], have["test"]) == (
                want["best_epoch"], want["best_val"], want["test"])
        assert time.time() - started < 600


def test_resuming_a_finished_run_does_not_record_it_twice(tmp_path, capsys):
    ck, path = tmp_path / "ck", tmp_path / "r.jsonl"
    argv = train("--method", "vq,full", "--epochs", "2", "--checkpoint", str(ck),
                 "--json", str(path))
    assert run(argv) == 0
    assert run([*argv, "--resume"]) == 0
    assert [r["method"] for r in strict_lines(path)] == ["vq", "full"]
    assert capsys.readouterr().err.count("not appended again") == 2
    assert run([*argv[:-4], "--epochs", "3", "--checkpoint", str(ck), "--json", str(path),
                "--resume"]) == 0  # trains one more epoch: a new record
    records = strict_lines(path)
    assert [(r["method"], r["epochs_run"], r["resumed_at_epoch"]) for r in records[2:]] == [
        ("vq", 3, 2), ("full", 3, 2)]
    assert records[2]["setup_seconds"] == records[0]["setup_seconds"]  # from the checkpoint


def test_a_missing_checkpoint_is_a_file_not_found_error():
    from vqgnn.train.checkpoint import MissingCheckpointError

    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_state("/nonexistent/ck.vq.pt")
    assert issubclass(MissingCheckpointError, ConfigError)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_a_cpu_checkpoint_resumes_on_cuda(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert run(train("--epochs", "2", "--checkpoint", str(ck))) == 0
    assert run(train("--epochs", "3", "--checkpoint", str(ck), "--resume", "--device",
                     "cuda")) == 0
    assert load_state(tmp_path / "ck.vq.pt")["epoch"] == 3
