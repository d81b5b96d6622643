"""Pretraining of the two embedded toy text-to-image models (``pcpo pretrain-toy``).

* ``--model flow`` (toy-flow): rectified flow ``x_t = (1 - t) x0 + t ε``, target ``v = ε - x0``,
  ``t ~ logit-normal(0, 1)``, network timestep ``1000 t`` (SD3's training recipe at toy scale).
* ``--model ddpm`` (toy-ddpm): ε-prediction on SD1.5's DDPM "scaled_linear" schedule
  (β 0.00085 -> 0.012, 1000 steps), ``t ~ U{0..999}``, network timestep = ``t``; sampled with DDIM.

Both: the pixel-space MMDiT + tiny CLIP text encoder of :mod:`pcpo.world.nets`, trained jointly on the
procedural world (:mod:`pcpo.world.data`, all 32 prompts), AdamW lr 1e-3 with 200 warm-up steps, batch 64,
gradient clipping 1, EMA 0.999, 10 % prompt dropout to ``""`` (for classifier-free guidance). Everything
random comes from ``--seed`` (model init, data, noise, times, dropout), so a run is reproducible on the
same software and CPU. Output: ``model.safetensors`` (fp16 EMA weights, prefixes ``transformer.`` and
``text_encoder.``) and ``config.json`` (architecture, schedule, training record) in ``--out``.

``pcpo pretrain-toy --model flow`` (``--recipe shipped``, the default) replays the stages that made the
shipped weights (:data:`SHIPPED_RECIPE`): stage 1 = the recipe above for 3632 (flow) / 3766 (ddpm) steps,
seed 0; stage 2 = from stage 1, seed 1, batch 128, lr decayed linearly to 0 over 3000 steps; toy-ddpm only,
stage 3 = from stage 2, seed 3, 1500 steps at lr 3e-4 (50 warm-up, linear decay, EMA 0.995) with the ε loss
weighted by min-SNR-1 (``w = min(SNR, 1)/SNR``: the near-noiseless steps, which a patch-4 transformer spends
its capacity copying noise on, stop dominating; shape accuracy 0.70 -> 0.875). Stages 1-2 ran on one H100
(``--device cuda``, ~3.3 + 2.9 min per model), stage 3 on the 2-core CPU (32 min, 1 thread). Measured on
2 idle CPU cores (2 threads): 0.72 s per step at batch 64 and 1.35 s at batch 128, so replaying the whole
recipe on a CPU takes ~1.9 h (flow) / ~2.2 h (ddpm). The from-scratch CPU replay of toy-flow (2 threads,
partly beside other jobs) took 3881 s + 5005 s and scored prompt accuracy 1.00 over seeds 0-4 (stage 1
alone: 0.80). ``--recipe single`` runs one stage as set by the
options.

``--checkpoint DIR`` keeps a resumable checkpoint (weights, EMA, AdamW state, RNG states, step, losses;
safetensors + ``state.json``, written atomically) there every ``--checkpoint-every`` steps; ``--resume``
continues from it exactly, so a killed run, or one cut by ``--minutes``, goes on where it stopped. With
``--recipe shipped`` each stage keeps its own checkpoint (``DIR/stage1``, ...) and ``--resume`` skips the
finished stages, so a multi-hour CPU replay can be spread over several sessions. After training the
command checks the written weights against the quality bar (:mod:`pcpo.world.quality`, ``--no-check``
to skip) and records the result in ``config.json`` as ``training.quality``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from pcpo.world import data, nets
from pcpo.world.tokenizer import MAX_LENGTH, tokenize

ASSETS_MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"
DEFAULT_STEPS = {"flow": 4000, "ddpm": 4000}
#: the stages that produced the shipped weights (stages 1-2 on one H100, each stage 1 cut by a time limit;
#: toy-ddpm's stage 3 on the 2-core CPU); ``--recipe shipped`` replays them with these exact settings
SHIPPED_RECIPE = {
    "flow": [dict(steps=3632, seed=0), dict(steps=3000, seed=1, batch_size=128, lr_decay="linear")],
    "ddpm": [
        dict(steps=3766, seed=0),
        dict(steps=3000, seed=1, batch_size=128, lr_decay="linear"),
        # stage 3 (run on 2 CPU cores, 1 thread, 32 min): min-SNR-1 weighting, shapes 0.70 -> 0.875 accuracy
        dict(
            steps=1500,
            seed=3,
            lr=3e-4,
            warmup=50,
            ema_decay=0.995,
            lr_decay="linear",
            loss_weight="min-snr-1",
        ),
    ],
}
DDPM_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


def add_pretrain_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``pcpo pretrain-toy`` (shared by the CLI and ``python -m pcpo.world.pretrain``)."""
    p.add_argument("--model", choices=("flow", "ddpm"), required=True, help="which toy model to train")
    p.add_argument(
        "--recipe",
        choices=("shipped", "single"),
        default="shipped",
        help="shipped: replay the stages behind the shipped weights (stage 1: batch 64, constant lr; "
        "stage 2: from stage 1, batch 128, linear decay; ddpm stage 3: min-SNR-1); single: one run "
        "set by --steps/--init/... (default steps 4000)",
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 4000)")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop after this wall time even if steps remain (resumable with --checkpoint/--resume)",
    )
    p.add_argument(
        "--out", type=Path, default=None,
        help="output folder for model.safetensors + config.json (required unless --into-package)",
    )
    p.add_argument(
        "--into-package",
        action="store_true",
        help="write into the installed package's shipped weights (pcpo/assets/models/toy-MODEL), "
        "which every toy run then uses; needs --force as they exist",
    )
    p.add_argument(
        "--force", action="store_true", help="replace a folder that already holds a toy model"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--checkpoint", type=Path, default=None, help="folder for a resumable checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint (shipped recipe: the finished stages are skipped)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip the quality check after training (prompt accuracy of 64 samples, as pcpo check-toy)",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from the weights of a toy model folder (model.safetensors + config.json); "
        "fresh AdamW with warm-up (a second training stage)",
    )
    p.add_argument(
        "--lr-decay",
        choices=("none", "linear"),
        default="none",
        help="after warm-up: constant lr (none) or linear decay to 0 at --steps",
    )
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument(
        "--loss-weight",
        type=_loss_weight_arg,
        default="none",
        help="ddpm only: none, or min-snr-G = min-SNR-γ weighting (Hang et al. 2023) of the ε loss, "
        "w = min(SNR, γ)/SNR (e.g. min-snr-5)",
    )
    return p


