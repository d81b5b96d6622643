"""``pcpo bench``: frameworks × arms × seeds, per-run summaries, and the paired, pre-registered report.

**Bench file** (YAML; every key optional except a target)::

    frameworks: [ddpo, dancegrpo, flowgrpo]
    seeds: 1000-1015                 # an int N (= 0..N-1), a list, "A-B", or {framework: any of these}
    epochs: 30
    target_gain: 0.02                # or target: 0.3 / {framework: value}
    set: [reward.name=color_match, ...]          # overrides of every run
    framework_set: {ddpo: [...]}                 # overrides of one framework's runs
    baseline: clipped                # the reference arm of the default comparisons
    arms:                            # an arm = an objective's shipped config + overrides
      clipped: {}                    # name = objective: the framework's shipped config (ddpo, ddpo-pcpo, ...)
      pcpo: {vs: [clipped, log_hinge]}
      wstar: {objective: pcpo, set: [train.w_star=4.5], frameworks: [ddpo], vs: [pcpo]}
    primary: [pcpo-vs-clipped]       # the comparisons of the primary family (Holm-adjusted p)
    margin: 0.3                      # relative margin δ (half-width criterion and "no difference" bound)

Arm keys: ``objective`` (default: the arm's name), ``set``, ``framework_set``, ``frameworks`` (default:
all), ``vs`` (reference arms; default ``[baseline]``, plus ``log_hinge`` for ``pcpo``), ``config`` (a
config name or ``{framework: name}`` instead of the shipped one), ``seeds`` (a subset of seeds), ``notes``.
Without ``arms`` the legacy ``objectives`` list defines one arm per objective.

**Layout.** A run trains in ``WORK/runs/<framework>-<arm>-s<seed>`` (``--work``, default ``--out``; not
committed). As soon as it finishes, its small summary — the overrides, the seed, every epoch's scalar
record (held-out and training rewards, times, model passes, zero-gradient and clip fractions, gold
metrics) with the per-step zero-gradient and clip fractions, and the credit table — is written to
``OUT/summaries/<framework>/<arm>/<seed>.json`` (with ``--commit`` it is also added and committed, that one
file only). ``--resume`` skips cells whose summary is finished and continues partial runs from their
checkpoints with :meth:`Trainer.resume`. Runs execute seed-major (all cells of a seed first), one at a time
or ``workers`` at once in spawned processes.

**Report** (``results.md``, ``results.json``, plots; rewritten during the matrix and at the end) is
computed from the summaries alone, so ``--report-only`` rebuilds every number from a committed ``OUT``:

* per arm: epochs to ``target`` (first epoch whose ``metric`` — the held-out reward of the deterministic
  sampler by default — reaches it; never-reached runs count as the budget, flagged censored), wall-clock
  and model passes to the target, the **mean gain over the run** ``G = (1/E) Σ_{e=1..E} (r_e − r_0)``
  (the area under the held-out gain curve, normalised by the epochs), gold metrics at matched reward
  (the first evaluation at or after the target epoch), zero-gradient and clip fractions;
* per comparison (arm − reference, paired by seed): the primary metric's mean difference with its 95 %
  t-interval, the paired t-test p (Holm-adjusted over the primary family), paired-bootstrap speed-ups in
  epochs, wall-clock and passes to the target, and the decision of :func:`stats.decide_difference` —
  "better/worse by X % [a, b]", "no difference larger than X %" or "undecided at this budget" — with the
  seeds (and compute) that would bring the half-width to ``margin`` × the reference's mean gain, from the
  observed sd of the differences.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import figures
from ..seeds import parse_seeds, seeds_arg
from ..trainer.config import _f, check_fields, from_dict, load_yaml
from . import stats
from .provenance import git_toplevel as _git_toplevel
from .provenance import run_git as _git

OBJECTIVES = ("clipped", "log_hinge", "pcpo")
FRAMEWORKS = ("ddpo", "dancegrpo", "flowgrpo")
FRAMEWORK_LABELS = {"ddpo": "DDPO (toy-ddpm)", "dancegrpo": "DanceGRPO (toy-flow)", "flowgrpo": "Flow-GRPO (toy-flow)"}
SUMMARY_SCHEMA = 1

# Shipped config names tried per (framework, objective), first match wins.
_CONFIG_CANDIDATES = {
    "clipped": ("{fw}", "{fw}-clipped"),
    "log_hinge": ("{fw}-loghinge", "{fw}-log_hinge", "{fw}-log-hinge"),
    "pcpo": ("{fw}-pcpo",),
}

# Used only when a framework's shipped config is missing: the published sampler settings (docs/method.md §6)
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

_ARM_KEYS = ("objective", "set", "framework_set", "frameworks", "vs", "config", "seeds", "notes")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+]*(?:-(?!vs-)[A-Za-z0-9_.+]+)*$")
_PER_STEP_KEYS = ("clipfrac_per_step", "zero_grad_frac_per_step")   # kept in summaries (heat maps)
_GOLD_SHOWN = ("eval_reward_mean", "gold_fd_real", "gold_fd_base", "gold_diversity", "gold_prompt_accuracy")


# ---------------------------------------------------------------------------- the bench file

SEEDS_HELP = "a count N (seeds 0..N-1), or a list and/or ranges of seeds: 0,3,7 or 10-14 or 0-2,9"


@dataclass
class Arm:
    """One arm of the matrix: an objective's shipped config (or ``config``) plus overrides."""

    name: str
    objective: str
    set: list[str] = field(default_factory=list)
    framework_set: dict = field(default_factory=dict)
    frameworks: list[str] | None = None
    vs: list[str] | None = None
    config: str | dict | None = None
    seeds: object = None
    notes: str = ""


@dataclass
class BenchSpec:
    """A bench file's settings: the same typed, help-carrying fields as a run config
    (:func:`pcpo.trainer.config.from_dict` checks keys and types, :func:`check_fields` the bounds)."""

    frameworks: list = _f(help="frameworks of the matrix (ddpo, dancegrpo, flowgrpo, or ones named in configs)",
                          factory=lambda: list(FRAMEWORKS))
    objectives: list = _f(help="legacy form: one arm per objective (give either arms or objectives)",
                          factory=lambda: list(OBJECTIVES))
    arms: dict = _f(help="{name: {objective, set, frameworks, vs, seeds, config, notes}}", factory=dict)
    baseline: str = _f("clipped", "reference arm of the default comparisons")
    primary: list = _f(help='comparisons "ARM-vs-REFERENCE" of the primary family', factory=list)
    margin: float = _f(0.3, "relative margin of the decision rule (a fraction of the reference's mean gain)")
    confidence: float = _f(0.95, "confidence level of the intervals, in (0, 1)")
    only: list | None = _f(None, "run / report only these arms")
    seeds: Any = _f(3, 'an integer count N (seeds 0..N-1), a list, "A-B", or {framework: any of these}')
    epochs: int = _f(30, "training epochs of every run")
    target: float | dict | None = _f(None, "reward target: one number, or {framework: number}")
    target_gain: float | None = _f(None, "instead of target: the run's epoch-0 metric value + this gain")
    metric: str = _f("eval_reward_mean", "record key whose curve defines reaching the target")
    smooth: int = _f(1, "trailing mean over this many measurements", ge=1)
    set: list = _f(help="overrides (KEY=VALUE) applied to every run", factory=list)
    framework_set: dict = _f(help="{framework: [overrides]}", factory=dict)
    configs: dict = _f(help="{framework: {arm or objective: config name or path}}", factory=dict)
    notes: str = _f("", "free text kept with the results")
    sensitivity: list = _f(help="extra target gains reported as a secondary table", factory=list)
    workers: int = _f(1, "runs trained at once, each in its own process")
    imports: list = _f(help='"module" or "module:function" run in every run\'s process first (registers custom '
                       "models or rewards)", factory=list)

    def target_for(self, fw: str) -> float | None:
        if isinstance(self.target, dict):
            v = self.target.get(fw)
            return None if v is None else float(v)
        return None if self.target is None else float(self.target)

    # ---- arms, seeds, cells, comparisons
    def arm_specs(self) -> dict[str, Arm]:
        """Every arm by name (filtered by ``only``), validated."""
        raw = self.arms or {obj: {} for obj in self.objectives}
        if not isinstance(raw, dict):
            raise ValueError("arms: give a mapping {arm name: {objective, set, frameworks, vs, ...}}")
        out: dict[str, Arm] = {}
        for name, a in raw.items():
            name = str(name)
            a = {} if a is None else a
            where = f"arms.{name}"
            if not _NAME.match(name):
                raise ValueError(f"{where}: arm names are letters, digits and _ . + -, without '-vs-'")
            if not isinstance(a, dict):
                raise ValueError(f"{where}: give a mapping of {', '.join(_ARM_KEYS)}")
            unknown = sorted(set(a) - set(_ARM_KEYS))
            if unknown:
                raise ValueError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(_ARM_KEYS)}")
            obj = a.get("objective", name)
            if obj not in OBJECTIVES:
                raise ValueError(f"{where}.objective: {obj!r} is not one of {', '.join(OBJECTIVES)}"
                                 + ("" if "objective" in a else " (name the arm's objective)"))
            for key in ("set", "frameworks", "vs"):
                v = a.get(key)
                if v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
                    raise ValueError(f"{where}.{key}: give a list of strings")
            for s in a.get("set") or []:
                if "=" not in s:
                    raise ValueError(f"{where}.set: {s!r} is not KEY=VALUE")
            fs = a.get("framework_set") or {}
            if not isinstance(fs, dict) or not all(isinstance(v, list) for v in fs.values()):
                raise ValueError(f"{where}.framework_set: give {{framework: [KEY=VALUE, ...]}}")
            if a.get("seeds") is not None:
                parse_seeds(a["seeds"], f"{where}.seeds")
            out[name] = Arm(name=name, objective=obj, set=list(a.get("set") or []), framework_set=dict(fs),
                            frameworks=a.get("frameworks"), vs=a.get("vs"), config=a.get("config"),
                            seeds=a.get("seeds"), notes=str(a.get("notes") or ""))
        if self.only:
            missing = [n for n in self.only if n not in out]
            if missing:
                raise ValueError(f"--arms: unknown arm {missing[0]!r}; the bench has {', '.join(out)}")
            out = {n: a for n, a in out.items() if n in self.only}
        return out

    def arm(self, name: str) -> Arm:
        arms = self.arm_specs()
        if name not in arms:
            if not self.arms and name in OBJECTIVES:  # a legacy objective outside --objectives
                return Arm(name=name, objective=name)
            raise ValueError(f"bench: unknown arm {name!r}; the bench has {', '.join(arms)}")
        return arms[name]

    def arms_for(self, fw: str) -> list[str]:
        return [n for n, a in self.arm_specs().items() if a.frameworks is None or fw in a.frameworks]

    def seeds_for(self, fw: str, arm: str | None = None) -> list[int]:
        s = self.seeds
        if isinstance(s, dict):
            if fw not in s:
                raise ValueError(f"seeds: no seeds for framework {fw!r} (give seeds.{fw})")
            s = s[fw]
        seeds = parse_seeds(s, f"seeds.{fw}" if isinstance(self.seeds, dict) else "seeds")
        a = self.arm_specs().get(arm) if arm is not None else None
        if a is not None and a.seeds is not None:
            own = parse_seeds(a.seeds, f"arms.{arm}.seeds")
            seeds = [x for x in seeds if x in own]
        return seeds

    def cells(self) -> list[tuple[str, str, int]]:
        """Every (framework, arm, seed), seed-major: a matrix cut short still has complete seeds."""
        per = {(fw, a): self.seeds_for(fw, a) for fw in self.frameworks for a in self.arms_for(fw)}
        order = sorted({s for v in per.values() for s in v})
        return [(fw, a, s) for s in order for fw in self.frameworks for a in self.arms_for(fw) if s in per[(fw, a)]]

    def comparisons(self, fw: str) -> list[tuple[str, str]]:
        """(arm, reference) pairs of one framework: each arm's ``vs`` list, both arms present."""
        present = self.arms_for(fw)
        arms = self.arm_specs()
        out = []
        for name in present:
            refs = arms[name].vs
            if refs is None:
                refs = [] if name == self.baseline else [self.baseline]
                if name == "pcpo" and "log_hinge" in present and self.baseline != "log_hinge":
                    refs = refs + ["log_hinge"]
            out += [(name, r) for r in refs if r in present and r != name]
        return out

    def primary_comparisons(self) -> list[str]:
        return list(self.primary) if self.primary else [f"pcpo-vs-{self.baseline}"]


