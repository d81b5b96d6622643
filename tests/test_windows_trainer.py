"""Peer methods wired into the trainer (micro model): SDE windows (Flow-GRPO-Fast, MixGRPO and its Flash
solver, TempFlow-GRPO branching), CPS, the pipeline grid, the model-input time convention and the EMA.
Model-evaluation counts are asserted from the trainer's own counters against what each window implies."""

import pytest
import torch

import micro
from pcpo.algo.credit import credit_weights
from pcpo.algo.windows import window_at
from pcpo.run import derived_generator
from pcpo.samplers import FlowSampler
from pcpo.samplers.flow import pipeline_grid
from pcpo.trainer.config import ConfigError, load_config
from pcpo.trainer.ema import ParameterEMA
from pcpo.trainer.trainer import Trainer

micro.register()

P, G, N = 2, 4, 8
BASE = [
    "model.family=micro-flow", "reward.name=redness", "eval.gold=false", "log.progress=false",
    "data.prompts=[a red cat, a blue dog]", "data.eval_prompts=[a red cat]", f"data.group_size={G}",
    f"data.prompts_per_epoch={P}", "eval.images_per_prompt=1", "log.tensorboard=false", "eval.grid=false",
    "eval.every=0", "train.advantage=group", "train.minibatch_size=0", "train.lr=1e-3", "sampler.name=flow-sde",
    f"sampler.steps={N}", "sampler.eta=0.7", "sampler.shift=3.0", "sampler.guidance_scale=3.0",
    "train.timestep_selection=first_fraction", "train.timestep_fraction=1.0", "threads=1", "seed=5",
]


def run(tmp_path, *extra, epochs=2, name="run"):
    cfg = load_config(None, BASE + [f"epochs={epochs}"] + list(extra))
    tr = Trainer(cfg, tmp_path / name)
    records = tr.train()
    return tr, records


def test_full_trajectory_counts(tmp_path):
    tr, recs = run(tmp_path)
    B = P * G
    assert tr.evaluations["rollout"] == 2 * B * N
    assert tr.evaluations["update"] == 2 * B * N            # every step stochastic and trained
    assert [r["trained_pairs"] for r in recs[1:]] == [B * N, B * N]
    assert tr.passes["rollout"] == 2 * N                     # one batched forward per step
    assert [r["passes"] for r in recs[1:]] == [B * N + B * N] * 2   # the epoch record's model evaluations


def test_flow_grpo_fast_window_trains_only_its_steps(tmp_path):
    tr, recs = run(tmp_path, "train.sde_window=flow_grpo_fast", "train.sde_window_options={size: 2}")
    B = P * G
    assert tr.evaluations["update"] == 2 * B * 2              # fewer passes, by exactly the window's share
    assert tr.evaluations["rollout"] == 2 * B * N             # the ODE prefix/suffix is still sampled
    assert [r["passes"] for r in recs[1:]] == [B * N + B * 2] * 2
    # the window each epoch drew, re-derived independently: its sampler is stochastic there only
    for epoch in (1, 2):
        w = window_at("flow_grpo_fast", N, epoch - 1, derived_generator(5, "window", epoch), {"size": 2})
        su = tr.plan.setups(epoch, 1, derived_generator(5, "window", epoch))[0]
        assert su.window.sde_steps == w.sde_steps and su.eligible == w.sde_steps
        assert torch.nonzero(su.sampler.stochastic).flatten().tolist() == w.sde_steps
        assert 0 <= w.sde_steps[0] <= N // 2 - 2


def test_shared_prefix_runs_the_ode_prefix_once_per_group(tmp_path):
    tr, _ = run(tmp_path, "train.sde_window=flow_grpo_fast", "sampler.shared_noise=true",
                "train.sde_window_options={size: 2, shared_prefix: true}", epochs=2)
    expected = 0
    for epoch in (1, 2):
        w = window_at("flow_grpo_fast", N, epoch - 1, derived_generator(5, "window", epoch),
                      {"size": 2, "shared_prefix": True})
        expected += P * w.forwards(N, G)                       # prefix once per group, then the group
    assert tr.evaluations["rollout"] == expected


def test_shared_prefix_equals_independent_rollouts():
    """Running the prefix once and copying it gives the trajectories of rolling every member out alone."""
    from pcpo.samplers import rollout
    from pcpo.samplers.branching import rollout_shared_prefix

    s = FlowSampler(6, eta=0.7, shift=3.0, sde_steps=[3, 4])
    W = torch.randn(3, 3, dtype=torch.float32)

    def predict(x, i, rows=None):
        return torch.tanh(x @ W) * (1 + i.float().view(-1, 1) / 10)

    x0 = torch.randn(2, 3).repeat_interleave(3, dim=0)          # 2 groups of 3 sharing their noise
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ref = rollout(s, x0, predict, generator=ga)
    got, cost = rollout_shared_prefix(s, x0, predict, [0, 0, 0, 1, 1, 1], first=3, generator=gb)
    for k in ("states", "noise", "preds", "final"):
        assert torch.allclose(getattr(got, k), getattr(ref, k), atol=1e-6), k
    assert cost == 3 * 2 + 3 * 6


