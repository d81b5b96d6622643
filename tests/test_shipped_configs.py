"""The shipped framework configs learn at their own settings: the held-out reward rises.

Under their published CFG (DDPO 5, DanceGRPO 3.5, Flow-GRPO 4.5) almost every rollout of the embedded
models is classified right with near-certainty, so the default `alignment` reward is saturated
(log p ~ 0) and gives no signal.
The framework configs therefore train `color_match`, which has headroom, at lr 1e-4; the benchmark
(`benchmarks/bench-world.yaml`) uses the same reward and lr. The runs below are the shipped Flow-GRPO,
DanceGRPO and DDPO PCPO configs with their reward, lr, sampler, advantage estimator, timestep selection and
objective, and smaller batches (one prompt per epoch) and fewer epochs (about 25 s, 65 s and 2 min of
single-thread CPU).
"""

import json
from pathlib import Path

import pytest

from pcpo.cli import main
from pcpo.eval.bench import load_bench_spec, run_overrides
from pcpo.trainer.config import load_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench-world.yaml"
FRAMEWORKS = ("ddpo", "dancegrpo", "flowgrpo")
VARIANTS = ("", "-loghinge", "-pcpo")


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_framework_configs_train_the_benchmarked_reward_and_lr(fw):
    """Every framework config trains what the benchmark measured, so "the shipped lr/reward" stays true."""
    spec = load_bench_spec(str(BENCH))
    name, overrides = run_overrides(spec, fw, "pcpo", 0)
    bench = load_config(name, overrides)
    for v in VARIANTS:
        cfg = load_config(fw + v)
        assert cfg.reward.name == bench.reward.name == "color_match", (fw + v, cfg.reward.name)
        assert not cfg.reward.weights and not cfg.reward.options
        assert cfg.train.lr == bench.train.lr == 1.0e-4, (fw + v, cfg.train.lr)


# (config, epochs, overrides, margin). Batches: one prompt per epoch, DanceGRPO's shipped group of 12,
# 8 for Flow-GRPO; minibatches so that each epoch takes 4 (Flow-GRPO) or 2 (DanceGRPO) optimizer steps.
# Held-out evaluation on the 8 held-out prompts x 2 images from fixed noise. Measured (1 thread):
#   flowgrpo-pcpo, 4 epochs: 0.280 -> 0.303, 0.302, 0.305 (seeds 0, 1, 2), accuracy 1.00 throughout
#   dancegrpo-pcpo, 6 epochs: 0.269 -> 0.285, 0.287, 0.279, 0.273 (seeds 0-3), accuracy 1.00 throughout
#     (after 4 epochs seeds 2 and 3 were still at 0.270 / 0.269: DanceGRPO starts slowly)
#   ddpo-pcpo, 4 epochs, one prompt x 16 (minibatch 8: 2 optimizer steps, all 50 steps trained):
#     0.245 -> 0.280, 0.268, 0.276 (seeds 0, 1, 2), accuracy 0.94 -> 0.88, 0.94, 0.88
# The margins are about half the smallest measured gain. DDPO needs 16 samples of its prompt per epoch: its
# stat tracker falls back to the batch's global statistics below 16 samples of a prompt (published
# min_count), and with 8 per prompt (the former shipped 4 x 8) the held-out reward dipped before rising.
CASES = [
    pytest.param(
        "flowgrpo-pcpo", 4, ["data.group_size=8", "train.minibatch_size=2"], 0.012, id="flowgrpo-pcpo"
    ),
    pytest.param(
        "dancegrpo-pcpo", 6, ["data.group_size=12", "train.minibatch_size=6"], 0.002, id="dancegrpo-pcpo"
    ),
    pytest.param("ddpo-pcpo", 4, ["data.group_size=16", "train.minibatch_size=8"], 0.012, id="ddpo-pcpo"),
]


@pytest.mark.slow
@pytest.mark.parametrize("config,epochs,overrides,margin", CASES)
def test_shipped_config_raises_heldout_reward(tmp_path, config, epochs, overrides, margin):
    out = tmp_path / "run"
    sets = [
        f"epochs={epochs}",
        "data.prompts_per_epoch=1",
        *overrides,
        "eval.every=0",
        "eval.images_per_prompt=2",
        "eval.grid=false",
        "checkpoint.every=100",
        "log.tensorboard=false",
        "log.progress=false",
    ]
    assert main(["train", config, "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    cfg = load_config(str(out / "config.yaml"))
    shipped = load_config(config)
    # the run trained the shipped reward, lr, sampler and objective
    assert cfg.reward == shipped.reward and cfg.train.lr == shipped.train.lr
    assert cfg.sampler == shipped.sampler and cfg.train.objective == shipped.train.objective
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "eval_reward_mean" in r]
    assert [r["epoch"] for r in evals] == [0, epochs]
    start, end = evals[0]["eval_reward_mean"], evals[-1]["eval_reward_mean"]
    assert end > start + margin, (config, start, end)
    # the gold metric the reward never sees does not collapse (at most 2 of the 16 images lost)
    assert evals[-1]["gold_prompt_accuracy"] >= evals[0]["gold_prompt_accuracy"] - 0.13
