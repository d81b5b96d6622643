"""Objectives, KL forms and credit schemes: exact values and gradients."""

import pytest
import torch

from pcpo.algo.credit import credit_weights, pcpo_credit
from pcpo.algo.logprob import log_ratio_decomposed, log_ratio_from_terms, ratio_terms
from pcpo.algo.objectives import (
    OBJECTIVES,
    clipped_ratio_loss,
    get_objective,
    kl_penalty,
    log_hinge_loss,
    pcpo_loss,
    zero_grad_mask,
)
from pcpo.samplers import DDIMSampler, FlowSampler, build_sampler


def test_registry_and_default_credit():
    assert set(OBJECTIVES) >= {"clipped", "log_hinge", "pcpo"}
    assert get_objective("pcpo").default_credit == "pcpo"
    assert get_objective("clipped").default_credit == "native"
    with pytest.raises(ValueError, match="objective"):
        get_objective("dpo")


def test_clipped_ratio_values():
    # TRL's check: A = -1, ratio = 1 -> loss 1.
    loss, m = clipped_ratio_loss(torch.zeros(1), -torch.ones(1), clip_range=1e-4)
    assert loss.item() == pytest.approx(1.0)
    # A = 1, ratio = e^0.1 > 1 + ξ: the clipped branch wins: -(1 + ξ).
    loss, m = clipped_ratio_loss(torch.tensor([0.1]), torch.tensor([1.0]), clip_range=0.2)
    assert loss.item() == pytest.approx(-torch.exp(torch.tensor(0.1)).item())
    loss, m = clipped_ratio_loss(torch.tensor([0.5]), torch.tensor([1.0]), clip_range=0.2)
    assert loss.item() == pytest.approx(-1.2)
    assert m["clipfrac"] == 1.0


def test_log_hinge_values():
    lr = torch.tensor([0.0, 0.2, -0.2, 0.05])
    A = torch.tensor([1.0, 1.0, -2.0, -1.0])
    loss, m = log_hinge_loss(lr, A, clip_range=0.1)
    # max(0, 0.1|A| - A lr): [0.1, 0, 0, 0.15]
    assert loss.item() == pytest.approx((0.1 + 0 + 0 + 0.15) / 4)
    assert m["clipfrac"] == pytest.approx(0.5)


def test_log_hinge_gradient_is_ppo_with_log_ratio():
    """∇ log-hinge == ∇ PPO evaluated at r = 1 + log ρ (ρ − 1 replaced by log ρ)."""
    gen = torch.Generator().manual_seed(0)
    B, D = 64, 32
    p_old = torch.randn(B, D, generator=gen, dtype=torch.float64)
    z = torch.randn(B, D, generator=gen, dtype=torch.float64)
    A = torch.randn(B, generator=gen, dtype=torch.float64)
    w = torch.rand(B, generator=gen, dtype=torch.float64) + 0.5
    xi = 0.005
    p1 = (p_old + 0.05 * torch.randn(B, D, generator=gen, dtype=torch.float64)).requires_grad_()
    p2 = p1.detach().clone().requires_grad_()
    lr1 = log_ratio_decomposed(p1, p_old, z, w)
    loss1, m = log_hinge_loss(lr1, A, clip_range=xi)
    loss1.backward()
    lr2 = log_ratio_decomposed(p2, p_old, z, w)
    r = 1 + lr2
    ppo = torch.maximum(-A * r, -A * torch.clamp(r, 1 - xi, 1 + xi)).mean()
    ppo.backward()
    assert 0.1 < m["clipfrac"] < 0.9  # both regimes are exercised
    torch.testing.assert_close(p1.grad, p2.grad)


@pytest.mark.parametrize(
    "sampler",
    [DDIMSampler(50, 1.0, "sd15"), build_sampler("dance-sde", 16, 0.3, shift=3.0), build_sampler("flow-sde", 10, 0.7, shift=3.0)],
    ids=["ddpo", "dancegrpo", "flowgrpo"],
)
def test_pcpo_gradient_at_old_policy_is_rescaled_native(sampler):
    N = sampler.num_steps
    native = credit_weights("native", sampler)
    target = credit_weights("pcpo", sampler)
    gen = torch.Generator().manual_seed(1)
    B, D = 3 * N, 16
    step = torch.arange(B) % N
    p_old = torch.randn(B, D, generator=gen, dtype=torch.float64)
    z = torch.randn(B, D, generator=gen, dtype=torch.float64)
    A = torch.randn(B, generator=gen, dtype=torch.float64)

    def grad(weights, objective):
        p = p_old.clone().requires_grad_()
        lr = log_ratio_decomposed(p, p_old, z, weights[step])
        loss, _ = objective(lr, A, clip_range=1e-4)
        loss.backward()
        return p.grad

    g_native = grad(native, log_hinge_loss)
    g_pcpo = grad(target, pcpo_loss)
    scale = (target / native)[step].view(-1, 1)
    torch.testing.assert_close(g_pcpo, g_native * scale)
    assert not torch.allclose(scale, torch.ones_like(scale))


