"""First contact at the command line: each bad input fails with one stderr line that names the field or file,
a non-zero exit, no traceback, and no run directory left behind (an existing one untouched).

Every case runs ``python -m pcpo.cli ...`` in a subprocess; the cases run concurrently once per module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("PCPO_DEBUG", None)
ENV.pop("RANK", None)


def _pcpo(args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pcpo.cli", *args], cwd=cwd, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)


def _tree_hash(path: Path) -> str:
    """SHA-256 over the relative names and bytes of every file under ``path`` ("" if it does not exist)."""
    if not path.exists():
        return ""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def _setup(d: Path) -> None:
    (d / "bad.yaml").write_text("train:\n  lr: 1e-4\n  objective: pcpo: x\n")
    (d / "a_file").write_text("not a directory\n")
    (d / "busy").mkdir()
    (d / "busy" / "keep.txt").write_text("someone's results\n")
    (d / "empty").mkdir()
    toy = d / "toy-model"
    toy.mkdir()
    (toy / "model.safetensors").write_bytes(b"weights")
    (toy / "config.json").write_text("{}")


NO_CUDA = not torch.cuda.is_available()
NO_WANDB = importlib.util.find_spec("wandb") is None
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens there

# (id, argv, words the one stderr line must contain, paths (relative to the case folder) that must stay as
# they were: absent ones stay absent)
T = ["train", "--out", "run"]
CASES = [
    ("reward-option", T + ["--set", "reward.options.foo=1"], ["reward.options", "foo"], ["run"]),
    ("remote-no-url", T + ["--set", "reward.name=remote"], ["reward.options.url"], ["run"]),
    ("remote-typo", T + ["--set", "reward.name=remote", "--set", f"reward.options.ulr={DEAD}"],
     ["reward.options", "ulr"], ["run"]),
    ("remote-dead", T + ["--set", "reward.name=remote", "--set", f"reward.options.url={DEAD}"],
     ["reward.options.url", "127.0.0.1:9"], ["run"]),
    ("remote-dead-empty-out", ["train", "--out", "empty", "--set", "reward.name=remote", "--set",
                               f"reward.options.url={DEAD}"], ["reward.options.url"], ["empty"]),
    ("device-typo", T + ["--set", "device=cudaa"], ["device", "cudaa"], ["run"]),
    ("yaml-syntax", ["train", "bad.yaml", "--out", "run"], ["bad.yaml", "line 3"], ["run", "bad.yaml"]),
    ("out-is-file", ["train", "--out", "a_file"], ["--out", "a_file"], ["a_file"]),
    ("out-under-file", ["train", "--out", "a_file/run"], ["--out", "a_file"], ["a_file"]),
    ("out-not-empty", ["train", "--out", "busy"], ["--out", "busy"], ["busy"]),
    ("real-reward-weights", T + ["--set", "reward.name=aesthetic"], ["aesthetic", "head"], ["run"]),
    ("unknown-key", T + ["--set", "bogus=1"], ["bogus", "unknown key"], ["run"]),
    ("unknown-nested-key", T + ["--set", "train.lrr=1e-4"], ["train.lrr"], ["run"]),
    ("bad-type-number", T + ["--set", "train.lr=abc"], ["train.lr", "number"], ["run"]),
    ("bad-type-int", T + ["--set", "epochs=1.5"], ["epochs", "integer"], ["run"]),
    ("bad-type-bool", T + ["--set", "log.tensorboard=maybe"], ["log.tensorboard"], ["run"]),
    ("out-of-range", T + ["--set", "train.lr=-1"], ["train.lr", "> 0"], ["run"]),
    ("group-of-one", T + ["--set", "data.group_size=1"], ["data.group_size"], ["run"]),
    ("objective", T + ["--set", "train.objective=ppo"], ["train.objective", "pcpo"], ["run"]),
    ("credit", T + ["--set", "train.credit=nope"], ["train.credit"], ["run"]),
    ("sampler", T + ["--set", "sampler.name=nope"], ["sampler.name"], ["run"]),
    ("sampler-kind", T + ["--set", "sampler.name=ddim"], ["sampler.name", "flow"], ["run"]),
    ("family", T + ["--set", "model.family=sd4"], ["model.family", "sd4"], ["run"]),
    ("model-path", T + ["--set", "model.path=./no-such-model"], ["model.path", "no-such-model"], ["run"]),
    ("real-model-no-path", T + ["--set", "model.family=sd"], ["model.path"], ["run"]),
    ("model-options", T + ["--set", "model.options.resolution=64"], ["model.options.resolution", "train"], ["run"]),
    ("prompts-file", T + ["--set", "data.prompts=missing.txt"], ["data.prompts", "missing.txt"], ["run"]),
    ("weights-typo", T + ["--set", "reward.weights.colr_match=1"], ["reward.weights.colr_match"], ["run"]),
    ("weights-option", T + ["--set", "reward.weights.color_match=1", "--set", "reward.options.color_match.x=1"],
     ["reward.options.color_match", "'x'"], ["run"]),
    ("config-name", ["train", "flowgrpo-pcpoo", "--out", "run"], ["flowgrpo-pcpoo", "shipped"], ["run"]),
    ("set-syntax", T + ["--set", "train.lr"], ["--set", "KEY=VALUE"], ["run"]),
    ("resume-missing", ["train", "--resume", "nowhere"], ["nowhere"], ["nowhere"]),
    ("unknown-flag", ["train", "--bogus"], ["--bogus"], []),
    ("pretrain-no-out", ["pretrain-toy", "--model", "flow"], ["--out", "--into-package"], []),
    ("pretrain-existing", ["pretrain-toy", "--model", "flow", "--recipe", "single", "--steps", "1",
                           "--out", "toy-model"], ["toy-model", "--force"], ["toy-model"]),
    ("check-toy-seeds", ["check-toy", "--model", "flow", "--seeds", "3-1"], ["--seeds"], []),
    ("bench-seeds", ["bench", "--seeds", "0,0", "--out", "bench"], ["--seeds"], ["bench"]),
    ("eval-missing", ["eval", "no-run"], ["no-run"], ["no-run"]),
    ("report-missing", ["report", "no-run"], ["no-run"], ["no-run"]),
    ("credit-steps", ["credit", "--sampler", "ddim", "--steps", "0", "--eta", "1"], ["steps"], []),
]
if NO_CUDA:
    CASES.append(("device-cuda", T + ["--set", "device=cuda"], ["device", "cuda", "cpu"], ["run"]))
if NO_WANDB:
    CASES.append(("wandb", T + ["--set", "log.wandb=true"], ["log.wandb", "pip install wandb"], ["run"]))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case (each in its own folder), a few at a time; (result, hashes before, folder) per id."""
    root = tmp_path_factory.mktemp("cli-errors")

    def one(case):
        cid, argv, _, keep = case
        d = root / cid
        d.mkdir()
        _setup(d)
        before = {k: _tree_hash(d / k) for k in keep}
        return cid, (_pcpo(argv, d), before, d)

    with ThreadPoolExecutor(max_workers=4) as ex:
        return dict(ex.map(one, CASES))


