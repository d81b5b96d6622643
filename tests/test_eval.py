"""Evaluation tools: epochs-to-target and intervals, Implicit Reward Guidance, ``pcpo eval``/``sample``,
bad run directories."""

import json
import math

import pytest
import torch

import micro
from pcpo.cli import main
from pcpo.eval import stats
from pcpo.eval.irg import IRGAdapter, ReferenceView
from pcpo.eval.runs import resolve_run
from pcpo.samplers import SCHEDULE_PRESETS, DDIMSampler, FlowSampler, sample
from pcpo.trainer.config import load_config
from pcpo.trainer.trainer import Trainer

micro.register()

BASE = [
    "model.family=micro-flow", "reward.name=redness", "eval.gold=false", "log.progress=false",
    "data.prompts=[a red cat, a blue dog]", "data.eval_prompts=[a red cat, a blue dog]", "data.group_size=8",
    "data.prompts_per_epoch=2", "eval.images_per_prompt=2", "log.tensorboard=false", "train.lr=3e-3",
    "train.minibatch_size=8", "eval.every=1", "checkpoint.every=1", "checkpoint.keep_last=5", "sampler.steps=6",
]


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    recs = Trainer(load_config(None, BASE + ["epochs=3"]), run).train()
    return run, recs


# ------------------------------------------------------------------ statistics

def test_epochs_to_target_on_synthetic_curves():
    epochs = [0, 1, 2, 3, 4, 5]
    curve = [0.1, 0.3, 0.55, 0.61, 0.59, 0.8]
    assert stats.epochs_to_target(epochs, curve, 0.6) == 3
    assert stats.epochs_to_target(epochs, curve, 0.1) == 0
    assert stats.epochs_to_target(epochs, curve, 0.9) is None  # never reached
    # trailing mean of 2: (0.61+0.59)/2 = 0.60 at epoch 4
    assert stats.epochs_to_target(epochs, curve, 0.6, smooth=2) == 4
    # missing measurements (None / nan) are skipped, order does not matter
    assert stats.epochs_to_target([4, 2, 0, 6], [0.7, None, 0.1, float("nan")], 0.6) == 4
    vals, n = stats.censored([3, None, 5], cap=10)
    assert vals == [3.0, 10.0, 5.0] and n == 1


def test_confidence_intervals():
    m, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * sd(=1) / sqrt(n)
    assert m == 2.0 and lo == pytest.approx(2 - half, abs=1e-9) and hi == pytest.approx(2 + half, abs=1e-9)
    assert stats.t_interval([5.0]) == (5.0, 5.0, 5.0)
    m, lo, hi = stats.bootstrap_interval([4.0, 4.0, 4.0])
    assert (m, lo, hi) == (4.0, 4.0, 4.0)
    m, lo, hi = stats.bootstrap_interval([0.0, 10.0], n_boot=4000)
    assert m == 5.0 and lo == 0.0 and hi == 10.0  # resampling two values reaches both ends
    sp, lo, hi = stats.speedup_interval([10.0, 10.0], [8.0, 8.0])
    assert sp == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    sp, lo, hi = stats.speedup_interval([10.0, 14.0], [8.0, 12.0])
    assert sp == pytest.approx(12 / 10 - 1) and lo < sp < hi


# ------------------------------------------------------------------ IRG

