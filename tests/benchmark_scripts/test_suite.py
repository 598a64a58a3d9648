"""The benchmark scripts: grid presets resume and report, the scaling run records
failures, the OGB script runs on OGB-format folders the test writes."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks import grid, ogb, report, scaling
from vqgnn.quantize import CodebookOptions

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
K16 = CodebookOptions(num_codewords=16)


def _helpers():
    """The OGB-format writers of the dataset tests."""
    spec = importlib.util.spec_from_file_location(
        "datasets_conftest", ROOT / "tests" / "datasets" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DATASET_TINY = "synthetic:n=300,deg=6,features=8,classes=3"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Copies of the shared data and the records go to a temporary folder."""
    monkeypatch.setattr(grid, "RESULTS", tmp_path)
    return tmp_path


def tiny_suite_preset(monkeypatch, key: str, **train) -> None:
    """The suite's preset ``key`` replaced by a 200-node synthetic graph (2 layers, 8
    hidden, K = 16) trained with ``train``'s options, for the scripts that read it."""
    preset = grid.DatasetPreset("synthetic:n=200,deg=4,features=8,classes=3,seed=0", None,
                                "seed", grid._model(16, hidden=8, layers=2),
                                grid._cfg(**train), runs=1, source=None)
    monkeypatch.setitem(grid.PRESETS["suite"], key, preset)


def test_run_key_ignores_options_at_their_defaults():
    record = {"dataset": "Cora", "split": 0, "seed": 1, "method": "vq",
              "model_config": {"conv": "gcn", "hidden": 64},
              "train_config": {"method": "vq", "epochs": 200, "device": "cpu"}}
    newer = {**record, "train_config": {**record["train_config"], "sampler": "random",
                                        "batch_nodes": "all", "device": "cuda"}}
    assert grid.run_key(record) == grid.run_key(newer)  # an option added later, at default
    changed = {**record, "train_config": {**record["train_config"], "sampler": "metis"}}
    assert grid.run_key(changed) != grid.run_key(record)
    # An option of another method is not part of a vq run's identity.
    other = {**record, "train_config": {**record["train_config"], "walk_length": 3}}
    assert grid.run_key(other) == grid.run_key(record)
    assert grid.run_key({**record, "seed": 2}) != grid.run_key(record)
    # Where and how often a run checkpoints is not part of it.
    every = {**record, "train_config": {**record["train_config"], "checkpoint": "c.pt",
                                        "checkpoint_every": 10}}
    assert grid.run_key(every) == grid.run_key(record)
    # Selected by exact inference, how VQ inference ran is not part of the identity; selected
    # by VQ inference, it is.
    refresh = {**record, "train_config": {**record["train_config"], "inference_refresh": 1}}
    assert grid.run_key(refresh) == grid.run_key(record)
    by_vq = {**record, "train_config": {**record["train_config"], "inference": "vq"}}
    assert grid.run_key({**by_vq, "train_config": {**by_vq["train_config"],
                                                   "inference_refresh": 1}}) != grid.run_key(by_vq)


@pytest.mark.skipif(not (SHARED / "planetoid").exists(), reason="needs ../shared/data")
def test_suite_on_cora_resumes_and_reports(results, capsys):
    argv = ["--datasets", "cora", "--runs", "1", "--epochs", "2", "--data-root", str(SHARED)]
    grid.main(argv)
    out = capsys.readouterr().out
    path = results / "suite.jsonl"
    first = records(path)
    assert [r["method"] for r in first] == ["vq", "full", "sage", "cluster", "saint"]
    assert all(r["dataset"] == "Cora" and r["train_config"]["epochs"] == 2 for r in first)
    assert all(r["train_config"].get("batch_size", 512) == 512 for r in first)  # one size
    assert "batch_size" not in next(r for r in first if r["method"] == "full")["train_config"]
    table = (results / "suite.md").read_text()
    for method in ("vq", "full", "sage", "cluster", "saint"):
        assert f"| Cora | gcn | {method} | 1 |" in table
    assert "time to best (s)" in table and "peak RSS (MB)" in table
    assert "| Cora | gcn | vq within 1 point of full |" in table
    assert "| Cora | gcn | vq not below sage |" in table
    assert (results / "suite-metric-time.png").stat().st_size > 10_000
    assert "plot:" in out and (results / "data" / "planetoid").is_dir()  # a copy was read

    grid.main(argv)  # resumes: nothing new
    again = capsys.readouterr().out
    assert again.count("done before, skipped") == 5
    assert len(records(path)) == 5
    # A record of an earlier configuration of the preset stays in the file, out of the tables.
    old = {**first[0], "train_config": {**first[0]["train_config"], "lr": 0.5}, "test": 0.0}
    with path.open("a") as f:
        f.write(json.dumps(old) + "\n")
    written = (results / "suite.md").read_text()
    grid.main([*argv, "--table-only"])
    assert "| Cora | gcn | vq | 1 |" in written and "--table-only" not in written
    assert (results / "suite.md").read_text() == written  # the run's command stays
    assert "(5 runs," in capsys.readouterr().out


def test_batch_preset(results, monkeypatch, capsys):
    tiny = replace(grid.PRESETS["batch"]["synthetic"],
                   name="synthetic:n=400,deg=6,classes=3,features=8,seed=0",
                   model=replace(grid.PRESETS["batch"]["synthetic"].model,
                                 codebook=CodebookOptions(num_codewords=16)))
    monkeypatch.setitem(grid.PRESETS["batch"], "synthetic", tiny)
    grid.main(["--preset", "batch", "--batch-sizes", "64,128", "--methods", "vq,full,sage",
               "--epochs", "1"])
    rows = records(results / "batch.jsonl")
    seen = sorted((r["method"], r["train_config"].get("batch_size", 0)) for r in rows)
    assert seen == [("full", 0), ("sage", 64), ("sage", 128), ("vq", 64), ("vq", 128)]
    table = (results / "batch.md").read_text()
    assert "| vq | 128 |" in table and "| full | - |" in table
    assert "synthetic:n=400,deg=6" in table
    assert (results / "batch-memory.png").stat().st_size > 10_000


def test_grid_rejects_unknown_datasets(capsys):
    with pytest.raises(SystemExit):
        grid.main(["--datasets", "pubmed"])
    assert "unknown datasets ['pubmed']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grid.main(["--datasets", "cora", "--convs", "gcn,gni"])
    assert "unknown backbones ['gni'] in --convs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grid.main(["--checkpoint-every", "0"])
    assert "--checkpoint-every must be >= 1, received 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grid.main(["--checkpoint-every", "5"])
    assert "--checkpoint-every needs --checkpoints DIR" in capsys.readouterr().err


def _tiny_ogb_presets(monkeypatch) -> None:
    # The presets as they are, with K below the tiny graphs' node counts.
    for name in ("ogbn-arxiv", "ogbn-products"):
        preset = grid.PRESETS[name][name]
        monkeypatch.setitem(grid.PRESETS[name], name,
                            replace(preset, model=replace(preset.model, codebook=K16)))


@pytest.mark.parametrize("name, methods", [("ogbn-arxiv", "vq,full"),
                                           ("ogbn-products", "vq,sage")])
def test_ogb_script_on_tiny_ogb_folders(name, methods, results, tmp_path, monkeypatch, capsys):
    helpers = _helpers()
    write = helpers.write_ogb_arxiv if name == "ogbn-arxiv" else helpers.write_ogb_products
    write(tmp_path / "ogb", num_nodes=80, num_edges=240)
    _tiny_ogb_presets(monkeypatch)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))  # no prompt may wait on stdin
    ogb.main(["--dataset", name, "--root", str(tmp_path / "ogb"), "--methods", methods,
              "--epochs", "1"])
    out = capsys.readouterr().out
    rows = records(results / f"{name}.jsonl")
    assert [r["method"] for r in rows] == methods.split(",")
    assert all(r["dataset"] == name and r["model_config"]["hidden"] == 256
               and r["model_config"]["layers"] == 3 for r in rows)
    for line in report.REFERENCES[name]:
        assert line in out
    assert "Published (not measured here)" in out