def _loss_weight_arg(value: str) -> str:
    """Validate ``--loss-weight``: ``none`` or ``min-snr-<γ>`` with γ > 0."""
    if value == "none":
        return value
    m = re.fullmatch(r"min-snr-([0-9]*\.?[0-9]+)", value)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: use 'none' or 'min-snr-G' with G > 0, e.g. min-snr-5")
    return value


def _lr_lambda(warmup: int, total: int, decay: str):
    def f(step: int) -> float:
        w = min(1.0, (step + 1) / warmup)
        if decay == "linear" and step >= warmup:
            return max(0.0, (total - step) / max(1, total - warmup))
        return w

    return f


def checkpoint_dir(checkpoint: Path, model: str) -> Path:
    """The folder of the resumable checkpoint of toy model ``model`` under ``--checkpoint``."""
    return Path(checkpoint) / f"toy-{model}-checkpoint"


def _save_pretrain_checkpoint(ckpt_dir, model, transformer, text_encoder, opt, sched, ema, gen, step, losses,
                              elapsed) -> None:
    """Everything an exact resume needs, as safetensors + ``state.json``, written atomically."""
    from pcpo.checkpoint import optimizer_to_flat, write_state_dir

    weights = nets.join_state(transformer, text_encoder)
    weights.update({f"ema.{i}": e for i, e in enumerate(ema)})
    opt_tensors, opt_meta = optimizer_to_flat(opt)
    rng = {"generator": gen.get_state(), "torch_cpu": torch.get_rng_state()}
    payload = dict(model=model, step=step, losses=losses, elapsed=elapsed, optimizer=opt_meta,
                   scheduler=sched.state_dict())
    write_state_dir(ckpt_dir, {"model": weights, "optimizer": opt_tensors, "rng": rng}, payload)


def _load_pretrain_checkpoint(ckpt_dir, model, transformer, text_encoder, opt, sched, ema, gen, dev):
    import sys

    from safetensors.torch import load_file

    from pcpo.checkpoint import clean_stale_dir, optimizer_from_flat, verify_checkpoint

    for line in clean_stale_dir(ckpt_dir.parent):  # what a killed writer left beside the checkpoint
        print(f"pcpo pretrain: {line}", file=sys.stderr)
    verify_checkpoint(ckpt_dir)  # sizes and SHA-256 against its manifest: CheckpointError names a bad file
    payload = json.loads((ckpt_dir / "state.json").read_text())
    if payload.get("model") != model:
        raise ValueError(f"--resume: {ckpt_dir} holds a toy-{payload.get('model')} run, not toy-{model}")
    w = load_file(str(ckpt_dir / "model.safetensors"), device=str(dev))
    tr, te = nets.split_state(w)
    transformer.load_state_dict(tr)
    text_encoder.load_state_dict(te)
    for i, e in enumerate(ema):
        e.copy_(w[f"ema.{i}"])
    opt.load_state_dict(
        optimizer_from_flat(load_file(str(ckpt_dir / "optimizer.safetensors"), device=str(dev)), payload["optimizer"])
    )
    sched.load_state_dict(payload["scheduler"])
    rng = load_file(str(ckpt_dir / "rng.safetensors"))
    gen.set_state(rng["generator"])
    torch.set_rng_state(rng["torch_cpu"])
    return int(payload["step"]), list(payload["losses"]), float(payload["elapsed"])


