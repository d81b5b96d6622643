"""Client side of remote rewards: ``build_reward("remote", url=..., timeout=..., retries=...)``.

The server is ``pcpo serve-reward NAME --port P`` (:mod:`pcpo.rewards.server`), which wraps any registered reward.
Wire format (kept stdlib + numpy): ``POST {url}/score`` with an ``.npz`` body holding ``images``
([B, 3, H, W], uint8 by default, or float32 in [0, 1] with ``encoding="float32"``) and ``prompts`` (a 1-D
unicode array of B strings), and, when the prompts carry per-prompt metadata, ``metadata`` (a 1-D unicode
array of B JSON objects, one per image; the server hands them to a reward that takes ``metadata``, see
:func:`pcpo.rewards.registry.call_reward`); the answer is JSON ``{"scores": [...]}`` or, with a 4xx/5xx status,
``{"error": "..."}``. ``GET {url}/health`` answers ``{"status": "ok", "reward": NAME}``. Heavy reward
models thus live in their own process (or machine, or venv: e.g. HPSv2 with torchvision) while the trainer
stays light.

Errors: bad options fail at construction with a one-line :class:`~pcpo.errors.ConfigError` naming
``reward.options.KEY``; :meth:`RemoteReward.check` asks the server's health endpoint once (call it before
any work is done); a server that is down, hangs or answers garbage after ``retries`` retries raises
:class:`RewardServerError` with one line naming the URL and the fix.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import socket
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np
import torch

from ..errors import ConfigError, PcpoError
from .registry import register_reward

ENCODINGS = ("uint8", "float32")
MEMBERS = ("images.npy", "prompts.npy")
OPTIONAL_MEMBERS = ("metadata.npy",)
MAX_DECODED = 1 << 30  # bytes of decoded arrays a request may hold (1 GiB)
HEALTH_TIMEOUT = 10.0  # seconds: the default bound of :meth:`RemoteReward.check`
MAX_ANSWER = 1 << 24  # bytes of a server's answer read at most (scores are a few bytes per image)


class RewardServerError(PcpoError, RuntimeError):
    """The reward server is unreachable, hangs, or answers something that is not a score (one line)."""


class WireFormatError(ValueError):
    """A scoring request body that is not the npz :func:`encode_request` writes (one line)."""


def encode_request(images: torch.Tensor, prompts: Sequence[str], encoding: str = "uint8",
                   metadata: Sequence[dict] | None = None) -> bytes:
    """The npz body of a scoring request (``metadata``: one JSON-serialisable dict per image, optional)."""
    if encoding not in ENCODINGS:
        raise ConfigError(f"reward.options.encoding: must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    x = images.detach().float().clamp(0, 1).cpu()
    arr = (x * 255).round().to(torch.uint8).numpy() if encoding == "uint8" else x.numpy()
    buf = io.BytesIO()
    arrays = {"images": arr, "prompts": np.array([str(p) for p in prompts], dtype=np.str_)}
    if metadata is not None:
        if len(metadata) != len(prompts):
            raise ValueError(f"reward remote: got {len(metadata)} metadata entries for {len(prompts)} prompts")
        try:
            arrays["metadata"] = np.array([json.dumps(m, allow_nan=False) for m in metadata], dtype=np.str_)
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward remote: per-prompt metadata is not JSON-serialisable ({e})") from None
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_request(body: bytes, max_decoded: int = MAX_DECODED, with_metadata: bool = False):
    """Inverse of :func:`encode_request`: float32 images in [0, 1] and the prompts (and, with
    ``with_metadata``, the per-image metadata dicts or ``None``).

    Checks everything a sender controls before trusting it (no pickle, the two members and the optional
    metadata and nothing else, their decoded size, dtypes, shapes, value range) and raises
    :class:`WireFormatError` with one line.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError):
        raise WireFormatError("body is not an npz archive (send what pcpo.rewards.remote.encode_request "
                              "writes)") from None
    with zf:
        names = sorted(zf.namelist())
        members = [*MEMBERS, *(m for m in OPTIONAL_MEMBERS if m in names)]
        if names != sorted(members):
            raise WireFormatError(f"npz must hold exactly {', '.join(MEMBERS)} (and optionally "
                                  f"{', '.join(OPTIONAL_MEMBERS)}), got {', '.join(names) or 'nothing'}")
        size = sum(zf.getinfo(n).file_size for n in members)
        if size > max_decoded:
            raise WireFormatError(f"arrays decode to {size} bytes, more than the server's limit {max_decoded}")
        arrays = {}
        for name in members:
            try:
                with zf.open(name) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
            except Exception as e:  # noqa: BLE001 - any parse failure of sender-controlled bytes
                raise WireFormatError(f"{name} is not a valid .npy array ({_first_line(e)})") from None
    arr, names_arr = arrays["images.npy"], arrays["prompts.npy"]
    if arr.dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise WireFormatError(f"images must be uint8 or float32, got {arr.dtype}")
    if arr.ndim != 4 or arr.shape[1] != 3 or min(arr.shape) < 1:
        raise WireFormatError(f"images must be [B, 3, H, W] with B, H, W >= 1, got {list(arr.shape)}")
    if names_arr.dtype.kind != "U" or names_arr.ndim != 1:
        raise WireFormatError(f"prompts must be a 1-D unicode array, got {names_arr.dtype} {list(names_arr.shape)}")
    if names_arr.shape[0] != arr.shape[0]:
        raise WireFormatError(f"got {arr.shape[0]} images but {names_arr.shape[0]} prompts")
    if arr.dtype == np.float32 and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
        raise WireFormatError("float32 images must be finite and in [0, 1]")
    metadata = None
    if "metadata.npy" in arrays:
        meta_arr = arrays["metadata.npy"]
        if meta_arr.dtype.kind != "U" or meta_arr.ndim != 1 or meta_arr.shape[0] != arr.shape[0]:
            raise WireFormatError(f"metadata must be a 1-D unicode array of {arr.shape[0]} JSON objects, got "
                                  f"{meta_arr.dtype} {list(meta_arr.shape)}")
        metadata = []
        for i, text in enumerate(meta_arr.tolist()):
            try:
                m = json.loads(text)
            except json.JSONDecodeError as e:
                raise WireFormatError(f"metadata entry {i} is not JSON ({e.msg})") from None
            if not isinstance(m, dict):
                raise WireFormatError(f"metadata entry {i} is a JSON {type(m).__name__}, not an object")
            metadata.append(m)
    images = torch.from_numpy(np.ascontiguousarray(arr))
    images = images.float() / 255 if images.dtype == torch.uint8 else images
    prompts = [str(p) for p in names_arr.tolist()]
    return (images, prompts, metadata) if with_metadata else (images, prompts)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_url(url) -> str:
    """``url`` without a trailing slash, or a one-line ConfigError naming ``reward.options.url``."""
    example = "http://127.0.0.1:8000"
    if url is None or url == "":
        raise ConfigError(f"reward.options.url: missing; give the reward server's address, e.g. {example} "
                          "(start the server with `pcpo serve-reward NAME --port 8000`)")
    if not isinstance(url, str):
        raise ConfigError(f"reward.options.url: must be a string like {example}, got {url!r}")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigError(f"reward.options.url: must not contain spaces or control characters, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"reward.options.url: must start with http:// or https://, like {example}, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise ConfigError(f"reward.options.url: bad port in {url!r}; use a number 1-65535, like {example}") from None
    if not parts.hostname:
        raise ConfigError(f"reward.options.url: no host in {url!r}; write it like {example}")
    if parts.query or parts.fragment:
        raise ConfigError(f"reward.options.url: must not have a query or fragment, got {url!r}; "
                          f"write it like {example}")
    return url.rstrip("/")


class RemoteReward:
    """Posts images and prompts to a reward server and returns its scores (float32 [B])."""

    def __init__(self, url: str | None, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0,
                 encoding: str = "uint8"):
        self.url = check_url(url)
        if not _is_number(timeout) or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"reward.options.timeout: must be a number of seconds > 0, got {timeout!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"reward.options.retries: must be an integer >= 0, got {retries!r}")
        if not _is_number(backoff) or not math.isfinite(backoff) or backoff < 0:
            raise ConfigError(f"reward.options.backoff: must be a number of seconds >= 0, got {backoff!r}")
        if encoding not in ENCODINGS:
            raise ConfigError(f"reward.options.encoding: must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        self.timeout, self.retries, self.backoff, self.encoding = float(timeout), retries, float(backoff), encoding
        port = urlsplit(self.url).port
        self._fix = f"start it with `pcpo serve-reward NAME --port {port or 'P'}` or fix reward.options.url"

    def __repr__(self) -> str:
        return f"RemoteReward({self.url!r}, timeout={self.timeout:g}, retries={self.retries})"

    # ------------------------------------------------------------------------------------ transport
    def _request(self, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        """One HTTP exchange: ``(status, body)``; transport failures raise ``_Failure`` (one line)."""
        headers = {"Content-Type": "application/x-npz"} if body is not None else {}
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(MAX_ANSWER)
        except urllib.error.HTTPError as e:  # the server answered with an error status
            try:
                data = e.read(MAX_ANSWER)
            except (OSError, http.client.HTTPException):
                data = b""
            return e.code, data
        except urllib.error.URLError as e:
            raise _Failure(_describe(e.reason, timeout), retry=True) from None
        except (OSError, http.client.HTTPException) as e:
            raise _Failure(_describe(e, timeout), retry=True) from None

    def check(self, timeout: float | None = None) -> str:
        """Ask ``GET {url}/health`` once; the served reward's name, or a one-line RewardServerError.

        Meant to run before a run creates its directory. ``timeout`` defaults to the smaller of
        ``reward.options.timeout`` and 10 s.
        """
        t = min(self.timeout, HEALTH_TIMEOUT) if timeout is None else float(timeout)
        where = f"reward.options.url: reward server {self.url}"
        try:
            status, data = self._request("/health", None, t)
        except _Failure as f:
            raise RewardServerError(f"{where}: {f.text}; {self._fix}") from None
        answer = _json_or_none(data)
        if status != 200 or not isinstance(answer, dict) or answer.get("status") != "ok" \
                or not isinstance(answer.get("reward"), str):
            got = f"HTTP {status} {_snippet(data)}".strip()
            raise RewardServerError(f"{where}: GET /health answered {got}, not a pcpo reward server; {self._fix}")
        return answer["reward"]

    def _score(self, body: bytes, n: int) -> list:
        tries = self.retries + 1
        last = "no answer"
        rejected = False  # HTTP 422: the server works, the reward rejects this input
        for attempt in range(tries):
            try:
                status, data = self._request("/score", body, self.timeout)
                rejected = status == 422
                scores, last, retry = _parse_scores(status, data, n)
                if scores is not None:
                    return scores
            except _Failure as f:
                last, retry, rejected = f.text, f.retry, False
            if not retry:
                tries = attempt + 1
                break
            if attempt + 1 < tries:
                time.sleep(self.backoff * (2**attempt))
        plural = "try" if tries == 1 else "tries"
        fix = "" if rejected else f"; {self._fix}"  # a rejected input: the server is fine, the message says why
        raise RewardServerError(f"remote reward {self.url} failed after {tries} {plural}: {last}{fix}")

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], *,
                 metadata: Sequence[dict] | None = None) -> torch.Tensor:
        """Scores from the server; per-prompt ``metadata`` (if any) travels with the request."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"reward remote: got {images.shape[0]} images but {len(prompts)} prompts")
        scores = self._score(encode_request(images, prompts, self.encoding, metadata), images.shape[0])
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


class _Failure(Exception):
    def __init__(self, text: str, retry: bool):
        super().__init__(text)
        self.text, self.retry = text, retry


def _describe(e, timeout: float) -> str:
    """One line for a transport failure."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s (hung or overloaded; a slow reward needs a larger reward.options.timeout)"
    if isinstance(e, socket.gaierror):
        return "unknown host"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(e, http.client.HTTPException):
        return f"the answer is not HTTP ({_first_line(e)})"
    if isinstance(e, BaseException):
        return _first_line(e)
    return str(e).strip().splitlines()[0] if str(e).strip() else "unknown error"


def _json_or_none(data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _snippet(data: bytes, n: int = 80) -> str:
    text = data[:n].decode("utf-8", "replace")
    text = " ".join(text.split())
    return repr(text + ("..." if len(data) > n else "")) if text else "an empty body"


def _parse_scores(status: int, data: bytes, n: int) -> tuple[list | None, str, bool]:
    """``(scores, problem, retry)``: scores on success, else one line and whether trying again may help."""
    answer = _json_or_none(data)
    if status != 200:
        detail = answer.get("error") if isinstance(answer, dict) and isinstance(answer.get("error"), str) else ""
        detail = " ".join(detail.split())[:300] if detail else _snippet(data)
        return None, f"HTTP {status}: {detail}", status >= 500  # 4xx: the same request fails again
    scores = answer.get("scores") if isinstance(answer, dict) else None
    if not isinstance(scores, list) or len(scores) != n or not all(_is_number(s) for s in scores):
        return None, f"answer is not {n} scores: {_snippet(data)}", True
    return scores, "", False


@register_reward("remote")
def remote_reward(url: str | None = None, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0,
                  encoding: str = "uint8") -> RemoteReward:
    """A reward served over HTTP by ``pcpo serve-reward`` (see module docstring)."""
    return RemoteReward(url, timeout=timeout, retries=retries, backoff=backoff, encoding=encoding)
