"""Tables and plots of benchmark records (the JSON lines ``grid.py`` and ``scaling.py`` write).

Every figure comes from a record; nothing here is typed in by hand except the published
reference numbers, which are labelled as such.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Iterable, Optional

from vqgnn.train.records import read_records

Record = dict[str, Any]

# Published numbers printed beside ours (not measured here).
REFERENCES: dict[str, list[str]] = {
    "ogbn-arxiv": ["OGB leaderboard, full-batch GCN: 71.74 ± 0.29 test accuracy"],
    "ogbn-products": ["OGB leaderboard, NeighborSampling SAGE: 78.70 ± 0.36",
                      "OGB leaderboard, ClusterGCN: 78.97 ± 0.33",
                      "OGB leaderboard, GraphSAINT: 79.08 ± 0.24"],
}

# Platonov et al. (ICLR 2023), full-graph training, ROC-AUC over the 10 given splits
# (not measured here): (dataset, conv) -> (mean, std).
PUBLISHED: dict[tuple[str, str], tuple[float, float]] = {
    ("Tolokers", "gcn"): (83.64, 0.67), ("Tolokers", "sage"): (82.43, 0.44),
    ("Tolokers", "gat"): (83.70, 0.47), ("Minesweeper", "gcn"): (89.75, 0.52),
    ("Minesweeper", "sage"): (93.51, 0.57), ("Minesweeper", "gat"): (92.01, 0.68),
}


def load_records(path: Path) -> list[Record]:
    """The records of a JSON-lines file; a torn line is skipped with a warning."""
    return read_records(path)


def _mean(values: Iterable[float]) -> float:
    return statistics.mean(list(values))


def mean_std(values: list[float]) -> str:
    """``mean ± std`` in percent points."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def _mb(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _group(records: list[Record], *keys: str) -> dict[tuple, list[Record]]:
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def _median(records: list[Record], key: str) -> float:
    return statistics.median(r[key] for r in records)


