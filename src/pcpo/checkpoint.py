"""Verified, crash-safe checkpoints and metrics log: safetensors + JSON only, every write atomic.

Layout of ``RUN_DIR/checkpoints/epoch-000012/``::

    model.safetensors      trained weights (LoRA adapters or the full denoiser)
    optimizer.safetensors  optimizer tensors (``state.<param>.<name>``)
    rng.safetensors        torch CPU (and CUDA) RNG states
    state.json             epoch, optimizer param groups, advantage-estimator state, counters,
                           python/numpy RNG states
    manifest.json          size and SHA-256 of each file above, written last

**Writing.** :func:`write_state_dir` writes every file into a temporary sibling folder
``.tmp-<name>-<pid>``, fsyncs each, writes ``manifest.json`` last, fsyncs the folder and renames it into
place, so a killed writer leaves the previous checkpoint or the new one, never half of one. A folder
that is removed (``keep_last`` pruning, or the old version of a folder being replaced) is first renamed
to ``.del-<name>-<pid>`` and only then deleted, so a kill during the deletion leaves a folder that is
recognisably garbage, never a half-deleted ``epoch-*`` that looks like a checkpoint.

**Reading.** :func:`verify_checkpoint` checks a folder against its manifest (each file present, its size,
its SHA-256) and that every safetensors header and ``state.json`` parse; anything wrong raises
:class:`CheckpointError` naming the file and the problem. :func:`find_resumable` returns the newest
checkpoint that verifies, with one warning line per newer one it skipped. :func:`load_checkpoint` loads
only a verified checkpoint and turns every read error into :class:`CheckpointError`.

**Checkpoints written before manifests existed** (no ``manifest.json``, and safetensors files without
the ``pcpo_manifest`` header entry that marks files written with one) are accepted when every required
file is present, every safetensors header parses and covers its file exactly (which catches a truncated
file) and ``state.json`` is a JSON object; byte flips inside their tensor data cannot be detected, and
:func:`find_resumable` says so in a warning line when it uses one. A folder whose safetensors carry the
marker but whose ``manifest.json`` is gone is damaged, not old, and fails verification.

**Stale folders.** :func:`clean_stale` (call it before this process writes into the run) removes
``.tmp-*`` folders whose writer (the pid in the name) is no longer running on this machine, leftover
``.del-*`` folders, and ``epoch-*`` folders with files missing that are older than the newest complete
checkpoint. A ``.tmp-*`` folder that holds a complete checkpoint (its manifest verifies) whose final
name does not exist — the writer was killed between writing it and renaming it — is renamed into place
instead of removed.

**Metrics log** (``metrics.jsonl``): :func:`append_record` writes one strict-JSON line per record
(NaN/inf become ``null`` and are named in the record's ``nonfinite`` list), flushed and fsynced;
:func:`read_records` drops a final line cut by a kill and reports any other bad line with the file and
line number; :func:`truncate_records` atomically keeps the records of epochs ``<= epochs_done`` (a log that needs no
change is not rewritten).

``state.json`` itself is Python's JSON (a NaN in, e.g., a pretrain loss history round-trips exactly), unlike
the metrics log, which other tools read.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import PcpoError

PREFIX = "epoch-"
MANIFEST = "manifest.json"
STATE = "state.json"
# The files every trainer and pretrain checkpoint holds (verify_checkpoint's default requirement).
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", STATE)
# Header entry of every safetensors file written together with a manifest.
MARKER_KEY, MARKER_VALUE = "pcpo_manifest", MANIFEST
MANIFEST_FORMAT = "pcpo-checkpoint-manifest/1"

_TMP_RE = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>\d+)$")
_DEL_RE = re.compile(r"^\.del-(?P<name>.+)-\d+(?:\.\d+)?$")
_OLD_RE = re.compile(r"^\.old-(?P<name>.+)-\d+$")  # the replaced folder of an older pcpo's writer
_EPOCH_RE = re.compile(rf"^{PREFIX}(\d+)$")

__all__ = [
    "CHECKPOINT_FILES", "PREFIX", "CheckpointError", "MetricsLogError", "append_record", "clean_stale",
    "clean_stale_dir", "discard_newer", "find_resumable", "list_checkpoints", "load_checkpoint",
    "optimizer_from_flat", "optimizer_to_flat", "prune_checkpoints", "read_records", "remove_dir", "rng_state",
    "save_checkpoint", "set_rng_state", "strict_record", "truncate_records", "verify_checkpoint",
    "write_state_dir",
]


class CheckpointError(PcpoError, ValueError):
    """A checkpoint file is missing or damaged; ``path`` is the file, ``problem`` what is wrong with it."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


