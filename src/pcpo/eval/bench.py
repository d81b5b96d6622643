"""``pcpo bench``: the framework × objective × seed matrix, then speed, fidelity and clipping summaries.

Each cell is one ordinary training run (``RUN_DIR = OUT/runs/<framework>-<objective>-s<seed>``) of the
framework's shipped config (``ddpo``, ``ddpo-loghinge``, ``ddpo-pcpo``, ``dancegrpo``, ...), overridden only
in ``seed``, ``epochs`` and the run directory, plus the bench file's ``set`` list (documented in the
results). Runs execute in seed-major order (every cell of seed 0 first), so a benchmark cut short still has
complete seeds: one at a time in this process, or ``workers`` at once in spawned worker processes. Finished runs are skipped and partial ones resumed
with :meth:`Trainer.resume` when ``--resume`` is given; ``results.md``/``results.json`` and the plots are
rewritten after every run.

Measures (all over seeds, mean with a Student-t 95 % interval; speed-ups with a bootstrap interval):

* epochs to target: the first epoch whose ``metric`` (default: the held-out reward of the deterministic
  evaluation sampler, evaluated every epoch) reaches ``target``; runs that never reach it count as the
  epoch budget (a lower bound, flagged as censored);
* speed-up ``epochs(baseline)/epochs(PCPO) − 1`` per framework (baseline = clipped ratio);
* gold metrics (Fréchet distance, diversity, accuracy) at matched reward: from the evaluation record at
  the epoch where each run first reaches the target (final evaluation for censored runs);
* clip fraction per timestep over training (heat maps, mean over seeds) and native vs PCPO credit.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import figures
from . import stats

OBJECTIVES = ("clipped", "log_hinge", "pcpo")
FRAMEWORKS = ("ddpo", "dancegrpo", "flowgrpo")
FRAMEWORK_LABELS = {"ddpo": "DDPO (toy-ddpm)", "dancegrpo": "DanceGRPO (toy-flow)", "flowgrpo": "Flow-GRPO (toy-flow)"}

# Shipped config names tried per (framework, objective), first match wins.
_CONFIG_CANDIDATES = {
    "clipped": ("{fw}", "{fw}-clipped"),
    "log_hinge": ("{fw}-loghinge", "{fw}-log_hinge", "{fw}-log-hinge"),
    "pcpo": ("{fw}-pcpo",),
}

# Used only when a framework's shipped config is missing: the published sampler settings (method.md §6)
# on the embedded models, on top of the shipped default config.
FALLBACK_FRAMEWORKS = {
    "ddpo": ["model.family=toy-ddpm", "sampler.name=ddim", "sampler.steps=50", "sampler.eta=1.0",
             "train.timestep_selection=all_shuffled", "train.timestep_fraction=1.0",
             "train.advantage=per_prompt_tracker"],
    "dancegrpo": ["model.family=toy-flow", "sampler.name=dance-sde", "sampler.steps=16", "sampler.eta=0.3",
                  "sampler.shift=3.0", "sampler.shared_noise=true", "train.timestep_selection=drop_last_random",
                  "train.timestep_fraction=0.6", "train.advantage=group"],
    "flowgrpo": ["model.family=toy-flow", "sampler.name=flow-sde", "sampler.steps=10", "sampler.eta=0.7",
                 "sampler.shift=3.0", "train.timestep_selection=first_fraction", "train.timestep_fraction=0.99",
                 "train.advantage=prompt_mean_global_std"],
}


@dataclass
class BenchSpec:
    frameworks: list[str] = field(default_factory=lambda: list(FRAMEWORKS))
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    seeds: int = 3
    epochs: int = 30
    target: float | dict | None = None     # one number, or {framework: number}
    target_gain: float | None = None       # instead of target: the run's epoch-0 metric value + this gain
    metric: str = "eval_reward_mean"       # record key whose curve defines "reached the target"
    smooth: int = 1                        # trailing mean over this many measurements
    set: list[str] = field(default_factory=list)            # overrides for every run
    framework_set: dict = field(default_factory=dict)       # {framework: [overrides]}
    configs: dict = field(default_factory=dict)             # {framework: {objective: config name or path}}
    notes: str = ""
    sensitivity: list = field(default_factory=list)         # extra target gains reported as a secondary table
    workers: int = 1                                        # runs trained at once, each in its own process
    imports: list = field(default_factory=list)             # "module" or "module:function", run in every run's
                                                            # process first (registers custom models/rewards)

    def target_for(self, fw: str) -> float | None:
        if isinstance(self.target, dict):
            v = self.target.get(fw)
            return None if v is None else float(v)
        return None if self.target is None else float(self.target)


def load_bench_spec(path: str | None, **cli) -> BenchSpec:
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"--config: bench file {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"--config: {p} must be a mapping of bench settings")
    known = set(BenchSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config: unknown bench key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    for k, v in cli.items():
        if v is not None:
            data[k] = v
    spec = BenchSpec(**data)
    for fw in spec.frameworks:
        if fw not in FRAMEWORKS and fw not in spec.configs:
            raise ValueError(f"--frameworks: unknown framework {fw!r}; use {', '.join(FRAMEWORKS)} "
                             "(or give its configs in the bench file)")
    for obj in spec.objectives:
        if obj not in OBJECTIVES:
            raise ValueError(f"--objectives: unknown objective {obj!r}; use {', '.join(OBJECTIVES)}")
    if spec.seeds < 1:
        raise ValueError(f"--seeds: must be >= 1, got {spec.seeds}")
    if spec.epochs < 1:
        raise ValueError(f"--epochs: must be >= 1, got {spec.epochs}")
    if not isinstance(spec.workers, int) or spec.workers < 1:
        raise ValueError(f"--workers: must be an integer >= 1, got {spec.workers!r}")
    if not isinstance(spec.imports, list) or not all(isinstance(m, str) and m for m in spec.imports):
        raise ValueError("imports: give a list of 'module' or 'module:function' strings")
    _run_imports(spec.imports)
    if spec.target is None and spec.target_gain is None:
        raise ValueError("--target: give a target value (or target_gain in the bench file)")
    if spec.target is not None and spec.target_gain is not None:
        raise ValueError("target_gain: give either target or target_gain in the bench file, not both")
    return spec


def run_overrides(spec: BenchSpec, fw: str, obj: str, seed: int) -> tuple[str | None, list[str]]:
    """(config name or path, overrides) of one cell."""
    from ..trainer.config import ConfigError, resolve_config_path

    cfg_name = (spec.configs.get(fw) or {}).get(obj)
    overrides: list[str] = []
    if cfg_name is None:
        for cand in _CONFIG_CANDIDATES[obj]:
            try:
                resolve_config_path(cand.format(fw=fw))
                cfg_name = cand.format(fw=fw)
                break
            except ConfigError:
                continue
    if cfg_name is None:  # no shipped config yet: the published settings on the default config
        if fw not in FALLBACK_FRAMEWORKS:
            raise ValueError(f"bench: no config for {fw}/{obj}; add it under `configs:` in the bench file")
        overrides += FALLBACK_FRAMEWORKS[fw] + [f"train.objective={obj}"]
    overrides += list(spec.set) + list(spec.framework_set.get(fw, []))
    overrides += [f"seed={seed}", f"epochs={spec.epochs}"]
    return cfg_name, overrides


def run_name(fw: str, obj: str, seed: int) -> str:
    return f"{fw}-{obj}-s{seed}"


def _finished(run_dir: Path, epochs: int) -> bool:
    if not (run_dir / "final").is_dir():
        return False
    from .report import read_records

    recs = read_records(run_dir)
    return bool(recs) and max(r.get("epoch", 0) for r in recs) >= epochs


def run_matrix(spec: BenchSpec, out: Path, resume: bool = False, log=print) -> None:
    from ..trainer.config import load_config

    runs_dir = out / "runs"
    existing = [p for p in runs_dir.iterdir() if p.is_dir()] if runs_dir.is_dir() else []
    if existing and not resume:
        raise ValueError(f"--out: {out} already holds {len(existing)} runs; add --resume to skip finished runs "
                         "and continue partial ones, or choose another --out")
    runs_dir.mkdir(parents=True, exist_ok=True)
    cells = [(fw, obj, seed) for seed in range(spec.seeds) for fw in spec.frameworks for obj in spec.objectives]
    # validate every cell before spending time on any
    plans = []
    for fw, obj, seed in cells:
        cfg_name, ov = run_overrides(spec, fw, obj, seed)
        cfg = load_config(cfg_name, ov)
        if cfg.train.objective != obj:
            raise ValueError(f"bench: config {cfg_name!r} for {fw}/{obj} has train.objective={cfg.train.objective!r}")
        plans.append((fw, obj, seed, cfg_name, ov, cfg))
    todo = []
    for k, (fw, obj, seed, cfg_name, ov, _cfg) in enumerate(plans):
        rd = runs_dir / run_name(fw, obj, seed)
        tag = f"[{k + 1}/{len(plans)}] {rd.name}"
        if _finished(rd, spec.epochs):
            log(f"{tag}: finished, skipped")
        else:
            todo.append((tag, cfg_name, ov, rd))
    last_aggregate = [time.time()]

    def after_run(tag: str) -> None:
        if time.time() - last_aggregate[0] > 60:  # partial results of a long benchmark, at most once a minute
            last_aggregate[0] = time.time()
            try:
                aggregate(spec, out)
            except Exception as e:  # noqa: BLE001 - a plotting hiccup must not stop the matrix
                log(f"{tag}: aggregation failed ({type(e).__name__}: {e}); continuing")

    if spec.workers == 1:
        for tag, cfg_name, ov, rd in todo:
            log(f"{tag}: " + ("resuming" if (rd / "config.yaml").is_file()
                              else f"config {cfg_name or 'default (+ published settings)'}"))
            log(f"{tag}: done in {_train_cell(cfg_name, ov, str(rd), spec.epochs, tuple(spec.imports)):.0f}s")
            after_run(tag)
        return
    # several runs at once, one process each (spawned: no forked torch/OpenMP state); a failed run stops
    # the matrix after the runs in flight finish, and --resume continues it
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    log(f"{len(todo)} runs on {spec.workers} workers (set threads=1 in the runs' overrides on a small CPU)")
    with ProcessPoolExecutor(max_workers=spec.workers, mp_context=mp.get_context("spawn")) as pool:
        pending = {}
        queue = list(todo)
        failed = None
        while queue or pending:
            while queue and len(pending) < spec.workers and failed is None:
                tag, cfg_name, ov, rd = queue.pop(0)
                log(f"{tag}: started" + (" (resuming)" if (rd / "config.yaml").is_file() else ""))
                pending[pool.submit(_train_cell, cfg_name, ov, str(rd), spec.epochs, tuple(spec.imports))] = tag
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                tag = pending.pop(fut)
                try:
                    log(f"{tag}: done in {fut.result():.0f}s")
                except Exception as e:  # noqa: BLE001 - reported, then re-raised once the pool drains
                    log(f"{tag}: failed ({type(e).__name__}: {e})")
                    failed = failed or e
                after_run(tag)
        if failed is not None:
            raise failed


def _run_imports(imports: list[str]) -> None:
    """Import each ``module`` (calling ``function`` for ``module:function``): custom model families and rewards."""
    import importlib

    for item in imports:
        module, _, func = item.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"imports: cannot import {module!r} ({e}); put it on PYTHONPATH") from None
        if func:
            fn = getattr(mod, func, None)
            if not callable(fn):
                raise ValueError(f"imports: {module!r} has no function {func!r}")
            fn()


def _train_cell(
    cfg_name: str | None, overrides: list[str], run_dir: str, epochs: int, imports: tuple = ()
) -> float:
    """Train (or resume) one cell of the matrix; returns the wall time. Top-level so worker processes can run it."""
    from ..trainer.config import load_config
    from ..trainer.trainer import Trainer

    _run_imports(list(imports))
    t0 = time.time()
    rd = Path(run_dir)
    if (rd / "config.yaml").is_file():
        trainer = Trainer.resume(rd, overrides=[f"epochs={epochs}"])
    else:
        trainer = Trainer(load_config(cfg_name, overrides), rd)
    trainer.train()
    return time.time() - t0


# ---------------------------------------------------------------------------- aggregation

def _curve(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [e for e, _ in pts], [float(v) for _, v in pts]


def summarize_run(run_dir: Path, spec: BenchSpec, fw: str) -> dict:
    from .report import read_records

    recs = read_records(run_dir)
    target = spec.target_for(fw)
    e, v = _curve(recs, spec.metric)
    if spec.target_gain is not None and v:
        target = v[0] + float(spec.target_gain)
    ett = stats.epochs_to_target(e, v, target, smooth=spec.smooth) if target is not None else None
    evals = [r for r in recs if "eval_reward_mean" in r]
    matched = None
    if evals:
        if ett is not None:
            after = [r for r in evals if r["epoch"] >= ett]
            matched = after[0] if after else evals[-1]
        else:
            matched = evals[-1]
    gold_keys = lambda r: {k: r[k] for k in r if k.startswith("gold_") or k == "eval_reward_mean"}  # noqa: E731
    train = [r for r in recs if "reward_mean" in r and r.get("epoch", 0) > 0]
    times = [r["time_s"] for r in train if isinstance(r.get("time_s"), (int, float))]
    last_epoch = max((r.get("epoch", 0) for r in recs), default=0)
    ev = [r["eval_reward_mean"] for r in evals]
    gain = (sum(ev[1:]) / len(ev[1:]) - ev[0]) if len(ev) > 1 else None  # mean gain over the run (an AUC)
    return {
        "mean_gain": gain,
        "run_dir": str(run_dir), "epochs_done": last_epoch, "epochs_to_target": ett, "target": target,
        "censored": ett is None, "matched_epoch": matched["epoch"] if matched else None,
        "matched": gold_keys(matched) if matched else {},
        "initial": gold_keys(evals[0]) if evals else {},
        "final": gold_keys(evals[-1]) if evals else {},
        "final_train_reward": train[-1]["reward_mean"] if train else None,
        "time_per_epoch_s": sum(times) / len(times) if times else None,
        "clipfrac_mean": (sum(r["clipfrac"] for r in train if isinstance(r.get("clipfrac"), (int, float)))
                          / max(1, len(train))),
        "zero_grad_frac_mean": _mean_key(train, "zero_grad_frac"),
    }


def _mean_key(records: list[dict], key: str) -> float | None:
    xs = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return sum(xs) / len(xs) if xs else None


def aggregate(spec: BenchSpec, out: Path, command: str | None = None) -> dict:
    """Read every run of the matrix, write results.json, results.md and the plots; return the summary."""
    import numpy as np

    from .report import read_records

    out = Path(out)
    runs_dir = out / "runs"
    results: dict = {"spec": {k: getattr(spec, k) for k in spec.__dataclass_fields__},
                     "command": command or _read_command(out), "runs": [], "summary": {}}
    curves: dict = {}
    train_curves: dict = {}
    clip_mats: dict = {}
    zg_mats: dict = {}
    credit_tables: dict = {}
    for fw in spec.frameworks:
        results["summary"][fw] = {}
        curves[fw], train_curves[fw], clip_mats[fw], zg_mats[fw] = {}, {}, {}, {}
        for obj in spec.objectives:
            per_seed = []
            ev_rows, tr_rows, mats, zmats = [], [], [], []
            ev_epochs = tr_epochs = None
            for seed in range(spec.seeds):
                rd = runs_dir / run_name(fw, obj, seed)
                if not (rd / "metrics.jsonl").is_file():
                    continue
                s = summarize_run(rd, spec, fw)
                if s["epochs_done"] < spec.epochs:  # still running or cut short: curves only
                    s["incomplete"] = True
                s.update(framework=fw, objective=obj, seed=seed)
                results["runs"].append(s)
                recs = read_records(rd)
                e, v = _curve(recs, "eval_reward_mean")
                if e and (ev_epochs is None or e == ev_epochs):
                    ev_epochs = e
                    ev_rows.append(v)
                e, v = _curve(recs, "reward_mean")
                if e and (tr_epochs is None or e == tr_epochs):
                    tr_epochs = e
                    tr_rows.append(v)
                trained = [r for r in recs if r.get("epoch", 0) > 0]
                for key, acc in (("clipfrac_per_step", mats), ("zero_grad_frac_per_step", zmats)):
                    ep, mat = figures.step_matrix(trained, key)
                    if mat.size:
                        acc.append((ep, mat))
                if fw not in credit_tables and (rd / "credit.json").is_file():
                    credit_tables[fw] = json.loads((rd / "credit.json").read_text())
                if not s.get("incomplete"):
                    per_seed.append(s)
            if ev_rows:
                curves[fw][obj] = (ev_epochs, np.array(ev_rows))
            if tr_rows:
                train_curves[fw][obj] = (tr_epochs, np.array(tr_rows))
            for acc, target_mats in ((mats, clip_mats), (zmats, zg_mats)):
                if acc:
                    import warnings

                    n = min(m.shape[0] for _, m in acc)
                    with warnings.catch_warnings():  # untrained steps are NaN in every seed
                        warnings.simplefilter("ignore", RuntimeWarning)
                        target_mats[fw][obj] = (acc[0][0][:n], np.nanmean(np.stack([m[:n] for _, m in acc]), axis=0))
            if per_seed:
                vals, n_cens = stats.censored([s["epochs_to_target"] for s in per_seed], spec.epochs)
                m, lo, hi = stats.t_interval(vals)
                gold = {}
                for k in sorted({k for s in per_seed for k in s["matched"]}):
                    xs = [s["matched"][k] for s in per_seed if isinstance(s["matched"].get(k), (int, float))]
                    if xs:
                        gold[k] = stats.t_interval(xs)
                finals = [s["final"].get("eval_reward_mean") for s in per_seed if s["final"].get("eval_reward_mean") is not None]
                gains = [s["mean_gain"] for s in per_seed if s["mean_gain"] is not None]
                results["summary"][fw][obj] = {
                    "n": len(per_seed), "epochs_to_target": vals, "censored": n_cens,
                    "ett_mean": m, "ett_ci": [lo, hi], "matched": gold,
                    "final_eval_reward": stats.t_interval(finals) if finals else None,
                    "mean_gain": stats.t_interval(gains) if gains else None,
                    "time_per_epoch_s": float(np.mean([s["time_per_epoch_s"] or np.nan for s in per_seed])),
                    "clipfrac_mean": float(np.mean([s["clipfrac_mean"] for s in per_seed])),
                    "zero_grad_frac_mean": (float(np.mean(zg)) if (zg := [s["zero_grad_frac_mean"] for s in per_seed
                                                                          if s.get("zero_grad_frac_mean") is not None])
                                            else None),
                }
        summ = results["summary"][fw]
        for base in ("clipped", "log_hinge"):
            if base in summ and "pcpo" in summ:
                both_censored = (summ[base]["censored"] == summ[base]["n"] and summ["pcpo"]["censored"] == summ["pcpo"]["n"])
                results["summary"][fw][f"speedup_pcpo_vs_{base}"] = None if both_censored else stats.speedup_interval(
                    summ[base]["epochs_to_target"], summ["pcpo"]["epochs_to_target"])
    results["paired"] = _paired(spec, results["runs"])
    if spec.sensitivity:
        results["sensitivity"] = _sensitivity(spec, runs_dir)
    # plots
    plots = {}
    if any(curves.values()):
        t = spec.target if not isinstance(spec.target, dict) else None
        fig = figures.fig_bench_curves({FRAMEWORK_LABELS.get(k, k): v for k, v in curves.items() if v},
                                       "held-out reward (ODE / DDIM η=0)", target=t)
        (out / "reward_curves.png").write_bytes(figures.to_png(fig, dpi=80))
        plots["reward_curves"] = "reward_curves.png"
    if any(train_curves.values()):
        fig = figures.fig_bench_curves({FRAMEWORK_LABELS.get(k, k): v for k, v in train_curves.items() if v},
                                       "training reward (SDE rollouts)")
        (out / "train_reward_curves.png").write_bytes(figures.to_png(fig, dpi=80))
        plots["train_reward_curves"] = "train_reward_curves.png"
    if any(clip_mats.values()):
        fig = figures.fig_bench_heatmaps({k: v for k, v in clip_mats.items() if v},
                                         "clip fraction per sampling step (mean over seeds)", "clip fraction")
        (out / "clipfrac_heatmaps.png").write_bytes(figures.to_png(fig, dpi=70))
        plots["clipfrac_heatmaps"] = "clipfrac_heatmaps.png"
        fig = figures.fig_bench_step_profile({FRAMEWORK_LABELS.get(k, k): v for k, v in clip_mats.items() if v})
        (out / "clipfrac_per_step.png").write_bytes(figures.to_png(fig, dpi=80))
        plots["clipfrac_per_step"] = "clipfrac_per_step.png"
    if any(zg_mats.values()):
        fig = figures.fig_bench_heatmaps({k: v for k, v in zg_mats.items() if v},
                                         "zero-gradient fraction per sampling step (flat side of each loss; "
                                         "mean over seeds)", "zero-grad fraction")
        (out / "zero_grad_heatmaps.png").write_bytes(figures.to_png(fig, dpi=70))
        plots["zero_grad_heatmaps"] = "zero_grad_heatmaps.png"
        fig = figures.fig_bench_step_profile({FRAMEWORK_LABELS.get(k, k): v for k, v in zg_mats.items() if v},
                                             ylabel="zero-gradient fraction (mean over epochs and seeds)")
        (out / "zero_grad_per_step.png").write_bytes(figures.to_png(fig, dpi=80))
        plots["zero_grad_per_step"] = "zero_grad_per_step.png"
    if credit_tables:
        fig = figures.fig_bench_credit({FRAMEWORK_LABELS.get(k, k): v for k, v in credit_tables.items()})
        (out / "credit.png").write_bytes(figures.to_png(fig, dpi=80))
        plots["credit"] = "credit.png"
    results["plots"] = plots
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "results.md").write_text(results_markdown(results, spec))
    return results


def _paired(spec: BenchSpec, runs: list[dict]) -> dict:
    """Per-seed differences PCPO − baseline (same seed = same prompts, initial noise and evaluation noise).

    The seed decides which training prompts each epoch sees, which dominates the run-to-run spread at this
    batch size; pairing by seed removes it. Epochs: baseline − PCPO (positive = PCPO faster; censored runs
    count as the budget). Rewards: PCPO − baseline.
    """
    done = {(r["framework"], r["objective"], r["seed"]): r for r in runs if not r.get("incomplete")}
    out: dict = {}
    for fw in spec.frameworks:
        for base in ("clipped", "log_hinge"):
            seeds = [sd for sd in range(spec.seeds) if (fw, base, sd) in done and (fw, "pcpo", sd) in done]
            if not seeds:
                continue
            d_ett, d_gain, d_final = [], [], []
            for sd in seeds:
                b, p = done[(fw, base, sd)], done[(fw, "pcpo", sd)]
                eb = b["epochs_to_target"] if b["epochs_to_target"] is not None else spec.epochs
                ep = p["epochs_to_target"] if p["epochs_to_target"] is not None else spec.epochs
                d_ett.append(float(eb - ep))
                if b["mean_gain"] is not None and p["mean_gain"] is not None:
                    d_gain.append(p["mean_gain"] - b["mean_gain"])
                fb, fp = b["final"].get("eval_reward_mean"), p["final"].get("eval_reward_mean")
                if fb is not None and fp is not None:
                    d_final.append(fp - fb)
            out[f"{fw}/pcpo-vs-{base}"] = {
                "seeds": seeds,
                "epochs_saved": stats.t_interval(d_ett), "epochs_saved_per_seed": d_ett,
                "mean_gain_diff": stats.t_interval(d_gain), "mean_gain_diff_per_seed": d_gain,
                "final_reward_diff": stats.t_interval(d_final), "final_reward_diff_per_seed": d_final,
                "pcpo_better_gain": sum(x > 0 for x in d_gain),
            }
    return out


def _sensitivity(spec: BenchSpec, runs_dir: Path) -> dict:
    """Epochs to target and PCPO's speed-up for other target gains (secondary; the primary target is fixed)."""
    from .report import read_records

    out: dict = {}
    for gain in spec.sensitivity:
        key = f"{float(gain):g}"
        out[key] = {}
        for fw in spec.frameworks:
            ett: dict = {}
            for obj in spec.objectives:
                vals = []
                for seed in range(spec.seeds):
                    rd = runs_dir / run_name(fw, obj, seed)
                    recs = read_records(rd) if (rd / "metrics.jsonl").is_file() else []
                    if not recs or max(r.get("epoch", 0) for r in recs) < spec.epochs:
                        continue
                    e, v = _curve(recs, spec.metric)
                    vals.append(stats.epochs_to_target(e, v, v[0] + float(gain), smooth=spec.smooth))
                if vals:
                    ett[obj] = stats.censored(vals, spec.epochs)
            row = {obj: {"mean": sum(v) / len(v), "censored": c, "n": len(v)} for obj, (v, c) in ett.items()}
            if "clipped" in ett and "pcpo" in ett and (ett["clipped"][1] < len(ett["clipped"][0])
                                                       or ett["pcpo"][1] < len(ett["pcpo"][0])):
                row["speedup_pcpo_vs_clipped"] = stats.speedup_interval(ett["clipped"][0], ett["pcpo"][0])
            out[key][fw] = row
    return out


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def _read_command(out: Path) -> str | None:
    p = out / "command.txt"
    return p.read_text().strip() if p.is_file() else None


