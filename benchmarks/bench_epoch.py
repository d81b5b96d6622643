"""Time per epoch of a training config against the pure model cost and a one-forward-per-timestep update.

    python benchmarks/bench_epoch.py [--config default] [--epochs 4] [--out benchmarks/results/epoch_cost.json]

Three numbers, all on the same machine and adapter:

1. **trainer**: wall time of ``Trainer.train_epoch`` (rollout + reward + advantages + update), mean over
   epochs 2..E (epoch 1 warms up).
2. **pure model cost**: the same forward passes the epoch makes (rollout: steps × rollout chunks, no grad,
   CFG included) and the same forward+backward passes of the update (one per micro-batch, same row counts),
   plus one optimizer step per minibatch, with nothing around them. trainer / pure = the loop's overhead.
3. **one forward per timestep**: the trainer with ``train.micro_batch`` = trajectories per minibatch, so the
   update makes one forward per (minibatch, timestep) like ddpo-pytorch, DanceGRPO and Flow-GRPO.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pcpo.models.base import cond_select
from pcpo.trainer.config import load_config
from pcpo.trainer.trainer import Trainer


def run_trainer(config: str, overrides: list[str], epochs: int) -> tuple[list[dict], Trainer]:
    cfg = load_config(config, overrides + [f"epochs={epochs}", "eval.every=0", "log.progress=false",
                                           "log.tensorboard=false", "eval.gold=false"])
    tr = Trainer(cfg, Path(tempfile.mkdtemp()) / "run")
    records = [tr.train_epoch(e) for e in range(1, epochs + 1)]
    return records, tr


def pure_cost(tr: Trainer, record: dict, repeats: int) -> float:
    """Seconds for the epoch's model work alone (see module doc)."""
    cfg = tr.cfg
    ad, sampler = tr.adapter, tr.sampler
    n_local = cfg.data.prompts_per_epoch * cfg.data.group_size
    prompts = [tr.train_prompts[i % len(tr.train_prompts)] for i in range(n_local)]
    cond = ad.encode_prompts(prompts)
    x = ad.initial_noise(n_local)
    gs = cfg.sampler.guidance_scale
    rb = cfg.sampler.rollout_batch
    pairs = record["trained_pairs"]
    mb = cfg.train.minibatch_size or n_local
    n_minibatches = cfg.train.inner_epochs * (n_local // mb)
    pairs_per_mb = pairs // n_minibatches
    micro = cfg.train.micro_batch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for s0 in range(0, n_local, rb):
                idx = torch.arange(s0, min(n_local, s0 + rb))
                c = cond_select(cond, idx)
                for i in range(sampler.num_steps):
                    ad.predict(x[idx], sampler.model_time(i, len(idx)), c, gs)
        for _m in range(n_minibatches):
            tr.optimizer.zero_grad(set_to_none=True)
            for c0 in range(0, pairs_per_mb, micro):
                rows = min(micro, pairs_per_mb - c0)
                idx = torch.arange(rows) % n_local
                t = sampler.timesteps[torch.arange(rows) % sampler.num_steps]
                out = ad.predict(x[idx], t, cond_select(cond, idx), gs)
                out.float().square().mean().backward()
            tr.optimizer.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="default")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/results/epoch_cost.json")
    args = ap.parse_args(argv)

    batched, tr = run_trainer(args.config, args.overrides, args.epochs)
    steady = batched[1:] or batched
    t_batched = statistics.mean(r["time_s"] for r in steady)
    t_pure = pure_cost(tr, steady[-1], repeats=max(2, args.epochs - 1))

    cfg = tr.cfg
    mb = cfg.train.minibatch_size or cfg.data.prompts_per_epoch * cfg.data.group_size
    per_step, _ = run_trainer(args.config, args.overrides + [f"train.micro_batch={mb}"], args.epochs)
    steady_ps = per_step[1:] or per_step
    t_per_step = statistics.mean(r["time_s"] for r in steady_ps)

    result = {
        "config": args.config,
        "overrides": args.overrides,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "device": str(tr.device),
        "trajectories_per_epoch": cfg.data.prompts_per_epoch * cfg.data.group_size,
        "sampler_steps": cfg.sampler.steps,
        "trained_pairs_per_epoch": steady[-1]["trained_pairs"],
        "batched": {
            "micro_batch": cfg.train.micro_batch,
            "epoch_s": t_batched,
            "update_forwards": steady[-1]["forward_passes"],
            "rollout_s": statistics.mean(r["time_rollout_s"] for r in steady),
            "update_s": statistics.mean(r["time_update_s"] for r in steady),
        },
        "pure_model_s": t_pure,
        "one_forward_per_timestep": {
            "micro_batch": mb,
            "epoch_s": t_per_step,
            "update_forwards": steady_ps[-1]["forward_passes"],
            "update_s": statistics.mean(r["time_update_s"] for r in steady_ps),
        },
        "ratios": {
            "trainer_over_pure": t_batched / t_pure,
            "per_timestep_over_batched_epoch": t_per_step / t_batched,
            "per_timestep_over_batched_update": statistics.mean(r["time_update_s"] for r in steady_ps)
            / statistics.mean(r["time_update_s"] for r in steady),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