def load_bench_spec(path: str | None, **cli) -> BenchSpec:
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"--config: bench file {p} does not exist")
        data = load_yaml(p.read_text(), str(p)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"--config: {p} must be a mapping of bench settings")
    known = set(BenchSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config: unknown bench key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    if data.get("arms") and "objectives" in data:
        raise ValueError("objectives: give either arms or objectives in the bench file, not both")
    for k, v in cli.items():
        if v is None:
            continue
        if k == "objectives" and data.get("arms"):  # with arms, --objectives / --arms select arms by name
            data["only"] = v
        else:
            data[k] = v
    spec = from_dict(BenchSpec, data)
    check_fields(spec)
    for fw in spec.frameworks:
        if fw not in FRAMEWORKS and fw not in spec.configs:
            raise ValueError(f"--frameworks: unknown framework {fw!r}; use {', '.join(FRAMEWORKS)} "
                             "(or give its configs in the bench file)")
    if not spec.arms:
        for obj in spec.objectives:
            if obj not in OBJECTIVES:
                raise ValueError(f"--objectives: unknown objective {obj!r}; use {', '.join(OBJECTIVES)}")
    arms = spec.arm_specs()
    full = from_dict(BenchSpec, {**data, "only": None}).arm_specs() if spec.only else arms
    for name, a in full.items():
        for fw in a.frameworks or []:
            if fw not in FRAMEWORKS and fw not in spec.configs:
                raise ValueError(f"arms.{name}.frameworks: unknown framework {fw!r}")
        for r in a.vs or []:
            if r not in full:
                raise ValueError(f"arms.{name}.vs: unknown arm {r!r}; the bench has {', '.join(full)}")
    if spec.arms and spec.baseline not in full:
        raise ValueError(f"baseline: {spec.baseline!r} is not an arm of the bench ({', '.join(full)})")
    for comp in spec.primary:
        a, sep, r = str(comp).partition("-vs-")
        if not sep or a not in full or r not in full:
            raise ValueError(f"primary: {comp!r} is not ARM-vs-REFERENCE with two arms of the bench")
    if not (isinstance(spec.margin, (int, float)) and spec.margin > 0):
        raise ValueError(f"margin: must be > 0 (a fraction of the reference's mean gain), got {spec.margin!r}")
    if not (isinstance(spec.confidence, float) and 0 < spec.confidence < 1):
        raise ValueError(f"confidence: must be in (0, 1), got {spec.confidence!r}")
    for fw in spec.frameworks:
        spec.seeds_for(fw)
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


def run_overrides(spec: BenchSpec, fw: str, arm: str, seed: int) -> tuple[str | None, list[str]]:
    """(config name or path, overrides) of one cell: the bench's, the framework's, then the arm's."""
    from ..trainer.config import ConfigError, resolve_config_path

    a = spec.arm(arm)
    cfg_name = a.config.get(fw) if isinstance(a.config, dict) else a.config
    per_fw = spec.configs.get(fw) or {}
    cfg_name = cfg_name or per_fw.get(arm) or per_fw.get(a.objective)
    overrides: list[str] = []
    if cfg_name is None:
        for cand in _CONFIG_CANDIDATES[a.objective]:
            try:
                resolve_config_path(cand.format(fw=fw))
                cfg_name = cand.format(fw=fw)
                break
            except ConfigError:
                continue
    if cfg_name is None:  # no shipped config yet: the published settings on the default config
        if fw not in FALLBACK_FRAMEWORKS:
            raise ValueError(f"bench: no config for {fw}/{arm}; add it under `configs:` in the bench file")
        overrides += FALLBACK_FRAMEWORKS[fw] + [f"train.objective={a.objective}"]
    overrides += list(spec.set) + list(spec.framework_set.get(fw, []))
    overrides += list(a.set) + list(a.framework_set.get(fw, []))
    overrides += [f"seed={seed}", f"epochs={spec.epochs}"]
    return cfg_name, overrides


def run_name(fw: str, arm: str, seed: int) -> str:
    return f"{fw}-{arm}-s{seed}"


def spec_dict(spec: BenchSpec) -> dict:
    """The bench settings as a bench file (``OUT/bench.json``) that :func:`load_bench_spec` reads back."""
    d = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    if spec.arms:
        d.pop("objectives")
    return d


def summary_path(out: Path, fw: str, arm: str, seed: int) -> Path:
    return Path(out) / "summaries" / fw / arm / f"{seed}.json"


def _finished(run_dir: Path, epochs: int) -> bool:
    if not (run_dir / "final").is_dir():
        return False
    from .report import read_records

    recs = read_records(run_dir)
    return bool(recs) and max(r.get("epoch", 0) for r in recs) >= epochs


# ---------------------------------------------------------------------------- per-run summaries

def _round(v):
    """Floats to 7 significant digits (NaN/inf to null): summaries stay small and valid JSON."""
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return float(f"{v:.7g}") if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return v


def build_summary(run_dir: Path, fw: str, arm: str, seed: int, cfg_name: str | None, overrides: list[str],
                  epochs: int, wall_s: float | None = None) -> dict:
    """The committed record of one run: everything the report needs, nothing it does not."""
    from .. import __version__
    from .report import read_records

    run_dir = Path(run_dir)
    cfg = {}
    if (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    data, sampler, train = cfg.get("data") or {}, cfg.get("sampler") or {}, cfg.get("train") or {}
    traj = (int(data["prompts_per_epoch"]) * int(data["group_size"])
            if "prompts_per_epoch" in data and "group_size" in data else None)
    steps = sampler.get("steps")
    kl = float(train.get("kl_beta") or 0.0) > 0
    records = []
    for r in read_records(run_dir):
        rec = {k: v for k, v in r.items()
               if isinstance(v, (int, float, bool)) or v is None or k in _PER_STEP_KEYS}
        # model passes of the epoch, in denoiser rows (sample x step; CFG counted once, equal across arms):
        # the rollout's trajectories x steps, plus the trained pairs (twice with a KL reference)
        if "passes" not in rec and isinstance(r.get("trained_pairs"), (int, float)) and traj and steps:
            rec["passes"] = traj * int(steps) + int(r["trained_pairs"]) * (2 if kl else 1)
        records.append(rec)
    credit = None
    if (run_dir / "credit.json").is_file():
        credit = json.loads((run_dir / "credit.json").read_text())
    return _round({
        "schema": SUMMARY_SCHEMA, "framework": fw, "arm": arm, "seed": int(seed), "config": cfg_name,
        "overrides": list(overrides), "objective": train.get("objective"), "credit_scheme": train.get("credit"),
        "epochs": int(epochs), "epochs_done": max((r.get("epoch", 0) for r in records), default=0),
        "trajectories_per_epoch": traj, "sampler_steps": steps, "wall_s": wall_s,
        "pcpo_version": __version__, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "credit": credit, "records": records,
    })


def dump_summary(summary: dict) -> str:
    """JSON with one line per setting, override and epoch record (readable diffs, no per-number lines)."""
    def one(v) -> str:
        return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))

    def block(v) -> str:
        if isinstance(v, list) and v and all(isinstance(x, (str, dict)) for x in v):
            return "[\n" + ",\n".join("  " + one(x) for x in v) + "\n ]"
        return one(v)

    items = [f" {one(k)}: {block(v)}" for k, v in summary.items() if k not in ("credit", "records")]
    credit = summary.get("credit")
    if isinstance(credit, dict):
        items.append(' "credit": {\n' + ",\n".join(f"  {one(k)}: {block(v)}" for k, v in credit.items()) + "\n }")
    else:
        items.append(f' "credit": {one(credit)}')
    items.append(f' "records": {block(summary.get("records", []))}')
    return "{\n" + ",\n".join(items) + "\n}\n"


