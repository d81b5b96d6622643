"""The ``pcpo`` command line.

Subcommands register themselves through ``add_*_parser(subparsers)`` functions, imported lazily so
``pcpo credit`` does not pay for diffusers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from .errors import ConfigError, PcpoError

# (module, function) pairs that add subcommands.
_SUBCOMMANDS = [
    ("pcpo.cli", "add_credit_parser"),
    ("pcpo.trainer.cli", "add_train_parser"),
    ("pcpo.world.pretrain", "add_pretrain_parser"),
    ("pcpo.world.quality", "add_check_parser"),
    ("pcpo.rewards.server", "add_serve_reward_parser"),
    ("pcpo.eval.cli", "add_eval_parsers"),
    ("pcpo.launch", "add_launch_parser"),
]


def add_credit_parser(sub: argparse._SubParsersAction) -> None:
    from .algo.step import LOSS_WEIGHTS, RATIO_TRANSFORMS
    from .algo.windows import WINDOWS
    from .samplers import SAMPLERS

    p = sub.add_parser(
        "credit",
        help="show a sampler's per-step native weights against PCPO's proportionate credit",
        description="Per step: time t, share of the trajectory dt, the native weight c/s that the "
        "baselines train with, and the PCPO weight zeta*dt/sum(dt); optionally a peer method's per-step "
        "loss weight (--loss-weight) and an SDE window's stochastic and trained steps (--window), over "
        "which both credit schemes are then computed.",
    )
    p.add_argument("--sampler", choices=[n for n in SAMPLERS if SAMPLERS.meta(n)["train"]], required=True)
    p.add_argument("--steps", type=int, required=True, help="number of sampling steps")
    p.add_argument("--eta", type=float, required=True, help="DDIM eta, DanceGRPO eta, Flow-GRPO a or the CPS noise level")
    p.add_argument("--shift", type=float, default=1.0, help="timestep shift s (flow samplers)")
    p.add_argument("--grid", default="linspace", choices=["linspace", "pipeline"],
                   help="flow time grid: shifted linspace, or the stock scheduler's set_timesteps(N) (static shift)")
    p.add_argument("--schedule", default="sd15", help="DDIM training schedule: sd15, sd2, sdxl, linear, cosine")
    p.add_argument("--spacing", default="leading", choices=["leading", "trailing", "linspace"])
    p.add_argument("--w-star", type=float, default=None, help="override PCPO's mean weight w*")
    p.add_argument("--loss-weight", choices=list(LOSS_WEIGHTS), default=None,
                   help="also show a registered per-step loss weight (GRPO-Guard inv_dt, TempFlow-GRPO tempflow)")
    p.add_argument("--loss-weight-options", default=None, metavar="YAML", help="its options, e.g. '{coef: 1.73}'")
    p.add_argument("--ratio-transform", choices=list(RATIO_TRANSFORMS), default=None,
                   help="also show the effective linear weight of a registered log-ratio transform applied to each "
                        "scheme (GRPO-Guard ratio_norm: s*w; flow_grpo_cps: 2 s^2 w)")
    p.add_argument("--ratio-transform-options", default=None, metavar="YAML", help="its options, e.g. '{bias: pair}'")
    p.add_argument("--window", choices=list(WINDOWS), default=None,
                   help="an SDE window (flow samplers): noise and credit on its steps only")
    p.add_argument("--window-options", default=None, metavar="YAML", help="its options, e.g. '{size: 3}'")
    p.add_argument("--iteration", type=int, default=0, help="training iteration the window is drawn at (0-based)")
    p.add_argument("--seed", type=int, default=0, help="seed of randomly placed windows")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="also draw both weight curves")
    p.set_defaults(func=run_credit)


def _yaml_mapping(text: str | None, flag: str) -> dict:
    if text is None:
        return {}
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{flag}: not YAML ({str(e).splitlines()[0]}); give a mapping like '{{size: 3}}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: must be a mapping like '{{size: 3}}', got {text!r}")
    return value


def _add_transformed_weights(table: dict, sampler, name: str, options: dict) -> None:
    """The linear weight a log-ratio transform gives each step: T applied to the log-ratio of a unit linear
    term (``lin = 1``, ``sq = 0``, so ``log rho = -w``), negated; added as ``native_transformed`` and
    ``pcpo_transformed`` to the rows of a table built with ``step_index``."""
    import torch

    from .algo.step import RATIO_TRANSFORMS, RatioInputs, StepTable

    fn, st = RATIO_TRANSFORMS.get(name), StepTable.from_sampler(sampler)
    for row in table["steps"]:
        i = row["step"]
        for key in ("native", "pcpo"):
            w = torch.tensor([row[key]], dtype=torch.float64)
            inp = RatioInputs(torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), w,
                              torch.tensor([i]), st)
            row[f"{key}_transformed"] = float(-fn(-w, inp, **options)[0])


def run_credit(args: argparse.Namespace) -> int:
    import torch

    from .algo.credit import credit_table
    from .algo.windows import window_at
    from .samplers import build_sampler

    kw = {"schedule": args.schedule, "spacing": args.spacing} if args.sampler == "ddim" else {"grid": args.grid}
    sampler = build_sampler(args.sampler, args.steps, args.eta, shift=args.shift, **kw)
    trained = None
    if args.window is not None:
        if not hasattr(sampler, "with_window"):
            raise ConfigError(f"--window: {args.window} needs a flow sampler (flow-sde, dance-sde or cps), "
                              f"not {args.sampler}")
        w = window_at(args.window, args.steps, args.iteration, torch.Generator().manual_seed(args.seed),
                      _yaml_mapping(args.window_options, "--window-options"))
        if not w.sde_steps:
            raise ConfigError(f"--iteration: the {args.window} window is empty at iteration {args.iteration}")
        sampler, trained = sampler.with_window(w.sde_steps), w.trained
    lam = None
    if args.loss_weight is not None:
        from .algo.step import LOSS_WEIGHTS, StepTable

        lam = LOSS_WEIGHTS.get(args.loss_weight)(StepTable.from_sampler(sampler),
                                                 **_yaml_mapping(args.loss_weight_options, "--loss-weight-options"))
        lam = torch.ones(sampler.num_steps, dtype=torch.float64) if lam is None else torch.as_tensor(lam)
    table = credit_table(sampler, w_star=args.w_star, loss_weights=lam, trained=trained,
                         step_index=args.ratio_transform is not None)
    if args.ratio_transform is not None:
        _add_transformed_weights(table, sampler, args.ratio_transform,
                                 _yaml_mapping(args.ratio_transform_options, "--ratio-transform-options"))
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        native = [s["native"] for s in table["steps"]]
        t = Table(title=f"{args.sampler}: {args.steps} steps, eta={args.eta}, shift={args.shift}"
                  + (f", window {args.window}" if args.window else "")
                  + f"; zeta={table['zeta']:.4f}; native max/min={max(native) / min(native):.2f}")
        cols = ["step", "t", "dt", "native w", "pcpo w", "pcpo/native"]
        cols += ["loss weight"] if args.loss_weight else []
        cols += [f"{args.ratio_transform}(native)", f"{args.ratio_transform}(pcpo)"] if args.ratio_transform else []
        cols += ["trained"] if trained is not None else []
        for col in cols:
            t.add_column(col, justify="right")
        for i, s in enumerate(table["steps"]):
            row = [str(s.get("step", i)), f"{s['t']:.4g}", f"{s['dt']:.4g}", f"{s['native']:.4f}", f"{s['pcpo']:.4f}",
                   f"{s['pcpo'] / s['native']:.3f}"]
            row += [f"{s['loss_weight']:.4g}"] if args.loss_weight else []
            row += [f"{s['native_transformed']:.4g}", f"{s['pcpo_transformed']:.4g}"] if args.ratio_transform else []
            row += ["yes" if s["trained"] else "no"] if trained is not None else []
            t.add_row(*row)
        Console(width=110).print(t)
    if args.plot:
        from .figures import plot_credit

        plot_credit(table, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (the usage itself is in ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pcpo", description="RL alignment of text-to-image models: PCPO, DDPO, DanceGRPO, Flow-GRPO.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"pcpo {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line (also PCPO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module, fn in _SUBCOMMANDS:
        mod = sys.modules[__name__] if module == __name__ else importlib.import_module(module)
        getattr(mod, fn)(sub)
    return parser


def _debug(args: argparse.Namespace | None = None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("PCPO_DEBUG", "").strip() not in ("", "0")


def _is_main_rank() -> bool:
    """Under torchrun every process runs main(); only rank 0 reports an error (all exit with its code)."""
    return os.environ.get("RANK", "0") in ("", "0")


def _quiet_libraries() -> None:
    """Keep stderr to pcpo's own lines: the model libraries' import-time notices (e.g. a missing optional
    backend) are not errors of the run. A user's own TRANSFORMERS_VERBOSITY / DIFFUSERS_VERBOSITY wins."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _stdout_gone() -> None:
    """The reader of stdout went away (``pcpo credit --json | head -1``): drop the rest quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def command_names() -> set[str]:
    """The pcpo subcommands (what ``pcpo launch`` may run on each rank)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices) - {"launch"}


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "LOCAL_RANK" in os.environ:
        _end_rank(code)
    return code


