"""The ``vqgnn`` command line.

* ``vqgnn info --dataset NAME [--root DIR] [--split I] [--seed S]`` loads a dataset
  through :func:`vqgnn.datasets.load_dataset` and prints its summary.
* ``vqgnn train --dataset NAME --method vq --conv gcn ...`` trains and prints a summary
  table; ``--method vq,full`` runs several methods side by side; ``--json PATH`` writes
  one JSON record per run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union


def dataset_summary(data) -> list[tuple[str, str]]:
    """(field, value) rows describing a loaded dataset."""
    n, e = data.num_nodes, data.edge_index.size(1)
    rows = [
        ("dataset", str(data.name)),
        ("nodes", f"{n:,}"),
        ("edges (directed)", f"{e:,}"),
        ("average degree", f"{e / max(n, 1):.2f}"),
        ("features", f"{data.x.size(1):,}"),
        ("classes" if data.y.dim() == 1 else "tasks", f"{data.num_classes:,}"),
        ("metric", str(data.metric)),
        ("split", str(data.split)),
    ]
    for mask in ("train_mask", "val_mask", "test_mask"):
        count = int(data[mask].sum())
        rows.append((mask.replace("_mask", " nodes"), f"{count:,} ({count / n:.1%})"))
    if data.y.dim() == 1 and e > 0:
        src, dst = data.edge_index
        labeled = (data.y[src] >= 0) & (data.y[dst] >= 0)
        same = (data.y[src] == data.y[dst]) & labeled
        rows.append(("edge homophily", f"{float(same.sum()) / max(int(labeled.sum()), 1):.3f}"))
    return rows


def print_table(rows: Sequence[tuple[str, str]], header: tuple[str, str]) -> None:
    """Print two-column rows as a Markdown table."""
    width = max(len(r[0]) for r in [header, *rows])
    print(f"| {header[0]:<{width}} | {header[1]} |")
    print(f"|{'-' * (width + 2)}|---|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")


def cmd_info(args: argparse.Namespace) -> int:
    from vqgnn.datasets import load_dataset

    start = time.perf_counter()
    data = load_dataset(args.dataset, root=args.root, split=args.split, seed=args.seed)
    seconds = time.perf_counter() - start
    print_table(dataset_summary(data) + [("load time", f"{seconds:.2f} s")], ("field", "value"))
    return 0


def _fanouts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'--num-neighbors' must be comma-separated ints such as 15,10,5, "
            f"received {text!r}") from None


#: Exit statuses: success, bad input or configuration, training diverged, a file or disk
#: failure, another rank failed (torchrun), interrupted (Ctrl-C). An unexpected exception
#: exits with 1 and its traceback.
EXIT_OK, EXIT_INPUT, EXIT_DIVERGED, EXIT_IO, EXIT_DISTRIBUTED, EXIT_INTERRUPTED = (
    0, 2, 3, 4, 5, 130)

#: Command-line flags of the methods' own options (dest = option name); a flag is passed
#: only when given, to the listed methods that take it.
METHOD_FLAGS = ("batch_size", "sampler", "num_parts", "num_neighbors", "walk_length",
                "saint_coverage", "batch_nodes", "loss_aware_backward", "inference_batch_size",
                "inference_memory_mb", "inference_batches", "inference_refresh", "init_nodes",
                "search_every")
#: Codebook flags (dest -> CodebookOptions field).
CODEBOOK_FLAGS = {"num_codewords": "num_codewords", "codebook_decay": "decay",
                  "dead_threshold": "dead_threshold", "standardizer_momentum": "momentum",
                  "kmeans_backend": "kmeans_backend", "kmeans_iters": "kmeans_iters"}


#: Parameters whose command-line option is not ``--`` + the name with dashes.
_FLAG_OF = {**{field: "--" + dest.replace("_", "-") for dest, field in CODEBOOK_FLAGS.items()},
            "num_layers": "--layers", "hidden_channels": "--hidden",
            "heads": "--attention-heads"}


def _naming_the_flag(message: str, args: argparse.Namespace) -> str:
    """``message`` with the command-line option of the parameter it names appended (the
    library's errors name parameters: ``'decay' must be ...`` comes from
    ``--codebook-decay``)."""
    import re

    found = re.search(r"'(\w+)' (?:must|needs|takes|is)", message)
    if found is None or "'--" in message:
        return message
    command = getattr(args, "_commands", {}).get("train")
    flag = _FLAG_OF.get(found.group(1), "--" + found.group(1).replace("_", "-"))
    known = command is not None and flag in _options(command)
    return f"{message} (option {flag})" if known else message


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string ``parser`` takes (``--epochs``, ``-h``, ...)."""
    return [o for action in parser._actions for o in action.option_strings]


