"""Atomic, safetensors-only checkpoints that hold everything an exact resume needs.

Layout of ``RUN_DIR/checkpoints/epoch-000012/``::

    model.safetensors      trained weights (LoRA adapters or the full denoiser)
    optimizer.safetensors  optimizer tensors (``state.<param>.<name>``)
    rng.safetensors        torch CPU (and CUDA) RNG states
    state.json             epoch, optimizer param groups, advantage-estimator state, counters,
                           python/numpy RNG states

A checkpoint is written into a temporary sibling directory, fsynced, then renamed into place, so a
killed run leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "epoch-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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


def write_state_dir(final: Path, tensors: dict[str, dict[str, torch.Tensor]], payload: dict) -> Path:
    """Write ``{name}.safetensors`` per entry of ``tensors`` plus ``state.json`` into ``final``, atomically.

    The files go into a temporary sibling directory, are fsynced, and the directory is renamed into place
    (replacing an existing ``final``), so a killed writer leaves the old directory or the new one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, group in tensors.items():
        _save_tensors(group, tmp / f"{name}.safetensors")
    with open(tmp / "state.json", "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving (e.g. the same epoch after a resume): replace it
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def save_checkpoint(
    run_dir: Path,
    epoch: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict,
    state: dict,
    keep_last: int,
) -> Path:
    """Write checkpoint ``epoch`` atomically and prune to the newest ``keep_last``."""
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    rng_tensors, rng_meta = rng_state()
    payload = {"epoch": epoch, "optimizer": opt_meta, "rng": rng_meta, **state}
    final = write_state_dir(
        Path(run_dir) / "checkpoints" / f"{PREFIX}{epoch:06d}",
        {"model": model_state, "optimizer": opt_tensors, "rng": rng_tensors},
        payload,
    )
    for stale in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and (p / "state.json").is_file())


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor], dict]:
    """(model tensors, optimizer state dict, rng tensors, state.json payload)."""
    path = Path(path)
    payload = json.loads((path / "state.json").read_text())
    model = load_file(str(path / "model.safetensors"))
    opt = optimizer_from_flat(load_file(str(path / "optimizer.safetensors")), payload["optimizer"])
    rng = load_file(str(path / "rng.safetensors"))
    return model, opt, rng, payload