def pretrain(
    model: str,
    steps: int | None = None,
    minutes: float | None = None,
    out: Path | None = None,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    threads: int = 2,
    checkpoint: Path | None = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    device: str = "cpu",
    warmup: int = 200,
    ema_decay: float = 0.999,
    dropout: float = 0.1,
    progress: bool = True,
    init: Path | None = None,
    lr_decay: str = "none",
    loss_weight: str = "none",
    rebuild: str | None = None,
    deadline: float | None = None,
) -> dict:
    """Train toy model ``model`` ("flow" or "ddpm"); write weights + config to ``out``; return the record."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if model not in ("flow", "ddpm"):
        raise ValueError(f"model: {model!r} is not a toy model; use 'flow' or 'ddpm'")
    steps = int(steps or DEFAULT_STEPS[model])
    try:
        _loss_weight_arg(loss_weight)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"loss_weight: {e}") from None
    gamma = float(loss_weight.rsplit("-", 1)[1]) if loss_weight != "none" else None
    out = Path(out) if out is not None else ASSETS_MODELS / f"toy-{model}"
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)

    torch.manual_seed(seed)
    init_record = None
    if init is not None:
        from pcpo.models.toy import load_toy_weights

        transformer, text_encoder, init_cfg = load_toy_weights(f"toy-{model}", init)
        transformer.to(dev).train()
        text_encoder.to(dev).train()
        init_record = init_cfg.get("training")
    else:
        transformer = nets.build_transformer().to(dev)
        text_encoder = nets.build_text_encoder().to(dev)
    params = [p for m in (transformer, text_encoder) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, steps, lr_decay))
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed + 1)

    # token ids of the 32 prompts and of "" (row 32), computed once
    all_ids = tokenize(list(data.PROMPTS) + [""]).to(dev)
    alphas_cumprod = nets.scaled_linear_alphas_cumprod(**DDPM_SCHEDULE).float().to(dev)

    step, losses, elapsed_before = 0, [], 0.0
    ckpt_dir = checkpoint_dir(checkpoint, model) if checkpoint else None
    if resume:
        if ckpt_dir is None or not (ckpt_dir / "state.json").is_file():
            raise ValueError(
                f"--resume: no checkpoint at {ckpt_dir}; give --checkpoint DIR of an earlier run"
            )
        step, losses, elapsed_before = _load_pretrain_checkpoint(
            ckpt_dir, model, transformer, text_encoder, opt, sched, ema, gen, dev
        )

    pending: list[torch.Tensor] = []  # the losses of the steps since the last host sync

    def flush_losses() -> None:
        if pending:
            losses.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()

    def save_checkpoint() -> None:
        flush_losses()
        _save_pretrain_checkpoint(
            ckpt_dir, model, transformer, text_encoder, opt, sched, ema, gen, step, losses,
            elapsed_before + time.time() - t_start,
        )

    transformer.train()
    text_encoder.train()
    t_start = time.time()
    if minutes is not None:  # --minutes counts the wall time of earlier, resumed sessions too
        limit = t_start + 60.0 * minutes - elapsed_before
        deadline = limit if deadline is None else min(deadline, limit)
    bar = tqdm(total=steps, initial=step, desc=f"pretrain toy-{model}", mininterval=10, disable=not progress)
    stopped_by_time = False
    while step < steps:
        if deadline is not None and time.time() >= deadline:
            stopped_by_time = True
            break
        ids = torch.randint(len(data.PROMPTS), (batch_size,), generator=gen)
        x0 = data.to_model(data.render(ids, gen)).to(dev)
        drop = torch.rand(batch_size, generator=gen) < dropout
        tok = all_ids[torch.where(drop, len(data.PROMPTS), ids).to(dev)]
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        if model == "flow":
            t = torch.sigmoid(torch.randn(batch_size, generator=gen)).to(dev)
            tt = t.view(-1, 1, 1, 1)
            xt = (1 - tt) * x0 + tt * noise
            target = noise - x0
            timestep = 1000.0 * t
        else:
            t = torch.randint(DDPM_SCHEDULE["num_train_timesteps"], (batch_size,), generator=gen).to(dev)
            ab = alphas_cumprod[t].view(-1, 1, 1, 1)
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            target = noise
            timestep = t.float()
        hidden, pooled = nets.encode_text(text_encoder, tok)
        pred = nets.transformer_forward(transformer, xt, timestep, hidden, pooled)
        if loss_weight != "none" and model == "ddpm":
            snr = ab.flatten() / (1 - ab.flatten())
            w = torch.clamp(snr, max=gamma) / snr
            loss = (w * (pred.float() - target).pow(2).mean(dim=(1, 2, 3))).mean()
        else:
            loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay)
        step += 1
        pending.append(loss.detach())
        if step % 10 == 0 or step == steps:  # one host sync per 10 steps (matters on a GPU)
            flush_losses()
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
        bar.update(1)
        if step % 100 == 0:
            el = elapsed_before + time.time() - t_start
            bar.write(f"step {step} loss(50) {sum(losses[-50:]) / len(losses[-50:]):.4f} elapsed {el:.0f}s")
        if ckpt_dir is not None and step % checkpoint_every == 0:
            save_checkpoint()
    bar.close()
    flush_losses()
    if ckpt_dir is not None:
        save_checkpoint()
    wall = elapsed_before + time.time() - t_start

    # fp16 EMA weights: copy EMA into the modules, keep buffers as they are
    for p, e in zip(params, ema):
        p.data.copy_(e)
    state = {
        k: v.detach().to("cpu", torch.float16).contiguous()
        for k, v in nets.join_state(transformer, text_encoder).items()
        if v.is_floating_point()
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    record = dict(
        name=f"toy-{model}",
        prediction_type="flow" if model == "flow" else "epsilon",
        transformer=nets.TRANSFORMER_CONFIG,
        text_encoder=nets.TEXT_ENCODER_CONFIG,
        max_length=MAX_LENGTH,
        schedule=(
            dict(kind="rectified_flow", timestep_scale=1000.0)
            if model == "flow"
            else dict(kind="ddpm", schedule="scaled_linear", **DDPM_SCHEDULE, steps_offset=1)
        ),
        training=dict(
            seed=seed,
            steps=step,
            requested_steps=steps,
            stopped_by_time=stopped_by_time,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            ema_decay=ema_decay,
            prompt_dropout=dropout,
            final_loss=sum(losses[-100:]) / max(1, len(losses[-100:])),
            loss_curve={
                str(s): round(sum(losses[max(0, s - 50) : s]) / len(losses[max(0, s - 50) : s]), 5)
                for s in list(range(250, step + 1, 250)) + [step]
                if s > 0
            },
            wall_time_s=round(wall, 1),
            threads=threads,
            device=str(dev),
            lr_decay=lr_decay,
            loss_weight=loss_weight,
            init_from=init_record,
            rebuild=rebuild
            or (
                (init_record or {}).get("rebuild", "")
                + (" && " if init_record else "")
                + f"pcpo pretrain-toy --model {model} --steps {step} --seed {seed} --device {dev.type}"
                + (f" --batch-size {batch_size}" if batch_size != 64 else "")
                + (f" --lr-decay {lr_decay}" if lr_decay != "none" else "")
                + (f" --warmup {warmup}" if warmup != 200 else "")
                + (f" --ema-decay {ema_decay}" if ema_decay != 0.999 else "")
                + (f" --loss-weight {loss_weight}" if loss_weight != "none" else "")
                + (" --init <folder of the previous stage>" if init_record else "")
            ),
        ),
    )
    (out / "config.json").write_text(json.dumps(record, indent=1))
    return record


def pretrain_out(args: argparse.Namespace) -> Path:
    """The output folder, refused before any training when it is not explicit (``--out`` or
    ``--into-package``) or when it already holds a model, unless ``--force`` (replace it) or ``--resume``
    (the run that wrote it goes on from its checkpoint)."""
    shipped = ASSETS_MODELS / f"toy-{args.model}"
    if getattr(args, "into_package", False):
        if args.out is not None and Path(args.out).resolve() != shipped.resolve():
            raise ValueError("--out/--into-package: give one of them (--into-package writes " f"{shipped})")
        out = shipped
    elif args.out is None:
        raise ValueError("--out: give the folder to write the model to (--out DIR), or --into-package --force to "
                         "replace the shipped weights")
    else:
        out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file; give a folder")
    held = [n for n in ("model.safetensors", "config.json") if (out / n).exists()]
    if held and not getattr(args, "force", False) and not args.resume:
        raise ValueError(f"--out: {out} already holds a toy model ({', '.join(held)}); add --force to "
                         "replace it, --resume to continue the run that wrote it, or choose another --out")
    return out


def run_pretrain(args: argparse.Namespace) -> int:
    """Entry point for the CLI subcommand ``pcpo pretrain-toy``."""
    common = dict(
        model=args.model,
        threads=args.threads,
        device=args.device,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        loss_weight=args.loss_weight,
    )
    if args.recipe == "shipped":
        if args.steps is not None or args.init is not None:
            raise ValueError(
                "--steps/--init belong to --recipe single; --recipe shipped replays the recorded stages"
            )
        if (args.resume or args.minutes is not None) and args.checkpoint is None:
            raise ValueError(
                "--checkpoint: --resume and --minutes of --recipe shipped need a checkpoint folder; "
                "add --checkpoint DIR (the same one when resuming)"
            )
    out = pretrain_out(args)
    if args.recipe == "shipped":
        stages = SHIPPED_RECIPE[args.model]
        deadline = None if args.minutes is None else time.time() + 60.0 * args.minutes
        prev = None
        for k, stage in enumerate(stages, 1):
            last = k == len(stages)
            stage_out = out if last else out / f"stage{k}"
            ck = None if args.checkpoint is None else Path(args.checkpoint) / f"stage{k}"
            # a finished stage resumes at its last step: it only writes its weights again (seconds)
            resume = args.resume and (checkpoint_dir(ck, args.model) / "state.json").is_file()
            rec = pretrain(
                **{**common, **stage},
                out=stage_out,
                init=prev,
                checkpoint=ck,
                checkpoint_every=args.checkpoint_every,
                resume=resume,
                deadline=deadline,
                rebuild=f"pcpo pretrain-toy --model {args.model} --device {args.device} --out DIR" if last else None,
            )
            prev = stage_out
            tr = rec["training"]
            if tr["stopped_by_time"]:
                print(
                    f"toy-{args.model}: --minutes reached in stage {k}/{len(stages)} at step {tr['steps']}/"
                    f"{tr['requested_steps']}; continue with: pcpo pretrain-toy --model {args.model} "
                    f"--out {out} --checkpoint {args.checkpoint} --resume"
                )
                return 0
        import shutil

        for k in range(1, len(stages)):
            shutil.rmtree(out / f"stage{k}", ignore_errors=True)
    else:
        rec = pretrain(
            steps=args.steps,
            minutes=args.minutes,
            out=out,
            seed=args.seed,
            batch_size=args.batch_size,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            init=args.init,
            lr_decay=args.lr_decay,
            **common,
        )
    tr = rec["training"]
    print(
        f"toy-{args.model}: {tr['steps']} steps in {tr['wall_time_s']:.0f}s, final loss {tr['final_loss']:.4f}"
    )
    if args.check and not tr["stopped_by_time"]:
        check_written_model(args.model, out)
    return 0


def check_written_model(model: str, out: Path) -> dict:
    """The toy models' quality bar (:mod:`pcpo.world.quality`) on the weights just written; printed and recorded as ``training.quality``."""
    from pcpo.models.toy import load_toy_model
    from pcpo.world.quality import BAR, toy_quality

    res = toy_quality(load_toy_model(f"toy-{model}", path=out), seeds=(0,))
    acc = res["mean"]["prompt_accuracy"]
    print(
        f"toy-{model}: prompt accuracy {acc:.3f} (colour {res['mean']['color_accuracy']:.3f}, shape "
        f"{res['mean']['shape_accuracy']:.3f}; {res['n']} samples, {res['steps']} steps, CFG "
        f"{res['guidance_scale']:g}, seed 0): {'passes' if acc >= BAR['min_accuracy'] else 'below'} the "
        f"{BAR['min_accuracy']} bar; more seeds: pcpo check-toy --model {model} --path {out} --seeds 0-4"
    )
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["training"]["quality"] = res
    cfg_file.write_text(json.dumps(cfg, indent=1))
    return res


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``pcpo pretrain-toy`` on the CLI's subparsers."""
    p = sub.add_parser(
        "pretrain-toy",
        help="pretrain an embedded toy text-to-image model (toy-flow / toy-ddpm) on the procedural world",
        description=__doc__.split("\n\n")[0],
    )
    add_pretrain_arguments(p)
    p.set_defaults(func=run_pretrain)


def main(argv: list[str] | None = None) -> int:
    p = add_pretrain_arguments(
        argparse.ArgumentParser(prog="pcpo pretrain-toy", description=__doc__.split("\n")[0])
    )
    return run_pretrain(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