def refresh_passes(text: str) -> Union[int, str]:
    """``--inference-refresh``: an int >= 0 or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"'--inference-refresh' must be an int >= 0 or "
                                         f"'auto', received {text!r}")
    return value


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def method_options(args: argparse.Namespace, methods: Sequence[str]) -> dict[str, dict]:
    """Each method's own options from the flags given; a flag that no listed method takes
    is a :class:`~vqgnn.errors.ConfigError` naming it."""
    from vqgnn.errors import ConfigError
    from vqgnn.train import METHODS, method_class

    given = {k: getattr(args, k) for k in METHOD_FLAGS if getattr(args, k, None) is not None}
    options = {m: {k: v for k, v in given.items() if method_class(m).Options.accepts(k, given)}
               for m in methods}
    for key in given:
        if not any(key in chosen for chosen in options.values()):
            owners = [m for m, c in METHODS.items() if key in c.Options.option_names()]
            listed = [m for m in methods if m in owners]
            if listed:  # a listed method has it, not in this combination: its own message
                options[listed[0]][key] = given[key]
                continue
            raise ConfigError(f"'{_flag(key)}' does not apply to method "
                              f"{', '.join(methods)} (it is an option of "
                              f"{', '.join(owners) or 'no method'})")
    return options


def train_config(args: argparse.Namespace, method: str, options: Optional[dict] = None,
                 checkpoint: Optional[str] = None):
    """The :class:`~vqgnn.train.TrainConfig` of one method from the command's options."""
    from vqgnn.train import TrainConfig

    if options is None:
        options = method_options(args, [method])[method]
    return TrainConfig.create(
        method, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs,
        grad_clip=args.grad_clip, lr_per_epoch=args.lr_per_epoch, eval_every=args.eval_every,
        patience=args.patience,
        inference=args.inference, eval_batch_size=args.eval_batch_size, seed=args.seed,
        device=args.device, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every,
        progress=not args.quiet and sys.stderr.isatty(),  # bars only on a terminal
        feature_dtype=args.feature_dtype, precision=args.precision, **options)


def model_config(args: argparse.Namespace):
    """The :class:`~vqgnn.train.ModelConfig` (with its codebook options) of the command."""
    from vqgnn.quantize import CodebookOptions
    from vqgnn.train import ModelConfig

    codebook = CodebookOptions(**{field: getattr(args, dest)
                                  for dest, field in CODEBOOK_FLAGS.items()})
    return ModelConfig(
        conv=args.conv, hidden=args.hidden, layers=args.layers, dropout=args.dropout,
        norm=args.norm, residual=args.residual,
        exact_first_layer=not args.no_exact_first_layer, codebook=codebook, act=args.act,
        ffn=args.ffn, global_attention=args.global_attention,
        attention_heads=args.attention_heads)


def method_checkpoint(args: argparse.Namespace, method: str) -> Optional[str]:
    """The checkpoint file of ``method``: ``<--checkpoint>.<method>.pt`` (see
    :func:`vqgnn.train.checkpoint.checkpoint_path`), or None without ``--checkpoint``."""
    from vqgnn.train.checkpoint import checkpoint_path

    return str(checkpoint_path(args.checkpoint, method)) if args.checkpoint else None


