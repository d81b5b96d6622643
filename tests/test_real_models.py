"""Real-model adapters (SD1.x/2.x, SDXL, SD3, FLUX) on tiny random pipelines built from configs.

The pipelines are saved with ``save_pretrained`` and loaded by ``load_model`` through ``from_pretrained``
(``HF_HUB_OFFLINE=1``); every check compares against the stock diffusers pipeline or a closed form.
"""

from __future__ import annotations

import pytest
import torch

from pcpo.models import MODEL_FAMILIES, load_model
from pcpo.samplers import DDIMSampler, FlowSampler, sample

FAMILIES = ("sd", "sdxl", "sd3", "flux")
PROMPTS = ["a red cat", "a blue dog on the grass"]
STEPS = 4


def deterministic_sampler(adapter, steps: int = STEPS):
    """η = 0 DDIM / Euler ODE on the stock pipeline's own grid."""
    if adapter.prediction_type in ("epsilon", "v_prediction"):
        return DDIMSampler(steps, eta=0.0, **adapter.ddim_schedule())
    return FlowSampler(steps, eta=0.0, grid=adapter.flow_grid(steps))


def stock_pipeline(adapter, path: str, lora_dir: str | None = None):
    pipe = type(adapter.pipe).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(lora_dir)
    return pipe


def stock_generate(pipe, family: str, prompts, guidance: float, seed: int, steps: int = STEPS, output_type="latent"):
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
              generator=torch.Generator().manual_seed(seed), output_type=output_type)
    if family in ("sd3", "flux"):
        kw["max_sequence_length"] = 16
    out = pipe(list(prompts), **kw).images
    if family == "flux" and output_type == "latent":
        from pcpo.models.flux import unpack_latents

        out = unpack_latents(out, 16, 16)
    return out


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4):
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol:g}·{scale:.3g}"


# ------------------------------------------------------------------------------------- loader


def test_loader_families_and_errors(tiny_pipelines):
    assert {"sd", "sdxl", "sd3", "flux"} <= set(MODEL_FAMILIES)
    with pytest.raises(ValueError, match="model.family: unknown family 'nope'"):
        load_model({"family": "nope", "path": "x"})
    with pytest.raises(ValueError, match=r"model: unknown keys \['rnak'\]"):
        load_model({"family": "sd", "path": "x", "rnak": 4})
    with pytest.raises(ValueError, match="model.lora: unknown keys") as e:
        load_model(tiny_pipelines.spec("sd", lora={"rank": 4, "alhpa": 8}))
    assert "\n" not in str(e.value)


def test_missing_weights_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="model.path: cannot load") as e:
        load_model({"family": "sd3", "path": str(tmp_path / "no-such-model"), "device": "cpu"})
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------- parity with diffusers


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_rollout_matches_stock_pipeline(tiny_pipelines, family):
    adapter = load_model(tiny_pipelines.spec(family, lora={"rank": 4}))
    guidance = 3.5
    x = sample(adapter, deterministic_sampler(adapter), PROMPTS, guidance, generator=torch.Generator().manual_seed(7))
    images = adapter.decode(x)
    pipe = stock_pipeline(adapter, tiny_pipelines(family))
    ref_latents = stock_generate(pipe, family, PROMPTS, guidance, seed=7)
    ref_images = stock_generate(pipe, family, PROMPTS, guidance, seed=7, output_type="pt")
    assert x.shape == ref_latents.shape and x.dtype == torch.float32
    assert_close(x, ref_latents)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert 0.0 <= images.min().item() and images.max().item() <= 1.0
    assert_close(images, ref_images)
    # a different seed gives a different image (the comparison is not vacuous)
    other = sample(adapter, deterministic_sampler(adapter), PROMPTS, guidance, generator=torch.Generator().manual_seed(8))
    assert (other - x).abs().max() > 1e-2


