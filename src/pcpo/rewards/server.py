"""``pcpo serve-reward NAME --port P``: serve any registered reward over HTTP (stdlib only).

Endpoints: ``GET /health`` → ``{"status": "ok", "reward": NAME}``; ``POST /score`` with the npz body of
:func:`pcpo.rewards.remote.encode_request` (and a ``Content-Length``) → ``{"scores": [...]}``. Bound to
127.0.0.1 unless ``--host`` says otherwise. Requests are served by threads but scored one at a time (a
lock: reward models on one GPU are not re-entrant). The client is ``build_reward("remote", url=...)``.

Every malformed request gets a 4xx status and a JSON body ``{"error": "one line"}``, and the server keeps
serving: 400 (bad ``Content-Length``, body that is not the request npz, wrong dtypes or shapes), 404
(unknown path), 405 (wrong method), 408 (body not sent within the read timeout), 411 (no
``Content-Length``), 413 (body over the size limit), 422 (the reward rejects the input, e.g. a prompt it
does not know). An exception inside the reward is a 500 with its one-line message. Nothing prints a
traceback; ``pcpo serve-reward`` logs one line per failed request to stderr.

Wiring into the main CLI: ``add_serve_reward_parser(subparsers)`` adds the sub-command and sets
``func=serve_reward_main``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import torch

from ..errors import ConfigError, PcpoError
from .registry import RewardFn, build_reward, call_reward
from .remote import WireFormatError, decode_request

MAX_BODY = 1 << 30  # 1 GiB
READ_TIMEOUT = 60.0  # seconds a client may take to send one request
DRAIN_LIMIT = 1 << 20  # bytes of an unwanted body read before answering (so the answer is not reset)
ROUTES = {"/health": "GET", "/score": "POST"}
USAGE = "use GET /health or POST /score"
_DIGITS = re.compile(r"[0-9]+")


def parse_set(items: list[str] | None) -> dict:
    """``["key=value", ...]`` → dict, values parsed as YAML scalars (numbers, booleans, null, strings)."""
    import yaml

    out: dict = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: {value!r} is not a YAML value; quote it") from None
    return out


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


class RewardHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose connection failures are one logged line, never a traceback."""

    daemon_threads = True
    log: Callable[[str], None] | None = None

    def handle_error(self, request, client_address) -> None:
        if self.log is not None:
            self.log(f"connection from {client_address[0]}:{client_address[1]} failed: "
                     f"{_one_line(sys.exc_info()[1])}")


