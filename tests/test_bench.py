"""``pcpo bench`` end to end on the micro models: matrix, skip/resume, results table and plots."""

import json
import time

import pytest
import yaml

import micro
from pcpo.cli import main
from pcpo.eval.bench import BenchSpec, load_bench_spec, run_overrides

micro.register()

COMMON = [
    "reward.name=redness", "eval.gold=false", "log.progress=false", "log.tensorboard=false",
    "data.prompts=[a red cat, a blue dog]", "data.eval_prompts=[a red cat]", "data.group_size=4",
    "data.prompts_per_epoch=2", "eval.images_per_prompt=2", "train.lr=3e-3", "train.minibatch_size=4",
    "eval.every=1", "sampler.steps=4", "sampler.rollout_batch=16",
]


def _bench_file(tmp_path, target=0.6):
    spec = {
        "frameworks": ["ddpo", "flowgrpo"],
        "target": target,
        "set": COMMON,
        "framework_set": {"ddpo": ["model.family=micro-ddpm", "sampler.name=ddim", "sampler.eta=1.0"],
                          "flowgrpo": ["model.family=micro-flow", "sampler.name=flow-sde", "sampler.eta=0.7"]},
        "notes": "micro-model smoke benchmark",
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_bench_runs_the_matrix_and_writes_the_table(tmp_path, capsys, monkeypatch):
    cfg = _bench_file(tmp_path)
    out = tmp_path / "bench"
    args = ["bench", "--config", str(cfg), "--out", str(out), "--seeds", "2", "--epochs", "2",
            "--objectives", "clipped,pcpo"]
    monkeypatch.setattr("sys.argv", ["pcpo", *args])
    assert main(args) == 0
    monkeypatch.setattr("sys.argv", ["pytest"])
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2 * 2 * 2 and "ddpo-pcpo-s1" in runs and "flowgrpo-clipped-s0" in runs
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 8
    for fw in ("ddpo", "flowgrpo"):
        for obj in ("clipped", "pcpo"):
            s = res["summary"][fw][obj]
            assert s["n"] == 2 and len(s["epochs_to_target"]) == 2
            assert all(0 <= e <= 2 for e in s["epochs_to_target"])
        assert len(res["summary"][fw]["speedup_pcpo_vs_clipped"]) == 3
    md = (out / "results.md").read_text()
    assert "| ddpo | pcpo | 2 |" in md and "Speed-up of PCPO" in md and "micro-model smoke benchmark" in md
    # the line that ran the matrix, as typed, and no rebuild line (this was not --report-only)
    assert "started by this line" in md and f"```\npcpo {' '.join(args)}\n```" in md
    assert "rebuilt from the committed summaries" not in md
    for png in ("reward_curves.png", "train_reward_curves.png", "clipfrac_heatmaps.png", "clipfrac_per_step.png",
                "credit.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in md
    assert "epochs to target" in capsys.readouterr().out
    # the same output again: refused without --resume, all skipped with it
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    mtimes = {p: (out / "runs" / p / "metrics.jsonl").stat().st_mtime for p in runs}
    assert main(args + ["--resume"]) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 8
    assert mtimes == {p: (out / "runs" / p / "metrics.jsonl").stat().st_mtime for p in runs}


def test_bench_resumes_a_partial_run(tmp_path, capsys):
    cfg = _bench_file(tmp_path, target=10.0)  # never reached: censored at the epoch budget
    out = tmp_path / "bench"
    base = ["bench", "--config", str(cfg), "--out", str(out), "--seeds", "1", "--frameworks", "flowgrpo",
            "--objectives", "pcpo"]
    assert main(base + ["--epochs", "1"]) == 0
    # bench.json, what --report-only reads, records the whole matrix, not the --frameworks / --objectives subset
    settings = json.loads((out / "bench.json").read_text())
    assert settings["frameworks"] == ["ddpo", "flowgrpo"] and settings["objectives"] == ["clipped", "log_hinge", "pcpo"]
    # more epochs: the finished 1-epoch run is now partial and continues from its checkpoint
    assert main(base + ["--epochs", "2", "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    recs = [json.loads(ln) for ln in (out / "runs" / "flowgrpo-pcpo-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    s = json.loads((out / "results.json").read_text())["summary"]["flowgrpo"]["pcpo"]
    assert s["censored"] == 1 and s["epochs_to_target"] == [2.0]


def test_bench_interrupted_run_keeps_its_time_and_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    """A signal stops the matrix with the bench's own resume hint; the run's wall time adds up over sessions."""
    from pcpo.trainer import trainer as tr

    cfg = _bench_file(tmp_path)
    out = tmp_path / "bench"
    base = ["bench", "--config", str(cfg), "--out", str(out), "--seeds", "1", "--frameworks", "flowgrpo",
            "--objectives", "pcpo", "--epochs", "1"]
    rd = out / "runs" / "flowgrpo-pcpo-s0"
    real_train = tr.Trainer.train

    def stopped(self):  # the trainer's own stop path, as a SIGTERM during the first epoch takes it
        time.sleep(0.3)
        self._interrupted(tr._Stop(15), 0)

    monkeypatch.setattr(tr.Trainer, "train", stopped)
    monkeypatch.setattr("sys.argv", ["pcpo", *base])  # as typed: command.txt, which the hint quotes
    assert main(base) == 143
    err = capsys.readouterr().err.strip()
    assert err == (f"pcpo bench: flowgrpo-pcpo-s0: stopped by SIGTERM during epoch 1, before anything was "
                   f"trained; `pcpo {' '.join(base)}` plus --resume starts it again")
    first = json.loads((rd / "bench_wall.json").read_text())["seconds"]
    assert first >= 0.3
    monkeypatch.setattr(tr.Trainer, "train", real_train)
    assert main(base + ["--resume"]) == 0
    total = json.loads((rd / "bench_wall.json").read_text())["seconds"]
    summary = json.loads((out / "summaries" / "flowgrpo" / "pcpo" / "0.json").read_text())
    assert summary["wall_s"] == pytest.approx(total, rel=1e-5) and total > first


@pytest.mark.parametrize("forced, done, says", [
    (True, 0, "stopped by a second SIGINT during epoch 1, which is not saved; {hint} continues from the start"),
    (False, 0, "stopped by SIGINT during epoch 1, before anything was trained; {hint} starts it again"),
    (False, 1, "stopped by SIGINT after epoch 1 (checkpoints/epoch-000001); continue with {hint}"),
])
def test_bench_stop_messages_name_the_bench_on_every_path(tmp_path, capsys, monkeypatch, forced, done, says):
    """Whatever branch of the trainer's stop handling ends the run, the hint is the bench's, not `pcpo train`."""
    from pcpo.trainer import trainer as tr

    cfg = _bench_file(tmp_path)
    base = ["bench", "--config", str(cfg), "--out", str(tmp_path / "bench"), "--seeds", "1", "--frameworks",
            "flowgrpo", "--objectives", "pcpo", "--epochs", "1", "--resume"]
    monkeypatch.setattr(tr.Trainer, "train", lambda self: self._interrupted(tr._Stop(2, forced=forced), done))
    monkeypatch.setattr("sys.argv", ["pcpo", *base])
    assert main(base) == 130
    hint = f"`pcpo {' '.join(base)}`"
    assert capsys.readouterr().err.strip() == f"pcpo bench: flowgrpo-pcpo-s0: {says.format(hint=hint)}"


def test_bench_spec_errors_and_config_choice(tmp_path):
    with pytest.raises(ValueError, match="unknown framework"):
        load_bench_spec(None, frameworks=["sd-turbo"])
    with pytest.raises(ValueError, match="unknown objective"):
        load_bench_spec(None, objectives=["dpo"])
    bad = tmp_path / "b.yaml"
    bad.write_text("seedz: 3\n")
    with pytest.raises(ValueError, match="seedz"):
        load_bench_spec(str(bad))
    # only seed / epochs (and the bench's own `set`) are overridden on top of the framework config
    name, ov = run_overrides(BenchSpec(epochs=7), "flowgrpo", "pcpo", 2)
    assert ov[-2:] == ["seed=2", "epochs=7"]
    if name is None:  # shipped config not there yet: the published settings are spelled out instead
        assert "sampler.name=flow-sde" in ov and "train.objective=pcpo" in ov


def test_bench_workers_train_the_same_runs_in_parallel(tmp_path, capsys):
    """`--workers 2` trains cells in spawned processes (custom families come from `imports`) and gives
    exactly the runs that one process gives; the like-for-like zero-gradient statistics are reported."""
    cfg = _bench_file(tmp_path)
    spec = yaml.safe_load(cfg.read_text())
    spec["imports"] = ["micro:register"]
    cfg.write_text(yaml.safe_dump(spec))
    common = ["bench", "--config", str(cfg), "--seeds", "1", "--epochs", "2", "--objectives", "clipped,pcpo",
              "--set", "threads=1"]
    assert main(common + ["--out", str(tmp_path / "seq")]) == 0
    assert main(common + ["--out", str(tmp_path / "par"), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 runs on 2 workers" in out and out.count(": done in") >= 8

    def records(root, name):
        recs = [json.loads(ln) for ln in (root / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")} for r in recs]

    for name in ("ddpo-clipped-s0", "ddpo-pcpo-s0", "flowgrpo-clipped-s0", "flowgrpo-pcpo-s0"):
        seq, par = records(tmp_path / "seq", name), records(tmp_path / "par", name)
        assert [r["epoch"] for r in par] == [0, 1, 2] and seq == par, name
    res = json.loads((tmp_path / "par" / "results.json").read_text())
    for fw in ("ddpo", "flowgrpo"):
        for obj in ("clipped", "pcpo"):
            assert 0.0 <= res["summary"][fw][obj]["zero_grad_frac_mean"] <= 1.0
        # the clipped objective's two-sided clip fraction counts at least its zero-gradient side
        assert res["summary"][fw]["clipped"]["clipfrac_mean"] >= res["summary"][fw]["clipped"]["zero_grad_frac_mean"]
    md = (tmp_path / "par" / "results.md").read_text()
    assert "mean zero-grad frac" in md and "](zero_grad_heatmaps.png)" in md
    assert (tmp_path / "par" / "zero_grad_heatmaps.png").stat().st_size > 1000


def test_bench_imports_and_workers_are_checked(tmp_path):
    with pytest.raises(ValueError, match="imports: cannot import 'no_such_module_xyz'"):
        load_bench_spec(None, target=1.0, imports=["no_such_module_xyz"])
    with pytest.raises(ValueError, match="imports: 'micro' has no function 'nope'"):
        load_bench_spec(None, target=1.0, imports=["micro:nope"])
    with pytest.raises(ValueError, match="--workers: must be an integer >= 1"):
        load_bench_spec(None, target=1.0, workers=0)


# ---------------------------------------------------------------------------- arms, summaries, report-only

import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402

from pcpo.eval import bench  # noqa: E402
from pcpo.eval import stats as bstats  # noqa: E402

E = 4  # epochs of the synthetic matrix
SEEDS = [10, 11, 12, 13, 14]


def _synthetic_bench(tmp_path):
    spec = {
        "frameworks": ["ddpo", "dancegrpo", "flowgrpo"], "seeds": "10-14", "epochs": E, "target_gain": 0.02,
        "margin": 0.3,
        "arms": {"clipped": {}, "pcpo": {}, "bad": {"objective": "log_hinge", "frameworks": ["ddpo"]}},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _slopes():
    """Per-seed slopes of the held-out reward (r_e = 0.3 + slope * e) of every synthetic run."""
    rng = np.random.default_rng(0)
    out = {}
    for fw in ("ddpo", "dancegrpo", "flowgrpo"):
        a = 0.006 + 0.002 * rng.random(5)
        out[(fw, "clipped")] = a
        if fw == "ddpo":      # clearly better: +0.004 +- 0.0004 per epoch
            out[(fw, "pcpo")] = a + 0.004 + 0.0004 * rng.standard_normal(5)
            out[(fw, "bad")] = 0.5 * a + 0.0002 * rng.standard_normal(5)   # clearly worse
        elif fw == "flowgrpo":  # equal up to a tiny per-seed wobble
            out[(fw, "pcpo")] = a + 0.00005 * np.array([1, -1, 1, -1, 0.5])
        else:                 # large paired noise: no decision with 5 seeds
            out[(fw, "pcpo")] = a + 0.0005 + 0.006 * np.array([1, -1, 1, -1, 0.0])
    return out


def _synthetic_summary(fw, arm, seed, slope, time_s):
    recs = [{"epoch": 0, "eval_reward_mean": 0.3, "gold_fd_real": 100.0, "gold_diversity": 10.0}]
    for e in range(1, E + 1):
        zg = 0.1 if arm == "clipped" else 0.2
        recs.append({"epoch": e, "reward_mean": 0.3 + slope * e, "time_s": time_s, "passes": 100,
                     "zero_grad_frac": zg, "clipfrac": zg, "zero_grad_frac_per_step": [zg, zg, None],
                     "clipfrac_per_step": [zg, zg, None], "eval_reward_mean": 0.3 + slope * e,
                     "gold_fd_real": 100.0 + 1000 * slope * e, "gold_diversity": 10.0 - e})
    return {"schema": 1, "framework": fw, "arm": arm, "seed": seed, "config": None, "overrides": [],
            "objective": {"bad": "log_hinge"}.get(arm, arm), "epochs": E, "epochs_done": E, "wall_s": None,
            "credit": None, "records": recs}


def _ett(slope):
    """First epoch whose gain reaches 0.02 (None: censored), from the curve's definition."""
    return next((e for e in range(1, E + 1) if (0.3 + slope * e) - 0.3 >= 0.02), None)


def test_report_only_recomputes_the_decisions_from_committed_summaries(tmp_path, capsys, monkeypatch):
    cfg = _synthetic_bench(tmp_path)
    out = tmp_path / "bench"
    slopes = _slopes()
    times = {"clipped": 2.0, "pcpo": 1.0, "bad": 2.0}
    for (fw, arm), sl in slopes.items():
        for k, seed in enumerate(SEEDS):
            bench.write_summary(bench.summary_path(out, fw, arm, seed),
                                _synthetic_summary(fw, arm, seed, float(sl[k]), times[arm]))
    spec = bench.load_bench_spec(str(cfg))
    (out / "bench.json").write_text(json.dumps(bench.spec_dict(spec)))
    # from the summaries alone: no run directories, the settings from OUT/bench.json
    assert bench.main(["--report-only", "--out", str(out)]) == 0
    assert not (out / "runs").exists()
    res = json.loads((out / "results.json").read_text())
    assert res["cells"] == {"planned": 35, "present": 35}
    labels = {}
    pvals = {}
    for fw, arm in (("ddpo", "pcpo"), ("ddpo", "bad"), ("dancegrpo", "pcpo"), ("flowgrpo", "pcpo")):
        a, b = slopes[(fw, arm)], slopes[(fw, "clipped")]
        gain_a = a * (E + 1) / 2  # (1/E) sum_e slope*e: the closed-form area of a linear curve
        gain_b = b * (E + 1) / 2
        d = gain_a - gain_b
        m = d.mean()
        lo, hi = sps.t.interval(0.95, len(d) - 1, loc=m, scale=sps.sem(d))
        c = res["comparisons"][f"{fw}/{arm}-vs-clipped"]
        assert c["seeds"] == SEEDS
        assert np.allclose(c["mean_gain_diff_per_seed"], d, rtol=1e-9, atol=1e-12)
        p = c["primary"]
        assert (p["mean"], p["low"], p["high"]) == pytest.approx((m, lo, hi), rel=1e-9, abs=1e-12)
        g = gain_b.mean()
        assert p["reference"] == pytest.approx(g, rel=1e-12)
        sd = d.std(ddof=1)
        need = next(n for n in range(2, 10**6) if sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 0.3 * g)
        assert p["seeds_needed"] == need and p["half_width_met"] == ((hi - lo) / 2 <= 0.3 * g)
        labels[(fw, arm)] = p["label"]
        pvals[(fw, arm)] = sps.ttest_rel(gain_a, gain_b).pvalue
        # speed-ups: epochs, wall-clock (2 s vs 1 s per epoch for PCPO) and passes to the target, paired
        ea = np.array([_ett(x) or E for x in a], float)
        eb = np.array([_ett(x) or E for x in b], float)
        assert c["epochs_saved_per_seed"] == list(eb - ea)
        assert c["speedup_epochs"][0] == pytest.approx(eb.mean() / ea.mean() - 1)
        assert c["speedup_epochs"][1] <= c["speedup_epochs"][0] <= c["speedup_epochs"][2]
        ta, tb = ea * times[arm], eb * times["clipped"]
        assert c["speedup_wallclock"][0] == pytest.approx(tb.mean() / ta.mean() - 1)
        assert c["speedup_passes"][0] == pytest.approx(eb.mean() / ea.mean() - 1)
        # censoring (never reached: counted as the budget) bounds the speed-up from one side only
        n_cens = (sum(_ett(x) is None for x in a), sum(_ett(x) is None for x in b))
        assert c["censored"] == list(n_cens)
        sp, dec = c["speedup_epochs"], c["speedup_epochs_decision"]["label"]
        if sp[1] > 0 and not n_cens[0]:
            assert dec == f"faster by {100 * sp[0]:.0f} % [{100 * sp[1]:.0f}, {100 * sp[2]:.0f}]"
        elif max(abs(sp[1]), abs(sp[2])) <= 0.3 and any(n_cens):
            assert dec.startswith("undecided at this budget (censored runs")
        # compute that would meet the half-width: extra seeds x (cost of one run of each arm)
        pair = E * times[arm] + E * times["clipped"]
        assert c["pair_cost_s"] == pytest.approx(pair)
        assert c["compute_extra_core_h"] == pytest.approx(max(0, need - 5) * pair / 3600)
        # Δ FD at matched reward: FD = 100 + 1000 * gain at the matched (target or final) epoch
        fd = lambda s: 100 + 1000 * s * (_ett(s) or E)  # noqa: E731
        assert c["matched_diff"]["gold_fd_real"][0] == pytest.approx(np.mean([fd(x) - fd(y) for x, y in zip(a, b)]))
        assert c["zero_grad_frac_diff"][0] == pytest.approx(0.1)
    # the pre-registered decision labels, with the numbers in % of the reference's mean gain
    def rel(fw, arm):
        a, b = slopes[(fw, arm)] * (E + 1) / 2, slopes[(fw, "clipped")] * (E + 1) / 2
        d, g = a - b, b.mean()
        lo, hi = sps.t.interval(0.95, 4, loc=d.mean(), scale=sps.sem(d))
        return 100 * d.mean() / g, 100 * lo / g, 100 * hi / g

    m, lo, hi = rel("ddpo", "pcpo")
    assert lo > 0 and labels[("ddpo", "pcpo")] == f"better by {m:.0f} % [{lo:.0f}, {hi:.0f}]"
    m, lo, hi = rel("ddpo", "bad")
    assert hi < 0 and labels[("ddpo", "bad")] == f"worse by {-m:.0f} % [{-hi:.0f}, {-lo:.0f}]"
    m, lo, hi = rel("flowgrpo", "pcpo")
    assert max(abs(lo), abs(hi)) < 30
    assert labels[("flowgrpo", "pcpo")] == f"no difference larger than {math.ceil(max(abs(lo), abs(hi)))} %"
    m, lo, hi = rel("dancegrpo", "pcpo")
    assert lo < 0 < hi and max(abs(lo), abs(hi)) > 30
    assert labels[("dancegrpo", "pcpo")] == "undecided at this budget"
    # Holm over the primary family (PCPO vs clipped on the three frameworks); "bad" is outside it
    fam = [("ddpo", "pcpo"), ("dancegrpo", "pcpo"), ("flowgrpo", "pcpo")]
    order = sorted(fam, key=lambda k: pvals[k])
    holm, run = {}, 0.0
    for i, k in enumerate(order):
        run = max(run, min(1.0, (3 - i) * pvals[k]))
        holm[k] = run
    for fw, arm in fam:
        assert res["comparisons"][f"{fw}/{arm}-vs-clipped"]["p_holm"] == pytest.approx(holm[(fw, arm)], rel=1e-9)
    assert "p_holm" not in res["comparisons"]["ddpo/bad-vs-clipped"]
    # "bad" never reaches the target (5 of 5 censored): its epochs speed-up is only an upper bound
    assert res["comparisons"]["ddpo/bad-vs-clipped"]["censored"] == [5, 0]
    assert res["comparisons"]["ddpo/bad-vs-clipped"]["speedup_epochs_decision"]["verdict"] == "undecided"
    assert res["comparisons"]["ddpo/pcpo-vs-clipped"]["speedup_epochs_decision"]["verdict"] == "faster"
    assert res["compute"]["dancegrpo"]["met"] is False and res["compute"]["dancegrpo"]["extra_seeds"] > 0
    md = (out / "results.md").read_text()
    for lab in labels.values():
        assert f"**{lab}**" in md
    assert "| ddpo | bad | 5 |" in md and "](primary_forest.png)" in md
    for png in ("reward_curves.png", "zero_grad_heatmaps.png", "primary_forest.png", "time_to_target.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "undecided at this budget" in capsys.readouterr().out
    # the same report from an explicit bench file; without either, one line naming the fix
    (out / "results.json").unlink()
    argv = ["--report-only", "--out", str(out), "--config", str(cfg)]
    monkeypatch.setattr(sys, "argv", ["pcpo", "bench", *argv])
    assert bench.main(argv) == 0
    assert json.loads((out / "results.json").read_text())["comparisons"].keys() == res["comparisons"].keys()
    # the report names the line that rebuilt it (and no matrix line: none was ever run here)
    md2 = (out / "results.md").read_text()
    assert f"rebuilt from the committed summaries alone by:\n\n```\npcpo bench {' '.join(argv)}\n```" in md2
    assert "matrix was started by" not in md2
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert bench.main(["--report-only", "--out", str(tmp_path / "empty")]) == 2
    assert "--report-only" in capsys.readouterr().err
    assert not any(c["interim"] for c in res["comparisons"].values())
    # compute by arm: one core per run; without wall times a run costs its epochs' training seconds
    cba = res["compute_by_arm"]
    assert cba["ddpo"]["pcpo"] == {"planned": 5, "finished": 5, "core_h": pytest.approx(5 * E * 1.0 / 3600),
                                   "core_min_per_run": pytest.approx(E * 1.0 / 60), "training_share": 1.0,
                                   "missing": 0, "core_h_missing": 0.0}
    assert cba["_total"]["core_h"] == pytest.approx((4 * 5 * E * 2.0 + 3 * 5 * E * 1.0) / 3600)
    assert "| ddpo | bad | 5 of 5 | " in md
    assert "Interim" not in md
    # a matrix still running: a comparison without all its pre-registered seeds is labelled interim, not decided
    bench.summary_path(out, "ddpo", "pcpo", 14).unlink()
    assert bench.main(["--report-only", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    interim = {k for k, c in res["comparisons"].items() if c["interim"]}
    assert interim == {"ddpo/pcpo-vs-clipped"} and res["comparisons"]["ddpo/pcpo-vs-clipped"]["n"] == 4
    assert res["cells"] == {"planned": 35, "present": 34}
    md = (out / "results.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| ddpo/pcpo-vs-clipped |"))
    label = res["comparisons"]["ddpo/pcpo-vs-clipped"]["primary"]["label"]
    assert f"| interim, 4 of 5 seeds: {label} |" in row and "**" not in row
    assert "**Interim: 1 of 4 comparisons" in md and f"**{labels[('ddpo', 'bad')]}**" in md
    c = res["compute_by_arm"]["ddpo"]["pcpo"]
    assert (c["finished"], c["missing"]) == (4, 1) and c["core_h_missing"] == pytest.approx(E * 1.0 / 3600)
    assert res["compute_by_arm"]["_total"]["core_h_missing"] == pytest.approx(E * 1.0 / 3600)
    assert "| ddpo | pcpo | 4 of 5 | " in md


def _micro_arms_bench(tmp_path):
    spec = {"frameworks": ["flowgrpo"], "seeds": [5, 6], "epochs": 1, "target": 0.6, "set": COMMON,
            "framework_set": {"flowgrpo": ["model.family=micro-flow", "sampler.name=flow-sde", "sampler.eta=0.7"]},
            "arms": {"clipped": {}, "pcpo": {"set": ["train.clip_range=2.0e-4"]}}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_resume_skips_cells_with_finished_summaries(tmp_path, capsys):
    cfg = _micro_arms_bench(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    spec = bench.load_bench_spec(str(cfg))
    assert spec.cells() == [("flowgrpo", "clipped", 5), ("flowgrpo", "pcpo", 5),
                            ("flowgrpo", "clipped", 6), ("flowgrpo", "pcpo", 6)]
    cfg_name, ov = bench.run_overrides(spec, "flowgrpo", "pcpo", 6)
    assert cfg_name == "flowgrpo-pcpo" and ov[-3:] == ["train.clip_range=2.0e-4", "seed=6", "epochs=1"]
    # three cells finished elsewhere: their summaries are here, their run directories are not
    for fw, arm, seed in spec.cells()[:3]:
        name, ov = bench.run_overrides(spec, fw, arm, seed)
        s = _synthetic_summary(fw, arm, seed, 0.01, 1.0)
        s.update(config=name, overrides=ov, epochs=1, epochs_done=1, records=s["records"][:2])
        bench.write_summary(bench.summary_path(out, fw, arm, seed), s)
    before = {p: p.read_text() for p in (out / "summaries").glob("*/*/*.json")}
    args = ["--config", str(cfg), "--out", str(out), "--work", str(work)]
    assert bench.main(args) == 2  # existing summaries need --resume
    assert "--resume" in capsys.readouterr().err
    assert bench.main(args + ["--resume"]) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 3
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["flowgrpo-pcpo-s6"]  # only the missing cell
    assert not (out / "runs").exists()
    assert {p: p.read_text() for p in before} == before
    s = bench.load_summary(bench.summary_path(out, "flowgrpo", "pcpo", 6))
    assert s["overrides"] == bench.run_overrides(spec, "flowgrpo", "pcpo", 6)[1] and s["config"] == "flowgrpo-pcpo"
    assert [r["epoch"] for r in s["records"]] == [0, 1] and s["epochs_done"] == 1 and s["objective"] == "pcpo"
    r1 = s["records"][1]
    assert s["trajectories_per_epoch"] == 8 and r1["passes"] == 8 * 4 + r1["trained_pairs"] > 8 * 4
    assert len(r1["zero_grad_frac_per_step"]) == 4 and len(s["credit"]["steps"]) == 4
    # the whole matrix is summarised now: nothing runs
    assert bench.main(args + ["--resume"]) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 4
    # a summary made with other settings than the bench file gives its cell is refused, naming it
    path = bench.summary_path(out, "flowgrpo", "clipped", 5)
    bad = bench.load_summary(path)
    bad["overrides"] = ["train.lr=1.0e-3"] + bad["overrides"]
    bench.write_summary(path, bad)
    assert bench.main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "recorded with other settings" in err and str(path) in err


def test_time_budget_starts_only_runs_expected_to_finish(tmp_path, capsys, monkeypatch):
    """--time-budget: a run expected (from its arm's finished runs) to outlast the budget is not started, nor
    any after it; the command ends cleanly and says how to go on; a budget that fits runs them."""
    cfg = _micro_arms_bench(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    spec = bench.load_bench_spec(str(cfg))
    for fw, arm, seed in spec.cells()[:2]:  # seed 5 of both arms finished elsewhere, one hour each
        name, ov = bench.run_overrides(spec, fw, arm, seed)
        s = _synthetic_summary(fw, arm, seed, 0.01, 1.0)
        s.update(config=name, overrides=ov, epochs=1, epochs_done=1, records=s["records"][:2], wall_s=3600.0)
        bench.write_summary(bench.summary_path(out, fw, arm, seed), s)
    args = ["--config", str(cfg), "--out", str(out), "--work", str(work), "--resume"]
    (out / "command.txt").write_text("pcpo bench --the-first-command\n")
    for workers in ("1", "2"):
        argv = ["bench", *args, "--time-budget", "30m", "--workers", workers]
        monkeypatch.setattr("sys.argv", ["pcpo", *argv])  # as typed: the hint repeats this command, not the first
        assert main(argv) == 0
        log = capsys.readouterr().out
        assert "flowgrpo-clipped-s6: not started: expected 60 min, 30 min of the time budget left" in log
        assert f"time budget: 0 runs finished, 2 not started; rerun `pcpo {' '.join(argv)}` to go on" in log
        assert not (work / "runs").exists() or not any((work / "runs").iterdir())
    assert bench.main(args + ["--time-budget", "1h30m"]) == 0
    assert "not started" not in capsys.readouterr().out
    assert bench.summary_path(out, "flowgrpo", "pcpo", 6).is_file()
    # durations; a resumed run needs only the epochs after its newest checkpoint
    assert [bench.parse_duration(t) for t in ("2h30m", "90m", "1.5h", "45s", "1h 5s")] == [9000, 5400, 5400, 45, 3605]
    for bad in ("90", "2 hours", "", "h"):
        with pytest.raises(ValueError, match="--time-budget: .* is not a duration"):
            bench.parse_duration(bad)
    rd = tmp_path / "rd"
    for e in (5, 10):
        (rd / "checkpoints" / f"epoch-{e:06d}").mkdir(parents=True)
    (rd / "checkpoints" / "epoch-000015.tmp").mkdir()
    assert bench._checkpoint_epoch(rd) == 10 and bench._checkpoint_epoch(tmp_path / "none") == 0
    assert bench.main(["--config", str(cfg), "--out", str(tmp_path / "o2"), "--time-budget", "soon"]) == 2
    assert capsys.readouterr().err.strip().endswith("use e.g. 2h30m, 90m or 1.5h")


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_stops_parallel_runs_with_checkpoints_and_one_line(tmp_path, signame, code):
    """A signal to `pcpo bench --workers 2` reaches each run once: both checkpoint the epoch they were in, no new
    run starts, no worker outlives the matrix, and one stderr line names the runs and the command to go on."""
    import signal
    import uuid

    cfg = _micro_arms_bench(tmp_path)
    spec = yaml.safe_load(cfg.read_text())
    spec["imports"] = ["micro:register"]  # the micro families, in the matrix's process and its workers
    cfg.write_text(yaml.safe_dump(spec))
    out, work = tmp_path / "out", tmp_path / "work"
    mark = uuid.uuid4().hex
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PCPO_TEST_MARK": mark, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "pcpo.cli", "bench", "--config", str(cfg), "--out", str(out), "--work", str(work),
           "--workers", "2", "--epochs", "400", "--set", "threads=1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [work / "runs" / n for n in ("flowgrpo-clipped-s5", "flowgrpo-pcpo-s5")]
    deadline = time.time() + 120
    while time.time() < deadline and not all((r / "metrics.jsonl").is_file() and
                                             len((r / "metrics.jsonl").read_text().splitlines()) >= 3 for r in runs):
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))  # the matrix's process only, as `kill PID` or a scheduler would
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"pcpo bench: stopped by {signame} (flowgrpo-clipped-s5 saved at epoch ")
    assert "flowgrpo-pcpo-s5 saved at epoch " in lines[0] and "; continue with `" in lines[0]
    for r in runs:  # each run saved the last epoch it logged
        last = json.loads((r / "metrics.jsonl").read_text().splitlines()[-1])["epoch"]
        assert 2 <= last < 400 and f"saved at epoch {last}" in lines[0]
        assert (r / "checkpoints" / f"epoch-{last:06d}").is_dir() and (r / "bench_wall.json").is_file()
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["flowgrpo-clipped-s5", "flowgrpo-pcpo-s5"]
    alive = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in env_file.read_bytes():
                alive.append(env_file.parent.name)
        except OSError:
            pass
    assert not alive, f"bench workers still alive: {alive}"


def test_the_guides_bench_file_is_valid(tmp_path):
    """docs/benchmarking.md's example bench file loads, and means what the guide says about it."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "benchmarking.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "guide.yaml"
    path.write_text(block)
    spec = bench.load_bench_spec(str(path))
    assert spec.seeds_for("flowgrpo", "grpo-guard") == list(range(1000, 1012))
    assert spec.seeds_for("dancegrpo", "pcpo") == list(range(1000, 1024))
    assert ("dancegrpo", "grpo-guard", 1000) not in spec.cells() and ("flowgrpo", "grpo-guard", 1011) in spec.cells()
    assert spec.arm("grpo-guard").objective == "clipped" and spec.arm("pcpo").objective == "pcpo"
    assert "pcpo-vs-clipped" in spec.primary_comparisons()
    for fw in ("dancegrpo", "flowgrpo"):  # every cell's config resolves, with the arm's overrides last
        cfg_name, ov = bench.run_overrides(spec, fw, "pcpo", 1000)
        assert cfg_name == f"{fw}-pcpo" and ov[-2:] == ["seed=1000", "epochs=30"]


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_commit_commits_each_summary_and_nothing_else(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(k, "bench test")
    for k in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(k, "bench@example.invalid")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "commit.gpgsign", "false")
    (repo / "other.txt").write_text("staged by someone else\n")
    _git(repo, "add", "other.txt")
    cfg = _micro_arms_bench(tmp_path)
    args = ["--config", str(cfg), "--work", str(tmp_path / "work"), "--arms", "pcpo", "--commit"]
    assert bench.main(args + ["--out", str(repo / "bench")]) == 0
    log = _git(repo, "log", "--format=%s", "--name-only").split()
    assert log.count("bench/summaries/flowgrpo/pcpo/5.json") == 1 and log.count("bench/summaries/flowgrpo/pcpo/6.json") == 1
    assert _git(repo, "rev-list", "--count", "HEAD").strip() == "2"
    files = [f for f in _git(repo, "log", "--format=", "--name-only").split() if f]
    assert sorted(files) == ["bench/summaries/flowgrpo/pcpo/5.json", "bench/summaries/flowgrpo/pcpo/6.json"]
    assert _git(repo, "diff", "--cached", "--name-only").split() == ["other.txt"]  # still staged, not committed
    assert _git(repo, "show", "HEAD:bench/summaries/flowgrpo/pcpo/6.json") == \
        bench.summary_path(repo / "bench", "flowgrpo", "pcpo", 6).read_text()
    # a finished summary written but not committed (the command stopped in between): --resume commits it
    clipped = ["--config", str(cfg), "--work", str(tmp_path / "work"), "--arms", "clipped", "--out", str(repo / "bench")]
    assert bench.main(clipped + ["--resume"]) == 0  # without --commit: written, not committed
    assert bench.main(clipped + ["--resume", "--commit"]) == 0
    out = capsys.readouterr().out
    assert out.count("(written earlier, not committed then)") == 2
    files = [f for f in _git(repo, "log", "--format=", "--name-only").split() if f]
    assert sorted(files) == [f"bench/summaries/flowgrpo/{a}/{sd}.json" for a in ("clipped", "pcpo") for sd in (5, 6)]
    assert _git(repo, "diff", "--cached", "--name-only").split() == ["other.txt"]
    assert bench.main(clipped + ["--resume", "--commit"]) == 0  # nothing left to commit: no new commit
    assert _git(repo, "rev-list", "--count", "HEAD").strip() == "4"
    capsys.readouterr()
    assert bench.main(args + ["--out", str(tmp_path / "nogit")]) == 2
    assert "not inside a git work tree" in capsys.readouterr().err


def _git_identity(monkeypatch, tmp_path):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(k, "bench test")
    for k in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(k, "bench@example.invalid")


def _commit(repo, msg, *files):
    _git(repo, "add", "--", *files)
    _git(repo, "commit", "-q", "-m", msg, "--", *files)
    return _git(repo, "rev-parse", "HEAD").strip()


def test_provenance_reads_the_registration_and_amendments_from_git(tmp_path, monkeypatch, capsys):
    """The report's provenance: the protocol's last commit before the first result is the registration, earlier
    ones are drafts, later ones amendments with the summaries already committed when they landed."""
    from pcpo.eval.provenance import protocol_provenance

    _git_identity(monkeypatch, tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "commit.gpgsign", "false")
    proto = repo / "PROTOCOL.md"
    out = repo / "bench"
    cfg = _synthetic_bench(tmp_path)
    spec = bench.load_bench_spec(str(cfg))
    out.mkdir()
    (out / "bench.json").write_text(json.dumps(bench.spec_dict(spec)))

    def summary(fw, arm, seed):
        path = bench.summary_path(out, fw, arm, seed)
        bench.write_summary(path, _synthetic_summary(fw, arm, seed, 0.01, 1.0))
        return str(path.relative_to(repo))

    proto.write_text("draft\n")
    _commit(repo, "protocol draft", "PROTOCOL.md")
    proto.write_text("final\n")
    registered = _commit(repo, "protocol registered", "PROTOCOL.md", "bench/bench.json")
    first = summary("flowgrpo", "clipped", 10)
    _commit(repo, "result 1", first)
    proto.write_text("final\n\namendment 1\n")
    amended = _commit(repo, "amendment 1", "PROTOCOL.md")
    second = summary("ddpo", "pcpo", 10)
    _commit(repo, "result 2", second)
    loose = summary("ddpo", "clipped", 10)  # written, not committed
    # an arm added to the bench file after results: its comparison is exploratory, the registered ones are not
    late = json.loads((out / "bench.json").read_text())
    late["arms"]["late"] = {"objective": "log_hinge", "frameworks": ["flowgrpo"]}
    (out / "bench.json").write_text(json.dumps(late))
    late_commit = _commit(repo, "late arm", "bench/bench.json")
    late_summary = summary("flowgrpo", "late", 10)
    _commit(repo, "result 3", late_summary)
    p = protocol_provenance(out, [proto, out / "bench.json"])
    assert p["registered"]["commit"] == registered and p["drafts"] == 1 and p["ok"]
    assert [(a["commit"], a["summaries_before"]) for a in p["amendments"]] == [
        (amended, {"flowgrpo": 1}), (late_commit, {"ddpo": 1, "flowgrpo": 1})]
    assert p["summaries"] == 4 and p["committed_after_registration"] == 3
    assert p["committed_before_registration"] == [] and p["uncommitted"] == [loose]
    comps = bench.registered_comparisons(p["registered_files"])
    assert list(p["registered_files"]) == ["bench/bench.json"] and "flowgrpo/pcpo-vs-clipped" in comps
    assert not any("late" in c for c in comps)
    assert bench.registered_comparisons({"PROTOCOL.json": "[1, 2]"}) is None  # not a bench file
    # through the CLI: the report's Provenance section
    assert bench.main(["--report-only", "--out", str(out), "--protocol", f"{proto},{out / 'bench.json'}"]) == 0
    md = (out / "results.md").read_text()
    assert f"as registered: {registered[:7]}" in md and "(1 earlier draft commits)" in md
    assert f"| {amended[:7]} |" in md and "| flowgrpo 1 | amendment 1 |" in md
    assert f"not committed: `{loose}`" in md
    res = json.loads((out / "results.json").read_text())
    assert res["provenance"]["ok"] is True
    assert res["comparisons"]["flowgrpo/late-vs-clipped"]["exploratory"] is True
    assert res["comparisons"]["ddpo/pcpo-vs-clipped"]["exploratory"] is False
    row = next(ln for ln in md.splitlines() if ln.startswith("| flowgrpo/late-vs-clipped |"))
    assert "| exploratory (not in the registered protocol): interim, 1 of 5 seeds: " in row
    # a protocol written after the first result is no pre-registration
    repo2 = tmp_path / "late"
    repo2.mkdir()
    _git(repo2, "init", "-q")
    _git(repo2, "config", "commit.gpgsign", "false")
    out2 = repo2 / "bench"
    path = bench.summary_path(out2, "flowgrpo", "pcpo", 1)
    bench.write_summary(path, _synthetic_summary("flowgrpo", "pcpo", 1, 0.01, 1.0))
    _commit(repo2, "result first", str(path.relative_to(repo2)))
    (repo2 / "PROTOCOL.md").write_text("written afterwards\n")
    _commit(repo2, "protocol later", "PROTOCOL.md")
    late = protocol_provenance(out2, [repo2 / "PROTOCOL.md"])
    assert late["registered"] is None and not late["ok"] and len(late["amendments"]) == 1
    from pcpo.eval.provenance import provenance_markdown

    assert "it is not a pre-registration" in "\n".join(provenance_markdown(late))
    # bad input: one line naming --protocol, before anything is read
    capsys.readouterr()
    assert bench.main(["--report-only", "--out", str(out), "--protocol", str(repo / "MISSING.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--protocol" in err and "MISSING.md does not exist" in err and len(err.splitlines()) == 1
    (repo / "NEW.md").write_text("never committed\n")
    with pytest.raises(ValueError, match="has no commit yet"):
        protocol_provenance(out, [repo / "NEW.md"])


# ---------------------------------------------------------------------------- power and the decisive bench file

def _power_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "power.py"
    spec = importlib.util.spec_from_file_location("bench_power", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seeds_for_half_width_matches_the_t_closed_form():
    # a half-width built from n0 seeds' t quantile is met first at n0: the half-width falls with n
    for n0 in (2, 5, 12, 40, 300):
        h = sps.t.ppf(0.975, n0 - 1) / math.sqrt(n0) * (1 + 1e-12)
        assert bstats.seeds_for_half_width(1.0, h) == n0
        assert bstats.t_half_width(1.0, n0) <= h < bstats.t_half_width(1.0, n0 - 1)
    # large n: the normal-quantile solution (z sd/h)^2 from below, within a few seeds
    n = bstats.seeds_for_half_width(10.0, 1.0)
    z = sps.norm.ppf(0.975)
    assert math.ceil((z * 10) ** 2) <= n <= math.ceil((z * 10) ** 2) + 3
    assert bstats.seeds_for_half_width(1.0, 0.0) is None and bstats.seeds_for_half_width(0.0, 1.0) == 2


def test_power_table_from_synthetic_paired_differences(tmp_path):
    power = _power_module()
    n0, sd = 20, 0.01
    h = sps.t.ppf(0.975, n0 - 1) * sd / math.sqrt(n0) * (1 + 1e-9)
    g = h / 0.3                                      # the wanted half-width is 30 % of the reference's gain
    u = np.array([-1.5, -0.5, 0.5, 1.5])
    d = 0.002 + sd * u / u.std(ddof=1)               # paired differences with sample sd exactly `sd`
    runs = []
    for k in range(4):
        runs += [{"framework": "flowgrpo", "objective": "clipped", "seed": k, "mean_gain": g, "time_per_epoch_s": 3.0},
                 {"framework": "flowgrpo", "objective": "log_hinge", "seed": k, "mean_gain": g, "time_per_epoch_s": 3.0},
                 {"framework": "flowgrpo", "objective": "pcpo", "seed": k, "mean_gain": g + d[k], "time_per_epoch_s": 3.0}]
    results = {"spec": {"frameworks": ["flowgrpo"], "set": ["data.prompts_per_epoch=1", "data.group_size=12"],
                        "framework_set": {}}, "runs": runs}
    rows = power.power_table(results, {"flowgrpo": []})   # decisive: the shipped 2 prompts x 24
    row = next(r for r in rows if r["comparison"] == "pcpo-vs-clipped")
    assert row["batch_old"] == [1, 12] and row["batch_new"] == [2, 48]
    assert row["sd"] == pytest.approx(sd) and row["ref_gain"] == pytest.approx(g)
    assert row["n"]["conservative"] == n0

    def loop(s):
        return next(n for n in range(2, 10**6) if sps.t.ppf(0.975, n - 1) * s / math.sqrt(n) <= h)

    assert row["n"]["prompts"] == loop(sd * math.sqrt(1 / 2))
    assert row["n"]["trajectories"] == loop(sd * math.sqrt(12 / 48)) < row["n"]["prompts"] < n0
    ucb = sd * math.sqrt(3 / sps.chi2.ppf(0.2, 3))   # one-sided 80 % upper bound of an sd from 4 values
    assert row["sd_scenarios"]["sd_ucb80"] == pytest.approx(ucb) and row["n"]["sd_ucb80"] == loop(ucb)
    # CPU cost: training linear in trajectories, evaluation priced per denoiser row
    bench_file = tmp_path / "b.yaml"
    bench_file.write_text(yaml.safe_dump({"frameworks": ["flowgrpo"], "seeds": 2, "epochs": 3, "target": 1.0,
                                          "set": ["eval.images_per_prompt=2", "eval.every=1"]}))
    cost = {"trajectories_per_epoch": 10, "sampler_steps": 10, "trained_pairs_per_epoch": 100,
            "batched": {"rollout_s": 1.0, "update_s": 2.0}}          # 0.01 s per row, 0.02 s per pair: k = 2
    c = power.cost_table(results, bench.load_bench_spec(str(bench_file)), cost)[0]
    unit = 3.0 / (12 * 10 + 2 * 12 * 9)                            # 9 of 10 Flow-GRPO steps trained
    run_s = 3 * (3.0 * 48 / 12) + (1 + 3) * unit * 8 * 2 * 10       # 3 epochs + 4 evaluations of 16 samples
    assert c["update_over_rollout_row"] == pytest.approx(2.0)
    assert c["runs"] == 6 and c["run_min"] == pytest.approx(run_s / 60)
    assert c["core_h"] == pytest.approx(6 * run_s / 3600)


def test_bench_arms_seeds_and_comparisons(tmp_path):
    assert bench.parse_seeds(3) == [0, 1, 2]
    assert bench.parse_seeds("1000-1003") == [1000, 1001, 1002, 1003]
    assert bench.parse_seeds([7, "10-11"]) == [7, 10, 11] and bench.parse_seeds("4,6-7") == [4, 6, 7]
    for bad in ("3-1", [1, 1], "x", 0, True):
        with pytest.raises(ValueError, match="seeds"):
            bench.parse_seeds(bad)

    def spec(**kw):
        p = tmp_path / "s.yaml"
        p.write_text(yaml.safe_dump({"target": 1.0, **kw}))
        return bench.load_bench_spec(str(p))

    s = spec(frameworks=["ddpo", "flowgrpo"], seeds={"ddpo": "0-2", "flowgrpo": [5]},
             framework_set={"ddpo": ["sampler.eta=0.9"]},
             arms={"clipped": {}, "pcpo": {},
                   "wstar": {"objective": "pcpo", "set": ["train.w_star=4.5"], "frameworks": ["ddpo"],
                             "vs": ["pcpo"], "seeds": "1-2",
                             "framework_set": {"ddpo": ["train.lr=1.0e-5"]}}})
    assert s.cells() == [("ddpo", "clipped", 0), ("ddpo", "pcpo", 0),
                         ("ddpo", "clipped", 1), ("ddpo", "pcpo", 1), ("ddpo", "wstar", 1),
                         ("ddpo", "clipped", 2), ("ddpo", "pcpo", 2), ("ddpo", "wstar", 2),
                         ("flowgrpo", "clipped", 5), ("flowgrpo", "pcpo", 5)]
    assert s.comparisons("ddpo") == [("pcpo", "clipped"), ("wstar", "pcpo")]
    assert s.comparisons("flowgrpo") == [("pcpo", "clipped")]
    name, ov = bench.run_overrides(s, "ddpo", "wstar", 2)
    assert name == "ddpo-pcpo"  # the objective's shipped config, then bench, framework and arm overrides
    assert ov == ["sampler.eta=0.9", "train.w_star=4.5", "train.lr=1.0e-5", "seed=2", "epochs=30"]
    # --arms / --objectives select arms by name
    s2 = bench.load_bench_spec(str(tmp_path / "s.yaml"), objectives=["wstar", "pcpo"])
    assert [a for a in s2.arm_specs()] == ["pcpo", "wstar"] and s2.comparisons("ddpo") == [("wstar", "pcpo")]
    for kw, msg in (({"arms": {"a-vs-b": {"objective": "pcpo"}}}, "without '-vs-'"),
                    ({"arms": {"x": {}}}, r"arms\.x\.objective: 'x' is not one of"),
                    ({"arms": {"x": {"objective": "pcpo", "sett": []}}}, "arms.x: unknown key 'sett'"),
                    ({"arms": {"x": {"objective": "pcpo", "set": ["train.lr"]}}}, "not KEY=VALUE"),
                    ({"arms": {"pcpo": {"vs": ["nope"]}}}, r"arms\.pcpo\.vs: unknown arm 'nope'"),
                    ({"arms": {"pcpo": {}}}, "baseline: 'clipped' is not an arm"),
                    ({"arms": {"clipped": {}}, "objectives": ["pcpo"]}, "either arms or objectives"),
                    ({"primary": ["pcpo-clipped"]}, "primary: 'pcpo-clipped'"),
                    ({"margin": 0}, "margin: must be > 0"),
                    ({"seeds": {"ddpo": 2}, "frameworks": ["ddpo", "flowgrpo"]}, "no seeds for framework 'flowgrpo'")):
        with pytest.raises(ValueError, match=msg):
            spec(**kw)


def test_decisive_bench_file_is_preregistrable():
    """The decisive matrix: >= 10 seeds per framework for the baseline and PCPO, none used before."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    s = bench.load_bench_spec(str(root / "bench-decisive.yaml"))
    old = bench.load_bench_spec(str(root / "bench-world.yaml"))
    used = {sd for fw in old.frameworks for sd in old.seeds_for(fw)} | {0}   # the matrix and its pilot (seed 0)
    for fw in ("ddpo", "dancegrpo", "flowgrpo"):
        for arm in ("clipped", "pcpo"):
            seeds = s.seeds_for(fw, arm)
            assert len(seeds) >= 10 and not set(seeds) & used, (fw, arm)
        assert ("pcpo", "clipped") in s.comparisons(fw)
    assert s.primary_comparisons() == ["pcpo-vs-clipped"] and s.margin == 0.3 and s.epochs >= 30
    assert ("pcpo-wstar", "pcpo") in s.comparisons("ddpo")
    assert {"grpo-guard", "tempflow", "fast-native", "fast-pcpo", "mix-native", "mix-pcpo"} <= set(s.arms_for("flowgrpo"))
    assert ("w_star=4.5" in " ".join(s.arm("pcpo-wstar").set))
    # the confirmed arms resolve to valid run configs today
    from pcpo.trainer.config import load_config

    for fw in s.frameworks:
        for arm in ("clipped", "log_hinge", "pcpo") + (("pcpo-wstar",) if fw == "ddpo" else ()):
            name, ov = bench.run_overrides(s, fw, arm, s.seeds_for(fw, arm)[0])
            cfg = load_config(name, ov)
            assert cfg.train.objective == s.arm(arm).objective and cfg.eval.every == 1