def accuracy_table(records: list[Record], methods: list[str]) -> list[str]:
    """Markdown: per dataset and backbone, the test metric of each method and the gap."""
    groups: dict[tuple[str, str], dict[str, list[Record]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["conv"]), {}).setdefault(r["method"], []).append(r)
    head = ["dataset", "conv", "metric", "runs"]
    head += [f"{m} test" for m in methods]
    head += [f"{m} epoch (s)" for m in methods]
    if "vq" in methods and "full" in methods:
        head += ["vq - full (points)", "within 1.5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, conv), by_method in sorted(groups.items()):
        metric = next(iter(by_method.values()))[0]["metric"]
        runs = min(len(v) for v in by_method.values())
        row = [dataset, conv, metric, str(runs)]
        row += [mean_std([r["test"] for r in by_method.get(m, [])]) for m in methods]
        row += [f"{_median(by_method[m], 'median_epoch_seconds'):.3f}"
                if m in by_method else "-" for m in methods]
        if "vq" in methods and "full" in methods:
            if "vq" in by_method and "full" in by_method:
                gap = 100 * (_mean(r["test"] for r in by_method["vq"])
                             - _mean(r["test"] for r in by_method["full"]))
                row += [f"{gap:+.2f}", "yes" if gap >= -1.5 else "NO"]
            else:
                row += ["-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def published_table(records: list[Record]) -> list[str]:
    """Markdown: per dataset and backbone, full-graph training over every split it ran
    against the published figure (target: within 1.5 points), and VQ-GNN against full-graph
    training over the splits both ran (target: within 1 point)."""
    head = ["dataset", "conv", "published", "full splits", "full test", "full - published",
            "within 1.5", "vq splits", "vq test", "full test, same splits", "vq - full",
            "within 1", "full epoch (s)", "vq epoch (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, conv), runs in sorted(_group(records, "dataset", "conv").items()):
        by = {m: {r["split"]: r for r in runs if r["method"] == m} for m in ("full", "vq")}
        full = [100 * r["test"] for r in by["full"].values()]
        ref = PUBLISHED.get((dataset, conv))
        row = [dataset, conv, f"{ref[0]:.2f} ± {ref[1]:.2f}" if ref else "-",
               str(len(full)), mean_std([v / 100 for v in full])]
        if full and ref:
            gap = _mean(full) - ref[0]
            row += [f"{gap:+.2f}", "yes" if gap >= -1.5 else "NO"]
        else:
            row += ["-", "-"]
        both = sorted(set(by["full"]) & set(by["vq"]))
        row += [str(len(by["vq"])), mean_std([r["test"] for r in by["vq"].values()])]
        if both:
            paired_full = [100 * by["full"][s]["test"] for s in both]
            gap = _mean(100 * by["vq"][s]["test"] for s in both) - _mean(paired_full)
            row += [mean_std([v / 100 for v in paired_full]), f"{gap:+.2f}",
                    "yes" if gap >= -1.0 else "NO"]
        else:
            row += ["-", "-", "-"]
        row += [_epochs_by_device(list(by[m].values())) for m in ("full", "vq")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _precision(record: Record) -> str:
    return record["train_config"].get("precision", "float32")


def precision_table(records: list[Record]) -> list[str]:
    """Markdown: per dataset, backbone and method, float32 against bfloat16 autocast
    (``TrainConfig.precision``): median epoch, training memory, the last epoch's loss and
    the test metric (medians and means over the runs of each)."""
    head = ["dataset", "conv", "method", "runs", "float32 epoch (s)", "bfloat16 epoch (s)",
            "float32 / bfloat16", "float32 train memory (MB)", "bfloat16 train memory (MB)",
            "float32 last loss", "bfloat16 last loss", "float32 test", "bfloat16 test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, conv, method), runs in sorted(
            _group(records, "dataset", "conv", "method").items()):
        by = {p: [r for r in runs if _precision(r) == p] for p in ("float32", "bfloat16")}
        if not by["float32"] or not by["bfloat16"]:
            continue
        epoch = {p: _median(v, "median_epoch_seconds") for p, v in by.items()}
        row = [dataset, conv, method, str(min(len(v) for v in by.values())),
               f"{epoch['float32']:.3f}", f"{epoch['bfloat16']:.3f}",
               f"{epoch['float32'] / epoch['bfloat16']:.2f}x"]
        row += [_mb(statistics.median(values)) if values else "-"
                for values in ([r["peak_memory_bytes"] for r in by[p]
                                if r.get("peak_memory_bytes") is not None]
                               for p in ("float32", "bfloat16"))]
        row += [f"{_mean(r['history'][-1]['loss'] for r in by[p]):.4f}"
                for p in ("float32", "bfloat16")]
        row += [mean_std([r["test"] for r in by[p]]) for p in ("float32", "bfloat16")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _epochs_by_device(records: list[Record]) -> str:
    """Median epoch seconds per kind of device (``0.1254 (cuda) / 3.0260 (cpu)``): one
    median over runs on a GPU and on a CPU would be neither's."""
    if not records:
        return "-"
    by_device: dict[str, list[Record]] = {}
    for r in records:
        by_device.setdefault(str(r.get("device", "cpu")).split(":")[0], []).append(r)
    return " / ".join(f"{_median(runs, 'median_epoch_seconds'):.4f} ({device})"
                      for device, runs in sorted(by_device.items()))


def curve_figures(history: list[dict[str, Any]], after: int = 20) -> tuple[float, float]:
    """(max drop below the running best after epoch ``after``, best - mean of the last 20
    evaluations), in points."""
    evals = [(h["epoch"], h["val"]) for h in history if h.get("val") is not None]
    best, drop = -float("inf"), 0.0
    for epoch, val in evals:
        best = max(best, val)
        if epoch > after:
            drop = max(drop, best - val)
    last = [v for _, v in evals[-20:]]
    return 100 * drop, 100 * (max(v for _, v in evals) - statistics.mean(last))


def gap_parts(history: list[dict[str, Any]], after: int = 20) -> tuple[float, float, float]:
    """The last-20 gap of :func:`curve_figures` in two parts that sum to it, in points:

    * ``excess``: the best minus the mean of the evaluations after epoch ``after`` (how far
      the best stands above the curve's plateau: the noise that the max picks);
    * ``drift``: that mean minus the mean of the last 20 evaluations (how far the curve
      sinks by the end);

    and ``spread``, the standard deviation of the evaluations after epoch ``after`` but
    before the last 20 (the noise from one evaluation to the next while the lr is still
    large). Needs evaluations after epoch ``after``."""
    evals = [(h["epoch"], h["val"]) for h in history if h.get("val") is not None]
    plateau = [v for epoch, v in evals if epoch > after]
    if not plateau:
        raise ValueError(f"'history' has no evaluation after epoch {after}")
    level = statistics.mean(plateau)
    middle = [v for epoch, v in evals[:-20] if epoch > after]
    spread = statistics.pstdev(middle) if middle else 0.0
    last = statistics.mean(v for _, v in evals[-20:])
    return (100 * (max(v for _, v in evals) - level), 100 * (level - last), 100 * spread)


def time_to_value(record: Record, threshold: float) -> Optional[float]:
    """Wall clock from the first epoch until the validation metric first reaches
    ``threshold``: training plus evaluation seconds of every epoch up to it (set-up
    excluded); None if it never does."""
    elapsed = 0.0
    for h in record["history"]:
        elapsed += h["seconds"] + (h.get("eval_seconds") or 0.0)
        if h.get("val") is not None and h["val"] >= threshold:
            return elapsed
    return None


def time_to_full(runs: list[Record], full: Optional[list[Record]], fraction: float = 0.99
                 ) -> str:
    """Median over ``runs`` of :func:`time_to_value` at ``fraction`` of full-graph
    training's best validation metric on the same split and seed; ``'not reached (k/n)'``
    when some runs never get there."""
    if not full:
        return "-"
    best = {(r["split"], r["seed"]): r["best_val"] for r in full}
    times = [time_to_value(r, fraction * best[(r["split"], r["seed"])]) for r in runs
             if (r["split"], r["seed"]) in best]
    reached = [t for t in times if t is not None]
    if not times:
        return "-"
    if len(reached) < len(times):
        return f"not reached ({len(times) - len(reached)}/{len(times)})"
    return f"{statistics.median(reached):.1f}"


def suite_table(records: list[Record], methods: list[str]) -> list[str]:
    """Markdown, one row per dataset, backbone and method: test metric (mean ± std over
    runs), its difference to full-graph training, median epoch time, time to the best
    validation, set-up time (METIS, GraphSAINT's pre-sampling, k-means), peak training
    memory, peak RSS and inference time (medians over runs), and the validation curve's
    stability (:func:`curve_figures`: the largest fall below the running best after epoch
    20, the best minus the mean of the last 20 evaluations; means over runs), and the time
    to 99% of full-graph training's best validation metric (:func:`time_to_full`)."""
    head = ["dataset", "conv", "method", "runs", "test", "vs full", "epoch (s)",
            "time to best (s)", "set-up (s)", "train memory (MB)", "peak RSS (MB)",
            "inference (s)", "max drop after epoch 20", "last-20 gap",
            "time to 99% of full's best val (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {m: i for i, m in enumerate(methods)}
    groups = _group(records, "dataset", "conv", "method")
    for (dataset, conv, method), runs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))):
        full = groups.get((dataset, conv, "full"))
        vs_full = "-"
        if full and method != "full":
            gap = 100 * (_mean(r["test"] for r in runs) - _mean(r["test"] for r in full))
            vs_full = f"{gap:+.2f}"
        memory = [r["peak_memory_bytes"] for r in runs if r.get("peak_memory_bytes") is not None]
        lines.append("| " + " | ".join([
            dataset, conv, method, str(len(runs)),
            f"{mean_std([r['test'] for r in runs])} ({runs[0]['metric']})", vs_full,
            f"{_median(runs, 'median_epoch_seconds'):.3f}",
            f"{_median(runs, 'time_to_best_seconds'):.1f}",
            (f"{_median(runs, 'setup_seconds'):.1f}" if all("setup_seconds" in r for r in runs)
             else "-"),
            _mb(statistics.median(memory)) if memory else "-",
            _mb(_median(runs, "peak_rss_bytes")),
            f"{_median(runs, 'inference_seconds'):.2f}",
            *_curve_columns(runs),
            time_to_full(runs, full),
        ]) + " |")
    return lines


def _curve_columns(runs: list[Record]) -> list[str]:
    """The validation curve's stability (:func:`curve_figures`), mean over runs (and the
    worst run's drop), in points; '-' for runs of at most 20 epochs."""
    figures = [curve_figures(r["history"]) for r in runs
               if len([h for h in r["history"] if h.get("val") is not None]) > 1
               and r["history"][-1]["epoch"] > 20]
    if not figures:
        return ["-", "-"]
    drop = _mean(f[0] for f in figures)
    return [f"{drop:.1f} (worst {max(f[0] for f in figures):.1f})",
            f"{_mean(f[1] for f in figures):.1f}"]


def targets(records: list[Record]) -> list[str]:
    """The comparison's accuracy and time targets, per dataset and backbone: met or not."""
    lines = ["| dataset | conv | target | measured | met |", "|---|---|---|---|---|"]
    groups = _group(records, "dataset", "conv", "method")
    pairs = sorted({(d, c) for d, c, _ in groups})
    for dataset, conv in pairs:
        vq = groups.get((dataset, conv, "vq"))
        if not vq:
            continue
        vq_test = 100 * _mean(r["test"] for r in vq)
        vq_epoch = _median(vq, "median_epoch_seconds")

        def add(target: str, measured: str, met: bool, where: str = f"{dataset} | {conv}"
                ) -> None:
            lines.append(f"| {where} | {target} | {measured} | {'yes' if met else 'NO'} |")

        full = groups.get((dataset, conv, "full"))
        if full:
            gap = vq_test - 100 * _mean(r["test"] for r in full)
            add("vq within 1 point of full", f"{gap:+.2f} points", gap >= -1.0)
            ratio = vq_epoch / _median(full, "median_epoch_seconds")
            add("vq epoch within 2x of full", f"{ratio:.2f}x", ratio <= 2.0)
        for method in ("sage", "cluster"):
            other = groups.get((dataset, conv, method))
            if other:
                gap = vq_test - 100 * _mean(r["test"] for r in other)
                add(f"vq not below {method}", f"{gap:+.2f} points", gap >= 0.0)
        sage = groups.get((dataset, conv, "sage"))
        if sage and dataset == "Tolokers":
            ratio = vq_epoch / _median(sage, "median_epoch_seconds")
            add("vq epoch below sage", f"{ratio:.2f}x", ratio < 1.0)
    return lines


def _batch_size(record: Record) -> Optional[int]:
    """The run's batch size (None for a method without batches, e.g. full-graph training;
    records before the methods' options had one for every method)."""
    if record["method"] == "full":
        return None
    return record["train_config"].get("batch_size")


def batch_table(records: list[Record]) -> list[str]:
    """Markdown: peak training memory and epoch time per method and batch size."""
    lines = []
    for dataset, runs in sorted(_group(records, "dataset").items()):
        lines += [f"{dataset[0]}:", "",
                  "| method | batch size | train memory (MB) | peak RSS (MB) | epoch (s) |",
                  "|---|---|---|---|---|"]
        for r in sorted(runs, key=lambda r: (r["method"], _batch_size(r) or 0)):
            batch = "-" if _batch_size(r) is None else str(_batch_size(r))
            lines.append(f"| {r['method']} | {batch} | {_mb(r['peak_memory_bytes'])} | "
                         f"{_mb(r['peak_rss_bytes'])} | {r['median_epoch_seconds']:.3f} |")
        lines.append("")
    return lines


# ----------------------------------------------------------------------- plots
def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG and close ``fig``."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_metric_vs_time(records: list[Record], path: Path) -> Optional[Path]:
    """Validation metric against cumulative wall clock (training plus evaluation), one
    panel per dataset and backbone, one line per method (the first run of each), and a
    dotted line at 99% of full-graph training's best validation metric."""
    firsts: dict[tuple, Record] = {}
    for r in records:
        firsts.setdefault((r["dataset"], r["conv"], r["method"]), r)
    panels = sorted({(d, c) for d, c, _ in firsts})
    if not panels:
        return None
    plt = pyplot()
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (dataset, conv) in zip(axes.flat, panels):
        metric, times = "", []
        for (d, c, method), r in firsts.items():
            if (d, c) != (dataset, conv):
                continue
            metric = r["metric"]
            elapsed, xs, ys = 0.0, [], []
            for h in r["history"]:
                elapsed += h["seconds"] + (h.get("eval_seconds") or 0.0)
                if h["val"] is not None:
                    xs.append(elapsed)
                    ys.append(100 * h["val"])
            ax.plot(xs, ys, label=method)
            times += [x for x in xs if x > 0]
            if method == "full" and r.get("best_val") is not None:
                ax.axhline(99 * r["best_val"], color="grey", linestyle=":", linewidth=1,
                           label="99% of full's best")
        ax.set_title(f"{dataset.split(',homophily')[0]} ({conv})", fontsize=9)
        ax.set_xlabel("training + evaluation time (s)")
        if times and max(times) > 100 * min(times):  # e.g. minutes beside seconds
            ax.set_xscale("log")
        ax.set_ylabel(f"validation {metric}")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return save_figure(fig, path)


def plot_memory_vs_batch(records: list[Record], path: Path) -> Optional[Path]:
    """Peak training memory against batch size, one line per method (full: a level)."""
    if not records:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, runs in sorted(_group(records, "method").items()):
        runs = sorted(runs, key=lambda r: _batch_size(r) or 0)
        mb = [r["peak_memory_bytes"] / 2**20 for r in runs]
        if _batch_size(runs[0]) is None:  # no batches: the whole graph per step
            ax.axhline(mb[0], color="gray", linestyle="--", label=f"{method[0]} (whole graph)")
            continue
        ax.plot([_batch_size(r) for r in runs], mb, marker="o", label=method[0])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (nodes)")
    ax.set_ylabel("peak training memory (MB)")
    ax.set_title(records[0]["dataset"].split(",homophily")[0], fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_grid(records: list[Record], preset: str, stem: Path) -> list[Path]:
    """The plots of a grid preset; returns the files written."""
    if preset == "batch":
        written = plot_memory_vs_batch(records, stem.with_name(stem.name + "-memory.png"))
    else:
        written = plot_metric_vs_time(records, stem.with_name(stem.name + "-metric-time.png"))
    return [written] if written is not None else []
