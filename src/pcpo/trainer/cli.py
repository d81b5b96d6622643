"""``pcpo train``: run (or resume) a training job."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with DDPO, DanceGRPO, Flow-GRPO or PCPO",
        description="With no CONFIG, runs the embedded default: the tiny flow model, PCPO, a prompt-alignment "
        "reward, a few minutes on 2 CPU cores. CONFIG is a YAML file or a shipped config name "
        "(e.g. flowgrpo-pcpo, ddpo, dancegrpo-loghinge). Launch multi-process runs with `torchrun --nproc_per_node N "
        "-m pcpo.cli train ...`.",
    )
    p.add_argument("config", nargs="?", default=None, help="YAML file or shipped config name (default: default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--out", default=None, help="run directory (must not exist; default runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run_train)


def _say(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(msg, flush=True)


def run_train(args: argparse.Namespace) -> int:
    import yaml

    from .config import load_config, to_dict
    from .trainer import Trainer

    if args.resume:
        if args.config or args.out:
            raise ValueError("--resume: give only the run directory (its config.yaml is used); "
                             "change values with --set")
        trainer = Trainer.resume(args.resume, overrides=args.overrides)
        _say(f"resuming {args.resume} after epoch {trainer.start_epoch}")
        trainer.train()
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    out = args.out or str(Path("runs") / f"{Path(args.config or 'default').stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    trainer = Trainer(cfg, out)
    _say(f"run directory: {out}")
    trainer.train()
    _say(f"done: {out} (metrics.jsonl, curves.png, images/, tb/, checkpoints/)")
    return 0
