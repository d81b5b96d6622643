"""The peers' per-step changes (GRPO-Guard, TempFlow-GRPO, Flow-GRPO-Fast, MixGRPO, MixGRPO-Flash) against
transcriptions of their reference arithmetic written out here, on random float64 inputs and on the
published configurations.

Deliberate differences from the reference code, each named where tested:
* random draws (Flow-GRPO-Fast's window start, MixGRPO's ``random`` strategy) come from the run's torch
  generator instead of Python's ``random`` / an unseeded numpy generator: same support and law;
* MixGRPO-Flash's grid is computed in float64 (MixGRPO: float32 torch);
* GRPO-Guard's mean-drift term is per sample by default (VeRL-Omni, Pref-GRPO); Flow-GRPO's script
  averages it over the step's batch (``bias="step_mean"``).
"""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from pcpo.algo import peers  # noqa: F401  (registers the entries)
from pcpo.algo.logprob import ratio_terms
from pcpo.algo.step import LOSS_WEIGHTS, RATIO_TRANSFORMS, PolicyStep, RatioInputs, StepTable
from pcpo.algo.windows import WINDOWS, Window, window_at
from pcpo.errors import ConfigError
from pcpo.samplers.flow import SD3_SCHEDULER_CONFIG, FlowSampler, flash_grid, pipeline_grid

F64 = torch.float64


def sd35m(**kw):
    """Flow-GRPO's SD3.5-M sampler: 10 steps on the pipeline's grid, a = 0.7."""
    return FlowSampler(10, eta=0.7, noise="flow-grpo", shift=3.0, grid="pipeline", **kw)


def scheduler_sigmas(n=10):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(n)
    return sched.sigmas      # float32, as the references index them


# ---- Flow-GRPO's sde_step_with_logprob (sde_type="sde"), transcribed ------------------------------

def ref_sde_step(sigmas, j, sample, model_output, noise_level=0.7, prev_sample=None, noise=None):
    """Returns (prev_sample, log_prob [B], prev_sample_mean, std_dev_t, sqrt(-dt)), float64."""
    sigma = sigmas[j].double()
    sigma_prev = sigmas[j + 1].double()
    sigma_max = sigmas[1].double()
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    mean = sample * (1 + std_dev_t**2 / (2 * sigma) * dt) + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    if prev_sample is None:
        prev_sample = mean + std_dev_t * torch.sqrt(-1 * dt) * noise
    log_prob = (-((prev_sample - mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
                - torch.log(std_dev_t * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi, dtype=F64))))
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean, std_dev_t, torch.sqrt(-1 * dt)


def random_batch(gen, b=6, shape=(3, 4, 4), scale=0.05):
    x = torch.randn((b, *shape), generator=gen, dtype=F64)
    v_old = torch.randn((b, *shape), generator=gen, dtype=F64)
    v_new = v_old + scale * torch.randn((b, *shape), generator=gen, dtype=F64)
    z = torch.randn((b, *shape), generator=gen, dtype=F64)
    return x, v_old, v_new, z


def inputs_for(sampler, j, v_new, v_old, z, weight=None):
    lin, sq = ratio_terms(v_new, v_old, z)
    table = StepTable.from_sampler(sampler)
    w = sampler.native_weights()[j] if weight is None else weight
    idx = torch.full((v_new.shape[0],), j, dtype=torch.long)
    return RatioInputs(lin, sq, torch.full_like(lin, float(w)), idx, table), lin, sq


# ---------------------------------------------------------------- GRPO-Guard: RatioNorm and 1/Δt

