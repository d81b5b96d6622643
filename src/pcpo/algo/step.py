"""The policy step: the paper's update for one batch of (sample, timestep) pairs, as a pure function.

:class:`PolicyStep` is built once per run from the sampler and the run's policy settings; calling it
with the new predictions, the stored rollout terms, the advantages and the step indices returns the
loss plus per-pair masks and metrics (docs/method.md §2, §3 and §8)::

    log ρ_i   = −[ w_i·⟨Δp, z⟩ + ½·w_i²·‖Δp‖² ]        w = the credit scheme's weight of step i
    log ρ_i  ← T(log ρ_i)                              a registered ratio transform (default: none)
    loss      = mean_pairs( λ_i · objective(log ρ_i, A) ) + β · mean_pairs( KL_i )

with λ a registered per-step loss weight (default: none, i.e. 1) and the KL term's own declared weight.
Nothing here touches a model, an optimizer or a process group: the trainer chunks pairs, calls the
step, backpropagates ``loss`` and aggregates :class:`StepResult` with :class:`StepStats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..registry import Registry
from .credit import credit_options, credit_weights
from .logprob import log_ratio_from_terms, ratio_terms
from .objectives import KL_TERMS, OBJECTIVES


@dataclass(frozen=True)
class StepTable:
    """Per-step schedule quantities of a sampler (float64 [N]); what transforms and weights see.

    t: the sampler time of each step (flow: t in [0, 1]; DDIM: the training timestep).
    dt: the step's share of the trajectory.  std: the transition std s_i (0 = deterministic).
    native: the native weight c_i/s_i (``inf`` at deterministic steps).  stochastic: bool [N].
    """

    t: torch.Tensor
    dt: torch.Tensor
    std: torch.Tensor
    native: torch.Tensor
    stochastic: torch.Tensor

    @classmethod
    def from_sampler(cls, sampler) -> StepTable:
        _, _, s = sampler.coefficients()
        return cls(t=sampler.timesteps.double().clone(), dt=sampler.dt(), std=s,
                   native=sampler.native_weights(), stochastic=sampler.stochastic.clone())

    @property
    def num_steps(self) -> int:
        return int(self.dt.numel())


@dataclass
class RatioInputs:
    """What a ratio transform may use for the pairs of one call ([P] each, except ``table``)."""

    lin: torch.Tensor
    sq: torch.Tensor
    weight: torch.Tensor
    step_index: torch.Tensor
    table: StepTable


RatioTransform = Callable[..., torch.Tensor]   # (log_ratio [P], RatioInputs, **options) -> [P]
LossWeight = Callable[..., torch.Tensor]       # (StepTable, **options) -> float64 [N]

RATIO_TRANSFORMS: Registry[RatioTransform] = Registry("ratio transform", field="train.ratio_transform")
LOSS_WEIGHTS: Registry[LossWeight] = Registry("loss weight", field="train.loss_weight")


@RATIO_TRANSFORMS.register("none")
def no_transform(log_ratio: torch.Tensor, inputs: RatioInputs) -> torch.Tensor:
    """The log-ratio as it is."""
    return log_ratio


@LOSS_WEIGHTS.register("none")
def no_weight(table: StepTable) -> torch.Tensor | None:
    """Every step's terms count once (``None``: the objective's mean is used unweighted)."""
    return None


@dataclass
class StepResult:
    """Output of one :class:`PolicyStep` call.

    loss: the differentiable scalar (objective plus β·KL; ``metrics["loss"]`` is its value).  log_ratio: the log-ratio the objective saw [P] (detached).
    native_log_ratio: the exact log-ratio with the native weights [P] (detached; what the baselines
    would compute).  flat: pairs with no gradient from the objective [P].  clipped: the logged clip
    statistic [P].  metrics: scalar floats (loss, clipfrac, zero_grad_frac, abs_log_ratio, approx_kl,
    and kl when the KL term is on).
    """

    loss: torch.Tensor
    log_ratio: torch.Tensor
    native_log_ratio: torch.Tensor
    flat: torch.Tensor
    clipped: torch.Tensor
    metrics: dict = field(default_factory=dict)


class PolicyStep:
    """The run's policy update rule for a fixed sampler.

    Args:
        sampler: the rollout sampler (its schedule gives the step weights).
        objective: registered objective name.  credit: registered credit scheme (None = the
        objective's default).  credit_opts: values of the options credit schemes declare (``w_star``).
        clip_range: ξ.  linear_only: drop the quadratic term of the log-ratio.
        kl_beta: weight of the KL term (0 = off).  kl_form: registered KL term.
        ratio_transform / loss_weight: registered per-step transform of log ρ and per-step loss
        weight, with their ``*_options``.
    """

    def __init__(self, sampler, objective: str = "pcpo", credit: str | None = None,
                 credit_opts: dict | None = None, clip_range: float = 1e-4, linear_only: bool = False,
                 kl_beta: float = 0.0, kl_form: str = "pcpo", ratio_transform: str = "none",
                 ratio_transform_options: dict | None = None, loss_weight: str = "none",
                 loss_weight_options: dict | None = None):
        self.objective = OBJECTIVES.get(objective)
        self.credit = credit or self.objective.default_credit
        opts = dict(credit_opts or {})
        self.table = StepTable.from_sampler(sampler)
        self.weights = credit_weights(self.credit, sampler, **credit_options(self.credit, opts)).float()
        self.native = credit_weights("native", sampler).float()
        self.clip_range = float(clip_range)
        self.quadratic = not linear_only
        self.kl_beta = float(kl_beta)
        self.kl = KL_TERMS.get(kl_form)
        kl_credit = KL_TERMS.meta(kl_form)["weight"]
        self.kl_weights = credit_weights(kl_credit, sampler, **credit_options(kl_credit, opts)).float()
        self.dt = sampler.dt().float()
        self.transform = RATIO_TRANSFORMS.get(ratio_transform)
        self.transform_options = dict(ratio_transform_options or {})
        lw = LOSS_WEIGHTS.get(loss_weight)(self.table, **(loss_weight_options or {}))
        self.loss_weights = None if lw is None else torch.as_tensor(lw, dtype=torch.float64).float()
        self.num_steps = self.table.num_steps

    @classmethod
    def from_config(cls, train_cfg, sampler) -> PolicyStep:
        """From a run's ``train`` config section."""
        t = train_cfg
        return cls(sampler, objective=t.objective, credit=t.credit, credit_opts={"w_star": t.w_star},
                   clip_range=t.clip_range, linear_only=t.linear_only, kl_beta=t.kl_beta, kl_form=t.kl_form,
                   ratio_transform=getattr(t, "ratio_transform", "none"),
                   ratio_transform_options=getattr(t, "ratio_transform_options", None),
                   loss_weight=getattr(t, "loss_weight", "none"),
                   loss_weight_options=getattr(t, "loss_weight_options", None))

    @property
    def needs_reference(self) -> bool:
        """Whether calls need ``pred_ref`` (the KL term is on)."""
        return self.kl_beta > 0

    def __call__(self, pred: torch.Tensor, pred_old: torch.Tensor, noise_old: torch.Tensor,
                 advantages: torch.Tensor, step_index: torch.Tensor,
                 pred_ref: torch.Tensor | None = None) -> StepResult:
        """One batch of pairs: ``pred`` (with grad), the rollout's ``pred_old`` and ``noise_old``
        (canonical parametrisation, [P, ...]), ``advantages`` [P], ``step_index`` [P] (long) and,
        with the KL term on, the reference prediction ``pred_ref``."""
        dev = pred.device
        idx = step_index.detach().cpu().long()
        lin, sq = ratio_terms(pred, pred_old, noise_old)
        w = self.weights[idx].to(dev)
        log_ratio = log_ratio_from_terms(lin, sq, w, quadratic=self.quadratic)
        log_ratio = self.transform(log_ratio, RatioInputs(lin, sq, w, idx, self.table), **self.transform_options)
        A = advantages.to(dev)
        terms = self.objective.terms(log_ratio, A, self.clip_range)
        loss = terms.mean() if self.loss_weights is None else (self.loss_weights[idx].to(dev) * terms).mean()
        native_lr = log_ratio_from_terms(lin.detach(), sq.detach(), self.native[idx].to(dev))
        lr = log_ratio.detach()
        flat = self.objective.flat_mask(lr, A, self.clip_range)
        clipped = self.objective.clip_mask(lr, A, self.clip_range)
        lrd = lr.double()
        metrics = {"clipfrac": float(clipped.double().mean()),
                   "zero_grad_frac": float(flat.double().mean()), "abs_log_ratio": float(lrd.abs().mean()),
                   "approx_kl": float(0.5 * (lrd**2).mean())}
        if self.kl_beta > 0:
            if pred_ref is None:
                raise ValueError("PolicyStep: the KL term is on (kl_beta > 0) but no pred_ref was given")
            _, sq_ref = ratio_terms(pred, pred_ref, torch.zeros_like(pred))
            kl = self.kl(sq_ref, self.kl_weights[idx].to(dev), self.dt[idx].to(dev)).mean()
            loss = loss + self.kl_beta * kl
            metrics["kl"] = float(kl.detach())
        metrics["loss"] = float(loss.detach())
        return StepResult(loss, lr, native_lr.detach(), flat, clipped, metrics)


class StepStats:
    """Aggregates :class:`StepResult` over an update: pair-weighted scalar means per minibatch and
    per-step fractions (clip, zero-gradient, |native log ρ|)."""

    SCALARS = ("loss", "clipfrac", "abs_log_ratio", "approx_kl")

    def __init__(self, num_steps: int):
        self.sums = {k: [] for k in self.SCALARS}
        self.kl: list[float] = []
        self.kl_first: float | None = None
        self.per_step = {k: torch.zeros(num_steps, dtype=torch.float64) for k in ("clip", "zero_grad", "abslr", "count")}
        self.grad_norms: list[float] = []
        self.lr_before_max: float | None = None
        self._mb_lr_max = 0.0

    def add(self, res: StepResult, step_index: torch.Tensor, share: float) -> None:
        """Record one call; ``share`` = its pairs / the minibatch's pairs."""
        idx = step_index.detach().cpu().long()
        for k in self.SCALARS:
            self.sums[k].append(res.metrics[k] * share)
        if "kl" in res.metrics:
            self.kl.append(res.metrics["kl"])
            if self.kl_first is None:
                self.kl_first = res.metrics["kl"]
        ps = self.per_step
        ps["clip"].index_add_(0, idx, res.clipped.double().cpu())
        ps["zero_grad"].index_add_(0, idx, res.flat.double().cpu())
        ps["abslr"].index_add_(0, idx, res.native_log_ratio.abs().double().cpu())
        ps["count"].index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
        self._mb_lr_max = max(self._mb_lr_max, float(res.native_log_ratio.abs().max()))

    def end_minibatch(self, first: bool) -> None:
        """Close a minibatch; the first one's max |log ρ| is ``log_ratio_before_update_max``."""
        if first and self.lr_before_max is None:
            self.lr_before_max = self._mb_lr_max
        self._mb_lr_max = 0.0

    def summary(self, minibatches: int) -> dict:
        n = max(1, minibatches)
        cnt = self.per_step["count"]

        def mean(v):
            return sum(v) / n if v else float("nan")

        def per_step(v):
            return [float(x) if c > 0 else None for x, c in zip((v / cnt.clamp(min=1)).tolist(), cnt.tolist())]

        return {
            **{k: mean(self.sums[k]) for k in self.SCALARS},
            "kl": sum(self.kl) / len(self.kl) if self.kl else 0.0,
            "kl_first": self.kl_first,
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else float("nan"),
            "clipfrac_per_step": per_step(self.per_step["clip"]),
            "zero_grad_frac": float(self.per_step["zero_grad"].sum() / cnt.sum().clamp(min=1)),
            "zero_grad_frac_per_step": per_step(self.per_step["zero_grad"]),
            "abs_log_ratio_per_step": per_step(self.per_step["abslr"]),
            "log_ratio_before_update_max": self.lr_before_max,
            "trained_pairs": int(cnt.sum()),
        }