class MetricsLogError(PcpoError, ValueError):
    """A line of a metrics log (other than a last line cut by a kill) is not a JSON record."""


# ---------------------------------------------------------------------------------- atomic writes

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: temporary sibling, fsync, ``os.replace``, fsync of the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata={MARKER_KEY: MARKER_VALUE})
    _fsync_file(path)


def remove_dir(path: Path) -> None:
    """Delete folder ``path`` recognisably: rename it to ``.del-<name>-<pid>`` first, then delete that.

    A kill during the deletion leaves a ``.del-*`` folder (removed by :func:`clean_stale_dir`), never a
    half-deleted folder under the original name.
    """
    path = Path(path)
    doomed = path.with_name(f".del-{path.name}-{os.getpid()}")
    n = 0
    while doomed.exists():
        n += 1
        doomed = path.with_name(f".del-{path.name}-{os.getpid()}.{n}")
    os.replace(path, doomed)
    _fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def write_state_dir(final: Path, tensors: dict[str, dict[str, torch.Tensor]], payload: dict) -> Path:
    """Write ``{name}.safetensors`` per entry of ``tensors``, ``state.json`` and ``manifest.json`` into
    ``final``, atomically (replacing an existing ``final``); returns ``final``.

    The files go into ``.tmp-<name>-<pid>`` beside ``final`` and are fsynced, the manifest (size and
    SHA-256 of each file) last; the folder is then renamed into place. An existing ``final`` is first
    renamed to ``.del-<name>-<pid>``; if the writer dies between the two renames, :func:`clean_stale_dir`
    renames the complete temporary folder into place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files = []
        for name, group in tensors.items():
            _save_tensors(group, tmp / f"{name}.safetensors")
            files.append(f"{name}.safetensors")
        with open(tmp / STATE, "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        files.append(STATE)
        manifest = {"format": MANIFEST_FORMAT,
                    "files": {n: {"size": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in files}}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # re-saving (e.g. the pretrain checkpoint, or an epoch after a resume)
        doomed = final.parent / f".del-{final.name}-{os.getpid()}"
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(final, doomed)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


# ---------------------------------------------------------------------------------- verification

def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except OSError as e:
        raise CheckpointError(path, f"unreadable ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"bad JSON in {what} ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _header(path: Path) -> dict:
    """The metadata of a safetensors file (parsing its header); CheckpointError if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except Exception as e:  # SafetensorError, OSError
        raise CheckpointError(path, f"unreadable safetensors header ({_one_line(e)})") from None


def _manifest_files(path: Path, manifest) -> dict[str, dict]:
    files = manifest.get("files") if isinstance(manifest, dict) else None
    ok = (isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict)
          and all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                  and "/" not in n and "\\" not in n and n not in ("", ".", "..") for n, v in files.items()))
    if not ok:
        raise CheckpointError(path / MANIFEST, f"not a pcpo checkpoint manifest (expected format {MANIFEST_FORMAT})")
    return files


def _check_contents(path: Path, names) -> list[dict]:
    """Every safetensors header and state.json parse; returns the headers' metadata."""
    metas = [_header(path / n) for n in names if n.endswith(".safetensors")]
    state = _read_json(path / STATE, STATE)
    if not isinstance(state, dict):
        raise CheckpointError(path / STATE, f"bad JSON in {STATE} (a JSON object was expected, got {type(state).__name__})")
    return metas