# ------------------------------------------------------------------ scaling
def test_scaling_records_sizes_and_failures(tmp_path, capsys):
    out = tmp_path / "scaling.jsonl"
    common = ["--methods", "vq,full", "--epochs", "1", "--batch-size", "64",
              "--num-codewords", "16", "--hidden", "8", "--features", "8", "--out", str(out)]
    scaling.main(["--sizes", "200,400", *common])
    rows = records(out)
    assert sorted((r["method"], r["n"], r["status"]) for r in rows) == [
        ("full", 200, "ok"), ("full", 400, "ok"), ("vq", 200, "ok"), ("vq", 400, "ok")]
    assert all(r["peak_memory_bytes"] > 0 and r["median_epoch_seconds"] > 0 for r in rows)
    text = (tmp_path / "scaling.md").read_text()
    assert "| 400 |" in text and "| vq | 200 to 400 |" in text
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    capsys.readouterr()

    # A limit no run can meet: the first size times out, the larger one is skipped.
    scaling.main(["--sizes", "300,500,600", "--time-limit", "0.5", *common])
    rows = {(r["method"], r["n"]): r for r in records(out)}
    assert rows[("vq", 300)]["status"] == "timeout"
    assert rows[("vq", 500)]["status"] == rows[("vq", 600)]["status"] == "skipped"
    assert rows[("vq", 500)]["reason"] == rows[("vq", 600)]["reason"] == "timeout at n=300"
    assert "| 300 | timeout |" in (tmp_path / "scaling.md").read_text()
    scaling.main(["--sizes", "200,400", *common])  # resumes
    assert capsys.readouterr().out.count("done before") == 4


def test_scaling_threads_and_init_nodes_reach_the_runs_and_name_their_series(tmp_path):
    out = tmp_path / "scaling.jsonl"
    common = ["--methods", "vq,full", "--epochs", "1", "--batch-size", "64", "--sizes", "300",
              "--num-codewords", "16", "--hidden", "8", "--features", "8", "--out", str(out)]
    scaling.main(common)  # a series with inherited threads
    scaling.main([*common, "--threads", "1", "--init-nodes", "100"])
    rows = records(out)
    assert sorted(((r["method"], r.get("threads"), r.get("init_nodes"), r["status"])
                   for r in rows), key=str) == [
        ("full", 1, 100, "ok"), ("full", None, None, "ok"), ("vq", 1, 100, "ok"),
        ("vq", None, None, "ok")]
    args = argparse.Namespace(threads=1, init_nodes=100, deg=10, classes=5, features=8,
                              batch_size=64, saint_coverage=5.0, conv="gcn", epochs=1,
                              num_codewords=16, hidden=8, layers=2, device="cpu")
    args.vq_inference_batches = "random"
    vq = scaling.command(300, "vq", "r.jsonl", args)
    assert vq[vq.index("--init-nodes") + 1] == "100"
    assert vq[vq.index("--inference-batches") + 1] == "random"
    full = scaling.command(300, "full", "r.jsonl", args)
    assert "--init-nodes" not in full and "--inference-batches" not in full
    assert scaling.child_env(args)["OMP_NUM_THREADS"] == "1"
    assert scaling.child_env(argparse.Namespace(threads=None)) is None
    assert "threads 1" in (tmp_path / "scaling.md").read_text()


@pytest.mark.parametrize("code, tail, status", [
    (-9, "", "oom"), (137, "", "oom"), (1, "RuntimeError: DefaultCPUAllocator: can't "
                                           "allocate memory", "oom"),
    (1, "MemoryError", "oom"), (1, "ValueError: bad", "error")])
def test_failure_status(code, tail, status):
    assert scaling.failure_status(code, tail) == status


def test_inference_speed_script_checks_the_paths_agree(capsys):
    from benchmarks import inference_speed

    inference_speed.main(["--nodes", "600", "--repeat", "1", "--features", "8",
                          "--hidden", "16", "--chunk", "128"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "600" and float(cells[-1]) < 1e-4  # the same outputs


def test_stability_curve_figures():
    from benchmarks.stability import curve_figures

    history = [{"epoch": e, "val": v} for e, v in
               [(10, 0.50), (20, 0.80), (25, 0.60), (30, 0.85), (35, 0.84)]]
    history.append({"epoch": 36, "val": None})  # an epoch without evaluation
    drop, gap = curve_figures(history, after=20)
    assert drop == pytest.approx(20.0)  # 0.80 best, 0.60 at epoch 25
    assert gap == pytest.approx(100 * (0.85 - (0.50 + 0.80 + 0.60 + 0.85 + 0.84) / 5))


def test_gap_parts_sum_to_the_last_20_gap():
    from benchmarks.report import curve_figures, gap_parts

    # 10 evaluations up to epoch 20, then a plateau at 0.7 +- 0.02 that sinks by 0.05 for the
    # last 20: the best (0.9 at epoch 5) stands 0.2 above the plateau's first part.
    values = [0.5] * 4 + [0.9] + [0.5] * 5 + [0.72, 0.68] * 15 + [0.65] * 20
    history = [{"epoch": 2 * (i + 1), "val": v} for i, v in enumerate(values)]
    excess, drift, spread = gap_parts(history, after=20)
    _, gap = curve_figures(history, after=20)
    assert excess + drift == pytest.approx(gap)
    plateau = (0.7 * 30 + 0.65 * 20) / 50
    assert excess == pytest.approx(100 * (0.9 - plateau))
    assert drift == pytest.approx(100 * (plateau - 0.65))
    assert spread == pytest.approx(2.0)  # the 30 evaluations before the last 20
    with pytest.raises(ValueError, match="after epoch 100"):
        gap_parts(history[:5], after=100)



def test_stability_variants_change_a_constant_lr_per_step(tmp_path, monkeypatch, capsys):
    """The suite's preset now decays its lr (cosine) per epoch-sized steps; the variants
    stay changes to a constant lr per step, except those that name their schedule."""
    from benchmarks import stability

    tiny_suite_preset(monkeypatch, "cora", epochs=3, batch_size=64, lr=0.01, lr_per_epoch=True,
                      lr_schedule="cosine")
    configs = {}

    def fake_run(data, model, config):
        configs[len(configs)] = config
        return {"dataset": str(data.name), "test": 0.5,
                "history": [{"epoch": e, "val": 0.5} for e in range(1, 4)]}

    monkeypatch.setattr(stability, "run_experiment", fake_run)
    stability.main(["--dataset", "cora", "--seeds", "1", "--out", str(tmp_path / "s.jsonl"),
                    "--variants", "default,lr-per-epoch,lr-per-epoch-cosine"])
    capsys.readouterr()
    assert [(c.lr_schedule, c.lr_per_epoch) for c in configs.values()] == [
        ("constant", False), ("constant", True), ("cosine", True)]


def test_stability_trains_the_given_backbone_and_keys_its_records_by_it(tmp_path, monkeypatch,
                                                                        capsys):
    from benchmarks import stability

    tiny_suite_preset(monkeypatch, "cora", epochs=3, batch_size=64, lr=0.01)
    convs = []

    def fake_run(data, model, config):
        convs.append(model.conv)
        return {"dataset": str(data.name), "conv": model.conv, "test": 0.5,
                "history": [{"epoch": e, "val": 0.5} for e in range(1, 4)]}

    monkeypatch.setattr(stability, "run_experiment", fake_run)
    out = tmp_path / "s.jsonl"
    for conv in ("gcn", "gin", "gin"):  # the second gin run finds its record: nothing trained
        stability.main(["--dataset", "cora", "--seeds", "1", "--out", str(out),
                        "--variants", "default,no-backward", "--conv", conv])
    assert convs == ["gcn", "gcn", "gin", "gin"]
    assert "GIN, the suite's options" in capsys.readouterr().out
    # Records written before --conv have no 'conv': they are GCN's, found, not retrained.
    records = [json.loads(line) for line in out.read_text().splitlines()]
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "conv"}) + "\n"
                           for r in records if r["conv"] == "gcn"))
    stability.main(["--dataset", "cora", "--seeds", "1", "--out", str(old),
                    "--variants", "default,no-backward"])
    assert convs == ["gcn", "gcn", "gin", "gin"]


def test_stability_reference_trains_pyg_convs_in_the_textbook_loop():
    """The bound's noise floor: PyG's convolutions, one full-graph step per epoch, the test
    metric at the first best validation epoch, reproducible by its seed, with the schedule."""
    from benchmarks.stability import reference_run
    from vqgnn.datasets import load_dataset
    from vqgnn.errors import ConfigError
    from vqgnn.train import ModelConfig, TrainConfig

    data = load_dataset(DATASET_TINY + ",seed=0")
    model = ModelConfig(hidden=16, layers=2, dropout=0.5)

    def run(seed: int = 1, schedule: str = "constant", **kw):
        return reference_run(data, replace(model, **kw), TrainConfig.create(
            "full", epochs=30, lr=0.01, lr_schedule=schedule, seed=seed))

    record = run()
    history = record["history"]
    assert [h["epoch"] for h in history] == list(range(1, 31))
    vals = [h["val"] for h in history]
    best = vals.index(max(vals))
    assert record["best_epoch"] == best + 1 and record["test"] == history[best]["test"]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"] and max(vals) > 0.6  # 3 classes
    assert run()["history"] == history  # the seed decides the run
    assert run(seed=2)["history"] != history
    assert run(schedule="cosine")["history"] != history
    assert [h["val"] for h in run(conv="sage")["history"]] != vals
    with pytest.raises(ConfigError, match="'model.layers' must be >= 1, received 0"):
        run(layers=0)
    with pytest.raises(ConfigError, match="'model.residual' must be False, received True"):
        run(residual=True)


