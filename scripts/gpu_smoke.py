#!/usr/bin/env python
"""End-to-end smoke check of one real model family: load, deterministic parity with the stock pipeline,
one training iteration (rollout, reward, update) with pcpo's trainer, timings and peak memory.

    python scripts/gpu_smoke.py --family sd3 --path stabilityai/stable-diffusion-3.5-medium
    python scripts/gpu_smoke.py --family flux --path black-forest-labs/FLUX.1-dev --resolution 512
    python scripts/gpu_smoke.py --family sd --tiny            # CPU-sized random pipeline, no download

Prints one JSON summary line (also written to OUT/smoke.json) and exits non-zero when a check fails:
* parity: the adapter's η = 0 rollout equals the stock pipeline's latents (max |Δ| / max |x| ≤ --tol);
* on-policy: the first update's |log ρ| before any optimizer step ≤ 1e-3 (bf16: rounding only);
* the update changes the trainable weights and every number is finite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PATHS = {
    "sd": "runwayml/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3": "stabilityai/stable-diffusion-3.5-medium",
    "flux": "black-forest-labs/FLUX.1-dev",
}
# (sampler overrides, guidance) = each family's baseline (docs/method.md §6)
BASELINE = {
    "sd": (["sampler.name=ddim", "sampler.eta=1.0"], 5.0),
    "sdxl": (["sampler.name=ddim", "sampler.eta=1.0"], 5.0),
    "sd3": (["sampler.name=flow-sde", "sampler.eta=0.7", "sampler.shift=3.0"], 4.5),
    "flux": (["sampler.name=dance-sde", "sampler.eta=0.3", "sampler.shift=3.0"], 3.5),
}
PROMPTS = ["a photo of a red apple on a wooden table", "a watercolor painting of a lighthouse at dusk"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, choices=sorted(DEFAULT_PATHS))
    p.add_argument("--path", help="hub id or local diffusers directory (default: the family's reference model)")
    p.add_argument("--tiny", action="store_true", help="build a tiny random pipeline (CPU-testable, no weights)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="bf16 / fp16 / fp32 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--resolution", type=int, default=None, help="image side (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 10; tiny 3)")
    p.add_argument("--group", type=int, default=4, help="images per prompt in the training iteration")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA (needs a lot of memory)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--reward", default="jpeg_compressibility", help="registered reward (default: weightless JPEG)")
    p.add_argument("--reward-opt", action="append", default=[], metavar="KEY=VALUE", help="reward option")
    p.add_argument("--objective", default="pcpo", choices=["pcpo", "clipped", "log_hinge"])
    p.add_argument("--tol", type=float, default=None, help="parity tolerance (default 1e-4 fp32, 2e-2 bf16/fp16)")
    p.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    from pcpo.models import load_model
    from pcpo.rewards.server import parse_set
    from pcpo.samplers import DDIMSampler, FlowSampler, sample
    from pcpo.trainer.config import load_config
    from pcpo.trainer.trainer import Trainer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    out = Path(args.out or tempfile.mkdtemp(prefix=f"pcpo-smoke-{args.family}-"))
    summary: dict = {"family": args.family, "device": str(device), "dtype": dtype}
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)

    spec: dict = {"family": args.family, "device": str(device), "dtype": dtype,
                  "gradient_checkpointing": args.gradient_checkpointing}
    if args.tiny:
        from pcpo.models.tiny import TINY_SPEC_DEFAULTS, save_tiny_pipeline

        t0 = time.perf_counter()
        spec["path"] = save_tiny_pipeline(args.family, str(out / "tiny_pipeline"))
        spec.update(TINY_SPEC_DEFAULTS[args.family])
        summary["time_build_tiny_s"] = round(time.perf_counter() - t0, 3)
    else:
        spec["path"] = args.path or DEFAULT_PATHS[args.family]
    if args.resolution:
        spec["resolution"] = args.resolution
    if not args.full:
        spec["lora"] = {"rank": args.lora_rank, "alpha": args.lora_rank}
    steps = args.steps or (3 if args.tiny else 10)
    summary.update(path=spec["path"], steps=steps, lora=not args.full)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # 1. load
    t0 = time.perf_counter()
    adapter = load_model(spec)
    sync()
    summary["time_load_s"] = round(time.perf_counter() - t0, 3)
    summary.update(adapter.describe())

    # 2. deterministic parity with the stock pipeline (the adapter's own components; zero-init LoRA = base)
    sampler_overrides, guidance = BASELINE[args.family]
    if adapter.prediction_type == "flow":
        det = FlowSampler(steps, eta=0.0, grid=adapter.flow_grid(steps))
    else:
        det = DDIMSampler(steps, eta=0.0, **adapter.ddim_schedule())
    prompts = PROMPTS[:1]
    t0 = time.perf_counter()
    x = sample(adapter, det, prompts, guidance, generator=torch.Generator().manual_seed(0))
    sync()
    summary["time_sample_det_s"] = round(time.perf_counter() - t0, 3)
    h, w = adapter.resolution
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, height=h, width=w, output_type="latent",
              generator=torch.Generator().manual_seed(0))
    if args.family in ("sd3", "flux"):
        kw["max_sequence_length"] = adapter.max_sequence_length
    adapter.pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = adapter.pipe(prompts, **kw).images
    sync()
    summary["time_stock_pipeline_s"] = round(time.perf_counter() - t0, 3)
    if args.family == "flux":
        from pcpo.models.flux import unpack_latents

        ref = unpack_latents(ref, x.shape[-2], x.shape[-1])
    rel = float((x - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6))
    tol = args.tol if args.tol is not None else (1e-4 if dtype in ("fp32", "float32") else 2e-2)
    summary["parity_rel_err"] = rel
    ok = {"parity": rel <= tol}

    # 3. one training iteration through the trainer (rollout, reward, update)
    reward_opts = parse_set(args.reward_opt)
    overrides = [
        f"model.family={args.family}", f"device={device}", f"reward.name={args.reward}",
        f"data.prompts={json.dumps(PROMPTS)}", f"data.eval_prompts={json.dumps(PROMPTS[:1])}",
        "data.prompts_per_epoch=2", f"data.group_size={args.group}", "epochs=1", "eval.every=0",
        "eval.images_per_prompt=1", "eval.gold=false", "log.progress=false", "log.tensorboard=false",
        f"sampler.steps={steps}", f"sampler.guidance_scale={guidance}", f"sampler.rollout_batch={2 * args.group}",
        f"train.objective={args.objective}", "train.lr=1e-4", f"train.micro_batch={2 * args.group}",
        "train.minibatch_size=0", "train.advantage=group",
        *sampler_overrides,
    ]
    cfg = load_config(None, overrides)
    cfg.reward.options = reward_opts
    before = {k: v.detach().float().cpu().clone() for k, v in adapter.trainable_state_dict().items()}
    trainer = Trainer(cfg, out / "run", adapter=adapter)
    t0 = time.perf_counter()
    metrics = trainer.train()
    sync()
    summary["time_train_total_s"] = round(time.perf_counter() - t0, 3)
    rec = [m for m in metrics if m.get("epoch") == 1 and "loss" in m][-1]
    for k in ("time_rollout_s", "time_reward_s", "time_update_s", "reward_mean", "loss", "clipfrac",
              "log_ratio_before_update_max", "grad_norm", "trained_pairs"):
        summary[k] = rec.get(k)
    after = adapter.trainable_state_dict()
    moved = max(float((after[k].detach().float().cpu() - before[k]).abs().max()) for k in before)
    summary["weights_moved_max"] = moved
    ok["on_policy"] = rec.get("log_ratio_before_update_max") is not None and rec["log_ratio_before_update_max"] <= 1e-3
    ok["updated"] = moved > 0 and bool(torch.isfinite(torch.tensor(float(rec["loss"]))))
    if device.type == "cuda":
        summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    summary["checks"] = ok
    summary["ok"] = all(ok.values())
    line = json.dumps(summary)
    (out / "smoke.json").write_text(line + "\n")
    print(line, flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