def write_summary(path: Path, summary: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dump_summary(summary))
    os.replace(tmp, path)
    return path


def load_summary(path: Path) -> dict:
    path = Path(path)
    try:
        s = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable run summary ({type(e).__name__}: {e}); delete it and rerun "
                         "the cell with --resume") from None
    if not isinstance(s, dict) or s.get("schema") != SUMMARY_SCHEMA or not isinstance(s.get("records"), list):
        raise ValueError(f"{path}: not a schema-{SUMMARY_SCHEMA} run summary (keys schema, records, ...)")
    return s


def _summary_finished(s: dict, epochs: int) -> bool:
    return int(s.get("epochs_done") or 0) >= epochs


def _check_summary_matches(path: Path, s: dict, cfg_name: str | None, overrides: list[str]) -> None:
    """A finished summary stands for its cell only if it was made with the cell's config and overrides."""
    def strip(ov):
        return [o for o in ov if not o.startswith("epochs=")]

    if s.get("config") != cfg_name or strip(s.get("overrides") or []) != strip(overrides):
        old, new = strip(s.get("overrides") or []), strip(overrides)
        diff = next((f"{a!r} vs {b!r}" for a, b in zip(old, new) if a != b),
                    f"{len(old)} vs {len(new)} overrides" if old != new else
                    f"config {s.get('config')!r} vs {cfg_name!r}")
        raise ValueError(f"{path}: recorded with other settings than the bench file gives this cell ({diff}); "
                         "restore the bench file, or move the summary away to rerun the cell")


# ---------------------------------------------------------------------------- git

def git_toplevel(path: Path) -> Path:
    """The work tree holding ``path`` (``--commit`` needs one)."""
    return _git_toplevel(path, "--commit")


def _uncommitted(out: Path) -> set[Path]:
    """Summaries under ``OUT/summaries`` that differ from the last commit (untracked or modified), resolved."""
    sums = Path(out) / "summaries"
    if not sums.is_dir():
        return set()
    top = git_toplevel(sums)
    r = _git(["status", "--porcelain", "--untracked-files=all", "-z", "--", str(sums.resolve().relative_to(top))], top)
    if r.returncode != 0:
        return set()
    return {(top / entry[3:]).resolve() for entry in r.stdout.split("\0") if len(entry) > 3}


def commit_paths(paths: list[Path], message: str, log=print, retries: int = 20) -> bool:
    """``git add`` and ``git commit`` exactly ``paths`` (nothing else staged is committed); True if committed.

    A busy index lock (another git command at the same time) is retried; any other failure is logged and
    leaves the files written, never stops the benchmark.
    """
    top = git_toplevel(Path(paths[0]).parent)
    rel = [str(Path(p).resolve().relative_to(top)) for p in paths]
    r = None
    for attempt in range(retries):
        r = _git(["add", "--", *rel], top)
        if r.returncode == 0:
            r = _git(["commit", "-q", "-m", message, "--", *rel], top)
        if r.returncode == 0:
            return True
        text = r.stdout + r.stderr
        if "index.lock" in text:
            time.sleep(min(5.0, 0.25 * (attempt + 1)))
            continue
        if "nothing to commit" in text or "nothing added" in text or "no changes added" in text:
            return False
        break
    msg = (r.stderr or r.stdout).strip().splitlines() if r is not None else []
    log(f"--commit: git could not commit {', '.join(rel)} ({msg[-1] if msg else 'unknown error'}); "
        "the summary is written, commit it by hand")
    return False


# ---------------------------------------------------------------------------- running the matrix

def parse_duration(text: str) -> float:
    """Seconds of ``2h30m``, ``90m``, ``1.5h``, ``45s`` (units required); ValueError naming --time-budget."""
    t = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not t or "".join(a + u for a, u in parts) != t:
        raise ValueError(f"--time-budget: {text!r} is not a duration; use e.g. 2h30m, 90m or 1.5h")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[u] for a, u in parts)


def _checkpoint_epoch(rd: Path) -> int:
    """The newest checkpoint's epoch of a run directory (0 if none): where a resumed run starts."""
    eps = [int(p.name.split("-")[1]) for p in (rd / "checkpoints").glob("epoch-*")
           if p.is_dir() and p.name.split("-")[1].isdigit()] if (rd / "checkpoints").is_dir() else []
    return max(eps, default=0)


