"""Self-registration of live controllers for the JupyterLab panel: one 0600 file in the Jupyter runtime directory each.

Each registration serves the controller's ``PanelControl`` (``state()``, ``replan_now()``, ``pause()``, ``resume()``)
on 127.0.0.1 only, behind a random bearer token kept in the file. Any local user can connect to that port, so each
connection gets its own thread and a socket timeout (an idle one stalls nothing), bodies are bounded, and nothing
is ever printed into the kernel. Standard library, ``jupyter_core`` and the typing-only
``nexus_lab.controller.protocol``; must not import the controller, Dask, tornado or jupyter_server (the kernel side
stays light; the server side only reads the files).
"""

from __future__ import annotations

import atexit
import contextlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..controller.protocol import PanelControl, missing_members
from . import shutdown

#: The panel's actions; each calls one method of ``PanelControl``.
ACTIONS = ("replan", "pause", "resume")
_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
#: Keys of a registration file; ``port`` and ``token`` never leave the server side.
PUBLIC_KEYS = ("id", "name", "pid", "kernel_id", "created", "host")
#: Seconds a connection may sit silent (mid-request or between keep-alive requests) before it is closed.
SOCKET_TIMEOUT_S = 5.0
#: The largest request body read (bytes); the panel's actions send none.
MAX_BODY = 65536
#: Seconds a state request waits for the controller's other call (a re-plan on a frozen cluster can take its RPC
#: timeout) before it is answered 503 ``controller-busy``: the panel then shows its last state as stale.
BUSY_WAIT_S = 1.5


def registry_dir(runtime_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<jupyter runtime dir>/nexus-lab``: where a Jupyter server on this machine looks for controllers."""
    if runtime_dir is None:
        from jupyter_core.paths import jupyter_runtime_dir

        runtime_dir = jupyter_runtime_dir()
    return Path(runtime_dir) / "nexus-lab"


def valid_id(controller_id: str) -> bool:
    """Registration ids are lowercase hex, so an id from a URL can never name a path outside the directory."""
    return bool(_ID_RE.match(controller_id or ""))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 probes without sending anything)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (an IPython shell with a kernel): where the panel can reach it."""
    if "IPython" not in sys.modules:  # never import IPython just to find out
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def current_kernel_id() -> str | None:
    """The id of the Jupyter kernel this process is, read from ipykernel's connection file name; None outside one."""
    if "ipykernel" not in sys.modules:  # never import ipykernel just to find out we are not in a kernel
        return None
    try:
        from ipykernel.kernelapp import IPKernelApp

        if not IPKernelApp.initialized():
            return None
        name = Path(IPKernelApp.instance().connection_file).name
    except Exception:
        return None
    m = re.match(r"^kernel-(.+)\.json$", name)
    return m.group(1) if m else None


def read_registration(path: Path) -> dict[str, Any] | None:
    """One registration file as a dict, or None when unreadable or malformed (a half-written file is skipped)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not valid_id(str(data.get("id", ""))):
        return None
    if not isinstance(data.get("port"), int) or not isinstance(data.get("token"), str):
        return None
    return data


#: How long a controller whose process died stays listed as gone (s), so the panel can say so instead of forgetting it.
GONE_KEEP_S = 300.0


def mark_gone(path: Path) -> None:
    """A registration whose process died without closing becomes ``.<id>.dead``: listed as gone for a while, then
    deleted. The rename is atomic, so concurrent readers agree.
    """
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(f".{path.stem}.dead"))


def list_registrations(runtime_dir: str | os.PathLike[str] | None = None, clean: bool = True) -> list[dict[str, Any]]:
    """Every live registration, oldest first; files whose pid is dead are marked gone when ``clean`` (else skipped)."""
    d = registry_dir(runtime_dir)
    out = []
    if not d.is_dir():
        return out
    for path in d.glob("*.json"):
        data = read_registration(path)
        if data is None or path.stem != data["id"]:
            continue
        if not pid_alive(int(data.get("pid", -1))):
            if clean:
                mark_gone(path)
            continue
        out.append(data)
    out.sort(key=lambda r: (float(r.get("created", 0.0)), r["id"]))
    return out


def list_gone(runtime_dir: str | os.PathLike[str] | None = None, keep_s: float = GONE_KEEP_S,
              now: float | None = None) -> list[dict[str, Any]]:
    """Controllers whose process died within ``keep_s`` seconds (by when that was noticed); older marks are deleted."""
    d = registry_dir(runtime_dir)
    now = time.time() if now is None else now
    out = []
    for path in d.glob(".*.dead") if d.is_dir() else ():
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if age > keep_s:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        data = read_registration(path)
        if data is not None:
            out.append(data)
    out.sort(key=lambda r: (float(r.get("created", 0.0)), r["id"]))
    return out


def find_registration(controller_id: str, runtime_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The registration with this id, alive or marked gone (the caller checks the pid); None if absent."""
    if not valid_id(controller_id):
        return None
    d = registry_dir(runtime_dir)
    return read_registration(d / f"{controller_id}.json") or read_registration(d / f".{controller_id}.dead")


def _json_default(x: Any) -> Any:
    # numpy scalars and arrays, tuples of them, sets: whatever the controller's snapshot holds that json lacks
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)


