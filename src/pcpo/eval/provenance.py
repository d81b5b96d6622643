"""Provenance of a pre-registered benchmark, read from git: was the protocol committed before every result?

A pre-registered matrix is only as good as the order of its commits: the protocol (its text and the bench file)
first, then each run's summary (``pcpo bench --commit`` commits one per finished run), and any amendment before
the runs it affects. :func:`protocol_provenance` reads that order from the repository's history so that a report
can state it instead of asking the reader to trust it:

* the *registration*: the protocol files' last commit before the first summary's (earlier ones are drafts);
* for every summary under ``OUT/summaries``, the commit that added it, and whether that commit comes after the
  registration (a summary added before it, or never committed, is listed by name);
* every later commit that changed a protocol file (an *amendment*), with the summaries per framework that were
  already committed when it landed, so that a reader can check it came before the runs it changes;
* the registered text of the bench file, from which the report tells the registered comparisons from those
  added after the first result (exploratory).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

_SEP = "\x1f"


def run_git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``git ARGS`` in ``cwd``, output captured (the bench's commits and this module's reads)."""
    return subprocess.run(["git", *args], cwd=str(cwd), capture_output=True, text=True)


def git_toplevel(path: Path, option: str) -> Path:
    """The work tree holding ``path`` (created if missing); ``option`` (``--commit``, ``--protocol``), which needs
    one, is named in the one-line error."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = run_git(["rev-parse", "--show-toplevel"], path)
    except FileNotFoundError:
        raise ValueError(f"{option}: git is not installed; drop {option}") from None
    if r.returncode != 0:
        raise ValueError(f"{option}: {path} is not inside a git work tree; drop {option} or choose an --out "
                         "inside a repository")
    return Path(r.stdout.strip()).resolve()


def _git(top: Path, *args: str) -> str:
    r = run_git(list(args), top)
    if r.returncode != 0:
        raise ValueError(f"--protocol: git {args[0]} failed in {top}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def _commit(line: str) -> dict:
    sha, date, subject = line.split(_SEP, 2)
    return {"commit": sha, "date": date, "subject": subject}


def protocol_provenance(out: str | Path, protocol: list[str | Path]) -> dict:
    """The commit order of ``protocol`` (files; paths relative to the working directory or absolute) and the
    summaries under ``out/summaries/<framework>/<arm>/<seed>.json``. Raises ValueError (one line) when a file is
    missing or was never committed, or when git cannot answer."""
    out = Path(out).resolve()
    top = git_toplevel(out, "--protocol")
    paths = []
    for p in protocol:
        p = Path(p).resolve()
        if not p.is_file():
            raise ValueError(f"--protocol: {p} does not exist; pass the protocol's files (e.g. PROTOCOL.md and the "
                             "bench file)")
        try:
            paths.append(str(p.relative_to(top)))
        except ValueError:
            raise ValueError(f"--protocol: {p} is outside the repository of {out}") from None
    fmt = f"--format=%H{_SEP}%cI{_SEP}%s"
    changes = [_commit(ln) for ln in _git(top, "log", "--reverse", fmt, "--", *paths).splitlines() if ln]
    if not changes:
        raise ValueError(f"--protocol: {', '.join(paths)} has no commit yet; commit the protocol before its runs")
    # the commit that added each summary (the oldest, if it was removed and added again)
    sums_rel = str((out / "summaries").relative_to(top)) if (out / "summaries").is_dir() else None
    added: dict[str, str] = {}
    order: list[str] = []
    sha = None
    log = _git(top, "log", "--reverse", "--diff-filter=A", "--name-only", "--format=@%H", "--",
               sums_rel).splitlines() if sums_rel else []
    for ln in log:
        if ln.startswith("@"):
            sha = ln[1:]
            order.append(sha)
        elif ln.endswith(".json") and sha:
            added.setdefault(ln, sha)
    files = sorted(str(p.relative_to(top)) for p in (out / "summaries").glob("*/*/*.json")) if sums_rel else []
    # registration: the protocol as it stood when the first result landed (earlier commits of it are drafts);
    # with no result yet, its newest commit
    if order:
        known = set(_git(top, "rev-list", order[0]).split())
        prior = [c for c in changes if c["commit"] in known]
    else:
        prior = changes
    if not prior:
        registered, drafts, amendments = None, 0, changes
        after: set[str] = set()
    else:
        registered, drafts = prior[-1], len(prior) - 1
        amendments = changes[len(prior):]
        after = set(_git(top, "rev-list", "HEAD", f"^{registered['commit']}").split())  # since registration
    before = [f for f in files if f in added and added[f] not in after]
    uncommitted = [f for f in files if f not in added]
    rows = []
    for a in amendments:
        known = set(_git(top, "rev-list", a["commit"]).split())  # the amendment and everything before it
        per_fw: dict[str, int] = {}
        for f, c in added.items():
            if c in known and f in files:
                fw = Path(f).parts[-3]
                per_fw[fw] = per_fw.get(fw, 0) + 1
        rows.append({**a, "summaries_before": dict(sorted(per_fw.items()))})
    return {
        "protocol": paths, "registered": registered, "drafts": drafts, "amendments": rows,
        "registered_files": _registered_files(top, registered, paths),
        "summaries": len(files), "committed_after_registration": sum(1 for f in files if added.get(f) in after),
        "committed_before_registration": before, "uncommitted": uncommitted,
        "ok": registered is not None and not before,
    }


def _registered_files(top: Path, registered: dict | None, paths: list[str]) -> dict[str, str]:
    """The text of each YAML/JSON file among ``paths`` as it stood at the registration (a bench file among them
    tells which comparisons were registered: :func:`pcpo.eval.bench.registered_comparisons`)."""
    if registered is None:
        return {}
    out = {}
    for rel in paths:
        if rel.endswith((".yaml", ".yml", ".json")):
            r = run_git(["show", f"{registered['commit']}:{rel}"], top)
            if r.returncode == 0:  # else the file did not exist yet at the registration
                out[rel] = r.stdout
    return out


def provenance_markdown(p: dict) -> list[str]:
    """The report's "Provenance" section."""
    r = p["registered"]
    files = ", ".join(f"`{x}`" for x in p["protocol"])
    if r is None:
        head = f"**Protocol ({files}) first committed after the first result**: it is not a pre-registration."
    else:
        head = (f"Protocol ({files}) as registered: {r['commit'][:7]} ({r['date']}), its last commit before the "
                f"first result" + (f" ({p['drafts']} earlier draft commits)" if p["drafts"] else "")
                + f": {r['subject'][:120]}")
    lines = ["## Provenance (from git)", "", head, "",
             f"- Summaries: {p['summaries']}; committed after the registration: {p['committed_after_registration']}; "
             f"before it: {len(p['committed_before_registration'])}; not committed: {len(p['uncommitted'])}."]
    for f in p["committed_before_registration"]:
        lines.append(f"  - **committed before the protocol**: `{f}`")
    for f in p["uncommitted"][:20]:
        lines.append(f"  - not committed: `{f}`")
    if len(p["uncommitted"]) > 20:
        lines.append(f"  - … and {len(p['uncommitted']) - 20} more not committed")
    if p.get("registered_comparisons") is not None:
        lines.append(f"- Comparisons in the registered bench file: {len(p['registered_comparisons'])}; any other "
                     "comparison below is labelled exploratory (added after the first result).")
    if p["amendments"]:
        lines += ["", "| later change to the protocol | date | summaries already committed then | subject |",
                  "|---|---|---|---|"]
        for a in p["amendments"]:
            before = ", ".join(f"{fw} {n}" for fw, n in a["summaries_before"].items()) or "none"
            lines.append(f"| {a['commit'][:7]} | {a['date']} | {before} | {a['subject'][:100]} |")
    else:
        lines += ["", "No change to the protocol since its registration."]
    lines.append("")
    return lines