def run_matrix(spec: BenchSpec, out: Path, resume: bool = False, log=print, work: Path | None = None,
               commit: bool = False, settings: BenchSpec | None = None, time_budget_s: float | None = None,
               command: str | None = None) -> None:
    """Train (or resume) every cell of ``spec``. ``settings``: what ``OUT/bench.json`` records for
    ``--report-only`` (default ``spec``); a run restricted with --frameworks / --arms passes the whole matrix,
    so that the report always covers every pre-registered cell ("k of N runs present").

    ``time_budget_s``: start no run, in the matrix's order, that is not expected to finish within that many
    seconds of this call (expected: the mean wall time of the arm's finished runs, else of the framework's, scaled
    by the epochs left after the run's newest checkpoint; a run with no estimate is started); the runs in flight
    finish and the call returns, leaving no run half-trained when the time is up. Rerunning continues the matrix.

    ``command``: the command line that stop messages tell the user to rerun (default: ``OUT/command.txt``)."""
    from ..trainer.config import load_config

    t_start = time.time()

    out = Path(out)
    work = Path(work) if work is not None else out
    runs_dir = work / "runs"
    if commit:
        git_toplevel(out)
    existing = [p for p in runs_dir.iterdir() if p.is_dir()] if runs_dir.is_dir() else []
    existing += list((out / "summaries").glob("*/*/*.json")) if (out / "summaries").is_dir() else []
    if existing and not resume:
        raise ValueError(f"--out: {out} already holds {len(existing)} runs; add --resume to skip finished runs "
                         "and continue partial ones, or choose another --out")
    runs_dir.mkdir(parents=True, exist_ok=True)
    # validate every cell before spending time on any
    plans = []
    for fw, arm, seed in spec.cells():
        cfg_name, ov = run_overrides(spec, fw, arm, seed)
        cfg = load_config(cfg_name, ov)
        objective = spec.arm(arm).objective
        if cfg.train.objective != objective:
            raise ValueError(f"bench: config {cfg_name!r} for {fw}/{arm} has train.objective="
                             f"{cfg.train.objective!r}, the arm's objective is {objective!r}")
        plans.append((fw, arm, seed, cfg_name, ov))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(spec_dict(settings or spec), indent=1) + "\n")  # --report-only reads it

    # --time-budget's expected wall seconds of a run, by (framework, arm) and (framework, None): the mean over the
    # runs finished before this command, else the first one this command finishes
    walls: dict = {}
    estimates: dict = {}

    def message(fw, arm, seed) -> str:
        return f"bench: {fw}/{arm} seed {seed} ({spec.epochs} epochs)"

    def finish(fw, arm, seed, cfg_name, ov, rd, wall_s, tag) -> None:
        if wall_s:
            estimates.setdefault((fw, arm), wall_s)
            estimates.setdefault((fw, None), wall_s)
        sp = write_summary(summary_path(out, fw, arm, seed),
                           build_summary(rd, fw, arm, seed, cfg_name, ov, spec.epochs, wall_s))
        if commit and commit_paths([sp], message(fw, arm, seed), log=log):
            log(f"{tag}: committed {sp}")

    # finished summaries that an earlier command wrote but could not commit (stopped in between, or git busy)
    loose = _uncommitted(out) if commit else set()
    todo = []
    for k, (fw, arm, seed, cfg_name, ov) in enumerate(plans):
        rd = runs_dir / run_name(fw, arm, seed)
        tag = f"[{k + 1}/{len(plans)}] {rd.name}"
        sp = summary_path(out, fw, arm, seed)
        if sp.is_file() and _summary_finished(s := load_summary(sp), spec.epochs):
            _check_summary_matches(sp, s, cfg_name, ov)
            if s.get("wall_s"):
                for key in ((fw, arm), (fw, None)):
                    walls.setdefault(key, []).append(float(s["wall_s"]))
            log(f"{tag}: finished, skipped")
            if sp.resolve() in loose and commit_paths([sp], message(fw, arm, seed), log=log):
                log(f"{tag}: committed {sp} (written earlier, not committed then)")
        elif _finished(rd, spec.epochs):  # trained before summaries existed, or interrupted right after
            finish(fw, arm, seed, cfg_name, ov, rd, None, tag)
            log(f"{tag}: finished, skipped")
        else:
            todo.append((tag, fw, arm, seed, cfg_name, ov, rd))
    last_aggregate = [time.time()]

    def after_run(tag: str) -> None:
        if time.time() - last_aggregate[0] > 60:  # partial results of a long benchmark, at most once a minute
            last_aggregate[0] = time.time()
            try:
                aggregate(spec, out, work=work)
            except Exception as e:  # noqa: BLE001 - a plotting hiccup must not stop the matrix
                log(f"{tag}: aggregation failed ({type(e).__name__}: {e}); continuing")

    if command is None:  # the command that started the matrix (this process may be a caller of main(argv))
        command = ((out / "command.txt").read_text().strip() if (out / "command.txt").is_file()
                   else "the same pcpo bench command")
    hint = f"`{command}`" + ("" if "--resume" in command else " plus --resume")
    estimates.update({k: sum(v) / len(v) for k, v in walls.items()})
    held: list = []  # cells the time budget kept from starting (the first one and everything after it)

    def fits(item) -> bool:
        """Whether the cell may start within the time budget (once one does not, none after it does)."""
        if time_budget_s is None:
            return True
        if held:
            held.append(item)
            return False
        tag, fw, arm, _seed, _cfg, _ov, rd = item
        full = estimates.get((fw, arm), estimates.get((fw, None)))
        if full is None:
            return True
        need = full * (1 - _checkpoint_epoch(rd) / spec.epochs)
        left = t_start + time_budget_s - time.time()
        if need <= left:
            return True
        log(f"{tag}: not started: expected {need / 60:.0f} min, {max(left, 0) / 60:.0f} min of the time budget "
            "left")
        held.append(item)
        return False

    def budget_note(finished: int) -> None:
        if held:
            log(f"time budget: {finished} runs finished, {len(held)} not started; rerun {hint} to go on")

    if spec.workers == 1:
        n_done = 0
        for item in todo:
            if not fits(item):
                continue
            tag, fw, arm, seed, cfg_name, ov, rd = item
            log(f"{tag}: " + ("resuming" if (rd / "config.yaml").is_file()
                              else f"config {cfg_name or 'default (+ published settings)'}"))
            wall = _train_cell(cfg_name, ov, str(rd), spec.epochs, tuple(spec.imports), hint)
            log(f"{tag}: done in {wall:.0f}s")
            finish(fw, arm, seed, cfg_name, ov, rd, wall, tag)
            n_done += 1
            after_run(tag)
        budget_note(n_done)
        return
    # several runs at once, one process each (spawned: no forked torch/OpenMP state); summaries are written
    # (and committed) here, one at a time; a failed run stops the matrix after the runs in flight finish,
    # and --resume continues it
    import multiprocessing as mp
    import signal
    import threading
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from ..trainer.trainer import TrainingInterrupted

    log(f"{len(todo)} runs on {spec.workers} workers (set threads=1 in the runs' overrides on a small CPU)")
    # A stop signal reaches this process only (the workers have their own process groups, so a terminal's Ctrl-C
    # is not delivered twice); it is passed on to the workers once, each run checkpoints and stops, no new run
    # starts, and the matrix ends with one line naming the runs and how to go on. A second Ctrl-C is passed on
    # too: the runs stop at once, without saving the epoch under way.
    stop: dict = {"signum": None}
    pool_ref: list = []

    def on_signal(signum, frame) -> None:
        first = stop["signum"] is None
        stop["signum"] = stop["signum"] or signum
        if first or signum == signal.SIGINT:
            for proc in list(getattr(pool_ref[0], "_processes", {}).values()) if pool_ref else []:
                try:
                    os.kill(proc.pid, signum)
                except (ProcessLookupError, AttributeError):
                    pass

    handlers = ({sg: signal.signal(sg, on_signal) for sg in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread() else {})
    interrupted: list = []
    try:
        with ProcessPoolExecutor(max_workers=spec.workers, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            pool_ref.append(pool)
            pending = {}
            queue = list(todo)
            failed = None
            n_done = 0
            while queue or pending:
                while queue and len(pending) < spec.workers and failed is None and stop["signum"] is None:
                    item = queue.pop(0)
                    if not fits(item):
                        continue
                    tag, _fw, _arm, _seed, cfg_name, ov, rd = item
                    log(f"{tag}: started" + (" (resuming)" if (rd / "config.yaml").is_file() else ""))
                    pending[pool.submit(_train_cell, cfg_name, ov, str(rd), spec.epochs, tuple(spec.imports),
                                        hint)] = item
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    item = pending.pop(fut)
                    tag, fw, arm, seed, cfg_name, ov, rd = item
                    try:
                        wall = fut.result()
                        log(f"{tag}: done in {wall:.0f}s")
                        finish(fw, arm, seed, cfg_name, ov, rd, wall, tag)
                        n_done += 1
                    except TrainingInterrupted as e:  # the run checkpointed on the signal passed on to it
                        interrupted.append((todo.index(item), rd.name, e))
                    except Exception as e:  # noqa: BLE001 - reported, then re-raised once the pool drains
                        if stop["signum"] is not None:  # the signal came before the run's trainer was up
                            interrupted.append((todo.index(item), rd.name, TrainingInterrupted("", stop["signum"], None)))
                            continue
                        log(f"{tag}: failed ({type(e).__name__}: {e})")
                        failed = failed or e
                    after_run(tag)
    finally:
        for sg, h in handlers.items():
            signal.signal(sg, h)
    if failed is not None:
        raise failed
    if stop["signum"] is not None:
        name = signal.Signals(stop["signum"]).name
        what = ", ".join(f"{run} " + (f"saved at epoch {e.epoch}" if e.epoch else "with nothing saved")
                         for _, run, e in sorted(interrupted, key=lambda x: x[0])) or "no run was in flight"  # matrix order
        raise TrainingInterrupted(f"stopped by {name} ({what}); continue with {hint}", stop["signum"], None)
    budget_note(n_done)


def _worker_init() -> None:
    """A bench worker leads its own process group: signals reach it only through the matrix (run_matrix)."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()


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


WALL_FILE = "bench_wall.json"  # in a run directory: seconds spent by the bench commands that trained it


def _wall_so_far(rd: Path) -> float:
    try:
        return float(json.loads((rd / WALL_FILE).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _train_cell(
    cfg_name: str | None, overrides: list[str], run_dir: str, epochs: int, imports: tuple = (),
    resume_hint: str | None = None,
) -> float:
    """Train (or resume) one cell of the matrix; returns its wall time over every bench command that trained
    it (each command adds its seconds to ``bench_wall.json`` in the run directory when it ends, also when a signal
    stops it; a SIGKILLed command's seconds are lost). Top-level so worker processes can run it."""
    from ..trainer.config import load_config
    from ..trainer.trainer import Trainer, TrainingInterrupted

    _run_imports(list(imports))
    t0 = time.time()
    rd = Path(run_dir)
    before = _wall_so_far(rd)
    try:
        if (rd / "config.yaml").is_file():
            trainer = Trainer.resume(rd, overrides=[f"epochs={epochs}"])
        else:
            trainer = Trainer(load_config(cfg_name, overrides), rd)
        trainer.resume_command = resume_hint  # a matrix resumes itself: every stop message names the bench
        trainer.train()
    except TrainingInterrupted as e:  # say which cell stopped
        raise TrainingInterrupted(f"{rd.name}: {e}", e.signum, e.epoch) from None
    finally:
        total = before + time.time() - t0
        if rd.is_dir():
            tmp = rd / (WALL_FILE + ".tmp")
            tmp.write_text(json.dumps({"seconds": total}) + "\n")
            os.replace(tmp, rd / WALL_FILE)
    return total


# ---------------------------------------------------------------------------- per-run numbers

def _curve(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and r[key] is not None]
    return [e for e, _ in pts], [float(v) for _, v in pts]


def mean_gain(records: list[dict], key: str, epochs: int) -> float | None:
    """The primary metric ``(1/E) Σ_{e=1..E} (r_e − r_0)``: area under the gain curve over ``E`` epochs.

    Epochs without a measurement are linearly interpolated between their neighbours (with evaluation every
    epoch, as the decisive protocol prescribes, this is the plain mean). ``None`` without r_0 or r_E.
    """
    import numpy as np

    e, v = _curve(records, key)
    if not e or e[0] != 0 or max(e) < epochs:
        return None
    grid = np.arange(1, epochs + 1)
    return float(np.mean(np.interp(grid, e, v)) - v[0])


def run_metrics(summary: dict, spec: BenchSpec) -> dict:
    """Epochs, wall-clock and passes to the target, the mean gain, matched-reward gold metrics of one run."""
    fw, arm, seed = summary["framework"], summary["arm"], summary["seed"]
    recs = [r for r in summary["records"] if r.get("epoch", 0) <= spec.epochs]
    target = spec.target_for(fw)
    e, v = _curve(recs, spec.metric)
    if spec.target_gain is not None and v:
        target = v[0] + float(spec.target_gain)
    ett = stats.epochs_to_target(e, v, target, smooth=spec.smooth) if target is not None else None
    evals = [r for r in recs if isinstance(r.get("eval_reward_mean"), (int, float))]
    matched = None
    if evals:
        after = [r for r in evals if ett is not None and r["epoch"] >= ett]
        matched = after[0] if after else evals[-1]
    gold = lambda r: {k: r[k] for k in r if (k.startswith("gold_") or k == "eval_reward_mean")  # noqa: E731
                      and isinstance(r[k], (int, float))}
    train = [r for r in recs if r.get("epoch", 0) > 0]
    last_epoch = max((r.get("epoch", 0) for r in recs), default=0)
    horizon = ett if ett is not None else last_epoch
    times = [r["time_s"] for r in train if isinstance(r.get("time_s"), (int, float))]
    passes = [r.get("passes") for r in train]
    upto = [r for r in train if r["epoch"] <= horizon]
    has_passes = bool(passes) and all(isinstance(p, (int, float)) for p in passes)
    return {
        "run": run_name(fw, arm, seed), "framework": fw, "arm": arm, "objective": summary.get("objective") or arm,
        "seed": seed, "mean_gain": mean_gain(recs, spec.metric, spec.epochs),
        "epochs_done": last_epoch, "epochs_to_target": ett, "target": target, "censored": ett is None,
        "matched_epoch": matched["epoch"] if matched else None,
        "matched": gold(matched) if matched else {},
        "initial": gold(evals[0]) if evals else {},
        "final": gold(evals[-1]) if evals else {},
        "final_train_reward": next((r["reward_mean"] for r in reversed(train)
                                    if isinstance(r.get("reward_mean"), (int, float))), None),
        "time_per_epoch_s": sum(times) / len(times) if times else None,
        "time_total_s": sum(times) if times else None,
        "wall_s": summary.get("wall_s"),
        "time_to_target_s": (sum(r["time_s"] for r in upto if isinstance(r.get("time_s"), (int, float)))
                             if times else None),
        "passes_total": sum(passes) if has_passes else None,
        "passes_to_target": sum(r["passes"] for r in upto) if has_passes else None,
        "clipfrac_mean": _mean_key(train, "clipfrac") or 0.0,
        "zero_grad_frac_mean": _mean_key(train, "zero_grad_frac"),
        "incomplete": last_epoch < spec.epochs,
    }


def _mean_key(records: list[dict], key: str) -> float | None:
    xs = [r[key] for r in records if isinstance(r.get(key), (int, float)) and r[key] is not None]
    return sum(xs) / len(xs) if xs else None


def run_cost_s(m: dict) -> float | None:
    """Compute of one run in seconds: its wall time over the bench commands that trained it (training and evaluation),
    else the sum of its epochs' training times."""
    return m.get("wall_s") or m.get("time_total_s")


# ---------------------------------------------------------------------------- collecting summaries

def collect_summaries(spec: BenchSpec, out: Path, work: Path | None = None, from_runs: bool = True,
                      write: bool = True) -> dict:
    """{(framework, arm, seed): summary} of every cell of the spec that has data.

    Committed summaries come first; with ``from_runs`` a run directory under ``WORK/runs`` with more epochs
    (a run in progress, or one trained before summaries existed) is summarised on the fly, and written to
    ``OUT/summaries`` if it is finished (``write``).
    """
    out = Path(out)
    runs_dir = Path(work if work is not None else out) / "runs"
    found: dict = {}
    for fw, arm, seed in spec.cells():
        sp = summary_path(out, fw, arm, seed)
        s = load_summary(sp) if sp.is_file() else None
        if from_runs:
            rd = runs_dir / run_name(fw, arm, seed)
            if (rd / "metrics.jsonl").is_file():
                from .report import read_records

                recs = read_records(rd)
                done = max((r.get("epoch", 0) for r in recs), default=0)
                if s is None or done > int(s.get("epochs_done") or 0):
                    cfg_name, ov = run_overrides(spec, fw, arm, seed)
                    s = build_summary(rd, fw, arm, seed, cfg_name, ov, spec.epochs)
                    if write and _finished(rd, spec.epochs):
                        write_summary(sp, s)
        if s is not None:
            found[(fw, arm, seed)] = s
    return found


# ---------------------------------------------------------------------------- the report

def aggregate(spec: BenchSpec, out: Path, command: str | None = None, work: Path | None = None,
              from_runs: bool = True, provenance: dict | None = None) -> dict:
    """Collect the summaries (and, with ``from_runs``, running run directories) and write the report."""
    return report(spec, out, collect_summaries(spec, out, work=work, from_runs=from_runs), command=command,
                  provenance=provenance)


def _comparison(spec: BenchSpec, fw: str, arm: str, ref: str, done: dict) -> dict | None:
    seeds = sorted(sd for (f, a, sd) in done if f == fw and a == arm and (fw, ref, sd) in done)
    if not seeds:
        return None
    A = [done[(fw, arm, sd)] for sd in seeds]
    B = [done[(fw, ref, sd)] for sd in seeds]
    budget = float(spec.epochs)
    d_gain = [a["mean_gain"] - b["mean_gain"] for a, b in zip(A, B)
              if a["mean_gain"] is not None and b["mean_gain"] is not None]
    ref_gain = [b["mean_gain"] for b in B if b["mean_gain"] is not None]
    ref_mean = sum(ref_gain) / len(ref_gain) if ref_gain else math.nan
    decision = stats.decide_difference(d_gain, ref_mean, spec.margin, spec.confidence)
    ett_a = [float(a["epochs_to_target"]) if a["epochs_to_target"] is not None else budget for a in A]
    ett_b = [float(b["epochs_to_target"]) if b["epochs_to_target"] is not None else budget for b in B]
    all_censored = all(a["censored"] for a in A) and all(b["censored"] for b in B)
    cens = (sum(bool(a["censored"]) for a in A), sum(bool(b["censored"]) for b in B))

    def speed(key: str, what: str):
        xs = [(b[key], a[key]) for a, b in zip(A, B) if a.get(key) is not None and b.get(key) is not None]
        if all_censored:
            return None, stats.decide_speedup(None, spec.margin, what)
        if len(xs) < len(A):
            return None, {"verdict": "undecided", "label": f"undecided (no {key} in some runs)"}
        iv = stats.paired_speedup_interval([x for x, _ in xs], [y for _, y in xs], spec.confidence)
        return iv, stats.decide_speedup(iv, spec.margin, what, cens)

    sp_e = (None if all_censored else stats.paired_speedup_interval(ett_b, ett_a, spec.confidence))
    sp_t, dec_t = speed("time_to_target_s", "faster")
    sp_p, dec_p = speed("passes_to_target", "cheaper")

    def diff(get):
        xs = [get(a) - get(b) for a, b in zip(A, B) if get(a) is not None and get(b) is not None]
        return stats.t_interval(xs) if xs else None

    costs = [(run_cost_s(a), run_cost_s(b)) for a, b in zip(A, B)]
    pair_cost = (sum(x + y for x, y in costs) / len(costs)
                 if costs and all(x is not None and y is not None for x, y in costs) else None)
    need = decision["seeds_needed"]
    planned = sorted(set(spec.seeds_for(fw, arm)) & set(spec.seeds_for(fw, ref)))
    return {
        "framework": fw, "arm": arm, "reference": ref, "seeds": seeds, "n": len(seeds),
        # the protocol reads a decision once every pre-registered seed of both arms has finished (no optional
        # stopping); before that the labels are for monitoring only
        "planned_seeds": len(planned), "interim": not set(planned) <= set(seeds),
        "primary": decision, "mean_gain_diff_per_seed": d_gain, "p": stats.paired_t_pvalue(d_gain),
        "epochs_saved_per_seed": [b - a for a, b in zip(ett_a, ett_b)],
        "epochs_saved": stats.t_interval([b - a for a, b in zip(ett_a, ett_b)]),
        "censored": list(cens),
        "speedup_epochs": sp_e,
        "speedup_epochs_decision": stats.decide_speedup(sp_e, spec.margin, "faster", cens),
        "speedup_wallclock": sp_t, "speedup_wallclock_decision": dec_t,
        "speedup_passes": sp_p, "speedup_passes_decision": dec_p,
        "final_reward_diff": diff(lambda r: r["final"].get("eval_reward_mean")),
        "zero_grad_frac_diff": diff(lambda r: r["zero_grad_frac_mean"]),
        "matched_diff": {k: iv for k in _GOLD_SHOWN[1:] if (iv := diff(lambda r, k=k: r["matched"].get(k)))},
        "pair_cost_s": pair_cost,
        "extra_seeds": max(0, need - len(seeds)) if need is not None else None,
        "compute_needed_core_h": (need * pair_cost / 3600 if need is not None and pair_cost else None),
        "compute_extra_core_h": (max(0, need - len(seeds)) * pair_cost / 3600
                                 if need is not None and pair_cost else None),
    }


def report(spec: BenchSpec, out: Path, summaries: dict, command: str | None = None,
           provenance: dict | None = None, report_command: str | None = None) -> dict:
    """Every table, number and plot of the benchmark from per-run summaries; writes results.json/.md.
    ``provenance``: :func:`pcpo.eval.provenance.protocol_provenance` of the pre-registration, if any;
    ``command``: the line that runs the matrix (default: the one recorded when it started);
    ``report_command``: the ``--report-only`` line that rebuilt this report, if it was one."""
    import warnings

    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"spec": {k: getattr(spec, k) for k in spec.__dataclass_fields__},
                     "command": command or _read_command(out), "report_command": report_command,
                     "runs": [], "summary": {}, "comparisons": {},
                     "cells": {"planned": len(spec.cells()), "present": len(summaries)}}
    if provenance is not None:
        results["provenance"] = provenance
    metrics = {}
    for key in spec.cells():
        if key in summaries:
            m = run_metrics(summaries[key], spec)
            metrics[key] = m
            results["runs"].append(m)
    done = {k: m for k, m in metrics.items() if not m["incomplete"]}
    curves: dict = {}
    train_curves: dict = {}
    clip_mats: dict = {}
    zg_mats: dict = {}
    credit_tables: dict = {}
    for fw in spec.frameworks:
        results["summary"][fw] = {}
        curves[fw], train_curves[fw], clip_mats[fw], zg_mats[fw] = {}, {}, {}, {}
        for arm in spec.arms_for(fw):
            per_seed = []
            ev_rows, tr_rows, mats, zmats = [], [], [], []
            ev_epochs = tr_epochs = None
            for seed in spec.seeds_for(fw, arm):
                if (fw, arm, seed) not in metrics:
                    continue
                s, recs = metrics[(fw, arm, seed)], summaries[(fw, arm, seed)]["records"]
                recs = [r for r in recs if r.get("epoch", 0) <= spec.epochs]
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
                if fw not in credit_tables and summaries[(fw, arm, seed)].get("credit"):
                    credit_tables[fw] = summaries[(fw, arm, seed)]["credit"]
                if not s["incomplete"]:
                    per_seed.append(s)
            if ev_rows:
                curves[fw][arm] = (ev_epochs, np.array(ev_rows))
            if tr_rows:
                train_curves[fw][arm] = (tr_epochs, np.array(tr_rows))
            for acc, target_mats in ((mats, clip_mats), (zmats, zg_mats)):
                if acc:
                    n = min(m.shape[0] for _, m in acc)
                    w = min(m.shape[1] for _, m in acc)
                    with warnings.catch_warnings():  # untrained steps are NaN in every seed
                        warnings.simplefilter("ignore", RuntimeWarning)
                        target_mats[fw][arm] = (acc[0][0][:n],
                                                np.nanmean(np.stack([m[:n, :w] for _, m in acc]), axis=0))
            if per_seed:
                results["summary"][fw][arm] = _arm_summary(spec, per_seed)
        for arm, ref in spec.comparisons(fw):
            c = _comparison(spec, fw, arm, ref, done)
            if c is None:
                continue
            results["comparisons"][f"{fw}/{arm}-vs-{ref}"] = c
            results["summary"][fw][f"speedup_{arm}_vs_{ref}"] = c["speedup_epochs"]
    # Holm over the primary family (the primary comparisons of every framework)
    fam = [k for k in results["comparisons"] if k.split("/", 1)[1] in spec.primary_comparisons()]
    for k, p in zip(fam, stats.holm([results["comparisons"][k]["p"] for k in fam])):
        results["comparisons"][k]["p_holm"] = p
        results["comparisons"][k]["is_primary"] = True
    registered = (provenance or {}).get("registered_comparisons")
    if registered is not None:  # a comparison the registered protocol did not name was chosen after results
        for k, c in results["comparisons"].items():
            c["exploratory"] = k not in registered
    results["compute"] = _compute_table(spec, results)
    results["compute_by_arm"] = _compute_by_arm(spec, metrics)
    if spec.sensitivity:
        results["sensitivity"] = _sensitivity(spec, summaries, metrics)
    results["plots"] = _plots(spec, out, curves, train_curves, clip_mats, zg_mats, credit_tables, results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "results.md").write_text(results_markdown(results, spec))
    return results


def _arm_summary(spec: BenchSpec, per_seed: list[dict]) -> dict:
    import numpy as np

    vals, n_cens = stats.censored([s["epochs_to_target"] for s in per_seed], spec.epochs)
    m, lo, hi = stats.t_interval(vals, spec.confidence)
    gold = {}
    for k in sorted({k for s in per_seed for k in s["matched"]}):
        xs = [s["matched"][k] for s in per_seed if isinstance(s["matched"].get(k), (int, float))]
        if xs:
            gold[k] = stats.t_interval(xs, spec.confidence)
    finals = [s["final"]["eval_reward_mean"] for s in per_seed if s["final"].get("eval_reward_mean") is not None]
    gains = [s["mean_gain"] for s in per_seed if s["mean_gain"] is not None]
    ttt = [s["time_to_target_s"] for s in per_seed if s["time_to_target_s"] is not None]
    ptt = [s["passes_to_target"] for s in per_seed if s["passes_to_target"] is not None]
    zg = [s["zero_grad_frac_mean"] for s in per_seed if s.get("zero_grad_frac_mean") is not None]
    tpe = [s["time_per_epoch_s"] for s in per_seed if s["time_per_epoch_s"] is not None]
    costs = [c for s in per_seed if (c := run_cost_s(s)) is not None]
    return {
        "n": len(per_seed), "seeds": [s["seed"] for s in per_seed], "epochs_to_target": vals, "censored": n_cens,
        "ett_mean": m, "ett_ci": [lo, hi], "matched": gold,
        "final_eval_reward": stats.t_interval(finals, spec.confidence) if finals else None,
        "mean_gain": stats.t_interval(gains, spec.confidence) if gains else None,
        "mean_gain_per_seed": gains,
        "time_to_target_s": stats.t_interval(ttt, spec.confidence) if ttt else None,
        "passes_to_target": stats.t_interval(ptt, spec.confidence) if ptt else None,
        "time_per_epoch_s": float(np.mean(tpe)) if tpe else None,
        "run_cost_s": float(np.mean(costs)) if costs else None,
        "clipfrac_mean": float(np.mean([s["clipfrac_mean"] for s in per_seed])),
        "zero_grad_frac_mean": float(np.mean(zg)) if zg else None,
    }


def _compute_table(spec: BenchSpec, results: dict) -> dict:
    """Per framework, the primary comparison's half-width status and the compute that would meet it."""
    out = {}
    for key, c in results["comparisons"].items():
        if not c.get("is_primary"):
            continue
        d = c["primary"]
        out[c["framework"]] = {
            "comparison": key, "n": c["n"], "half_width": d["half_width"],
            "target_half_width": d["target_half_width"], "met": d["half_width_met"], "sd": d["sd"],
            "seeds_needed": d["seeds_needed"], "extra_seeds": c["extra_seeds"],
            "pair_cost_s": c["pair_cost_s"], "compute_needed_core_h": c["compute_needed_core_h"],
            "compute_extra_core_h": c["compute_extra_core_h"],
        }
    return out


def _compute_by_arm(spec: BenchSpec, metrics: dict) -> dict:
    """Core-hours each arm took (one core per run: a run's wall time over every bench command that trained it), and what
    its missing runs would take at the arm's mean cost per run so far."""
    out: dict = {}
    total_spent = total_left = 0.0
    unknown = 0
    for fw in spec.frameworks:
        out[fw] = {}
        for arm in spec.arms_for(fw):
            seeds = spec.seeds_for(fw, arm)
            done = [metrics[(fw, arm, sd)] for sd in seeds
                    if (fw, arm, sd) in metrics and not metrics[(fw, arm, sd)]["incomplete"]]
            costs = [c for m in done if (c := run_cost_s(m)) is not None]
            train = [m["time_total_s"] for m in done if m.get("time_total_s") is not None]
            per_run = sum(costs) / len(costs) if costs else None
            missing = len(seeds) - len(done)
            left = missing * per_run / 3600 if per_run is not None else (0.0 if not missing else None)
            spent = sum(costs) / 3600
            out[fw][arm] = {
                "planned": len(seeds), "finished": len(done), "core_h": spent,
                "core_min_per_run": per_run / 60 if per_run is not None else None,
                "training_share": (sum(train) / sum(costs)
                                   if costs and len(train) == len(costs) and sum(costs) > 0 else None),
                "missing": missing, "core_h_missing": left,
            }
            total_spent += spent
            if left is None:
                unknown += missing
            else:
                total_left += left
    out["_total"] = {"core_h": total_spent, "core_h_missing": total_left, "missing_without_estimate": unknown}
    return out


def _sensitivity(spec: BenchSpec, summaries: dict, metrics: dict) -> dict:
    """Epochs to target and paired speed-ups for other target gains (secondary; the primary target is fixed)."""
    out: dict = {}
    for gain in spec.sensitivity:
        key = f"{float(gain):g}"
        out[key] = {}
        for fw in spec.frameworks:
            ett: dict = {}
            for arm in spec.arms_for(fw):
                per = {}
                for seed in spec.seeds_for(fw, arm):
                    m = metrics.get((fw, arm, seed))
                    if m is None or m["incomplete"]:
                        continue
                    recs = [r for r in summaries[(fw, arm, seed)]["records"] if r.get("epoch", 0) <= spec.epochs]
                    e, v = _curve(recs, spec.metric)
                    if not v:
                        continue
                    per[seed] = stats.epochs_to_target(e, v, v[0] + float(gain), smooth=spec.smooth)
                if per:
                    ett[arm] = per
            row = {}
            for arm, per in ett.items():
                vals, c = stats.censored(list(per.values()), spec.epochs)
                row[arm] = {"mean": sum(vals) / len(vals), "censored": c, "n": len(vals)}
            for arm, ref in spec.comparisons(fw):
                if arm in ett and ref in ett:
                    seeds = sorted(set(ett[arm]) & set(ett[ref]))
                    a = [ett[arm][s] for s in seeds]
                    b = [ett[ref][s] for s in seeds]
                    if seeds and not (all(x is None for x in a) and all(x is None for x in b)):
                        row[f"speedup_{arm}_vs_{ref}"] = stats.paired_speedup_interval(
                            stats.censored(b, spec.epochs)[0], stats.censored(a, spec.epochs)[0], spec.confidence)
            out[key][fw] = row
    return out


def _plots(spec, out, curves, train_curves, clip_mats, zg_mats, credit_tables, results) -> dict:
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
    ttt = {}
    for fw, summ in results["summary"].items():
        arms = {arm: summ[arm] for arm in spec.arms_for(fw) if isinstance(summ.get(arm), dict)}
        if arms:
            ttt[FRAMEWORK_LABELS.get(fw, fw)] = {arm: {
                "epochs": (s["ett_mean"], *s["ett_ci"]), "wall_s": s.get("time_to_target_s"),
                "passes": s.get("passes_to_target"), "censored": s["censored"], "n": s["n"]}
                for arm, s in arms.items()}
    if ttt:
        has_passes = any(r.get("passes") for v in ttt.values() for r in v.values())
        fig = figures.fig_bench_time_to_target(ttt, spec.epochs, passes=has_passes)
        (out / "time_to_target.png").write_bytes(figures.to_png(fig, dpi=80))
        plots["time_to_target"] = "time_to_target.png"
    rows = [(k, c["primary"]) for k, c in results["comparisons"].items() if c["primary"].get("relative")]
    if rows:
        (out / "primary_forest.png").write_bytes(figures.to_png(_fig_forest(rows, spec.margin), dpi=80))
        plots["primary_forest"] = "primary_forest.png"
    return plots


def _fig_forest(rows: list, margin: float):
    """Paired mean-gain differences in % of the reference's mean gain, with the ±margin band."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    for i, (_name, d) in enumerate(reversed(rows)):
        m, lo, hi = d["relative"]
        color = {"better": "#2ca02c", "worse": "#d62728", "no difference": "#1f77b4"}.get(d["verdict"], "#7f7f7f")
        ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.plot([m], [i], "o", color=color, ms=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.axvspan(-100 * margin, 100 * margin, color="#1f77b4", alpha=0.08, label=f"±{100 * margin:.0f} % (margin)")
    ax.set_yticks(range(len(rows)), [n for n, _ in reversed(rows)], fontsize=7)
    ax.set_xlabel("Δ mean gain over the run, % of the reference's (95 % t-interval, paired by seed)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


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
    if any(x is None or (isinstance(x, float) and not math.isfinite(x)) for x in (m, lo, hi)):
        return "–"
    return f"{m:.3g} [{lo:.3g}, {hi:.3g}]"


def _pct(iv) -> str:
    if not iv or not all(x is not None and math.isfinite(x) for x in iv):
        return "–"
    return f"{100 * iv[0]:+.1f} % [{100 * iv[1]:+.1f}, {100 * iv[2]:+.1f}]"


def _num(x, fmt: str = "{:.3g}") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def results_markdown(results: dict, spec: BenchSpec) -> str:
    lines = ["# pcpo bench results", ""]
    if results.get("command"):
        lines += ["The matrix was started by this line (rerun it, with `--resume`, to go on; `--workers` and "
                  "`--time-budget` change how the runs are scheduled, not what they compute):", "",
                  "```", results["command"], "```", ""]
    if results.get("report_command"):
        lines += ["This report was rebuilt from the committed summaries alone by:", "",
                  "```", results["report_command"], "```", ""]
    tgt = spec.target if not isinstance(spec.target, dict) else ", ".join(f"{k}: {v}" for k, v in spec.target.items())
    if spec.target_gain is not None:
        tgt = f"its epoch-0 value + {spec.target_gain:g}"
    arms = spec.arm_specs()
    seeds = "; ".join(f"{fw}: {_seed_text(spec.seeds_for(fw))}" for fw in spec.frameworks)
    lines += [f"Matrix: {', '.join(spec.frameworks)} × {', '.join(arms)} (arms) × seeds ({seeds}), "
              f"{spec.epochs} epochs; {results['cells']['present']} of {results['cells']['planned']} runs present. "
              f"Target: `{spec.metric}` ≥ {tgt}" + (f" (trailing mean of {spec.smooth})" if spec.smooth > 1 else "")
              + ".", ""]
    if spec.set:
        lines += ["Overrides applied to every run: " + ", ".join(f"`{s}`" for s in spec.set), ""]
    for fw, ov in spec.framework_set.items():
        lines += [f"Overrides for {fw}: " + ", ".join(f"`{s}`" for s in ov), ""]
    if spec.arms:
        lines += ["| arm | objective | frameworks | overrides | compared with |", "|---|---|---|---|---|"]
        for name, a in arms.items():
            ov = ", ".join(f"`{s}`" for s in a.set)
            ov += "".join(f"; {fw}: " + ", ".join(f"`{s}`" for s in v) for fw, v in a.framework_set.items())
            vs = sorted({r for fw in spec.frameworks for n, r in spec.comparisons(fw) if n == name})
            lines.append(f"| {name} | {a.objective} | {', '.join(a.frameworks or spec.frameworks)} | {ov or '–'} | "
                         f"{', '.join(vs) or '–'} |")
        lines.append("")
    if spec.notes:
        lines += [spec.notes.strip(), ""]
    if results.get("provenance"):
        from .provenance import provenance_markdown

        lines += provenance_markdown(results["provenance"])
    comps = results.get("comparisons") or {}
    if comps:
        lines += [f"## Decisions (pre-registered rule, margin δ = {100 * spec.margin:.0f} % of the reference's mean "
                  "gain)", "",
                  "Primary metric: mean held-out gain over the run, paired by seed (arm − reference), "
                  f"{100 * spec.confidence:.0f} % t-interval; in % of the reference arm's mean gain. "
                  "p: paired t-test (Holm-adjusted over the primary comparisons, marked *).", ""]
        interim = [c for c in comps.values() if c.get("interim")]
        if interim:
            lines += [f"**Interim: {len(interim)} of {len(comps)} comparisons lack some of their pre-registered "
                      "seeds.** Their labels (marked \"interim\", not bold) are for monitoring only: a decision "
                      "is read once every seed of both arms has finished, and adding or dropping seeds on seeing "
                      "them would be optional stopping.", ""]
        lines += ["| comparison | seeds | Δ mean gain ↑ | in % of reference ↑ | p | decision | epochs to target "
                  "(speed-up ↑) | wall-clock to target (speed-up ↑) | passes to target (speed-up ↑) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, c in comps.items():
            d = c["primary"]
            verdict = (f"interim, {c['n']} of {c['planned_seeds']} seeds: {d['label']}" if c.get("interim")
                       else f"**{d['label']}**")
            if c.get("exploratory"):
                verdict = f"exploratory (not in the registered protocol): {verdict.strip('*')}"
            rel = d.get("relative")
            rel_s = f"{rel[0]:+.0f} % [{rel[1]:+.0f}, {rel[2]:+.0f}]" if rel else "–"
            p = c.get("p_holm", c["p"])
            p_s = _num(p, "{:.2g}") + (" *" if c.get("is_primary") else "")
            lines.append(f"| {name} | {c['n']} | {_ci((d['mean'], d['low'], d['high']))} | {rel_s} | {p_s} | "
                         f"{verdict} | {_pct(c['speedup_epochs'])}: {c['speedup_epochs_decision']['label']} | "
                         f"{_pct(c['speedup_wallclock'])}: {c['speedup_wallclock_decision']['label']} | "
                         f"{_pct(c['speedup_passes'])}: {c['speedup_passes_decision']['label']} |")
        lines += ["", "Speed-ups: cost(reference)/cost(arm) − 1 to the target (censored runs count as the budget), "
                  "paired bootstrap over seeds; wall-clock counts training epochs only (not evaluation), passes are "
                  "denoiser rows (rollout samples × steps + trained pairs).", ""]
        lines += [f"## Compute to meet the half-width (≤ {100 * spec.margin:.0f} % of the reference's mean gain, "
                  "from the observed sd of the paired differences)", "",
                  "| comparison | seeds | sd of Δ | half-width | wanted | met | seeds needed | extra seeds | "
                  "core-hours per seed pair | core-hours for the extra seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, c in comps.items():
            d = c["primary"]
            lines.append(f"| {name}{' *' if c.get('is_primary') else ''} | {c['n']} | {_num(d['sd'])} | "
                         f"{_num(d['half_width'])} | {_num(d['target_half_width'])} | "
                         f"{'yes' if d['half_width_met'] else 'no'} | {_num(d['seeds_needed'], '{}')} | "
                         f"{_num(c['extra_seeds'], '{}')} | "
                         f"{_num(c['pair_cost_s'] / 3600 if c['pair_cost_s'] else None, '{:.2f}')} | "
                         f"{_num(c['compute_extra_core_h'], '{:.1f}')} |")
        lines.append("")
    cba = results.get("compute_by_arm") or {}
    if any(k != "_total" for k in cba):
        tot = cba["_total"]
        lines += ["## Compute each arm took", "",
                  "One core per run: a run's cost is its wall time over every bench command that trained it (training and "
                  "evaluation); the missing runs are priced at the arm's mean cost per finished run.", "",
                  "| framework | arm | runs finished | core-hours | core-minutes per run | training share | "
                  "runs missing | core-hours for the missing runs |", "|---|---|---|---|---|---|---|---|"]
        for fw, arms in cba.items():
            if fw == "_total":
                continue
            for arm, c in arms.items():
                share = c["training_share"]
                lines.append(f"| {fw} | {arm} | {c['finished']} of {c['planned']} | {c['core_h']:.2f} | "
                             f"{_num(c['core_min_per_run'], '{:.1f}')} | "
                             f"{f'{100 * share:.0f} %' if share is not None else '–'} | {c['missing']} | "
                             f"{_num(c['core_h_missing'], '{:.1f}')} |")
        unk = tot["missing_without_estimate"]
        lines += ["", f"Spent: {tot['core_h']:.1f} core-hours. Missing runs: {tot['core_h_missing']:.1f} core-hours "
                  "more" + (f", plus {unk} runs of arms with no finished run yet to price them" if unk else "")
                  + ".", ""]
    lines += ["## Per arm: epochs to target (mean [95 % t-interval] over seeds)", "", f"({figures.DIRECTION_LEGEND})", "",
              "| framework | arm | n | epochs to target ↓ | censored | final held-out reward ↑ | mean gain over run ↑ | "
              "wall-clock to target (s) ↓ | s/epoch ↓ | mean clip frac | mean zero-grad frac |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for fw, summ in results["summary"].items():
        for arm in spec.arms_for(fw):
            s = summ.get(arm)
            if not s:
                continue
            lines.append(f"| {fw} | {arm} | {s['n']} | {_ci((s['ett_mean'], *s['ett_ci']))} | {s['censored']} | "
                         f"{_ci(s['final_eval_reward'])} | {_ci(s.get('mean_gain'))} | {_ci(s.get('time_to_target_s'))} | "
                         f"{_num(s['time_per_epoch_s'], '{:.1f}')} | {s['clipfrac_mean']:.3f} | "
                         f"{_num(s.get('zero_grad_frac_mean'), '{:.3f}')} |")
    lines += ["", "Clip frac: |ρ − 1| > ξ on either side for the clipped ratio (the baselines' `clipfrac`), the flat "
              "side for the hinges; zero-grad frac: pairs on the flat (no-gradient) side of their own loss, the "
              "like-for-like statistic across objectives.", "",
              "Censored runs never reached the target and count as the epoch budget (a lower bound). "
              "Mean gain over run: (1/E) Σ_{e=1..E} (r_e − r_0) of the held-out reward (area under the gain curve "
              "normalised by the epochs; sensitive to speed even when the target is not reached).", ""]
    lines += ["## Speed-up of PCPO and the other arms over their reference (epochs(reference)/epochs(arm) − 1, "
              "paired bootstrap 95 % interval)", "", "| framework | arm | vs | speed-up | epochs saved per seed |",
              "|---|---|---|---|---|"]
    for c in comps.values():
        if c["speedup_epochs"] is None:
            sp = "– (neither reached the target)"
        else:
            sp = _pct(c["speedup_epochs"])
        lines.append(f"| {c['framework']} | {c['arm']} | {c['reference']} | {sp} | "
                     f"{', '.join(f'{x:+g}' for x in c['epochs_saved_per_seed'])} |")
    if comps:
        lines += ["", "## Paired by seed (arm − reference; a seed fixes the prompts and noise of every arm)", "",
                  "| comparison | Δ mean gain per seed | arm better on | Δ final held-out reward | Δ zero-grad frac | "
                  "Δ FD to real at matched reward | Δ diversity at matched reward |", "|---|---|---|---|---|---|---|"]
        for name, c in comps.items():
            per = ", ".join(f"{x:+.4f}" for x in c["mean_gain_diff_per_seed"])
            better = sum(x > 0 for x in c["mean_gain_diff_per_seed"])
            md = c["matched_diff"]
            lines.append(f"| {name} | {per} | {better}/{len(c['mean_gain_diff_per_seed'])} | "
                         f"{_ci(c['final_reward_diff'])} | {_ci(c['zero_grad_frac_diff'])} | "
                         f"{_ci(md.get('gold_fd_real'))} | {_ci(md.get('gold_diversity'))} |")
    gold_keys = [k for k in _GOLD_SHOWN if any(k in s.get("matched", {}) for summ in results["summary"].values()
                                               for s in summ.values() if isinstance(s, dict))]
    if gold_keys:
        lines += ["", "## At matched reward (evaluation at the epoch each run first reached the target; "
                  "final evaluation if it never did)", "",
                  "| framework | arm | " + " | ".join(figures.metric_label(k.removeprefix("gold_")) for k in gold_keys)
                  + " |",
                  "|---|---|" + "---|" * len(gold_keys)]
        for fw, summ in results["summary"].items():
            for arm in spec.arms_for(fw):
                s = summ.get(arm)
                if s:
                    lines.append(f"| {fw} | {arm} | " + " | ".join(_ci(s["matched"].get(k)) for k in gold_keys) + " |")
    if results.get("sensitivity"):
        lines += ["", "## Sensitivity to the target (secondary; mean epochs over seeds, censored counted as the budget)",
                  "", "| target gain | framework | arm | mean epochs (censored) | paired speed-ups |", "|---|---|---|---|---|"]
        for gain, per_fw in results["sensitivity"].items():
            for fw, row in per_fw.items():
                for arm in spec.arms_for(fw):
                    if arm not in row:
                        continue
                    sps = ", ".join(f"vs {k.split('_vs_', 1)[1]}: {_pct(v)}" for k, v in row.items()
                                    if k.startswith(f"speedup_{arm}_vs_"))
                    lines.append(f"| +{gain} | {fw} | {arm} | {row[arm]['mean']:.2f} ({row[arm]['censored']} cens.) | "
                                 f"{sps or '–'} |")
    if results.get("plots"):
        lines += ["", "## Plots", ""]
        for name, path in results["plots"].items():
            lines += [f"![{name}]({path})", ""]
    lines += ["## Runs", "", "| run | epochs | epochs to target ↓ | matched epoch | mean gain ↑ | s/epoch ↓ |",
              "|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['run']} | {r['epochs_done']}{' (incomplete)' if r['incomplete'] else ''} | "
                     f"{r['epochs_to_target'] if r['epochs_to_target'] is not None else 'never'} | "
                     f"{_num(r['matched_epoch'], '{}')} | {_num(r['mean_gain'], '{:+.4f}')} | "
                     f"{_num(r.get('time_per_epoch_s'), '{:.1f}')} |")
    return "\n".join(lines) + "\n"


def _seed_text(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(map(str, seeds))


# ---------------------------------------------------------------------------- command line

def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``pcpo bench`` (also ``python -m pcpo.eval.bench``)."""
    p.add_argument("--config", default=None, metavar="BENCH.yaml", help="bench settings (arms, seeds, target, ...); "
                   "with --report-only, default OUT/bench.json (the settings recorded when the matrix ran)")
    p.add_argument("--out", default="benchmarks/bench", help="output directory: summaries/, results, plots")
    p.add_argument("--work", default=None, metavar="DIR", help="where the run directories go (WORK/runs/...; "
                   "default --out); not needed for the report")
    p.add_argument("--seeds", type=seeds_arg, default=None, help=f"seeds: {SEEDS_HELP} (default: the bench file's)")
    p.add_argument("--frameworks", default=None, help="comma list of ddpo,dancegrpo,flowgrpo")
    p.add_argument("--objectives", default=None, help="comma list of clipped,log_hinge,pcpo (with arms: arm names)")
    p.add_argument("--arms", default=None, help="comma list of the bench file's arms to run / report")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the bench file's)")
    p.add_argument("--target", type=float, default=None, help="target value of the metric")
    p.add_argument("--metric", default=None, help="record key for epochs-to-target (default eval_reward_mean)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--resume", action="store_true", help="skip finished runs, continue partial ones")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained at once, one process each (default 1; give each run threads=1 on a small CPU)")
    p.add_argument("--aggregate-only", action="store_true", help="only rewrite results from summaries and run dirs")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild every table, number and plot from OUT/summaries alone (no run directories)")
    p.add_argument("--commit", action="store_true",
                   help="git add + commit each run's summary as soon as it is written (explicit paths only)")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="e.g. 2h30m, 90m: start no run that is not expected to finish within this time (the arm's "
                        "mean wall time so far, scaled by the epochs left after its checkpoint); the runs in flight "
                        "finish and the command ends, leaving nothing half-trained when the time is up")
    p.add_argument("--protocol", action="append", default=[], metavar="FILE",
                   help="a pre-registration file (repeatable or comma list, e.g. PROTOCOL.md and the bench file): "
                        "the report's Provenance section checks from git that it was committed before every "
                        "summary and lists its later amendments with the summaries already committed then")


def run_bench(args) -> int:
    report_only = getattr(args, "report_only", False)
    out = Path(args.out)
    config = args.config
    if report_only and config is None:
        if not (out / "bench.json").is_file():
            raise ValueError(f"--report-only: {out} has no bench.json; pass the bench file with --config")
        config = str(out / "bench.json")
    arms = getattr(args, "arms", None)
    objectives = args.objectives or arms
    spec = load_bench_spec(
        config, seeds=args.seeds, epochs=args.epochs,
        frameworks=args.frameworks.split(",") if args.frameworks else None,
        objectives=objectives.split(",") if objectives else None,
        target=args.target, metric=args.metric, workers=getattr(args, "workers", None),
    )
    settings = spec
    if not report_only and (args.frameworks or objectives):  # bench.json records the whole matrix
        settings = load_bench_spec(config, seeds=args.seeds, epochs=args.epochs, target=args.target,
                                   metric=args.metric, workers=getattr(args, "workers", None))
    if args.set:
        spec.set = list(spec.set) + list(args.set)
        if settings is not spec:
            settings.set = list(settings.set) + list(args.set)
    work = Path(args.work) if getattr(args, "work", None) else None
    out.mkdir(parents=True, exist_ok=True)
    # the command line as typed, when this process is `pcpo bench ...` (not a caller of main(argv))
    cmd = "pcpo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    budget = getattr(args, "time_budget", None)
    budget_s = parse_duration(budget) if budget is not None else None
    protocol = [f for a in getattr(args, "protocol", None) or [] for f in a.split(",") if f]
    prov = None
    if protocol:  # checked before any run: a wrong path is a one-line error, not a lost matrix
        from .provenance import protocol_provenance

        prov = protocol_provenance(out, protocol)
        prov["registered_comparisons"] = registered_comparisons(prov.pop("registered_files"))
    if report_only:
        res = report(spec, out, collect_summaries(spec, out, from_runs=False), provenance=prov,
                     report_command=cmd)
    else:
        if cmd and not (out / "command.txt").is_file():
            (out / "command.txt").write_text(cmd + "\n")
        if not args.aggregate_only:
            run_matrix(spec, out, resume=args.resume, work=work, commit=getattr(args, "commit", False),
                       settings=settings, time_budget_s=budget_s, command=cmd)
        if protocol:  # summaries committed by this run
            from .provenance import protocol_provenance

            prov = protocol_provenance(out, protocol)
            prov["registered_comparisons"] = registered_comparisons(prov.pop("registered_files"))
        res = aggregate(spec, out, work=work, provenance=prov)
    _print_summary(res, spec)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}", flush=True)
    return 0