def verify_checkpoint(path: Path, required: tuple[str, ...] = CHECKPOINT_FILES) -> dict | None:
    """Check checkpoint folder ``path``; return its manifest, or ``None`` for a checkpoint written before
    manifests existed (then checked structurally only, see the module docstring).

    Raises :class:`CheckpointError` naming the first bad file and what is wrong with it: ``missing``,
    ``size mismatch``, ``checksum mismatch``, ``unreadable safetensors header``, ``bad JSON``, or not
    listed in the manifest. ``required`` are the files the checkpoint must hold (``state.json`` always).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "not a checkpoint folder (missing)")
    required = tuple(dict.fromkeys((*required, STATE)))
    mpath = path / MANIFEST
    if not mpath.exists():
        for n in required:
            if not (path / n).is_file():
                raise CheckpointError(path / n, "missing")
        names = sorted(set(required) | {p.name for p in path.glob("*.safetensors")})
        if any(m.get(MARKER_KEY) == MARKER_VALUE for m in _check_contents(path, names)):
            raise CheckpointError(mpath, "missing (the folder's files were written with one)")
        return None
    manifest = _read_json(mpath, MANIFEST)
    files = _manifest_files(path, manifest)
    for n in required:
        if n not in files:
            raise CheckpointError(path / n, f"not listed in {MANIFEST}")
    for n, entry in files.items():
        f = path / n
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f, "missing") from None
        if size != entry["size"]:
            raise CheckpointError(f, f"size mismatch ({size} bytes, {MANIFEST} says {entry['size']})")
        if _sha256(f) != entry["sha256"].lower():
            raise CheckpointError(f, f"checksum mismatch (SHA-256 differs from {MANIFEST})")
    _check_contents(path, list(files))
    return manifest


def _complete(path: Path, required: tuple[str, ...] = CHECKPOINT_FILES) -> bool:
    """Cheap check (no hashing): every file the checkpoint should hold is there (with its manifest size)."""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
        files = _manifest_files(path, manifest)
    except FileNotFoundError:
        return all((path / n).is_file() for n in (*required, STATE))
    except (OSError, ValueError, CheckpointError):
        return False
    if not all(n in files for n in (*required, STATE)):
        return False
    for n, entry in files.items():
        try:
            if (path / n).stat().st_size != entry["size"]:
                return False
        except OSError:
            return False
    return True


def _epoch_dirs(run_dir: Path) -> list[Path]:
    """Every ``epoch-<n>`` folder under ``run_dir/checkpoints``, oldest first (complete or not)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if _EPOCH_RE.match(p.name) and p.is_dir()]
    return sorted(dirs, key=lambda p: int(_EPOCH_RE.match(p.name).group(1)))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders with a ``state.json``, oldest first (``.tmp-*``/``.del-*`` folders are never
    listed). Not verified: use :func:`find_resumable` to choose one to resume from."""
    return [p for p in _epoch_dirs(run_dir) if (p / STATE).is_file()]


def find_resumable(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of ``run_dir`` that verifies (``None`` if none does), and one warning line per
    newer checkpoint skipped, e.g.
    ``checkpoints/epoch-000004/model.safetensors: checksum mismatch (...); using epoch-000003``.

    Using a checkpoint written before manifests existed adds a line saying its data is unchecked.
    """
    run_dir = Path(run_dir)
    bad: list[CheckpointError] = []
    found, legacy = None, False
    for p in reversed(_epoch_dirs(run_dir)):
        try:
            legacy = verify_checkpoint(p) is None
        except CheckpointError as e:
            bad.append(e)
            continue
        found = p
        break

    def rel(q: Path) -> str:
        try:
            return q.relative_to(run_dir).as_posix()
        except ValueError:
            return str(q)

    tail = f"using {found.name}" if found is not None else "no older intact checkpoint"
    warnings = [f"{rel(e.path)}: {e.problem}; {tail}" for e in bad]
    if found is not None and legacy:
        warnings.append(f"{rel(found)}: written without {MANIFEST} (older pcpo): its files parse, "
                        "but their data cannot be checked")
    return found, warnings


