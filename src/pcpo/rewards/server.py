"""``pcpo serve-reward NAME --port P``: serve any registered reward over HTTP (stdlib only).

Endpoints: ``GET /health`` → ``{"status": "ok", "reward": NAME}``; ``POST /score`` with the npz body of
:func:`pcpo.rewards.remote.encode_request` → ``{"scores": [...]}``. Bound to 127.0.0.1 unless ``--host``
says otherwise. Requests are served by threads but scored one at a time (a lock: reward models on one
GPU are not re-entrant). The client is ``build_reward("remote", url=...)``.

Wiring into the main CLI: ``add_serve_reward_parser(subparsers)`` adds the sub-command and sets
``func=serve_reward_main``.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 30  # 1 GiB


def parse_set(items: list[str] | None) -> dict:
    """``["key=value", ...]`` → dict, values parsed as YAML scalars (numbers, booleans, null, strings)."""
    import yaml

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return out


def make_reward_server(reward, name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) scoring with ``reward``; ``port=0`` picks a free port."""
    from .remote import decode_request

    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "pcpo-reward/1"

        def _json(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path.rstrip("/") == "/health":
                self._json(200, {"status": "ok", "reward": name})
            else:
                self._json(404, {"error": f"unknown path {self.path}; use GET /health or POST /score"})

        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") != "/score":
                self._json(404, {"error": f"unknown path {self.path}; use POST /score"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._json(400, {"error": f"body must be 1 byte to {MAX_BODY} bytes, got {length}"})
                return
            try:
                images, prompts = decode_request(self.rfile.read(length))
            except Exception as e:  # noqa: BLE001 - malformed request
                self._json(400, {"error": f"bad request: {str(e).splitlines()[0] if str(e) else type(e).__name__}"})
                return
            try:
                with lock:
                    scores = reward(images, prompts)
                self._json(200, {"scores": [float(s) for s in scores.reshape(-1).tolist()]})
            except Exception as e:  # noqa: BLE001 - report, keep serving
                self._json(500, {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})

        def log_message(self, format, *args):  # noqa: A002 - quiet by default
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve_reward(name: str, host: str = "127.0.0.1", port: int = 8000, options: dict | None = None) -> None:
    """Build reward ``name`` with ``options`` and serve it until interrupted."""
    from .registry import build_reward

    reward = build_reward(name, **(options or {}))
    server = make_reward_server(reward, name, host, port)
    print(f"serving reward {name!r} on http://{host}:{server.server_address[1]} (POST /score, GET /health)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def add_serve_reward_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serve-reward`` to an argparse sub-parser group (handler: ``args.func(args)``)."""
    p = subparsers.add_parser("serve-reward", help="serve a registered reward over HTTP")
    p.add_argument("name", help="registered reward name (see pcpo.rewards.registry.available_rewards())")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="reward option, repeatable")
    p.set_defaults(func=serve_reward_main)
    return p


def serve_reward_main(args: argparse.Namespace) -> int:
    serve_reward(args.name, args.host, args.port, parse_set(args.set))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcpo")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_reward_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