def registered_comparisons(files: dict[str, str]) -> list[str] | None:
    """The comparisons ("framework/arm-vs-reference") of the first bench file among ``files`` ({path: text}, the
    protocol's files as registered); ``None`` if none is a bench file. A comparison outside the list was added
    after the first result: the report labels it exploratory."""
    import tempfile

    for rel, text in files.items():
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / Path(rel).name
            f.write_text(text)
            try:
                spec = load_bench_spec(str(f))
            except ValueError:  # another data file of the protocol, not a bench file
                continue
        return sorted(f"{fw}/{arm}-vs-{ref}" for fw in spec.frameworks for arm, ref in spec.comparisons(fw))
    return None


def _print_summary(res: dict, spec: BenchSpec) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="epochs to target (mean [95% CI])")
    for c in ("framework", "arm", "n", "epochs", "censored", "mean gain"):
        t.add_column(c)
    for fw, summ in res["summary"].items():
        for arm in spec.arms_for(fw):
            s = summ.get(arm)
            if s:
                t.add_row(fw, arm, str(s["n"]), _ci((s["ett_mean"], *s["ett_ci"])), str(s["censored"]),
                          _ci(s.get("mean_gain")))
    Console(width=120).print(t)
    if res.get("comparisons"):
        t = Table(title="decisions (paired mean-gain difference, pre-registered rule)")
        for c in ("comparison", "n", "Δ mean gain", "decision", "seeds needed"):
            t.add_column(c)
        for name, c in res["comparisons"].items():
            d = c["primary"]
            t.add_row(name, f"{c['n']} of {c['planned_seeds']}" if c.get("interim") else str(c["n"]),
                      _ci((d["mean"], d["low"], d["high"])),
                      ("interim: " if c.get("interim") else "") + d["label"],
                      _num(d["seeds_needed"], "{}"))
        Console(width=120).print(t)


def main(argv: list[str] | None = None) -> int:
    """``python -m pcpo.eval.bench ...``: the same command as ``pcpo bench``."""
    p = argparse.ArgumentParser(prog="pcpo bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_bench(args)
    except ValueError as e:
        print(f"pcpo bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
