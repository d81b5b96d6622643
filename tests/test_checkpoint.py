"""Checkpoint and metrics-log I/O: manifests, verification, fallback, stale folders, strict JSON lines."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pcpo import checkpoint as ck
from pcpo.checkpoint import (
    CheckpointError,
    MetricsLogError,
    append_record,
    clean_stale,
    clean_stale_dir,
    find_resumable,
    list_checkpoints,
    load_checkpoint,
    read_records,
    save_checkpoint,
    set_rng_state,
    truncate_records,
    verify_checkpoint,
    write_state_dir,
)

DATA_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")


def _trained_optimizer(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    return net, opt


def _run(tmp_path, epochs=(1, 2, 3), keep_last=10):
    run = tmp_path / "run"
    net, opt = _trained_optimizer()
    for e in epochs:
        save_checkpoint(run, e, net.state_dict(), opt, {"counter": e}, keep_last=keep_last)
    return run


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ write, manifest, load

def test_checkpoint_round_trip_and_manifest(tmp_path):
    net, opt = _trained_optimizer()
    torch.manual_seed(7)
    path = save_checkpoint(tmp_path / "run", 5, net.state_dict(), opt, {"counter": 3}, keep_last=2)
    after_save = torch.rand(4)
    assert path == tmp_path / "run" / "checkpoints" / "epoch-000005"
    assert _names(path) == sorted([*DATA_FILES, "manifest.json"])

    manifest = json.loads((path / "manifest.json").read_text())
    assert verify_checkpoint(path) == manifest
    assert set(manifest["files"]) == set(DATA_FILES)
    for name, entry in manifest["files"].items():  # recomputed independently of the module
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    model, opt_sd, rng, payload = load_checkpoint(path)
    assert payload["epoch"] == 5 and payload["counter"] == 3
    for k, v in net.state_dict().items():
        assert torch.equal(model[k], v)
    net2, _ = _trained_optimizer(seed=1)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    opt2.load_state_dict(opt_sd)
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        assert float(a["step"]) == float(b["step"]) == 1.0
    set_rng_state(rng, payload["rng"])
    assert torch.equal(torch.rand(4), after_save)


# ------------------------------------------------------------------ corruption of each file

def _flip(f: Path) -> None:
    data = bytearray(f.read_bytes())
    i = len(data) - 1 if f.suffix == ".safetensors" else len(data) // 2  # tensor data / mid-JSON
    data[i] ^= 0x01
    f.write_bytes(bytes(data))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


CORRUPTIONS = {"flip": (_flip, "checksum mismatch"), "truncate": (_truncate, "size mismatch"),
               "delete": (Path.unlink, "missing")}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
@pytest.mark.parametrize("name", DATA_FILES)
def test_corrupt_file_is_named_and_resume_falls_back(tmp_path, name, how):
    run = _run(tmp_path)
    bad = run / "checkpoints" / "epoch-000003"
    corrupt, problem = CORRUPTIONS[how]
    corrupt(bad / name)
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(bad)
    assert e.value.path == bad / name
    assert e.value.problem.startswith(problem)
    assert str(e.value).startswith(f"{bad / name}: {problem}") and "\n" not in str(e.value)

    path, warnings = find_resumable(run)
    assert path == run / "checkpoints" / "epoch-000002"
    assert len(warnings) == 1
    assert warnings[0].startswith(f"checkpoints/epoch-000003/{name}: {problem}")
    assert warnings[0].endswith("; using epoch-000002")
    with pytest.raises(CheckpointError, match=f"epoch-000003/{name}: {problem}"):
        load_checkpoint(bad)
    load_checkpoint(path)


@pytest.mark.parametrize("how, problem", [(_flip, "bad JSON in manifest.json"),
                                          (_truncate, "bad JSON in manifest.json"),
                                          (Path.unlink, "missing")])
def test_corrupt_manifest_is_named(tmp_path, how, problem):
    run = _run(tmp_path)
    bad = run / "checkpoints" / "epoch-000003"
    if how is _flip:  # the opening brace: no longer a JSON object
        data = bytearray((bad / "manifest.json").read_bytes())
        data[0] ^= 0x01
        (bad / "manifest.json").write_bytes(bytes(data))
    else:
        how(bad / "manifest.json")
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(bad)
    assert e.value.path == bad / "manifest.json" and e.value.problem.startswith(problem)
    path, warnings = find_resumable(run)
    assert path.name == "epoch-000002"
    assert warnings == [f"checkpoints/epoch-000003/manifest.json: {e.value.problem}; using epoch-000002"]


def test_several_bad_checkpoints_each_warned_and_none_left(tmp_path):
    run = _run(tmp_path)
    _flip(run / "checkpoints" / "epoch-000003" / "optimizer.safetensors")
    (run / "checkpoints" / "epoch-000002" / "rng.safetensors").unlink()
    path, warnings = find_resumable(run)
    assert path.name == "epoch-000001"
    assert [w.split(":")[0] for w in warnings] == ["checkpoints/epoch-000003/optimizer.safetensors",
                                                  "checkpoints/epoch-000002/rng.safetensors"]
    assert all(w.endswith("; using epoch-000001") for w in warnings)

    _truncate(run / "checkpoints" / "epoch-000001" / "state.json")
    path, warnings = find_resumable(run)
    assert path is None and len(warnings) == 3
    assert all(w.endswith("; no older intact checkpoint") for w in warnings)
    assert find_resumable(tmp_path / "nothing") == (None, [])


# ------------------------------------------------------------------ checkpoints without a manifest

def _legacy_checkpoint(run: Path, epoch: int) -> Path:
    """A checkpoint as written before manifests existed: no manifest, no header marker."""
    net, opt = _trained_optimizer()
    opt_t, opt_meta = ck.optimizer_to_flat(opt)
    rng_t, rng_meta = ck.rng_state()
    d = run / "checkpoints" / f"epoch-{epoch:06d}"
    d.mkdir(parents=True)
    save_file(net.state_dict(), str(d / "model.safetensors"))
    save_file(opt_t, str(d / "optimizer.safetensors"))
    save_file(rng_t, str(d / "rng.safetensors"))
    (d / "state.json").write_text(json.dumps({"epoch": epoch, "optimizer": opt_meta, "rng": rng_meta}))
    return d


def test_checkpoint_without_manifest_loads_when_it_parses(tmp_path):
    run = tmp_path / "run"
    d = _legacy_checkpoint(run, 1)
    assert verify_checkpoint(d) is None
    path, warnings = find_resumable(run)
    assert path == d
    assert warnings == ["checkpoints/epoch-000001: written without manifest.json (older pcpo): its files "
                        "parse, but their data cannot be checked"]
    assert load_checkpoint(d)[3]["epoch"] == 1


def test_checkpoint_without_manifest_that_does_not_parse(tmp_path):
    run = tmp_path / "run"
    d = _legacy_checkpoint(run, 1)
    _truncate(d / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(d)
    assert e.value.path == d / "model.safetensors"
    assert e.value.problem.startswith("unreadable safetensors header")
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable safetensors header"):
        load_checkpoint(d)

    d2 = _legacy_checkpoint(run, 2)
    (d2 / "state.json").write_text('{"epoch": 2, "optimizer": ')
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(d2)
    assert e.value.path == d2 / "state.json" and e.value.problem.startswith("bad JSON in state.json")
    path, warnings = find_resumable(run)
    assert path is None
    assert warnings[0].startswith("checkpoints/epoch-000002/state.json: bad JSON in state.json")
    assert warnings[1].startswith("checkpoints/epoch-000001/model.safetensors: unreadable safetensors header")


# ------------------------------------------------------------------ stale folders

def test_clean_stale_removes_leftovers_and_keeps_intact(tmp_path):
    run = _run(tmp_path, epochs=(1, 2, 3, 4, 9))
    root = run / "checkpoints"
    dead, alive = _dead_pid(), 1  # pid 1 always runs
    # an unfinished write of a killed process, and one of a running process
    (root / f".tmp-epoch-000010-{dead}").mkdir()
    (root / f".tmp-epoch-000010-{dead}" / "model.safetensors").write_bytes(b"partial")
    (root / f".tmp-epoch-000011-{alive}").mkdir()
    # a complete checkpoint whose writer died before renaming it into place
    os.replace(root / "epoch-000004", root / f".tmp-epoch-000004-{dead}")
    # an interrupted deletion, and a half-deleted folder by an older version (older than epoch 9)
    os.replace(root / "epoch-000001", root / f".del-epoch-000001-{dead}")
    (root / "epoch-000002" / "state.json").unlink()
    (root / "epoch-000003" / "optimizer.safetensors").unlink()
    # a newer incomplete checkpoint is evidence, not garbage: kept and reported by find_resumable
    shutil.copytree(root / "epoch-000009", root / "epoch-000012")
    (root / "epoch-000012" / "model.safetensors").unlink()

    removed = clean_stale(run)
    assert removed == [
        f"checkpoints/.del-epoch-000001-{dead}: interrupted deletion, removed",
        f"checkpoints/.tmp-epoch-000004-{dead}: complete checkpoint of a killed writer, renamed to epoch-000004",
        f"checkpoints/.tmp-epoch-000010-{dead}: unfinished write of a stopped process, removed",
        "checkpoints/epoch-000002: incomplete checkpoint older than epoch-000009, removed",
        "checkpoints/epoch-000003: incomplete checkpoint older than epoch-000009, removed",
    ]
    assert _names(root) == [f".tmp-epoch-000011-{alive}", "epoch-000004", "epoch-000009", "epoch-000012"]
    assert load_checkpoint(root / "epoch-000004")[3]["epoch"] == 4
    path, warnings = find_resumable(run)
    assert path == root / "epoch-000009"
    assert warnings == ["checkpoints/epoch-000012/model.safetensors: missing; using epoch-000009"]
    assert clean_stale(run) == []  # nothing left to do

    assert clean_stale(run, exclusive=True) == [
        f"checkpoints/.tmp-epoch-000011-{alive}: unfinished write of a stopped process, removed"]
    assert _names(root) == ["epoch-000004", "epoch-000009", "epoch-000012"]


def test_own_pid_tmp_is_stale_and_no_checkpoints_is_fine(tmp_path):
    assert clean_stale(tmp_path / "missing") == []
    root = tmp_path / "run" / "checkpoints"
    (root / f".tmp-epoch-000001-{os.getpid()}").mkdir(parents=True)
    (root / "epoch-000000").mkdir()  # incomplete but with no complete checkpoint after it: kept
    assert clean_stale(tmp_path / "run") == [
        f"checkpoints/.tmp-epoch-000001-{os.getpid()}: unfinished write of a stopped process, removed"]
    assert _names(root) == ["epoch-000000"]


def test_replacing_a_folder_killed_between_the_two_renames_recovers(tmp_path):
    """write_state_dir replacing an existing folder (the pretrain checkpoint): old renamed away, new not yet in."""
    parent = tmp_path / "ckpt"
    final = parent / "toy-flow-checkpoint"
    write_state_dir(final, {"model": {"w": torch.zeros(3)}}, {"step": 1})
    write_state_dir(parent / "scratch", {"model": {"w": torch.ones(3)}}, {"step": 2})
    dead = _dead_pid()
    os.replace(final, parent / f".del-toy-flow-checkpoint-{dead}")
    os.replace(parent / "scratch", parent / f".tmp-toy-flow-checkpoint-{dead}")

    assert clean_stale_dir(parent, required=("model.safetensors",)) == [
        f".del-toy-flow-checkpoint-{dead}: interrupted deletion, removed",
        f".tmp-toy-flow-checkpoint-{dead}: complete checkpoint of a killed writer, renamed to toy-flow-checkpoint",
    ]
    assert _names(parent) == ["toy-flow-checkpoint"]
    assert json.loads((final / "state.json").read_text()) == {"step": 2}
    verify_checkpoint(final, required=("model.safetensors",))


def test_write_state_dir_replaces_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "d"
    write_state_dir(final, {"model": {"w": torch.zeros(2)}}, {"step": 1})
    write_state_dir(final, {"model": {"w": torch.ones(2)}}, {"step": 2})
    assert _names(tmp_path) == ["d"]
    assert json.loads((final / "state.json").read_text()) == {"step": 2}
    with pytest.raises(TypeError):  # an unserialisable payload: no temporary folder left
        write_state_dir(tmp_path / "e", {"model": {"w": torch.zeros(2)}}, {"bad": object()})
    assert _names(tmp_path) == ["d"]


def test_keep_last_pruning_killed_mid_deletion_leaves_no_checkpoint_lookalike(tmp_path, monkeypatch):
    run = _run(tmp_path, epochs=(1, 2), keep_last=2)
    root = run / "checkpoints"
    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *a, **kw):  # deletes two files, then the process dies
        for name in ("state.json", "model.safetensors"):
            os.remove(Path(path) / name)
        raise KeyboardInterrupt

    net, opt = _trained_optimizer()
    monkeypatch.setattr(ck.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, 3, net.state_dict(), opt, {}, keep_last=2)
    monkeypatch.setattr(ck.shutil, "rmtree", real_rmtree)

    assert _names(root) == [f".del-epoch-000001-{os.getpid()}", "epoch-000002", "epoch-000003"]
    assert [p.name for p in list_checkpoints(run)] == ["epoch-000002", "epoch-000003"]
    assert find_resumable(run) == (root / "epoch-000003", [])
    assert clean_stale(run) == [f"checkpoints/.del-epoch-000001-{os.getpid()}: interrupted deletion, removed"]
    assert _names(root) == ["epoch-000002", "epoch-000003"]


def test_keep_last_prunes_oldest(tmp_path):
    run = _run(tmp_path, epochs=(1, 2, 3, 4), keep_last=2)
    assert _names(run / "checkpoints") == ["epoch-000003", "epoch-000004"]


# ------------------------------------------------------------------ metrics log

def _strict(text: str):
    def no_constants(c):
        raise AssertionError(f"non-standard JSON constant {c}")
    return json.loads(text, parse_constant=no_constants)


def test_append_record_writes_strict_json(tmp_path):
    log = tmp_path / "metrics.jsonl"
    a = append_record(log, {"epoch": 1, "loss": float("nan"), "reward_mean": 0.25, "clip": float("inf"),
                            "per_step": [0.5, float("-inf"), None], "nested": {"x": float("nan")}, "ok": True})
    b = append_record(log, {"epoch": 2, "loss": 1.5})
    lines = log.read_text().splitlines()
    assert [_strict(ln) for ln in lines] == [a, b]
    assert a == {"epoch": 1, "loss": None, "reward_mean": 0.25, "clip": None, "per_step": [0.5, None, None],
                 "nested": {"x": None}, "ok": True, "nonfinite": ["loss", "clip", "per_step", "nested"]}
    assert b == {"epoch": 2, "loss": 1.5}  # no nonfinite key when all values are finite
    json.dumps(a, allow_nan=False)
    assert read_records(log) == [a, b]
    assert read_records(tmp_path / "none.jsonl") == []


def test_cut_last_line_is_dropped_and_the_next_append_is_clean(tmp_path):
    log = tmp_path / "metrics.jsonl"
    append_record(log, {"epoch": 1, "loss": 1.0})
    append_record(log, {"epoch": 2, "loss": 2.0})
    with open(log, "ab") as f:
        f.write(b'{"epoch": 3, "lo')  # killed mid-write
    assert [r["epoch"] for r in read_records(log)] == [1, 2]
    append_record(log, {"epoch": 3, "loss": 3.0})
    assert log.read_text() == ('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "loss": 2.0}\n'
                               '{"epoch": 3, "loss": 3.0}\n')
    # a complete last record whose newline is missing is kept, and the next record gets its own line
    with open(log, "ab") as f:
        f.write(b'{"epoch": 4}')
    assert [r["epoch"] for r in read_records(log)] == [1, 2, 3, 4]
    append_record(log, {"epoch": 5})
    assert [r["epoch"] for r in read_records(log)] == [1, 2, 3, 4, 5]
    # a cut line in the middle of a multi-byte character
    with open(log, "ab") as f:
        f.write('{"note": "\u00e9'.encode()[:-1])
    assert len(read_records(log)) == 5


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\n\n{"epoch": 2, "loss": 0.5\n{"epoch": 3}\n')
    with pytest.raises(MetricsLogError, match=rf"^{log} line 3: not a JSON record \(.*\); repair or delete"):
        read_records(log)
    log.write_text('{"epoch": 1}\n[1, 2]\n')
    with pytest.raises(MetricsLogError, match=rf"^{log} line 2: a JSON object was expected, got list"):
        read_records(log)
    with pytest.raises(MetricsLogError, match="line 2"):
        truncate_records(log, 5)


def test_truncate_records_keeps_done_epochs_atomically(tmp_path):
    log = tmp_path / "metrics.jsonl"
    for e in range(5):
        append_record(log, {"epoch": e, "loss": e / 2})
    with open(log, "a") as f:
        f.write('{"note": "no epoch"}\n{"epoch": 5, "loss": NaN}\n{"epoch": 6, "lo')  # older, non-strict line
    assert [r.get("epoch") for r in read_records(log)] == [0, 1, 2, 3, 4, None, 5]
    assert math.isnan(read_records(log)[-1]["loss"])

    kept = truncate_records(log, 2)
    assert kept == [{"epoch": 0, "loss": 0.0}, {"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 1.0},
                    {"note": "no epoch"}]
    assert [_strict(ln) for ln in log.read_text().splitlines()] == kept
    assert _names(tmp_path) == ["metrics.jsonl"]  # no temporary file left

    append_record(log, {"epoch": 5, "loss": float("nan")})
    assert truncate_records(log, 9)[-1] == {"epoch": 5, "loss": None, "nonfinite": ["loss"]}
    assert truncate_records(log, -1) == [] and log.read_text() == ""
    assert truncate_records(tmp_path / "none.jsonl", 3) == [] and not (tmp_path / "none.jsonl").exists()