@pytest.mark.parametrize("j", [0, 3, 8])
def test_ratio_norm_equals_verl_omni_grpo_guard(j):
    """VeRL-Omni's GRPOGuardLoss / Pref-GRPO: ratio = exp((lp − lp_old + mean((μ−μ_old)²)/(2·scale²))·scale)."""
    gen = torch.Generator().manual_seed(j)
    sigmas = scheduler_sigmas()
    x, v_old, v_new, z = random_batch(gen)
    nxt, lp_old, mu_old, _, _ = ref_sde_step(sigmas, j, x, v_old, noise=z)
    _, lp, mu, std_dev_t, sqrt_dt = ref_sde_step(sigmas, j, x, v_new, prev_sample=nxt)
    scale = sqrt_dt.mean() * std_dev_t.mean()
    bias = (mu - mu_old).pow(2).mean(dim=(1, 2, 3)) / (2 * scale**2)
    ref = (lp - lp_old + bias) * scale

    sampler = FlowSampler.from_diffusers_sigmas(sigmas, eta=0.7)
    inp, lin, sq = inputs_for(sampler, j, v_new, v_old, z)
    ours = RATIO_TRANSFORMS.get("ratio_norm")(torch.zeros_like(lin), inp)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    # It is the linear term scaled by the step std: −s·w·⟨Δp, z⟩ = −c·⟨Δp, z⟩.
    _, c, _ = sampler.coefficients()
    torch.testing.assert_close(ours, -c[j] * lin, rtol=1e-9, atol=1e-12)


def test_ratio_norm_step_mean_equals_flow_grpo_script():
    """Flow-GRPO's train_sd3_GRPO_Guard.py: ``.mean(dim=tuple(range(1, log_prob.ndim)))`` on the [B, ...]
    drift with log_prob of shape [B] reduces over everything, batch included."""
    j = 4
    gen = torch.Generator().manual_seed(11)
    sigmas = scheduler_sigmas()
    x, v_old, v_new, z = random_batch(gen)
    nxt, lp_old, mu_old, _, _ = ref_sde_step(sigmas, j, x, v_old, noise=z)
    _, lp, mu, std_dev_t, sqrt_dt = ref_sde_step(sigmas, j, x, v_new, prev_sample=nxt)
    sigma_t = std_dev_t.mean()
    bias = (mu - mu_old).pow(2).mean(dim=tuple(range(1, lp.ndim)))
    assert bias.ndim == 0                                   # the reduction the script really does
    bias = bias / (2 * (sqrt_dt.mean() * sigma_t) ** 2)
    ref = (lp - lp_old + bias) * (sqrt_dt.mean() * sigma_t)

    sampler = FlowSampler.from_diffusers_sigmas(sigmas, eta=0.7)
    inp, lin, _ = inputs_for(sampler, j, v_new, v_old, z)
    ours = RATIO_TRANSFORMS.get("ratio_norm")(torch.zeros_like(lin), inp, bias="step_mean")
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    pair = RATIO_TRANSFORMS.get("ratio_norm")(torch.zeros_like(lin), inp, bias="pair")
    assert not torch.allclose(ours, pair)                   # the two reductions really differ


def test_ratio_norm_step_mean_groups_by_step():
    """With several steps in one call, the drift is averaged within each step only."""
    sampler = sd35m()
    table = StepTable.from_sampler(sampler)
    lin = torch.tensor([0.1, -0.2, 0.3, 0.05], dtype=F64)
    sq = torch.tensor([1.0, 3.0, 2.0, 6.0], dtype=F64)
    idx = torch.tensor([2, 2, 5, 5])
    w = sampler.native_weights()[idx]
    out = RATIO_TRANSFORMS.get("ratio_norm")(torch.zeros(4, dtype=F64), RatioInputs(lin, sq, w, idx, table), bias="step_mean")
    s = table.std[idx]
    mean_sq = torch.tensor([2.0, 2.0, 4.0, 4.0], dtype=F64)
    torch.testing.assert_close(out, s * (-(w * lin + 0.5 * w**2 * sq) + 0.5 * w**2 * mean_sq))


def test_inv_dt_on_flow_grpo_sd35m():
    """``policy_loss / sqrt_dt.mean()**2`` with sqrt_dt = sqrt(σ_j − σ_{j+1}) of the pipeline's sigmas."""
    sigmas = scheduler_sigmas().double()
    ref = torch.stack([1 / torch.sqrt(sigmas[j] - sigmas[j + 1]) ** 2 for j in range(10)])
    lam = LOSS_WEIGHTS.get("inv_dt")(StepTable.from_sampler(sd35m()))
    torch.testing.assert_close(lam, ref)
    assert lam[-1].item() == pytest.approx(1 / 0.0089286, rel=1e-4)     # the last, shortest step dominates
    assert lam[0].item() == pytest.approx(1 / (1 - 0.9601293), rel=1e-5)
    norm = LOSS_WEIGHTS.get("inv_dt")(StepTable.from_sampler(sd35m()), normalize=True)
    assert norm.mean().item() == pytest.approx(1.0) and torch.allclose(norm / norm[0], lam / lam[0])