def test_stability_reference_variants_run_the_reference_with_full_graph_options(
        tmp_path, monkeypatch, capsys):
    from benchmarks import stability

    tiny_suite_preset(monkeypatch, "cora", epochs=3, batch_size=64, lr=0.01, weight_decay=5e-4,
                      lr_per_epoch=True, lr_schedule="cosine")

    def no_vqgnn(*args):
        raise AssertionError("the reference variants must not run vqgnn's trainer")

    monkeypatch.setattr(stability, "run_experiment", no_vqgnn)
    out = tmp_path / "s.jsonl"
    stability.main(["--dataset", "cora", "--seeds", "2", "--out", str(out),
                    "--variants", "pyg-reference,pyg-reference-cosine"])
    rows = records(out)
    assert [(r["variant"], r["seed"], r["method"]) for r in rows] == [
        ("pyg-reference", 0, "pyg-reference"), ("pyg-reference", 1, "pyg-reference"),
        ("pyg-reference-cosine", 0, "pyg-reference"),
        ("pyg-reference-cosine", 1, "pyg-reference")]
    assert [r["train_config"]["lr_schedule"] for r in rows] == ["constant"] * 2 + ["cosine"] * 2
    assert all(r["train_config"]["weight_decay"] == 5e-4 and len(r["history"]) == 3
               for r in rows)
    assert "| pyg-reference-cosine | 2 |" in capsys.readouterr().out


def test_codebook_decay_script_trains_each_decay_and_resumes(tmp_path, monkeypatch, capsys):
    from benchmarks import codebook_decay

    tiny_suite_preset(monkeypatch, "cora", epochs=4, batch_size=64, lr=0.01, lr_per_epoch=True,
                      lr_schedule="cosine")
    out = tmp_path / "d.jsonl"
    argv = ["--dataset", "cora", "--seeds", "2", "--layers", "3", "--at", "1,3", "--out",
            str(out), "--decays", "0.99,1-1/S"]
    codebook_decay.main(argv)
    rows = records(out)
    assert [(r["variant"], r["seed"], r["method"]) for r in rows] == [
        ("full", 0, "full"), ("full", 1, "full"), ("0.99", 0, "vq"), ("0.99", 1, "vq"),
        ("1-1/S", 0, "vq"), ("1-1/S", 1, "vq")]
    assert all(r["model_config"]["layers"] == 3 and r["train_config"]["epochs"] == 4
               for r in rows)
    # 200 nodes in batches of 64: S = 4 steps per epoch, so 1 - 1/S = 0.75
    assert [r["model_config"]["codebook"]["decay"] for r in rows[2:]] == [0.99, 0.99, 0.75,
                                                                           0.75]
    table = capsys.readouterr().out
    assert "| vq | 1-1/S = 0.750 |" in table and "| val, epoch 1 | val, epoch 3 |" in table
    full = [r for r in rows if r["variant"] == "full"]
    mean = sum(100 * r["test"] for r in full) / 2
    assert "| full | - |" in table and f"| {mean:.2f} |" in table
    codebook_decay.main(argv)  # resumes: nothing new
    assert len(records(out)) == 6
    with pytest.raises(SystemExit):
        codebook_decay.main([*argv[:-1], "0.99,1.5"])
    assert "each value must be a float in [0, 1) or '1-1/S', received '1.5'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        codebook_decay.main(["--layers", "1", "--out", str(out)])
    assert "--layers must be >= 2 (the first layer has no codebook), received 1" in \
        capsys.readouterr().err


def test_search_every_script_trains_each_value_times_them_and_resumes(tmp_path, monkeypatch,
                                                                       capsys):
    from benchmarks import search_every

    tiny_suite_preset(monkeypatch, "tolokers", epochs=3, batch_size=64, lr=0.01)
    out = tmp_path / "s.jsonl"
    argv = ["--seeds", "2", "--every", "1,3", "--out", str(out)]
    search_every.main(argv)
    rows = records(out)
    assert [(r["variant"], r["seed"], r["method"]) for r in rows] == [
        ("full", 0, "full"), ("full", 1, "full"), ("1", 0, "vq"), ("1", 1, "vq"),
        ("3", 0, "vq"), ("3", 1, "vq")]
    assert [r["train_config"].get("search_every") for r in rows] == [None] * 2 + [1, 1, 3, 3]
    table = capsys.readouterr().out
    k3 = sum(100 * r["test"] for r in rows[4:]) / 2
    assert "| vq | 1 |" in table and f"| vq | 3 | {k3:.2f} ± " in table
    search_every.main(argv)  # resumes: nothing new
    assert len(records(out)) == 6
    search_every.main([*argv, "--timing-rounds", "2"])
    timing = records(out)[-1]
    assert timing["variant"] == "timing" and list(timing["epoch_seconds"]) == ["1", "3", "floor"]
    assert all(len(v) == 2 for v in timing["epoch_seconds"].values())
    assert "| VQ-GNN, search every 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        search_every.main([*argv[:-3], "1,0", "--out", str(out)])
    assert "--every must be comma-separated ints >= 1, received '1,0'" in capsys.readouterr().err


@pytest.mark.parametrize("conv,search_every", [("gcn", 1), ("sage", 1), ("gat", 1),
                                               ("gin", 1), ("gcn", 2), ("gat", 2)])
def test_a_vq_step_syncs_with_the_device_at_most_three_times(conv, search_every, capsys):
    """Tensor.item/__bool__/__int__, nonzero, unique, bincount, repeat_interleave without
    output_size, patched and counted over one training step of a 3-layer model (two
    quantized layers): the shared batch gather's two, nothing per layer (GAT's exact first
    layer adds one ``unique`` of its sources); also a step without the codeword search
    (``search_every=2``: the counted step is the epoch's second)."""
    from benchmarks import host_syncs

    host_syncs.main(["--nodes", "400", "--layers", "3", "--batch-size", "64",
                     "--num-codewords", "8", "--conv", conv, "--search-every",
                     str(search_every)])
    out = capsys.readouterr().out
    assert "| calls | call | where |" in out and "| vqgnn/batching/lowrank.py:" in out
    # the counted step searched in both quantized layers, or in none
    assert f"K 8, {2 if search_every == 1 else 0} codeword searches" in out
    counted = int(out.split("syncing calls per step: ")[1].split()[0])
    assert 0 < counted <= 3, out


def test_attention_scaling_records_skips_and_resumes(tmp_path, capsys):
    from benchmarks import attention_scaling

    out = tmp_path / "a.jsonl"
    args = ["--sizes", "200,400,4000", "--channels", "8", "--heads", "2", "--batch-size", "64",
            "--num-codewords", "8", "--exact-limit", "0.0001", "--out", str(out)]
    attention_scaling.main(args)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    status = {(r["n"], r["mode"]): r["status"] for r in records}
    assert status[(200, "exact")] == "ok" and status[(4000, "exact")] == "skipped"
    assert all(status[(n, "vq")] == "ok" for n in (200, 400, 4000))
    vq = {r["n"]: r for r in records if r["mode"] == "vq"}
    assert vq[4000]["steps"] == 63 and vq[400]["saved_bytes"] == vq[4000]["saved_bytes"]
    text = capsys.readouterr().out
    assert "exact at 4,000 nodes not run: projected epoch" in text
    attention_scaling.main(args)  # every size recorded: nothing runs again
    assert len(out.read_text().splitlines()) == len(records)
    assert (tmp_path / "a.png").exists()


def _tiny_attention_benchmark(monkeypatch):
    """benchmarks.attention with one tiny synthetic dataset in place of the real ones."""
    from benchmarks import attention

    preset = grid.DatasetPreset("synthetic:n=300,deg=6,features=8,classes=3,seed=0", None,
                                "seed", attention._ffn(16),
                                grid._cfg(epochs=2, batch_size=64, lr=0.01), runs=1,
                                source=None)
    monkeypatch.setattr(attention, "DATASETS", {"syn": preset})
    return attention


