"""``pcpo pretrain-toy``: a few-step run of each model and of the two-stage shipped recipe (plumbing)."""

from __future__ import annotations

import json

import pytest
import torch

from pcpo.world import pretrain


@pytest.mark.parametrize("model", ["flow", "ddpm"])
def test_single_run_writes_loadable_fp16_weights(tmp_path, model):
    from safetensors.torch import load_file

    from pcpo.models.toy import load_toy_model

    out = tmp_path / model
    rc = pretrain.main(
        [
            "--model",
            model,
            "--recipe",
            "single",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--checkpoint",
            str(tmp_path / "ck"),
            "--checkpoint-every",
            "1",
        ]
    )
    assert rc == 0
    w = load_file(str(out / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in w.values())
    rec = json.loads((out / "config.json").read_text())
    assert rec["training"]["steps"] == 2 and rec["prediction_type"] == (
        "flow" if model == "flow" else "epsilon"
    )
    ad = load_toy_model(f"toy-{model}", path=out)
    assert ad.predict(
        torch.zeros(1, 3, 32, 32),
        torch.tensor([0.5 if model == "flow" else 500]),
        ad.encode_prompts(["a red circle"]),
        3.0,
    ).shape == (1, 3, 32, 32)
    # resume continues the step count from the checkpoint
    pretrain.main(
        [
            "--model",
            model,
            "--recipe",
            "single",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--checkpoint",
            str(tmp_path / "ck"),
            "--resume",
        ]
    )
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == 3


def test_shipped_recipe_chains_two_stages(tmp_path, monkeypatch):
    monkeypatch.setitem(
        pretrain.SHIPPED_RECIPE,
        "flow",
        [dict(steps=2, seed=0, batch_size=4), dict(steps=2, seed=1, batch_size=4, lr_decay="linear")],
    )
    assert pretrain.main(["--model", "flow", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "config.json").read_text())["training"]
    assert rec["init_from"]["steps"] == 2 and rec["lr_decay"] == "linear"
    assert rec["rebuild"] == "pcpo pretrain-toy --model flow --device cpu"
    assert not (tmp_path / "stage1").exists()
    with pytest.raises(ValueError, match="recipe single"):
        pretrain.main(["--model", "flow", "--steps", "5", "--out", str(tmp_path)])


def test_shipped_recipe_chains_every_stage_with_its_own_settings(tmp_path, monkeypatch):
    monkeypatch.setitem(
        pretrain.SHIPPED_RECIPE,
        "ddpm",
        [
            dict(steps=2, seed=0, batch_size=4),
            dict(steps=2, seed=1, batch_size=4, lr_decay="linear"),
            dict(steps=3, seed=2, batch_size=4, lr=3e-4, warmup=5, ema_decay=0.995, loss_weight="min-snr-5"),
        ],
    )
    assert pretrain.main(["--model", "ddpm", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "config.json").read_text())["training"]
    assert (rec["steps"], rec["seed"], rec["lr"], rec["warmup"], rec["ema_decay"]) == (3, 2, 3e-4, 5, 0.995)
    assert rec["loss_weight"] == "min-snr-5"
    assert rec["init_from"]["steps"] == 2 and rec["init_from"]["lr_decay"] == "linear"
    assert rec["init_from"]["init_from"]["steps"] == 2 and rec["init_from"]["init_from"]["seed"] == 0
    assert not (tmp_path / "stage1").exists() and not (tmp_path / "stage2").exists()


def test_same_seed_gives_identical_weights(tmp_path):
    """`pcpo pretrain-toy` is reproducible from its seed: two runs from scratch write the same bytes."""
    from safetensors.torch import load_file

    def run(out, seed):
        args = ["--model", "ddpm", "--recipe", "single", "--steps", "3", "--batch-size", "4", "--seed", str(seed)]
        assert pretrain.main(args + ["--loss-weight", "min-snr-5", "--out", str(out)]) == 0
        return load_file(str(out / "model.safetensors"))

    a, b, c = run(tmp_path / "a", 7), run(tmp_path / "b", 7), run(tmp_path / "c", 8)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_loss_weight_is_validated():
    with pytest.raises(SystemExit):
        pretrain.main(["--model", "ddpm", "--recipe", "single", "--loss-weight", "min-snr-x"])
    with pytest.raises(ValueError, match="loss_weight: 'snr'"):
        pretrain.pretrain("ddpm", steps=1, loss_weight="snr")