def test_grpo_guard_policy_step_equals_reference_loss():
    """The clipped objective on RatioNorm with λ = 1/Δt: the policy step's loss over two steps (equal pair
    counts) is the mean of the reference's per-step losses ``mean(max(−Aρ, −A·clip(ρ))) / Δt``."""
    gen = torch.Generator().manual_seed(5)
    sigmas = scheduler_sigmas()
    sampler = FlowSampler.from_diffusers_sigmas(sigmas, eta=0.7)
    clip = 2e-6
    preds, olds, zs, advs, idxs, ref_losses = [], [], [], [], [], []
    for j in (1, 6):
        x, v_old, v_new, z = random_batch(gen, scale=2e-5)
        adv = torch.randn(x.shape[0], generator=gen, dtype=F64)
        nxt, lp_old, mu_old, _, _ = ref_sde_step(sigmas, j, x, v_old, noise=z)
        _, lp, mu, std_dev_t, sqrt_dt = ref_sde_step(sigmas, j, x, v_new, prev_sample=nxt)
        scale = sqrt_dt.mean() * std_dev_t.mean()
        ratio = torch.exp((lp - lp_old + (mu - mu_old).pow(2).mean(dim=(1, 2, 3)) / (2 * scale**2)) * scale)
        loss = torch.mean(torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)))
        ref_losses.append(loss / sqrt_dt.mean() ** 2)
        preds.append(v_new), olds.append(v_old), zs.append(z), advs.append(adv)
        idxs.append(torch.full((x.shape[0],), j))
    step = PolicyStep(sampler, objective="clipped", credit="native", clip_range=clip,
                      ratio_transform="ratio_norm", loss_weight="inv_dt")
    res = step(torch.cat(preds), torch.cat(olds), torch.cat(zs), torch.cat(advs), torch.cat(idxs))
    assert res.loss.item() == pytest.approx(float(torch.stack(ref_losses).mean()), rel=1e-6)


# ---------------------------------------------------------------- Flow-GRPO's CPS log-ratio

def test_flow_grpo_cps_transform_is_their_log_ratio():
    """Flow-GRPO's CPS log_prob = −mean((x' − μ)²): its log-ratio is 2·s²·(the Gaussian one)."""
    from pcpo.samplers.cps import CPSSampler

    gen = torch.Generator().manual_seed(2)
    sampler = CPSSampler(10, eta=0.8, grid="pipeline", scheduler_config=SD3_SCHEDULER_CONFIG)
    a, c, s = sampler.coefficients()
    j = 3
    x, v_old, v_new, z = random_batch(gen)
    mu_old = a[j] * x - c[j] * v_old
    mu = a[j] * x - c[j] * v_new
    nxt = mu_old + s[j] * z
    ref = (-((nxt - mu) ** 2)).mean(dim=(1, 2, 3)) - (-((nxt - mu_old) ** 2)).mean(dim=(1, 2, 3))
    inp, lin, sq = inputs_for(sampler, j, v_new, v_old, z)
    w = sampler.native_weights()[j]
    exact = -(w * lin + 0.5 * w**2 * sq)
    torch.testing.assert_close(RATIO_TRANSFORMS.get("flow_grpo_cps")(exact, inp), ref, rtol=1e-9, atol=1e-13)


# ---------------------------------------------------------------- TempFlow-GRPO's noise-aware weight