def test_attention_benchmark_runs_four_variants_and_resumes(tmp_path, monkeypatch, capsys):
    attention = _tiny_attention_benchmark(monkeypatch)
    out = tmp_path / "att.jsonl"
    attention.main(["--datasets", "syn", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [attention.variant_of(r) for r in records] == list(attention.VARIANTS)
    assert [r["method"] for r in records] == ["vq", "full", "vq", "full"]
    row = [line for line in capsys.readouterr().out.splitlines()
           if line.startswith("| synthetic")][0]
    assert "| 1/1/1/1 |" in row
    attention.main(["--datasets", "syn", "--out", str(out)])  # all done: nothing runs
    assert len(out.read_text().splitlines()) == 4
    assert "done before, skipped" in capsys.readouterr().out


def test_attention_benchmark_warmup_variants_have_their_own_table(tmp_path, monkeypatch,
                                                                  capsys):
    attention = _tiny_attention_benchmark(monkeypatch)
    out = tmp_path / "att.jsonl"
    attention.main(["--datasets", "syn", "--out", str(out)])
    capsys.readouterr()
    attention.main(["--datasets", "syn", "--out", str(out), "--warmup-epochs", "1"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8  # the warm-up runs are new runs, not "done before"
    warm = records[4:]
    assert [attention.variant_of(r) for r in warm] == list(attention.WARMUP_VARIANTS)
    assert all(r["train_config"]["warmup_epochs"] == 1 for r in warm)
    assert [r["train_config"]["lr_per_epoch"] for r in warm] == [True, False, True, False]
    text = capsys.readouterr().out
    assert "With 1 epochs of lr warm-up" in text
    rows = [line for line in text.splitlines() if line.startswith("| synthetic")]
    # the main table (no warm-up) and the warm-up table each count their own 4 runs
    assert sum("| 1/1/1/1 |" in row for row in rows) == 2
    with pytest.raises(SystemExit):
        attention.main(["--datasets", "syn", "--out", str(out), "--warmup-epochs", "-1"])
    assert "--warmup-epochs must be >= 0, received -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the preset trains 2 epochs
        attention.main(["--datasets", "syn", "--out", str(out), "--warmup-epochs", "2"])
    assert "--warmup-epochs must be below the epochs (2), received 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        attention.main(["--datasets", "syn", "--out", str(out), "--warmup-epochs", "1",
                        "--lr-per-epoch"])
    assert "drop --lr-per-epoch" in capsys.readouterr().err


def test_attention_outputs_prints_each_blocks_norm_and_spread(tmp_path, monkeypatch, capsys):
    from benchmarks import attention_outputs

    attention = _tiny_attention_benchmark(monkeypatch)
    monkeypatch.setattr(attention_outputs, "DATASETS", attention.DATASETS)
    out = tmp_path / "outputs.jsonl"
    attention_outputs.main(["--dataset", "syn", "--epochs", "3", "--warmup-epochs", "2",
                            "--json", str(out)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 3 and all("attn1" in line and "conv0" in line for line in lines)
    record = json.loads(out.read_text())
    assert record["warmup_epochs"] == 2 and len(record["epochs"]) == 3
    first = record["epochs"][0]
    assert first["epoch"] == 1 and first["loss"] > 0 and first["attn0 norm"] > 0
    # a constant output has no spread; distinct rows do
    assert attention_outputs.output_figures(torch.ones(4, 3)) == pytest.approx((3 ** 0.5, 0.0))
    assert attention_outputs.output_figures(torch.eye(3))[1] > 0
    with pytest.raises(SystemExit):
        attention_outputs.main(["--dataset", "syn", "--epochs", "0"])
    assert "--epochs must be >= 1, received 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        attention_outputs.main(["--dataset", "syn", "--epochs", "3", "--warmup-epochs", "3"])
    assert "--warmup-epochs must be below --epochs (3), received 3" in capsys.readouterr().err


def test_attention_outputs_records_training_forwards_only(monkeypatch, capsys):
    """Evaluation runs the model in eval mode after the epoch's steps: the figures logged
    for an epoch are its training forward's, never an evaluation's."""
    from benchmarks import attention_outputs

    attention = _tiny_attention_benchmark(monkeypatch)
    monkeypatch.setattr(attention_outputs, "DATASETS", attention.DATASETS)
    seen: list[bool] = []
    figures = attention_outputs.output_figures

    def spy(out):
        seen.append(torch.is_grad_enabled())
        return figures(out)

    monkeypatch.setattr(attention_outputs, "output_figures", spy)
    attention_outputs.main(["--dataset", "syn", "--epochs", "2"])
    capsys.readouterr()
    assert seen and all(seen)  # 4 layers (2 convs, 2 attentions) per training forward
    assert len(seen) == 4 * 2  # one full-graph forward per epoch, none from evaluation


def test_gpu_device_checks_run_as_one_command_on_the_cpu(tmp_path, capsys):
    """benchmarks/gpu.py: the scaling and attention steps under their time shares, records
    and a summary naming the device (the CUDA run waits for a lent GPU machine)."""
    from benchmarks import gpu

    gpu.main(["--device", "cpu", "--sizes", "1000", "--attention-sizes", "300",
              "--budget", "200", "--skip-tests", "--out", str(tmp_path)])
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# Device checks on cpu")
    assert "scaling: exit 0" in summary and "global attention: exit 0" in summary
    scaling = [json.loads(line) for line in (tmp_path / "scaling.jsonl").read_text().splitlines()]
    assert {r["method"] for r in scaling} == {"vq", "full", "cluster", "saint", "sage"}
    attention = (tmp_path / "attention_scaling.jsonl").read_text().splitlines()
    assert len(attention) == 2


def test_vq_inference_diagnostics_measure_every_variant(tmp_path, capsys):
    from benchmarks import vq_inference

    out = tmp_path / "v.jsonl"
    vq_inference.main(["--dataset", "synthetic:n=600,deg=6,features=8,classes=3",
                       "--epochs", "2", "--batch-size", "128", "--num-codewords", "8",
                       "--hidden", "16", "--out", str(out)])
    record = json.loads(out.read_text().splitlines()[0])
    for name in ("exact", *vq_inference.VARIANTS):
        assert 0.0 <= record[name] <= 100.0, name
    assert "| vq fresh codewords |" in capsys.readouterr().out
    assert record["inference_refresh"] == "auto"
    assert record["vq (trainer) batches"]["refresh_used"] in (0, 1)
    # The same command again skips the finished run; --summary prints its row.
    vq_inference.main(["--dataset", "synthetic:n=600,deg=6,features=8,classes=3",
                       "--epochs", "2", "--batch-size", "128", "--num-codewords", "8",
                       "--hidden", "16", "--out", str(out)])
    assert "run 0: done before, skipped" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 1
    vq_inference.main(["--summary", "--out", str(out)])
    row = [line for line in capsys.readouterr().out.splitlines() if "synthetic" in line]
    used = record["vq (trainer) batches"]["refresh_used"]
    assert len(row) == 1 and f"| auto ({used}) |" in row[0]


def test_vq_inference_sweep_evaluates_the_trained_model_at_other_batch_sizes(tmp_path, capsys):
    from benchmarks import vq_inference

    out = tmp_path / "v.jsonl"
    args = ["--dataset", "synthetic:n=600,deg=6,features=8,classes=3", "--epochs", "2",
            "--batch-size", "128", "--num-codewords", "8", "--hidden", "16", "--quick",
            "--inference-batch-size", "128", "--out", str(out)]
    vq_inference.main([*args, "--sweep-batch-sizes", "300,600"])
    record = json.loads(out.read_text().splitlines()[0])
    sweep = record["vq sweep"]
    assert sorted(sweep) == ["300", "600"]
    assert sweep["300"]["batches"]["batch_size"] == 300
    assert sweep["300"]["batches"]["num_batches"] == 2
    assert 0.0 < sweep["300"]["edges inside"] < 1.0
    # One batch of every node: no message passes through a codebook, so VQ inference is
    # exact inference (the same trained weights).
    assert sweep["600"]["edges inside"] == 1.0
    assert sweep["600"]["test"] == pytest.approx(record["exact"], abs=1e-6)
    # A run without the sweep is another run; the summary prints the sweep's rows.
    vq_inference.main(args)
    assert len(out.read_text().splitlines()) == 2
    vq_inference.main(["--summary", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| 600, 1 | 100.0% |" in printed and "| 300, 2 |" in printed
    with pytest.raises(SystemExit):
        vq_inference.main([*args, "--sweep-batch-sizes", "0,5"])
    assert "expected comma-separated ints >= 1, received '0,5'" in capsys.readouterr().err


def test_attention_vq_decay_changes_vq_runs_only_and_drops_their_old_records(
        tmp_path, monkeypatch, capsys):
    attention = _tiny_attention_benchmark(monkeypatch)
    out = tmp_path / "att.jsonl"
    attention.main(["--datasets", "syn", "--out", str(out)])
    capsys.readouterr()
    monkeypatch.setattr(attention, "VQ_DECAY", {"syn": 0.5})
    attention.main(["--datasets", "syn", "--out", str(out), "--table-only"])
    row = [line for line in capsys.readouterr().out.splitlines()
           if line.startswith("| synthetic")][0]
    assert "| 0/1/0/1 |" in row  # the decay-0.99 VQ runs are no longer the preset's
    attention.main(["--datasets", "syn", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6  # the two VQ variants again; the full-graph runs stand
    assert [(r["method"], r["model_config"]["codebook"]["decay"]) for r in records[4:]] == [
        ("vq", 0.5), ("vq", 0.5)]
    text = capsys.readouterr().out
    assert "done before, skipped" in text
    assert "| 1/1/1/1 |" in [line for line in text.splitlines()
                             if line.startswith("| synthetic")][0]


def test_attention_target_counts_vq_above_exact_as_met():
    from benchmarks import attention

    assert [attention._met(gap) for gap in (2.5, 0.0, -1.0, -1.01)] == [
        "yes", "yes", "yes", "NO"]


def test_grid_checkpoints_resume_a_run_stopped_half_way_and_go_once_recorded(
        results, capsys):
    from vqgnn.datasets import load_dataset
    from vqgnn.train import run_experiment
    from vqgnn.train.checkpoint import CheckpointError

    name = DATASET_TINY + ",seed=0"  # as the record names it
    preset = grid.DatasetPreset(name, None, "seed", grid._model(16, hidden=8),
                                grid._cfg(epochs=3, batch_size=64, lr=0.01), runs=1,
                                source=None)
    folder = results / "checkpoints"
    run = grid.Run(preset, "vq", "gcn", 0)
    checkpoint = grid.checkpoint_path(run, str(folder))
    assert checkpoint is not None and checkpoint.parent == folder
    folder.mkdir()
    # the same run, stopped after its first epoch (a resumed run may change its epochs)
    run_experiment(load_dataset(name, root=None), run.model,
                   run.train.replace(epochs=1, checkpoint=str(checkpoint)))
    assert checkpoint.exists()
    args = argparse.Namespace(device="cpu", data_root=None, ogb_root=None, verbose=False,
                              checkpoints=str(folder), checkpoint_every=2)
    out = results / "r.jsonl"
    record = grid.execute(run, "[1/1]", out, set(), args, 0.0)
    assert record is not None and record["resumed_at_epoch"] == 1
    assert run.train.checkpoint_every == 2
    assert len(record["history"]) == 3 and record["train_config"]["epochs"] == 3
    assert "resuming from" in capsys.readouterr().out
    assert not checkpoint.exists()  # recorded: deleted
    assert grid.checkpoint_path(record, str(folder)) == checkpoint  # the parent's path
    # left behind by a process killed between the record and the deletion: a run found
    # done before deletes them
    checkpoint.write_bytes(b"x")
    checkpoint.with_name(checkpoint.name + ".tmp").write_bytes(b"x")
    assert grid.execute(run, "[1/1]", out, {grid.run_key(record)}, args, 0.0) is None
    assert list(folder.iterdir()) == []
    # another run's checkpoint under this run's name: an error naming the file
    other = grid.Run(replace(preset, model=grid._model(16, hidden=4)), "vq", "gcn", 0)
    run_experiment(load_dataset(name, root=None), other.model,
                   other.train.replace(epochs=1, checkpoint=str(checkpoint)))
    with pytest.raises(CheckpointError, match="delete that file"):
        grid.execute(grid.Run(preset, "vq", "gcn", 0), "[1/1]", out, set(), args, 0.0)
    assert checkpoint.exists() and len(records(out)) == 1  # kept, nothing recorded


def test_attention_benchmark_lr_per_epoch_variants(tmp_path, monkeypatch, capsys):
    attention = _tiny_attention_benchmark(monkeypatch)
    out = tmp_path / "att.jsonl"
    attention.main(["--datasets", "syn", "--out", str(out), "--lr-per-epoch"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [attention.variant_of(r) for r in records] == list(attention.LR_PER_EPOCH_VARIANTS)
    assert all(r["train_config"]["lr_per_epoch"] is True for r in records)
    assert "VQ global, lr/S − exact global" in capsys.readouterr().out


def test_defaults_benchmark_runs_the_cli_with_its_defaults_and_resumes(tmp_path, monkeypatch,
                                                                       capsys):
    from benchmarks import defaults

    monkeypatch.setattr(defaults, "DATASETS", (("syn", DATASET_TINY, None),))
    monkeypatch.setattr(defaults, "VARIANTS", (("defaults", ["--epochs", "2"]),
                                               ("--dropout 0.5", ["--epochs", "2",
                                                                  "--dropout", "0.5"])))
    out = tmp_path / "d.jsonl"
    defaults.main(["--out", str(out)])
    written = records(out)
    assert [(r["variant"], r["method"]) for r in written] == [
        ("defaults", "vq"), ("defaults", "full"), ("--dropout 0.5", "vq"),
        ("--dropout 0.5", "full")]
    assert [r["model_config"]["dropout"] for r in written] == [0.2, 0.2, 0.5, 0.5]
    printed = capsys.readouterr().out
    assert printed.count(f"| {DATASET_TINY} | defaults |") == 2  # as it goes, and the table
    defaults.main(["--out", str(out)])  # resumes: nothing new
    assert len(records(out)) == 4


def test_time_to_full_counts_training_and_evaluation_until_the_threshold():
    from benchmarks import report

    def run(vals, method, best=None):
        history = [{"epoch": e + 1, "seconds": 1.0, "val": v,
                    "eval_seconds": None if v is None else 0.5} for e, v in enumerate(vals)]
        return {"split": 0, "seed": 0, "method": method, "history": history,
                "best_val": best if best is not None else max(v for v in vals if v)}

    full = [run([0.5, 0.8, 1.0], "full")]
    fast = run([None, 0.99, 0.7], "vq")  # 1 + 1 + 0.5 seconds to reach 0.99
    assert report.time_to_value(fast, 0.99) == 2.5
    assert report.time_to_full([fast], full) == "2.5"
    slow = run([0.5, 0.9, 0.95], "sage")
    assert report.time_to_value(slow, 0.99) is None
    assert report.time_to_full([slow], full) == "not reached (1/1)"
    assert report.time_to_full([fast], None) == "-"


def test_inference_memory_script_measures_every_mode_with_the_bounded_init(tmp_path, capsys):
    from benchmarks import inference_memory

    out = tmp_path / "m.jsonl"
    inference_memory.main(["--sizes", "500,1000", "--batch-size", "128", "--num-codewords",
                           "8", "--init-nodes", "100", "--out", str(out), "--plot",
                           str(tmp_path / "m.png")])
    written = [r for r in records(out) if r["status"] != "started"]
    assert sorted((r["num_nodes"], r["mode"]) for r in written) == sorted(
        (n, m) for n in (500, 1000) for m in inference_memory.MODES)
    assert all(r["status"] == "ok" and r["peak_bytes"] > 0 and r["init_nodes"] == 100
               and r["max_batch_edges"] > 0 for r in written)
    assert "| 1,000 |" in capsys.readouterr().out


def test_inference_memory_power_and_modes_make_a_series_of_their_own(tmp_path, capsys):
    from benchmarks import inference_memory

    out = tmp_path / "m.jsonl"
    common = ["--sizes", "2000", "--batch-size", "128", "--num-codewords", "8",
              "--init-nodes", "100", "--out", str(out), "--plot", str(tmp_path / "m.png")]
    inference_memory.main([*common, "--modes", "vq"])  # power 2.5: hubs
    inference_memory.main([*common, "--modes", "vq,exact layer-wise", "--power", "10"])
    written = [r for r in records(out) if r["status"] != "started"]
    assert sorted((r["power"], r["mode"]) for r in written) == [
        (2.5, "vq"), (10.0, "exact layer-wise"), (10.0, "vq")]
    hubs, flat = (next(r for r in written if r["power"] == p and r["mode"] == "vq")
                  for p in (2.5, 10.0))
    assert flat["max_degree"] < hubs["max_degree"]
    # Each series' table holds its own records only: power 10 has no full-graph figure.
    capsys.readouterr()
    inference_memory.main([*common, "--power", "10", "--table-only"])
    row = next(line for line in capsys.readouterr().out.splitlines() if "| 2,000 |" in line)
    assert row.endswith("| - |")
    # The plot may draw another file's series beside (every exponent, labelled).
    (tmp_path / "m.png").unlink()
    inference_memory.main([*common, "--power", "10", "--table-only", "--plot-with", str(out)])
    assert (tmp_path / "m.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        inference_memory.main([*common, "--modes", "vq,exact"])
    assert "expected modes among vq, exact layer-wise" in capsys.readouterr().err


def test_inference_memory_records_a_size_whose_process_the_kernel_kills(tmp_path, monkeypatch):
    """A child process killed in a mode (as the out-of-memory killer does) leaves that mode
    recorded as killed and the later ones as not run; nothing is lost or invented."""
    import subprocess

    from benchmarks import inference_memory

    out = tmp_path / "m.jsonl"

    def killed(command, **kwargs):  # the child started its first mode and was killed
        with out.open("a") as f:
            f.write(json.dumps({"num_nodes": 700, "mode": "vq", "status": "started"}) + "\n")
        return subprocess.CompletedProcess(command, -9)

    monkeypatch.setattr(inference_memory.subprocess, "run", killed)
    inference_memory.main(["--sizes", "700", "--out", str(out), "--plot",
                           str(tmp_path / "m.png")])
    final = {r["mode"]: r["status"] for r in records(out) if r["status"] != "started"}
    assert final["vq"].startswith("killed by signal 9 (SIGKILL")
    assert final["exact layer-wise"].startswith("not run: the process ended in an earlier mode")
    assert final["exact full-graph"].startswith("not run")
    inference_memory.main(["--sizes", "700", "--out", str(out), "--table-only", "--plot",
                           str(tmp_path / "m.png")])  # resumable


def test_codebook_size_benchmark_varies_k_and_depth_and_resumes(tmp_path, capsys):
    from benchmarks import codebook_size

    out = tmp_path / "k.jsonl"
    argv = ["--dataset", DATASET_TINY, "--ks", "4,8", "--layers-for-k", "2", "--layers", "1,2",
            "--k-for-layers", "8", "--epochs", "2", "--out", str(out), "--plot",
            str(tmp_path / "k.png")]
    codebook_size.main(argv)
    written = records(out)
    # K 4 and 8 at 2 blocks, then (vq, full) at 1 block; (vq, K 8, 2 blocks) is not repeated.
    assert [(r["method"], r["model_config"]["codebook"]["num_codewords"],
             r["model_config"]["layers"]) for r in written] == [
        ("vq", 4, 2), ("vq", 8, 2), ("vq", 8, 1), ("full", 8, 1), ("full", 8, 2)]
    assert all(r["model_config"]["ffn"] for r in written)
    printed = capsys.readouterr().out
    assert "| 4 |" in printed and "| quantized layers |" in printed
    assert (tmp_path / "k.png").stat().st_size > 5_000
    codebook_size.main(argv)  # resumes: nothing new
    assert len(records(out)) == 5


def test_batch_edges_counts_the_edges_inside_metis_batches(capsys):
    from benchmarks import batch_edges

    whole = batch_edges.inside_fraction(DATASET_TINY, 300)  # one batch: every edge inside
    halves = batch_edges.inside_fraction(DATASET_TINY, 150)
    assert whole == 1.0 and 0.0 < halves < 1.0
    batch_edges.main([f"{DATASET_TINY}:150"])
    assert f"| {DATASET_TINY} | 150 | {100 * halves:.1f}% |" in capsys.readouterr().out


def test_resident_memory_counts_each_storage_once_under_its_component(capsys):
    from benchmarks import resident_memory

    resident_memory.main(["--nodes", "600", "--deg", "6", "--batch-size", "128",
                          "--num-codewords", "16", "--hidden", "16"])
    rows = {line.split(" | ")[0].strip("| *"): line.split(" | ")
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    # Features: N x 32 float32, 128 bytes per node and none per edge; the CSR operator
    # (GCN on an undirected graph: its own transpose, one layout): an int32 column and a
    # float32 value per entry.
    assert rows["features"][1:3] == ["128.0", "0.0"]
    assert rows["convolution operators (CSR, both layouts)"][2] == "8.0"
    assert rows["codeword assignments"][1] == "4.0"  # int32
    assert rows["last step's batch rows (bounded by the batch)"][1] == "-"
    assert "other" not in rows  # every resident tensor has a component


def test_resident_memory_walker_finds_nested_tensors_once():
    from benchmarks import resident_memory

    t = torch.zeros(3)
    obj = {"a": [t, (t[1:], 5)], "b": {"c": torch.ones(2)}}
    found = list(resident_memory.tensors(obj, "root"))
    assert [p for p, _ in found] == ["root['a'][0]", "root['a'][1][0]", "root['b']['c']"]


def test_epoch_floor_times_every_kind_and_its_floor_trains_the_same_gcn(tmp_path, capsys,
                                                                        monkeypatch):
    from benchmarks import epoch_floor

    monkeypatch.delenv("VQGNN_DATA_ROOT", raising=False)  # Tolokers below needs --data-root
    # a shell's setting: the 'default' allocator's children start without it, and it is
    # there again after each command
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)

    data = grid.load_dataset(DATASET_TINY)
    adj = epoch_floor.normalized_adjacency(data.edge_index, data.num_nodes)
    dense = adj.to_dense()
    assert torch.allclose(dense, dense.t())  # symmetric: the floor's backward is A @ grad
    torch.manual_seed(0)
    fast = epoch_floor.FloorGCN(data.num_features, 8, 3, symmetric=True)
    plain = epoch_floor.FloorGCN(data.num_features, 8, 3, symmetric=False)
    plain.load_state_dict(fast.state_dict())
    for model in (fast, plain):
        model.eval()
        model(data.x, adj).square().sum().backward()
    for p, q in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    out = tmp_path / "floor.jsonl"
    epoch_floor.main(["--graphs", DATASET_TINY, "--epochs", "2", "--batch-size", "64",
                      "--num-codewords", "16", "--out", str(out)])
    rows = records(out)
    assert [r["method"] for r in rows] == list(epoch_floor.METHODS)
    assert all(len(r["epoch_seconds"]) == 2 and r["batch_size"] == 64 for r in rows)
    assert all(r["allocator"] == "default" and r["process_per_kind"] for r in rows)
    table = capsys.readouterr().out
    assert ("| synthetic:n=300,deg=6,features=8,classes=3 | process per kind, default "
            "allocator | ") in table and "64 / 16" in table
    # each kind in its own process, started with the allocator's malloc settings (checked
    # there); the parent's environment is left as it was
    # (and VQ-GNN searching its codewords every 2nd step, which the records say)
    epoch_floor.main(["--graphs", DATASET_TINY, "--epochs", "1", "--batch-size", "64",
                      "--num-codewords", "16", "--out", str(out), "--allocator", "keep",
                      "--search-every", "2"])
    assert [r["allocator"] for r in records(out)[4:]] == ["keep"] * 4
    assert [r["search_every"] for r in records(out)] == [1] * 4 + [2] * 4
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
    assert "process per kind, keep allocator, search every 2 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        epoch_floor.main(["--graphs", "Tolokers", "--out", str(out)])  # needs --data-root
    # --search-every reaches VQ-GNN's trainer (and only VQ-GNN's)
    created = []
    create = epoch_floor.TrainConfig.create
    monkeypatch.setattr(epoch_floor.TrainConfig, "create", lambda method, **kw: (
        created.append((method, kw.get("search_every"))), create(method, **kw))[1])
    epoch_floor.trainer_epoch(data, "vq", 64, 16, search_every=3)
    epoch_floor.trainer_epoch(data, "full", 64, 16, search_every=3)
    assert created == [("vq", 3), ("full", None)]


def test_epoch_sweep_times_each_config_beside_the_floor_in_one_process(tmp_path, capsys,
                                                                       monkeypatch):
    from benchmarks import epoch_floor, epoch_sweep

    monkeypatch.delenv("VQGNN_DATA_ROOT", raising=False)
    assert epoch_sweep.parse_configs("64:16,all:8:3,64:16,500:4", 300) == [
        (64, 16, 1), (300, 8, 3), (300, 4, 1)]  # each once; b capped at N
    for bad in ("64", "64:x", "64:16:2:1", "0:16", "64:16:0", "1_024:16", "+64:16", "64: 16"):
        with pytest.raises(ValueError, match=re.escape(f"'{bad}'")):
            epoch_sweep.parse_configs(bad, 300)
    built = []
    trainer_epoch = epoch_floor.trainer_epoch
    monkeypatch.setattr(epoch_floor, "trainer_epoch", lambda data, method, b, k, every=1: (
        built.append((method, b, k, every)), trainer_epoch(data, method, b, k, every))[1])
    out = tmp_path / "sweep.jsonl"
    epoch_sweep.main(["--graph", DATASET_TINY, "--configs", "64:16,all:8:2", "--rounds", "2",
                      "--out", str(out)])
    assert built == [("full", 1, 1, 1), ("vq", 64, 16, 1), ("vq", 300, 8, 2)]
    (row,) = records(out)
    assert list(row["epoch_seconds"]) == ["floor", "full", "b=64, K=16",
                                          "b=N, K=8, search every 2"]
    assert all(len(v) == 2 for v in row["epoch_seconds"].values())
    assert row["configs"] == {"b=64, K=16": [64, 16, 1], "b=N, K=8, search every 2": [300, 8, 2]}
    assert row["code"]["torch"] == torch.__version__  # what measured it (append_result)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 4
    # every row's figures are its record's medians and their ratios
    med = {k: statistics.median(v) for k, v in row["epoch_seconds"].items()}
    for line, (kind, steps) in zip(lines[1:], [("floor", 1), ("full", 1), ("b=64, K=16", 5),
                                               ("b=N, K=8, search every 2", 1)]):
        cells = line.strip("| ").split(" | ")
        assert cells[1:4] == [str(steps), f"{med[kind]:.3f}",  # ceil(300 / 64) = 5 steps
                              f"{med[kind] / med['floor']:.2f}x"]
        assert cells[5] == f"{med[kind] / med['full']:.2f}x"
        assert cells[4] == ("-" if kind in ("floor", "full") else
                            "yes" if med[kind] <= 1.15 * med["floor"] else "NO")
    assert lines[3].startswith("| VQ-GNN, b=64, K=16 | ")
    # thousands separators in a name do not reach the steps column; 1.15x is the bound
    assert epoch_sweep.table({"floor": [1.0], "full": [2.0], "b=1,024, K=1,024": [1.15],
                              "b=2,048, K=64": [1.16]},
                             {"b=1,024, K=1,024": 12, "b=2,048, K=64": 6})[3:] == [
        "| vqgnn full-graph training | 1 | 2.000 | 2.00x | - | 1.00x |",
        "| VQ-GNN, b=1,024, K=1,024 | 12 | 1.150 | 1.15x | yes | 0.57x |",
        "| VQ-GNN, b=2,048, K=64 | 6 | 1.160 | 1.16x | NO | 0.58x |"]
    with pytest.raises(SystemExit):
        epoch_sweep.main(["--graph", "Tolokers", "--out", str(out)])  # needs --data-root
    loaded = []
    monkeypatch.setattr(epoch_sweep, "load_dataset", lambda *a, **k: loaded.append(a))
    with pytest.raises(SystemExit):  # a bad --configs stops before the graph is loaded
        epoch_sweep.main(["--graph", DATASET_TINY, "--configs", "64", "--out", str(out)])
    assert loaded == []


def test_step_kernels_times_each_choice_both_ways(capsys):
    from benchmarks import step_kernels

    step_kernels.main(["--calls", "1", "--repeat", "1", "--attention-edges", "1000"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    split = next(i for i, line in enumerate(lines) if "peak tensors (MB)" in line)
    table, memory = lines[:split], lines[split:]
    # header, 3 shapes x 2 products, 2 gathers, 2 dropouts against F.dropout and 2 against
    # the torch.rand mask, 6 low-rank parts, the attention aggregation, GATv2's logits
    assert len(table) == 1 + 6 + 2 + 4 + 6 + 1 + 1
    assert all(line.endswith("x |") for line in table[1:])
    assert sum("| dropout 0.2, torch.rand mask against 16-bit lanes |" in line
               for line in table) == 2
    low = [line for line in table if line.startswith("| low-rank part")]
    assert [line.split("(")[1].split(" ")[0] for line in low] == ["CSR", "CSR", "CSR", "CSR",
                                                                  "dense", "dense"]
    assert "| attention aggregation, forward + backward | 1,000 edges" in table[-2]
    assert "| GATv2 logits, forward + backward | 1,000 edges" in table[-1]
    # the two attention rows' peak tensor memory, both ways
    assert [line.split(" | ")[0] for line in memory[1:]] == [
        "| attention aggregation, forward + backward", "| GATv2 logits, forward + backward"]
    assert all(float(line.split(" | ")[2]) > 0 and line.endswith("x |") for line in memory[1:])
    with pytest.raises(SystemExit):
        step_kernels.main(["--calls", "0"])
    with pytest.raises(SystemExit):
        step_kernels.main(["--attention-edges", "0"])


def test_published_preset_runs_in_worker_processes_and_resumes(results, monkeypatch, capsys):
    """--workers: each run in its own process, the records appended by the parent;
    --interleave: seed 0 of every method before seed 1; the same command again runs
    nothing."""
    preset = grid.PRESETS["published"]["tolokers"]
    tiny = replace(preset, name=DATASET_TINY + ",seed=0", family=None, source=None, vary="seed",
                   model=replace(preset.model, hidden=16, codebook=K16),
                   train={**preset.train, "batch_size": 128})
    monkeypatch.setitem(grid.PRESETS["published"], "tolokers", tiny)
    argv = ["--preset", "published", "--datasets", "tolokers", "--convs", "gcn", "--runs", "2",
            "--epochs", "2", "--workers", "2", "--interleave"]
    runs = grid.plan(grid.parse_args(argv))
    assert [(r.index, r.method) for r in runs] == [(0, "vq"), (0, "full"), (1, "vq"),
                                                   (1, "full")]
    grid.main(argv)
    rows = records(results / "published.jsonl")
    assert sorted((r["seed"], r["method"]) for r in rows) == [(0, "full"), (0, "vq"),
                                                              (1, "full"), (1, "vq")]
    assert all(r["model_config"]["ffn"] and r["model_config"]["hidden"] == 16 for r in rows)
    assert all(r["train_config"]["lr"] == 3e-5 for r in rows)
    assert "| synthetic" in (results / "published.md").read_text()
    capsys.readouterr()
    grid.main(argv + ["--methods", "vq,full,vq"])  # planned twice: run once
    assert len(records(results / "published.jsonl")) == 4
    assert capsys.readouterr().out.count(": done before, skipped") == 6
    grid.main(argv + ["--runs", "3", "--methods", "vq,vq"])  # seed 2's vq, once
    assert [r["seed"] for r in records(results / "published.jsonl")][4:] == [2]
    assert capsys.readouterr().out.count(": done before, skipped") == 5


def test_published_presets_give_vq_the_same_epochs_or_the_same_steps():
    for key, nodes in (("tolokers", 11758), ("minesweeper", 10000)):
        preset = grid.PRESETS["published"][key]
        assert preset.model.ffn and preset.model.hidden == 512 and preset.model.layers == 3
        full = grid.Run(preset, "full", "gcn", 0)
        vq = grid.Run(preset, "vq", "gcn", 0)
        assert full.train.epochs == vq.train.epochs == 1000
        assert full.train.lr == vq.train.lr == 3e-5 and vq.train.batch_size == 4096
        same_steps = grid.Run(grid.PRESETS["published-steps"][key], "vq", "gcn", 0)
        per_epoch = -(-nodes // same_steps.train.batch_size)
        assert 1000 <= per_epoch * same_steps.train.epochs < 1000 + per_epoch
        # the full-graph runs are the same in both presets (one set of records)
        full_steps = grid.Run(grid.PRESETS["published-steps"][key], "full", "gcn", 0)
        assert grid.run_key(grid.probe_of(full)) == grid.run_key(grid.probe_of(full_steps))


def test_grid_precision_reaches_the_runs_and_their_identity():
    preset = grid.PRESETS["published"]["tolokers"]
    plain, half = grid.Run(preset, "vq", "gcn", 0), grid.Run(preset, "vq", "gcn", 0,
                                                              precision="bfloat16")
    assert plain.train.precision == "float32" and half.train.precision == "bfloat16"
    assert grid.run_key(grid.probe_of(half)) != grid.run_key(grid.probe_of(plain))
    default = grid.Run(preset, "vq", "gcn", 0, precision="float32")
    assert grid.run_key(grid.probe_of(default)) == grid.run_key(grid.probe_of(plain))
    args = grid.parse_args(["--preset", "published", "--datasets", "tolokers", "--methods",
                            "vq", "--convs", "gcn", "--runs", "1", "--precision", "bfloat16"])
    assert [r.train.precision for r in grid.plan(args)] == ["bfloat16"]
    with pytest.raises(SystemExit):
        grid.parse_args(["--precision", "float16"])
    both = grid.parse_args(["--preset", "published", "--datasets", "tolokers", "--methods",
                            "vq", "--convs", "gcn", "--runs", "1", "--precision",
                            "float32,bfloat16"])
    assert [r.train.precision for r in grid.plan(both)] == ["float32", "bfloat16"]


def test_precision_table_compares_float32_with_bfloat16():
    def record(precision, epoch, memory, loss, test):
        return {"dataset": "Tolokers", "conv": "gcn", "method": "vq", "test": test,
                "median_epoch_seconds": epoch, "peak_memory_bytes": memory,
                "history": [{"loss": 9.0}, {"loss": loss}],
                "train_config": {} if precision == "float32" else {"precision": precision}}

    lines = report.precision_table([record("float32", 3.0, 200e6, 0.5, 0.80),
                                    record("bfloat16", 2.0, 100e6, 0.52, 0.79)])
    assert lines[2].startswith("| Tolokers | gcn | vq | 1 | 3.000 | 2.000 | 1.50x | ")
    assert "| 0.5000 | 0.5200 |" in lines[2]
    assert report.precision_table([record("float32", 3.0, 1e6, 0.5, 0.8)])[2:] == []


def test_grid_time_budget_starts_no_run_after_it(results, monkeypatch, capsys):
    tiny = replace(grid.PRESETS["batch"]["synthetic"], name=DATASET_TINY,
                   model=replace(grid.PRESETS["batch"]["synthetic"].model, codebook=K16))
    monkeypatch.setitem(grid.PRESETS["batch"], "synthetic", tiny)
    clock = iter(range(0, 1000, 10))  # every reading of the clock 10 s after the last
    args = grid.parse_args(["--preset", "batch", "--batch-sizes", "64", "--methods", "vq,full",
                            "--epochs", "1", "--time-budget", "15"])
    grid.run_all(grid.plan(args), results / "batch.jsonl", set(), args,
                 clock=lambda: float(next(clock)))
    assert [r["method"] for r in records(results / "batch.jsonl")] == ["vq"]
    assert "time budget of 15 s used: [2/2] and later not started" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        grid.main(["--preset", "batch", "--time-budget", "0"])
    assert "--time-budget must be > 0 seconds, received 0.0" in capsys.readouterr().err


def test_published_table_against_the_paper_and_full_graph_training():
    def rec(method, split, test, conv="gcn"):
        return {"dataset": "Tolokers", "conv": conv, "method": method, "split": split,
                "test": test, "median_epoch_seconds": 0.01}

    rows = report.published_table([rec("full", 0, 0.830), rec("full", 1, 0.826),
                                   rec("vq", 0, 0.825), rec("vq", 1, 0.815),
                                   rec("full", 0, 0.800, "sage")])
    gcn = next(r for r in rows if "| gcn |" in r)
    # full 82.80 against 83.64 published: -0.84, within 1.5; vq 82.00: -0.80, within 1
    assert ("| 83.64 ± 0.67 | 2 | 82.80 ± 0.28 | -0.84 | yes | 2 | 82.00 ± 0.71 | "
            "82.80 ± 0.28 | -0.80 | yes |") in gcn
    sage = next(r for r in rows if "| sage |" in r)
    assert "| 82.43 ± 0.44 | 1 | 80.00 ± 0.00 | -2.43 | NO | 0 | - | - | - | - |" in sage
    # VQ on one split of two: against full-graph training on that split only
    rows = report.published_table([rec("full", 0, 0.830), rec("full", 1, 0.820),
                                   rec("vq", 1, 0.815)])
    assert "| 2 | 82.50 ± 0.71 | -1.14 | yes | 1 | 81.50 ± 0.00 | 82.00 ± 0.00 | -0.50 | yes |" \
        in rows[2]
    # epoch times: a median per kind of device, never one over a GPU's and a CPU's runs
    gpu = {**rec("vq", 0, 0.82), "device": "cuda:0", "median_epoch_seconds": 0.1}
    cpu = {**rec("vq", 1, 0.82), "device": "cpu", "median_epoch_seconds": 3.0}
    rows = report.published_table([rec("full", 0, 0.83), gpu, cpu])
    assert rows[2].endswith("| 0.0100 (cpu) | 3.0000 (cpu) / 0.1000 (cuda) |")


def test_gpu_step_at_its_limit_kills_the_processes_it_started(tmp_path):
    """A step's command and the processes it started (grid.py's workers) are stopped."""
    import sys
    import time

    from benchmarks import gpu

    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    start = time.time()
    outcome = gpu.run_step("slow", [[sys.executable, "-c", script]], 3.0, tmp_path / "s.log")
    assert time.time() - start < 30
    assert outcome.startswith("slow: stopped after 3 s")
    child = Path(f"/proc/{int(pid_file.read_text())}/stat")
    time.sleep(0.5)
    # gone, or dead and not yet reaped by its new parent (state Z)
    assert not child.exists() or child.read_text().split(")")[-1].split()[0] == "Z"
    outcome = gpu.run_step("two", [[sys.executable, "-c", "print('a')"],
                                   [sys.executable, "-c", "print('b')"]], 30.0,
                           tmp_path / "t.log")
    assert outcome.startswith("two: exit 0") and outcome.endswith("last line: b")


def test_all_quantized_metis_preset_changes_only_vq_batches():
    for key in ("cora", "citeseer"):
        metis = grid.PRESETS["all-quantized-metis"][key]
        plain = grid.PRESETS["all-quantized"][key]
        assert not metis.model.exact_first_layer
        vq = grid.Run(metis, "vq", "sage", 0)
        assert vq.train.options.sampler == "metis"
        assert grid.Run(plain, "vq", "sage", 0).train.options.sampler == "random"
        # full-graph training is the same run in both presets: one set of records
        assert (grid.run_key(grid.probe_of(grid.Run(metis, "full", "sage", 0)))
                == grid.run_key(grid.probe_of(grid.Run(plain, "full", "sage", 0))))


def test_attention_decay_pairs_vq_decays_with_exact_runs_and_resumes(tmp_path, monkeypatch,
                                                                     capsys):
    from benchmarks import attention_decay

    _tiny_attention_benchmark(monkeypatch)  # patches benchmarks.attention.DATASETS
    out = tmp_path / "decay.jsonl"
    argv = ["--dataset", "syn", "--runs", "2", "--decays", "0.9,0.5", "--warmup-epochs", "1",
            "--out", str(out)]
    attention_decay.main(argv)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [attention_decay.variant(r) for r in records] == [
        "exact", "VQ, decay 0.9", "VQ, decay 0.5"] * 2
    assert [r["seed"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert all(r["model_config"]["global_attention"] for r in records)
    assert all(r["train_config"]["warmup_epochs"] == 1 for r in records)
    assert [r["train_config"]["lr_per_epoch"] for r in records[:3]] == [False, True, True]
    capsys.readouterr()
    attention_decay.main(argv)  # everything done: nothing runs again
    assert len(out.read_text().splitlines()) == 6
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| VQ")]
    assert len(rows) == 2 and rows[0].startswith("| VQ, decay 0.9 | 2 |")
    exact = {r["seed"]: r["test"] for r in records if r["method"] == "full"}
    diffs = [100 * (r["test"] - exact[r["seed"]]) for r in records
             if attention_decay.variant(r) == "VQ, decay 0.5"]
    assert f"{sum(diffs) / 2:+.2f} ±" in rows[1]
    # a run in the file made with other options is not taken as done
    records[4]["train_config"]["lr"] = 0.5
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(SystemExit, match=r"holds run \('VQ, decay 0.9', .*, 1\) with other "
                                         r"options: train_config.lr: 0.5 instead of 0.01"):
        attention_decay.main(argv)
    with pytest.raises(SystemExit):  # the preset trains 2 epochs
        attention_decay.main([*argv[:4], "--warmup-epochs", "2"])
    assert "--warmup-epochs must be in [0, 2) (the preset's epochs), received 2" in (
        capsys.readouterr().err)
    for bad in ("1.0", "x"):
        with pytest.raises(SystemExit):
            attention_decay.main([*argv[:4], "--decays", bad])
        assert f"--decays must be comma-separated floats in [0, 1), received {bad!r}" in (
            capsys.readouterr().err)


def test_backward_error_is_zero_with_an_oracle_codebook_and_prints_its_table(capsys):
    """With K = N codewords holding every node's exact layer input and exact gradient (the
    oracle), the backward term equals the exact out-of-batch gradient it stands for."""
    from benchmarks import backward_error
    from vqgnn import VQGraph
    from vqgnn.datasets import load_dataset
    from vqgnn.nn.models import VQGNN

    torch.manual_seed(0)
    data = load_dataset("synthetic:n=120,deg=5,features=6,classes=3,seed=1")
    graph = VQGraph(data.edge_index, data.num_nodes)
    model = VQGNN(6, 8, 2, 3, num_nodes=120, num_codewords=120, dropout=0.0).double()
    data.x = data.x.double()
    model.prepare(data.x, graph)
    batch = torch.randperm(120)[:40]
    outside = data.train_mask.clone()
    outside[batch] = False
    count = int(data.train_mask[batch].sum())
    seen = {}
    hook = model.layers[1].register_forward_pre_hook(lambda m, a: seen.update(h=a[0]))
    out = model(data.x, graph)
    hook.remove()
    out.retain_grad()
    (torch.nn.functional.cross_entropy(out[outside], data.y[outside], reduction="sum")
     / count).backward()
    model.layers[1].set_codewords(seen["h"].detach(), out.grad, torch.arange(120))
    m = backward_error.measure(model, data, graph, batch)
    assert float(m["exact"].norm()) > 0
    torch.testing.assert_close(m["term"], m["exact"])
    ratio, error, cosine = backward_error.summary(m["term"], m["exact"])
    # The codebook keeps its codewords in float32 (the model is float64): 1e-6, not 1e-12.
    assert abs(ratio - 1) < 1e-6 and error < 1e-6 and cosine > 1 - 1e-6

    backward_error.main(["--dataset", "synthetic:n=300,deg=6,features=8,classes=3",
                         "--batch-size", "100", "--num-codewords", "16", "--at", "0,3"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| step | exact term's norm") and len(rows) == 3
    assert rows[1].split(" | ")[2] == "0"  # step 0: no gradient seen yet, no term
    for bad, message in ((["--at", "ten"], "--at must list steps >= 0, received 'ten'"),
                         (["--at", "-1"], "--at must list steps >= 0, received '-1'"),
                         (["--batch-size", "0"], "--batch-size must be >= 1, received 0")):
        with pytest.raises(SystemExit):
            backward_error.main(bad)
        assert message in capsys.readouterr().err