def train_one(data, method: str, args: argparse.Namespace, options: dict) -> dict[str, Any]:
    """Train one method with the command's options; returns its JSON record."""
    from vqgnn.train import run_experiment

    checkpoint = method_checkpoint(args, method)
    parallel = getattr(args, "_parallel", None)
    announce: Optional[Callable[[int], None]] = None
    if args.resume and checkpoint is not None and (parallel is None or parallel.is_main):
        if Path(checkpoint).exists():  # said once the checkpoint is checked and loaded

            def announce(epoch: int) -> None:
                print(f"[{method}] resuming from {checkpoint} after epoch {epoch}",
                      file=sys.stderr, flush=True)
        else:
            print(f"[{method}] no checkpoint at {checkpoint}: starting from epoch 1",
                  file=sys.stderr, flush=True)
    config = train_config(args, method, options, checkpoint)
    log = None if args.quiet else (lambda line: print(f"[{method}] {line}", flush=True))
    return run_experiment(data, model_config(args), config, log=log, resume=args.resume,
                          parallel=parallel, on_resumed=announce)


def _file_key(path: Optional[str]) -> Optional[tuple[int, int, int]]:
    """The identity of the file at ``path`` as it is now (inode, size, modification time),
    or None where there is none: a checkpoint this run writes replaces it (a rename) and
    changes the key."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if st else None


def interrupt_checkpoint_note(args: argparse.Namespace, method: Optional[str]) -> str:
    """What the Ctrl-C line says about ``method``'s checkpoint: the file this run wrote last;
    the one it resumed when it wrote none; or, when it wrote none and the file there is an
    earlier run's (a run of the same configuration started without ``--resume`` only
    replaces it at its first checkpoint), that this run's epochs are lost."""
    checkpoint = method_checkpoint(args, method) if method and args.checkpoint else None
    if checkpoint is None:
        return ""
    now = _file_key(checkpoint)
    every = args.checkpoint_every
    when = "every epoch" if every == 1 else f"every {every} epochs"
    if now is None:
        return f"; no checkpoint was written yet (one is written {when})"
    if now != getattr(args, "_checkpoint_before", None):
        return f"; the last checkpoint is {checkpoint} (continue with --resume)"
    if args.resume:
        return (f"; no checkpoint was written since resuming: {checkpoint} is still the "
                f"one resumed (continue with --resume)")
    return (f"; this run wrote no checkpoint yet (one is written {when}): {checkpoint} is "
            f"an earlier run's, which --resume would continue")