def _ci(t) -> str:
    if not t:
        return "–"
    m, lo, hi = t
    if any(isinstance(x, float) and not math.isfinite(x) for x in (m, lo, hi)):
        return "–"
    return f"{m:.3g} [{lo:.3g}, {hi:.3g}]"


def results_markdown(results: dict, spec: BenchSpec) -> str:
    lines = ["# pcpo bench results", ""]
    if results.get("command"):
        lines += ["Command:", "", "```", results["command"], "```", ""]
    tgt = spec.target if not isinstance(spec.target, dict) else ", ".join(f"{k}: {v}" for k, v in spec.target.items())
    if spec.target_gain is not None:
        tgt = f"its epoch-0 value + {spec.target_gain:g}"
    lines += [f"Matrix: {', '.join(spec.frameworks)} × {', '.join(spec.objectives)} × {spec.seeds} seeds, "
              f"{spec.epochs} epochs. Target: `{spec.metric}` ≥ {tgt}"
              + (f" (trailing mean of {spec.smooth})" if spec.smooth > 1 else "") + ".", ""]
    if spec.set:
        lines += ["Overrides applied to every run: " + ", ".join(f"`{s}`" for s in spec.set), ""]
    for fw, ov in spec.framework_set.items():
        lines += [f"Overrides for {fw}: " + ", ".join(f"`{s}`" for s in ov), ""]
    if spec.notes:
        lines += [spec.notes.strip(), ""]
    lines += ["## Epochs to target (mean [95 % t-interval] over seeds)", "",
              "| framework | objective | n | epochs to target | censored | final held-out reward | mean gain over run | s/epoch "
              "| mean clip frac | mean zero-grad frac |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for fw, summ in results["summary"].items():
        for obj in spec.objectives:
            s = summ.get(obj)
            if not s:
                continue
            lines.append(f"| {fw} | {obj} | {s['n']} | {_ci((s['ett_mean'], *s['ett_ci']))} | {s['censored']} | "
                         f"{_ci(s['final_eval_reward'])} | {_ci(s.get('mean_gain'))} | {s['time_per_epoch_s']:.1f} | "
                         f"{s['clipfrac_mean']:.3f} | "
                         + (f"{s['zero_grad_frac_mean']:.3f}" if s.get("zero_grad_frac_mean") is not None else "–")
                         + " |")
    lines += ["", "Clip frac: |ρ − 1| > ξ on either side for the clipped ratio (the baselines' `clipfrac`), the flat "
              "side for the hinges; zero-grad frac: pairs on the flat (no-gradient) side of their own loss, the "
              "like-for-like statistic across objectives.", "",
              "Censored runs never reached the target and count as the epoch budget (a lower bound). "
              "Mean gain over run: mean held-out reward over epochs 1..E minus the epoch-0 value (area under the "
              "learning curve; sensitive to speed even when the target is not reached).", "",
              "## Speed-up of PCPO (epochs(baseline)/epochs(PCPO) − 1, bootstrap 95 % interval)", "",
              "| framework | vs clipped | vs log-hinge |", "|---|---|---|"]
    for fw, summ in results["summary"].items():
        def sp(key, summ=summ):
            v = summ.get(key)
            if not v or not math.isfinite(v[0]):
                return "– (neither reached the target)" if key in summ else "–"
            return f"{100 * v[0]:+.1f} % [{100 * v[1]:+.1f}, {100 * v[2]:+.1f}]"
        lines.append(f"| {fw} | {sp('speedup_pcpo_vs_clipped')} | {sp('speedup_pcpo_vs_log_hinge')} |")
    shown = ("eval_reward_mean", "gold_fd_real", "gold_diversity", "gold_prompt_accuracy")  # the rest: results.json
    if results.get("paired"):
        lines += ["", "## Paired by seed (PCPO − baseline; a seed fixes the prompts and noise of every objective)", "",
                  "| comparison | seeds | epochs saved (baseline − PCPO) | Δ mean gain over run | Δ final held-out reward | "
                  "seeds with higher gain |", "|---|---|---|---|---|---|"]
        for name, p in results["paired"].items():
            per = ", ".join(f"{x:+.4f}" for x in p["mean_gain_diff_per_seed"])
            lines.append(f"| {name} | {len(p['seeds'])} | {_ci(p['epochs_saved'])} (per seed "
                         f"{', '.join(f'{x:+g}' for x in p['epochs_saved_per_seed'])}) | {_ci(p['mean_gain_diff'])} "
                         f"({per}) | {_ci(p['final_reward_diff'])} | {p['pcpo_better_gain']}/{len(p['mean_gain_diff_per_seed'])} |")
    gold_keys = [k for k in shown if any(k in s.get("matched", {}) for summ in results["summary"].values()
                                         for s in summ.values() if isinstance(s, dict))]
    if gold_keys:
        lines += ["", "## At matched reward (evaluation at the epoch each run first reached the target; "
                  "final evaluation if it never did)", "",
                  "| framework | objective | " + " | ".join(k.removeprefix("gold_") for k in gold_keys) + " |",
                  "|---|---|" + "---|" * len(gold_keys)]
        for fw, summ in results["summary"].items():
            for obj in spec.objectives:
                s = summ.get(obj)
                if s:
                    lines.append(f"| {fw} | {obj} | " + " | ".join(_ci(s["matched"].get(k)) for k in gold_keys) + " |")
    if results.get("sensitivity"):
        lines += ["", "## Sensitivity to the target (secondary; mean epochs over seeds, censored counted as the budget)",
                  "", "| target gain | framework | " + " | ".join(spec.objectives) + " | PCPO speed-up vs clipped |",
                  "|---|---|" + "---|" * len(spec.objectives) + "---|"]
        for gain, per_fw in results["sensitivity"].items():
            for fw, row in per_fw.items():
                cells = [f"{row[o]['mean']:.2f} ({row[o]['censored']} cens.)" if o in row else "–" for o in spec.objectives]
                sp = row.get("speedup_pcpo_vs_clipped")
                sp_s = "–" if not sp or not math.isfinite(sp[0]) else f"{100 * sp[0]:+.1f} % [{100 * sp[1]:+.1f}, {100 * sp[2]:+.1f}]"
                lines.append(f"| +{gain} | {fw} | " + " | ".join(cells) + f" | {sp_s} |")
    if results.get("plots"):
        lines += ["", "## Plots", ""]
        for name, path in results["plots"].items():
            lines += [f"![{name}]({path})", ""]
    lines += ["## Runs", "", "| run | epochs | epochs to target | matched epoch | s/epoch |", "|---|---|---|---|---|"]
    for r in results["runs"]:
        tpe = r.get("time_per_epoch_s")
        lines.append(f"| {Path(r['run_dir']).name} | {r['epochs_done']}{' (incomplete)' if r.get('incomplete') else ''} | "
                     f"{r['epochs_to_target'] if r['epochs_to_target'] is not None else 'never'} | "
                     f"{r['matched_epoch']} | {tpe:.1f} |" if tpe is not None else
                     f"| {Path(r['run_dir']).name} | {r['epochs_done']} | – | – | – |")
    return "\n".join(lines) + "\n"


def run_bench(args) -> int:
    spec = load_bench_spec(
        args.config, seeds=args.seeds, epochs=args.epochs,
        frameworks=args.frameworks.split(",") if args.frameworks else None,
        objectives=args.objectives.split(",") if args.objectives else None,
        target=args.target, metric=args.metric, workers=getattr(args, "workers", None),
    )
    if args.set:
        spec.set = list(spec.set) + list(args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "pcpo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    if cmd and "bench" in cmd and not (out / "command.txt").is_file():
        (out / "command.txt").write_text(cmd + "\n")
    if not args.aggregate_only:
        run_matrix(spec, out, resume=args.resume)
    res = aggregate(spec, out)
    _print_summary(res, spec)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}", flush=True)
    return 0


def _print_summary(res: dict, spec: BenchSpec) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="epochs to target (mean [95% CI])")
    for c in ("framework", "objective", "n", "epochs", "censored", "speed-up vs clipped"):
        t.add_column(c)
    for fw, summ in res["summary"].items():
        for obj in spec.objectives:
            s = summ.get(obj)
            if not s:
                continue
            sp = summ.get("speedup_pcpo_vs_clipped") if obj == "pcpo" else None
            sp = sp if sp and math.isfinite(sp[0]) else None
            t.add_row(fw, obj, str(s["n"]), _ci((s["ett_mean"], *s["ett_ci"])), str(s["censored"]),
                      f"{100 * sp[0]:+.1f}%" if sp else "")
    Console(width=110).print(t)