def test_tempflow_weight_on_sd35m():
    """train_sd3_pr.py: ``−2.25·std_dev_t·A·ρ`` with std_dev_t = sqrt(σ/(1−σ))·0.7·sqrt(−dt) (its
    sde_step_with_logprob's return) on the pipeline's sigmas."""
    sigmas = scheduler_sigmas()
    ref = []
    for j in range(10):
        _, _, _, g, sqrt_dt = ref_sde_step(sigmas, j, torch.zeros(1, 1), torch.zeros(1, 1), noise=torch.zeros(1, 1))
        ref.append(2.25 * g * sqrt_dt)
    lam = LOSS_WEIGHTS.get("tempflow")(StepTable.from_sampler(sd35m()))
    torch.testing.assert_close(lam, torch.stack(ref).flatten())
    # The weight is largest early-to-mid trajectory and small at the last steps.
    assert int(lam.argmax()) < 9 and lam[9] < lam[int(lam.argmax())] / 3
    flux = LOSS_WEIGHTS.get("tempflow")(StepTable.from_sampler(sd35m()), coef=1.73)
    torch.testing.assert_close(flux, lam * 1.73 / 2.25)
    g = LOSS_WEIGHTS.get("tempflow")(StepTable.from_sampler(sd35m()), scale="g")
    torch.testing.assert_close(g, torch.stack([2.25 * ref_sde_step(sigmas, j, torch.zeros(1, 1), torch.zeros(1, 1),
                                                                   noise=torch.zeros(1, 1))[3] for j in range(10)]).flatten())


def test_tempflow_policy_step_equals_reference_loss():
    gen = torch.Generator().manual_seed(9)
    sigmas = scheduler_sigmas()
    sampler = FlowSampler.from_diffusers_sigmas(sigmas, eta=0.7)
    j, clip = 2, 1e-4
    x, v_old, v_new, z = random_batch(gen, scale=1e-3)
    adv = torch.randn(x.shape[0], generator=gen, dtype=F64)
    nxt, lp_old, _, _, _ = ref_sde_step(sigmas, j, x, v_old, noise=z)
    _, lp, _, g, sqrt_dt = ref_sde_step(sigmas, j, x, v_new, prev_sample=nxt)
    std = g * sqrt_dt
    ratio = torch.exp(lp - lp_old)
    ref = torch.mean(torch.maximum(-2.25 * std * adv * ratio, -2.25 * std * adv * torch.clamp(ratio, 1 - clip, 1 + clip)))
    step = PolicyStep(sampler, objective="clipped", credit="native", clip_range=clip, loss_weight="tempflow")
    res = step(v_new, v_old, z, adv, torch.full((x.shape[0],), j))
    assert res.loss.item() == pytest.approx(ref.item(), rel=1e-6)


# ---------------------------------------------------------------- windows

def test_window_registry_and_errors():
    assert set(WINDOWS.names()) >= {"none", "flow_grpo_fast", "mix_grpo", "tempflow"}
    assert WINDOWS.meta("flow_grpo_fast")["per"] == "batch" and WINDOWS.meta("mix_grpo")["per"] == "iteration"
    assert window_at("none", 5, 0).sde_steps == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="train.sde_window: unknown SDE window 'fast'"):
        window_at("fast", 10, 0)
    with pytest.raises(ConfigError, match="train.sde_window_options: window 'mix_grpo' takes"):
        window_at("mix_grpo", 25, 0, options={"group_size": 4})
    with pytest.raises(ConfigError, match="train.sde_window_options.strategy"):
        window_at("mix_grpo", 25, 0, options={"strategy": "sweep"})
    with pytest.raises(ConfigError, match="window_range"):
        window_at("flow_grpo_fast", 10, 0, torch.Generator(), {"size": 4, "window_range": (0, 3)})
    with pytest.raises(ConfigError, match="train.ratio_transform_options.bias"):
        RATIO_TRANSFORMS.get("ratio_norm")(torch.zeros(1), None, bias="batch")


def reference_fast_windows(size, lo, hi):
    """sd3_pipeline_with_logprob_fast.py: start = random.randint(lo, hi − size) (both ends included)."""
    return {tuple(range(s, s + size)) for s in range(lo, hi - size + 1)}


