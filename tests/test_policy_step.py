"""The policy step alone (no Trainer, no model): closed-form losses, masks and metrics on hand-built
inputs, for each objective, credit scheme and KL term."""

import math

import pytest
import torch

from pcpo.algo.step import LOSS_WEIGHTS, RATIO_TRANSFORMS, PolicyStep, StepStats, StepTable
from pcpo.errors import ConfigError
from pcpo.samplers import FlowSampler

ETA, N = 0.5, 4


def sampler():
    # DanceGRPO noise g = η on linspace(1, 0, 5): t = 1, .75, .5, .25 and Δt = .25 everywhere.
    return FlowSampler(N, eta=ETA, noise="dance", shift=1.0)


def native_weights():
    """c/s written out: c = Δt(1 + (1 − t)g²/(2t)), s = g·sqrt(Δt)."""
    out = []
    for t in (1.0, 0.75, 0.5, 0.25):
        dt = 0.25
        c = dt * (1 + (1 - t) * ETA**2 / (2 * t))
        out.append(c / (ETA * math.sqrt(dt)))
    return out


def inputs(a, steps, adv):
    """Pairs with p_old = 0 and z = 1, so ⟨Δp, z⟩ = a and ‖Δp‖² = a² per pair (means over 2 elements)."""
    a = torch.tensor(a, dtype=torch.float64)
    pred = a[:, None].repeat(1, 2)
    return pred, torch.zeros_like(pred), torch.ones_like(pred), torch.tensor(adv, dtype=torch.float64), \
        torch.tensor(steps)


def log_ratio(a, w):
    return -(w * a + 0.5 * w**2 * a**2)


A_VALS, STEPS, ADV = [0.01, -0.02, 1e-5, 0.0], [0, 1, 2, 3], [1.0, -1.0, 2.0, -0.5]


def test_step_table_is_the_sampler_schedule():
    tab = StepTable.from_sampler(sampler())
    assert tab.dt.tolist() == pytest.approx([0.25] * 4)
    assert tab.std.tolist() == pytest.approx([ETA * 0.5] * 4)
    assert tab.native.tolist() == pytest.approx(native_weights())
    assert tab.t.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_clipped_objective_native_credit_closed_form():
    xi = 1e-3
    step = PolicyStep(sampler(), objective="clipped", clip_range=xi)
    assert step.credit == "native"
    res = step(*inputs(A_VALS, STEPS, ADV))
    w = native_weights()
    terms, flat, clipped = [], [], []
    for a, s, A in zip(A_VALS, STEPS, ADV):
        r = math.exp(log_ratio(a, w[s]))
        terms.append(max(-A * r, -A * min(max(r, 1 - xi), 1 + xi)))
        flat.append((A > 0 and r > 1 + xi) or (A < 0 and r < 1 - xi))
        clipped.append(abs(r - 1) > xi)
    assert res.loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert res.flat.tolist() == flat
    assert res.clipped.tolist() == clipped
    assert res.log_ratio.tolist() == pytest.approx([log_ratio(a, w[s]) for a, s in zip(A_VALS, STEPS)], rel=1e-6)
    assert res.metrics["clipfrac"] == pytest.approx(sum(clipped) / 4)
    assert res.metrics["zero_grad_frac"] == pytest.approx(sum(flat) / 4)
    assert res.metrics["approx_kl"] == pytest.approx(
        sum(0.5 * log_ratio(a, w[s]) ** 2 for a, s in zip(A_VALS, STEPS)) / 4, rel=1e-6)
    # the native log-ratio is what the objective saw here
    assert res.native_log_ratio.tolist() == pytest.approx(res.log_ratio.tolist(), rel=1e-6)


@pytest.mark.parametrize("objective, credit", [("pcpo", None), ("log_hinge", "pcpo"), ("log_hinge", "uniform"),
                                               ("log_hinge", None)])
def test_hinge_objectives_with_each_credit(objective, credit):
    xi = 1e-3
    step = PolicyStep(sampler(), objective=objective, credit=credit, clip_range=xi)
    res = step(*inputs(A_VALS, STEPS, ADV))
    native = native_weights()
    zeta = sum(native)
    w = {"native": native, "pcpo": [zeta * 0.25 / 1.0] * 4, "uniform": [zeta / 4] * 4}[step.credit]
    assert step.credit == (credit or ("pcpo" if objective == "pcpo" else "native"))
    terms, flat = [], []
    for a, s, A in zip(A_VALS, STEPS, ADV):
        lr = log_ratio(a, w[s])
        terms.append(max(0.0, xi * abs(A) - A * lr))
        flat.append(A * lr >= xi * abs(A) and A != 0)
    assert res.loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert res.flat.tolist() == flat
    assert res.clipped.tolist() == flat  # the hinges log their flat side as clipfrac
    # the native log-ratio is always reported with the sampler's own weights
    assert res.native_log_ratio.tolist() == pytest.approx(
        [log_ratio(a, native[s]) for a, s in zip(A_VALS, STEPS)], rel=1e-6)


