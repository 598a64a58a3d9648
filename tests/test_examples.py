"""The scripts in examples/ run end to end with tiny settings and print sane figures."""
from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(-?[\d.]+|nan|inf)"


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, args: list[str], monkeypatch, capsys) -> str:
    module = load_module(ROOT / "examples" / f"{name}.py", f"examples_{name}")
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    module.main()
    return capsys.readouterr().out


def fractions(values) -> list[float]:
    """Asserts the figures are finite fractions in [0, 1] and returns them as floats."""
    out = [float(v) for v in values]
    for v in out:
        assert math.isfinite(v) and 0.0 <= v <= 1.0, out
    return out


def test_wrap_pyg_model(monkeypatch, capsys) -> None:
    out = run_example("wrap_pyg_model", [
        "--dataset", "synthetic:n=300,deg=8", "--epochs", "2", "--hidden", "8",
        "--batch-size", "64", "--num-codewords", "8"], monkeypatch, capsys)
    pattern = (rf"epoch +(\d+) \| loss {NUMBER} \| val accuracy {NUMBER} \| "
               rf"test accuracy {NUMBER} \| codebook use {NUMBER} ppl {NUMBER} qerr {NUMBER}")
    lines = re.findall(pattern, out)
    assert [int(line[0]) for line in lines] == [1, 2], out
    for _, loss, val, test, usage, ppl, qerr in lines:
        assert math.isfinite(float(loss)) and float(loss) > 0
        fractions([val, test, usage])
        assert 1.0 <= float(ppl) <= 8.0 and math.isfinite(float(qerr))


def test_ogb_arxiv_on_a_tiny_ogb_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    ogb_nodeproppred = pytest.importorskip("ogb.nodeproppred", reason="ogb is a dependency")
    helpers = load_module(ROOT / "tests" / "datasets" / "conftest.py", "datasets_conftest")
    helpers.write_ogb_arxiv(tmp_path, num_nodes=60, num_edges=200)
    calls = []

    class Spy(ogb_nodeproppred.Evaluator):  # type: ignore[misc, name-defined]
        def eval(self, input_dict):
            calls.append(self.name)
            return super().eval(input_dict)

    monkeypatch.setattr(ogb_nodeproppred, "Evaluator", Spy)
    out = run_example("ogb_arxiv", [
        "--root", str(tmp_path), "--epochs", "2", "--hidden", "8", "--batch-size", "16",
        "--num-codewords", "8", "--device", "cpu"], monkeypatch, capsys)
    assert "ogbn-arxiv: 60 nodes" in out and "train/val/test 30/10/20" in out
    epochs = re.findall(rf"epoch +(\d)/2 \| loss {NUMBER} \| accuracy train {NUMBER} "
                        rf"val {NUMBER} test {NUMBER} \|", out)
    assert [e[0] for e in epochs] == ["1", "2"], out
    for _, loss, *scores in epochs:
        assert math.isfinite(float(loss))
        fractions(scores)
    final = re.search(rf"Best epoch [12]/2 \(OGB Evaluator, accuracy, exact inference\): "
                      rf"train {NUMBER}% \| valid {NUMBER}% \| test {NUMBER}%", out)
    assert final is not None, out
    fractions(float(v) / 100 for v in final.groups())
    assert re.search(rf"VQ mini-batch inference: valid {NUMBER}% \| test {NUMBER}%", out)
    assert calls and set(calls) == {"ogbn-arxiv"}  # scored by OGB's own evaluator


def _table(out: str) -> dict[str, list[float]]:
    rows = re.findall(rf"^\| (vq|full) \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$",
                      out, flags=re.M)
    return {method: [float(v) for v in values] for method, *values in rows}


def test_own_graph_generated_matches_the_command_line(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    path = tmp_path / "my_graph.pt"
    settings = ["--epochs", "2", "--hidden", "8", "--batch-size", "64",
                "--num-codewords", "8"]
    out = run_example("own_graph", ["--num-nodes", "300", "--out", str(path), *settings],
                      monkeypatch, capsys)
    assert path.is_file()
    assert "| method | val accuracy | test accuracy | epoch time (s) |" in out
    table = _table(out)
    assert set(table) == {"vq", "full"}, out
    for val, test, seconds, megabytes in table.values():
        fractions([val / 100, test / 100])
        assert seconds >= 0 and megabytes >= 0
    command = f"vqgnn train --dataset {path} --method vq,full"
    assert command in out

    from vqgnn import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *out.split("vqgnn train ")[1].split(), "--quiet"])
    assert exit_info.value.code == 0
    cli_rows = re.findall(rf"^\| (vq|full) \| {NUMBER} \| {NUMBER} \|", capsys.readouterr().out,
                          flags=re.M)
    assert {m: [float(v), float(t)] for m, v, t in cli_rows} == {
        m: values[:2] for m, values in table.items()}  # the same runs, the same figures


def test_own_graph_from_csv_files(tmp_path: Path, monkeypatch, capsys) -> None:
    rng = np.random.default_rng(0)
    n = 120
    y = np.arange(n) % 3
    edges = np.stack([np.arange(n), (np.arange(n) + 3) % n], axis=1)  # same-class ring links
    np.savetxt(tmp_path / "edges.csv", edges, delimiter=",", fmt="%d")
    np.savetxt(tmp_path / "feats.csv", rng.normal(size=(n, 4)) + y[:, None], delimiter=",")
    np.savetxt(tmp_path / "labels.csv", y, fmt="%d")
    out = run_example("own_graph", [
        "--edges", str(tmp_path / "edges.csv"), "--features", str(tmp_path / "feats.csv"),
        "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "g.pt"),
        "--epochs", "2", "--hidden", "8", "--batch-size", "32", "--num-codewords", "4"],
        monkeypatch, capsys)
    assert f"{tmp_path / 'g.pt'}: 120 nodes, 240 edges, 3 classes" in out
    table = _table(out)
    assert set(table) == {"vq", "full"}, out
    for val, test, _, _ in table.values():
        fractions([val / 100, test / 100])
    # one of the three files alone: one line naming the others, not numpy's traceback
    with pytest.raises(SystemExit):
        run_example("own_graph", ["--edges", str(tmp_path / "edges.csv")], monkeypatch, capsys)
    assert ("--edges, --features and --labels go together (one graph from three CSV files); "
            "received only --edges") in capsys.readouterr().err
