"""A run loses nothing and resumes exactly under faults, on the embedded toy world (tiny settings).

Every case is checked against one uninterrupted run: the damaged newest checkpoint (each of its files in
turn) falls back to the previous one; SIGINT/SIGTERM checkpoint the last completed epoch and exit
130/143; a metrics line cut by a kill, stale temporary folders and half-deleted checkpoints are dealt
with; no checkpoint at all is a clear error that leaves the log alone; a non-finite reward leaves the
advantage tracker as it was. "Exactly" means bit-identical final weights and the same metrics records.
"""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pcpo.checkpoint import CheckpointError, read_records
from pcpo.cli import main
from pcpo.trainer.config import load_config
from pcpo.trainer.trainer import Trainer, TrainingInterrupted

EPOCHS = 3
TOY = [
    "model.family=toy-flow", "threads=1", "log.progress=false", "log.tensorboard=false", "eval.gold=false",
    "data.prompts_per_epoch=2", "data.group_size=4", "sampler.steps=4", "eval.images_per_prompt=1",
    "eval.every=2", "data.eval_prompts=[a red circle, a blue square]", "train.minibatch_size=4",
    "train.lr=1e-3", "train.advantage=per_prompt_tracker", "train.tracker_min_count=2",
    f"epochs={EPOCHS}", "checkpoint.every=1", "checkpoint.keep_last=3",
]


def _cfg(*extra):
    return load_config(None, TOY + list(extra))


def _set_args(*extra):
    out = []
    for kv in TOY + list(extra):
        out += ["--set", kv]
    return out


def _weights(run):
    return load_file(str(Path(run) / "final" / "model.safetensors"))


def _records(run):
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in read_records(Path(run) / "metrics.jsonl")]