def test_sd_v_prediction_matches_stock(tiny_pipelines):
    adapter = load_model(tiny_pipelines.spec("sd", prediction_type="v_prediction"))
    assert adapter.prediction_type == "v_prediction"
    assert adapter.ddim_schedule()["prediction_type"] == "v_prediction"
    x = sample(adapter, deterministic_sampler(adapter), PROMPTS, 5.0, generator=torch.Generator().manual_seed(1))
    ref = stock_generate(stock_pipeline(adapter, tiny_pipelines("sd", "v_prediction")), "sd", PROMPTS, 5.0, seed=1)
    assert_close(x, ref)


def test_ddim_schedule_read_from_config(tiny_pipelines):
    from diffusers import DDIMScheduler

    adapter = load_model(tiny_pipelines.spec("sd"))
    sch = adapter.ddim_schedule()
    assert sch["schedule"] == "scaled_linear" and sch["steps_offset"] == 1 and sch["final_alpha_one"] is False
    assert sch["beta_start"] == pytest.approx(0.00085) and sch["beta_end"] == pytest.approx(0.012)
    s = DDIMSampler(50, eta=1.0, **sch)
    ref = DDIMScheduler.from_config(adapter.pipe.scheduler.config)
    ref.set_timesteps(50)
    assert torch.equal(s.timesteps, ref.timesteps)
    w = s.native_weights()  # docs/method.md §5: SD1.5, 50 steps, η = 1
    assert w.min().item() == pytest.approx(0.374, abs=5e-4) and w.max().item() == pytest.approx(3.275, abs=5e-4)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_grid_is_the_stock_schedule(tiny_pipelines, family):
    import numpy as np

    adapter = load_model(tiny_pipelines.spec(family))
    grid = adapter.flow_grid(10)
    assert grid.shape == (11,) and grid[0] == pytest.approx(1.0) and grid[-1] == 0.0
    if family == "sd3":  # static shift 3 on the scheduler's own linspace
        sig = torch.linspace(1000, adapter.pipe.scheduler.sigma_min * 1000, 10, dtype=torch.float64) / 1000
        assert torch.allclose(grid[:-1], 3 * sig / (1 + 2 * sig), atol=1e-6)
    else:  # FLUX: exponential shift exp(mu) / (exp(mu) + 1/s - 1) of linspace(1, 1/N, N)
        from pcpo.models.sd3 import calculate_shift

        mu = calculate_shift(adapter.image_seq_len(), 256, 4096, 0.5, 1.15)
        s = torch.from_numpy(np.linspace(1.0, 0.1, 10))
        assert torch.allclose(grid[:-1], np.exp(mu) / (np.exp(mu) + (1 / s - 1)), atol=1e-6)


# --------------------------------------------------------------------------------- CFG, caching


def test_cfg_is_one_batched_forward_and_detach_uncond(tiny_pipelines):
    adapter = load_model(tiny_pipelines.spec("sd3", lora={"rank": 4, "init": "gaussian"}))
    calls = []
    hook = adapter.denoiser.register_forward_hook(lambda m, a, kw_out=None: calls.append(1))
    cond = adapter.encode_prompts(PROMPTS)
    x = adapter.initial_noise(2, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.7, dtype=torch.float64)
    p = adapter.predict(x, t, cond, 4.0)
    assert len(calls) == 1
    hook.remove()
    # closed form of CFG: p = p_u + s (p_c - p_u), from separate no-CFG forwards
    p_c = adapter.predict(x, t, {k: v for k, v in cond.items() if not k.startswith("uncond_")}, 1.0)
    p_u = adapter.predict(x, t, {k[7:]: v for k, v in cond.items() if k.startswith("uncond_")}, 1.0)
    assert_close(p, p_u + 4.0 * (p_c - p_u), rtol=1e-5)
    # detach_uncond: the gradient is s · ∇p_c (the unconditional branch carries none)
    params = [q for q in adapter.trainable_parameters()]
    adapter.detach_uncond = True
    g_det = torch.autograd.grad(adapter.predict(x, t, cond, 4.0).sum(), params)
    g_c = torch.autograd.grad(adapter.predict(x, t, {k: v for k, v in cond.items() if not k.startswith("uncond_")}, 1.0).sum(), params)
    for a, b in zip(g_det, g_c):
        assert torch.allclose(a, 4.0 * b, atol=1e-5, rtol=1e-4)
    adapter.detach_uncond = False
    g_full = torch.autograd.grad(adapter.predict(x, t, cond, 4.0).sum(), params)
    assert max((a - b).abs().max().item() for a, b in zip(g_full, g_det)) > 1e-4


