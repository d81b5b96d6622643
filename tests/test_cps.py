"""CPS (Flow-GRPO's ``sde_type="cps"``) and the flow samplers' time grids, against transcriptions of the
reference arithmetic (Flow-GRPO's ``sd3_sde_with_logprob.py``, diffusers' ``FlowMatchEulerDiscreteScheduler``)
in float64, on random grids and the published configurations."""

import math

import numpy as np
import pytest
import torch

from pcpo.algo.credit import credit_weights
from pcpo.algo.logprob import gaussian_log_prob, log_ratio_decomposed
from pcpo.samplers.cps import CPSSampler
from pcpo.samplers.flow import (
    FLUX_SCHEDULER_CONFIG,
    SD3_SCHEDULER_CONFIG,
    FlowSampler,
    flow_grid,
    pipeline_grid,
)

F64 = torch.float64


def ref_cps_step(sigmas, j, sample, model_output, noise_level, prev_sample=None, noise=None):
    """sde_step_with_logprob(sde_type='cps'), float64: (prev_sample, their log_prob, mean, std_dev_t)."""
    sigma, sigma_prev = sigmas[j], sigmas[j + 1]
    std_dev_t = sigma_prev * math.sin(noise_level * math.pi / 2)
    pred_original_sample = sample - sigma * model_output
    noise_estimate = sample + model_output * (1 - sigma)
    mean = pred_original_sample * (1 - sigma_prev) + noise_estimate * torch.sqrt(sigma_prev**2 - std_dev_t**2)
    if prev_sample is None:
        prev_sample = mean + std_dev_t * noise
    log_prob = -((prev_sample - mean) ** 2)                     # "remove all constants"
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean, std_dev_t


def gauss(x, mean, std):
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return lp.mean(dim=(1, 2, 3))


def random_grid(gen, n):
    inner = torch.sort(torch.rand(n - 1, generator=gen, dtype=F64), descending=True).values
    return torch.cat([torch.ones(1, dtype=F64), inner, torch.zeros(1, dtype=F64)])


def sd35m_cps():
    """Flow-GRPO-Fast's no-CFG SD3.5-M configs: 10 steps on the pipeline's sigmas, noise level 0.8."""
    return CPSSampler(10, eta=0.8, grid="pipeline", scheduler_config=SD3_SCHEDULER_CONFIG)


# ---------------------------------------------------------------- CPS step

@pytest.mark.parametrize("which", ["sd35m", "random"])
def test_cps_mean_and_std_equal_reference(which):
    gen = torch.Generator().manual_seed(0)
    sampler = sd35m_cps() if which == "sd35m" else CPSSampler(7, eta=0.55, grid=random_grid(gen, 7))
    grid = sampler.grid
    _, _, s = sampler.coefficients()
    x = torch.randn(3, 2, 4, 4, generator=gen, dtype=F64)
    v = torch.randn(3, 2, 4, 4, generator=gen, dtype=F64)
    z = torch.randn(3, 2, 4, 4, generator=gen, dtype=F64)
    for j in range(sampler.num_steps):
        nxt, _, mean, std = ref_cps_step(grid, j, x, v, sampler.eta, noise=z)
        out = sampler.step(j, x, v, noise=z)
        torch.testing.assert_close(out.mean, mean, rtol=1e-12, atol=1e-12)
        assert s[j].item() == pytest.approx(float(std), rel=1e-12, abs=1e-15)
        if s[j] > 0:
            torch.testing.assert_close(out.prev_sample, nxt, rtol=1e-12, atol=1e-12)
    # The last step lands on x̂_0 with no noise; c ≥ Δt > 0 everywhere.
    a, c, _ = sampler.coefficients()
    assert s[-1] == 0 and a[-1] == 1 and c[-1] == grid[-2]
    assert bool((c >= sampler.dt() - 1e-15).all())


def test_cps_exact_log_ratio_equals_gaussian_log_density_difference():
    """pcpo's decomposed log-ratio with w = c/s is the difference of the two Gaussian log-densities of x'
    (computed the reference way: −(x' − μ)²/(2s²) − log s − log sqrt(2π), mean over elements)."""
    gen = torch.Generator().manual_seed(1)
    sampler = sd35m_cps()
    grid, w = sampler.grid, sampler.native_weights()
    for j in range(9):
        x = torch.randn(4, 3, 8, 8, generator=gen, dtype=F64)
        v_old = torch.randn(4, 3, 8, 8, generator=gen, dtype=F64)
        v_new = v_old + 1e-3 * torch.randn(4, 3, 8, 8, generator=gen, dtype=F64)
        z = torch.randn(4, 3, 8, 8, generator=gen, dtype=F64)
        nxt, their_old, mu_old, std = ref_cps_step(grid, j, x, v_old, 0.8, noise=z)
        _, their_new, mu_new, _ = ref_cps_step(grid, j, x, v_new, 0.8, prev_sample=nxt)

        ref = gauss(nxt, mu_new, std) - gauss(nxt, mu_old, std)
        ours = log_ratio_decomposed(v_new, v_old, z, w[j])
        torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(gaussian_log_prob(nxt, mu_new, std) - gaussian_log_prob(nxt, mu_old, std), ref)
        # Flow-GRPO's own CPS log-ratio drops the variance: it is 2·s² times the Gaussian one.
        torch.testing.assert_close(their_new - their_old, 2 * std**2 * ref, rtol=1e-7, atol=1e-14)


