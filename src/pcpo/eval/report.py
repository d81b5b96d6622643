"""``pcpo report RUN_DIR``: one self-contained HTML page about a training run.

Everything is embedded (figures and image grids as base64 ``data:`` URIs, inline CSS, no scripts, no
network), so the file can be mailed, attached to an issue or opened offline. It reads only files of the
run directory (``config.yaml``, ``metrics.jsonl``, ``credit.json``, ``images/epoch-*.png``,
``eval.json`` if ``pcpo eval`` wrote one); no model is loaded.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import yaml

from .. import figures

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} .muted{color:#777;font-size:12px}
.fig{margin:6px 0} .fig img{max-width:100%} .grids{display:flex;flex-wrap:wrap;gap:14px}
.grids figure{margin:0} .grids figcaption{font-size:12px;color:#555;text-align:center}
img.pix{image-rendering:pixelated} pre{background:#f7f7f7;padding:8px;font-size:11px;overflow:auto;max-height:320px}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "", zoom: int = 1) -> str:
    c = f' class="{cls}"' if cls else ""
    size = ""
    if zoom != 1:
        from io import BytesIO

        from PIL import Image

        w, h = Image.open(BytesIO(png)).size
        if w > 200:  # already large (many images per row): native size
            zoom = 1
        size = f' width="{w * zoom}" height="{h * zoom}"'
    return f'<img{c}{size} alt="{html.escape(alt)}" src="{_data_uri(png)}">'


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for ln in path.read_text().splitlines():
        if ln.strip():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:  # a line being written by a live run
                continue
    return out


def build_report(run_dir: str | Path, max_grids: int = 8) -> str:
    """The report of ``run_dir`` as an HTML string."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir}: not a pcpo run directory (no config.yaml)")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    records = read_records(run_dir)
    parts: list[str] = []
    sampler, train = cfg.get("sampler", {}), cfg.get("train", {})
    title = (f"{cfg.get('model', {}).get('family', '?')} · {sampler.get('name', '?')} {sampler.get('steps', '?')} steps · "
             f"objective {train.get('objective', '?')}")
    parts.append(f"<h1>pcpo run report: {html.escape(run_dir.name)}</h1>")
    parts.append(f'<div class="muted">{html.escape(title)} · {len([r for r in records if r.get("epoch", 0) > 0])} '
                 f'of {cfg.get("epochs", "?")} epochs logged</div>')

    # ---- summary
    train_recs = [r for r in records if "reward_mean" in r]
    eval_recs = [r for r in records if "eval_reward_mean" in r]
    rows = []
    if eval_recs:
        rows.append(("held-out reward (first → last eval)", eval_recs[0]["eval_reward_mean"], eval_recs[-1]["eval_reward_mean"]))
    if train_recs:
        rows.append(("training reward (first → last epoch)", train_recs[0]["reward_mean"], train_recs[-1]["reward_mean"]))
        rows.append(("clip fraction (first → last epoch)", train_recs[0].get("clipfrac"), train_recs[-1].get("clipfrac")))
    for k in sorted({k for r in eval_recs for k in r if k.startswith("gold_")}):
        have = [r for r in eval_recs if k in r]
        rows.append((k.removeprefix("gold_"), have[0][k], have[-1][k]))
    if rows:
        parts.append("<h2>Summary</h2><table><tr><th class=l>metric</th><th>start</th><th>end</th></tr>")
        parts += [f"<tr><td class=l>{html.escape(figures.metric_label(n))}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td></tr>"
                  for n, a, b in rows]
        parts.append(f"</table><p>{figures.DIRECTION_LEGEND}</p>")
    ev_path = run_dir / "eval.json"
    if ev_path.is_file():
        try:
            ev = json.loads(ev_path.read_text())
            parts.append("<h2>pcpo eval (trained vs base)</h2>" + _eval_table(ev))
        except (json.JSONDecodeError, KeyError, TypeError):
            pass

    # ---- curves
    parts.append("<h2>Reward</h2>")
    if records:
        parts.append(f'<div class="fig">{_img(figures.to_png(figures.fig_reward_curves(records)), "reward curves")}</div>')
        gold = figures.fig_gold(records)
        if gold is not None:
            parts.append(f'<div class="fig">{_img(figures.to_png(gold), "gold metrics")}</div>')
    else:
        parts.append("<p>No metrics logged yet.</p>")

    # ---- per-step behaviour
    parts.append("<h2>Per-timestep behaviour</h2>")
    parts.append('<p class="muted">Fraction of (sample, step) pairs whose ratio/hinge is clipped, and the mean '
                 "|log ρ| under the sampler's native weights, per sampling step and epoch. Blank cells: steps not "
                 "trained in that epoch.</p>")
    ep, mat = figures.step_matrix(records, "clipfrac_per_step")
    parts.append(f'<div class="fig">{_img(figures.to_png(figures.fig_heatmap(ep, mat, "clip fraction per step", "clip fraction")), "clip fraction heat map")}</div>')
    ep, mat = figures.step_matrix(records, "abs_log_ratio_per_step")
    parts.append(f'<div class="fig">{_img(figures.to_png(figures.fig_heatmap(ep, mat, "|log ρ| per step (native weights)", "|log ρ|", log=True)), "log ratio heat map")}</div>')

    # ---- credit
    credit_path = run_dir / "credit.json"
    if credit_path.is_file():
        table = json.loads(credit_path.read_text())
        parts.append("<h2>Timestep credit: native vs PCPO</h2>")
        parts.append(f'<div class="fig">{_img(figures.to_png(figures.fig_credit(table)), "credit weights")}</div>')

    # ---- images
    grids = sorted((run_dir / "images").glob("epoch-*.png")) if (run_dir / "images").is_dir() else []
    if grids:
        if len(grids) > max_grids:  # evenly spaced, always the first and the last
            idx = sorted({round(i * (len(grids) - 1) / (max_grids - 1)) for i in range(max_grids)})
            grids = [grids[i] for i in idx]
        parts.append("<h2>Held-out samples over training</h2><div class=grids>")
        for g in grids:
            epoch = g.stem.split("-")[-1].lstrip("0") or "0"
            parts.append(f"<figure>{_img(g.read_bytes(), g.name, 'pix', zoom=2)}<figcaption>epoch {epoch}</figcaption></figure>")
        parts.append("</div>")

    # ---- config
    parts.append("<h2>Configuration</h2><pre>" + html.escape(yaml.safe_dump(cfg, sort_keys=False)) + "</pre>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>pcpo report: {html.escape(run_dir.name)}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def _eval_table(ev: dict) -> str:
    models = [m for m in ("base", "trained") if m in ev]
    keys = sorted({k for m in models for k, v in ev[m].items() if isinstance(v, (int, float))})
    out = ["<table><tr><th class=l>metric</th>" + "".join(f"<th>{m}</th>" for m in models) + "</tr>"]
    for k in keys:
        out.append(f"<tr><td class=l>{html.escape(figures.metric_label(k))}</td>"
                   + "".join(f"<td>{_fmt(ev[m].get(k))}</td>" for m in models) + "</tr>")
    out.append(f"</table><p>{figures.DIRECTION_LEGEND}</p>")
    return "".join(out)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    text = build_report(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