def test_mix_grpo_window_moves_and_pcpo_credit_is_over_the_window(tmp_path):
    opts = "train.sde_window_options={size: 3, shift_interval: 1}"
    tr, recs = run(tmp_path, "train.sde_window=mix_grpo", opts, "train.objective=pcpo", "train.credit=pcpo")
    B = P * G
    assert tr.evaluations["update"] == 2 * B * 3
    s1 = tr.plan.setups(1, 1, None)[0]
    s2 = tr.plan.setups(2, 1, None)[0]
    assert s1.window.sde_steps == [0, 1, 2] and s2.window.sde_steps == [1, 2, 3]
    # PCPO credit over the window: zeta_window * dt_i / sum_window dt, zero outside
    full = FlowSampler(N, eta=0.7, shift=3.0)
    win = full.with_window([1, 2, 3])
    got = s2.policy.weights.double()
    assert torch.allclose(got[1:4], credit_weights("pcpo", win)[1:4].float().double())
    # proportionate within the window: weights in the ratio of the steps' dt
    dt = full.dt()[1:4]
    assert torch.allclose(got[1:4] / got[1:4].sum(), (dt / dt.sum()).float().double(), atol=1e-6)
    assert not torch.allclose(got[1:4], credit_weights("pcpo", full)[1:4].float().double())


def test_empty_mix_window_skips_the_update_and_leaves_weights(tmp_path):
    # without roll back the window sticks at the limit, where it is empty: nothing is trained
    opts = "train.sde_window_options={size: 2, shift_interval: 1, limit: 2, roll_back: false}"
    tr, recs = run(tmp_path, "train.sde_window=mix_grpo", opts, epochs=4)
    assert [r["trained_pairs"] for r in recs[1:]] == [P * G * 2, P * G, 0, 0]
    assert recs[3]["updates_empty_window"] == 1 and recs[4]["updates_empty_window"] == 1
    assert tr.optimizer_steps == 2


def test_flash_solver_rollouts_are_shorter(tmp_path):
    opts = "train.sde_window_options={size: 2, shift_interval: 1}"
    tr, _ = run(tmp_path, "train.sde_window=mix_grpo", opts, "sampler.solver=dpmsolver++",
                "sampler.compress_ratio=0.4")
    # window [0, 1] then [1, 2]: L + 1 points kept, M = int(max((N - L) * 0.4, 1)) after
    steps = [(1 + 1) + int(max((N - 1) * 0.4, 1)) - 1, (2 + 1) + int(max((N - 2) * 0.4, 1)) - 1]
    assert tr.passes["rollout"] == sum(steps)
    assert tr.evaluations["rollout"] == P * G * sum(steps)


def test_tempflow_branching_rows_and_cost(tmp_path):
    K = 3
    tr, recs = run(tmp_path, "train.sde_window=tempflow", f"train.sde_window_options={{children: {K}}}",
                   "train.loss_weight=tempflow", "train.advantage=prompt_mean_global_std")
    w = window_at("tempflow", N, 0, None, {"children": K})
    assert w.sde_steps == list(range(N - 1)) and w.trained == list(range(int(N * 0.99)))
    assert tr.evaluations["rollout"] == 2 * P * w.forwards(N, G)
    rows = P * len(w.sde_steps) * K
    assert recs[1]["trained_pairs"] == P * len(w.trained) * K and tr.evaluations["update"] == 2 * P * len(w.trained) * K
    assert rows > 0


def test_tempflow_children_share_the_trunk_and_their_branch_step():
    from pcpo.samplers.branching import rollout_per_step

    sde = FlowSampler(5, eta=0.7, shift=3.0, sde_steps=[0, 1, 2, 3])
    ode = FlowSampler(5, eta=0.0, shift=3.0, grid=sde.grid)
    W = torch.randn(2, 2)

    def predict(x, i, rows):
        return torch.tanh(x @ W) + rows.float().view(-1, 1)

    x = torch.randn(2, 2)
    traj, branch_of, cost = rollout_per_step(sde, ode, x, predict, [0, 2], 3, torch.Generator().manual_seed(0))
    assert branch_of.tolist() == [0, 0, 0, 2, 2, 2, 0, 0, 0, 2, 2, 2]
    assert cost == 2 * 3 + 2 * 3 * (4 + 2)
    # child (prompt 1, branch 2, child 1): its step-2 state is the trunk's, its next state the SDE draw
    r = (1 * 2 + 1) * 3 + 1
    trunk = x[1:2]
    for i in range(2):
        trunk = ode.step(i, trunk, predict(trunk, torch.tensor([i]), torch.tensor([1]))).prev_sample
    assert torch.allclose(traj.states[r, 2], trunk[0], atol=1e-6)
    v2 = predict(trunk, torch.tensor([2]), torch.tensor([1]))
    nxt = sde.step(2, trunk, v2, noise=traj.noise[r, 2:3]).prev_sample
    assert torch.allclose(traj.states[r, 3], nxt[0], atol=1e-6)
    assert torch.count_nonzero(traj.noise[r].flatten(1).abs().sum(1)).item() == 1


