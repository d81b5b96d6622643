"""The quality bar of a toy model: prompt accuracy of its samples under the world's classifier.

The bar the shipped toy models were trained to, and what ``pcpo pretrain-toy`` reports after training: 64 samples (each of the 32 prompts
twice), 20 deterministic sampler steps (flow ODE / DDIM eta=0), classifier-free guidance 4, noise seed 0;
the model passes at prompt accuracy >= 0.85. ``pcpo check-toy`` runs the same check on any model folder,
over several seeds if asked, and can save the samples as a grid to look at.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from pcpo.world import data

#: the settings of the quality bar (tests/test_toy_models.py asserts it on the shipped weights)
BAR = dict(n=64, steps=20, guidance_scale=4.0, min_accuracy=0.85)


def _sampler(adapter, steps: int):
    from pcpo.samplers import DDIMSampler, FlowSampler

    if adapter.prediction_type == "flow":
        return FlowSampler(num_steps=steps, eta=0.0)
    return DDIMSampler(num_steps=steps, eta=0.0, **adapter.ddim_schedule())


def sample_images(adapter, seed: int = 0, n: int = BAR["n"], steps: int = BAR["steps"],
                  guidance_scale: float = BAR["guidance_scale"]) -> tuple[torch.Tensor, list[str]]:
    """``n`` images in [0, 1] for the prompts 0, 1, ..., 31, 0, 1, ... from noise seed ``seed``."""
    from pcpo.samplers import generate

    prompts = [data.PROMPTS[i % len(data.PROMPTS)] for i in range(n)]
    x = adapter.initial_noise(n, generator=torch.Generator().manual_seed(seed))
    return generate(adapter, _sampler(adapter, steps), prompts, guidance_scale, x, batch=n), prompts


def toy_quality(adapter, seeds: Sequence[int] = (0,), n: int = BAR["n"], steps: int = BAR["steps"],
                guidance_scale: float = BAR["guidance_scale"], keep_first: list | None = None) -> dict:
    """Prompt, colour and shape accuracy per noise seed and their means over ``seeds``.

    ``keep_first``: a list that receives the first seed's images (e.g. for a grid), so they are not sampled
    twice.
    """
    from pcpo.world.metrics import prompt_accuracy

    if not seeds:
        raise ValueError("seeds: give at least one noise seed, e.g. seeds=(0,)")
    per_seed = {}
    for s in seeds:
        images, prompts = sample_images(adapter, s, n, steps, guidance_scale)
        if keep_first is not None and not per_seed:
            keep_first.append(images)
        per_seed[str(s)] = {k: round(v, 4) for k, v in prompt_accuracy(images, prompts).items()}
    keys = next(iter(per_seed.values())).keys()
    mean = {k: round(sum(r[k] for r in per_seed.values()) / len(per_seed), 4) for k in keys}
    return dict(n=n, steps=steps, guidance_scale=guidance_scale, per_seed=per_seed, mean=mean)


def _seeds(text: str) -> list[int]:
    """``--seeds``: a count N (seeds 0..N-1) or a list / ranges, as ``pcpo bench --seeds``."""
    from pcpo.seeds import seeds_arg

    value = seeds_arg(text)
    return list(range(value)) if isinstance(value, int) else value


def add_check_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``pcpo check-toy``."""
    p = sub.add_parser(
        "check-toy",
        help="prompt accuracy of a toy model's samples (the >= 0.85 quality bar), optionally a grid",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", choices=("flow", "ddpm"), required=True)
    p.add_argument("--path", type=Path, default=None, help="model folder (default: the shipped weights)")
    p.add_argument("--seeds", type=_seeds, default=[0],
                   help="noise seeds: a count N (seeds 0..N-1), or a list and/or ranges: 0,3,7 or 0-4 or 0-2,9 "
                   "(default 1: seed 0)")
    p.add_argument("--n", type=int, default=BAR["n"], help="samples per seed")
    p.add_argument("--steps", type=int, default=BAR["steps"])
    p.add_argument("--cfg", type=float, default=BAR["guidance_scale"], help="classifier-free guidance scale")
    p.add_argument("--min-accuracy", type=float, default=BAR["min_accuracy"],
                   help="exit with status 1 if the mean prompt accuracy is below this")
    p.add_argument("--grid", type=Path, default=None, metavar="FILE.png", help="save the first seed's samples (at most 64)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE.json", help="also write the result here")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from pcpo.models.toy import load_toy_model

    if args.n < 1:
        raise ValueError(f"--n: got {args.n}; give a positive number of samples")
    if args.threads:
        torch.set_num_threads(args.threads)
    adapter = load_toy_model(f"toy-{args.model}", path=args.path)
    first: list = []
    res = toy_quality(adapter, args.seeds, args.n, args.steps, args.cfg, keep_first=first)
    for s, r in res["per_seed"].items():
        print(f"seed {s}: prompt {r['prompt_accuracy']:.3f}  colour {r['color_accuracy']:.3f}  "
              f"shape {r['shape_accuracy']:.3f}")
    m = res["mean"]["prompt_accuracy"]
    ok = m >= args.min_accuracy
    print(f"toy-{args.model}: mean prompt accuracy {m:.3f} over {len(res['per_seed'])} seed(s) "
          f"({'passes' if ok else 'BELOW'} the {args.min_accuracy} bar)")
    if args.grid is not None:
        from pcpo.figures import save_grid

        save_grid(first[0][:64], args.grid, nrow=8)
        print(f"grid: {args.grid}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return 0 if ok else 1
