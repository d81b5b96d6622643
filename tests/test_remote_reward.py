"""The HTTP reward server and its client (``pcpo serve-reward`` / ``reward: {name: remote}``): exact round
trips, a 4xx with a one-line JSON error for every malformed request while the server keeps serving,
one-line errors for bad client options, dead, hung and garbage-answering servers, and the registry's
check of reward options against the factory's signature.

Every server here listens on 127.0.0.1 on an ephemeral port; every loop and socket is bounded in count
and time."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import torch

from pcpo.rewards.registry import WeightedSum, available_rewards, build_reward, register_reward
from pcpo.rewards.remote import RemoteReward, RewardServerError, decode_request, encode_request
from pcpo.trainer.config import ConfigError
from pcpo.world import data

PROMPTS = ["a red cat", "a blue dog"]
WORLD = ["a red circle", "an orange cross", "a blue square"]


def images(n: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------- remote rewards


@pytest.fixture(scope="module")
def brightness_reward():
    name = "_test_mean_brightness"
    if name not in available_rewards():
        @register_reward(name)
        def _factory(offset: float = 0.0):
            def reward(imgs, prompts):
                return imgs.float().mean(dim=(1, 2, 3)) + offset + torch.tensor([len(p) for p in prompts]) * 0.0
            return reward
    return name


def _serve(reward, name):
    from pcpo.rewards.server import make_reward_server

    server = make_reward_server(reward, name, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


def test_remote_reward_round_trip(brightness_reward):
    import json
    import urllib.request

    local = build_reward(brightness_reward, offset=0.25)
    server, thread = _serve(local, brightness_reward)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok", "reward": brightness_reward}
        imgs = images(3, 20)
        exact = build_reward("remote", url=url, timeout=5, retries=0, encoding="float32")
        assert torch.allclose(exact(imgs, ["a", "b", "c"]), local(imgs, ["a", "b", "c"]), atol=1e-6)
        quant = build_reward("remote", url=url, timeout=5, retries=0)  # uint8 on the wire
        assert torch.allclose(quant(imgs, ["a", "b", "c"]), local(imgs, ["a", "b", "c"]), atol=1 / 255)
        # a server-side error comes back as a one-line error, not retried (HTTP 400)
        bad = build_reward("remote", url=url + "/nowhere", timeout=5, retries=2, backoff=10.0)
        t0 = time.time()
        with pytest.raises(RuntimeError, match="HTTP 404") as e:
            bad(imgs, ["a", "b", "c"])
        assert time.time() - t0 < 5 and "\n" not in str(e.value)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_remote_reward_server_down_fails_fast_and_clearly():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = build_reward("remote", url=f"http://127.0.0.1:{port}", timeout=2, retries=2, backoff=0.05)
    t0 = time.time()
    with pytest.raises(RuntimeError) as e:
        reward(images(1, 8), ["x"])
    msg = str(e.value)
    assert "after 3 tries" in msg and "pcpo serve-reward" in msg and "\n" not in msg
    assert time.time() - t0 < 5


def test_serve_reward_cli_parser(brightness_reward):
    import argparse

    from pcpo.rewards.server import add_serve_reward_parser, parse_set, serve_reward_main

    parser = argparse.ArgumentParser()
    add_serve_reward_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve-reward", brightness_reward, "--port", "0", "--set", "offset=0.5",
                              "--set", "name=x y"])
    assert args.func is serve_reward_main and args.host == "127.0.0.1" and args.port == 0
    assert parse_set(args.set) == {"offset": 0.5, "name": "x y"}
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["oops"])



def test_pcpo_serve_reward_cli_subprocess():
    """`pcpo serve-reward brightness --port 0` in its own process, scored by the remote client."""
    import os
    import re
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pcpo.cli", "serve-reward", "brightness", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:  # bounded: the banner line names the port
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "server did not start"
        imgs = images(2, 16)
        local = build_reward("brightness")(imgs, PROMPTS)
        remote = build_reward("remote", url=url, timeout=10, retries=2, backoff=0.2, encoding="float32")
        assert torch.allclose(remote(imgs, PROMPTS), local, atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def serving(reward, name, **kw):
    """A reward server on 127.0.0.1:ephemeral in a thread; stopped (and joined, bounded) on exit."""
    from pcpo.rewards.server import make_reward_server

    server = make_reward_server(reward, name, "127.0.0.1", 0, **kw)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def raw_exchange(port: int, payload: bytes, *, half_close: bool = False, timeout: float = 5.0):
    """Send ``payload`` on a fresh connection; the answer's ``(status, parsed JSON body)`` (bounded)."""
    chunks, total, deadline = [], 0, time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        while total < 1 << 20 and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, (json.loads(body) if body else None), head.decode("latin-1")


