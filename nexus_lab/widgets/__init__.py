"""Notebook widgets: the live dashboard and the SLO, query and placement editors, over any controller.

Built on ipywidgets 8 and plotly ``FigureWidget``; imported only by notebooks and the controller's widget methods.
"""

from .dashboard import Dashboard, dashboard, nvml_devices
from .editors import PlacementEditor, QueryEditor, SloEditor, placement_editor, query_editor, slo_editor
from .teaching import SimController

__all__ = ["Dashboard", "PlacementEditor", "QueryEditor", "SimController", "SloEditor", "dashboard", "nvml_devices",
           "placement_editor", "query_editor", "slo_editor"]
