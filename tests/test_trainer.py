"""The training loop on a micro model: config validation, log-ratio consistency, learning, resume,
multi-process, non-finite handling. (The embedded-world default run is tested in test_default_run.py.)"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import micro
from pcpo.algo.advantages import GroupAdvantage
from pcpo.cli import main
from pcpo.trainer.config import CONFIG_DIR, ConfigError, load_config
from pcpo.trainer.trainer import Trainer, select_timesteps

micro.register()
HERE = Path(__file__).resolve().parent
RUN = [sys.executable, str(HERE / "micro_run.py")]

BASE = [
    "model.family=micro-flow", "reward.name=redness", "eval.gold=false", "log.progress=false",
    "data.prompts=[a red cat, a blue dog]", "data.eval_prompts=[a red cat]", "data.group_size=8",
    "data.prompts_per_epoch=2", "eval.images_per_prompt=2", "log.tensorboard=false",
    # pinned here so that changes to the shipped default config do not change these mechanics tests
    "train.advantage=group", "train.minibatch_size=0", "train.lr=1e-4", "sampler.guidance_scale=3.0",
]


def cfg(*extra):
    return load_config(None, BASE + list(extra))


# ------------------------------------------------------------------ config

@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=-1", "train.lr"),
        ("train.lrr=1", "train.lrr"),
        ("sampler.eta=0", "sampler.eta"),
        ("sampler.name=euler", "sampler.name"),
        ("train.objective=dpo", "train.objective"),
        ("data.group_size=1", "data.group_size"),
        ("train.timestep_fraction=1.5", "train.timestep_fraction"),
        ("epochs=abc", "epochs"),
        ("train.credit=magic", "train.credit"),
        ("nosuch.section=1", "nosuch"),
    ],
)
def test_bad_config_values_fail_with_the_key(override, key, tmp_path, capsys):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1
    assert not out.exists()  # failed before any work


def test_shipped_configs_validate():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert "default" in names
    for name in names:
        load_config(name)


def test_run_directory_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists"):
        Trainer(cfg("epochs=1"), out)
    assert (out / "precious.txt").read_text() == "keep me"


# ------------------------------------------------------------------ the loop

def test_timestep_selection_conventions():
    g = torch.Generator().manual_seed(0)
    steps = list(range(10))
    assert select_timesteps("first_fraction", 0.99, steps, g) == list(range(9))  # Flow-GRPO: never the last
    dance = select_timesteps("drop_last_random", 0.6, steps, g)
    assert len(dance) == 5 and 9 not in dance  # DanceGRPO: drop last, 60 % of the remaining 9
    ddpo = select_timesteps("all_shuffled", 1.0, steps, g)
    assert sorted(ddpo) == steps
    assert len(select_timesteps("all_shuffled", 0.5, steps, g)) == 5


@pytest.mark.parametrize("family, sampler", [("micro-flow", "flow-sde"), ("micro-flow", "dance-sde"), ("micro-ddpm", "ddim")])
def test_log_ratio_is_exactly_zero_before_the_first_update(family, sampler, tmp_path):
    # micro_batch = the rollout batch: the training forward sees the same rows as the rollout forward.
    c = cfg(f"model.family={family}", f"sampler.name={sampler}", "sampler.steps=6", "sampler.eta=1.0",
            "epochs=2", "train.micro_batch=16", "sampler.rollout_batch=16", "train.minibatch_size=8",
            "train.timestep_selection=first_fraction", "train.timestep_fraction=1.0", "train.lr=1e-2")
    records = [r for r in Trainer(c, tmp_path / "run").train() if r["epoch"] > 0]
    for r in records:
        assert r["log_ratio_before_update_max"] == 0.0
        # the second minibatch of the epoch is trained after an update: off-policy, non-zero
        assert max(v for v in r["abs_log_ratio_per_step"] if v is not None) > 0


def test_batched_update_uses_fewer_forwards_and_agrees(tmp_path):
    """Mixed-timestep micro-batches: far fewer forwards; log ρ before the update is zero up to fp noise."""
    c = cfg("epochs=1", "sampler.steps=6", "train.micro_batch=96", "train.timestep_fraction=1.0")
    r = Trainer(c, tmp_path / "run").train()[-1]
    assert r["trained_pairs"] == 16 * 6 and r["forward_passes"] == 1
    assert r["log_ratio_before_update_max"] < 1e-6


def test_reward_rises_on_micro_model(tmp_path):
    c = cfg("epochs=6", "train.lr=3e-3", "eval.every=0")
    recs = Trainer(c, tmp_path / "run").train()
    train = [r["reward_mean"] for r in recs if "reward_mean" in r]
    evals = [r["eval_reward_mean"] for r in recs if "eval_reward_mean" in r]
    assert train[-1] > train[0] + 0.2
    assert evals[-1] > evals[0] + 0.2
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.jsonl", "curves.png", "credit.json", "images/epoch-00006.png",
              "final/model.safetensors"):
        assert (run / f).exists(), f
    rec = recs[-1]
    for key in ("epoch", "reward_mean", "reward_std", "clipfrac", "zero_grad_frac", "loss", "time_s", "clipfrac_per_step",
                "abs_log_ratio_per_step"):
        assert key in rec
    assert len(rec["clipfrac_per_step"]) == 10


def test_kl_to_frozen_reference(tmp_path):
    c = cfg("epochs=2", "train.kl_beta=0.1", "train.lr=3e-3", "train.minibatch_size=8")
    recs = Trainer(c, tmp_path / "run").train()
    assert recs[1]["kl_first"] == 0.0  # before any update the policy is the reference
    assert recs[2]["kl_first"] > 0 and recs[2]["kl"] > 0


def test_nonfinite_reward_skips_and_stops(tmp_path):
    calls = {"n": 0}

    def flaky(images, prompts):
        calls["n"] += 1
        r = micro.redness(images, prompts)
        return r * float("nan") if calls["n"] >= 2 else r

    c = cfg("epochs=6", "train.max_nonfinite=2")
    tr = Trainer(c, tmp_path / "run", reward_fn=flaky)
    with pytest.raises(RuntimeError, match="2 consecutive updates skipped"):
        tr.train()
    recs = tr.read_metrics()
    assert recs[-1]["updates_skipped"] == 1 and recs[-1]["nonfinite_total"] == 1


# ------------------------------------------------------------------ resume after SIGKILL

def _weights(run):
    return load_file(str(Path(run) / "final" / "model.safetensors"))


def _metrics(run):
    out = []
    for ln in (Path(run) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(ln)
        out.append({k: v for k, v in r.items() if not k.startswith("time")})
    return out


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    args = ["train", "--set", "epochs=4", "--set", "checkpoint.every=1", "--set", "train.minibatch_size=8",
            "--set", "train.lr=3e-3", "--set", "eval.every=2"]
    for b in BASE:
        args += ["--set", b]
    env = {**os.environ, "PCPO_TEST_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(RUN + args + ["--out", str(full)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    marker = tmp_path / "marker"
    env_stall = {**env, "PCPO_TEST_STALL_AT": "5", "PCPO_TEST_MARKER": str(marker)}
    stall_args = [a.replace("reward.name=redness", "reward.name=stalling_redness") for a in args]
    proc = subprocess.Popen(RUN + stall_args + ["--out", str(killed)], env=env_stall,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the run never reached epoch 3"  # reward calls: eval 0, ep 1, ep 2, eval 2, ep 3
    proc.send_signal(signal.SIGKILL)  # in the middle of epoch 3 (after its rollout, before its update)
    proc.wait()
    ckpts = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert ckpts == ["epoch-000001", "epoch-000002"]
    assert not (killed / "final").exists()

    res = subprocess.run(RUN + ["train", "--resume", str(killed)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "after epoch 2" in res.stdout
    wf, wk = _weights(full), _weights(killed)
    assert wf.keys() == wk.keys()
    for k in wf:
        assert torch.equal(wf[k], wk[k]), k
    assert _metrics(full) == _metrics(killed)


# ------------------------------------------------------------------ torchrun, 2 processes

def _torchrun(out, *extra):
    args = ["train", "--out", str(out), "--set", "epochs=2", "--set", "log.per_sample=true",
            "--set", "train.minibatch_size=8", "--set", "train.lr=3e-3"]
    for b in BASE + list(extra):
        args += ["--set", b]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "micro_run.py")] + args
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_torchrun_two_processes_match_single_process_advantages(tmp_path):
    out = tmp_path / "dist"
    res = _torchrun(out)
    assert res.stdout.count("run directory:") == 1  # rank 0 speaks
    recs = [r for r in _metrics(out) if r["epoch"] > 0]
    assert len(recs) == 2
    for r in recs:
        rewards = torch.tensor(r["rewards"])
        assert len(rewards) == 16
        expect = GroupAdvantage(adv_clip=5.0)(rewards, r["group_keys"])
        torch.testing.assert_close(torch.tensor(r["advantages"]), expect)
        # each rank sampled its own half: no duplicated images across ranks within a group
        assert not torch.allclose(rewards[:4], rewards[4:8])
        assert r["params_rank_spread"] == 0.0
    assert not math.isnan(recs[-1]["loss"])


def test_fsdp_equals_ddp(tmp_path):
    """FSDP (fully_shard, gloo on CPU) trains the same weights as the all-reduce (DDP) path."""
    _torchrun(tmp_path / "ddp", "distributed=ddp")
    _torchrun(tmp_path / "fsdp", "distributed=fsdp")
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "fsdp")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    rewards = [[r["reward_mean"] for r in _metrics(d) if "reward_mean" in r] for d in (tmp_path / "ddp", tmp_path / "fsdp")]
    assert len(rewards[0]) == 2 and rewards[0] == pytest.approx(rewards[1], rel=1e-5)


def test_bf16_autocast_trains(tmp_path):
    c = cfg("epochs=3", "train.mixed_precision=bf16", "train.lr=3e-3", "eval.every=0")
    recs = [r for r in Trainer(c, tmp_path / "run").train() if "reward_mean" in r]
    assert all(math.isfinite(r["loss"]) and r["updates_skipped"] == 0 for r in recs)
    assert recs[-1]["reward_mean"] > recs[0]["reward_mean"] + 0.1


def test_fsdp_per_block_equals_ddp_on_the_toy_mmdit(tmp_path):
    """The embedded toy-flow MMDiT has transformer blocks, so FSDP shards each block before the root;
    the weights it trains equal the all-reduce path's."""
    toy = ["model.family=toy-flow", "reward.name=color_match", "data.prompts=world:train", "data.eval_prompts=[a red circle]",
           "data.group_size=4", "data.prompts_per_epoch=2", "sampler.steps=4", "eval.images_per_prompt=1",
           "train.minibatch_size=4", "threads=1", "epochs=1", "eval.grid=false", "eval.gold=false",
           "log.tensorboard=false", "log.progress=false", "train.lr=1e-4"]

    def launch(out, mode):
        args = ["train", "--out", str(out)] + [a for b in toy + [f"distributed={mode}"] for a in ("--set", b)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "micro_run.py")] + args
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]

    launch(tmp_path / "ddp", "ddp")
    launch(tmp_path / "fsdp", "fsdp")
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "fsdp")
    assert a.keys() == b.keys() and len(a) > 0
    changed = False
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    from pcpo.models.toy import load_toy_model

    base = load_toy_model("toy-flow").trainable_state_dict()
    changed = any(not torch.equal(base[k], a[k]) for k in a if k in base)
    assert changed