def test_cps_sampler_trains(tmp_path):
    tr, recs = run(tmp_path, "sampler.name=cps", "sampler.eta=0.8", "train.ratio_transform=flow_grpo_cps")
    assert tr.sampler.describe()["kind"] == "cps"
    assert recs[-1]["trained_pairs"] == P * G * (N - 1)        # CPS's last step (t' = 0) is deterministic


def test_pipeline_grid_is_the_stock_scheduler(tmp_path):
    cfg = load_config(None, BASE + ["sampler.grid=pipeline", "epochs=1"])
    tr = Trainer(cfg, tmp_path / "run")
    ref = pipeline_grid(N, {"num_train_timesteps": 1000, "shift": 3.0})
    assert torch.equal(tr.sampler.grid, ref)
    assert not torch.allclose(tr.sampler.grid, FlowSampler(N, shift=3.0).grid)
    assert torch.equal(tr.eval_sampler.grid, ref)


def test_floor1000_model_time(tmp_path, monkeypatch):
    cfg = load_config(None, BASE + ["sampler.model_time=floor1000", "epochs=1"])
    tr = Trainer(cfg, tmp_path / "run")
    seen = []
    orig = tr.adapter.predict

    def spy(x, t, cond, g):
        seen.append(t.double().clone())
        return orig(x, t, cond, g)

    monkeypatch.setattr(tr.adapter, "predict", spy)
    tr.rollout(1)
    exact = tr.sampler.timesteps
    got = torch.stack([s[0] for s in seen[:N]])
    assert torch.allclose(got, torch.floor(exact * 1000) / 1000)
    assert not torch.allclose(got, exact)


def test_ema_closed_form():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = ParameterEMA([p], decay=0.9, every=2)
    ref = torch.zeros(3)
    for k in range(6):
        with torch.no_grad():
            p.add_(1.0)
        ema.step(k)
        if (k + 1) % 2 == 0:
            d = min(0.9, (1 + k) / (10 + k))
            ref = ref + (1 - d) * (p.detach() - ref)
    assert torch.allclose(ema.shadow[0], ref)
    with ema.swapped():
        assert torch.allclose(p, ref)
    assert torch.allclose(p, torch.full((3,), 6.0))


def test_ema_final_weights_and_exact_resume(tmp_path):
    from safetensors.torch import load_file

    extra = ["train.ema_decay=0.9", "train.ema_every=1", "checkpoint.every=1", "train.minibatch_size=4"]
    tr, _ = run(tmp_path, *extra, epochs=3, name="a")
    final = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    raw = tr.adapter.trainable_state_dict()
    with tr.ema.swapped():
        avg = {k: v.clone() for k, v in tr.adapter.trainable_state_dict().items()}
    assert all(torch.equal(final[k], avg[k]) for k in final)
    assert any(not torch.equal(final[k], raw[k]) for k in final)
    # 2 epochs, then resume to 3: the same final (EMA) weights
    cfg = load_config(None, BASE + ["epochs=2"] + extra)
    Trainer(cfg, tmp_path / "b").train()
    tb = Trainer.resume(tmp_path / "b", ["epochs=3"])
    tb.train()
    final_b = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(final[k], final_b[k]) for k in final)


@pytest.mark.parametrize("override, key", [
    ("train.sde_window=sliding", "train.sde_window"),
    ("train.sde_window_options={size: 2}", "train.sde_window_options"),        # none takes no options
    ("sampler.solver=dpmsolver++", "sampler.solver"),                          # needs a window
    ("sampler.grid=cosine", "sampler.grid"),
    ("sampler.model_time=round", "sampler.model_time"),
    ("train.ema_decay=1.5", "train.ema_decay"),
    ("train.loss_weight_options={coef: 2}", "train.loss_weight_options"),     # none takes no options
    ("train.ratio_transform=ratio_norm", None),
])
def test_bad_peer_settings_name_the_field(override, key):
    if key is None:   # a valid setting, for contrast
        load_config(None, BASE + [override, "train.ratio_transform_options={bias: step_mean}"])
        return
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, BASE + [override])


def test_windows_need_a_flow_sde():
    with pytest.raises(ConfigError, match=r"train\.sde_window"):
        load_config(None, BASE + ["model.family=micro-ddpm", "sampler.name=ddim", "train.sde_window=mix_grpo"])
    with pytest.raises(ConfigError, match=r"sampler\.solver"):
        load_config(None, BASE + ["train.sde_window=flow_grpo_fast", "sampler.solver=dpmsolver++"])