# ---------------------------------------------------------------------------------- stale folders

def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():  # not writing while cleaning: a folder with our pid is a previous process's
        return False
    if os.name != "posix":  # no cheap, harmless liveness probe: assume the writer may still run
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def clean_stale_dir(folder: Path, exclusive: bool = False, required: tuple[str, ...] = CHECKPOINT_FILES,
                    rel_to: Path | None = None) -> list[str]:
    """Clear what killed writers left in ``folder`` (a folder holding :func:`write_state_dir` outputs);
    returns one line per folder removed or recovered.

    - ``.tmp-<name>-<pid>`` whose pid is not a running process on this machine (or any, if
      ``exclusive``: the caller guarantees nobody else writes here): renamed to ``<name>`` if that does
      not exist and the folder verifies against its manifest, otherwise removed;
    - ``.del-*`` (folders being deleted), and ``.old-<name>-*`` of older pcpo versions when ``<name>`` exists.

    Call it before this process writes into ``folder``: a ``.tmp-*`` with this process's pid is taken
    for a previous process's.
    """
    folder = Path(folder)
    rel_to = Path(rel_to) if rel_to is not None else folder
    if not folder.is_dir():
        return []

    def rel(q: Path) -> str:
        try:
            return q.relative_to(rel_to).as_posix()
        except ValueError:
            return str(q)

    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_dir():
            continue
        if m := _TMP_RE.match(p.name):
            if not exclusive and _pid_alive(int(m.group("pid"))):
                continue
            final = p.with_name(m.group("name"))
            if not final.exists():
                try:
                    complete = verify_checkpoint(p, required) is not None
                except CheckpointError:
                    complete = False
                if complete:
                    os.replace(p, final)
                    _fsync_dir(folder)
                    out.append(f"{rel(p)}: complete checkpoint of a killed writer, renamed to {final.name}")
                    continue
            remove_dir(p)
            out.append(f"{rel(p)}: unfinished write of a stopped process, removed")
        elif _DEL_RE.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
            out.append(f"{rel(p)}: interrupted deletion, removed")
        elif (m := _OLD_RE.match(p.name)) and p.with_name(m.group("name")).is_dir():
            remove_dir(p)
            out.append(f"{rel(p)}: replaced checkpoint of an older pcpo, removed")
    return out


def clean_stale(run_dir: Path, exclusive: bool = False) -> list[str]:
    """Clear what a killed run left under ``run_dir/checkpoints``; returns one line per folder removed or
    recovered (paths relative to ``run_dir``), for the caller to print.

    Besides :func:`clean_stale_dir`'s ``.tmp-*``/``.del-*`` rules, removes ``epoch-*`` folders with files
    missing (no ``state.json``, or a file of the manifest or of the checkpoint layout absent or of the
    wrong size) that are older than the newest complete checkpoint: what an interrupted deletion by an
    older pcpo left. Newer incomplete or damaged ones are kept (:func:`find_resumable` reports them; the
    next save of that epoch replaces them). Completeness is checked without hashing.
    """
    run_dir = Path(run_dir)
    out = clean_stale_dir(run_dir / "checkpoints", exclusive=exclusive, rel_to=run_dir)
    dirs = _epoch_dirs(run_dir)
    complete = [_complete(p) for p in dirs]
    if True in complete:
        newest = len(complete) - 1 - complete[::-1].index(True)
        for p, ok in zip(dirs[:newest], complete[:newest]):
            if not ok:
                remove_dir(p)
                out.append(f"{p.relative_to(run_dir).as_posix()}: incomplete checkpoint older than "
                           f"{dirs[newest].name}, removed")
    return out


