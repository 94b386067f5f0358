"""`masklm serve`: models over HTTP with dynamic batching, and a web page to try them (docs/serving.md).

    masklm serve runs/demo runs/finetune-train --port 8000     # then open http://127.0.0.1:8000/

app.py holds the routes and schemas, batcher.py the dynamic batching, models.py the served models, static/ the
page. FastAPI and uvicorn come with the `serve` extra; `check_installed` says so in one line when they are
missing, before any model is read.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
from typing import Any

from masklm.errors import UserError

REQUIRED = ("fastapi", "uvicorn")


def check_installed() -> None:
    """A one-line UserError when the serve extra (FastAPI, uvicorn) is not installed."""
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"masklm serve needs {' and '.join(missing)}; install them with: pip install 'masklm[serve]'"
        )


def check_options(port: int, threads: int | None) -> None:
    """A one-line UserError for a --port that is no TCP port or a --threads below 1."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {port}; pass a free port such as 8000")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}; leave it out for torch's default")


def check_port(host: str, port: int) -> int:
    """The port to listen on: `port`, or for 0 a free one the system picks; a one-line UserError when host:port
    cannot be listened on (in use, or not this machine's address)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            return s.getsockname()[1]
    except OSError as e:
        raise UserError(
            f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host"
        ) from None


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, with masklm's rule for a second signal: exit at once, with 128 + its number. (Its
        own force exit cancels every request in flight, each with a traceback and a plain-text 500, then exits
        0.)"""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                sys.stderr.write(f"second signal ({signal.Signals(sig).name}): stopping at once\n")
                sys.stderr.flush()
                os._exit(128 + sig)
            super().handle_exit(sig, frame)

    return Server


def url(host: str, port: int) -> str:
    """The page's address (an IPv6 address is bracketed in a URL: http://[::1]:8000/)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    specs: list[str], host: str, port: int, options: Any, threads: int | None = None, dtype: str = "auto"
) -> None:
    """Load every model, then answer on host:port until SIGTERM or Ctrl-C. SIGTERM drains the requests in
    flight (uvicorn's graceful shutdown), then returns, so the command exits 0."""
    check_installed()
    check_options(port, threads)
    import torch
    import uvicorn

    from masklm.infer.fill_mask import resolve_dtype
    from masklm.serve.app import create_app
    from masklm.serve.models import load_served
    from masklm.utils import log

    port = check_port(host, port)  # (--port 0: the free port picked, which the line below shows)
    resolve_dtype(dtype, torch.device("cpu"))  # a bad --dtype is refused before any model is read
    if threads:
        torch.set_num_threads(threads)
    models = [load_served(spec, dtype) for spec in specs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(
            f"two models are named {sorted(n for n in names if names.count(n) > 1)[0]!r}; name them with NAME=PATH"
        )
    app = create_app(models, options)
    shown = ", ".join(f"{m.name} ({m.kind})" for m in models)
    log(f"serving {shown} at {url(host, port)} (API docs at /docs); stop with Ctrl-C")
    # uvicorn re-raises the SIGTERM it handled once it has shut down; a handler of our own makes that a no-op
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=30,
            timeout_keep_alive=30,
        )
        _server_class()(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