def test_enough_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_in_one_line(results, case):
    cid, argv, words, keep = case
    res, before, d = results[cid]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    for k in keep:
        assert _tree_hash(d / k) == before[k], f"{k} changed"
    assert not (d / "runs").exists()  # no default run directory either


def test_config_errors_exit_2(results):
    for cid in ("reward-option", "yaml-syntax", "unknown-key", "bad-type-number", "objective", "out-is-file"):
        assert results[cid][0].returncode == 2, cid


def test_debug_shows_the_traceback(tmp_path):
    for args, env in ((["--debug", "train", "--out", "run", "--set", "train.objective=ppo"], ENV),
                      (["train", "--out", "run", "--set", "train.objective=ppo"], {**ENV, "PCPO_DEBUG": "1"})):
        res = _pcpo(args, tmp_path, env)
        assert res.returncode != 0 and "Traceback" in res.stderr and "train.objective" in res.stderr
        assert not (tmp_path / "run").exists()


def test_only_rank_0_reports(tmp_path):
    args = ["train", "--out", "run", "--set", "train.objective=ppo"]
    res = _pcpo(args, tmp_path, {**ENV, "RANK": "1", "WORLD_SIZE": "1"})
    assert res.returncode == 2 and res.stderr.strip() == "" and "Traceback" not in res.stdout
    res = _pcpo(args, tmp_path, {**ENV, "RANK": "0"})
    assert res.returncode == 2 and "train.objective" in res.stderr


