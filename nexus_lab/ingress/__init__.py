"""The service face: an Open Inference Protocol (KServe v2 REST) endpoint served by frontends in the Dask cluster's
processes. ``protocol`` parses and encodes (pure), ``models`` names what is served, ``app`` is the HTTP app,
``server`` a frontend process's side, ``launcher`` starts frontends on workers.

Imports no HTTP library until a server is made: ``protocol`` and ``models`` are plain.
"""

from __future__ import annotations

from .models import INPUT, OUTPUT, ModelEntry, model_table
from .protocol import HEADER, InferRequest, ProtocolError, TensorSpec, parse_infer_request

__all__ = ["HEADER", "INPUT", "OUTPUT", "InferRequest", "ModelEntry", "ProtocolError", "TensorSpec", "model_table",
           "parse_infer_request"]
