"""Advantage estimators (docs/method.md §3), each with serialisable state for exact resume.

* ``group``: ``(r − mean_g)/(std_g + eps)`` within each group (population std), DanceGRPO/GRPO style.
* ``per_prompt_tracker``: DDPO's per-prompt stat tracker — a buffer of the last ``buffer_size`` rewards
  per prompt; below ``min_count`` entries the batch statistics are used.
* ``prompt_mean_global_std``: Flow-GRPO — per-prompt mean of the current batch, global std of all
  rewards.

All clip the result to ``±adv_clip`` (A_max = 5). Estimators take ``(rewards [B], keys)`` where ``keys``
are the group ids or prompt strings, with rewards already gathered across ranks. Non-finite rewards are
refused (``ValueError``) before any state changes: the trainer skips such a batch without showing it to
the estimator, so a tracker's buffers hold only finite rewards.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

from ..registry import Registry


def _population_std(x: torch.Tensor) -> torch.Tensor:
    return x.std(unbiased=False) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)


def _groups(keys: Sequence) -> dict:
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups


def clip_advantages(adv: torch.Tensor, adv_clip: float) -> torch.Tensor:
    if not adv_clip > 0:
        raise ValueError(f"adv_clip must be > 0, got {adv_clip!r}")
    return adv.clamp(-adv_clip, adv_clip)


class AdvantageEstimator:
    """Base class. ``group_by`` says what identifies a group: ``"group"`` (the epoch's group ids) or
    ``"prompt"`` (the prompt string, across epochs); ``options`` maps constructor keywords to the
    ``train.*`` config fields that set them."""

    name = "base"
    group_by = "group"
    options: dict[str, str] = {}

    def __init__(self, adv_clip: float = 5.0, eps: float = 1e-8):
        if not adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0, got {adv_clip!r}")
        self.adv_clip, self.eps = float(adv_clip), float(eps)

    def __call__(self, rewards: torch.Tensor, keys: Sequence) -> torch.Tensor:
        rewards = torch.as_tensor(rewards, dtype=torch.float64).flatten()
        if len(keys) != rewards.numel():
            raise ValueError(f"advantages: {rewards.numel()} rewards but {len(keys)} keys")
        if not bool(torch.isfinite(rewards).all()):
            bad = int((~torch.isfinite(rewards)).sum())
            raise ValueError(f"advantages: {bad} of {rewards.numel()} rewards are NaN/inf; skip the batch "
                             "instead (the estimator's state must not see it)")
        return clip_advantages(self._compute(rewards, list(keys)), self.adv_clip).float()

    def _compute(self, rewards: torch.Tensor, keys: list) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GroupAdvantage(AdvantageEstimator):
    """Normalise within each group: ``(r − mean)/(std + eps)``, population std."""

    name = "group"

    def _compute(self, rewards, keys):
        adv = torch.empty_like(rewards)
        for idx in _groups(keys).values():
            r = rewards[idx]
            adv[idx] = (r - r.mean()) / (_population_std(r) + self.eps)
        return adv


class PromptMeanGlobalStd(AdvantageEstimator):
    """Flow-GRPO: subtract each prompt's batch mean, divide by the global (population) std."""

    name = "prompt_mean_global_std"

    def __init__(self, adv_clip: float = 5.0, eps: float = 1e-4):
        super().__init__(adv_clip, eps)

    def _compute(self, rewards, keys):
        adv = torch.empty_like(rewards)
        std = _population_std(rewards)
        for idx in _groups(keys).values():
            adv[idx] = rewards[idx] - rewards[idx].mean()
        return adv / (std + self.eps)


class PerPromptStatTracker(AdvantageEstimator):
    """DDPO's tracker: per-prompt buffers of recent rewards; batch statistics below ``min_count``."""

    name = "per_prompt_tracker"
    group_by = "prompt"
    options = {"buffer_size": "tracker_buffer", "min_count": "tracker_min_count"}

    def __init__(self, adv_clip: float = 5.0, eps: float = 1e-6, buffer_size: int = 32, min_count: int = 16):
        super().__init__(adv_clip, eps)
        if buffer_size <= 0 or min_count <= 0:
            raise ValueError(f"buffer_size and min_count must be > 0, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count = int(buffer_size), int(min_count)
        self.buffers: dict[str, deque] = {}

    def _compute(self, rewards, keys):
        adv = torch.empty_like(rewards)
        batch_mean, batch_std = rewards.mean(), _population_std(rewards)
        for key, idx in _groups(keys).items():
            buf = self.buffers.setdefault(str(key), deque(maxlen=self.buffer_size))
            buf.extend(rewards[idx].tolist())
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                hist = torch.tensor(list(buf), dtype=torch.float64)
                mean, std = hist.mean(), _population_std(hist)
            adv[idx] = (rewards[idx] - mean) / (std + self.eps)
        return adv

    def state_dict(self) -> dict:
        return {"buffers": {k: list(v) for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {
            k: deque(v, maxlen=self.buffer_size) for k, v in state.get("buffers", {}).items()
        }


ADVANTAGES: Registry[type[AdvantageEstimator]] = Registry("advantage estimator", field="train.advantage")
for _cls in (GroupAdvantage, PromptMeanGlobalStd, PerPromptStatTracker):
    ADVANTAGES.add(_cls.name, _cls)


def build_advantage(name: str, **kwargs) -> AdvantageEstimator:
    return ADVANTAGES.get(name)(**kwargs)


def advantage_from_config(train_cfg) -> AdvantageEstimator:
    """The estimator ``train.advantage`` names, with the options it declares read from ``train_cfg``."""
    cls = ADVANTAGES.get(train_cfg.advantage)
    return cls(adv_clip=train_cfg.adv_clip, **{k: getattr(train_cfg, f) for k, f in cls.options.items()})