LAUNCH = ["launch", "--standalone", "--nproc-per-node", "2"]
TINY = ["epochs=1", "data.prompts_per_epoch=1", "data.group_size=4", "train.minibatch_size=4", "sampler.steps=4",
        "eval.every=0", "eval.images_per_prompt=1", "eval.grid=false", "threads=1", "log.progress=false",
        "log.tensorboard=false"]


def test_launch_ends_a_rank_failure_in_one_line(tmp_path):
    """Under `pcpo launch` (torchrun's launcher) a config error is rank 0's line and rank 0's exit status; plain
    torchrun would add a ChildFailedError traceback and its failure table."""
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    res = _pcpo([*LAUNCH, "train", "--out", "run", "--set", "reward.name=nope"], tmp_path, env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcpo train: error: reward.name"), res.stderr
    assert "Traceback" not in res.stderr + res.stdout and not (tmp_path / "run").exists()
    res = _pcpo(["launch", "--nproc-per-node", "2", "trian", "default"], tmp_path, env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "'trian' is not a pcpo command" in res.stderr


def test_launch_trains_on_two_ranks(tmp_path):
    res = _pcpo([*LAUNCH, "train", "default", "--out", "run", *[a for s in TINY for a in ("--set", s)]], tmp_path,
                {**ENV, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("run directory:") == 1 and res.stderr.strip() == "", res.stderr  # rank 0 speaks
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["epoch"] == 1 and (tmp_path / "run" / "final").is_dir()


def test_closed_pipe_is_not_an_error(tmp_path):
    cmd = [sys.executable, "-m", "pcpo.cli", "credit", "--sampler", "flow-sde", "--steps", "50", "--eta", "0.7",
           "--json"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()  # `| head -1`
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert first.strip() == b"{"
    assert "BrokenPipeError" not in err and "Traceback" not in err and err.strip() == ""
    assert p.returncode == 0


# ---------------------------------------------------------------------------- in-process: cleanup, YAML

def _train(monkeypatch, out, fail):
    """``pcpo train`` on the default config whose train() fails after writing into the run directory."""
    from pcpo.cli import main
    from pcpo.trainer.trainer import Trainer

    def train(self):
        (self.run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "eval_reward_mean": 0.0}) + "\n")
        (self.run_dir / "tb").mkdir()
        if fail == "after-epoch":
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"epoch": 1, "reward_mean": 0.0}) + "\n")
        raise ValueError("reward: the scorer broke")

    monkeypatch.setattr(Trainer, "train", train)
    return main(["train", "--out", str(out), "--set", "data.eval_prompts=[a red circle]"])


def test_run_failing_before_first_epoch_leaves_no_directory(tmp_path, monkeypatch, capsys):
    out = tmp_path / "new" / "run"
    assert _train(monkeypatch, out, "before-epoch") == 2
    assert not (tmp_path / "new").exists()  # the parent it created is gone too
    assert "the scorer broke" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _train(monkeypatch, empty, "before-epoch") == 2
    assert empty.is_dir() and list(empty.iterdir()) == []  # an --out that existed empty stays as it was


