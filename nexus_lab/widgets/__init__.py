"""Notebook widgets: the live dashboard and the SLO, query and placement editors, over any ``ControllerView``.

Built on ipywidgets 8 and plotly ``FigureWidget``; imported only by notebooks and the controller's widget methods.
"""

from .dashboard import Dashboard, dashboard, nvml_devices
from .placement_edit import PlacementEditor, placement_editor
from .query_edit import QueryEditor, query_editor
from .slo_edit import SloEditor, slo_editor
from .teaching import SimController

__all__ = ["Dashboard", "PlacementEditor", "QueryEditor", "SimController", "SloEditor", "dashboard", "nvml_devices",
           "placement_editor", "query_editor", "slo_editor"]