class _Server(ThreadingHTTPServer):
    """One daemon thread per connection: a silent or slow client holds only its own thread, until its timeout."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or misbehaves is its own problem: no traceback on the kernel's stderr."""
        return


def _body_length(value: str | None) -> int | None:
    """``Content-Length`` as a byte count; None when malformed (not ASCII digits). Never raises: ``int`` would on
    other Unicode digits and on more than 4300 of them."""
    if value is None:
        return 0
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value) if len(value) <= 18 else sys.maxsize


def _make_handler(reg: Registration) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        """Runs on its connection's thread; controller calls take the registration's lock, one at a time."""

        protocol_version = "HTTP/1.1"
        server_version = "nexus-lab"
        timeout = SOCKET_TIMEOUT_S  # per socket operation (StreamRequestHandler.setup)

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: dict[str, Any], close: bool = False) -> None:
            data = json.dumps(body, default=_json_default, allow_nan=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            got = self.headers.get("Authorization", "")
            return hmac.compare_digest(got.encode(), f"Bearer {reg.token}".encode())

        def _call(self, fn: Callable[[], Any], wait_s: float = -1) -> None:
            if not reg.calls.acquire(timeout=wait_s):
                self._send(503, {"error": "controller-busy", "message": f"controller {reg.name!r} is busy with "
                                 f"another call (a re-plan?) for over {wait_s:g} s"})
                return
            try:
                result = fn()
            except Exception as exc:
                self._send(500, {"error": "controller-error", "message": f"{type(exc).__name__}: {exc}"})
                return
            finally:
                reg.calls.release()
            self._send(200, result)

        def _read_body(self) -> bool:
            """Read (and drop) the body; answer 400/413 and close when its length is malformed or too large."""
            length = _body_length(self.headers.get("Content-Length"))
            if length is None:
                self._send(400, {"error": "bad-request", "message": "Content-Length: must be a byte count"}, True)
                return False
            if length > MAX_BODY:
                self._send(413, {"error": "too-large", "message": f"body: at most {MAX_BODY} bytes"}, True)
                return False
            if length:
                self.rfile.read(length)
            return True

        def do_GET(self) -> None:
            if not self._read_body():
                return
            if not self._authorized():
                self._send(403, {"error": "forbidden", "message": "bad or missing bearer token"})
            elif self.path == "/state":
                self._call(lambda: _finite(reg.controller.state()), BUSY_WAIT_S)
            else:
                self._send(404, {"error": "not-found", "message": f"no route {self.path}"})

        def do_POST(self) -> None:
            if not self._read_body():
                return
            action = self.path.lstrip("/")
            if not self._authorized():
                self._send(403, {"error": "forbidden", "message": "bad or missing bearer token"})
            elif action in ACTIONS:
                self._call(lambda: (_act(reg.controller, action), {"ok": True, "action": action})[1])
            else:
                self._send(404, {"error": "not-found", "message": f"no action {action!r}; one of {list(ACTIONS)}"})

    return _Handler


def _act(controller: PanelControl, action: str) -> None:
    if action == "replan":
        controller.replan_now()
    elif action == "pause":
        controller.pause()
    else:
        controller.resume()


def _finite(x: Any) -> Any:
    """NaN and infinities become None: strict JSON for the browser (``allow_nan=False`` would otherwise raise)."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if hasattr(x, "tolist"):
        return _finite(x.tolist())
    return x


class Registration:
    """One controller's registration: its file and its 127.0.0.1 server, from ``register()`` until ``close()``.

    The server runs on daemon threads (one accepting, one per connection); ``close()`` (idempotent) stops it and
    removes the file, and is also run at interpreter exit and, inside a kernel, on its shutdown request (before the
    kernel ends its children: ``shutdown.py``), so a deliberate shutdown reads as closed. A kernel killed outright
    leaves its file behind: readers treat a dead pid as gone (died).
    """

    def __init__(self, controller: PanelControl, name: str | None = None,
                 runtime_dir: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(controller, PanelControl):
            missing = ", ".join(f"{m}()" for m in missing_members(controller, PanelControl))
            raise TypeError(f"controller: must have a callable {missing}; got {type(controller).__name__}")
        self.controller = controller
        self.id = secrets.token_hex(8)
        self.token = secrets.token_urlsafe(32)
        self.name = str(name or f"controller-{self.id[:6]}")
        self.created = time.time()
        self.kernel_id = current_kernel_id()
        self._closed = False
        self.close_reason: str | None = None
        self._lock = threading.Lock()
        self.calls = threading.Lock()  # controller methods run one at a time, as on one server thread
        # port 0: the OS picks a free port; the host is fixed to loopback, never all interfaces
        self._server = _Server(("127.0.0.1", 0), _make_handler(self))
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name=f"nexus-lab-registry-{self.id}", daemon=True)
        self._thread.start()
        self.dir = registry_dir(runtime_dir)
        self.path = self.dir / f"{self.id}.json"
        try:
            self._write_file()
        except BaseException:
            self._server.shutdown()
            self._server.server_close()
            raise
        _LIVE[self.id] = self
        atexit.register(self.close)
        shutdown.install_in_kernel(lambda: list(_LIVE.values()))

    def _write_file(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {"id": self.id, "name": self.name, "pid": os.getpid(), "kernel_id": self.kernel_id,
                  "created": self.created, "host": self.host, "port": self.port, "token": self.token}
        tmp = self.dir / f".{self.id}.tmp"
        # created 0600 from the start (O_EXCL|mode), then renamed into place so a reader never sees half a file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self.path)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self, reason: str = "closed") -> None:
        """Remove the file, stop the server; safe to call twice and from ``atexit``. ``reason``: why (``closed``,
        ``kernel-shutdown``), kept in ``close_reason``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.close_reason = reason
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._server.shutdown()
        self._server.server_close()
        _LIVE.pop(self.id, None)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registration(id={self.id!r}, name={self.name!r}, url={self.url!r}, closed={self._closed})"


#: Live registrations of this process, by id (``show_dashboard`` looks controllers up here).
_LIVE: dict[str, Registration] = {}


def register(controller: PanelControl, name: str | None = None,
             runtime_dir: str | os.PathLike[str] | None = None) -> Registration:
    """Make ``controller`` visible to the Nexus panel of any Jupyter server of this user; ``close()`` the result
    (or call ``unregister(controller)``) when the controller closes.
    """
    return Registration(controller, name=name, runtime_dir=runtime_dir)


def unregister(controller: PanelControl) -> int:
    """Close every registration of ``controller`` in this process; returns how many were closed."""
    regs = [r for r in list(_LIVE.values()) if r.controller is controller]
    for r in regs:
        r.close()
    return len(regs)


def live_controller(controller_id: str) -> PanelControl:
    """The controller registered under ``controller_id`` in this process (the kernel side of "open dashboard")."""
    reg = _LIVE.get(controller_id)
    if reg is None:
        raise KeyError(f"controller_id: no live controller {controller_id!r} in this process; live: {sorted(_LIVE)}")
    return reg.controller
