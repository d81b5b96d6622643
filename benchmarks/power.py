"""Seeds and compute for a decisive benchmark, from the paired differences of an existing matrix.

For every framework and comparison (PCPO − clipped, the primary one; PCPO − log-hinge), from the old
matrix's per-run primary metric (mean held-out gain over the run, ``mean_gain`` in its ``results.json``):

* ``g_B``: the reference arm's mean gain over seeds; the wanted half-width is ``margin × g_B``;
* ``sd``: the sd of the paired (same-seed) differences;
* ``n``: the smallest number of seeds whose 95 % t-interval half-width ``t_{n−1} sd/√n`` is at most the
  wanted one (``pcpo.eval.stats.seeds_for_half_width``), under four assumptions on how ``sd`` carries over
  to the decisive batch: unchanged (conservative), variance ∝ 1/prompts per epoch, variance ∝
  1/trajectories per epoch, and unchanged but at the 80 % upper confidence bound of ``sd`` (the old ``sd``
  rests on few seeds).

It also turns the old matrix's measured seconds per epoch into the decisive protocol's CPU cost: training
time is linear in the trajectories per epoch, and the held-out evaluation (not in ``time_s``) is priced
per denoiser row from the same epochs, with the update/rollout cost ratio measured in
``benchmarks/results/epoch_cost.json``.

    python benchmarks/power.py                     # bench-world results -> benchmarks/power.md
    python benchmarks/power.py --results R.json --bench B.yaml --out power.md --margin 0.3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from scipy import stats

from pcpo.eval.bench import load_bench_spec
from pcpo.eval.stats import seeds_for_half_width, t_half_width

HERE = Path(__file__).resolve().parent
# trained (sample, step) pairs per trajectory of each framework's timestep selection (benchmarks/RESULTS.md,
# "Setup": all 50 DDIM steps; drop last + random 60 % = 9 of 15; first 99 % = 9 of 10)
TRAINED_STEPS = {"ddpo": 50, "dancegrpo": 9, "flowgrpo": 9}
HELDOUT_PROMPTS = 8   # the embedded world's held-out split


def config(fw: str, overrides: list[str]):
    """The resolved run config of a framework's shipped config under ``overrides``."""
    from pcpo.trainer.config import load_config

    return load_config(fw, [o for o in overrides if not o.startswith(("seed=", "epochs="))])


def batch(fw: str, overrides: list[str]) -> tuple[int, int]:
    """(prompts per epoch, trajectories per epoch)."""
    d = config(fw, overrides).data
    return d.prompts_per_epoch, d.prompts_per_epoch * d.group_size


def sd_upper(sd: float, n: int, level: float = 0.8) -> float:
    """One-sided ``level`` upper confidence bound of a normal sd estimated from ``n`` values."""
    return sd * math.sqrt((n - 1) / stats.chi2.ppf(1 - level, n - 1))


def power_table(results: dict, new_overrides: dict, margin: float = 0.3, confidence: float = 0.95) -> list[dict]:
    """One row per (framework, comparison) of the old matrix: sd of paired differences and seeds needed."""
    spec = results["spec"]
    runs = {(r["framework"], r["objective"], r["seed"]): r for r in results["runs"] if not r.get("incomplete")}
    rows = []
    for fw in spec["frameworks"]:
        old_ov = list(spec.get("set") or []) + list((spec.get("framework_set") or {}).get(fw, []))
        (p0, b0), (p1, b1) = batch(fw, old_ov), batch(fw, new_overrides.get(fw, []))
        for arm, ref in (("pcpo", "clipped"), ("pcpo", "log_hinge")):
            seeds = sorted(s for (f, o, s) in runs if f == fw and o == arm and (fw, ref, s) in runs)
            d = [runs[(fw, arm, s)]["mean_gain"] - runs[(fw, ref, s)]["mean_gain"] for s in seeds]
            if len(d) < 2:
                continue
            g = statistics.mean(runs[(fw, ref, s)]["mean_gain"] for s in seeds)
            sd = statistics.stdev(d)
            h = margin * g
            sds = {"conservative": sd, "prompts": sd * math.sqrt(p0 / p1), "trajectories": sd * math.sqrt(b0 / b1),
                   "sd_ucb80": sd_upper(sd, len(d))}
            rows.append({
                "framework": fw, "comparison": f"{arm}-vs-{ref}", "seeds": seeds, "diffs": d,
                "mean_diff": statistics.mean(d), "ref_gain": g, "sd": sd, "half_width_wanted": h,
                "half_width_now": t_half_width(sd, len(d), confidence),
                "batch_old": [p0, b0], "batch_new": [p1, b1],
                "n": {k: seeds_for_half_width(v, h, confidence) for k, v in sds.items()},
                "sd_scenarios": sds,
            })
    return rows


