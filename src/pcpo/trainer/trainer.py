"""The RL loop: rollout → reward → advantage → update, for every framework and objective.

DDPO, DanceGRPO, Flow-GRPO and PCPO differ here only in configuration: the sampler (and its noise),
the timestep selection, the advantage estimator, the objective and the credit scheme. Everything else —
rollout, CFG, batching, logging, checkpointing — is shared, so comparisons differ only in what they
claim to differ in.

The update batches the trained (sample, timestep) pairs of a minibatch into forward passes of up to
``train.micro_batch`` rows (sorted by timestep), instead of one forward per timestep.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from ..algo.advantages import advantage_from_config
from ..algo.step import PolicyStep, StepStats
from ..algo.timesteps import select_timesteps
from ..checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, set_rng_state
from ..models.base import ModelAdapter, cond_select
from ..rewards.registry import call_reward
from ..run import (
    build_run_reward,
    build_run_sampler,
    derived_generator,
    load_adapter,
    load_run_config,
    resolve_device,
    resolve_prompt_set,
)
from ..samplers import generate, rollout
from .config import ConfigError, RunConfig, to_dict
from .distributed import DistContext

__all__ = ["NonFiniteError", "Rollout", "Trainer", "select_timesteps"]


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had a NaN/inf loss or reward."""


@dataclass
class Rollout:
    prompts: list[str]          # local prompts
    cond: dict                  # local conditioning
    states: torch.Tensor        # [B, N, ...] input state of each step
    noise: torch.Tensor         # [B, N, ...] z drawn at each step
    pred_old: torch.Tensor      # [B, N, ...] canonical guided prediction at rollout
    images: torch.Tensor        # [B, 3, H, W] in [0, 1]


# ---------------------------------------------------------------------------- trainer

