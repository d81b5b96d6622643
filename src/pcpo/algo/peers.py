"""The per-step changes other flow-GRPO methods make to the policy step, as registered ratio transforms
and loss weights of :mod:`pcpo.algo.step` (``train.ratio_transform``, ``train.loss_weight``).

Notation (docs/method.md §2): pair j at step i, ``lin = ⟨Δp, z⟩`` and ``sq = ‖Δp‖²`` (means over latent
elements), w the step's credit weight (``native``: c_i/s_i), s_i the step std, Δt_i the step length; the
exact log-ratio is ``log ρ = −[w·lin + ½·w²·sq]``.

Ratio transforms
----------------
``ratio_norm`` — GRPO-Guard's RatioNorm (arXiv 2510.22319; Flow-GRPO ``train_sd3_GRPO_Guard.py``,
VeRL-Omni ``GRPOGuardLoss``, Pref-GRPO ``train_flux.py``). The references add back the mean-drift term
``‖μ − μ_old‖²/(2s²) = ½·w²·sq`` (w = c/s) and scale by the step std s = g·sqrt(Δt)::

    log ρ' = s_i · (log ρ + ½·w²·sq) = −s_i·w·⟨Δp, z⟩          (bias="pair")

Option ``bias``: ``"pair"`` (VeRL-Omni, Pref-GRPO: the drift of each sample) or ``"step_mean"``
(Flow-GRPO's script: its ``mean(dim=tuple(range(1, log_prob.ndim)))`` on a [B] tensor reduces over the
batch too, so the drift is the mean over the step's samples; here: over the pairs of that step in the
call, ``log ρ' = s_i·(log ρ + ½·w²·mean_step(sq))``). The transform works on the exact log-ratio built
from ``lin``, ``sq`` and w, so ``train.linear_only`` does not change it. The references use it with the
native weights, the clipped objective (ξ = 2e-6 in Flow-GRPO's OCR config) and the ``inv_dt`` weight.

``flow_grpo_cps`` — Flow-GRPO's CPS log-prob is ``−mean((x' − μ)²)`` with the variance dropped
(``sd3_sde_with_logprob.py``, ``sde_type="cps"``), so its log-ratio is ``2·s_i²·log ρ``; this transform
applies that factor (use with ``CPSSampler`` and native weights to train exactly as Flow-GRPO's CPS).

Loss weights
------------
``inv_dt`` — GRPO-Guard's gradient reweighting: the step's policy loss is divided by
``sqrt_dt.mean()**2 = Δt_i`` (all three references), i.e. λ_i = 1/Δt_i, not normalised (option
``normalize=True``: divided by its mean over the stochastic steps, an ablation). It multiplies the
policy terms only (the KL term is added after the division in the references, as in the policy step).

``tempflow`` — TempFlow-GRPO's noise-aware weight (``train_sd3_pr.py``: ``−2.25·std_dev_t·A·ρ`` with
``std_dev_t = g·sqrt(Δt)`` as returned by its ``sde_step_with_logprob``): λ_i = coef·s_i, ``coef`` 2.25
(SD3.5-M; its FLUX script uses 1.73). Option ``scale="g"``: λ_i = coef·g_i = coef·s_i/sqrt(Δt_i), the
alternative its step function documents (returning the std without sqrt(Δt), with β ×10 for the KL).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .step import LOSS_WEIGHTS, RATIO_TRANSFORMS, RatioInputs, StepTable

RATIO_NORM_BIAS = ("pair", "step_mean")


def _per_pair(values: torch.Tensor, inputs: RatioInputs, like: torch.Tensor) -> torch.Tensor:
    return values[inputs.step_index.long().cpu()].to(device=like.device, dtype=like.dtype)


def step_means(values: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
    """For each pair, the mean of ``values`` over the pairs with the same step index ([P])."""
    idx = step_index.to(values.device).long()
    _, inverse = torch.unique(idx, return_inverse=True)
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    sums = torch.zeros(k, dtype=values.dtype, device=values.device).index_add(0, inverse, values)
    counts = torch.zeros(k, dtype=values.dtype, device=values.device).index_add(0, inverse, torch.ones_like(values))
    return (sums / counts)[inverse]


@RATIO_TRANSFORMS.register("ratio_norm", options=("bias",))
def ratio_norm(log_ratio: torch.Tensor, inputs: RatioInputs, bias: str = "pair") -> torch.Tensor:
    """GRPO-Guard's RatioNorm: ``s_i·(log ρ + drift)``, drift ½·w²·sq per pair or its mean over the step."""
    if bias not in RATIO_NORM_BIAS:
        raise ConfigError(f"train.ratio_transform_options.bias: must be one of {', '.join(RATIO_NORM_BIAS)}, "
                          f"got {bias!r}")
    lin, sq = inputs.lin, inputs.sq
    w = torch.as_tensor(inputs.weight, dtype=lin.dtype, device=lin.device)
    s = _per_pair(inputs.table.std, inputs, lin)
    exact = -(w * lin + 0.5 * w**2 * sq)
    drift = 0.5 * w**2 * (sq if bias == "pair" else step_means(sq, inputs.step_index))
    return s * (exact + drift)


@RATIO_TRANSFORMS.register("flow_grpo_cps", options=())
def flow_grpo_cps(log_ratio: torch.Tensor, inputs: RatioInputs) -> torch.Tensor:
    """Flow-GRPO's CPS log-ratio (variance dropped from the log-prob): ``2·s_i²·log ρ``."""
    s = _per_pair(inputs.table.std, inputs, log_ratio)
    return 2 * s**2 * log_ratio


@LOSS_WEIGHTS.register("inv_dt", options=("normalize",))
def inv_dt(table: StepTable, normalize: bool = False) -> torch.Tensor:
    """GRPO-Guard: λ_i = 1/Δt_i (``normalize``: divided by its mean over the stochastic steps)."""
    lam = 1.0 / table.dt.double()
    if normalize:
        lam = lam / lam[table.stochastic].mean()
    return lam


TEMPFLOW_SCALES = ("std", "g")


@LOSS_WEIGHTS.register("tempflow", options=("coef", "scale"))
def tempflow_weight(table: StepTable, coef: float = 2.25, scale: str = "std") -> torch.Tensor:
    """TempFlow-GRPO: λ_i = coef·s_i (``scale="g"``: coef·s_i/sqrt(Δt_i))."""
    if scale not in TEMPFLOW_SCALES:
        raise ConfigError(f"train.loss_weight_options.scale: must be one of {', '.join(TEMPFLOW_SCALES)}, "
                          f"got {scale!r}")
    coef = float(coef)
    if not coef > 0:
        raise ConfigError(f"train.loss_weight_options.coef: must be > 0, got {coef!r}")
    s = table.std.double()
    return coef * (s if scale == "std" else s / table.dt.double().sqrt())