def test_flux_guidance_goes_to_embedding_without_second_forward(tiny_pipelines):
    adapter = load_model(tiny_pipelines.spec("flux"))
    cond = adapter.encode_prompts(PROMPTS)
    assert not any(k.startswith("uncond_") for k in cond)
    calls = []
    hook = adapter.denoiser.register_forward_hook(lambda m, a, o: calls.append(a))
    x = adapter.initial_noise(2, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.5)
    p1, p2 = adapter.predict(x, t, cond, 1.0), adapter.predict(x, t, cond, 3.5)
    hook.remove()
    assert len(calls) == 2 and p1.shape == x.shape
    assert (p1 - p2).abs().max() > 1e-4  # the guidance embedding changes the velocity


def test_prompt_embeddings_cached_per_unique_prompt(tiny_pipelines):
    adapter = load_model(tiny_pipelines.spec("sdxl"))
    seen = []
    orig = adapter.pipe.encode_prompt

    def counting(prompt, *a, **kw):
        seen.append(list(prompt))
        return orig(prompt, *a, **kw)

    adapter.pipe.encode_prompt = counting
    c1 = adapter.encode_prompts(["a", "b", "a", "a"])
    c2 = adapter.encode_prompts(["b", "a"])
    assert seen == [["a", "b"]]
    assert c1["prompt_embeds"].shape[0] == 4 and torch.equal(c1["prompt_embeds"][0], c2["prompt_embeds"][1])
    assert torch.equal(c1["uncond_prompt_embeds"][0], c1["uncond_prompt_embeds"][3])
    # SDXL zeroes the negative embeddings when no negative prompt is given (stock behaviour)
    assert c1["uncond_prompt_embeds"].abs().max() == 0 and c1["time_ids"][0].tolist() == [32, 32, 0, 0, 32, 32]


# ------------------------------------------------------------------------------ LoRA and training