def cost_table(results: dict, bench, epoch_cost: dict) -> list[dict]:
    """Per framework: CPU seconds per epoch and per run of the decisive protocol, and its total."""
    spec = results["spec"]
    k = ((epoch_cost["batched"]["update_s"] / epoch_cost["trained_pairs_per_epoch"])
         / (epoch_cost["batched"]["rollout_s"] / (epoch_cost["trajectories_per_epoch"] * epoch_cost["sampler_steps"])))
    cells = bench.cells()
    rows = []
    for fw in bench.frameworks:
        old_ov = list(spec.get("set") or []) + list((spec.get("framework_set") or {}).get(fw, []))
        new_ov = list(bench.set) + list(bench.framework_set.get(fw, []))
        steps = config(fw, old_ov).sampler.steps
        _, b0 = batch(fw, old_ov)
        _, b1 = batch(fw, new_ov)
        t_old = statistics.median(r["time_per_epoch_s"] for r in results["runs"]
                                  if r["framework"] == fw and r.get("time_per_epoch_s"))
        unit = t_old / (b0 * steps + k * b0 * TRAINED_STEPS[fw])   # seconds per rollout denoiser row
        t_train = t_old * b1 / b0
        new = config(fw, new_ov)
        eval_rows = HELDOUT_PROMPTS * new.eval.images_per_prompt * (new.sampler.eval_steps or new.sampler.steps)
        t_eval = unit * eval_rows
        n_eval = 1 + (bench.epochs // new.eval.every if new.eval.every else 1)
        run_s = bench.epochs * t_train + n_eval * t_eval
        per_arm = {a: sum(1 for f, x, _ in cells if f == fw and x == a) for a in bench.arms_for(fw)}
        n_runs = sum(per_arm.values())
        rows.append({"framework": fw, "old_s_per_epoch": t_old, "old_trajectories": b0, "new_trajectories": b1,
                     "train_s_per_epoch": t_train, "eval_s": t_eval, "evals_per_run": n_eval,
                     "run_min": run_s / 60, "runs": n_runs, "core_h": n_runs * run_s / 3600,
                     "runs_per_arm": per_arm, "core_h_per_arm": {a: c * run_s / 3600 for a, c in per_arm.items()},
                     "update_over_rollout_row": k})
    return rows


def markdown(prow: list[dict], crow: list[dict], margin: float, bench=None, source: str = "") -> str:
    L = ["# Seeds and compute for the decisive benchmark", "",
         f"Generated by `python benchmarks/power.py` from `{source}` (paired by seed). Primary metric per run: "
         "mean held-out gain over the run `G = (1/E) Σ_e (r_e − r_0)`; wanted: a 95 % t-interval of the mean "
         f"paired difference no wider than ±{100 * margin:.0f} % of the reference arm's mean gain `g_B`.", "",
         "How the sd of the paired differences carries over to the decisive batch (the old matrix ran 8–16 "
         "trajectories per epoch):", "",
         "- **conservative**: unchanged;",
         "- **prompts**: variance ∝ 1 / prompts per epoch (a seed decides which prompts each epoch sees, the "
         "dominant source of spread in the old matrix);",
         "- **trajectories**: variance ∝ 1 / trajectories per epoch (gradient noise);",
         "- **sd 80 % UCB**: unchanged, at the one-sided 80 % upper confidence bound of an sd estimated from "
         "the old seeds (σ̂·√((n−1)/χ²_{0.2, n−1})).", "",
         "`g_B` is the old 10-epoch value; longer runs with larger batches are expected to gain more, which "
         "would lower every `n` below (not assumed).", "",
         "| framework | comparison | old seeds | Δ per seed | g_B | wanted half-width | sd of Δ | half-width now | "
         "prompts/epoch old→new | trajectories/epoch old→new | n conservative | n prompts | n trajectories | "
         "n sd 80 % UCB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in prow:
        n = r["n"]
        L.append(f"| {r['framework']} | {r['comparison']} | {len(r['seeds'])} | "
                 + ", ".join(f"{x:+.4f}" for x in r["diffs"])
                 + f" | {r['ref_gain']:.4f} | {r['half_width_wanted']:.4f} | {r['sd']:.4f} | {r['half_width_now']:.4f} | "
                 f"{r['batch_old'][0]}→{r['batch_new'][0]} | {r['batch_old'][1]}→{r['batch_new'][1]} | "
                 + " | ".join(str(n[k]) if n[k] is not None else "–"
                              for k in ("conservative", "prompts", "trajectories", "sd_ucb80")) + " |")
    if crow:
        L += ["", f"## CPU cost of the protocol ({bench.epochs} epochs, the bench file's arms and seeds)", "",
              "Training seconds per epoch scale with the trajectories per epoch from the old matrix's median "
              "`time_s` (2 runs at once on 2 cores, 1 thread each). Evaluation (not in `time_s`) is priced per "
              "denoiser row from the same epochs: seconds per row = old epoch / (rollout rows + "
              f"{crow[0]['update_over_rollout_row']:.2f} × trained pairs), the update/rollout cost per row from "
              "`benchmarks/results/epoch_cost.json`. Window arms (fewer trained steps) are counted at full "
              "cost, an upper bound.", "",
              "| framework | old s/epoch (trajectories) | train s/epoch (trajectories) | eval s | evaluations/run | "
              "min/run | runs | core-hours |", "|---|---|---|---|---|---|---|---|"]
        for c in crow:
            L.append(f"| {c['framework']} | {c['old_s_per_epoch']:.1f} ({c['old_trajectories']}) | "
                     f"{c['train_s_per_epoch']:.1f} ({c['new_trajectories']}) | {c['eval_s']:.1f} | "
                     f"{c['evals_per_run']} | {c['run_min']:.1f} | {c['runs']} | {c['core_h']:.1f} |")
        L += ["", "Core-hours by arm (runs):", ""]
        for c in crow:
            L.append(f"- {c['framework']}: " + ", ".join(f"{a} {h:.1f} ({c['runs_per_arm'][a]})"
                                                         for a, h in c["core_h_per_arm"].items()))
        tot = sum(c["core_h"] for c in crow)
        L += ["", f"Total: {tot:.0f} core-hours; {tot / bench.workers:.0f} h wall-clock with "
              f"{bench.workers} runs at once (one core each)."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(HERE / "bench-world" / "results.json"),
                    help="results.json of the matrix whose paired differences are used")
    ap.add_argument("--bench", default=str(HERE / "bench-decisive.yaml"),
                    help="the decisive bench file (its batch, evaluation, arms and seeds); '' to skip the cost")
    ap.add_argument("--epoch-cost", default=str(HERE / "results" / "epoch_cost.json"))
    ap.add_argument("--margin", type=float, default=None, help="default: the bench file's margin (else 0.3)")
    ap.add_argument("--out", default=str(HERE / "power.md"), help="markdown file ('' = print only)")
    ap.add_argument("--json", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"power: --results: cannot read {args.results} ({e})", file=sys.stderr)
        return 2
    bench = None
    if args.bench:
        try:
            bench = load_bench_spec(args.bench)
        except ValueError as e:
            print(f"power: --bench: {e}", file=sys.stderr)
            return 2
    margin = args.margin if args.margin is not None else (bench.margin if bench else 0.3)
    new_ov = ({fw: list(bench.set) + list(bench.framework_set.get(fw, [])) for fw in bench.frameworks}
              if bench else {})
    prow = power_table(results, new_ov, margin)
    crow = cost_table(results, bench, json.loads(Path(args.epoch_cost).read_text())) if bench else []
    try:
        source = str(Path(args.results).resolve().relative_to(HERE.parent))
    except ValueError:
        source = Path(args.results).name
    md = markdown(prow, crow, margin, bench, source)
    print(md)
    if args.out:
        Path(args.out).write_text(md)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"power": prow, "cost": crow}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
