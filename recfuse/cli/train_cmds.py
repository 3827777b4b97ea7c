"""`recfuse train`: load + validate the data, split, train (or resume) and write the model directory.

Example:
    $ recfuse train --config data_samples/recfuse.toml --out runs/model --set model.fusion='"gated"' --epochs 5
    $ recfuse train --config data_samples/recfuse.toml --out runs/model --engine ray --workers 2
    $ recfuse prepare --config cfg.toml --out runs/prepared                       # split + shards, streamed
    $ recfuse train --config cfg.toml --out runs/model --prepared runs/prepared   # no interactions in memory

Several workers: set ``TF_CONFIG`` in each process (Kubernetes, by hand) and run the same command in
each, or let Ray Train start them with ``--engine ray --workers N`` (recfuse.training.distribute).
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from typing import Any

from recfuse.errors import UsageError


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "train",
        help="train a two-tower model (resumes when OUT already holds checkpoints)",
        description="Train a multimodal two-tower model from a TOML config; prints per-epoch progress, "
        "the final validation Recall@K and the model directory.",
    )
    p.add_argument("--config", required=True, help="TOML config file")
    p.add_argument("--out", default=None, help="model directory (default: train.out_dir of the config)")
    add_set_option(p, 'override a config value, VALUE parsed as TOML (e.g. model.dim=32, model.fusion="max")')
    p.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (one worker of a cluster when TF_CONFIG is set); ray: Ray Train starts "
        "--workers processes (needs the ray extra) (default: %(default)s)",
    )
    p.add_argument(
        "--prepared",
        default=None,
        metavar="DIR",
        help="folder `recfuse prepare --config` wrote (the split made while streaming): stream the training "
        "examples, the validation histories and the model's per-user lists from its shards, loading only "
        "the catalog (bounded memory); its split must be the config's [data] split. A folder prepared "
        "without --config (no split recorded) holds the training split's interactions: the data is then "
        "loaded and split in memory and only the examples are streamed (default: %(default)s, in memory)",
    )
    p.add_argument("--workers", type=int, default=2, help="training processes for --engine ray (default: %(default)s)")
    p.add_argument(
        "--ray-address",
        default=None,
        help="running Ray cluster for --engine ray (default: a local session on 127.0.0.1)",
    )
    p.set_defaults(handler=_train)


def add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` option (read back with :func:`parse_overrides`)."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"{help}; repeatable (default: none)",
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c.d=\\"x\\""]`` -> ``{"a.b": 1, "c.d": "x"}``; bare words are taken as strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # an unquoted word such as model.fusion=max
        out[key.strip()] = value
    return out


def _train(args: argparse.Namespace) -> int:
    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import split_for
    from recfuse.data.validate import load_dataset

    # the config and the data are checked before TensorFlow is imported (seconds of start-up), so a
    # misspelled key or a bad row is reported at once
    cfg = RecfuseConfig.from_toml(args.config)
    overrides = parse_overrides(args.overrides)
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if overrides:
        cfg = cfg.with_overrides(overrides)
    out = args.out or cfg.train.out_dir
    if args.engine == "ray":
        if cfg.train.refit:
            raise UsageError("train.refit = true trains twice in one process, not with --engine ray")
        if args.prepared is not None:
            raise UsageError("--prepared streams in processes started by hand (TF_CONFIG), not with --engine ray")
        return _train_on_ray(args, cfg, overrides, out)
    # a prepared folder that records its split holds the training rows: only the catalog is loaded
    prepared_split = None
    if args.prepared is not None:
        from recfuse.data.prepared_split import load_prepared_split

        prepared_split = load_prepared_split(args.prepared, cfg.data, verify=False)
    if prepared_split is not None and cfg.item_head.enabled:
        from recfuse.errors import ConfigError

        raise ConfigError(
            f"`item_head.method` = {cfg.item_head.method!r} fits on the training interactions in memory, which "
            f"--prepared {args.prepared!r} keeps on disk; train without --prepared, or set item_head.method = 'none'"
        )
    if prepared_split is not None:
        from recfuse.data.catalog import load_catalog

        dataset: Any = load_catalog(cfg.data, cfg.modalities)
        split: Any = prepared_split
    else:
        dataset = load_dataset(cfg.data, cfg.modalities)
        split = split_for(dataset.interactions, cfg.data)
        if args.prepared is not None:
            check_prepared(args.prepared, len(split.train))

    from recfuse.cli.progress import ProgressPrinter
    from recfuse.training.trainer import train

    n_test = split.test_rows if hasattr(split, "test_rows") else len(split.test)  # a prepared split does not hold them
    mods = ", ".join(f"{m.name} ({m.kind}/{m.source})" for m in cfg.modalities) or "none: item ids only"
    print(
        f"training {cfg.variant!r}: {len(dataset.items)} items, {len(split.train)} train / "
        f"{len(split.val)} val / {n_test} test interactions ({cfg.data.split} split) -> {out}\n"
        f"modalities: {mods}; fusion {cfg.model.fusion}",
        flush=True,
    )
    # Keras' carriage-return bar only helps on a terminal; every run also gets a line per validated
    # epoch on stderr as it ends (logs, `nohup`, CI and `make demo` see training move), and the
    # summary table on stdout at the end
    lines = ProgressPrinter()

    def epoch_line(epoch: int, metric: float) -> bool:
        lines.line(f"epoch {epoch}/{cfg.train.epochs}: val_recall@{cfg.train.eval_k} = {metric:.4f}")
        return False

    bar = not args.no_progress and sys.stdout.isatty()
    if cfg.train.refit:
        from recfuse.training.refit import check_refit, train_refit

        check_refit(split, args.prepared, refit_epochs=cfg.train.refit_epochs)
        runs = train_refit(cfg, dataset, split, out, progress=bar, on_epoch=epoch_line)
        result = runs.final if runs.selection is None else runs.selection  # refit_epochs: no selection run
    else:
        result = train(cfg, dataset, split, out, progress=bar, on_epoch=epoch_line, prepared=args.prepared)
    for rec in result.history:
        extras = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k not in ("epoch",))
        print(f"epoch {rec['epoch']}: {extras}")
    why = "train.refit_epochs: it trains on the validation rows" if cfg.train.refit_epochs else "no validation split"
    metric = f"n/a ({why})" if result.best_metric is None else f"{result.best_metric:.4f}"
    print(f"val Recall@{cfg.train.eval_k}: {metric} (best epoch {result.best_epoch} of {result.epochs_run})")
    if result.skipped_interactions:
        print(f"skipped {result.skipped_interactions} training interactions whose item is not in the catalog")
    if result.examples_per_second == result.examples_per_second:  # not nan: an epoch ran in this call
        who = "this worker" if result.workers > 1 else "one process"
        print(f"throughput: {result.examples_per_second:.0f} examples/s ({who})")
    if not result.is_chief:
        print(f"worker of {result.workers}: trained; the chief writes the model directory {result.model_dir}")
        return 0
    selection_dir = None
    if cfg.train.refit and runs.selection is None:
        print(f"trained on train + val for train.refit_epochs = {runs.final.epochs_run} epochs "
              f"({runs.final.examples} examples, {runs.final.seconds:.0f} s); no selection run")  # fmt: skip
    elif cfg.train.refit:
        print(f"refit on train + val for {runs.final.epochs_run} epochs ({runs.final.examples} examples, "
              f"{runs.final.seconds:.0f} s); the early-stopped run is in {result.model_dir}")  # fmt: skip
        selection_dir, result = result.model_dir, runs.final
    _fit_head(cfg, result.model_dir, split, selection_dir, dataset.items)
    print(f"model directory: {result.model_dir}")
    return 0


def _fit_head(cfg: Any, model_dir: Any, split: Any, selection_dir: Any = None, items: Any = None) -> None:
    """Fit and store the ``[item_head]`` the config asks for (nothing when its method is ``"none"``);
    with ``selection_dir`` (``train.refit``) chosen on that run and refitted for ``model_dir``;
    ``items`` (the catalog) gives a content term its vectors."""
    if not cfg.item_head.enabled:
        return
    from recfuse.evaluation.item_head import describe, fit_and_save

    started = time.perf_counter()
    head = fit_and_save(model_dir, split, selection_dir, items)
    refit = ", refitted on train + val" if selection_dir is not None else ""
    print(f"{describe(head, cfg.item_head.select_metric)}{refit} ({time.perf_counter() - started:.0f} s)", flush=True)


def check_prepared(folder: str, train_rows: int) -> None:
    """Raise ConfigError naming ``--prepared`` unless ``folder`` holds the training split's interactions.

    Checked before TensorFlow loads (the manifest only; ``train`` verifies the files' checksums).
    """
    from recfuse.data.prepare import load_manifest
    from recfuse.errors import ArtifactError, ConfigError

    try:
        rows = int(load_manifest(folder, verify=False)["rows"])
    except ArtifactError as err:
        raise ConfigError(f"--prepared {folder!r}: {err}") from err
    if rows != train_rows:
        raise ConfigError(
            f"--prepared {folder!r} holds {rows} usable interactions but the training split has {train_rows}; "
            "run `recfuse prepare` on the training split's interactions"
        )


def _train_on_ray(args: argparse.Namespace, cfg: Any, overrides: dict[str, Any], out: str) -> int:
    import json
    from pathlib import Path

    from recfuse.data.validate import load_dataset

    dataset = load_dataset(cfg.data, cfg.modalities)  # bad data is reported here, before any Ray worker starts
    from recfuse.training.ray_train import train_on_ray

    print(f"training {cfg.variant!r} on Ray Train with {args.workers} workers -> {out}", flush=True)
    model_dir = train_on_ray(args.config, overrides, out, args.workers, address=args.ray_address)
    state = json.loads((Path(model_dir) / "train_state.json").read_text(encoding="utf-8"))
    best = state.get("best_metric")
    metric = "n/a (no validation split)" if best is None else f"{best:.4f}"
    print(f"val Recall@{cfg.train.eval_k}: {metric} (best epoch {state.get('best_epoch')} of {state.get('epoch')})")
    if cfg.item_head.enabled:
        from recfuse.data.splits import split_for

        _fit_head(cfg, model_dir, split_for(dataset.interactions, cfg.data), items=dataset.items)
    print(f"model directory: {model_dir}")
    return 0