def post(body: bytes, *, path: str = "/score", method: str = "POST", length: str | None = "auto",
         extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-npz\r\n{extra}"
    if length == "auto":
        head += f"Content-Length: {len(body)}\r\n"
    elif length is not None:
        head += f"Content-Length: {length}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def npz(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def good_images(n: int = 2) -> np.ndarray:
    return (np.arange(n * 3 * 8 * 8) % 256).astype(np.uint8).reshape(n, 3, 8, 8)


def world_prompts(n: int = 2) -> np.ndarray:
    return np.array(WORLD[:n], dtype=np.str_)


def free_port() -> int:
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def hung_server():
    """A socket that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


@contextlib.contextmanager
def garbage_server(reply: bytes | None, connections: int = 8):
    """Answers up to ``connections`` requests with ``reply`` (None: close without a word), then stops."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def loop():
        served = 0
        while served < connections and not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            served += 1
            with conn:
                conn.settimeout(0.2)
                got = 0
                with contextlib.suppress(OSError):
                    while got < 1 << 22:  # read what the client sends (bounded), so closing is clean
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        got += len(chunk)
                with contextlib.suppress(OSError):
                    if reply is not None:
                        conn.sendall(reply)
                    conn.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.close()
        assert not thread.is_alive()


def no_chain(e) -> bool:
    """No 'during handling of the above exception' noise: neither a cause nor a shown context."""
    return e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


def one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text and text, text
    return text


# ------------------------------------------------------------------------------- wire format, exact


def test_wire_format_round_trip_is_exact():
    imgs = images(3, 10)
    got, prompts = decode_request(encode_request(imgs, WORLD, "float32"))
    assert torch.equal(got, imgs) and prompts == WORLD
    got, _ = decode_request(encode_request(imgs, WORLD))  # uint8: round(x * 255) / 255
    assert torch.equal(got, torch.round(imgs * 255) / 255)


def test_remote_round_trip_equals_local_world_reward_exactly():
    local = build_reward("color_match", threshold=0.3)
    imgs = data.render(torch.tensor([data.prompt_id(p) for p in WORLD]), generator=0)
    with serving(local, "color_match") as (_, url):
        remote = build_reward("remote", url=url, timeout=5, retries=0, encoding="float32")
        assert remote.check() == "color_match"
        expected = local(imgs, WORLD)
        assert expected.min() > 0 and expected.max() < 1  # a real, non-constant value
        assert torch.equal(remote(imgs, WORLD), expected)
        quant = build_reward("remote", url=url, timeout=5, retries=0)  # uint8 on the wire
        assert torch.equal(quant(imgs, WORLD), local(torch.round(imgs * 255) / 255, WORLD))
        # a weighted sum checks its remote terms too
        WeightedSum({"remote": (1.0, remote), "brightness": (0.5, build_reward("brightness"))}).check()


# --------------------------------------------------------------------- malformed requests -> 4xx

_HUGE = str(10**12)

MALFORMED = [
    # (id, payload, status, a word of the error)
    ("no-content-length", post(b"x" * 10, length=None), 411, "Content-Length"),
    ("chunked", post(b"5\r\nhello\r\n0\r\n\r\n", length=None, extra="Transfer-Encoding: chunked\r\n"), 411,
     "chunked"),
    ("non-numeric-length", post(b"", length="abc"), 400, "Content-Length"),
    ("negative-length", post(b"", length="-5"), 400, "Content-Length"),
    ("signed-length", post(b"hello", length="+5"), 400, "Content-Length"),
    ("two-lengths", post(b"hello", extra="Content-Length: 3\r\n"), 400, "Content-Length"),
    ("zero-length", post(b"", length="0"), 400, "empty body"),
    ("oversized-length", post(b"", length=_HUGE), 413, "limit"),
    ("not-npz", post(b"hello, world"), 400, "not an npz"),
    ("npy-not-npz", post(npy(np.zeros((1, 3, 4, 4), np.float32))), 400, "not an npz"),
    ("wrong-members", post(npz(pixels=good_images(), prompts=world_prompts())), 400, "exactly"),
    ("extra-member", post(npz(images=good_images(), prompts=world_prompts(), x=np.zeros(1))), 400, "exactly"),
    ("pickled-object-array", post(npz(images=good_images(), prompts=np.array(["a", 1], dtype=object))), 400,
     "prompts.npy"),
    ("int64-images", post(npz(images=good_images().astype(np.int64), prompts=world_prompts())), 400,
     "uint8 or float32"),
    ("float64-images", post(npz(images=good_images().astype(np.float64) / 255, prompts=world_prompts())), 400,
     "uint8 or float32"),
    ("3-d-images", post(npz(images=good_images()[0], prompts=world_prompts(1))), 400, "[B, 3, H, W]"),
    ("4-channels", post(npz(images=np.zeros((2, 4, 8, 8), np.uint8), prompts=world_prompts())), 400,
     "[B, 3, H, W]"),
    ("empty-batch", post(npz(images=np.zeros((0, 3, 8, 8), np.uint8), prompts=world_prompts(0))), 400,
     "B, H, W >= 1"),
    ("count-mismatch", post(npz(images=good_images(2), prompts=world_prompts(3))), 400, "2 images but 3"),
    ("int-prompts", post(npz(images=good_images(2), prompts=np.array([1, 2]))), 400, "unicode"),
    ("2-d-prompts", post(npz(images=good_images(2), prompts=world_prompts(2)[None])), 400, "1-D"),
    ("nan-float-images", post(npz(images=np.full((1, 3, 4, 4), np.nan, np.float32), prompts=world_prompts(1))),
     400, "finite"),
    ("out-of-range-images", post(npz(images=np.full((1, 3, 4, 4), 2.0, np.float32), prompts=world_prompts(1))),
     400, "[0, 1]"),
    ("decompression-bomb", post(npz(True, images=np.zeros((64, 3, 64, 64), np.float32),
                                    prompts=np.array(["a red circle"] * 64))), 400, "limit"),
    ("unknown-prompt", post(npz(images=good_images(1), prompts=np.array(["a purple elephant"]))), 422,
     "not a world prompt"),
    ("unknown-path-get", b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404, "unknown path"),
    ("unknown-path-post", post(b"hello", path="/scores"), 404, "unknown path"),
    ("get-score", b"GET /score HTTP/1.1\r\nHost: t\r\n\r\n", 405, "takes POST"),
    ("post-health", post(b"hi", path="/health"), 405, "takes GET"),
    ("delete", b"DELETE /score HTTP/1.1\r\nHost: t\r\n\r\n", 405, "POST"),
    ("made-up-method", b"BREW /score HTTP/1.1\r\nHost: t\r\n\r\n", 405, "BREW"),
    ("garbage-request-line", b"\x16\x03\x01 hello there\r\n\r\n", 400, ""),
]


@pytest.fixture(scope="module")
def world_server():
    lines: list[str] = []
    with serving(build_reward("color_match"), "color_match", max_body=1 << 16, read_timeout=0.5,
                 log=lines.append) as (server, url):
        yield server, url, lines


@pytest.mark.parametrize("payload,status,word", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_4xx_json_and_server_keeps_serving(world_server, payload, status, word, capfd):
    server, url, lines = world_server
    port = server.server_address[1]
    n_lines = len(lines)
    got, body, head = raw_exchange(port, payload)
    assert got == status, (got, body)
    assert isinstance(body, dict) and set(body) == {"error"} and word in body["error"], body
    assert "\n" not in body["error"] and len(body["error"]) < 400
    assert "application/json" in head
    if status == 405:
        assert "Allow:" in head
    assert len(lines) == n_lines + 1 and "\n" not in lines[-1] and str(status) in lines[-1]
    # still serving: health and a valid request
    assert RemoteReward(url, timeout=5, retries=0).check() == "color_match"
    ok, answer, _ = raw_exchange(port, post(npz(images=good_images(2), prompts=world_prompts(2))))
    assert ok == 200 and len(answer["scores"]) == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_body_shorter_than_content_length(world_server, capfd):
    server, url, _ = world_server
    port = server.server_address[1]
    t0 = time.monotonic()
    got, body, _ = raw_exchange(port, post(b"0123456789", length="100"))  # sender stalls: read timeout 0.5 s
    assert got == 408 and "0.5 s" in body["error"] and time.monotonic() - t0 < 4
    got, body, _ = raw_exchange(port, post(b"0123456789", length="100"), half_close=True)  # sender stops
    assert got == 400 and "10 of 100 bytes" in body["error"]
    # a client that connects and says nothing is dropped after the read timeout, silently
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(100) == b""
    assert RemoteReward(url, timeout=5, retries=0).check() == "color_match"
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_reward_exception_is_500_one_line_and_server_keeps_serving(capfd):
    calls = []

    def flaky(imgs, prompts):
        calls.append(len(prompts))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory\nsecond line")
        if len(calls) == 2:
            return torch.zeros(len(prompts) + 1)  # wrong count
        return torch.full((len(prompts),), 0.5)

    with serving(flaky, "flaky") as (server, url):
        port = server.server_address[1]
        request = post(npz(images=good_images(2), prompts=world_prompts(2)))
        got, body, _ = raw_exchange(port, request)
        assert got == 500 and body["error"] == "reward flaky failed: RuntimeError: CUDA out of memory second line"
        got, body, _ = raw_exchange(port, request)
        assert got == 500 and "3 scores for 2 images" in body["error"]
        got, body, _ = raw_exchange(port, request)
        assert got == 200 and body == {"scores": [0.5, 0.5]}
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


# ------------------------------------------------------------------------------ client options


@pytest.mark.parametrize("options,words", [
    ({}, ["reward.options.url: missing", "http://127.0.0.1:8000"]),
    ({"url": ""}, ["reward.options.url: missing"]),
    ({"url": 8000}, ["reward.options.url: must be a string"]),
    ({"url": "localhost:8000"}, ["reward.options.url", "http://"]),
    ({"url": "ftp://127.0.0.1:8000"}, ["reward.options.url", "http://"]),
    ({"url": "http://"}, ["reward.options.url: no host"]),
    ({"url": "http://127.0.0.1:abc"}, ["reward.options.url: bad port"]),
    ({"url": "http://127.0.0.1:99999"}, ["reward.options.url: bad port"]),
    ({"url": "http://127.0.0.1:8000/?x=1"}, ["reward.options.url: must not have a query"]),
    ({"url": "http://127.0.0.1:8000 /"}, ["reward.options.url: must not contain spaces"]),
    ({"url": "http://127.0.0.1:8000", "urll": "x"},
     ["reward.options: unknown option 'urll' for reward 'remote'; allowed: url, timeout, retries, backoff, "
      "encoding"]),
    ({"urll": "http://127.0.0.1:8000"}, ["unknown option 'urll'"]),
    ({"url": "http://127.0.0.1:8000", "timeout": 0}, ["reward.options.timeout: must be a number of seconds > 0"]),
    ({"url": "http://127.0.0.1:8000", "timeout": "5"}, ["reward.options.timeout"]),
    ({"url": "http://127.0.0.1:8000", "retries": -1}, ["reward.options.retries: must be an integer >= 0"]),
    ({"url": "http://127.0.0.1:8000", "retries": 1.5}, ["reward.options.retries"]),
    ({"url": "http://127.0.0.1:8000", "backoff": -1}, ["reward.options.backoff"]),
    ({"url": "http://127.0.0.1:8000", "encoding": "png"}, ["reward.options.encoding: must be one of uint8, float32"]),
])
def test_client_construction_errors_are_one_config_line(options, words):
    with pytest.raises(ConfigError) as e:
        build_reward("remote", **options)
    text = one_line(e)
    assert all(w in text for w in words), text


def test_good_client_options_are_kept():
    r = build_reward("remote", url="https://example.org:8443/rewards/", timeout=2, retries=0, backoff=0)
    assert (r.url, r.timeout, r.retries, r.backoff, r.encoding) == ("https://example.org:8443/rewards", 2.0, 0,
                                                                    0.0, "uint8")


# ----------------------------------------------------------------- health check before a run


def test_check_dead_server_names_url_and_fix():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(RewardServerError) as e:
        RemoteReward(url, timeout=5).check()
    text = one_line(e)
    assert url in text and "connection refused" in text and f"pcpo serve-reward NAME --port {port}" in text
    assert text.startswith("reward.options.url") and time.monotonic() - t0 < 3
    assert no_chain(e)


def test_check_hung_server_times_out_in_one_line():
    with hung_server() as url:
        t0 = time.monotonic()
        with pytest.raises(RewardServerError) as e:
            RemoteReward(url, timeout=60).check(timeout=0.5)
        elapsed = time.monotonic() - t0
    text = one_line(e)
    assert url in text and "no answer within 0.5 s" in text and "pcpo serve-reward NAME --port" in text
    assert 0.4 < elapsed < 3


@pytest.mark.parametrize("reply,word", [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not HTTP"),
    (None, "closed the connection without answering"),
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>a web page</html>", "not a pcpo reward server"),
    (b'HTTP/1.0 200 OK\r\n\r\n{"status": "ok"}', "not a pcpo reward server"),
    (b'HTTP/1.0 404 Not Found\r\n\r\nnothing here', "HTTP 404"),
])
def test_check_garbage_server_in_one_line(reply, word):
    with garbage_server(reply) as url:
        with pytest.raises(RewardServerError) as e:
            RemoteReward(url, timeout=5).check(timeout=2)
    text = one_line(e)
    assert url in text and word in text and "pcpo serve-reward NAME --port" in text, text


# ----------------------------------------------------------- failures during training: one line


def test_scoring_against_hung_server_raises_after_retries():
    with hung_server() as url:
        reward = build_reward("remote", url=url, timeout=0.3, retries=1, backoff=0.0)
        t0 = time.monotonic()
        with pytest.raises(RewardServerError) as e:
            reward(images(2, 8), PROMPTS)
        elapsed = time.monotonic() - t0
    text = one_line(e)
    assert url in text and "no answer within 0.3 s" in text and "after 2 tries" in text
    assert "pcpo serve-reward NAME --port" in text and 0.5 < elapsed < 3
    assert no_chain(e)


@pytest.mark.parametrize("reply,word", [
    (b"not http at all\r\n", "not HTTP"),
    (b"HTTP/1.0 200 OK\r\n\r\nnot json", "answer is not 2 scores: 'not json'"),
    (b'HTTP/1.0 200 OK\r\n\r\n{"scores": [1.0]}', "answer is not 2 scores"),
    (b'HTTP/1.0 200 OK\r\n\r\n{"scores": [1.0, "x"]}', "answer is not 2 scores"),
    (b'HTTP/1.0 503 Busy\r\n\r\n{"error": "warming up"}', "HTTP 503: warming up"),
])
def test_scoring_against_garbage_server_retries_then_one_line(reply, word):
    with garbage_server(reply) as url:
        reward = build_reward("remote", url=url, timeout=2, retries=2, backoff=0.0)
        with pytest.raises(RewardServerError) as e:
            reward(images(2, 8), PROMPTS)
    text = one_line(e)
    assert url in text and word in text and "after 3 tries" in text and no_chain(e), text


def test_server_that_dies_during_training():
    local = build_reward("brightness")
    imgs = images(2, 8)
    with serving(local, "brightness") as (_, url):
        reward = build_reward("remote", url=url, timeout=2, retries=1, backoff=0.01, encoding="float32")
        assert torch.equal(reward(imgs, PROMPTS), local(imgs, PROMPTS))
    with pytest.raises(RewardServerError) as e:  # the server has stopped
        reward(imgs, PROMPTS)
    text = one_line(e)
    assert url in text and "connection refused" in text and "after 2 tries" in text and no_chain(e)


def test_request_rejected_by_reward_is_not_retried():
    with serving(build_reward("color_match"), "color_match") as (_, url):
        reward = build_reward("remote", url=url, timeout=5, retries=3, backoff=10.0)
        t0 = time.monotonic()
        with pytest.raises(RewardServerError) as e:
            reward(images(1, 8), ["a purple elephant"])
    text = one_line(e)
    assert "HTTP 422" in text and "not a world prompt" in text and "after 1 try" in text
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------ registry: option checking


def test_unknown_option_of_any_reward_is_one_config_line():
    with pytest.raises(ConfigError) as e:
        build_reward("alignment", foo=1)
    assert one_line(e) == "reward.options: unknown option 'foo' for reward 'alignment'; allowed: path"
    with pytest.raises(ConfigError) as e:
        build_reward("color_match", treshold=0.1)
    assert one_line(e) == "reward.options: unknown option 'treshold' for reward 'color_match'; allowed: threshold"
    with pytest.raises(ConfigError) as e:
        build_reward("brightness", foo=1)
    assert one_line(e).endswith("allowed: none (this reward takes no options)")
    with pytest.raises(ConfigError, match="reward.name: unknown reward 'nope'"):
        build_reward("nope")
    assert torch.equal(build_reward("color_match", threshold=2.0)(images(1, 4), WORLD[:1]), torch.ones(1))


def test_required_and_open_options():
    if "_test_needs_level" not in available_rewards():
        @register_reward("_test_needs_level")
        def _needs(level: float, *, scale: float = 1.0):
            return lambda imgs, prompts: torch.full((imgs.shape[0],), level * scale)

        @register_reward("_test_open_options")
        def _open(**options):
            return lambda imgs, prompts: torch.full((imgs.shape[0],), float(len(options)))

    with pytest.raises(ConfigError) as e:
        build_reward("_test_needs_level", scale=2.0)
    assert one_line(e).startswith("reward.options.level: required by reward '_test_needs_level'")
    assert build_reward("_test_needs_level", level=0.5, scale=2.0)(images(2, 4), PROMPTS).tolist() == [1.0, 1.0]
    assert build_reward("_test_open_options", a=1, b=2)(images(1, 4), PROMPTS[:1]).tolist() == [2.0]


# ----------------------------------------------------------------------- serve-reward CLI errors


def test_serve_reward_cli_errors_are_one_line(brightness_reward):
    import argparse

    from pcpo.rewards.server import add_serve_reward_parser, serve_reward

    parser = argparse.ArgumentParser()
    add_serve_reward_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve-reward", brightness_reward, "--port", "0", "--set", "ofset=1"])
    with pytest.raises(ConfigError) as e:
        args.func(args)
    assert one_line(e).startswith("--set: unknown option 'ofset' for reward '_test_mean_brightness'; allowed: offset")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(ConfigError) as e:
            serve_reward("brightness", "127.0.0.1", s.getsockname()[1])
    assert "cannot listen on 127.0.0.1" in one_line(e)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve-reward", "brightness", "--port", "70000"])
