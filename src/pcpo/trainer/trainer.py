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
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from ..algo.advantages import advantage_from_config
from ..algo.step import StepStats
from ..algo.timesteps import select_timesteps
from ..algo.windows import window_at
from ..checkpoint import (
    CheckpointError,
    append_record,
    clean_stale,
    clean_stale_dir,
    discard_newer,
    find_resumable,
    load_checkpoint,
    prune_checkpoints,
    read_records,
    remove_dir,
    rng_state,
    save_checkpoint,
    set_rng_state,
    truncate_records,
)
from ..errors import PcpoError
from ..models.base import ModelAdapter, cond_select
from ..rewards.registry import call_reward
from ..run import (
    build_run_reward,
    build_run_sampler,
    check_loggers,
    check_reward,
    check_run_dir,
    derived_generator,
    load_adapter,
    load_run_config,
    resolve_device,
    resolve_prompt_set,
)
from ..samplers import generate, rollout
from .config import ConfigError, RunConfig, to_dict
from .distributed import DistContext
from .plan import Setup, WindowPlan

__all__ = ["NonFiniteError", "Rollout", "Trainer", "TrainingInterrupted", "select_timesteps"]


class NonFiniteError(PcpoError, RuntimeError):
    """Too many consecutive updates had a NaN/inf loss or reward."""


class TrainingInterrupted(PcpoError):
    """SIGINT/SIGTERM stopped :meth:`Trainer.train` at a consistent point; ``exit_code`` is 130 (SIGINT)
    or 143 (SIGTERM), ``epoch`` the last epoch saved (``None`` if none), and the message says how to resume."""

    def __init__(self, message: str, signum: int, epoch: int | None):
        super().__init__(message)
        self.signum, self.epoch = signum, epoch
        self.exit_code = 128 + int(signum)

    def __reduce__(self):  # crosses process boundaries whole (a bench worker's stop reaches the matrix)
        return type(self), (str(self), self.signum, self.epoch)


class _Stop(BaseException):  # noqa: N818  (raised by the signal handler; a BaseException, like KeyboardInterrupt)
    def __init__(self, signum: int, forced: bool = False):
        super().__init__(signum)
        self.signum, self.forced = signum, forced


@dataclass
class Rollout:
    prompts: list[str]          # local prompts
    cond: dict                  # local conditioning
    states: torch.Tensor        # [B, N, ...] input state of each step
    noise: torch.Tensor         # [B, N, ...] z drawn at each step
    pred_old: torch.Tensor      # [B, N, ...] canonical guided prediction at rollout
    images: torch.Tensor        # [B, 3, H, W] in [0, 1]
    setups: list | None = None  # [B] the window setup (sampler, policy step, eligible steps) of each row
    fixed_steps: list | None = None  # [B] trained steps fixed by the rollout (TempFlow branching), else None


# ---------------------------------------------------------------------------- trainer