def _train_a_few_steps(adapter, steps: int = 3, lr: float = 5e-2, guidance: float = 3.0):
    """Dummy objective (push predictions towards zero) so the LoRA weights move."""
    opt = torch.optim.Adam(list(adapter.trainable_parameters()), lr=lr)
    cond = adapter.encode_prompts(PROMPTS)
    x = adapter.initial_noise(2, generator=torch.Generator().manual_seed(3))
    s = deterministic_sampler(adapter)
    for i in range(steps):
        t = s.model_time(i % s.num_steps, 2)
        loss = adapter.predict(x, t, cond, guidance).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("family", [
    pytest.param("sd", marks=pytest.mark.slow), pytest.param("sdxl", marks=pytest.mark.slow), "sd3", "flux",
])  # UNet families ~55 s each on the shared 2-core machine under load
def test_lora_round_trip_into_stock_pipeline(tiny_pipelines, family, tmp_path):
    adapter = load_model(tiny_pipelines.spec(family, lora={"rank": 4, "alpha": 8}))
    names = [n for n, p in adapter.denoiser.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    state = adapter.trainable_state_dict()
    assert state and all("lora_" in k for k in state)
    guidance = 3.0
    base = sample(adapter, deterministic_sampler(adapter), PROMPTS, guidance, generator=torch.Generator().manual_seed(5))
    _train_a_few_steps(adapter)
    trained = sample(adapter, deterministic_sampler(adapter), PROMPTS, guidance, generator=torch.Generator().manual_seed(5))
    assert (trained - base).abs().max() > 1e-2 * max(1.0, base.abs().max().item())
    with adapter.reference():  # adapters off: the base model again
        ref = sample(adapter, deterministic_sampler(adapter), PROMPTS, guidance, generator=torch.Generator().manual_seed(5))
    assert_close(ref, base)
    adapter.save_trained(str(tmp_path))
    pipe = stock_pipeline(adapter, tiny_pipelines(family), lora_dir=str(tmp_path))
    stock = stock_generate(pipe, family, PROMPTS, guidance, seed=5)
    assert_close(trained, stock)


def test_lora_state_dict_round_trip_and_reference_error(tiny_pipelines):
    a = load_model(tiny_pipelines.spec("sd3", lora={"rank": 2, "init": "gaussian"}))
    b = load_model(tiny_pipelines.spec("sd3", lora={"rank": 2}))
    b.load_trainable_state_dict(a.trainable_state_dict())
    cond = a.encode_prompts(PROMPTS)
    x = a.initial_noise(2, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.6)
    assert torch.equal(a.predict(x, t, cond, 2.0), b.predict(x, t, cond, 2.0))
    full = load_model(tiny_pipelines.spec("sd3"))
    with pytest.raises(NotImplementedError):
        with full.reference():
            pass


def test_full_finetune_trains_denoiser_only_and_saves(tiny_pipelines, tmp_path):
    from diffusers import UNet2DConditionModel

    adapter = load_model(tiny_pipelines.spec("sd"))
    n_denoiser = sum(p.numel() for p in adapter.denoiser.parameters())
    assert sum(p.numel() for p in adapter.trainable_parameters()) == n_denoiser
    assert not any(p.requires_grad for p in adapter.pipe.text_encoder.parameters())
    assert not any(p.requires_grad for p in adapter.vae.parameters())
    assert set(adapter.trainable_state_dict()) == set(adapter.denoiser.state_dict())
    _train_a_few_steps(adapter, steps=1, lr=1e-3)
    adapter.save_trained(str(tmp_path))
    unet = UNet2DConditionModel.from_pretrained(str(tmp_path))
    for k, v in unet.state_dict().items():
        assert torch.equal(v, adapter.denoiser.state_dict()[k])


def test_gradient_checkpointing_same_gradients(tiny_pipelines):
    grads = []
    tiny_pipelines("sd")  # build first: building consumes the RNG
    for ckpt in (False, True):
        torch.manual_seed(0)  # same gaussian LoRA init in both
        adapter = load_model(tiny_pipelines.spec("sd", lora={"rank": 4, "init": "gaussian"},
                                                 gradient_checkpointing=ckpt))
        assert adapter.denoiser.is_gradient_checkpointing == ckpt
        cond = adapter.encode_prompts(PROMPTS)
        x = adapter.initial_noise(2, generator=torch.Generator().manual_seed(0))
        loss = adapter.predict(x, torch.tensor([501, 501]), cond, 5.0).pow(2).mean()
        params = list(adapter.trainable_parameters())
        grads.append(dict(zip([n for n, p in adapter.denoiser.named_parameters() if p.requires_grad],
                              torch.autograd.grad(loss, params))))
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4)


def test_bf16_weights_and_autocast(tiny_pipelines):
    fp32 = load_model(tiny_pipelines.spec("sd3", lora={"rank": 4}))
    bf16 = load_model(tiny_pipelines.spec("sd3", lora={"rank": 4}, dtype="bf16", autocast="bf16"))
    assert bf16.denoiser.pos_embed.proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.trainable_parameters())  # fp32 LoRA weights
    cond = fp32.encode_prompts(PROMPTS)
    x = fp32.initial_noise(2, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.8)
    p32 = fp32.predict(x, t, cond, 3.0)
    p16 = bf16.predict(x, t, bf16.encode_prompts(PROMPTS), 3.0)
    assert p16.dtype == torch.float32
    rel = ((p16 - p32).norm() / p32.norm()).item()
    assert rel < 0.05, rel
    grads = torch.autograd.grad(p16.pow(2).mean(), list(bf16.trainable_parameters()))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- example configs


