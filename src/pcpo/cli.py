"""The ``pcpo`` command line.

Subcommands register themselves through ``add_*_parser(subparsers)`` functions, imported lazily so
``pcpo credit`` does not pay for diffusers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from .errors import PcpoError

# (module, function) pairs that add subcommands.
_SUBCOMMANDS = [
    ("pcpo.cli", "add_credit_parser"),
    ("pcpo.trainer.cli", "add_train_parser"),
    ("pcpo.world.pretrain", "add_pretrain_parser"),
    ("pcpo.world.quality", "add_check_parser"),
    ("pcpo.rewards.server", "add_serve_reward_parser"),
    ("pcpo.eval.cli", "add_eval_parsers"),
]


def add_credit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "credit",
        help="show a sampler's per-step native weights against PCPO's proportionate credit",
        description="Per step: time t, share of the trajectory dt, the native weight c/s that the "
        "baselines train with, and the PCPO weight zeta*dt/sum(dt).",
    )
    p.add_argument("--sampler", choices=["ddim", "dance-sde", "flow-sde"], required=True)
    p.add_argument("--steps", type=int, required=True, help="number of sampling steps")
    p.add_argument("--eta", type=float, required=True, help="DDIM eta, DanceGRPO eta or Flow-GRPO a")
    p.add_argument("--shift", type=float, default=1.0, help="timestep shift s (flow samplers)")
    p.add_argument("--schedule", default="sd15", help="DDIM training schedule: sd15, sd2, sdxl, linear, cosine")
    p.add_argument("--spacing", default="leading", choices=["leading", "trailing", "linspace"])
    p.add_argument("--w-star", type=float, default=None, help="override PCPO's mean weight w*")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="also draw both weight curves")
    p.set_defaults(func=run_credit)


def run_credit(args: argparse.Namespace) -> int:
    from .algo.credit import credit_table
    from .samplers import build_sampler

    kw = {"schedule": args.schedule, "spacing": args.spacing} if args.sampler == "ddim" else {}
    sampler = build_sampler(args.sampler, args.steps, args.eta, shift=args.shift, **kw)
    table = credit_table(sampler, w_star=args.w_star)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        native = [s["native"] for s in table["steps"]]
        t = Table(title=f"{args.sampler}: {args.steps} steps, eta={args.eta}, shift={args.shift}; "
                  f"zeta={table['zeta']:.4f}; native max/min={max(native) / min(native):.2f}")
        for col in ("step", "t", "dt", "native w", "pcpo w", "pcpo/native"):
            t.add_column(col, justify="right")
        for i, s in enumerate(table["steps"]):
            t.add_row(str(i), f"{s['t']:.4g}", f"{s['dt']:.4g}", f"{s['native']:.4f}", f"{s['pcpo']:.4f}",
                      f"{s['pcpo'] / s['native']:.3f}")
        Console(width=100).print(t)
    if args.plot:
        from .figures import plot_credit

        plot_credit(table, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcpo", description="RL alignment of text-to-image models: PCPO, DDPO, DanceGRPO, Flow-GRPO.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"pcpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module, fn in _SUBCOMMANDS:
        mod = sys.modules[__name__] if module == __name__ else importlib.import_module(module)
        getattr(mod, fn)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, PcpoError) as e:  # configuration, argument and service errors: one line
        code = getattr(e, "exit_code", 2)  # a training run stopped by a signal: 130 / 143
        print(f"pcpo {args.command}: {'error: ' if code == 2 else ''}{e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"pcpo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