def test_w_star_sets_the_mean_pcpo_weight():
    step = PolicyStep(sampler(), objective="pcpo", credit_opts={"w_star": 4.5})
    assert step.weights.tolist() == pytest.approx([4.5] * 4)
    # the option is ignored by schemes that do not declare it
    assert PolicyStep(sampler(), objective="clipped", credit_opts={"w_star": 4.5}).weights.tolist() == \
        pytest.approx(native_weights(), rel=1e-6)


def test_linear_only_drops_the_quadratic_term():
    step = PolicyStep(sampler(), objective="log_hinge", linear_only=True, clip_range=1e-3)
    res = step(*inputs(A_VALS, STEPS, ADV))
    w = native_weights()
    assert res.log_ratio.tolist() == pytest.approx([-w[s] * a for a, s in zip(A_VALS, STEPS)], rel=1e-6)


@pytest.mark.parametrize("form", ["pcpo", "flow-grpo"])
def test_kl_term_uses_its_declared_weight(form):
    beta, xi = 0.1, 1e-3
    step = PolicyStep(sampler(), objective="pcpo", clip_range=xi, kl_beta=beta, kl_form=form)
    assert step.needs_reference
    pred, old, z, adv, idx = inputs(A_VALS, STEPS, ADV)
    ref = pred - 0.5  # ‖p − p_ref‖² = 0.25 per pair
    res = step(pred, old, z, adv, idx, pred_ref=ref)
    base = PolicyStep(sampler(), objective="pcpo", clip_range=xi)(pred, old, z, adv, idx)
    native, zeta = native_weights(), sum(native_weights())
    if form == "pcpo":
        kl = [0.5 * (zeta / 4) ** 2 * 0.25] * 4
    else:
        kl = [0.5 * native[s] ** 2 * 0.25 * 0.25 for s in STEPS]
    assert res.metrics["kl"] == pytest.approx(sum(kl) / 4, rel=1e-6)
    assert res.loss.item() == pytest.approx(base.loss.item() + beta * sum(kl) / 4, rel=1e-6)
    assert res.metrics["loss"] == pytest.approx(res.loss.item())
    with pytest.raises(ValueError, match="pred_ref"):
        step(pred, old, z, adv, idx)


def test_registered_loss_weight_and_ratio_transform_plug_in():
    name_w, name_t = "test-step-index-weight", "test-halve"
    if name_w not in LOSS_WEIGHTS:
        LOSS_WEIGHTS.add(name_w, lambda table, scale=1.0: scale * torch.arange(1, table.num_steps + 1,
                                                                                dtype=torch.float64))
        RATIO_TRANSFORMS.add(name_t, lambda lr, inputs: 0.5 * lr)
    xi = 1e-3
    step = PolicyStep(sampler(), objective="log_hinge", clip_range=xi, loss_weight=name_w,
                      loss_weight_options={"scale": 2.0}, ratio_transform=name_t)
    res = step(*inputs(A_VALS, STEPS, ADV))
    w = native_weights()
    terms = [2.0 * (s + 1) * max(0.0, xi * abs(A) - A * 0.5 * log_ratio(a, w[s]))
             for a, s, A in zip(A_VALS, STEPS, ADV)]
    assert res.loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert res.log_ratio.tolist() == pytest.approx([0.5 * log_ratio(a, w[s]) for a, s in zip(A_VALS, STEPS)], rel=1e-6)


def test_unknown_names_fail_naming_the_field():
    for kw, field in [({"objective": "dpo"}, "train.objective"), ({"credit": "magic"}, "train.credit"),
                      ({"kl_form": "nope"}, "train.kl_form"), ({"loss_weight": "nope"}, "train.loss_weight"),
                      ({"ratio_transform": "nope"}, "train.ratio_transform")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            PolicyStep(sampler(), **kw)


def test_step_stats_per_step_and_minibatch_means():
    xi = 1e-3
    step = PolicyStep(sampler(), objective="clipped", clip_range=xi)
    stats = StepStats(N)
    r1 = step(*inputs([0.01, -0.02], [0, 1], [1.0, -1.0]))
    r2 = step(*inputs([1e-5, 0.02], [2, 1], [2.0, 1.0]))
    stats.add(r1, torch.tensor([0, 1]), 0.5)
    stats.add(r2, torch.tensor([2, 1]), 0.5)
    stats.end_minibatch(first=True)
    stats.grad_norms.append(2.0)
    out = stats.summary(1)
    c1, c2 = r1.clipped.tolist(), r2.clipped.tolist()
    assert out["clipfrac_per_step"] == [float(c1[0]), (c1[1] + c2[1]) / 2, float(c2[0]), None]
    assert out["trained_pairs"] == 4
    assert out["loss"] == pytest.approx(0.5 * r1.metrics["loss"] + 0.5 * r2.metrics["loss"])
    z = r1.flat.tolist() + r2.flat.tolist()
    assert out["zero_grad_frac"] == pytest.approx(sum(z) / 4)
    lr = [abs(x) for x in r1.native_log_ratio.tolist() + r2.native_log_ratio.tolist()]
    assert out["log_ratio_before_update_max"] == pytest.approx(max(lr))
    assert out["abs_log_ratio_per_step"][1] == pytest.approx((lr[1] + lr[3]) / 2)
    assert out["grad_norm"] == 2.0
