"""Making models known on every worker: a Dask ``WorkerPlugin`` that carries model configs (a repository's
``ModelConfig``s, as plain dicts) and registers them in each worker's zoo, on the workers there now and on every
worker that joins later. Registering it again (same name) with a longer list updates every worker: distributed
tears the old one down and sets the new one up. Nothing is registered by hand per worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ...models.repository import RepositoryError, register_config

logger = logging.getLogger("nexus_lab.backend")

__all__ = ["ModelPlugin"]


class ModelPlugin(WorkerPlugin):
    """Registers ``configs`` (``ModelConfig.to_dict()`` each) on a worker at setup; ``errors`` names any that
    failed there (the controller reads them through ``nexus_models``)."""

    name = "nexus-models"

    def __init__(self, configs: Sequence[Mapping[str, Any]] = ()) -> None:
        self.configs = [dict(c) for c in configs]
        self.errors: dict[str, str] = {}

    def setup(self, worker: Any) -> None:
        for cfg in self.configs:
            try:
                register_config(cfg)
            except (RepositoryError, OSError, RuntimeError) as exc:
                self.errors[str(cfg.get("name"))] = str(exc)
                logger.error("nexus model %s not registered on %s: %s", cfg.get("name"), worker.address, exc)
        worker.handlers["nexus_models"] = self.nexus_models

    def teardown(self, worker: Any) -> None:
        worker.handlers.pop("nexus_models", None)

    async def nexus_models(self) -> dict[str, Any]:
        """The models this worker registered from configs, and the errors of those it could not."""
        from ...models.sources import weight_warnings

        return {"models": [str(c.get("name")) for c in self.configs], "errors": dict(self.errors),
                "model_warnings": weight_warnings()}