def _end_rank(code: int) -> None:
    """A torchrun rank whose command has finished (its process group torn down, its files closed) leaves at once:
    C++ destructors of gloo's and autograd's threads at interpreter exit can abort the process (SIGABRT,
    "terminate called without an active exception"), which the launcher reports as a failed rank after a run
    that succeeded."""
    import logging

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def _main(argv: list[str] | None = None) -> int:
    if not _debug():
        _quiet_libraries()
    argv = sys.argv[1:] if argv is None else list(argv)
    debug_flag = argv[:1] == ["--debug"]
    rest = argv[1:] if debug_flag else argv
    if rest[:1] == ["launch"]:  # torchrun's options are parsed by torchrun's own parser
        from .launch import main as launch

        return launch(rest[1:], command_names(), debug=debug_flag or _debug())
    parser = build_parser()
    args = parser.parse_args(argv)
    command = f"pcpo {args.command}"

    def report(text: str) -> None:
        if _is_main_rank():
            print(f"{command}: {text}", file=sys.stderr, flush=True)

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _stdout_gone()
        return 0
    except KeyboardInterrupt:
        if _debug(args):
            raise
        report("interrupted")
        return 130
    except (PcpoError, ValueError) as e:  # configuration, argument and service errors: one line
        if _debug(args):
            raise
        code = getattr(e, "exit_code", None)  # a training run stopped by a signal: 130 / 143
        if code is None:
            code = 2 if isinstance(e, ValueError) else 1
        report(f"{'error: ' if code in (1, 2) else ''}{_one_line(e)}")
        return code
    except OSError as e:  # a file the user named cannot be read or written
        if _debug(args):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        report(f"error: {where}{e.strerror or _one_line(e)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