def _recorded_before(path: str, record: dict[str, Any]) -> bool:
    """Whether a resumed run that trained nothing more (its checkpoint had finished) is
    already in ``path``: the same checkpoint file and epochs. Its record is then not
    appended again (a kill between the last checkpoint and the record leaves none, and
    then it is)."""
    from vqgnn.train.records import read_records

    if record.get("resumed_at_epoch") != record["epochs_run"]:
        return False
    checkpoint = record["train_config"].get("checkpoint")
    done = any(r.get("train_config", {}).get("checkpoint") == checkpoint
               and r.get("epochs_run") == record["epochs_run"] and r.get("status") == "ok"
               for r in read_records(path))
    if done:
        print(f"[{record['method']}] {checkpoint} had finished and its record is in {path}: "
              f"not appended again", file=sys.stderr)
    return done


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _mb(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def summary_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown rows comparing the runs."""
    metric = records[0]["metric"]
    lines = [
        f"| method | best val {metric} | test {metric} | test (exact) | test (vq inference) "
        f"| best epoch | epoch time (s) | time to best (s) | peak train memory (MB) "
        f"| peak RSS (MB) | inference (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['method']} | {_pct(r['best_val'])} | {_pct(r['test'])} | "
            f"{_pct(r['test_exact'])} | {_pct(r['test_vq'])} | {r['best_epoch']} | "
            f"{r['median_epoch_seconds']:.3f} | {r['time_to_best_seconds']:.1f} | "
            f"{_mb(r['peak_memory_bytes'])} | {_mb(r['peak_rss_bytes'])} | "
            f"{r['inference_seconds']:.2f} |")
    return lines


def data_parallel(args: argparse.Namespace):
    """The run's data-parallel strategy: several ranks under torchrun (the process group
    initialised here, each rank on ``cuda:LOCAL_RANK`` for ``--device cuda``; only rank 0
    prints and writes records), else one process."""
    from vqgnn.distributed import DataParallel, local_rank

    parallel = DataParallel.from_env(args.device, args.dist_timeout)
    if parallel.world_size > 1:
        if args.device == "cuda":
            args.device = f"cuda:{local_rank()}"
        if not parallel.is_main:
            args.quiet, args.json = True, None
    return parallel


def _check_attention_flags(args: argparse.Namespace) -> None:
    """The global-attention flags, in the command line's terms: ``--attention-heads``
    without ``--global-attention`` would be ignored, and the library's own errors name its
    parameters (``out_channels``, ``residual``), which a command line never set."""
    from vqgnn.errors import ConfigError
    from vqgnn.train import ModelConfig

    if not args.global_attention:
        if args.attention_heads != ModelConfig.attention_heads:
            raise ConfigError(f"'--attention-heads' needs '--global-attention' (received "
                              f"--attention-heads {args.attention_heads} without it)")
        return
    if not (args.residual or args.ffn):
        raise ConfigError("'--global-attention' needs the residual layout: add '--residual' "
                          "or '--ffn'")
    heads = args.attention_heads
    if isinstance(heads, int) and heads >= 1 and args.hidden % heads:
        valid = [d for d in range(1, min(args.hidden, 16) + 1) if args.hidden % d == 0]
        raise ConfigError(f"'--attention-heads' must divide '--hidden' ({args.hidden}), "
                          f"received {heads}; e.g. {', '.join(map(str, valid))}")


def cmd_train(args: argparse.Namespace) -> int:
    from vqgnn.datasets import load_dataset
    from vqgnn.errors import ConfigError, DivergenceError
    from vqgnn.train.records import append_result, check_writable, code_version
    from vqgnn.train.trainer import FEATURE_DTYPES

    code_version()  # the code this command imported, read before it trains

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods:
        raise ConfigError(f"'--method' must name at least one method, received {args.method!r}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"'--method' lists a method twice, received {args.method!r}")
    if args.resume and not args.checkpoint:
        raise ConfigError("'--resume' needs '--checkpoint PATH' (the checkpoint to resume)")
    if args.checkpoint_every != 1 and not args.checkpoint:
        raise ConfigError(f"'--checkpoint-every' needs '--checkpoint PATH' (received "
                          f"--checkpoint-every {args.checkpoint_every} without it)")
    _check_attention_flags(args)
    options = method_options(args, methods)
    model_config(args)  # reject bad options before loading anything
    for method in methods:
        train_config(args, method, options[method])
    parallel = args._parallel = data_parallel(args)
    from vqgnn.train.methods import data_parallel_refusal, reads_codebooks

    for method in methods:  # before the first method trains, not after it
        refusal = data_parallel_refusal(method, parallel.world_size)
        if refusal is not None:
            raise ConfigError(f"'--method': {refusal}; run it without torchrun, apart from "
                              f"the other methods")
    if args.json:  # before training: a bad path must not cost a run
        check_writable(args.json, "--json")
    if args.checkpoint and parallel.is_main:  # the same for every method's checkpoint
        from vqgnn.train.checkpoint import check_checkpoint_path, checkpoint_path

        for method in methods:
            check_checkpoint_path(checkpoint_path(args.checkpoint, method), "--checkpoint")
    data = load_dataset(args.dataset, root=args.root, split=args.split, seed=args.seed)
    if args.feature_dtype != "float32":  # no float32 copy of the features stays behind
        data.x = data.x.to(FEATURE_DTYPES[args.feature_dtype])
    if not args.quiet:
        print_table(dataset_summary(data), ("field", "value"))
        print()
    records = []
    for method in methods:  # each record is written as soon as its method finishes
        args._checkpoint_before = _file_key(method_checkpoint(args, method))
        args._current_method = method
        try:
            record = train_one(data, method, args, options[method])
        except DivergenceError as err:
            if args.json and isinstance(err.record, dict):
                append_result(args.json, err.record)
                print(f"record (status 'diverged') appended to {args.json}", file=sys.stderr)
            raise
        if args.json and not _recorded_before(args.json, record):
            append_result(args.json, record)
        records.append(record)
        args._finished = [r["method"] for r in records]
    parallel.close()
    if not parallel.is_main:
        return 0
    print()
    batch = ", ".join(f"{r['method']} {r['train_config']['batch_size']}" for r in records
                      if r["train_config"].get("batch_size") is not None) or "whole graph"
    ranks = f", ranks={parallel.world_size}" if parallel.world_size > 1 else ""
    # K only where a method reads codebooks (the others build them and never use them)
    ks = sorted({r["model_config"]["codebook"]["num_codewords"] for r in records
                 if reads_codebooks(r["method"])})
    k = f"K={', '.join(map(str, ks))}, " if ks else ""
    print(f"{data.name} (split {data.split}), conv={args.conv}, hidden={args.hidden}, "
          f"layers={args.layers}, batch size: {batch}, {k}"
          f"seed={args.seed}, device={records[0]['device']}{ranks}")
    print("\n".join(summary_table(records)))
    print(f"peak train memory: {records[0]['memory_measure']}; peak RSS: "
          f"{records[0]['rss_measure']}")
    if args.json:
        print(f"records appended to {args.json}")
    return 0


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synthetic",
                        help="dataset name, a .pt file, or synthetic:key=value,...")
    parser.add_argument("--root", default=None, help="dataset folder (offline files)")
    parser.add_argument("--split", type=int, default=0, help="split index")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after an option's help (also one without help), except
    where the help names the default itself or there is none to name (None, or a flag
    that is off)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        text = action.help or ""
        # by identity: a default of 0 or 0.0 equals False, and is still a default to show
        if "default" in text or any(action.default is v for v in (None, False,
                                                                   argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


class _ScriptFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _ScriptParser(argparse.ArgumentParser):
    """An option added without help still shows its default."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if ("help" not in kwargs and args and str(args[0]).startswith("-")
                and kwargs.get("default") not in (None, False)
                and kwargs.get("action") not in ("store_true", "store_false")):
            kwargs["help"] = "default: %(default)s"
        return super().add_argument(*args, **kwargs)