class Trainer:
    """``Trainer(cfg, run_dir).train()``; ``Trainer.resume(run_dir).train()`` continues a run."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, adapter: ModelAdapter | None = None,
                 reward_fn=None, _resuming: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.dist = DistContext.from_env(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self._validate_layout()
        #: prompts with their per-prompt metadata (given to rewards that take ``metadata``: call_reward)
        self.train_prompt_set = resolve_prompt_set(cfg.data.prompts, "data.prompts")
        self.eval_prompt_set = resolve_prompt_set(cfg.data.eval_prompts, "data.eval_prompts")
        self.train_prompts = list(self.train_prompt_set.prompts)
        self.eval_prompts = list(self.eval_prompt_set.prompts)

        if not _resuming and self.dist.is_main:
            self._create_run_dir()
        self.dist.barrier()

        # model, sampler, credit
        self.adapter = adapter if adapter is not None else self._load_model()
        self.adapter.denoiser.eval()  # no dropout: the log-ratio must be a function of the weights
        self.sampler = build_run_sampler(cfg, self.adapter)
        self.eval_sampler = self.sampler.deterministic(cfg.sampler.eval_steps)
        self.policy = PolicyStep.from_config(cfg.train, self.sampler)
        self.eligible = [i for i in range(self.sampler.num_steps) if bool(self.sampler.stochastic[i])]

        self.reward_fn = reward_fn if reward_fn is not None else build_run_reward(cfg)
        self.advantage = advantage_from_config(cfg.train)
        self.fsdp = self.dist.enabled and cfg.distributed == "fsdp"
        if self.fsdp:
            if cfg.train.kl_beta > 0 and not self.adapter.has_reference():
                raise ConfigError("train.kl_beta: with distributed=fsdp the KL reference must be the LoRA-off "
                                  "model (set model.lora) or train.kl_beta=0")
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.adapter.denoiser)
        params = list(self.adapter.trainable_parameters())
        if not params:
            raise ConfigError("model: no trainable parameters (LoRA targets matched nothing?)")
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas),
                                           eps=cfg.train.adam_eps, weight_decay=cfg.train.weight_decay)
        self.ref_adapter = None
        if cfg.train.kl_beta > 0 and not self.adapter.has_reference():
            self.ref_adapter = copy.deepcopy(self.adapter)
            for p in self.ref_adapter.denoiser.parameters():
                p.requires_grad_(False)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.mixed_precision == "fp16" else None
        self.start_epoch = 0
        #: model forward passes by purpose (rollout steps, update chunks, KL reference, evaluation)
        self.passes = {"rollout": 0, "update": 0, "reference": 0, "eval": 0}
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tb = None
        self.wandb = None

    # ---- construction ---------------------------------------------------------------------
    def _validate_layout(self) -> None:
        cfg, w = self.cfg, self.dist.world_size
        total = cfg.data.prompts_per_epoch * cfg.data.group_size
        if total % w:
            raise ConfigError(f"data.prompts_per_epoch * data.group_size ({total}) must be divisible by the "
                              f"number of processes ({w})")
        mb = cfg.train.minibatch_size or total
        if total % mb:
            raise ConfigError(f"train.minibatch_size ({mb}) must divide the trajectories per epoch ({total})")
        if mb % w:
            raise ConfigError(f"train.minibatch_size ({mb}) must be divisible by the number of processes ({w})")

    def _create_run_dir(self) -> None:
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise ConfigError(f"--out: run directory {self.run_dir} exists and is not empty; resume it with "
                              f"`pcpo train --resume {self.run_dir}` or choose another --out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))

    def _load_model(self) -> ModelAdapter:
        return load_adapter(self.cfg, self.device)

    # ---- resume -----------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, overrides: list[str] | None = None, **kw) -> Trainer:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume: {run_dir} has no config.yaml; is it a pcpo run directory?")
        cfg = load_run_config(run_dir, overrides)
        trainer = cls(cfg, run_dir, _resuming=True, **kw)
        ckpts = list_checkpoints(run_dir)
        if ckpts:
            trainer.load(ckpts[-1])
        else:  # killed before the first checkpoint: start over, dropping partial logs
            trainer._truncate_metrics(-1)
        return trainer

    def load(self, path: Path) -> None:
        model, opt, rng, payload = load_checkpoint(path)
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(self.adapter.denoiser, model, options=opts)
            set_optimizer_state_dict(self.adapter.denoiser, self.optimizer, opt, options=opts)
        else:
            self.adapter.load_trainable_state_dict({k: v.to(self.device) for k, v in model.items()})
            self.optimizer.load_state_dict(opt)
        set_rng_state(rng, payload["rng"])
        self.advantage.load_state_dict(payload.get("advantage", {}))
        self.nonfinite_streak = payload.get("nonfinite_streak", 0)
        self.nonfinite_total = payload.get("nonfinite_total", 0)
        self.start_epoch = payload["epoch"]
        self._truncate_metrics(self.start_epoch)

    def _truncate_metrics(self, epochs_done: int) -> None:
        """Keep log lines of epochs <= ``epochs_done``; later ones are recomputed identically on resume."""
        if not self.dist.is_main or not self.metrics_path.exists():
            return
        keep = [ln for ln in self.metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("epoch", 0) <= epochs_done]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.metrics_path)

    def _model_state(self) -> dict[str, torch.Tensor]:
        """Trained weights, full (gathered) under FSDP: every rank must call this."""
        if not self.fsdp:
            return self.adapter.trainable_state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.adapter.denoiser,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        trainable = self.adapter.trainable_state_dict().keys()
        return {k: v for k, v in full.items() if k in trainable}

    def _optimizer_state(self) -> dict:
        if not self.fsdp:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.adapter.denoiser, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self, epoch: int) -> None:
        model_state, opt_state = self._model_state(), self._optimizer_state()
        if not self.dist.is_main:
            return
        state = {
            "advantage": self.advantage.state_dict(),
            "nonfinite_streak": self.nonfinite_streak,
            "nonfinite_total": self.nonfinite_total,
            "sampler": self.sampler.describe(),
        }
        save_checkpoint(self.run_dir, epoch, model_state, opt_state, state, keep_last=self.cfg.checkpoint.keep_last)

    # ---- forward ----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _predict(self, adapter: ModelAdapter, x, step_idx: torch.Tensor, cond) -> torch.Tensor:
        t = self.sampler.timesteps[step_idx.cpu()].to(self.device)
        with self._autocast():
            raw = adapter.predict(x, t, cond, self.cfg.sampler.guidance_scale)
        return self.sampler.canonical(step_idx.cpu(), x, raw.float())

    # ---- epoch pieces -----------------------------------------------------------------------
    def epoch_prompts(self, epoch: int) -> tuple[list[str], list[int]]:
        """Global prompts and group ids of an epoch (identical on every rank)."""
        d = self.cfg.data
        g = derived_generator(self.cfg.seed, "prompts", epoch)
        n = len(self.train_prompts)
        if d.prompts_per_epoch <= n:
            idx = torch.randperm(n, generator=g)[: d.prompts_per_epoch].tolist()
        else:
            idx = torch.randint(n, (d.prompts_per_epoch,), generator=g).tolist()
        prompts = [self.train_prompts[i] for i in idx for _ in range(d.group_size)]
        keys = [k for k in range(d.prompts_per_epoch) for _ in range(d.group_size)]
        return prompts, keys

    def local_slice(self, n: int) -> slice:
        per = n // self.dist.world_size
        return slice(self.dist.rank * per, (self.dist.rank + 1) * per)

    @torch.no_grad()
    def rollout(self, epoch: int) -> tuple[Rollout, list[str], list[int]]:
        prompts, keys = self.epoch_prompts(epoch)
        sl = self.local_slice(len(prompts))
        gen_init = derived_generator(self.cfg.seed, "init", epoch, device=self.device)
        # initial noise for every global sample (cheap), so shared noise is consistent across ranks
        x_all = self.adapter.initial_noise(len(prompts), generator=gen_init)
        if self.cfg.sampler.shared_noise:
            G = self.cfg.data.group_size
            x_all = x_all[::G].repeat_interleave(G, dim=0)
        x_local = x_all[sl]
        local_prompts = prompts[sl]
        cond = self.adapter.encode_prompts(local_prompts)
        gen = derived_generator(self.cfg.seed, "rollout", epoch, self.dist.rank, device=self.device)
        B, rb = len(local_prompts), self.cfg.sampler.rollout_batch
        bar = tqdm(total=self.sampler.num_steps * math.ceil(B / rb), desc="rollout", leave=False,
                   disable=not self._bars())
        parts = []
        for start in range(0, B, rb):
            idx = torch.arange(start, min(B, start + rb))
            c = cond_select(cond, idx.to(next(iter(cond.values())).device)) if cond else cond
            parts.append(rollout(self.sampler, x_local[idx].float(),
                                 lambda x, step_idx, c=c: self._predict(self.adapter, x, step_idx, c),
                                 generator=gen, on_step=bar.update))
            self.passes["rollout"] += self.sampler.num_steps
        bar.close()
        images = self.adapter.decode(torch.cat([t.final for t in parts])).float()
        states, noise, preds = (torch.cat([getattr(t, k) for t in parts]) for k in ("states", "noise", "preds"))
        return Rollout(local_prompts, cond, states, noise, preds, images), prompts, keys

    def compute_advantages(self, rewards_local: torch.Tensor, global_keys: list[int],
                           global_prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = self.dist.all_gather_cat(rewards_local.float().to(self.device)).cpu()
        keys = global_prompts if self.advantage.group_by == "prompt" else global_keys
        adv = self.advantage(rewards, keys)
        return rewards, adv[self.local_slice(len(global_keys))]

    def update(self, ro: Rollout, adv: torch.Tensor, epoch: int) -> dict:
        """Chunk the trained pairs of each minibatch, call the policy step, backpropagate, step."""
        cfg = self.cfg.train
        B = ro.states.shape[0]
        gen = derived_generator(self.cfg.seed, "update", epoch, self.dist.rank)
        mb_local = (cfg.minibatch_size or B * self.dist.world_size) // self.dist.world_size
        adv = adv.to(self.device)
        stats = StepStats(self.sampler.num_steps)
        passes0 = self.passes["update"]
        skipped = 0
        selections = [select_timesteps(cfg.timestep_selection, cfg.timestep_fraction, self.eligible, gen)
                      for _ in range(B)]
        bar = tqdm(total=cfg.inner_epochs * (B // mb_local), desc="update", leave=False, disable=not self._bars())
        for inner in range(cfg.inner_epochs):
            order = torch.randperm(B, generator=gen).tolist()
            for m0 in range(0, B, mb_local):
                pairs = sorted((i, b) for b in order[m0:m0 + mb_local] for i in selections[b])
                self.optimizer.zero_grad(set_to_none=True)
                bad = False
                for c0 in range(0, len(pairs), cfg.micro_batch):
                    chunk = pairs[c0:c0 + cfg.micro_batch]
                    s_idx = torch.tensor([i for i, _ in chunk], dtype=torch.long)
                    res = self._policy_forward(ro, adv, s_idx, torch.tensor([b for _, b in chunk], dtype=torch.long))
                    if not torch.isfinite(res.loss):
                        bad = True
                        break
                    self._backward(res.loss * (len(chunk) / len(pairs)))
                    stats.add(res, s_idx, len(chunk) / len(pairs))
                stats.end_minibatch(first=inner == 0)
                if self.dist.any(bad, self.device):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    self._nonfinite("loss")
                else:
                    stats.grad_norms.append(self._optimizer_step())
                    self.nonfinite_streak = 0
                bar.update()
        bar.close()
        return {**stats.summary(cfg.inner_epochs * (B // mb_local) - skipped), "updates_skipped": skipped,
                "forward_passes": self.passes["update"] - passes0}

    def _policy_forward(self, ro: Rollout, adv: torch.Tensor, s_idx: torch.Tensor, b_idx: torch.Tensor):
        """Forward the pairs (b_idx, s_idx) and evaluate the policy step on them."""
        bi, si = b_idx.to(self.device), s_idx.to(self.device)
        x = ro.states[bi, si]
        cond = cond_select(ro.cond, bi.to(next(iter(ro.cond.values())).device)) if ro.cond else ro.cond
        p = self._predict(self.adapter, x, s_idx, cond)
        self.passes["update"] += 1
        p_ref = None
        if self.policy.needs_reference:
            with torch.no_grad():
                if self.ref_adapter is not None:
                    p_ref = self._predict(self.ref_adapter, x, s_idx, cond)
                else:
                    with self.adapter.reference():
                        p_ref = self._predict(self.adapter, x, s_idx, cond)
            self.passes["reference"] += 1
        return self.policy(p, ro.pred_old[bi, si], ro.noise[bi, si], adv[bi], s_idx, pred_ref=p_ref)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _optimizer_step(self) -> float:
        """All-reduce (DDP; FSDP reduce-scatters in backward), clip, step; returns the gradient norm."""
        if not self.fsdp:
            self.dist.all_reduce_mean_([p.grad for p in self.params if p.grad is not None])
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.max_grad_norm if self.cfg.train.max_grad_norm > 0 else float("inf")
        gn = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)

    def _nonfinite(self, what: str) -> None:
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        if self.nonfinite_streak >= self.cfg.train.max_nonfinite:
            raise NonFiniteError(
                f"{self.nonfinite_streak} consecutive updates skipped for a non-finite {what}; lower train.lr, "
                f"check the reward, or raise train.max_nonfinite (now {self.cfg.train.max_nonfinite})"
            )

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict:
        """Held-out prompts with the deterministic sampler and a fixed noise seed (rank 0 only)."""

        cfg = self.cfg.eval
        prompts = [p for p in self.eval_prompts for _ in range(cfg.images_per_prompt)]
        gen = derived_generator(cfg.seed, "eval", device=self.device)
        x = self.adapter.initial_noise(len(prompts), generator=gen)
        images = generate(self.adapter, self.eval_sampler, prompts, self.cfg.sampler.guidance_scale, x,
                          batch=self.cfg.sampler.rollout_batch, context=self._autocast)
        self.passes["eval"] += self.eval_sampler.num_steps * math.ceil(len(prompts) / self.cfg.sampler.rollout_batch)
        meta = self.eval_prompt_set.metadata_for(prompts)
        rewards = call_reward(self.reward_fn, images, prompts, meta).float().cpu()
        out = {"eval_reward_mean": float(rewards.mean()), "eval_reward_std": float(rewards.std(unbiased=False))}
        comps = getattr(self.reward_fn, "components", None)
        if comps is not None:
            for name, v in call_reward(comps, images, prompts, meta).items():
                out[f"eval_{name}"] = float(v.float().mean())
        if cfg.gold and self.cfg.model.family.startswith("toy"):
            out.update(self._gold(images, prompts))
        if cfg.grid and self.dist.is_main:
            from ..figures import save_grid

            grid_dir = self.run_dir / "images"
            grid_dir.mkdir(exist_ok=True)
            save_grid(images, grid_dir / f"epoch-{epoch:05d}.png", nrow=cfg.images_per_prompt,
                      labels=self.eval_prompts)
        return out

    def _gold(self, images, prompts) -> dict:
        """Gold metrics of the embedded world; a missing classifier disables them with one warning."""
        if getattr(self, "_gold_metrics", None) is False:
            return {}
        if not hasattr(self, "_gold_metrics"):
            from ..world.errors import WeightsError
            from ..world.metrics import GoldMetrics

            try:
                self._gold_metrics = GoldMetrics(device=self.device)
                return {f"gold_{k}": v for k, v in self._gold_metrics(images, prompts).items()}
            except WeightsError as e:
                print(f"warning: gold metrics disabled: {e}", file=sys.stderr)
                self._gold_metrics = False
                return {}
        return {f"gold_{k}": v for k, v in self._gold_metrics(images, prompts).items()}

    # ---- logging ----------------------------------------------------------------------------
    def _bars(self) -> bool:
        return self.cfg.log.progress and self.dist.is_main and sys.stderr.isatty()

    def _open_loggers(self) -> None:
        if not self.dist.is_main:
            return
        if self.cfg.log.tensorboard and self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tb"))
        if self.cfg.log.wandb and self.wandb is None:
            try:
                import wandb
            except ImportError:
                raise ConfigError("log.wandb: wandb is not installed; `pip install wandb` or set log.wandb=false") from None
            self.wandb = wandb.init(project=self.cfg.log.wandb_project, dir=str(self.run_dir),
                                    config=to_dict(self.cfg), name=self.run_dir.name, resume="allow")

    def log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["epoch"]
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and v is not None and k != "epoch"}
        if self.tb is not None:
            for k, v in scalars.items():
                if math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            for k in ("clipfrac_per_step", "abs_log_ratio_per_step"):
                vals = [v for v in record.get(k) or [] if v is not None]
                if vals:
                    self.tb.add_histogram(k, torch.tensor(vals), step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(ln) for ln in self.metrics_path.read_text().splitlines() if ln.strip()]

    # ---- main loop --------------------------------------------------------------------------
    def train(self) -> list[dict]:
        cfg = self.cfg
        self._open_loggers()
        if self.dist.is_main and self.start_epoch == 0:
            from ..algo.credit import credit_table
            from ..figures import plot_credit

            table = credit_table(self.sampler, w_star=cfg.train.w_star)
            (self.run_dir / "credit.json").write_text(json.dumps(table, indent=1))
            plot_credit(table, str(self.run_dir / "credit.png"))
        if self.start_epoch == 0 and (self.dist.is_main or self.fsdp):
            ev = self.evaluate(0)
            self.log({"epoch": 0, **ev})
            self._summary(0, ev)
        self.dist.barrier()
        try:
            for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
                record = self.train_epoch(epoch)
                if (self.dist.is_main or self.fsdp) and (
                        epoch == cfg.epochs or (cfg.eval.every and epoch % cfg.eval.every == 0)):
                    record.update(self.evaluate(epoch))
                self.log(record)
                self._summary(epoch, record)
                if epoch == cfg.epochs or epoch % cfg.checkpoint.every == 0:
                    self.save(epoch)
                    self._plot_curves()
                self.dist.barrier()
        finally:
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()
        self._save_final()
        return self.read_metrics()

    def train_epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        ro, prompts, keys = self.rollout(epoch)
        t1 = time.perf_counter()
        rewards_local = call_reward(self.reward_fn, ro.images, ro.prompts,
                                    self.train_prompt_set.metadata_for(ro.prompts)).float()
        t2 = time.perf_counter()
        bad_reward = self.dist.any(not bool(torch.isfinite(rewards_local).all()), self.device)
        rewards, adv = self.compute_advantages(torch.nan_to_num(rewards_local, nan=0.0, posinf=0.0, neginf=0.0),
                                               keys, prompts)
        if bad_reward:
            self._nonfinite("reward")
            upd = {"updates_skipped": 1}
        else:
            upd = self.update(ro, adv, epoch)
        t3 = time.perf_counter()
        record = {
            "epoch": epoch,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "adv_abs_mean": float(adv.abs().mean()),
            **upd,
            "nonfinite_total": self.nonfinite_total,
            "time_rollout_s": t1 - t0,
            "time_reward_s": t2 - t1,
            "time_update_s": t3 - t2,
            "time_s": t3 - t0,
        }
        if self.cfg.log.per_sample:
            record["rewards"] = rewards.tolist()
            record["advantages"] = self.dist.all_gather_cat(adv.to(self.device)).cpu().tolist()
            record["group_keys"] = list(keys)
        if self.dist.enabled and not self.fsdp:  # every rank must hold the same weights after the all-reduced update
            checksum = torch.stack([p.detach().double().sum() for p in self.params]).sum().view(1).to(self.device)
            sums = self.dist.all_gather_cat(checksum)
            record["params_rank_spread"] = float(sums.max() - sums.min())
        return record

    def _summary(self, epoch: int, r: dict) -> None:
        if not self.dist.is_main:
            return
        parts = [f"epoch {epoch:4d}"]
        for k, fmt in (("reward_mean", "reward {:.4f}"), ("eval_reward_mean", "eval {:.4f}"),
                       ("clipfrac", "clip {:.3f}"), ("loss", "loss {:.3g}"), ("gold_accuracy", "acc {:.3f}"),
                       ("time_s", "{:.1f}s")):
            v = r.get(k)
            if isinstance(v, (int, float)) and v is not None:
                parts.append(fmt.format(v))
        print(" | ".join(parts), flush=True)

    def _plot_curves(self) -> None:
        if not self.dist.is_main:
            return
        from ..figures import plot_training

        plot_training(self.read_metrics(), str(self.run_dir / "curves.png"))

    def _save_final(self) -> None:
        state = self._model_state()
        if not self.dist.is_main:
            return
        save = getattr(self.adapter, "save_trained", None)
        if save is not None and not self.fsdp:
            save(self.run_dir / "final")
        else:
            from safetensors.torch import save_file

            out = self.run_dir / "final"
            out.mkdir(exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / "model.safetensors"))