class Trainer:
    """``Trainer(cfg, run_dir).train()``; ``Trainer.resume(run_dir).train()`` continues a run."""

    # fault handling (see train and resume)
    _stop_signal: int | None = None   # a SIGINT/SIGTERM received during train(), not yet acted on
    _abandonable = False              # the epoch under way has changed nothing persistent yet
    _signals_active = False           # train() installed its SIGINT/SIGTERM handlers
    _saved_epoch: int | None = None   # the newest epoch with a checkpoint on disk (this run's)
    _epoch_rng = None                 # RNG states at the start of the epoch under way
    #: what a stop message tells the user to run to continue (a backquoted command); ``None``: the trainer's
    #: own `pcpo train --resume RUN_DIR` (or the launch command under torchrun). A caller that resumes the run
    #: itself, such as ``pcpo bench``, sets its own command here.
    resume_command: str | None = None

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

        # everything that can fail is checked before the run directory exists (created last, below)
        if not _resuming and self.dist.is_main:
            check_run_dir(self.run_dir)
        check_loggers(cfg)

        # model, sampler, credit
        self.adapter = adapter if adapter is not None else self._load_model()
        self.adapter.denoiser.eval()  # no dropout: the log-ratio must be a function of the weights
        self.sampler = build_run_sampler(cfg, self.adapter)
        self.eval_sampler = self.sampler.deterministic(cfg.sampler.eval_steps).inherit(self.sampler)
        #: the iteration's sampler and policy step under an SDE window (one setup without a window)
        self.plan = WindowPlan(cfg.train, cfg.sampler, self.sampler)

        self.reward_fn = reward_fn if reward_fn is not None else build_run_reward(cfg)
        if self.dist.is_main:
            check_reward(self.reward_fn)  # e.g. a remote reward's server answers its health check
        self.advantage = advantage_from_config(cfg.train)
        self.fsdp = self.dist.enabled and cfg.distributed == "fsdp"
        if self.fsdp:
            if cfg.train.kl_beta > 0 and not self.adapter.has_reference():
                raise ConfigError("train.kl_beta: with distributed=fsdp the KL reference must be the LoRA-off "
                                  "model (set model.lora) or train.kl_beta=0")
            from torch.distributed.fsdp import fully_shard

            for unit in self.adapter.fsdp_units():   # one block's parameters gathered at a time
                fully_shard(unit)
            fully_shard(self.adapter.denoiser)
        params = list(self.adapter.trainable_parameters())
        if not params:
            raise ConfigError("model: no trainable parameters (LoRA targets matched nothing?)")
        self.params = params
        self.ema = None
        if cfg.train.ema_decay > 0:
            if self.fsdp:
                raise ConfigError("train.ema_decay: the parameter EMA is not supported with distributed=fsdp; "
                                  "use distributed=ddp or set train.ema_decay=0")
            from .ema import ParameterEMA

            self.ema = ParameterEMA(params, cfg.train.ema_decay, cfg.train.ema_every)
        self.optimizer_steps = 0
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
        #: model forward calls by purpose (batched: rollout steps, update chunks, KL reference, evaluation)
        self.passes = {"rollout": 0, "update": 0, "reference": 0, "eval": 0}
        #: model evaluations by purpose (rows: one sample at one step; a CFG pair counts once)
        self.evaluations = {"rollout": 0, "update": 0, "reference": 0, "eval": 0}
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tb = None
        self.wandb = None
        #: what this run created (removed by the CLI if the run fails before its first epoch)
        self.created_run_dir: Path | None = None
        self.emptied_run_dir = False
        if not _resuming and self.dist.is_main:
            self._create_run_dir()
        self.dist.barrier()

    # ---- construction ---------------------------------------------------------------------
    def _validate_layout(self) -> None:
        cfg, w = self.cfg, self.dist.world_size
        total = cfg.data.prompts_per_epoch * cfg.data.group_size
        if total % w:
            raise ConfigError(f"data.prompts_per_epoch * data.group_size ({total}) must be divisible by the "
                              f"number of processes ({w})")
        if w > 1 and cfg.data.prompts_per_epoch % w and window_at(
                cfg.train.sde_window, cfg.sampler.steps, 0, None, cfg.train.sde_window_options).branching == "per_step":
            raise ConfigError(f"data.prompts_per_epoch ({cfg.data.prompts_per_epoch}) must be divisible by the number "
                              f"of processes ({w}) with train.sde_window={cfg.train.sde_window} (each process "
                              "branches whole prompts)")
        mb = cfg.train.minibatch_size or total
        if total % mb:
            raise ConfigError(f"train.minibatch_size ({mb}) must divide the trajectories per epoch ({total})")
        if mb % w:
            raise ConfigError(f"train.minibatch_size ({mb}) must be divisible by the number of processes ({w})")

    def _create_run_dir(self) -> None:
        check_run_dir(self.run_dir)
        if self.run_dir.exists():
            self.emptied_run_dir = True  # existed empty: only its new contents are this run's
        else:
            top = self.run_dir
            while not top.parent.exists():
                top = top.parent
            self.created_run_dir = top
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))

    def _load_model(self) -> ModelAdapter:
        return load_adapter(self.cfg, self.device)

    # ---- resume -----------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, overrides: list[str] | None = None, restart: bool = False,
               **kw) -> Trainer:
        """Continue the run in ``run_dir`` after its newest intact checkpoint.

        First clears what killed writers left (``.tmp-*``/``.del-*`` folders, incomplete older
        ``epoch-*``; one stderr line each). A damaged or incomplete newer checkpoint is reported in one
        stderr line naming the file and skipped (and removed once the older one is loaded). Without any
        usable checkpoint the run starts again from epoch 0 only if that loses nothing (no trained epoch
        in ``metrics.jsonl``) or ``restart`` is true; otherwise :class:`CheckpointError` says what would
        be retrained, before any work and with ``metrics.jsonl`` untouched. A finished run
        (:attr:`finished`) makes :meth:`train` return at once.
        """
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume: {run_dir} has no config.yaml; is it a pcpo run directory?")
        cfg = load_run_config(run_dir, overrides)
        main = os.environ.get("RANK", "0") == "0"
        found = None
        if main:  # before any other rank looks: they wait in the barrier below
            for line in clean_stale(run_dir) + clean_stale_dir(run_dir, required=()):
                print(f"pcpo: {run_dir}/{line}", file=sys.stderr)
            found, warnings = find_resumable(run_dir)
            for line in warnings:
                print(f"warning: {run_dir}/{line}", file=sys.stderr)
            if found is None and not restart:
                cls._check_nothing_lost(run_dir)
        trainer = cls(cfg, run_dir, _resuming=True, **kw)
        trainer.dist.barrier()
        if not main:
            found, _ = find_resumable(run_dir)
        if trainer.dist.enabled:  # every rank must continue from the same checkpoint
            mine = torch.tensor([_epoch_of(found)], dtype=torch.float64, device=trainer.device)
            seen = trainer.dist.all_gather_cat(mine)
            if bool((seen != seen[0]).any()):
                raise CheckpointError(run_dir / "checkpoints", "the ranks see different newest intact "
                                      f"checkpoints (epochs {[int(e) for e in seen.tolist()]}); resume on a "
                                      "file system all ranks share")
        if found is not None:
            trainer.load(found)
            if trainer.dist.is_main:
                for line in discard_newer(run_dir, trainer.start_epoch):
                    print(f"pcpo: {run_dir}/{line}", file=sys.stderr)
        else:  # killed before the first checkpoint (or restart): start over, dropping partial logs
            trainer._truncate_metrics(-1)
        trainer.dist.barrier()
        return trainer

    @staticmethod
    def _check_nothing_lost(run_dir: Path) -> None:
        """Raise CheckpointError if starting ``run_dir`` over would retrain epochs its log holds."""
        trained = sorted({r.get("epoch", 0) for r in read_records(run_dir / "metrics.jsonl")} - {0})
        if not trained:
            return
        any_ckpt = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
        why = "no intact checkpoint (see the warnings above)" if any_ckpt else "no checkpoint"
        raise CheckpointError(
            run_dir / "checkpoints",
            f"{why} to resume from: the {len(trained)} epochs (up to epoch {trained[-1]}) logged in "
            f"{run_dir / 'metrics.jsonl'} would be retrained from epoch 0; to start over, delete that file "
            f"and run `pcpo train --resume {run_dir}` again, or `Trainer.resume(..., restart=True)`")

    @property
    def finished(self) -> bool:
        """The run has trained all ``epochs`` and written ``final/``: :meth:`train` has nothing to do."""
        return self.start_epoch >= self.cfg.epochs and (self.run_dir / "final").is_dir()

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
            ema = {k: model.pop(k) for k in [k for k in model if k.startswith("__ema__.")]}
            self.adapter.load_trainable_state_dict({k: v.to(self.device) for k, v in model.items()})
            self.optimizer.load_state_dict(opt)
            if self.ema is not None:
                self.ema.load_state_tensors(ema)
        self.optimizer_steps = payload.get("optimizer_steps", 0)
        set_rng_state(rng, payload["rng"])
        self.advantage.load_state_dict(payload.get("advantage", {}))
        self.nonfinite_streak = payload.get("nonfinite_streak", 0)
        self.nonfinite_total = payload.get("nonfinite_total", 0)
        self.start_epoch = self._saved_epoch = payload["epoch"]
        self._truncate_metrics(self.start_epoch)

    def _truncate_metrics(self, epochs_done: int) -> None:
        """Keep log lines of epochs <= ``epochs_done`` (a last line cut by a kill is dropped); later ones
        are recomputed identically on resume."""
        if self.dist.is_main:
            truncate_records(self.metrics_path, epochs_done)

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
        self._saved_epoch = epoch
        if not self.dist.is_main:
            return
        state = {
            "advantage": self.advantage.state_dict(),
            "nonfinite_streak": self.nonfinite_streak,
            "nonfinite_total": self.nonfinite_total,
            "sampler": self.sampler.describe(),
            "optimizer_steps": self.optimizer_steps,
        }
        if self.ema is not None:
            model_state = {**model_state, **self.ema.state_tensors()}
        save_checkpoint(self.run_dir, epoch, model_state, opt_state, state, keep_last=self.cfg.checkpoint.keep_last)

    # ---- forward ----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _predict(self, adapter: ModelAdapter, x, step_idx: torch.Tensor, cond, sampler=None) -> torch.Tensor:
        sampler = sampler if sampler is not None else self.sampler
        t = sampler.input_times(step_idx).to(self.device)
        with self._autocast():
            raw = adapter.predict(x, t, cond, self.cfg.sampler.guidance_scale)
        return sampler.canonical(step_idx.cpu(), x, raw.float())

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
        gen = derived_generator(self.cfg.seed, "rollout", epoch, self.dist.rank, device=self.device)
        B, rb = len(local_prompts), self.cfg.sampler.rollout_batch
        setups = self.plan.setups(epoch, math.ceil(B / rb), derived_generator(self.cfg.seed, "window", epoch))
        if setups[0].window.branching == "per_step":
            return self._rollout_per_step(setups[0], prompts, keys, x_local, local_prompts, gen)
        cond = self.adapter.encode_prompts(local_prompts)
        bar = tqdm(total=self.sampler.num_steps * math.ceil(B / rb), desc="rollout", leave=False,
                   disable=not self._bars())
        parts, row_setups = [], []
        G = self.cfg.data.group_size

        def on_step():
            self.passes["rollout"] += 1
            bar.update()
        for k, start in enumerate(range(0, B, rb)):
            idx = torch.arange(start, min(B, start + rb))
            su = setups[k]
            c = cond_select(cond, idx)
            first = su.window.sde_steps[0] if su.window.sde_steps else su.sampler.num_steps
            if su.window.branching == "prefix" and first > 0:
                from ..samplers.branching import rollout_shared_prefix

                groups = [(sl.start + int(i)) // G for i in idx]
                traj, cost = rollout_shared_prefix(
                    su.sampler, x_local[idx].float(),
                    lambda x, step_idx, rows, c=c, sm=su.sampler: self._predict(
                        self.adapter, x, step_idx, cond_select(c, rows), sm),
                    groups, first, generator=gen, on_step=on_step)
            else:
                traj = rollout(su.sampler, x_local[idx].float(),
                               lambda x, step_idx, c=c, sm=su.sampler: self._predict(self.adapter, x, step_idx, c, sm),
                               generator=gen, on_step=on_step)
                cost = su.sampler.num_steps * len(idx)
            self.evaluations["rollout"] += cost
            parts.append(traj)
            row_setups += [su] * len(idx)
        bar.close()
        images = self.adapter.decode(torch.cat([t.final for t in parts])).float()
        states, noise, preds = (torch.cat([getattr(t, k) for t in parts]) for k in ("states", "noise", "preds"))
        return Rollout(local_prompts, cond, states, noise, preds, images, setups=row_setups), prompts, keys

    def _rollout_per_step(self, su: Setup, prompts: list[str], keys: list[int], x_local: torch.Tensor,
                          local_prompts: list[str], gen) -> tuple[Rollout, list[str], list[int]]:
        """TempFlow-GRPO's branching: one ODE trajectory per prompt group, ``children`` SDE children at
        each branch step; rows are (group, branch step, child) and their advantages are grouped by
        (prompt, branch step). Returns the rows' global group labels in place of ``prompts``/``keys``."""
        from ..samplers.branching import rollout_per_step

        G, K = self.cfg.data.group_size, su.window.children
        branches = su.window.sde_steps
        S = len(branches)
        group_prompts = local_prompts[::G]
        x_groups = x_local[::G].float()
        ode = self.sampler.deterministic().inherit(self.sampler)
        cond_all = self.adapter.encode_prompts(group_prompts)
        per = max(1, self.cfg.sampler.rollout_batch // K)
        parts, branch_of = [], []

        def on_step():
            self.passes["rollout"] += 1
        for start in range(0, len(group_prompts), per):
            idx = torch.arange(start, min(len(group_prompts), start + per))
            c = cond_select(cond_all, idx)
            traj, b_of, cost = rollout_per_step(
                su.sampler, ode, x_groups[idx],
                lambda x, step_idx, rows, c=c: self._predict(self.adapter, x, step_idx, cond_select(c, rows), su.sampler),
                branches, K, generator=gen, on_step=on_step)
            self.evaluations["rollout"] += cost
            parts.append(traj)
            branch_of += b_of.tolist()
        row_prompt = [p for p in group_prompts for _ in range(S * K)]
        cond = cond_select(cond_all, torch.arange(len(group_prompts)).repeat_interleave(S * K))  # rows' prompts
        images = self.adapter.decode(torch.cat([t.final for t in parts])).float()
        states, noise, preds = (torch.cat([getattr(t, k) for t in parts]) for k in ("states", "noise", "preds"))
        trained = set(su.window.trained)
        fixed = [[b] if b in trained else [] for b in branch_of]
        ro = Rollout(row_prompt, cond, states, noise, preds, images, setups=[su] * len(row_prompt), fixed_steps=fixed)
        # global row labels: group g's rows (g, s, k); advantages group the children of one branch step
        all_groups = prompts[::G]
        row_keys = [g * S + s for g in range(len(all_groups)) for s in range(S) for _ in range(K)]
        row_labels = [f"{all_groups[g]} @step {branches[s]}" for g in range(len(all_groups)) for s in range(S)
                      for _ in range(K)]
        return ro, row_labels, row_keys

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
        total = self.cfg.data.prompts_per_epoch * self.cfg.data.group_size
        mb_local = math.ceil(B / (total // (cfg.minibatch_size or total)))
        adv = adv.to(self.device)
        stats = StepStats(self.sampler.num_steps)
        passes0, evals0 = self.passes["update"], self.evaluations["update"]
        skipped = empty = 0
        setups = ro.setups or [self.plan.default()] * B
        sid = {id(su): k for k, su in reversed(list(enumerate(setups)))}
        selections = [ro.fixed_steps[b] if ro.fixed_steps is not None else
                      select_timesteps(cfg.timestep_selection, cfg.timestep_fraction, setups[b].eligible, gen)
                      if setups[b].eligible else [] for b in range(B)]
        n_mb = cfg.inner_epochs * math.ceil(B / mb_local)
        bar = tqdm(total=n_mb, desc="update", leave=False, disable=not self._bars())
        for inner in range(cfg.inner_epochs):
            order = torch.randperm(B, generator=gen).tolist()
            for m0 in range(0, B, mb_local):
                pairs = sorted((sid[id(setups[b])], i, b) for b in order[m0:m0 + mb_local] for i in selections[b])
                bar.update()
                if not self.dist.any(bool(pairs), self.device):    # an empty SDE window: nothing to train
                    empty += 1
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                bad = False
                chunks = [pairs[c0:c0 + cfg.micro_batch] for c0 in range(0, len(pairs), cfg.micro_batch)]
                chunks = [[q for q in ch if q[0] == k] for ch in chunks for k in sorted({q[0] for q in ch})]
                for chunk in chunks:
                    s_idx = torch.tensor([i for _, i, _ in chunk], dtype=torch.long)
                    res = self._policy_forward(ro, adv, s_idx, torch.tensor([b for _, _, b in chunk], dtype=torch.long),
                                               setups[chunk[0][2]])
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
        bar.close()
        return {**stats.summary(n_mb - skipped - empty), "updates_skipped": skipped, "updates_empty_window": empty,
                "forward_passes": self.passes["update"] - passes0,
                "model_evaluations_update": self.evaluations["update"] - evals0}

    def _policy_forward(self, ro: Rollout, adv: torch.Tensor, s_idx: torch.Tensor, b_idx: torch.Tensor,
                        setup: Setup | None = None):
        """Forward the pairs (b_idx, s_idx) and evaluate the policy step of their window on them."""
        setup = setup if setup is not None else self.plan.default()
        sampler, policy = setup.sampler, setup.policy
        bi, si = b_idx.to(self.device), s_idx.to(self.device)
        x = ro.states[bi, si]
        cond = cond_select(ro.cond, bi)
        p = self._predict(self.adapter, x, s_idx, cond, sampler)
        self.passes["update"] += 1
        self.evaluations["update"] += len(s_idx)
        p_ref = None
        if policy.needs_reference:
            with torch.no_grad():
                if self.ref_adapter is not None:
                    p_ref = self._predict(self.ref_adapter, x, s_idx, cond, sampler)
                else:
                    with self.adapter.reference():
                        p_ref = self._predict(self.adapter, x, s_idx, cond, sampler)
            self.passes["reference"] += 1
            self.evaluations["reference"] += len(s_idx)
        return policy(p, ro.pred_old[bi, si], ro.noise[bi, si], adv[bi], s_idx, pred_ref=p_ref)

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
        if self.ema is not None:
            self.ema.step(self.optimizer_steps)
        self.optimizer_steps += 1
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
    def evaluate(self, epoch: int) -> dict:
        """Held-out prompts with the deterministic sampler and a fixed noise seed (rank 0 only); with
        ``train.ema_decay``, with the EMA weights."""
        with self._ema_weights():
            return self._evaluate(epoch)

    @torch.no_grad()
    def _evaluate(self, epoch: int) -> dict:

        cfg = self.cfg.eval
        prompts = [p for p in self.eval_prompts for _ in range(cfg.images_per_prompt)]
        gen = derived_generator(cfg.seed, "eval", device=self.device)
        x = self.adapter.initial_noise(len(prompts), generator=gen)
        images = generate(self.adapter, self.eval_sampler, prompts, self.cfg.sampler.guidance_scale, x,
                          batch=self.cfg.sampler.rollout_batch, context=self._autocast)
        self.passes["eval"] += self.eval_sampler.num_steps * math.ceil(len(prompts) / self.cfg.sampler.rollout_batch)
        self.evaluations["eval"] += self.eval_sampler.num_steps * len(prompts)
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

            # a resumed run hides the events a killed session wrote after its checkpoint
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.start_epoch + 1 if self.start_epoch else None)
        if self.cfg.log.wandb and self.wandb is None:
            try:
                import wandb
            except ImportError:
                raise ConfigError("log.wandb: wandb is not installed; `pip install wandb` or set log.wandb=false") from None
            self.wandb = wandb.init(project=self.cfg.log.wandb_project, dir=str(self.run_dir),
                                    config=to_dict(self.cfg), name=self.run_dir.name, resume="allow")

    def log(self, record: dict) -> None:
        """Append ``record`` to ``metrics.jsonl`` (strict JSON: NaN/inf as ``null``, named in ``nonfinite``)
        and to TensorBoard (``train/``, ``eval/``, ``gold/``, ``time/`` tags; per-step histograms; the
        held-out grid as an image) and wandb."""
        if not self.dist.is_main:
            return
        append_record(self.metrics_path, record)
        step = record["epoch"]
        scalars = {_tb_tag(k): float(v) for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch" and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            for k in ("clipfrac_per_step", "abs_log_ratio_per_step"):
                vals = [v for v in record.get(k) or [] if v is not None and math.isfinite(v)]
                if vals:
                    self.tb.add_histogram(_tb_tag(k), torch.tensor(vals), step)
            grid = self.run_dir / "images" / f"epoch-{step:05d}.png"
            if any(k.startswith("eval_") for k in record) and grid.is_file():
                import numpy as np
                from PIL import Image

                with Image.open(grid) as im:
                    self.tb.add_image("eval/samples", np.asarray(im.convert("RGB")), step, dataformats="HWC")
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def read_metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` (a last line cut by a kill is left out)."""
        return read_records(self.metrics_path)

    # ---- main loop --------------------------------------------------------------------------
    def train(self) -> list[dict]:
        """Train epochs ``start_epoch + 1 .. epochs``, then write ``final/``; returns the metrics records.

        SIGINT/SIGTERM (main thread only) stop the run at a consistent point: during an epoch's rollout
        and reward (which change nothing kept) the epoch is dropped at once; during its update and
        evaluation it is finished first. The last completed epoch is then checkpointed (if it was not)
        and :class:`TrainingInterrupted` (exit code 130 / 143) says how to resume; a second SIGINT stops
        at once without saving the epoch under way. Under torchrun the ranks agree on when to stop.
        """
        cfg = self.cfg
        if self.finished:
            if self.dist.is_main:
                print(f"{self.run_dir}: already finished at epoch {self.start_epoch} (final/ written); "
                      f"nothing to do (extend it with `--set epochs=N`)", flush=True)
            return self.read_metrics()
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
        done = self.start_epoch  # the last completed epoch
        handlers = self._install_signal_handlers()
        try:
            try:
                for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
                    self._epoch_rng = rng_state()
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
                    done, self._epoch_rng = epoch, None
                    if self._stop_requested():
                        raise _Stop(self._stop_signal)
            except _Stop as stop:
                self._abandonable = False
                self._interrupted(stop, done)
            finally:
                self._restore_signal_handlers(handlers)
        finally:
            if self.tb is not None:
                self.tb.close()
                self.tb = None
            if self.wandb is not None:
                self.wandb.finish()
                self.wandb = None
        self._save_final()
        return self.read_metrics()

    # ---- interruption -----------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        self._stop_signal, self._signals_active = None, True
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signal_handlers(self, handlers: dict | None) -> None:
        self._signals_active = self._abandonable = False
        for s, h in (handlers or {}).items():
            signal.signal(s, h)

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:  # the second Ctrl-C
            raise _Stop(signum, forced=True)
        if self._stop_signal is None:
            self._stop_signal = signum
        if self._abandonable and not self.dist.enabled:
            raise _Stop(signum)

    def _stop_requested(self) -> bool:
        """A stop signal arrived (on any rank: a collective, so every rank calls it at the same points)."""
        if not self._signals_active:
            return False
        if self.dist.enabled:
            stop = self.dist.any(self._stop_signal is not None, self.device)
            if stop and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM  # the signal went to another rank only
            return stop
        return self._stop_signal is not None

    def _interrupted(self, stop: _Stop, done: int) -> None:
        """Checkpoint epoch ``done`` (the last completed one) unless saved or forced; raise TrainingInterrupted."""
        name = signal.Signals(stop.signum).name
        resume = self.resume_command or f"`pcpo train --resume {self.run_dir}`"
        if self.dist.enabled and not self.resume_command:  # the same number of processes and launcher
            resume = (f"the same launch command ({self.dist.world_size} processes) running "
                      f"`train --resume {self.run_dir}`")
        if stop.forced:
            at = self._saved_epoch
            msg = (f"stopped by a second {name} during epoch {done + 1}, which is not saved; {resume} continues "
                   + (f"after epoch {at}" if at else "from the start"))
        elif done > 0:
            msg = f"stopped by {name} after epoch {done} (checkpoints/epoch-{done:06d}); continue with {resume}"
            if self._saved_epoch != done:
                if self._epoch_rng is not None:  # undo what the dropped epoch drew from the global RNGs
                    set_rng_state(*self._epoch_rng)
                try:
                    self.save(done)
                    self._plot_curves()
                except _Stop:
                    at = self._saved_epoch
                    msg = (f"stopped by a second {name} while saving epoch {done}; {resume} continues "
                           + (f"after epoch {at}" if at else "from the start"))
        else:
            msg = f"stopped by {name} during epoch 1, before anything was trained; {resume} starts it again"
        if not stop.forced:
            self.dist.barrier()
        raise TrainingInterrupted(msg, stop.signum, self._saved_epoch) from None

    def train_epoch(self, epoch: int) -> dict:
        """Rollout, reward, advantages, update. A batch with a non-finite reward is skipped before the
        advantage estimator sees it (its state, e.g. DDPO's per-prompt buffers, is unchanged) and counted;
        its ``reward_mean``/``reward_std`` are over the finite rewards, ``rewards_nonfinite`` counts the rest."""
        t0 = time.perf_counter()
        evals0 = dict(self.evaluations)
        self._abandonable = self._signals_active  # a stop signal may drop the epoch until the rewards are in
        ro, prompts, keys = self.rollout(epoch)
        t1 = time.perf_counter()
        rewards_local = call_reward(self.reward_fn, ro.images, ro.prompts,
                                    self.train_prompt_set.metadata_for(ro.prompts)).float()
        t2 = time.perf_counter()
        self._abandonable = False
        if self._stop_requested():
            raise _Stop(self._stop_signal)
        rewards = self.dist.all_gather_cat(rewards_local.to(self.device)).cpu()  # identical on every rank
        finite = torch.isfinite(rewards)
        adv = None
        if bool(finite.all()):
            rewards, adv = self.compute_advantages(rewards_local, keys, prompts)
            upd = self.update(ro, adv, epoch)
        else:
            self._nonfinite("reward")
            upd = {"updates_skipped": 1}
        t3 = time.perf_counter()
        ok = rewards[finite]
        record = {
            "epoch": epoch,
            "reward_mean": float(ok.mean()) if ok.numel() else None,
            "reward_std": float(ok.std(unbiased=False)) if ok.numel() else None,
            "rewards_nonfinite": int((~finite).sum()),
            "adv_abs_mean": float(adv.abs().mean()) if adv is not None else None,
            **upd,
            "nonfinite_total": self.nonfinite_total,
            "time_rollout_s": t1 - t0,
            "time_reward_s": t2 - t1,
            "time_update_s": t3 - t2,
            "time_s": t3 - t0,
            # model evaluations of the epoch on all ranks (rows: one sample at one step, CFG counted once)
            "passes": self.dist.world_size * sum(self.evaluations[k] - evals0[k] for k in ("rollout", "update", "reference")),
        }
        if self.cfg.log.per_sample:
            record["rewards"] = rewards.tolist()
            record["advantages"] = (self.dist.all_gather_cat(adv.to(self.device)).cpu().tolist()
                                    if adv is not None else None)
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

        out = self.run_dir / "curves.png"
        tmp = self.run_dir / f".curves.tmp-{os.getpid()}.png"
        try:
            plot_training(self.read_metrics(), str(tmp))
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)

    def _save_final(self) -> None:
        """Write ``final/`` atomically (a temporary folder renamed into place), then drop the fallback
        checkpoint: a finished run keeps its newest ``checkpoint.keep_last - 1`` (at least one, so that
        ``--resume --set epochs=N`` can extend it). With ``train.ema_decay`` the final weights are the EMA's."""
        with self._ema_weights():
            self._write_final()

    def _ema_weights(self):
        """The EMA weights inside the block (Flow-GRPO evaluates and saves with them); a no-op without EMA."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def _write_final(self) -> None:
        state = self._model_state()
        if not self.dist.is_main:
            return
        out = self.run_dir / "final"
        tmp = self.run_dir / f".tmp-final-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            save = getattr(self.adapter, "save_trained", None)
            if save is not None and not self.fsdp:
                save(tmp)
            else:
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / "model.safetensors"))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if out.exists():
            remove_dir(out)
        os.replace(tmp, out)
        prune_checkpoints(self.run_dir, max(1, self.cfg.checkpoint.keep_last - 1))


def _epoch_of(ckpt: Path | None) -> int:
    return -1 if ckpt is None else int(ckpt.name.rsplit("-", 1)[1])


def _tb_tag(key: str) -> str:
    """TensorBoard tag of a metrics key: ``eval/...``, ``gold/...``, ``time/...`` or ``train/...``."""
    if key == "time_s":
        return "time/epoch_s"
    for prefix in ("eval", "gold", "time"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return f"train/{key}"