def script_parser(doc: Optional[str], epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of a script (``benchmarks/``, ``examples/``) from its module
    docstring: the first paragraph as the description, the rest as the epilog (both as
    written), every option's default shown. Reads the code's version now, at the script's
    start, for the records it will write (:func:`~vqgnn.train.records.code_version`)."""
    from vqgnn.train.records import code_version

    code_version()
    text = (doc or "").strip()
    first, _, rest = text.partition("\n\n")
    return _ScriptParser(description=first, epilog=rest if epilog is None else epilog,
                         formatter_class=_ScriptFormatter)


def build_parser() -> argparse.ArgumentParser:
    from vqgnn.distributed import DEFAULT_TIMEOUT
    from vqgnn.nn.models import ACTIVATIONS, BACKBONES, NORMS
    from vqgnn.quantize import CodebookOptions
    from vqgnn.quantize.options import KMEANS_BACKENDS
    from vqgnn.train import METHODS, ModelConfig, TrainConfig
    from vqgnn.train.methods import (
        BATCH_NODES,
        INFERENCE_BATCHES,
        SAMPLERS,
        NeighborOptions,
        SaintOptions,
        VQOptions,
    )
    from vqgnn.train.trainer import FEATURE_DTYPES, OPTIMIZERS, PRECISIONS

    parser = argparse.ArgumentParser(
        prog="vqgnn", description="VQ-GNN: scale PyG GNNs with vector quantization.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a dataset and print its summary",
                          formatter_class=DefaultsFormatter)
    _add_dataset_args(info)
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="train and print a summary table",
                           formatter_class=DefaultsFormatter)
    parser.set_defaults(_commands={"info": info, "train": train})
    _add_dataset_args(train)
    m, t, cb = ModelConfig(), TrainConfig(), CodebookOptions()  # one source for the defaults
    vq, sage, saint = VQOptions(), NeighborOptions(), SaintOptions()
    train.add_argument("--method", default=t.method,
                       help=f"one of {', '.join(METHODS)}, or a comma-separated list "
                            f"(vq,full,sage) trained side by side")
    train.add_argument("--conv", default=m.conv, choices=list(BACKBONES),
                       help="backbone convolution (gin sums its messages: train it with "
                            "--lr-per-epoch --lr-schedule cosine; README, 'Sum aggregation')")
    train.add_argument("--epochs", type=int, default=t.epochs, help="maximum epochs")
    methods = train.add_argument_group(
        "method options", "each applies to the methods that take it (default: the method's); "
                          "one that no listed method takes is an error")
    methods.add_argument("--batch-size", type=int, default=None,
                         help=f"nodes per mini-batch (vq, sage, cluster, saint; "
                              f"default {vq.batch_size})")
    methods.add_argument("--sampler", default=None, choices=list(SAMPLERS),
                         help=f"vq: random node batches or METIS-cluster batches "
                              f"(default {vq.sampler})")
    methods.add_argument("--num-parts", type=int, default=None,
                         help="METIS parts (vq with --sampler metis, cluster; default 4 per "
                              "batch)")
    methods.add_argument("--num-neighbors", type=_fanouts, default=None,
                         help=f"sage: fan-outs, one per layer (default "
                              f"{','.join(map(str, sage.num_neighbors))})")
    methods.add_argument("--walk-length", type=int, default=None,
                         help=f"saint: random-walk length (default {saint.walk_length})")
    methods.add_argument("--saint-coverage", type=float, default=None,
                         help=f"saint: normalisation pre-sampling, samples per node (default "
                              f"{saint.saint_coverage})")
    methods.add_argument("--batch-nodes", default=None, choices=list(BATCH_NODES),
                         help=f"vq: batches partition all nodes or only the training nodes "
                              f"(default {vq.batch_nodes})")
    methods.add_argument("--loss-aware-backward", action="store_true", default=None,
                         help="vq: no backward messages from out-of-batch nodes whose "
                              "gradient is zero (experimental)")
    methods.add_argument("--inference-batch-size", type=int, default=None,
                         help="vq: nodes per VQ inference batch (default: --batch-size)")
    methods.add_argument("--inference-memory-mb", type=float, default=None,
                         help="vq: instead, the largest VQ inference batch whose activations "
                              "fit in this many MB (measured on a probe batch)")
    methods.add_argument("--inference-batches", default=None, choices=list(INFERENCE_BATCHES),
                         help=f"vq: VQ inference batches from METIS parts or random "
                              f"(default {vq.inference_batches})")
    methods.add_argument("--inference-refresh", type=refresh_passes, default=None,
                         help=f"vq: passes re-assigning every node by its eval-mode inputs "
                              f"before VQ inference predicts, or 'auto' (0 or 1, by the "
                              f"validation metric; default {vq.inference_refresh})")
    methods.add_argument("--init-nodes", type=int, default=None,
                         help="vq: k-means initialisation on the layer inputs of this many "
                              "random nodes, memory bounded by the batch and K (default: "
                              "every node's exact inputs, O(N * hidden) memory at set-up)")
    methods.add_argument("--search-every", type=int, default=None,
                         help=f"vq: nearest-codeword search on every k-th step of an epoch; "
                              f"the steps between keep the batch nodes' codewords (default "
                              f"{vq.search_every}: every step)")
    codebook = train.add_argument_group("codebook options (VQ-GNN layers)")
    codebook.add_argument("--num-codewords", type=int, default=cb.num_codewords,
                          help="codewords K per layer")
    codebook.add_argument("--codebook-decay", type=float, default=cb.decay,
                          help="EMA decay of the codeword statistics: a memory of about "
                          "1 / (1 - decay) steps; on graphs of a few steps per epoch try "
                          "0.7-0.9 (docs/method.md section 4)")
    codebook.add_argument("--dead-threshold", type=float, default=cb.dead_threshold,
                          help="EMA count under which a codeword is restarted (0: never)")
    codebook.add_argument("--standardizer-momentum", type=float, default=cb.momentum,
                          help="momentum of the feature/gradient standardisers")
    codebook.add_argument("--kmeans-backend", default=cb.kmeans_backend,
                          choices=list(KMEANS_BACKENDS), help="k-means initialisation backend")
    codebook.add_argument("--kmeans-iters", type=int, default=cb.kmeans_iters,
                          help="k-means initialisation iterations")
    train.add_argument("--hidden", type=int, default=m.hidden, help="hidden channels")
    train.add_argument("--layers", type=int, default=m.layers, help="convolution layers")
    train.add_argument("--dropout", type=float, default=m.dropout, help="dropout probability")
    train.add_argument("--norm", default=m.norm, choices=list(NORMS),
                       help="normalisation between layers")
    train.add_argument("--residual", action="store_true",
                       help="input/output linear layers and residual conv blocks")
    train.add_argument("--ffn", action="store_true",
                       help="residual blocks with a feed-forward module and a final norm "
                            "(the heterophilous benchmark's architecture; every layer "
                            "quantized): use with --norm layer --act gelu --dropout 0.2")
    train.add_argument("--global-attention", action="store_true",
                       help="a global attention layer over all nodes beside every convolution "
                            "(hybrid blocks; needs --residual or --ffn; methods vq and full). "
                            "Give it a few --warmup-epochs (10 of 100): full-graph training's "
                            "first full-lr steps can stall it at the class prior")
    train.add_argument("--attention-heads", type=int, default=m.attention_heads,
                       help="heads of the global attention layers")
    train.add_argument("--act", default=m.act, choices=list(ACTIVATIONS),
                       help="activation")
    train.add_argument("--no-exact-first-layer", action="store_true",
                       help="quantize the first layer's inputs too")
    train.add_argument("--lr", type=float, default=t.lr, help="learning rate")
    train.add_argument("--weight-decay", type=float, default=t.weight_decay, help="weight decay")
    train.add_argument("--lr-schedule", default=t.lr_schedule, choices=["constant", "cosine"],
                       help="learning-rate schedule after the warm-up (cosine: to 0 at the "
                            "last epoch)")
    train.add_argument("--warmup-epochs", type=int, default=t.warmup_epochs,
                       help="linear learning-rate warm-up over this many epochs")
    train.add_argument("--grad-clip", type=float, default=t.grad_clip,
                       help="clip the gradient's total norm to this value")
    train.add_argument("--lr-per-epoch", action="store_true",
                       help="--lr is an epoch's: each of an epoch's S mini-batch steps uses "
                            "lr / S (the linear scaling rule)")
    train.add_argument("--optimizer", default=t.optimizer, choices=list(OPTIMIZERS),
                       help="optimizer")
    train.add_argument("--eval-every", type=int, default=t.eval_every,
                       help="evaluate every this many epochs")
    train.add_argument("--patience", type=int, default=t.patience,
                       help="early stopping after this many evaluations without improvement")
    train.add_argument("--inference", default=None, choices=["exact", "vq"],
                       help="inference used for model selection (default: exact; vq: VQ-GNN "
                            "only)")
    train.add_argument("--eval-batch-size", type=int, default=t.eval_batch_size,
                       help="nodes per inference chunk")
    train.add_argument("--device", default=t.device, help="cpu, cuda or cuda:N")
    train.add_argument("--feature-dtype", default=t.feature_dtype,
                       choices=list(FEATURE_DTYPES),
                       help="storage of the node features (computation stays float32)")
    train.add_argument("--precision", default=t.precision, choices=list(PRECISIONS),
                       help="bfloat16: each training step's forward under torch.autocast in "
                            "bfloat16 (weights, optimizer and codebooks stay float32; "
                            "evaluation float32)")
    train.add_argument("--checkpoint", default=None,
                       help="checkpoint path (one file per method, written every "
                            "--checkpoint-every epochs and after the last)")
    train.add_argument("--checkpoint-every", type=int, default=t.checkpoint_every,
                       help="epochs between checkpoints")
    train.add_argument("--resume", action="store_true", help="resume from --checkpoint")
    train.add_argument("--json", default=None, help="append one JSON record per run here")
    train.add_argument("--quiet", action="store_true",
                       help="no progress bars or epoch logs (the bars, on standard error, are "
                            "drawn only when it is a terminal)")
    train.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT,
                       help="under torchrun: seconds a rank waits for the others (a collective, "
                            "or rank 0's evaluation) before the run fails")
    train.set_defaults(func=cmd_train)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """``parser.parse_args``, with an unknown option reported by its command's parser
    (its usage and ``vqgnn train: error: ...``) and the closest known option suggested."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if extra:
        command = args._commands[args.command]
        known = _options(command)
        hints = [close[0] for e in extra if e.startswith("-") for close in
                 [difflib.get_close_matches(e.split("=")[0], known, n=1, cutoff=0.6)] if close]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The ``vqgnn`` command: exits with :func:`run`'s status."""
    sys.exit(run(argv))


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run one ``vqgnn`` command line and return its exit status (``EXIT_*``; argparse's
    2 for a usage error), printing what the command prints."""
    from vqgnn.distributed import DistributedError
    from vqgnn.errors import ConfigError, DivergenceError

    try:
        args = _parse(build_parser(), argv)
    except SystemExit as exit_:  # a usage error, or --help
        return int(exit_.code or 0)
    prefix = f"vqgnn {args.command}"
    try:
        code = args.func(args)
    except (ConfigError, FileNotFoundError) as err:
        # Bad input or configuration: one line. Anything unexpected is a bug and shows
        # its traceback.
        text = _naming_the_flag(str(err), args) if isinstance(err, ConfigError) else str(err)
        print(f"{prefix}: error: {text}", file=sys.stderr)
        code = EXIT_INPUT
    except DivergenceError as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        code = EXIT_DIVERGED
    except DistributedError as err:  # another rank died or hangs (torchrun stops the rest)
        print(f"{prefix}: error: {err}", file=sys.stderr)
        code = EXIT_DISTRIBUTED
    except OSError as err:  # the machine: a full or read-only disk, a lost device...
        name = f" {err.filename!r}" if err.filename else ""
        print(f"{prefix}: error: {err.strerror or err}{name} (the records and checkpoints "
              f"written before it are intact)", file=sys.stderr)
        code = EXIT_IO
    except KeyboardInterrupt:
        method = getattr(args, "_current_method", None)
        parallel = getattr(args, "_parallel", None)  # checkpoints are rank 0's to name
        main_rank = parallel is None or parallel.is_main
        where = interrupt_checkpoint_note(args, method) if main_rank else ""
        finished = getattr(args, "_finished", [])
        kept = ""
        if getattr(args, "json", None):
            kept = (f"; the records of {', '.join(finished)} are in {args.json}" if finished
                    else "; no method had finished: no record was written")
        print(f"\n{prefix}: interrupted{f' while training {method}' if method else ''}"
              f"{where}{kept}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    return code
