"""JupyterLab integration: controllers register here (``register``/``unregister``) and the Jupyter server extension
(``_jupyter_server_extension_points``) serves them to the Nexus side panel.

Importing this package must stay cheap inside a kernel: no jupyter_server, tornado, Dask or controller imports here.
"""

from __future__ import annotations

from typing import Any

from .registry import Registration, list_registrations, live_controller, register, registry_dir, unregister

__all__ = ["Registration", "close_widget", "list_registrations", "live_controller", "register", "registry_dir",
           "show_dashboard", "unregister"]


def show_dashboard(controller_id: str) -> Any:
    """The live dashboard of the controller registered under ``controller_id`` in this kernel (the panel's
    "open dashboard" runs this on the kernel of the notebook that holds the controller, in a view beside it).
    """
    ctl = live_controller(controller_id)  # an unknown id fails here, before the widget libraries load
    from ..widgets import dashboard

    return dashboard(ctl)


def close_widget(model_id: str) -> bool:
    """Close the live widget with this model id (the panel's dashboard view calls it when its tab closes, so the
    dashboard's refresh thread stops with it). False when no such widget is open in this kernel."""
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id: must be a non-empty widget model id, got {model_id!r}")
    from ipywidgets import Widget

    widget = Widget.widgets.get(model_id)
    if widget is None:
        return False
    widget.close()
    return True


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "../labextension", "dest": "nexus-lab-panel"}]  # nexus_lab/labextension


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nexus_lab.lab"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Called by jupyter_server at start-up: add the ``/nexus/api`` routes."""
    from .handlers import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("nexus_lab.lab: Nexus panel API at /nexus/api/controllers")
