"""``pcpo report``: a self-contained HTML page that renders offline in headless Chromium without errors."""

import base64
import re
import subprocess
from pathlib import Path

import pytest

import micro
from pcpo.cli import main
from pcpo.trainer.config import load_config
from pcpo.trainer.trainer import Trainer

micro.register()

BASE = [
    "model.family=micro-flow", "reward.name=redness", "eval.gold=false", "log.progress=false",
    "data.prompts=[a red cat, a blue dog]", "data.eval_prompts=[a red cat, a blue dog]", "data.group_size=8",
    "data.prompts_per_epoch=2", "eval.images_per_prompt=2", "log.tensorboard=false", "train.lr=3e-3",
    "train.minibatch_size=8", "eval.every=1", "sampler.steps=6", "epochs=3",
]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    Trainer(load_config(None, BASE), run).train()
    out = run / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    return run, out


def test_report_is_self_contained_and_complete(report):
    run, out = report
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # no network: no external URLs, scripts, links or stylesheets
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "<script" not in text and "<link" not in text
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    grids = sorted((run / "images").glob("epoch-*.png"))
    assert len(grids) == 4  # epochs 0..3
    # reward curves, 2 heat maps, credit, 4 grids; every one a valid PNG
    assert len(uris) >= 4 + len(grids)
    for u in uris:
        assert base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n"
    # the image grids are embedded byte for byte
    encoded = {base64.b64decode(u) for u in uris}
    for g in grids:
        assert g.read_bytes() in encoded
    for heading in ("Reward", "Per-timestep behaviour", "native vs PCPO", "Held-out samples over training"):
        assert heading in text


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, out = report
    args = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(args + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Per-timestep behaviour" in dom.stdout and dom.stdout.count("<img") >= 8
    shot = tmp_path / "shot.png"
    res = subprocess.run(args + ["--window-size=1200,2400", f"--screenshot={shot}", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.stat().st_size > 20_000
    # page-level problems only (the sandbox's missing D-Bus/GPU produce unrelated browser-process noise)
    for log in (dom.stderr, res.stderr):
        bad = [ln for ln in log.splitlines()
               if "CONSOLE" in ln or "Failed to load resource" in ln or "ERR_" in ln or "Uncaught" in ln]
        assert not bad, bad


def test_report_of_a_run_in_progress(tmp_path):
    """A run dir with only config + a partial metrics file still gives a page (no images yet)."""
    run = tmp_path / "run"
    Trainer(load_config(None, BASE), run)
    (run / "metrics.jsonl").write_text('{"epoch": 0, "eval_reward_mean": 0.3}\n{"epoch": 1, "rew')
    assert main(["report", str(run)]) == 0
    assert "pcpo run report" in (run / "report.html").read_text()

