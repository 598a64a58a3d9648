"""The ``vqgnn`` command line: ``info`` and ``train``, exit codes, tables, JSON records."""
from __future__ import annotations

import json
import re

import pytest
import torch

from vqgnn.cli import main

DATASET = "synthetic:n=300,deg=6,features=8,classes=3"
JSON_KEYS = {"dataset", "split", "method", "conv", "seed", "metric", "best_val", "test",
             "median_epoch_seconds", "peak_memory_bytes", "memory_measure", "inference_seconds"}
SMALL = ["--hidden", "16", "--num-codewords", "16", "--batch-size", "64"]



def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def read_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_info(capsys):
    assert run(["info", "--dataset", "synthetic:n=200,deg=4"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("| field") and lines[1].startswith("|--")
    assert "| nodes" in out and "200" in out
    for row in ("edges (directed)", "classes", "metric", "train nodes", "edge homophily",
                "load time"):
        assert f"| {row}" in out


def test_info_unknown_dataset(capsys):
    assert run(["info", "--dataset", "nosuch"]) == 2
    captured = capsys.readouterr()
    assert "vqgnn info: error:" in captured.err
    assert "unknown dataset 'nosuch'" in captured.err
    assert "Cora" in captured.err and "synthetic" in captured.err


def test_no_command_is_a_usage_error(capsys):
    assert run([]) == 2
    assert "usage: vqgnn" in capsys.readouterr().err


def test_train_two_methods(tmp_path, capsys):
    path = tmp_path / "out" / "r.jsonl"
    code = run(["train", "--dataset", DATASET, "--method", "vq,full", "--epochs", "3", *SMALL,
                "--quiet", "--json", str(path)])
    assert code == 0
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | best val accuracy | test accuracy")
    assert rows[1].startswith("| vq |") and rows[2].startswith("| full |")
    assert "batch size: vq 64, K=16, seed=0," in captured.out
    assert "[vq] epoch" not in captured.out  # --quiet: no epoch logs
    assert captured.err == ""  # --quiet: no progress bars
    records = read_records(path)
    assert [r["method"] for r in records] == ["vq", "full"]
    for record in records:
        assert JSON_KEYS <= record.keys()
        assert record["conv"] == "gcn" and record["seed"] == 0 and record["split"] == 0
        assert record["dataset"].startswith("synthetic:n=300") and record["metric"] == "accuracy"
        assert len(record["history"]) == 3 and 0 <= record["test"] <= 1
    # --json appends.
    assert run(["train", "--dataset", DATASET, "--method", "full", "--epochs", "1", "--quiet",
                "--json", str(path)]) == 0
    assert len(read_records(path)) == 3


def test_train_verbose(capsys, monkeypatch):
    import sys

    argv = ["train", "--dataset", DATASET, "--method", "vq", "--epochs", "2", *SMALL]
    assert run(argv) == 0
    captured = capsys.readouterr()
    assert "| nodes" in captured.out  # the dataset summary first
    assert "[vq] epoch   1/2 | loss" in captured.out and "[vq] epoch   2/2" in captured.out
    assert "epoch 1" not in captured.err  # standard error is no terminal here: no bars
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert run(argv) == 0
    assert "epoch 1" in capsys.readouterr().err  # progress bars on a terminal


@pytest.mark.parametrize("argv, match", [
    (["--method", "bogus"], "'method' must be one of .* received 'bogus'"),
    (["--method", "vq,bogus"], "'method'"),
    (["--epochs", "0"], "'epochs' must be an int >= 1"),
    (["--lr", "-1"], "'lr' must be > 0"),
    (["--patience", "0"], "'patience'"),
    (["--num-codewords", "0"], "'num_codewords' must be an int >= 1"),
    (["--method", "sage", "--num-neighbors", "5"], "'num_neighbors' needs a fan-out per layer"),
    (["--method", "saint", "--walk-length", "0"], "'walk_length' must be an int >= 1"),
])
def test_train_bad_options(capsys, argv, match):
    assert run(["train", "--dataset", DATASET, "--epochs", "1", "--quiet", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("vqgnn train: error:")
    assert re.search(match, captured.err)


def test_train_bad_choice_is_an_argparse_error(capsys):
    assert run(["train", "--dataset", DATASET, "--optimizer", "rmsprop"]) == 2
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err
    assert run(["train", "--dataset", DATASET, "--num-neighbors", "5,x"]) == 2
    assert ("argument --num-neighbors: '--num-neighbors' must be comma-separated ints such as "
            "15,10,5, received '5,x'") in capsys.readouterr().err
    assert run(["train", "--dataset", DATASET, "--inference-refresh", "sometimes"]) == 2
    assert ("argument --inference-refresh: '--inference-refresh' must be an int >= 0 or "
            "'auto', received 'sometimes'") in capsys.readouterr().err


@pytest.mark.parametrize("refresh", ["auto", "0", "2"])
def test_inference_refresh_from_the_command_line_reaches_the_record(tmp_path, capsys, refresh):
    path = tmp_path / "r.jsonl"
    assert run(["train", "--dataset", DATASET, "--method", "vq", "--epochs", "1", *SMALL,
                "--inference", "vq", "--inference-refresh", refresh, "--quiet",
                "--json", str(path)]) == 0
    summary = read_records(path)[0]["vq_inference"]
    expected = refresh if refresh == "auto" else int(refresh)
    assert summary["refresh"] == expected
    assert summary["refresh_used"] in ((0, 1) if refresh == "auto" else (expected,))


def test_train_checkpoint_and_resume(tmp_path, capsys):
    checkpoint = tmp_path / "ck.pt"
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    base = ["train", "--dataset", DATASET, "--method", "vq,full", *SMALL, "--quiet",
            "--checkpoint", str(checkpoint)]
    assert run([*base, "--epochs", "2", "--json", str(first)]) == 0
    for method in ("vq", "full"):  # one file per method
        assert (tmp_path / f"ck.{method}.pt").is_file()
    assert run([*base, "--epochs", "4", "--resume", "--json", str(second)]) == 0
    for before, after in zip(read_records(first), read_records(second)):
        assert len(before["history"]) == 2 and len(after["history"]) == 4
        assert ([h["loss"] for h in after["history"][:2]]
                == [h["loss"] for h in before["history"]])
        state = torch.load(tmp_path / f"ck.{after['method']}.pt", weights_only=False)
        assert state["epoch"] == 4
    # --checkpoint-every reaches the run (tests/train/test_trainer.py checks the epochs
    # written): over 5 epochs, the last one is written whatever the interval
    every = tmp_path / "every.pt"
    assert run(["train", "--dataset", DATASET, "--method", "vq", *SMALL, "--quiet",
                "--checkpoint", str(every), "--checkpoint-every", "2", "--epochs", "5",
                "--json", str(tmp_path / "every.jsonl")]) == 0
    assert torch.load(tmp_path / "every.vq.pt", weights_only=False)["epoch"] == 5
    assert read_records(tmp_path / "every.jsonl")[0]["train_config"]["checkpoint_every"] == 2
    capsys.readouterr()
    assert run(["train", "--dataset", DATASET, "--method", "vq", *SMALL, "--quiet",
                "--checkpoint", str(every), "--checkpoint-every", "0"]) != 0
    assert "'checkpoint_every' must be an int >= 1, received 0" in capsys.readouterr().err
    assert run(["train", "--dataset", DATASET, "--method", "vq", *SMALL, "--quiet",
                "--checkpoint-every", "3"]) != 0
    assert ("'--checkpoint-every' needs '--checkpoint PATH' (received --checkpoint-every 3 "
            "without it)") in capsys.readouterr().err


def test_train_baselines_side_by_side(tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    argv = ["train", "--dataset", DATASET, "--method", "full,sage,cluster,saint", "--epochs",
            "3", "--quiet", "--num-neighbors", "4,3", "--num-parts", "8", "--walk-length", "3",
            "--saint-coverage", "5", "--json", str(out), *SMALL]
    assert run(argv) == 0
    table = capsys.readouterr().out
    records = read_records(out)
    assert [r["method"] for r in records] == ["full", "sage", "cluster", "saint"]
    for r in records:
        assert JSON_KEYS <= r.keys() and r["test_vq"] is None
        assert f"| {r['method']} |" in table
    size = records[1]["train_config"]["batch_size"]  # full-graph training has none
    # no K: none of these methods reads the codebooks its model builds
    assert f"batch size: sage {size}, cluster {size}, saint {size}, seed=0," in table
    configs = {r["method"]: r["train_config"] for r in records}
    assert configs["sage"]["num_neighbors"] == [4, 3]
    assert configs["cluster"]["num_parts"] == 8 and configs["saint"]["walk_length"] == 3


def test_an_option_no_listed_method_takes_is_an_error(capsys):
    assert run(["train", "--dataset", DATASET, "--method", "full", "--sampler", "metis",
                "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqgnn train: error: '--sampler' does not apply to method full "
                          "(it is an option of vq)")
    assert len(err.strip().splitlines()) == 1
    # Listed side by side, each method takes the options it has.
    assert run(["train", "--dataset", DATASET, "--method", "vq,full", "--sampler", "metis",
                "--epochs", "1", "--quiet", *SMALL]) == 0
    capsys.readouterr()


def test_codebook_options_from_the_command_line_reach_the_codebook(monkeypatch, capsys):
    from vqgnn import cli
    from vqgnn.train import experiment

    built = []
    original = experiment.ModelConfig.build

    def spy(self, data):
        model = original(self, data)
        built.append(model)
        return model

    monkeypatch.setattr(experiment.ModelConfig, "build", spy)
    assert run(["train", "--dataset", DATASET, "--method", "vq", "--epochs", "1", "--quiet",
                "--hidden", "16", "--batch-size", "64", "--num-codewords", "12",
                "--codebook-decay", "0.9", "--dead-threshold", "0.05",
                "--standardizer-momentum", "0.3", "--kmeans-backend", "torch",
                "--kmeans-iters", "5"]) == 0
    (model,) = built
    quantizer = model.layers[1].quantizer
    cb = quantizer.codebook
    assert (cb.num_codewords, cb.decay, cb.dead_threshold, cb.kmeans_backend,
            cb.kmeans_iters) == (12, 0.9, 0.05, "torch", 5)
    assert quantizer.x_norm.momentum == quantizer.g_norm.momentum == 0.3
    assert cli.CODEBOOK_FLAGS["codebook_decay"] == "decay"
    capsys.readouterr()


def test_input_errors_are_one_line_and_bugs_show_their_traceback(monkeypatch, capsys):
    assert run(["train", "--dataset", DATASET, "--codebook-decay", "1.5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == ("vqgnn train: error: 'CodebookOptions': 'decay' must be in [0, 1), "
                   "received 1.5 (option --codebook-decay)\n")

    def bug(*args, **kwargs):
        raise ValueError("a library bug, not the user's input")

    monkeypatch.setattr("vqgnn.train.run_experiment", bug)
    with pytest.raises(ValueError, match="a library bug"):  # not turned into a usage line
        main(["train", "--dataset", DATASET, "--epochs", "1", "--quiet"])

    def type_bug(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr("vqgnn.train.run_experiment", type_bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["train", "--dataset", DATASET, "--epochs", "1", "--quiet"])


@pytest.mark.parametrize("flag, bad", [("feature-dtype", "int8"), ("precision", "float16")])
def test_train_in_bfloat16_records_it(flag, bad, tmp_path, capsys):
    """Features stored in bfloat16 (--feature-dtype), or steps under bfloat16 autocast
    (--precision): the records say so; another value is a usage error."""
    path = tmp_path / "r.jsonl"
    assert run(["train", "--dataset", DATASET, "--method", "vq,full", "--epochs", "2", *SMALL,
                f"--{flag}", "bfloat16", "--quiet", "--json", str(path)]) == 0
    records = read_records(path)
    key = flag.replace("-", "_")
    assert [r["train_config"][key] for r in records] == ["bfloat16", "bfloat16"]
    assert all(0 <= r["test"] <= 1 for r in records)
    assert run(["train", "--dataset", DATASET, f"--{flag}", bad]) == 2
    assert f"--{flag}: invalid choice: '{bad}'" in capsys.readouterr().err


def test_an_unknown_option_gets_the_commands_usage_and_a_suggestion(capsys):
    assert run(["train", "--dataset", DATASET, "--batch_size", "128"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vqgnn train ")
    assert err.strip().endswith("vqgnn train: error: unrecognized arguments: --batch_size 128 "
                                "(did you mean --batch-size?)")
    assert run(["train", "--dataset", DATASET, "--zzz"]) == 2
    assert capsys.readouterr().err.strip().endswith("unrecognized arguments: --zzz")


def test_train_help_names_each_default_once(capsys):
    assert run(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "default 1024) (default" not in out
    assert "--epochs EPOCHS maximum epochs (default: 100)" in out
    # defaults of 0 and 0.0 are shown (they equal False, and were taken for an off flag)
    assert "--seed SEED random seed (default: 0)" in out
    assert "--weight-decay WEIGHT_DECAY weight decay (default: 0.0)" in out


@pytest.mark.parametrize("argv, message", [
    (["--codebook-decay", "1.5"], "'decay' must be in [0, 1), received 1.5 (option "
                                  "--codebook-decay)"),
    (["--layers", "0"], "'num_layers' must be an int >= 1, received 0 (option --layers)"),
    (["--lr", "-1"], "'lr' must be > 0, received -1.0 (option --lr)"),
    (["--method", "vqq"], "received 'vqq' (option --method)"),
    # the global-attention flags in the command line's terms, not the library's parameters
    (["--attention-heads", "3"], "'--attention-heads' needs '--global-attention' (received "
                                 "--attention-heads 3 without it)"),
    (["--global-attention"], "'--global-attention' needs the residual layout: add "
                             "'--residual' or '--ffn'"),
    (["--global-attention", "--ffn", "--attention-heads", "3"],
     "'--attention-heads' must divide '--hidden' (64), received 3; e.g. 1, 2, 4, 8, 16"),
])
def test_a_bad_option_value_names_the_option(argv, message, capsys):
    assert run(["train", "--dataset", DATASET, "--epochs", "1", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_script_parser_shows_the_first_paragraph_and_every_default(capsys):
    from vqgnn import cli

    parser = cli.script_parser("""One line that goes
on to a second line.

More text, for the epilog.""")
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--flag", action="store_true")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "One line that goes\non to a second line.\n" in out
    assert out.rstrip().endswith("More text, for the epilog.")
    text = " ".join(out.split())
    assert "--nodes NODES default: 20000" in text
    assert "--lr LR learning rate (default: 0.01)" in text
    assert "--seed SEED --flag" in text  # no default to name


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import sys

    from vqgnn import cli

    args = cli.build_parser().parse_args(["train", "--dataset", DATASET])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert cli.train_config(args, "vq").progress is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.train_config(args, "vq").progress is True
    args.quiet = True
    assert cli.train_config(args, "vq").progress is False
