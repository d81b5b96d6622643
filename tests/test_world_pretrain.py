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
            "--no-check",
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
            "--no-check",
        ]
    )
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == 3


def test_shipped_recipe_chains_two_stages(tmp_path, monkeypatch):
    monkeypatch.setitem(
        pretrain.SHIPPED_RECIPE,
        "flow",
        [dict(steps=2, seed=0, batch_size=4), dict(steps=2, seed=1, batch_size=4, lr_decay="linear")],
    )
    assert pretrain.main(["--model", "flow", "--out", str(tmp_path), "--no-check"]) == 0
    rec = json.loads((tmp_path / "config.json").read_text())["training"]
    assert rec["init_from"]["steps"] == 2 and rec["lr_decay"] == "linear"
    assert rec["rebuild"] == "pcpo pretrain-toy --model flow --device cpu --out DIR"
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
    assert pretrain.main(["--model", "ddpm", "--out", str(tmp_path), "--no-check"]) == 0
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
        args = ["--model", "ddpm", "--recipe", "single", "--steps", "3", "--batch-size", "4", "--seed", str(seed), "--no-check"]
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



class _Killed(Exception):
    pass


def _kill_after_checkpoints(monkeypatch, n: int) -> None:
    """Make the n-th checkpoint write the last thing the process does (as if it were killed right after)."""
    real, calls = pretrain._save_pretrain_checkpoint, []

    def save(*a, **k):
        real(*a, **k)
        calls.append(1)
        if len(calls) == n:
            raise _Killed

    monkeypatch.setattr(pretrain, "_save_pretrain_checkpoint", save)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_single_run_resumes_exactly(tmp_path, monkeypatch):
    """A run killed after a checkpoint and resumed writes the bytes and loss record of an uncut run."""
    args = ["--model", "ddpm", "--recipe", "single", "--steps", "5", "--batch-size", "4", "--seed", "3",
            "--warmup", "2", "--lr-decay", "linear", "--checkpoint-every", "1", "--no-check"]
    assert pretrain.main(args + ["--out", str(tmp_path / "a"), "--checkpoint", str(tmp_path / "ca")]) == 0
    with monkeypatch.context() as m:
        _kill_after_checkpoints(m, 2)
        with pytest.raises(_Killed):
            pretrain.main(args + ["--out", str(tmp_path / "b"), "--checkpoint", str(tmp_path / "cb")])
    ck = tmp_path / "cb" / "toy-ddpm-checkpoint"
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 2 and len(state["losses"]) == 2
    assert sorted(p.name for p in ck.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"
    ]
    assert not list((tmp_path / "cb").glob(".tmp-*"))  # the atomic write left no temporary folder
    assert pretrain.main(args + ["--out", str(tmp_path / "b"), "--checkpoint", str(tmp_path / "cb"), "--resume"]) == 0
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    ra, rb = (json.loads((tmp_path / d / "config.json").read_text())["training"] for d in "ab")
    assert ra["final_loss"] == rb["final_loss"] and rb["steps"] == 5
    ck.rename(ck.with_name("toy-flow-checkpoint"))  # a checkpoint folder renamed by hand
    with pytest.raises(ValueError, match="holds a toy-ddpm run, not toy-flow"):
        pretrain.main(["--model", "flow", "--recipe", "single", "--steps", "5", "--out", str(tmp_path / "c"),
                       "--checkpoint", str(tmp_path / "cb"), "--resume"])


def test_shipped_recipe_resumes_across_stages(tmp_path, monkeypatch):
    """--recipe shipped killed inside stage 2 (or stopped by --minutes) resumes to the uncut run's bytes."""
    monkeypatch.setitem(
        pretrain.SHIPPED_RECIPE,
        "flow",
        [dict(steps=3, seed=0, batch_size=4), dict(steps=3, seed=1, batch_size=4, lr_decay="linear", warmup=1)],
    )
    base = ["--model", "flow", "--checkpoint-every", "1", "--no-check"]
    assert pretrain.main(base + ["--out", str(tmp_path / "a")]) == 0
    b, cb = str(tmp_path / "b"), str(tmp_path / "cb")
    with monkeypatch.context() as m:
        # stage 1 writes checkpoints at steps 1, 2, 3 and once more at its end; the 6th is stage 2, step 2
        _kill_after_checkpoints(m, 6)
        with pytest.raises(_Killed):
            pretrain.main(base + ["--out", b, "--checkpoint", cb])
    assert json.loads((tmp_path / "cb" / "stage2" / "toy-flow-checkpoint" / "state.json").read_text())["step"] == 2
    assert pretrain.main(base + ["--out", b, "--checkpoint", cb, "--resume"]) == 0
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not (tmp_path / "b" / "stage1").exists()
    # --minutes 0 stops at once, keeps the checkpoint and says how to go on; --resume then finishes
    c, cc = str(tmp_path / "c"), str(tmp_path / "cc")
    assert pretrain.main(base + ["--out", c, "--checkpoint", cc, "--minutes", "0"]) == 0
    assert not (tmp_path / "c" / "config.json").exists()
    assert pretrain.main(base + ["--out", c, "--checkpoint", cc, "--resume"]) == 0
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))
    with pytest.raises(ValueError, match="--checkpoint: --resume and --minutes"):
        pretrain.main(base + ["--out", c, "--minutes", "5"])


def test_pretrain_records_the_quality_check(tmp_path, capsys):
    """After training, `pcpo pretrain-toy` samples the new weights and records the toy models' quality bar."""
    assert pretrain.main(["--model", "flow", "--recipe", "single", "--steps", "1", "--batch-size", "2",
                          "--out", str(tmp_path)]) == 0
    q = json.loads((tmp_path / "config.json").read_text())["training"]["quality"]
    assert q["n"] == 64 and q["steps"] == 20 and q["guidance_scale"] == 4.0 and list(q["per_seed"]) == ["0"]
    assert q["mean"]["prompt_accuracy"] < 0.2  # one step of training: no shapes yet
    assert "below the 0.85 bar" in capsys.readouterr().out
