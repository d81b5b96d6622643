"""Sampler physics: reference numbers (docs/method.md §5), exact log-ratios, determinism, diffusers parity."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from pcpo.algo.credit import credit_weights
from pcpo.algo.logprob import gaussian_log_prob, log_ratio_decomposed, log_ratio_gaussian
from pcpo.samplers import DDIMSampler, FlowSampler, build_sampler, flow_grid


def sd15_scheduler(**kw):
    cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
               steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    cfg.update(kw)
    return DDIMScheduler(**cfg)


# ---------------------------------------------------------------- reference numbers (docs/method.md §5)

def test_sd15_ddim_native_weights_reference():
    w = DDIMSampler(50, eta=1.0, schedule="sd15").native_weights()
    assert w.min().item() == pytest.approx(0.374, abs=5e-4)
    assert w.max().item() == pytest.approx(3.275, abs=5e-4)
    assert w.mean().item() == pytest.approx(0.517, abs=5e-4)
    # The spike is near the end of sampling: the step from t = 21 to t = 1.
    assert int(w.argmax()) == 48 and w[48] > 3 * w[47]


def test_dancegrpo_flux_zeta():
    s = build_sampler("dance-sde", steps=16, eta=0.3, shift=3.0)
    assert credit_weights("pcpo", s).sum().item() == pytest.approx(13.343, abs=5e-4)
    assert s.native_weights().sum().item() == pytest.approx(13.343, abs=5e-4)


def test_flowgrpo_sd35_zeta():
    s = build_sampler("flow-sde", steps=10, eta=0.7, shift=3.0)
    assert credit_weights("pcpo", s).sum().item() == pytest.approx(4.315, abs=5e-4)
    # The t = 1 weight is the patched one in the physics but counted as the next step's in ζ.
    w, nominal = s.native_weights(), s.nominal_weights()
    assert nominal[0] == w[1] and w[0] < w[1]


def test_flow_grid_shift():
    g = flow_grid(10, 3.0)
    assert g[0] == 1 and g[-1] == 0
    t = 0.5
    assert g[5].item() == pytest.approx(3 * t / (1 + 2 * t))


# ---------------------------------------------------------------- coefficients against docs/method.md formulas

def test_ddim_coefficients_closed_form():
    s = DDIMSampler(20, eta=0.7, schedule="sd15")
    a, c, sig = s.coefficients()
    ab_t, ab_p = s.abar_t, s.abar_prev
    alpha = ab_t / ab_p
    sigma = 0.7 * torch.sqrt((1 - ab_p) / (1 - ab_t)) * torch.sqrt(1 - alpha)
    torch.testing.assert_close(sig, sigma)
    torch.testing.assert_close(a, 1 / alpha.sqrt())
    torch.testing.assert_close(c, torch.sqrt(1 - ab_t) / alpha.sqrt() - torch.sqrt(1 - ab_p - sigma**2))


@pytest.mark.parametrize("noise", ["dance", "flow-grpo"])
def test_flow_step_matches_sde_formula(noise):
    s = FlowSampler(8, eta=0.5, noise=noise, shift=2.0)
    gen = torch.Generator().manual_seed(0)
    x, v, z = (torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    g = s.diffusion_coefficient()
    for i in range(8):
        t, dt = s.grid[i].item(), (s.grid[i] - s.grid[i + 1]).item()
        gi = g[i].item()
        expect = x - dt * (v + gi**2 / (2 * t) * (x + (1 - t) * v)) + gi * dt**0.5 * z
        torch.testing.assert_close(s.step(i, x, v, noise=z).prev_sample, expect)


# ---------------------------------------------------------------- exact log-ratio

def _samplers():
    return [
        DDIMSampler(50, eta=1.0, schedule="sd15"),
        DDIMSampler(10, eta=0.5, schedule="linear", spacing="trailing"),
        FlowSampler(16, eta=0.3, noise="dance", shift=3.0),
        FlowSampler(10, eta=0.7, noise="flow-grpo", shift=3.0),
    ]


@pytest.mark.parametrize("sampler", _samplers(), ids=lambda s: f"{s.kind}-{s.describe().get('noise', s.describe().get('schedule'))}")
def test_decomposed_log_ratio_equals_gaussian_difference(sampler):
    gen = torch.Generator().manual_seed(1)
    w = sampler.native_weights()
    for i in range(sampler.num_steps):
        if not sampler.stochastic[i]:  # e.g. DDIM's last step to ᾱ = 1 has σ = 0: no density
            assert torch.isinf(w[i])
            continue
        x = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
        p_old = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
        p_new = p_old + 0.05 * torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
        out = sampler.step(i, x, p_old, generator=gen)
        z = out.noise.double()
        std = out.std.double()
        x_next = sampler.mean(i, x, p_old) + std * z
        plain = log_ratio_gaussian(x_next, sampler.mean(i, x, p_new), sampler.mean(i, x, p_old), std)
        exact = log_ratio_decomposed(p_new, p_old, z, w[i].item())
        torch.testing.assert_close(exact, plain, rtol=1e-7, atol=1e-9)
        assert exact.abs().max() > 0
        # unchanged prediction: exactly zero
        assert torch.equal(log_ratio_decomposed(p_old, p_old, z, w[i].item()), torch.zeros(4, dtype=torch.float64))


def test_log_ratio_fp32_from_bf16_inputs():
    gen = torch.Generator().manual_seed(2)
    p_old = torch.randn(2, 16, generator=gen).bfloat16()
    p_new = (p_old.float() + 0.01).bfloat16()
    z = torch.randn(2, 16, generator=gen)
    lr = log_ratio_decomposed(p_new, p_old, z, 3.0)
    assert lr.dtype == torch.float32
    assert gaussian_log_prob(p_new, p_old, 0.5).dtype == torch.float32


def test_decomposed_is_more_precise_than_gaussian_difference_in_fp32():
    # A tiny update at a small-sigma step: the fp32 Gaussian difference loses the signal.
    s = DDIMSampler(50, eta=1.0, schedule="sd15")
    i = 49
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=gen, dtype=torch.float64)
    p_old = torch.randn(2, 4, 16, 16, generator=gen, dtype=torch.float64)
    p_new = p_old + 1e-5 * torch.randn(2, 4, 16, 16, generator=gen, dtype=torch.float64)
    z = torch.randn(2, 4, 16, 16, generator=gen, dtype=torch.float64)
    w = s.native_weights()[i].item()
    truth = log_ratio_decomposed(p_new, p_old, z, w)
    std = s.coefficients()[2][i]
    x_next = s.mean(i, x, p_old) + std * z
    f32 = lambda t: t.float()  # noqa: E731
    plain32 = log_ratio_gaussian(f32(x_next), f32(s.mean(i, x, p_new)), f32(s.mean(i, x, p_old)), float(std))
    exact32 = log_ratio_decomposed(f32(p_new), f32(p_old), f32(z), w)
    err_exact = (exact32.double() - truth).abs().max()
    err_plain = (plain32.double() - truth).abs().max()
    assert err_exact < err_plain / 10


# ---------------------------------------------------------------- deterministic steps = diffusers

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta0_equals_diffusers(spacing, prediction_type):
    sched = sd15_scheduler(timestep_spacing=spacing, prediction_type=prediction_type)
    sched.set_timesteps(25)
    ours = DDIMSampler.from_diffusers(sched, num_steps=25, eta=0.0)
    assert torch.equal(ours.timesteps, sched.timesteps.long())
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(sched.timesteps):
        raw = torch.randn(2, 4, 8, 8, generator=gen)
        ref = sched.step(raw, t, x, eta=0.0).prev_sample
        got = ours.step(i, x, ours.canonical(i, x, raw)).prev_sample
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        x = ref
    assert ours.stochastic.sum() == 0


def test_flow_ode_equals_euler_and_diffusers():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 10, 10))
    ours = build_sampler("ode", steps=10, eta=0.0, shift=3.0)
    torch.testing.assert_close(ours.grid.float(), sched.sigmas.float())
    torch.testing.assert_close((ours.timesteps * 1000).float(), sched.timesteps.float())
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(2, 4, 8, 8, generator=gen)
        ref = sched.step(v, t, x).prev_sample
        out = ours.step(i, x, v)
        euler = x - (ours.grid[i] - ours.grid[i + 1]).item() * v
        torch.testing.assert_close(out.prev_sample, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.prev_sample, euler)
        assert out.std.item() == 0 and torch.equal(out.noise, torch.zeros_like(x))
        x = ref


@pytest.mark.parametrize("noise", ["dance", "flow-grpo"])
def test_flow_eta0_is_deterministic(noise):
    s = FlowSampler(10, eta=0.0, noise=noise, shift=3.0)
    x, v = torch.randn(2, 8), torch.randn(2, 8)
    a = s.step(3, x, v, generator=torch.Generator().manual_seed(0)).prev_sample
    b = s.step(3, x, v, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.equal(a, b)


def test_ddim_eta1_matches_diffusers_with_same_noise():
    sched = sd15_scheduler()
    sched.set_timesteps(10)
    ours = DDIMSampler.from_diffusers(sched, num_steps=10, eta=1.0)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(sched.timesteps):
        eps = torch.randn_like(x)
        z = torch.randn_like(x)
        ref = sched.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        got = ours.step(i, x, eps, noise=z).prev_sample
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        x = ref


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: DDIMSampler(-1, eta=1.0), "steps"),
        (lambda: DDIMSampler(0, eta=1.0), "steps"),
        (lambda: DDIMSampler(10, eta=-0.1), "eta"),
        (lambda: DDIMSampler(10, eta=1.0, schedule="nope"), "schedule"),
        (lambda: DDIMSampler(10, eta=1.0, spacing="nope"), "spacing"),
        (lambda: DDIMSampler(2000, eta=1.0), "steps"),
        (lambda: FlowSampler(-3, eta=0.3), "steps"),
        (lambda: FlowSampler(10, eta=-1.0), "eta"),
        (lambda: FlowSampler(10, eta=0.3, shift=0.0), "shift"),
        (lambda: FlowSampler(10, eta=0.3, shift=-2.0), "shift"),
        (lambda: FlowSampler(10, eta=0.3, noise="nope"), "noise"),
        (lambda: build_sampler("euler", 10, 0.3), "sampler"),
    ],
)
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()
