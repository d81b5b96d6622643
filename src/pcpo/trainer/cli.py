"""``pcpo train``: run (or resume) a training job."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def _shipped_configs() -> str:
    from .config import CONFIG_DIR

    names = sorted(str(f.relative_to(CONFIG_DIR).with_suffix("")) for f in CONFIG_DIR.rglob("*.yaml"))
    return ", ".join(sorted(names, key=lambda n: ("/" in n, n != "default", n)))


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with DDPO, DanceGRPO, Flow-GRPO or PCPO",
        description="With no CONFIG, runs the embedded default: the tiny flow model, PCPO, a prompt-alignment "
        "reward, a few minutes on 2 CPU cores. CONFIG is a YAML file or a shipped config name; shipped: "
        f"{_shipped_configs()}. Everything is checked before the run directory is created, and a run that "
        "fails before its first epoch leaves none behind. Launch multi-process runs with `pcpo launch "
        "--nproc-per-node N train ...` (torchrun's launcher, one-line errors) or `torchrun --nproc_per_node N -m "
        "pcpo.cli train ...`.",
    )
    p.add_argument("config", nargs="?", default=None, help="YAML file or shipped config name (default: default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--out", default=None, help="run directory (new or empty; default runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (each field's help as a comment) and exit")
    p.add_argument("--comments", action=argparse.BooleanOptionalAction, default=True,
                   help="with --print-config: the help comments (--no-comments: plain YAML)")
    p.set_defaults(func=run_train)


def config_yaml(cfg, comments: bool = True) -> str:
    """The config as YAML that loads back to the same config; with ``comments``, each field's help (from
    its metadata) as a trailing comment and each section's as a comment on its line."""
    import dataclasses

    import yaml

    from .config import to_dict

    if not comments:
        return yaml.safe_dump(to_dict(cfg), sort_keys=False)

    def scalar(v) -> str:
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, (dict, list)) and not v:
            return "{}" if isinstance(v, dict) else "[]"
        text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
        return text.removesuffix("\n...").removesuffix("...").strip()

    def emit(obj, indent: str, lines: list[str]) -> None:
        for f in dataclasses.fields(obj):
            value, help_ = getattr(obj, f.name), " ".join(str(f.metadata.get("help", "")).split())
            note = f"  # {help_}" if help_ else ""
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:{note}")
                emit(value, indent + "  ", lines)
            else:
                lines.append(f"{indent}{f.name}: {scalar(value)}{note}")

    lines: list[str] = []
    emit(cfg, "", lines)
    return "\n".join(lines) + "\n"


def _say(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(msg, flush=True)


def run_train(args: argparse.Namespace) -> int:
    from ..run import discard_unstarted_run, preflight
    from .config import load_config
    from .trainer import Trainer

    if args.resume:
        if args.config or args.out:
            raise ValueError("--resume: give only the run directory (its config.yaml is used); "
                             "change values with --set")
        trainer = Trainer.resume(args.resume, overrides=args.overrides)
        _say(f"resuming {args.resume} after epoch {trainer.start_epoch}")
        trainer.train()
        trainer.dist.shutdown()
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(config_yaml(cfg, comments=args.comments), end="")
        return 0
    name = Path(args.config or "default").stem
    out = args.out or str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    preflight(cfg, out)  # the cheap checks first: run directory, device, loggers
    trainer = None
    try:
        trainer = Trainer(cfg, out)  # model, reward (and its health check), then the run directory
        _say(f"run directory: {out}")
        trainer.train()
    except BaseException:
        if trainer is not None and trainer.dist.is_main and discard_unstarted_run(
                out, trainer.created_run_dir, trainer.emptied_run_dir):
            _say(f"removed {out}: the run failed before its first epoch")
        raise
    trainer.dist.shutdown()  # tear the process group down before exit (gloo's threads otherwise race the exit)
    _say(f"done: {out} (metrics.jsonl, curves.png, images/, tb/, checkpoints/)")
    return 0