@pytest.mark.parametrize("size,window_range", [(3, None), (2, (0, 10)), (2, (0, 7)), (1, (2, 6))])
def test_flow_grpo_fast_window_law(size, window_range):
    """Same support as the reference and uniform over it (deliberate difference: the torch generator
    instead of Python's ``random``)."""
    n = 10
    lo, hi = window_range or (0, n // 2)
    gen = torch.Generator().manual_seed(0)
    draws = [window_at("flow_grpo_fast", n, k, gen, {"size": size, "window_range": window_range})
             for k in range(3000)]
    support = reference_fast_windows(size, lo, hi)
    counts = Counter(tuple(w.sde_steps) for w in draws)
    assert set(counts) == support
    assert all(w.trained == w.sde_steps and w.branching == "none" for w in draws)
    expected = 3000 / len(support)
    assert all(abs(c - expected) < 5 * math.sqrt(expected) for c in counts.values())


def test_flow_grpo_fast_first_release_and_no_window():
    """The first release branched at randint(0, N // 2) with 2 SDE steps and a shared prefix."""
    gen = torch.Generator().manual_seed(1)
    draws = {tuple(window_at("flow_grpo_fast", 10, k, gen, {"size": 2, "window_range": (0, 7),
                                                             "shared_prefix": True}).sde_steps) for k in range(500)}
    assert draws == {(b, b + 1) for b in range(0, 10 // 2 + 1)}
    w = window_at("flow_grpo_fast", 10, 0, gen, {"size": 2, "window_range": (0, 7), "shared_prefix": True})
    assert w.branching == "prefix" and w.forwards(10, 9) == w.sde_steps[0] + 9 * (10 - w.sde_steps[0])
    full = window_at("flow_grpo_fast", 10, 0, gen, {"size": 0})
    assert full.sde_steps == full.trained == list(range(9))      # sde_window = (0, len(timesteps) − 1)


class RefMixStates:
    """fastvideo/utils/grpo_states.py GRPOTrainingStates, transcribed (random: numpy's generator seeded
    by the test instead of an unseeded one)."""

    def __init__(self, iters_per_group, group_size, max_timesteps, sample_strategy="progressive",
                 prog_overlap=False, prog_overlap_step=1, max_iters_per_group=None, min_iters_per_group=None,
                 roll_back=False, exp_decay_thre_timestep=13, exp_decay_k=0.1):
        self.iters_per_group, self.group_size, self.max_timesteps = iters_per_group, group_size, max_timesteps
        self.cur_timestep, self.cur_iter_in_group = 0, 0
        self.sample_strategy, self.prog_overlap, self.prog_overlap_step = sample_strategy, prog_overlap, prog_overlap_step
        self.max_iters_per_group, self.min_iters_per_group = max_iters_per_group, min_iters_per_group
        self.roll_back, self.thre, self.k = roll_back, exp_decay_thre_timestep, exp_decay_k
        if sample_strategy == "decay":
            if self.max_iters_per_group is None:
                self.max_iters_per_group = iters_per_group
            if self.min_iters_per_group is None:
                self.min_iters_per_group = max(1, iters_per_group // 4)
        self.init_timestep = self.cur_timestep

    def iters(self):
        if self.sample_strategy == "decay":
            progress = self.cur_timestep / self.max_timesteps
            current = int(self.max_iters_per_group * (1 - progress) + self.min_iters_per_group * progress)
            return max(self.min_iters_per_group, current)
        if self.sample_strategy == "exp_decay":
            return np.ceil(self.iters_per_group * np.exp(-self.k * max(0, self.cur_timestep - self.thre)))
        return self.iters_per_group

    def update_iteration(self, rng=None):
        if self.sample_strategy == "random":
            self.cur_timestep = rng.integers(0, self.max_timesteps - self.group_size + 1)
            return
        self.cur_iter_in_group += 1
        if self.cur_iter_in_group >= self.iters():
            self.cur_iter_in_group = 0
            self.cur_timestep += self.prog_overlap_step if self.prog_overlap else self.group_size
        if self.cur_timestep > self.max_timesteps:
            if self.roll_back:
                self.cur_timestep, self.cur_iter_in_group = self.init_timestep, 0
            else:
                self.cur_timestep = self.max_timesteps

    def get_current_timesteps(self):
        return list(range(self.cur_timestep, min(self.cur_timestep + self.group_size, self.max_timesteps)))


MIX_CASES = {
    # finetune_flux_grpo_MixGRPO.sh: 25 steps, group 4, 25 iterations per position, overlap stride 1, roll back
    "MixGRPO": (dict(iters_per_group=25, prog_overlap=True, prog_overlap_step=1, max_iters_per_group=10,
                     min_iters_per_group=1, roll_back=True), {}),
    # finetune_flux_grpo_MixGRPO_Flash.sh: 20 iterations per position
    "Flash": (dict(iters_per_group=20, prog_overlap=True, prog_overlap_step=1, max_iters_per_group=10,
                   min_iters_per_group=1, roll_back=True), {"shift_interval": 20}),
    # finetune_flux_grpo_MixGRPO_Flash*.sh: prog_overlap_step = 0, the window never moves
    "Flash*": (dict(iters_per_group=20, prog_overlap=True, prog_overlap_step=0, max_iters_per_group=10,
                    min_iters_per_group=1, roll_back=True), {"shift_interval": 20, "stride": 0}),
    "decay": (dict(sample_strategy="decay", iters_per_group=25, prog_overlap=True, prog_overlap_step=1,
                   max_iters_per_group=10, min_iters_per_group=1, roll_back=True), {"strategy": "decay"}),
    "decay-own-bounds": (dict(sample_strategy="decay", iters_per_group=8, prog_overlap=True, prog_overlap_step=2),
                         {"strategy": "decay", "shift_interval": 8, "stride": 2, "max_interval": None,
                          "min_interval": None, "roll_back": False}),
    "exp_decay": (dict(sample_strategy="exp_decay", iters_per_group=5, prog_overlap=True, prog_overlap_step=1,
                       roll_back=True), {"strategy": "exp_decay", "shift_interval": 5}),
    "no-overlap-clip": (dict(iters_per_group=3, roll_back=False), {"shift_interval": 3, "stride": None,
                                                                   "roll_back": False}),
}


@pytest.mark.parametrize("case", sorted(MIX_CASES))
def test_mix_grpo_window_sequence(case):
    """Window per iteration over many iterations equals the reference state machine (get, then update)."""
    ref_kw, opts = MIX_CASES[case]
    ref = RefMixStates(group_size=4, max_timesteps=25 - 2, **ref_kw)
    for it in range(700):
        w = window_at("mix_grpo", 25, it, None, opts)
        assert w.sde_steps == ref.get_current_timesteps(), (case, it)
        assert w.trained == w.sde_steps
        ref.update_iteration()


def test_mix_grpo_published_landmarks():
    seq = [window_at("mix_grpo", 25, it).sde_steps for it in range(650)]
    assert seq[0] == seq[24] == [0, 1, 2, 3] and seq[25] == [1, 2, 3, 4]
    assert seq[25 * 19] == [19, 20, 21, 22]            # the window never reaches the last two steps
    assert seq[25 * 22] == [22] and seq[25 * 23] == []  # shrinks at the end, one empty position, rolls back
    assert seq[25 * 24] == [0, 1, 2, 3]
    decay = [window_at("mix_grpo", 25, it, None, {"strategy": "decay"}).sde_steps[0] for it in range(30)]
    assert decay[:10] == [0] * 10 and decay[10] == 1     # interval 10 at cur = 0, shrinking towards 1


def test_mix_grpo_random_strategy():
    """Iteration 0 at 0, then uniform on [0, limit − size] (reference: rng.integers(0, max − gs + 1))."""
    gen = torch.Generator().manual_seed(3)
    assert window_at("mix_grpo", 25, 0, gen, {"strategy": "random"}).sde_steps == [0, 1, 2, 3]
    starts = Counter(window_at("mix_grpo", 25, it, gen, {"strategy": "random"}).sde_steps[0] for it in range(1, 4001))
    rng = np.random.default_rng(0)
    ref = RefMixStates(25, 4, 23, sample_strategy="random")
    ref_starts = set()
    for _ in range(4000):
        ref.update_iteration(rng)
        ref_starts.add(int(ref.cur_timestep))
    assert set(starts) == ref_starts == set(range(0, 23 - 4 + 1))
    assert all(abs(c - 4000 / 20) < 5 * math.sqrt(4000 / 20) for c in starts.values())


def ref_tempflow_forwards(num_steps, children, include_last=False):
    """Model evaluations per sample in the perstep pipelines' loops (one ODE trajectory + children)."""
    timesteps = list(range(num_steps))
    main = timesteps if include_last else timesteps[:-1]
    count = 0
    for i, _ in enumerate(main):
        count += 1                                       # the ODE trajectory's forward (shared by the SDE step)
        count += children * len(timesteps[i + 1:])       # each child's ODE continuation
    return count


def test_tempflow_window():
    w = window_at("tempflow", 10, 0)
    assert w.sde_steps == list(range(9)) and w.trained == list(range(9))    # timesteps[:-1]; int(10·0.99) = 9
    assert w.branching == "per_step" and w.children == 6
    assert w.forwards(10, group_size=6) == ref_tempflow_forwards(10, 6) == 279
    flux = window_at("tempflow", 10, 0, None, {"include_last": True})
    assert flux.sde_steps == list(range(10)) and flux.trained == list(range(9))
    assert flux.forwards(10, 6) == ref_tempflow_forwards(10, 6, include_last=True)


def test_window_forwards_none():
    assert Window([0, 1, 2], [0, 1]).forwards(3, 4) == 12
    with pytest.raises(ValueError, match="trained steps"):
        Window([1, 2], [0])


# ---------------------------------------------------------------- window samplers

def test_window_sampler_matches_flow_grpo_fast_pipeline():
    """Outside the window Flow-GRPO-Fast steps with noise_level = 0: x + dt·v (no noise, no log-density)."""
    sigmas = scheduler_sigmas()
    base = sd35m()
    win = base.with_window([1, 2, 3])
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 4, generator=gen, dtype=F64)
    v = torch.randn(2, 3, 4, 4, generator=gen, dtype=F64)
    z = torch.randn(2, 3, 4, 4, generator=gen, dtype=F64)
    for j in range(10):
        level = 0.7 if j in (1, 2, 3) else 0.0
        if level:
            nxt, _, mu, _, _ = ref_sde_step(sigmas, j, x, v, level, noise=z)
        else:
            nxt = mu = x + (sigmas[j + 1].double() - sigmas[j].double()) * v
        out = win.step(j, x, v, noise=z)
        torch.testing.assert_close(out.mean, mu)
        torch.testing.assert_close(out.prev_sample, nxt)
        assert bool(win.stochastic[j]) == bool(level)
    assert win.describe()["sde_steps"] == [1, 2, 3] and win.describe()["grid"] == "pipeline"
    w = win.native_weights()
    assert torch.isinf(w[0]) and torch.isfinite(w[1:4]).all() and torch.isinf(w[4:]).all()


# ---- MixGRPO-Flash (fastvideo/utils/sampling_utils.py, dpm_apply_strategy="post"), transcribed ---

def ref_flash_schedule(n, shift, last_false_index, ratio):
    """run_sample_step's rebuilt sigma_schedule (float32 torch, as MixGRPO)."""
    sigma_schedule = torch.linspace(1, 0, n + 1)
    sigma_schedule = shift * sigma_schedule / (1 + (shift - 1) * sigma_schedule)
    num_post_steps = int(max((sigma_schedule.size(0) - 1 - last_false_index) * ratio, 1))
    post_time_step = torch.linspace(1, 0, sigma_schedule.size(0))[last_false_index + 1].item()
    post = torch.linspace(post_time_step, 0, num_post_steps)
    post = shift * post / (1 + (shift - 1) * post)
    return torch.cat([sigma_schedule[: last_false_index + 1], post], dim=0)


def ref_flash_rollout(sigmas, determistic, velocity, z0, noises, eta=0.7):
    """The post-strategy loop: flow_grpo_step (with DPMState updates) up to the last SDE step, then
    dpm_step (dpmsolver++, order 2, midpoint, deterministic); float64."""
    last_false = max(i for i, d in enumerate(determistic) if not d)
    outputs, lower = [None, None], 0
    z = z0
    n = len(sigmas) - 1

    def lam(s):
        return torch.log(1 - s) - torch.log(s)

    for i in range(n):
        v = velocity(z, sigmas[i])
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        if i <= last_false:
            outputs = [outputs[1], z - sigma * v]
            dt = sigma_prev - sigma
            std = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigmas[1], sigma))) * eta
            mean = z * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
            z = z + dt * v if determistic[i] else mean + std * torch.sqrt(-dt) * noises[i]
            lower = min(lower + 1, 2)
            continue
        m = z - sigma * v
        outputs = [outputs[1], m]
        sigma_t, sigma_s0 = sigmas[i + 1], sigmas[i]
        alpha_t = 1 - sigma_t
        h = lam(sigma_t) - lam(sigma_s0)
        if lower < 1 or i == n - 1:
            z = (sigma_t / sigma_s0) * z - (alpha_t * (torch.exp(-h) - 1.0)) * m
        else:
            sigma_s1 = sigmas[i - 1]
            h_0 = lam(sigma_s0) - lam(sigma_s1)
            r0 = h_0 / h
            d0, d1 = outputs[-1], (1.0 / r0) * (outputs[-1] - outputs[-2])
            z = (sigma_t / sigma_s0) * z - (alpha_t * (torch.exp(-h) - 1.0)) * d0 - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
        lower = min(lower + 1, 2)
    return z


