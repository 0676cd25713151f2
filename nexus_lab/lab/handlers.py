"""The Jupyter server extension's REST handlers under ``/nexus/api``: the Nexus panel's list of controllers and a proxy
to each one's 127.0.0.1 state server. Requires Jupyter's authentication on every route and its XSRF check on POSTs.

Depends on jupyter_server and tornado and on ``nexus_lab.lab.registry``; must not import the controller or Dask.
"""

from __future__ import annotations

import json
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from . import registry

#: Proxy timeouts (s): a wedged kernel must give the panel an error within a poll or two, never a hang.
CONNECT_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 3.0
_ID = r"(?P<controller_id>[0-9a-f]{8,64})"


def public_record(reg: dict[str, Any], shut_down: bool = False) -> dict[str, Any]:
    """What the browser may see of a registration: never the port or the token. ``ended``: None while alive, else
    ``closed`` (its kernel was shut down through this server: deliberate) or ``died`` (a crash, a kill)."""
    out = {k: reg.get(k) for k in registry.PUBLIC_KEYS}
    out["alive"] = registry.pid_alive(int(reg.get("pid", -1)))
    out["ended"] = None if out["alive"] else "closed" if shut_down else "died"
    return out


class _NexusHandler(APIHandler):
    @property
    def runtime_dir(self) -> str | None:
        return self.settings.get("nexus_lab_runtime_dir")

    @property
    def _seen_kernels(self) -> set[str]:
        """Kernel ids of registrations this server saw alive while its own kernel manager ran them."""
        return self.settings.setdefault("nexus_lab_seen_kernels", set())

    def _kernel_ids(self) -> set[str]:
        try:
            return set(self.kernel_manager.list_kernel_ids())
        except Exception:
            return set()

    def _shut_down(self, reg: dict[str, Any], kernels: set[str] | None = None) -> bool:
        """Whether a dead registration's kernel was this server's and is no longer running under it: shut down
        through the Jupyter API (a crashed kernel stays listed, restarting or dead)."""
        kid = reg.get("kernel_id")
        kernels = self._kernel_ids() if kernels is None else kernels
        return isinstance(kid, str) and kid in self._seen_kernels and kid not in kernels

    def _error(self, status: int, error: str, message: str, **extra: Any) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": error, "message": message, **extra}))

    async def _proxy(self, controller_id: str, method: str, path: str) -> None:
        """Forward to the controller's local server; every failure becomes a JSON error the panel shows."""
        reg = registry.find_registration(controller_id, self.runtime_dir)
        if reg is None:
            return self._error(404, "unknown-controller", f"no controller {controller_id} is registered "
                               "(it was closed, or never ran on this machine)", id=controller_id)
        if not registry.pid_alive(int(reg.get("pid", -1))):
            # a stale file: its process died without closing
            registry.mark_gone(registry.registry_dir(self.runtime_dir) / f"{controller_id}.json")
            if self._shut_down(reg):
                return self._error(410, "controller-closed", f"controller {reg.get('name')!r} was closed: its "
                                   "kernel was shut down", id=controller_id, ended="closed")
            return self._error(410, "controller-gone", f"the process of controller {reg.get('name')!r} "
                               f"(pid {reg.get('pid')}) has exited; its kernel is dead", id=controller_id,
                               ended="died")
        req = HTTPRequest(f"http://127.0.0.1:{int(reg['port'])}{path}", method=method,
                          headers={"Authorization": f"Bearer {reg['token']}"},
                          body=b"" if method == "POST" else None,
                          connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S)
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
            failure = None if resp.code != 599 and resp.body is not None else str(resp.error)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
        if failure is not None:
            if registry.find_registration(controller_id, self.runtime_dir) is None:
                # closed while we asked (its kernel shutting down): expected, so a 404 as for any closed controller
                return self._error(404, "unknown-controller", f"controller {reg.get('name')!r} was closed",
                                   id=controller_id)
            return self._error(502, "controller-unreachable", f"controller {reg.get('name')!r} did not answer: "
                               f"{failure}", id=controller_id)
        try:
            body = json.loads(resp.body)
        except ValueError:
            return self._error(502, "bad-response", f"controller {reg.get('name')!r} answered non-JSON",
                               id=controller_id)
        if resp.code != 200:
            # our own token or route went wrong, or the controller is busy: a proxy error (logged without headers)
            status = 502 if resp.code in (403, 404, 503) else resp.code
            return self._error(status, body.get("error", "controller-error"), body.get("message", str(resp.code)),
                               id=controller_id)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))


class ControllersHandler(_NexusHandler):
    """GET /nexus/api/controllers: every live controller on this machine, then those whose process ended in the last
    minutes (``alive: false``, ``ended``: ``closed`` or ``died``), each group oldest first.
    """

    @tornado.web.authenticated
    def get(self) -> None:
        kernels = self._kernel_ids()
        live = registry.list_registrations(self.runtime_dir, clean=True)
        self._seen_kernels.update(r["kernel_id"] for r in live if r.get("kernel_id") in kernels)
        gone = registry.list_gone(self.runtime_dir)
        self.finish(json.dumps({"controllers": [public_record(r) for r in live] +
                                               [public_record(r, self._shut_down(r, kernels)) for r in gone]}))


class StateHandler(_NexusHandler):
    """GET /nexus/api/controllers/<id>/state: the controller's ``state()`` snapshot."""

    @tornado.web.authenticated
    async def get(self, controller_id: str) -> None:
        await self._proxy(controller_id, "GET", "/state")


class ActionHandler(_NexusHandler):
    """POST /nexus/api/controllers/<id>/(replan|pause|resume); APIHandler applies Jupyter's XSRF/token check."""

    @tornado.web.authenticated
    async def post(self, controller_id: str, action: str) -> None:
        await self._proxy(controller_id, "POST", f"/{action}")


def handlers(base_url: str) -> list[tuple[str, type, dict[str, Any]]]:
    root = url_path_join(base_url, "nexus", "api", "controllers")
    actions = "|".join(registry.ACTIONS)
    return [
        (root, ControllersHandler, {}),
        (url_path_join(root, _ID, "state"), StateHandler, {}),
        (url_path_join(root, _ID, f"(?P<action>{actions})"), ActionHandler, {}),
    ]


def setup_handlers(web_app: Any) -> None:
    """Add the routes to the server's tornado application (any host pattern, as jupyter_server's own)."""
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