def test_pcpo_credit_preserves_total_and_is_proportional():
    s = build_sampler("flow-sde", 10, 0.7, shift=3.0)
    w = pcpo_credit(s)
    dt = s.dt()
    torch.testing.assert_close(w / w.sum(), dt / dt.sum())
    ddim = DDIMSampler(50, 1.0, "sd15")
    w = pcpo_credit(ddim)
    assert torch.allclose(w, torch.full_like(w, ddim.native_weights().mean().item()))
    w45 = pcpo_credit(ddim, w_star=4.5)
    assert torch.allclose(w45, torch.full_like(w45, 4.5))
    with pytest.raises(ValueError, match="w_star"):
        pcpo_credit(ddim, w_star=0.0)
    with pytest.raises(ValueError, match="w_star"):
        pcpo_credit(ddim, w_star=-1.0)
    with pytest.raises(ValueError, match="credit"):
        credit_weights("nope", ddim)
    with pytest.raises(ValueError, match="eta"):
        credit_weights("pcpo", FlowSampler(10, eta=0.0))


def test_credit_skips_deterministic_steps():
    s = DDIMSampler(10, eta=1.0, schedule="linear")  # final ᾱ = 1: last step has σ = 0
    assert not s.stochastic[-1]
    w = pcpo_credit(s)
    assert w[-1] == 0
    assert w[:-1].sum().item() == pytest.approx(s.native_weights()[:-1].sum().item())


def test_linear_only_surrogate():
    lin, sq = torch.tensor([0.3]), torch.tensor([0.2])
    assert log_ratio_from_terms(lin, sq, 2.0).item() == pytest.approx(-(2 * 0.3 + 0.5 * 4 * 0.2))
    assert log_ratio_from_terms(lin, sq, 2.0, quadratic=False).item() == pytest.approx(-0.6)


def test_kl_forms():
    s = build_sampler("flow-sde", 10, 0.7, shift=3.0)
    a, c, sd = s.coefficients()
    g = s.diffusion_coefficient()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    p, p_ref = torch.randn(4, 12, generator=gen, dtype=torch.float64), torch.randn(4, 12, generator=gen, dtype=torch.float64)
    i = 5
    _, sq = ratio_terms(p, p_ref, torch.zeros_like(p))
    w = torch.full((4,), (c[i] / sd[i]).item(), dtype=torch.float64)
    dt = torch.full((4,), s.dt()[i].item(), dtype=torch.float64)
    direct = ((s.mean(i, x, p) - s.mean(i, x, p_ref)) ** 2).mean(dim=1) / (2 * g[i] ** 2)
    torch.testing.assert_close(kl_penalty(sq, w, "flow-grpo", dt), direct)
    # the exact Gaussian KL between the two transitions is ½ w² ‖Δp‖²
    exact = ((s.mean(i, x, p) - s.mean(i, x, p_ref)) ** 2).mean(dim=1) / (2 * sd[i] ** 2)
    torch.testing.assert_close(kl_penalty(sq, w, "pcpo"), exact)
    with pytest.raises(ValueError, match="kl form"):
        kl_penalty(sq, w, "nope")


def test_per_step_metrics():
    lr = torch.tensor([0.0, 0.3, 0.0, -0.3])
    A = torch.ones(4)
    _, m = clipped_ratio_loss(lr, A, clip_range=0.1, step_index=torch.tensor([0, 1, 0, 2]), num_steps=4)
    assert m["clipfrac_per_step"][:3] == [0.0, 1.0, 1.0]
    assert m["abs_log_ratio_per_step"][1] == pytest.approx(0.3)
    assert m["clipfrac_per_step"][3] != m["clipfrac_per_step"][3]  # NaN: no data for step 3


def test_zero_grad_fraction_is_like_for_like():
    """Clipped PPO has no gradient only on the advantage's side; its logged clipfrac counts both sides."""
    xi = 0.1
    lr = torch.log(torch.tensor([1.2, 0.8, 1.2, 0.8, 1.05]))
    A = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    zg = zero_grad_mask("clipped", lr, A, xi)
    assert zg.tolist() == [True, False, False, True, False]
    _, m = clipped_ratio_loss(lr, A, clip_range=xi)
    assert m["clipfrac"] == pytest.approx(0.8) and m["zero_grad_frac"] == pytest.approx(0.4)
    # the gradient really is zero exactly where the mask says
    x = lr.clone().requires_grad_()
    clipped_ratio_loss(x, A, clip_range=xi)[0].backward()
    assert ((x.grad == 0) == zg).all()
    y = lr.clone().requires_grad_()
    loss, m = log_hinge_loss(y, A, clip_range=xi)
    loss.backward()
    assert ((y.grad == 0) == zero_grad_mask("log_hinge", lr, A, xi)).all()
    assert m["zero_grad_frac"] == m["clipfrac"]