def test_run_failing_after_an_epoch_keeps_its_directory(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _train(monkeypatch, out, "after-epoch") == 2
    assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").is_file()


def test_yaml_numbers_and_no(tmp_path):
    from pcpo.trainer.config import load_config, load_yaml

    assert load_yaml("lr: 1e-4\nb: 2.5E+3\nc: .5\n") == {"lr": 1e-4, "b": 2500.0, "c": 0.5}
    assert load_yaml("x: no\ny: off\nz: yes\nt: true\n") == {"x": "no", "y": "off", "z": "yes", "t": True}
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-4\n  mixed_precision: no\n")
    cfg = load_config(str(f), ["train.adam_eps=1e-6"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.mixed_precision == "no" and cfg.train.adam_eps == 1e-6


def test_print_config_comments_round_trip(tmp_path, capsys):
    from pcpo.cli import main
    from pcpo.trainer.config import load_config, to_dict

    assert main(["train", "flowgrpo", "--print-config", "--set", "model.lora={rank: 4, alpha: 8}"]) == 0
    text = capsys.readouterr().out
    assert "# AdamW learning rate" in text and "mixed_precision: 'no'  # autocast" in text
    assert "train:  # objective and optimisation" in text
    (tmp_path / "p.yaml").write_text(text)
    assert to_dict(load_config(str(tmp_path / "p.yaml"))) == to_dict(
        load_config("flowgrpo", ["model.lora={rank: 4, alpha: 8}"]))
    assert main(["train", "--print-config", "--no-comments"]) == 0
    plain = capsys.readouterr().out
    assert "#" not in plain and yaml.safe_load(plain)["train"]["objective"] == "pcpo"


def test_model_options_error_lists_what_print_config_documents():
    from pcpo.run import model_option_keys
    from pcpo.trainer.config import ModelConfig

    help_ = next(f for f in __import__("dataclasses").fields(ModelConfig) if f.name == "options").metadata["help"]
    for fam in ("toy-flow", "sd", "sd3"):
        for k in model_option_keys(fam):
            assert k in help_, (fam, k)


def test_train_help_names_only_shipped_configs():
    from pcpo.trainer.cli import _shipped_configs
    from pcpo.trainer.config import CONFIG_DIR, resolve_config_path

    names = _shipped_configs().split(", ")
    assert "default" in names and "flowgrpo-pcpo" in names and "real/ddpo-sd15" in names
    assert len(names) == len(list(CONFIG_DIR.rglob("*.yaml")))
    for n in names:
        resolve_config_path(n)


# ---------------------------------------------------------------------------- labelled outputs

def test_metric_tables_say_which_way_is_better(tmp_path, capsys):
    from pcpo.eval.evaluate import print_table
    from pcpo.eval.report import _eval_table
    from pcpo.figures import metric_label

    assert metric_label("eval_reward_mean") == "eval_reward_mean ↑"
    assert metric_label("gold_frechet_real") == "gold_frechet_real ↓"
    assert metric_label("gold_accuracy") == "gold_accuracy ↑" and metric_label("reward_std") == "reward_std"
    ev = {"run": "r", "weights": "final", "prompts": ["a"], "images_per_prompt": 1, "seed": 0,
          "base": {"reward_mean": 0.1, "gold_frechet_real": 3.0}, "trained": {"reward_mean": 0.2, "gold_frechet_real": 2.0}}
    print_table(ev)
    out = capsys.readouterr().out
    assert "reward_mean ↑" in out and "gold_frechet_real ↓" in out and "higher is better" in out
    html = _eval_table(ev)
    assert "reward_mean ↑" in html and "gold_frechet_real ↓" in html and "lower is better" in html


def test_grid_column_labels_head_each_block():
    import numpy as np

    from pcpo.figures import make_grid

    imgs = torch.zeros(2 * 4, 3, 8, 8)  # 2 prompts x (2 scales x 2 images)
    plain = make_grid(imgs, nrow=4, labels=["a red circle", "a blue square"])
    headed = make_grid(imgs, nrow=4, labels=["a red circle", "a blue square"], col_labels=["γ=0.5", "γ=1.5"])
    assert headed.width == plain.width and headed.height > plain.height
    head = np.asarray(headed)[: headed.height - plain.height]
    lw = plain.width - 4 * (16 + 2) - 2
    left, right = head[:, lw: lw + 2 * 18], head[:, lw + 2 * 18:]
    assert (left > 200).any() and (right > 200).any()  # a label over each block of two columns
    with pytest.raises(ValueError, match="col_labels"):
        make_grid(imgs, nrow=4, col_labels=["a", "b", "c"])