def discard_newer(run_dir: Path, epoch: int) -> list[str]:
    """Remove the ``epoch-*`` folders of ``run_dir`` newer than ``epoch`` (the one a resume loaded: newer
    ones are damaged or incomplete, and their epochs are trained again); one line per folder removed.

    Left in place, a damaged newer folder would count among the ``keep_last`` kept by later saves and
    could make them prune the intact checkpoints."""
    run_dir = Path(run_dir)
    out = []
    for p in _epoch_dirs(run_dir):
        if int(_EPOCH_RE.match(p.name).group(1)) > epoch:
            remove_dir(p)
            out.append(f"{p.relative_to(run_dir).as_posix()}: damaged checkpoint newer than the one resumed "
                       f"from ({PREFIX}{epoch:06d}), removed")
    return out


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` checkpoints of ``run_dir`` (each renamed to ``.del-*`` before it
    is deleted); returns the folders removed."""
    stale = list_checkpoints(run_dir)[:-keep] if keep > 0 else list_checkpoints(run_dir)
    for p in stale:
        remove_dir(p)
    return stale


# ---------------------------------------------------------------------------------- optimizer and RNG

def optimizer_to_flat(opt: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state (an optimizer or its state dict) → (tensors, JSON metadata)."""
    sd = opt.state_dict() if isinstance(opt, torch.optim.Optimizer) else opt
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = v
            else:
                scalars[f"{pid}.{name}"] = v
    keyed_by_name = any(not isinstance(pid, int) for pid in sd["state"])
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "keyed_by_name": keyed_by_name}
    return tensors, meta


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    # Plain optimizers key their state by parameter index; FSDP's full state dict by parameter name
    # (which contains dots), so the name of the state entry is the last dotted component.
    by_name = meta.get("keyed_by_name", False)
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key[len("state."):].rsplit(".", 1)
        state.setdefault(pid if by_name else int(pid), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        pid, name = key.rsplit(".", 1)
        state.setdefault(pid if by_name else int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _jsonable(obj):
    if isinstance(obj, tuple):
        return [_jsonable(x) for x in obj]
    return obj


# ---------------------------------------------------------------------------------- trainer checkpoints

def save_checkpoint(
    run_dir: Path,
    epoch: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict,
    state: dict,
    keep_last: int,
) -> Path:
    """Write checkpoint ``epoch`` atomically (with its manifest) and prune to the newest ``keep_last``
    (each pruned folder renamed to ``.del-*`` before it is deleted)."""
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    rng_tensors, rng_meta = rng_state()
    payload = {"epoch": epoch, "optimizer": opt_meta, "rng": rng_meta, **state}
    final = write_state_dir(
        Path(run_dir) / "checkpoints" / f"{PREFIX}{epoch:06d}",
        {"model": model_state, "optimizer": opt_tensors, "rng": rng_tensors},
        payload,
    )
    prune_checkpoints(run_dir, keep_last)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor], dict]:
    """(model tensors, optimizer state dict, rng tensors, state.json payload) of a checkpoint that
    :func:`verify_checkpoint` accepts; any problem raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    verify_checkpoint(path)
    payload = _read_json(path / STATE, STATE)
    for key in ("epoch", "optimizer", "rng"):
        if key not in payload:
            raise CheckpointError(path / STATE, f"no {key!r} entry: not a trainer checkpoint")

    def tensors(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path / name))
        except Exception as e:  # SafetensorError, OSError
            raise CheckpointError(path / name, f"unreadable safetensors file ({_one_line(e)})") from None

    model, opt_tensors, rng = (tensors(f"{n}.safetensors") for n in ("model", "optimizer", "rng"))
    try:
        opt = optimizer_from_flat(opt_tensors, payload["optimizer"])
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(path / STATE, f"optimizer entry does not match optimizer.safetensors ({_one_line(e)})") from None
    if "torch_cpu" not in rng:
        raise CheckpointError(path / "rng.safetensors", "no 'torch_cpu' tensor")
    return model, opt, rng, payload


# ---------------------------------------------------------------------------------- metrics log

def _finite(v):
    """``v`` with NaN/inf replaced by ``None`` (recursively); and whether any was replaced."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v, False
    if isinstance(v, numbers.Integral):
        return int(v), False
    if isinstance(v, numbers.Real):
        f = float(v)
        return (f, False) if math.isfinite(f) else (None, True)
    if isinstance(v, dict):
        out, bad = {}, False
        for k, x in v.items():
            out[k], b = _finite(x)
            bad |= b
        return out, bad
    if isinstance(v, (list, tuple)):
        pairs = [_finite(x) for x in v]
        return [x for x, _ in pairs], any(b for _, b in pairs)
    return v, False  # anything else: json.dumps names its type


def strict_record(record: dict) -> dict:
    """``record`` as strict JSON data: NaN/inf → ``None``, and a ``nonfinite`` list naming the top-level keys
    that held them (only when there were any)."""
    out, bad = {}, []
    for k, v in record.items():
        if k == "nonfinite":
            continue
        out[k], b = _finite(v)
        if b:
            bad.append(k)
    prior = record.get("nonfinite")
    names = list(dict.fromkeys([*(prior if isinstance(prior, list) else []), *bad]))
    if names:
        out["nonfinite"] = names
    return out


def _repair_tail(f) -> None:
    """Make the file (opened ``a+b``) end with a newline: finish a complete last record, drop a cut one."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    start, chunk = end, 1 << 16
    while start > 0:  # find the start of the last line
        lo = max(0, start - chunk)
        f.seek(lo)
        buf = f.read(start - lo)
        i = buf.rfind(b"\n")
        if i >= 0:
            start = lo + i + 1
            break
        start = lo
    f.seek(start)
    if _parses(f.read(end - start)):
        f.write(b"\n")
    else:
        f.truncate(start)


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def append_record(path: Path, record: dict) -> dict:
    """Append ``record`` to the JSON-lines log ``path`` as one strict-JSON line (see :func:`strict_record`),
    flushed and fsynced; returns the record as written. A last line cut by a kill is dropped first."""
    path = Path(path)
    line = json.dumps(rec := strict_record(record), allow_nan=False) + "\n"
    new = not path.exists()
    with open(path, "a+b") as f:
        _repair_tail(f)
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())
    if new:
        _fsync_dir(path.parent)
    return rec


def read_records(path: Path) -> list[dict]:
    """The records of JSON-lines log ``path`` (``[]`` if it does not exist). A last line without its
    newline that does not parse (cut by a kill mid-write) is dropped; any other line that is not a JSON
    object raises :class:`MetricsLogError` naming the file and line. Blank lines are skipped; NaN/Infinity
    literals of logs written by older versions are read as floats."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    out = []
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except (ValueError, UnicodeDecodeError) as e:
            raise MetricsLogError(f"{path} line {i}: not a JSON record ({_one_line(e)}); repair or delete "
                                  "that line") from None
        if not isinstance(rec, dict):
            raise MetricsLogError(f"{path} line {i}: a JSON object was expected, got {type(rec).__name__}; "
                                  "repair or delete that line")
        out.append(rec)
    if tail.strip() and _parses(tail):
        out.append(json.loads(tail))
    return out


def truncate_records(path: Path, epochs_done: int) -> list[dict]:
    """Atomically rewrite log ``path`` with only its records of ``epoch <= epochs_done`` (records without an
    ``epoch`` count as epoch 0), as strict JSON; returns them. A missing file stays missing."""
    path = Path(path)
    if not path.exists():
        return []
    keep = [strict_record(r) for r in read_records(path) if r.get("epoch", 0) <= epochs_done]
    data = "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep).encode()
    if path.read_bytes() != data:  # a log that needs no change is left as it is
        _atomic_write_bytes(path, data)
    return keep
