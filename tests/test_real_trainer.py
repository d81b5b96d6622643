"""One full training iteration (rollout, reward, update) of ``pcpo.trainer`` on every real family's tiny
pipeline, with LoRA and with full fine-tuning: the first update starts on-policy (log ρ = 0), the weights
move, and the final weights are saved in a form stock diffusers loads."""

from __future__ import annotations

import pytest
import torch

import micro  # the lead's micro test helpers: registers the cheap "redness" reward
from pcpo.trainer.config import load_config
from pcpo.trainer.trainer import Trainer

micro.register()

SAMPLERS = {  # the family's baseline sampler, 3 steps
    "sd": ["sampler.name=ddim", "sampler.eta=1.0", "sampler.guidance_scale=5.0"],
    "sdxl": ["sampler.name=ddim", "sampler.eta=1.0", "sampler.guidance_scale=5.0"],
    "sd3": ["sampler.name=flow-sde", "sampler.eta=0.7", "sampler.shift=3.0", "sampler.guidance_scale=4.5"],
    "flux": ["sampler.name=dance-sde", "sampler.eta=0.3", "sampler.shift=3.0", "sampler.guidance_scale=3.5"],
}


def run_one_iteration(tiny_pipelines, tmp_path, family: str, mode: str):
    from pcpo.models.tiny import TINY_SPEC_DEFAULTS

    opts = ",".join(f"{k}: {v}" for k, v in TINY_SPEC_DEFAULTS[family].items())
    overrides = [
        f"model.family={family}", f"model.path={tiny_pipelines(family)}", f"model.options={{{opts}}}",
        "device=cpu", "reward.name=redness", "data.prompts=[a red cat, a blue dog]",
        "data.eval_prompts=[a red cat]", "data.prompts_per_epoch=2", "data.group_size=2", "epochs=1",
        "eval.every=0", "eval.images_per_prompt=1", "eval.gold=false", "log.progress=false",
        "log.tensorboard=false", "sampler.steps=3", "train.lr=1e-2", "train.clip_range=1.0",
        "train.objective=pcpo", "train.max_grad_norm=0", "train.minibatch_size=0", "train.advantage=group",
        *SAMPLERS[family],
    ]
    if mode == "lora":
        overrides += ["model.lora={rank: 4, alpha: 8, init: gaussian}", "train.kl_beta=0.01"]
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.adapter.trainable_state_dict().items()}
    metrics = trainer.train()
    after = trainer.adapter.trainable_state_dict()
    return trainer, metrics, before, after


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("family", [
    pytest.param("sd", marks=pytest.mark.slow), pytest.param("sdxl", marks=pytest.mark.slow), "sd3", "flux",
])  # UNet families: 13-60 s each on the shared 2-core machine under load; the flow families 5-22 s
def test_one_training_iteration(tiny_pipelines, tmp_path, family, mode):
    trainer, metrics, before, after = run_one_iteration(tiny_pipelines, tmp_path, family, mode)
    rec = [m for m in metrics if m.get("epoch") == 1 and "loss" in m][-1]
    # on-policy: the first minibatch's log-ratio is 0 (same weights, same prediction) up to float noise
    assert rec["log_ratio_before_update_max"] is not None and rec["log_ratio_before_update_max"] < 1e-4
    assert rec["updates_skipped"] == 0 and rec["trained_pairs"] > 0
    assert torch.isfinite(torch.tensor(rec["loss"]))
    if mode == "lora":
        assert all("lora_" in k for k in after) and rec["kl_first"] is not None
    moved = max((after[k].float() - before[k].float()).abs().max().item() for k in before)
    assert moved > 0, "the update did not change the trainable weights"
    final = tmp_path / "run" / "final"
    if mode == "lora":
        assert (final / "pytorch_lora_weights.safetensors").is_file()
    else:
        assert (final / "config.json").is_file()