def _pair(kind="flow"):
    fam = "micro-flow" if kind == "flow" else "micro-ddpm"
    base = micro.MicroAdapter.from_spec({"family": fam, "seed": 0})
    tuned = micro.MicroAdapter.from_spec({"family": fam, "seed": 1})
    return base, tuned


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_irg_end_points_are_exact_and_middle_is_linear(kind):
    base, tuned = _pair(kind)
    cond = base.encode_prompts(["a red cat", "a blue dog"] * 2)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.6) if kind == "flow" else torch.full((4,), 601)
    with torch.no_grad():
        p_ref, p_k = base.predict(x, t, cond, 3.0), tuned.predict(x, t, cond, 3.0)
        assert torch.equal(IRGAdapter(base, [(tuned, 0.0)]).predict(x, t, cond, 3.0), p_ref)
        assert torch.equal(IRGAdapter(base, [(tuned, 1.0)]).predict(x, t, cond, 3.0), p_k)
        for g in (0.5, 1.5, -0.5):
            got = IRGAdapter(base, [(tuned, g)]).predict(x, t, cond, 3.0)
            torch.testing.assert_close(got, p_ref + g * (p_k - p_ref), atol=1e-6, rtol=0)
        # composition of two fine-tunes
        tuned2 = micro.MicroAdapter.from_spec({"family": base.family, "seed": 2})
        p_2 = tuned2.predict(x, t, cond, 3.0)
        got = IRGAdapter(base, [(tuned, 0.5), (tuned2, 1.5)]).predict(x, t, cond, 3.0)
        torch.testing.assert_close(got, p_ref + 0.5 * (p_k - p_ref) + 1.5 * (p_2 - p_ref), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_irg_samples_match_base_and_trained_at_the_end_points(kind):
    base, tuned = _pair(kind)
    if kind == "flow":
        sampler = FlowSampler(6, eta=0.0, noise="dance", shift=3.0)
    else:
        sampler = DDIMSampler(6, eta=0.0, **SCHEDULE_PRESETS["sd15"])
    prompts = ["a red cat", "a blue dog"]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    s_ref = sample(base, sampler, prompts, 3.0, x=x)
    s_k = sample(tuned, sampler, prompts, 3.0, x=x)
    assert torch.equal(sample(IRGAdapter(base, [(tuned, 0.0)]), sampler, prompts, 3.0, x=x), s_ref)
    assert torch.equal(sample(IRGAdapter(base, [(tuned, 1.0)]), sampler, prompts, 3.0, x=x), s_k)
    mid = sample(IRGAdapter(base, [(tuned, 0.5)]), sampler, prompts, 3.0, x=x)
    assert not torch.allclose(mid, s_ref) and not torch.allclose(mid, s_k)


def test_irg_rejects_bad_inputs():
    base, tuned = _pair("flow")
    with pytest.raises(ValueError, match="at least one"):
        IRGAdapter(base, [])
    ddpm = micro.MicroAdapter.from_spec({"family": "micro-ddpm"})
    with pytest.raises(ValueError, match="predicts"):
        IRGAdapter(base, [(ddpm, 1.0)])
    with pytest.raises(ValueError, match="no built-in reference"):
        ReferenceView(tuned)  # full fine-tuning: the base must be loaded separately


def _toy_or_skip(lora=None):
    try:
        from pcpo.models.toy import load_toy_model

        return load_toy_model("toy-flow", lora=lora)
    except Exception as e:  # noqa: BLE001  (weights not shipped yet / peft missing)
        pytest.skip(f"toy-flow not available: {type(e).__name__}: {e}")


def test_irg_on_toy_model_full_and_lora():
    import copy

    base = _toy_or_skip()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.denoiser.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    prompts = ["a red circle", "a blue square"]
    cond = base.encode_prompts(prompts)
    x = base.initial_noise(2, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.7)
    with torch.no_grad():
        p_ref, p_k = base.predict(x, t, cond, 3.0), tuned.predict(x, t, cond, 3.0)
        assert not torch.allclose(p_ref, p_k)
        assert torch.equal(IRGAdapter(base, [(tuned, 0.0)]).predict(x, t, cond, 3.0), p_ref)
        assert torch.equal(IRGAdapter(base, [(tuned, 1.0)]).predict(x, t, cond, 3.0), p_k)
        # LoRA: the reference is the same adapter with LoRA off, identical to the base model
        lora = _toy_or_skip(lora={"rank": 4})
        for name, p in lora.denoiser.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        ref = ReferenceView(lora)
        torch.testing.assert_close(ref.predict(x, t, cond, 3.0), p_ref, atol=1e-6, rtol=0)
        p_lora = lora.predict(x, t, cond, 3.0)
        assert not torch.allclose(p_lora, p_ref, atol=1e-4)
        got = IRGAdapter(ref, [(lora, 2.0)]).predict(x, t, cond, 3.0)
        torch.testing.assert_close(got, p_ref + 2.0 * (p_lora - p_ref), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ pcpo eval / sample

def test_eval_reproduces_the_runs_own_evaluations(micro_run, tmp_path, capsys):
    run, recs = micro_run
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["weights"] == "final" and res["epoch"] == 3
    # same fixed noise and deterministic sampler as the trainer's held-out evaluation
    assert res["base"]["reward_mean"] == pytest.approx(recs[0]["eval_reward_mean"], abs=1e-5)
    assert res["trained"]["reward_mean"] == pytest.approx(recs[-1]["eval_reward_mean"], abs=1e-5)
    assert res["trained"]["reward_mean"] > res["base"]["reward_mean"] + 0.05
    assert set(res["per_prompt"]) == {"a red cat", "a blue dog"}
    assert "reward_mean" in capsys.readouterr().out
    # a checkpoint directory evaluates that epoch
    ckpt = run / "checkpoints" / "epoch-000002"
    assert main(["eval", str(ckpt), "--out", str(out), "--no-base"]) == 0
    res = json.loads(out.read_text())
    assert res["epoch"] == 2 and "base" not in res
    assert res["trained"]["reward_mean"] == pytest.approx(recs[2]["eval_reward_mean"], abs=1e-5)


def test_sample_irg_sweep_moves_the_reward(micro_run, tmp_path, capsys):
    run, _ = micro_run
    out = tmp_path / "sweep.png"
    assert main(["sample", "--run", str(run), "--sweep", "0,1,2", "--reward", "redness", "--images-per-prompt", "2",
                 "--out", str(out)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "redness =" in ln]
    r = [float(ln.split("=")[-1]) for ln in lines]
    assert len(r) == 3 and r[0] < r[1] < r[2]  # γ dials the reward: base < trained < extrapolated
    assert out.stat().st_size > 0
    assert main(["sample", "--run", str(run), "--run", str(run), "--guidance-scale", "0.5", "--guidance-scale", "0.5",
                 "--out", str(tmp_path / "two.png")]) == 0


@pytest.mark.parametrize("cmd", [["eval"], ["report"], ["sample", "--run"]])
def test_bad_run_dir_is_a_one_line_error(cmd, tmp_path, capsys):
    for bad in (tmp_path / "missing", tmp_path):  # missing, and a directory that is not a run
        assert main(cmd + [str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err and str(bad) in err


def test_resolve_run_without_weights(tmp_path):
    run = tmp_path / "r"
    Trainer(load_config(None, BASE + ["epochs=1"]), run)  # creates config.yaml only
    with pytest.raises(ValueError, match="no trained weights"):
        resolve_run(run)


def test_sample_base_model_grid(tmp_path, capsys):
    out = tmp_path / "base.png"
    assert main(["sample", "--model", "micro-flow", "--images-per-prompt", "1", "--reward", "redness",
                 "--out", str(out)]) == 0
    assert "base: 8 images" in capsys.readouterr().out  # world:heldout, 8 prompts
    from PIL import Image

    assert Image.open(out).size[1] > 8 * 16
    assert main(["sample", "--model", "micro-flow", "--guidance-scale", "2", "--out", str(out)]) == 2