def make_reward_server(reward: RewardFn, name: str, host: str = "127.0.0.1", port: int = 0, *,
                       max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT,
                       log: Callable[[str], None] | None = None) -> RewardHTTPServer:
    """An HTTP server (not yet serving) scoring with ``reward``; ``port=0`` picks a free port.

    ``max_body`` bounds a request's body (and its decoded arrays) in bytes; ``read_timeout`` bounds each
    socket read of a request in seconds; ``log`` receives one line per failed request (default: silent).
    """
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "pcpo-reward/1"
        timeout = read_timeout  # socket timeout of every read (StreamRequestHandler.setup)

        # ------------------------------------------------------------------------------ answers
        def _json(self, code: int, obj: dict, headers: dict | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if code >= 400:
                self.send_header("Connection", "close")
                self.close_connection = True
            no_body = self.command == "HEAD" or code < 200 or code in (204, 304)
            self.send_header("Content-Length", "0" if no_body else str(len(body)))
            self.end_headers()
            if not no_body:
                self.wfile.write(body)

        def _fail(self, code: int, message: str, headers: dict | None = None) -> None:
            if log is not None:
                log(f"{self.client_address[0]} {self.command or '-'} {getattr(self, 'path', '')[:200]!r}: "
                    f"{code} {message}")
            self._json(code, {"error": message}, headers)

        def send_error(self, code, message=None, explain=None):  # stdlib's own errors, as JSON
            headers = None
            if self.request_version == "HTTP/0.9":  # an unparsable request line: answer with a status line
                self.request_version = "HTTP/1.0"
            if code == HTTPStatus.NOT_IMPLEMENTED:  # a method without do_METHOD
                code, message, headers = 405, f"method {self.command} not allowed; {USAGE}", {"Allow": "GET, POST"}
            if not message:
                try:
                    message = HTTPStatus(code).phrase
                except ValueError:
                    message = "error"
            self._fail(code, " ".join(str(message).split()), headers)

        def log_message(self, format, *args):  # noqa: A002 - failed requests go through ``log``
            pass

        # ------------------------------------------------------------------------------ routing
        def _route(self) -> None:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            method = ROUTES.get(path)
            if method is None:
                self._drain()
                self._fail(404, f"unknown path {path[:200]!r}; {USAGE}")
            elif method != self.command:
                self._drain()
                self._fail(405, f"{path} takes {method}, not {self.command}; {USAGE}", {"Allow": method})
            elif path == "/health":
                self._json(200, {"status": "ok", "reward": name})
            else:
                self._score()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _route  # noqa: N815

        def _length(self) -> int | None:
            """The declared body length if it is one plain non-negative integer, else None."""
            values = self.headers.get_all("Content-Length") or []
            if len(set(v.strip() for v in values)) != 1 or not _DIGITS.fullmatch(values[0].strip()):
                return None
            return int(values[0].strip())

        def _drain(self) -> None:
            length = self._length()
            if length and length <= DRAIN_LIMIT:
                try:
                    self.rfile.read(length)
                except OSError:
                    pass

        def _score(self) -> None:
            if self.headers.get("Transfer-Encoding"):
                self._fail(411, "chunked bodies are not supported; send a Content-Length")
                return
            values = self.headers.get_all("Content-Length")
            if not values:
                self._fail(411, "missing Content-Length; send the npz body with its length")
                return
            length = self._length()
            if length is None:
                shown = ", ".join(repr(v) for v in values)[:100]
                self._fail(400, f"Content-Length must be one non-negative integer, got {shown}")
                return
            if length == 0:
                self._fail(400, "empty body; send the npz of pcpo.rewards.remote.encode_request")
                return
            if length > max_body:
                self._fail(413, f"body of {length} bytes is over this server's limit of {max_body} bytes; "
                                "send fewer or smaller images per request")
                return
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self._fail(408, f"body not received within {read_timeout:g} s")
                return
            if len(body) < length:
                self._fail(400, f"body ended after {len(body)} of {length} bytes (Content-Length)")
                return
            try:
                images, prompts, metadata = decode_request(body, max_decoded=max_body, with_metadata=True)
            except WireFormatError as e:
                self._fail(400, f"bad request: {e}")
                return
            except Exception as e:  # noqa: BLE001 - any other failure to parse sender-controlled bytes
                self._fail(400, f"bad request: body is not the request npz ({_one_line(e)})")
                return
            try:
                with lock, torch.no_grad():
                    scores = call_reward(reward, images, prompts, metadata)
            except (ValueError, KeyError, PcpoError) as e:  # the reward rejects this input (or lacks its metadata)
                self._fail(422, f"reward {name} rejects the request: {_one_line(e)}")
                return
            except Exception as e:  # noqa: BLE001 - report, keep serving
                self._fail(500, f"reward {name} failed: {_one_line(e)}")
                return
            try:
                values_out = torch.as_tensor(scores).detach().float().reshape(-1).cpu().tolist()
                if len(values_out) != len(prompts):
                    raise ValueError(f"{len(values_out)} scores for {len(prompts)} images")
            except Exception as e:  # noqa: BLE001
                self._fail(500, f"reward {name} returned a bad result: {_one_line(e)}")
                return
            self._json(200, {"scores": values_out})

    server = RewardHTTPServer((host, port), Handler)
    server.log = log
    return server


def _log_stderr(line: str) -> None:
    print(f"pcpo serve-reward: {line}", file=sys.stderr, flush=True)


def serve_reward(name: str, host: str = "127.0.0.1", port: int = 8000, options: dict | None = None, *,
                 max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT) -> None:
    """Build reward ``name`` with ``options`` and serve it until interrupted."""
    reward = build_reward(name, **(options or {}))
    try:
        server = make_reward_server(reward, name, host, port, max_body=max_body, read_timeout=read_timeout,
                                    log=_log_stderr)
    except OSError as e:
        raise ConfigError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror or _one_line(e)}); "
                          "pick another port or stop the process that holds it") from None
    print(f"serving reward {name!r} on http://{host}:{server.server_address[1]} (POST /score, GET /health)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _port(text: str) -> int:
    if not _DIGITS.fullmatch(text) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be an integer 0-65535 (0: any free port), got {text!r}")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def add_serve_reward_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serve-reward`` to an argparse sub-parser group (handler: ``args.func(args)``)."""
    p = subparsers.add_parser("serve-reward", help="serve a registered reward over HTTP")
    p.add_argument("name", help="registered reward name (see pcpo.rewards.registry.available_rewards())")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="reward option, repeatable")
    p.add_argument("--max-body-mb", type=_positive, default=MAX_BODY / 2**20,
                   help="largest request body accepted, in MiB (default 1024)")
    p.add_argument("--read-timeout", type=_positive, default=READ_TIMEOUT,
                   help="seconds a client may take for each read of its request (default 60)")
    p.set_defaults(func=serve_reward_main)
    return p


def serve_reward_main(args: argparse.Namespace) -> int:
    options = parse_set(args.set)
    try:
        serve_reward(args.name, args.host, args.port, options, max_body=int(args.max_body_mb * 2**20),
                     read_timeout=args.read_timeout)
    except ConfigError as e:  # option errors name the --set key
        raise ConfigError(str(e).replace("reward.options.", "--set ").replace("reward.options:", "--set:")
                          .replace("reward.name:", "NAME:")) from None
    except PcpoError as e:
        print(f"pcpo serve-reward: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a reward's missing package or weights (RewardLoadError): its one line
        from .real import RewardLoadError

        if not isinstance(e, RewardLoadError):
            raise
        print(f"pcpo serve-reward: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcpo")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_reward_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