@pytest.mark.parametrize("name, zeta", [
    ("real/ddpo-sd15", None), ("real/ddpo-sd15-pcpo", None),
    ("real/dancegrpo-flux", 13.343), ("real/dancegrpo-flux-pcpo", 13.343),
    # Flow-GRPO samples on the stock SD3 scheduler's grid, where zeta is 5.727 (4.315 on the shifted linspace)
    ("real/flowgrpo-sd35m", 5.727), ("real/flowgrpo-sd35m-pcpo", 5.727),
])
def test_example_configs_load_and_match_published_setups(name, zeta):
    from pcpo.models.loader import _resolve
    from pcpo.samplers import build_sampler
    from pcpo.trainer.config import load_config

    cfg = load_config(name)
    spec = cfg.model.spec()
    adapter_cls = _resolve(MODEL_FAMILIES[spec["family"]]).__self__
    assert not set(spec) - adapter_cls.SPEC_KEYS - adapter_cls.extra_spec_keys()
    assert cfg.train.clip_range == 1e-4 and cfg.train.adv_clip == 5.0
    assert cfg.train.objective == ("pcpo" if name.endswith("-pcpo") else "clipped")
    s = cfg.sampler
    if zeta is not None:  # docs/method.md §5: total native credit of the baseline schedule
        from pcpo.samplers.flow import SD3_SCHEDULER_CONFIG

        assert s.grid == ("pipeline" if "flowgrpo" in name else "linspace")
        grid = {"grid": "pipeline", "scheduler_config": SD3_SCHEDULER_CONFIG} if s.grid == "pipeline" else {}
        sampler = build_sampler(s.name, s.steps, s.eta, shift=s.shift, **grid)
        w = sampler.native_weights()
        w = torch.where(torch.isfinite(w), w, torch.nan)
        if s.name == "flow-sde":  # the undefined t = 1 weight is set to the next step's
            w[0] = w[1]
        assert float(w[torch.isfinite(w)].sum()) == pytest.approx(zeta, abs=2e-3)
    else:
        assert (s.name, s.steps, s.eta, s.guidance_scale) == ("ddim", 50, 1.0, 5.0)


def test_gpu_smoke_script_runs_tiny_on_cpu(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--family", "flux", "--tiny", "--device", "cpu", "--out", str(tmp_path / "smoke"), "--group", "2"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["ok"], summary
    assert summary["parity_rel_err"] <= 1e-4 and summary["log_ratio_before_update_max"] <= 1e-3
    assert summary["weights_moved_max"] > 0 and summary["time_update_s"] > 0


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_fsdp_units_are_the_blocks(tiny_pipelines, family):
    """FSDP shards every block before the root, so only one block is gathered at a time."""
    adapter = load_model(tiny_pipelines.spec(family, lora={"rank": 4}))
    d = adapter.denoiser
    expected = {"sd3": lambda: list(d.transformer_blocks),
                "flux": lambda: list(d.transformer_blocks) + list(d.single_transformer_blocks),
                }.get(family, lambda: list(d.down_blocks) + list(d.up_blocks)      # UNets: plus the mid block's
                      + [b for a in d.mid_block.attentions for b in a.transformer_blocks])()  # transformer blocks
    units = adapter.fsdp_units()
    assert len(units) == len(expected) > 0 and all(u is e for u, e in zip(units, expected))


def test_loader_options_are_typed_config_fields(tiny_pipelines):
    """model.options of the diffusers families are declared fields: wrong types and bounds name the key."""
    from pcpo.errors import ConfigError
    from pcpo.models.diffusers_base import LoaderOptions
    from pcpo.models.sd3 import SD3Adapter, SD3Options

    assert SD3Adapter.extra_spec_keys() == {"max_sequence_length"} and SD3Options().max_sequence_length == 256
    assert {"resolution", "variant", "decode_batch_size", "train"} <= set(LoaderOptions.__dataclass_fields__)
    for bad, key in (({"decode_batch_size": 0}, "model.options.decode_batch_size"),
                     ({"upcast_trainable": "yes"}, "model.options.upcast_trainable"),
                     ({"train": "half"}, "model.options.train"),
                     ({"max_sequence_length": "long"}, "model.options.max_sequence_length")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_model(tiny_pipelines.spec("sd3", **bad))