@pytest.mark.parametrize("window,ratio", [([0, 1, 2, 3], 0.4), ([5, 6, 7, 8], 0.4), ([0, 1, 2, 3], 0.2),
                                          ([18, 19, 20, 21], 0.4)])
def test_mix_grpo_flash_matches_reference(window, ratio):
    n, shift = 25, 3.0
    ref_grid = ref_flash_schedule(n, shift, max(window), ratio)
    ours = FlowSampler(n, eta=0.7, noise="flow-grpo", shift=shift, sde_steps=window, solver="dpmsolver++",
                       compress_ratio=ratio)
    # Deliberate difference: float64 grid (MixGRPO builds it in float32).
    torch.testing.assert_close(ours.grid, ref_grid.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(flash_grid(n, max(window), shift, ratio), ours.grid)
    grid = ours.grid
    gen = torch.Generator().manual_seed(7)
    amat = 0.3 * torch.randn(4, 4, generator=gen, dtype=F64)
    bvec = torch.randn(4, generator=gen, dtype=F64)

    def velocity(x, t):
        return x @ amat.T + (1 + t) * bvec

    z0 = torch.randn(2, 4, generator=gen, dtype=F64)
    noises = [torch.randn(2, 4, generator=gen, dtype=F64) for _ in range(ours.num_steps)]
    determistic = [i not in window for i in range(ours.num_steps)]
    ref = ref_flash_rollout(grid, determistic, velocity, z0, noises)
    x, hist = z0, None
    for i in range(ours.num_steps):
        v = velocity(x, grid[i])
        out = ours.step(i, x, v, noise=noises[i], history=hist)
        hist = ours.data_prediction(i, x, v)
        x = out.prev_sample
    torch.testing.assert_close(x, ref, rtol=1e-10, atol=1e-12)
    assert ours.stochastic.nonzero().flatten().tolist() == window


def test_mix_grpo_flash_published_grids():
    # Flash (ratio 0.4) with the first window [0..3]: int(22·0.4) = 8 points after t_3, 11 steps in all.
    assert FlowSampler(25, 0.7, shift=3.0, sde_steps=[0, 1, 2, 3], solver="dpmsolver++").num_steps == 3 + 8
    # Flash* (ratio 0.2): int(22·0.2) = 4 points, 7 steps.
    assert FlowSampler(25, 0.7, shift=3.0, sde_steps=[0, 1, 2, 3], solver="dpmsolver++",
                       compress_ratio=0.2).num_steps == 3 + 4
    # A late window: int(4·0.4) = 1 point, so the rollout ends at t_22 > 0, as MixGRPO's schedule does.
    late = FlowSampler(25, 0.7, shift=3.0, sde_steps=[18, 19, 20, 21], solver="dpmsolver++")
    assert late.num_steps == 22 and late.grid[-1].item() == pytest.approx(3 * (3 / 25) / (1 + 2 * 3 / 25))
    with pytest.raises(ValueError, match="history"):
        s = FlowSampler(25, 0.7, shift=3.0, sde_steps=[0, 1, 2, 3], solver="dpmsolver++")
        s.step(5, torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="grid='linspace'"):
        FlowSampler(10, 0.7, shift=3.0, grid="pipeline", sde_steps=[0], solver="dpmsolver++")


def test_pipeline_grid_is_what_flow_grpo_trains_on():
    torch.testing.assert_close(pipeline_grid(10, SD3_SCHEDULER_CONFIG), scheduler_sigmas().double())