def _assert_same_run(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert _records(a) == _records(b)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run: checkpoints after every epoch; the finished run keeps epochs 2 and 3."""
    run = tmp_path_factory.mktemp("faults") / "full"
    Trainer(_cfg(), run).train()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-000002", "epoch-000003"]
    return run


def _killed_copy(full, dest):
    """``full`` as a run killed after writing checkpoint 3 and before ``final/``."""
    shutil.copytree(full, dest)
    shutil.rmtree(dest / "final")
    return dest


# ------------------------------------------------------------------ damaged newest checkpoint

def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, damage, problem", [
    ("model.safetensors", _flip_middle_byte, "checksum mismatch"),
    ("optimizer.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-100]), "size mismatch"),
    ("rng.safetensors", _flip_middle_byte, "checksum mismatch"),
    ("state.json", lambda p: p.unlink(), "missing"),
    ("manifest.json", lambda p: p.write_text(p.read_text()[:40]), "bad JSON"),
])
def test_damaged_newest_checkpoint_falls_back_and_finishes_exactly(full, tmp_path, capsys, name, damage, problem):
    run = _killed_copy(full, tmp_path / "run")
    damage(run / "checkpoints" / "epoch-000003" / name)
    capsys.readouterr()
    tr = Trainer.resume(run)
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, warnings  # one line, naming the file and the checkpoint used instead
    assert f"checkpoints/epoch-000003/{name}" in warnings[0] and problem in warnings[0]
    assert warnings[0].endswith("using epoch-000002")
    assert tr.start_epoch == 2
    assert not (run / "checkpoints" / "epoch-000003").exists()  # its epoch is trained again
    tr.train()
    _assert_same_run(full, run)


def test_no_intact_checkpoint_at_all_is_an_error_that_keeps_the_log(full, tmp_path, capsys):
    run = _killed_copy(full, tmp_path / "run")
    for p in (run / "checkpoints").iterdir():
        _flip_middle_byte(p / "model.safetensors")
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="no intact checkpoint .* 3 epochs .* would be retrained"):
        Trainer.resume(run)
    assert len([ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]) == 2
    assert (run / "metrics.jsonl").read_bytes() == before


def test_empty_checkpoints_folder_is_a_one_line_error_and_metrics_untouched(full, tmp_path, capsys):
    run = _killed_copy(full, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    before = (run / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "no checkpoint to resume from" in err[0] and "3 epochs (up to epoch 3)" in err[0]
    assert "would be retrained" in err[0] and "metrics.jsonl" in err[0]
    assert (run / "metrics.jsonl").read_bytes() == before
    assert not (run / "final").exists()
    # the opt-in to start over: it retrains from epoch 0 and ends where the uninterrupted run did
    Trainer.resume(run, restart=True).train()
    _assert_same_run(full, run)


# ------------------------------------------------------------------ kills and stale files

def test_metrics_line_cut_by_a_kill_then_resume(full, tmp_path):
    """Killed while writing epoch 3's metrics line (so before its checkpoint)."""
    run = _killed_copy(full, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "epoch-000003")
    data = (run / "metrics.jsonl").read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    (run / "metrics.jsonl").write_bytes(data[: last + (len(data) - last) // 2])  # half of epoch 3's line
    tr = Trainer.resume(run)
    assert tr.start_epoch == 2
    tr.train()
    _assert_same_run(full, run)


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_and_half_deleted_folders_are_cleaned(full, tmp_path, capsys):
    run = _killed_copy(full, tmp_path / "run")
    ck = run / "checkpoints"
    pid = _dead_pid()
    stale = [ck / f".tmp-epoch-000004-{pid}", ck / ".del-epoch-000001-12345", run / f".tmp-final-{pid}"]
    for d in stale:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half a file")
    shutil.copytree(ck / "epoch-000002", ck / "epoch-000001")
    (ck / "epoch-000001" / "optimizer.safetensors").unlink()  # a deletion by an older pcpo, cut short
    tr = Trainer.resume(run)
    err = capsys.readouterr().err
    assert err.count("removed") == 4, err
    for d in stale + [ck / "epoch-000001"]:
        assert not d.exists(), d
    assert tr.start_epoch == 3 and not tr.finished
    tr.train()  # writes final/ only
    _assert_same_run(full, run)


def test_resuming_a_finished_run_does_nothing(full, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(full, run)
    stamp = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished at epoch 3" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == stamp


def test_eval_uses_the_newest_intact_checkpoint_of_an_unfinished_run(full, tmp_path, capsys):
    from pcpo.eval.runs import resolve_run

    run = _killed_copy(full, tmp_path / "run")
    _flip_middle_byte(run / "checkpoints" / "epoch-000003" / "model.safetensors")
    ref = resolve_run(run)
    assert (ref.label, ref.epoch) == ("epoch-000002", 2)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "epoch-000003/model.safetensors: checksum mismatch" in err[0]
    with pytest.raises(CheckpointError, match="epoch-000003/model.safetensors: checksum mismatch"):
        resolve_run(run / "checkpoints" / "epoch-000003")


# ------------------------------------------------------------------ signals

SCRIPT = r"""
import os, sys, time
from pathlib import Path
from pcpo.rewards.registry import _REGISTRY, build_reward
from pcpo.cli import main

calls = {"n": 0}
def stalling(**kw):
    inner = build_reward("alignment", **kw)
    def reward(images, prompts):
        calls["n"] += 1
        if calls["n"] == int(os.environ["STALL_AT"]):
            Path(os.environ["MARKER"]).write_text("stalled")
            time.sleep(120)
        return inner(images, prompts)
    return reward
_REGISTRY["stalling_alignment"] = stalling
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_mid_epoch_checkpoints_exits_130_and_resume_is_exact(tmp_path):
    # no checkpoint of its own yet when the signal comes: it must write epoch 2's
    every = ["checkpoint.every=5", "checkpoint.keep_last=2"]
    ref = tmp_path / "ref"
    Trainer(_cfg(*every), ref).train()

    run, marker = tmp_path / "run", tmp_path / "marker"
    env = {**os.environ, "STALL_AT": "5", "MARKER": str(marker), "HF_HUB_OFFLINE": "1"}
    # reward calls: eval 0, epoch 1, epoch 2, eval 2, epoch 3 (stalls, after epoch 3's rollout)
    args = ["train", "--out", str(run), *_set_args(*every, "reward.name=stalling_alignment")]
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "stopped by SIGINT after epoch 2" in err and f"pcpo train --resume {run}" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-000002"]
    assert [r["epoch"] for r in read_records(run / "metrics.jsonl")] == [0, 1, 2]
    assert not (run / "final").exists()

    # resumed in-process with the plain reward (the config names the stalling one)
    tr = Trainer.resume(run, overrides=["reward.name=alignment"])
    assert tr.start_epoch == 2
    tr.train()
    _assert_same_run(ref, run)


def test_sigterm_during_update_finishes_the_epoch_saves_and_exits_143(full, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    update = Trainer.update

    def update_then_terminated(self, ro, adv, epoch):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-update: the update must not stop half-way
        return update(self, ro, adv, epoch)

    monkeypatch.setattr(Trainer, "update", update_then_terminated)
    assert main(["train", "--out", str(run), *_set_args("checkpoint.every=5")]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after epoch 2" in err and "Traceback" not in err
    assert [r["epoch"] for r in read_records(run / "metrics.jsonl")] == [0, 1, 2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-000002"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    _assert_same_run(full, run)


def test_second_sigint_stops_at_once_without_saving_the_epoch_under_way(full, tmp_path, monkeypatch):
    run = tmp_path / "run"
    update = Trainer.update

    def update_twice_interrupted(self, ro, adv, epoch):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the first asks to finish the epoch ...
            os.kill(os.getpid(), signal.SIGINT)  # ... the second stops now
        return update(self, ro, adv, epoch)

    monkeypatch.setattr(Trainer, "update", update_twice_interrupted)
    with pytest.raises(TrainingInterrupted, match="second SIGINT during epoch 2, which is not saved.*after epoch 1") as e:
        Trainer(_cfg(), run).train()
    assert e.value.exit_code == 130 and e.value.epoch == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch-000001"]
    assert [r["epoch"] for r in read_records(run / "metrics.jsonl")] == [0, 1]
    monkeypatch.undo()
    Trainer.resume(run).train()
    _assert_same_run(full, run)


def test_signal_before_anything_is_trained_saves_nothing(tmp_path, monkeypatch):
    rollout = Trainer.rollout

    def interrupted_rollout(self, epoch):
        os.kill(os.getpid(), signal.SIGINT)  # during epoch 1's rollout: dropped at once
        return rollout(self, epoch)

    monkeypatch.setattr(Trainer, "rollout", interrupted_rollout)
    with pytest.raises(TrainingInterrupted, match="before anything was trained") as e:
        Trainer(_cfg(), tmp_path / "run").train()
    assert e.value.exit_code == 130 and e.value.epoch is None
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ non-finite rewards

def test_nonfinite_reward_batch_leaves_the_tracker_and_weights_as_they_were(tmp_path):
    from pcpo.rewards.registry import build_reward

    inner = build_reward("alignment")
    seen = []

    def reward(images, prompts):
        r = inner(images, prompts).float()
        if len(seen) == 2:  # epoch 2's rollout (after eval 0 and epoch 1)
            r[1], r[4] = float("nan"), float("inf")
        seen.append(r.clone())
        return r

    tr = Trainer(_cfg("eval.every=0"), tmp_path / "run", reward_fn=reward)
    tr.log({"epoch": 0, **tr.evaluate(0)})
    tr.log(tr.train_epoch(1))
    tracker = copy.deepcopy(tr.advantage.state_dict())
    assert sum(len(v) for v in tracker["buffers"].values()) == 8  # epoch 1's rewards are in it
    weights = {k: v.clone() for k, v in tr.adapter.trainable_state_dict().items()}
    opt = copy.deepcopy(tr.optimizer.state_dict())

    rec = tr.train_epoch(2)
    assert tr.advantage.state_dict() == tracker
    for k, v in tr.adapter.trainable_state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert all(torch.equal(a, b) for s0, s1 in zip(opt["state"].values(), tr.optimizer.state_dict()["state"].values())
               for a, b in zip(s0.values(), s1.values()) if isinstance(a, torch.Tensor))
    finite = seen[2][torch.isfinite(seen[2])]
    assert len(finite) == 6
    assert rec["reward_mean"] == pytest.approx(float(finite.mean()), rel=1e-6)  # not counting NaN/inf as 0
    assert rec["rewards_nonfinite"] == 2 and rec["updates_skipped"] == 1 and rec["nonfinite_total"] == 1
    assert rec["adv_abs_mean"] is None
    tr.log(rec)
    line = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON literal {c}"))
    # the next finite batch goes on from the tracker as it was after epoch 1
    tr.train_epoch(3)
    assert sum(len(v) for v in tr.advantage.state_dict()["buffers"].values()) == 16


def test_max_nonfinite_stop_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from pcpo.rewards import registry

    monkeypatch.setitem(registry._REGISTRY, "nan_reward", lambda: lambda images, prompts: torch.full((len(prompts),), float("nan")))
    assert main(["train", "--out", str(tmp_path / "run"), *_set_args("reward.name=nan_reward", "train.max_nonfinite=2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 consecutive updates skipped for a non-finite reward" in err[0], err
    recs = read_records(tmp_path / "run" / "metrics.jsonl")
    assert recs[-1]["epoch"] == 1 and recs[-1]["reward_mean"] is None and recs[-1]["rewards_nonfinite"] == 8


# ------------------------------------------------------------------ TensorBoard

def test_tensorboard_tags_are_grouped_with_the_heldout_grid_as_an_image(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    Trainer(_cfg("epochs=2", "log.tensorboard=true", "eval.every=1"), run).train()
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    assert {"train/reward_mean", "train/loss", "eval/reward_mean", "time/epoch_s", "time/rollout_s"} <= scalars
    assert all(t.split("/")[0] in ("train", "eval", "gold", "time") for t in scalars), scalars
    assert [e.step for e in acc.Scalars("eval/reward_mean")] == [0, 1, 2]
    rec = read_records(run / "metrics.jsonl")[2]
    assert acc.Scalars("eval/reward_mean")[-1].value == pytest.approx(rec["eval_reward_mean"], rel=1e-6)
    assert "train/clipfrac_per_step" in tags["histograms"]
    images = acc.Images("eval/samples")
    assert [e.step for e in images] == [0, 1, 2]
    from PIL import Image

    with Image.open(run / "images" / "epoch-00002.png") as im:
        assert (images[-1].width, images[-1].height) == im.size


# ------------------------------------------------------------------ torchrun, 2 processes

def _torchrun(*args, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pcpo.cli"]
    return subprocess.Popen(cmd + list(args), env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True, **kw)


def _launch(*args, **kw):
    cmd = [sys.executable, "-m", "pcpo.cli", "launch", "--standalone", "--nproc-per-node", "2"]
    return subprocess.Popen(cmd + list(args), env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True, **kw)


def test_torchrun_ranks_agree_on_a_sigterm_and_on_the_checkpoint_to_resume(tmp_path):
    """Uninterrupted under torchrun; interrupted under `pcpo launch` (SIGTERM to the launcher reaches both ranks,
    which stop after the same epoch: one line, exit 143); resumed under torchrun: the same final weights."""
    every = ["epochs=6", "checkpoint.every=5", "data.eval_prompts=[a red square]", "eval.every=0"]
    full = tmp_path / "full"
    assert _torchrun("train", "--out", str(full), *_set_args(*every)).wait(timeout=300) == 0

    run, log = tmp_path / "run", tmp_path / "run.log"
    with open(log, "w") as f:
        proc = _launch("train", "--out", str(run), *_set_args(*every), stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + 200
        while "epoch    2" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # the launcher passes it to both ranks
        assert proc.wait(timeout=120) == 143
    text = log.read_text()
    stops = [ln for ln in text.splitlines() if ln.startswith("pcpo train: stopped by SIGTERM after epoch")]
    assert len(stops) == 1, text[-3000:]  # rank 0 speaks for both
    assert f"(2 processes) running `train --resume {run}`" in stops[0]
    assert "Traceback" not in text and "death signal" not in text, text[-3000:]  # no launcher noise
    epoch = int(stops[0].split("after epoch ")[1].split()[0])
    assert 2 <= epoch < 6
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"epoch-{epoch:06d}"]
    assert [r["epoch"] for r in read_records(run / "metrics.jsonl")] == list(range(epoch + 1))

    res = _torchrun("train", "--resume", str(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = res.communicate(timeout=300)
    assert res.returncode == 0, err[-3000:]
    assert out.count(f"after epoch {epoch}") == 1
    _assert_same_run(full, run)