def test_cps_window_and_eta_zero_are_the_euler_ode():
    """noise_level 0 (outside Flow-GRPO-Fast's window) gives std 0 and the Euler step x + (t' − t)·v."""
    gen = torch.Generator().manual_seed(2)
    base = sd35m_cps()
    win = base.with_window([2, 3, 4])
    ode = base.deterministic()
    x = torch.randn(2, 5, generator=gen, dtype=F64)
    v = torch.randn(2, 5, generator=gen, dtype=F64)
    for j in range(10):
        euler = x + (base.grid[j + 1] - base.grid[j]) * v
        ref_mean = ref_cps_step(base.grid, j, x, v, 0.0, noise=torch.zeros_like(x))[2]
        torch.testing.assert_close(ref_mean, euler)
        torch.testing.assert_close(ode.mean(j, x, v), euler)
        if j not in (2, 3, 4):
            torch.testing.assert_close(win.mean(j, x, v), euler)
    assert win.stochastic.nonzero().flatten().tolist() == [2, 3, 4]
    assert torch.isinf(win.native_weights()[0]) and credit_weights("pcpo", win)[0] == 0
    assert win.describe()["sde_steps"] == [2, 3, 4]
    with pytest.raises(ValueError, match=r"eta \(CPS noise level\)"):
        CPSSampler(10, eta=1.5)
    with pytest.raises(ValueError, match="sde_steps"):
        base.with_window([10])


def test_cps_preserves_marginal_coefficients():
    """With x = (1 − t)·x_0 + t·ε and the exact velocity v = ε − x_0, the CPS step's mean has x_0
    coefficient (1 − t') and the noise has total std t' (sqrt(β² + s²) = t')."""
    sampler = CPSSampler(6, eta=0.8, shift=3.0)
    a, c, s = sampler.coefficients()
    t, tn = sampler.grid[:-1], sampler.grid[1:]
    # mean = a·x − c·v with x = (1−t)x0 + tε, v = ε − x0: x0 coefficient a(1−t) + c, ε coefficient a·t − c
    torch.testing.assert_close(a * (1 - t) + c, 1 - tn)
    torch.testing.assert_close(((a * t - c) ** 2 + s**2).sqrt(), tn)


# ---------------------------------------------------------------- time grids

def test_pipeline_grid_sd3_closed_form_and_scheduler():
    """diffusers shifts twice at the small end: set_timesteps(N) spaces N times evenly from t = 1 to the
    shifted training minimum shift(1/1000), then shifts them, then appends 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    def shift(t, s=3.0):
        return s * t / (1 + (s - 1) * t)

    for n in (10, 28, 40):
        grid = pipeline_grid(n, SD3_SCHEDULER_CONFIG)
        closed = torch.cat([shift(torch.linspace(1.0, shift(1e-3), n, dtype=F64)), torch.zeros(1, dtype=F64)])
        torch.testing.assert_close(grid, closed, atol=2e-7, rtol=0)       # the scheduler computes in float32
        sched = FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG)
        sched.set_timesteps(n)
        assert torch.equal(grid, sched.sigmas.double())


def test_pipeline_grid_flux_dynamic_shift():
    """FluxPipeline: sigmas linspace(1, 1/N, N), μ linear in the image tokens, exponential time shift."""
    for seq, mu in ((4096, 1.15), (1024, 0.5 + (1.15 - 0.5) / (4096 - 256) * (1024 - 256)), (256, 0.5)):
        grid = pipeline_grid(6, FLUX_SCHEDULER_CONFIG, image_seq_len=seq)
        sig = torch.tensor(np.linspace(1.0, 1 / 6, 6), dtype=F64)
        closed = math.exp(mu) / (math.exp(mu) + (1 / sig - 1))
        torch.testing.assert_close(grid, torch.cat([closed, torch.zeros(1, dtype=F64)]), atol=2e-7, rtol=0)
    with pytest.raises(ValueError, match="image_seq_len"):
        pipeline_grid(6, FLUX_SCHEDULER_CONFIG)


def test_sd35m_linspace_vs_pipeline_grid_figures():
    """N = 10, shift 3: the grids differ by up to 0.2411 (last step: 0.25 vs 0.0089). ζ (the sum of
    nominal native weights with a = 0.7) is 4.315 on linspace and 5.727 on the pipeline grid."""
    lin, pipe = flow_grid(10, 3.0), pipeline_grid(10, SD3_SCHEDULER_CONFIG)
    gap = (lin - pipe).abs()
    assert gap.max().item() == pytest.approx(0.2411, abs=1e-4) and int(gap.argmax()) == 9
    s_lin = FlowSampler(10, eta=0.7, noise="flow-grpo", shift=3.0)
    s_pipe = FlowSampler(10, eta=0.7, noise="flow-grpo", shift=3.0, grid="pipeline")
    assert torch.equal(s_pipe.grid, pipe) and s_pipe.describe()["grid"] == "pipeline"
    assert s_lin.nominal_weights().sum().item() == pytest.approx(4.315, abs=5e-4)
    assert s_pipe.nominal_weights().sum().item() == pytest.approx(5.727, abs=5e-4)
    assert credit_weights("pcpo", s_pipe).sum().item() == pytest.approx(5.727, abs=5e-4)
    # deterministic() keeps the grid kind for a new step count
    torch.testing.assert_close(s_pipe.deterministic(28).grid, pipeline_grid(28, {"num_train_timesteps": 1000,
                                                                               "shift": 3.0}))
    with pytest.raises(ValueError, match="grid must be one of"):
        FlowSampler(10, grid="karras")
