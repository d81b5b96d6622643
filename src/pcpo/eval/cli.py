"""Subcommands ``pcpo eval``, ``pcpo sample``, ``pcpo report`` and ``pcpo bench``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a trained run against its base model on held-out prompts",
        description="Samples the held-out prompts with the deterministic sampler (flow ODE / DDIM eta=0) from a "
        "fixed seed, for the trained model and its base model, and reports the reward and (embedded world) the "
        "gold metrics: prompt accuracy, Frechet distance to real images and to the base model's samples, "
        "per-prompt diversity.")
    p.add_argument("run", metavar="RUN_DIR|CHECKPOINT", help="run directory (final weights, else newest checkpoint) "
                   "or RUN_DIR/checkpoints/epoch-XXXXXX")
    p.add_argument("--prompts", default=None, help="world:heldout (default: the run's eval prompts), world:all, a file")
    p.add_argument("--images-per-prompt", type=int, default=None, help="default: the run's eval.images_per_prompt")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the run's eval.seed)")
    p.add_argument("--steps", type=int, default=None, help="deterministic sampler steps (default: the run's)")
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.add_argument("--out", default=None, help="JSON file (default RUN_DIR/eval.json)")
    p.add_argument("--grid", default=None, metavar="FILE.png", help="also save base and trained samples as a grid")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_eval)

    p = sub.add_parser(
        "sample", help="image grid from a base model, a trained run, or Implicit Reward Guidance of runs",
        description="IRG: p = p_ref + sum_k g_k (p_k - p_ref); g<1 interpolates towards the base, g>1 "
        "extrapolates. `--run A --run B --guidance-scale 0.5 --guidance-scale 1.5` composes two runs.")
    p.add_argument("--run", action="append", default=[], metavar="RUN_DIR|CHECKPOINT", help="trained run (repeatable)")
    p.add_argument("--model", default=None, metavar="FAMILY", help="sample a base model instead (e.g. toy-flow)")
    p.add_argument("--guidance-scale", action="append", default=[], type=float, metavar="GAMMA",
                   help="IRG scale per --run (one value applies to all; default 1 = the trained model)")
    p.add_argument("--sweep", default=None, metavar="G1,G2,...", help="one block of columns per IRG scale (one --run)")
    p.add_argument("--prompts", default=None, help="world:heldout, world:all, a file (default: the run's eval prompts)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the run's)")
    p.add_argument("--steps", type=int, default=None, help="deterministic sampler steps")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--reward", default=None, help="also print this registered reward's mean")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run_sample)

    p = sub.add_parser("report", help="self-contained HTML report of a run (curves, heat maps, credit, images)")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    p.set_defaults(func=run_report)

    p = sub.add_parser(
        "bench", help="framework x objective x seed benchmark: epochs to target, fidelity, clipping",
        description="Runs every (framework, objective, seed) with the framework's shipped config (only seed, "
        "epochs and the run directory overridden, plus the bench file's `set` list), then writes results.md, "
        "results.json and plots into --out.")
    from .bench import add_bench_arguments

    add_bench_arguments(p)
    p.set_defaults(func=_run_bench)


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run, print_table
    from .runs import resolve_run

    ref = resolve_run(args.run)
    res = evaluate_run(ref, prompts_spec=args.prompts, images_per_prompt=args.images_per_prompt, seed=args.seed,
                       device=args.device, steps=args.steps, with_base=not args.no_base)
    images = res.pop("_images")
    out = Path(args.out) if args.out else ref.run_dir / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print_table(res)
    if args.grid:
        import torch

        from ..figures import save_grid

        order = [m for m in ("base", "trained") if m in images]
        labels = [f"{m}: {p}" for m in order for p in res["prompts"]]
        save_grid(torch.cat([images[m] for m in order]), args.grid, nrow=res["images_per_prompt"], labels=labels)
    print(f"wrote {out}", flush=True)
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from .sample import run_sample

    return run_sample(args)


def run_report(args: argparse.Namespace) -> int:
    from .report import write_report

    run = Path(args.run)
    if not run.is_dir():
        raise ValueError(f"{run}: no such run directory")
    out = write_report(run, args.out)
    print(f"wrote {out}", flush=True)
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)
