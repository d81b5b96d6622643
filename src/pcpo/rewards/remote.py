"""Client side of remote rewards: ``build_reward("remote", url=..., timeout=..., retries=...)``.

The server is ``pcpo serve-reward NAME --port P`` (:mod:`pcpo.rewards.server`), which wraps any registered reward.
Wire format (kept stdlib + numpy): ``POST {url}/score`` with an ``.npz`` body holding ``images``
([B, 3, H, W], uint8 by default, or float32 with ``encoding="float32"``) and ``prompts`` (a unicode array);
the answer is JSON ``{"scores": [...]}`` or ``{"error": "..."}``. ``GET {url}/health`` answers
``{"status": "ok", "reward": NAME}``. Heavy reward models thus live in their own process (or machine, or
venv: e.g. HPSv2 with torchvision) while the trainer stays light.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np
import torch

from .registry import register_reward

ENCODINGS = ("uint8", "float32")


def encode_request(images: torch.Tensor, prompts: Sequence[str], encoding: str = "uint8") -> bytes:
    """The npz body of a scoring request."""
    if encoding not in ENCODINGS:
        raise ValueError(f"reward.encoding must be one of {ENCODINGS}, got {encoding!r}")
    x = images.detach().float().clamp(0, 1).cpu()
    arr = (x * 255).round().to(torch.uint8).numpy() if encoding == "uint8" else x.numpy()
    buf = io.BytesIO()
    np.savez(buf, images=arr, prompts=np.array([str(p) for p in prompts], dtype=np.str_))
    return buf.getvalue()


def decode_request(body: bytes) -> tuple[torch.Tensor, list[str]]:
    """Inverse of :func:`encode_request`: float32 images in [0, 1] and the prompts (no pickle)."""
    with np.load(io.BytesIO(body), allow_pickle=False) as data:
        arr, prompts = data["images"], [str(p) for p in data["prompts"].tolist()]
    images = torch.from_numpy(np.ascontiguousarray(arr))
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")
    return images, prompts


class RemoteReward:
    """Posts images and prompts to a reward server and returns its scores (float32 [B])."""

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0,
                 encoding: str = "uint8"):
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"reward.url must be an http(s) URL like http://127.0.0.1:8000, got {url!r}")
        if int(retries) < 0 or float(timeout) <= 0:
            raise ValueError("reward.retries must be >= 0 and reward.timeout > 0")
        if encoding not in ENCODINGS:
            raise ValueError(f"reward.encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff, self.encoding = float(timeout), int(retries), float(backoff), encoding

    def _post(self, body: bytes) -> dict:
        req = urllib.request.Request(self.url + "/score", data=body, method="POST",
                                     headers={"Content-Type": "application/x-npz"})
        last = "unknown error"
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as e:  # the server answered: report its error, retry only 5xx/503
                try:
                    detail = json.loads(e.read().decode()).get("error", "")
                except Exception:  # noqa: BLE001
                    detail = ""
                last = f"HTTP {e.code} {detail}".strip()
                if e.code < 500:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = str(reason).strip().splitlines()[0] if str(reason).strip() else type(e).__name__
            if attempt < self.retries:
                time.sleep(self.backoff * (2**attempt))
        raise RuntimeError(
            f"remote reward {self.url}: {last} (after {self.retries + 1} tries); is `pcpo serve-reward NAME "
            f"--port P` running there?"
        )

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"reward remote: got {images.shape[0]} images but {len(prompts)} prompts")
        out = self._post(encode_request(images, prompts, self.encoding))
        if "scores" not in out or len(out["scores"]) != images.shape[0]:
            raise RuntimeError(f"remote reward {self.url}: bad answer {str(out)[:200]}")
        return torch.tensor(out["scores"], dtype=torch.float32, device=images.device)


@register_reward("remote")
def remote_reward(url: str, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0,
                  encoding: str = "uint8") -> RemoteReward:
    """A reward served over HTTP by ``pcpo serve-reward`` (see module docstring)."""
    return RemoteReward(url, timeout=timeout, retries=retries, backoff=backoff, encoding=encoding)
