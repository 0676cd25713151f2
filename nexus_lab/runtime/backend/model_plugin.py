"""Making models known on every worker: a Dask ``WorkerPlugin`` that carries model configs (a repository's
``ModelConfig``s, as plain dicts) and registers them in each worker's zoo, on the workers there now and on every
worker that joins later. Registering it again (same name) with a longer list updates every worker: distributed
tears the old one down and sets the new one up. Nothing is registered by hand per worker. Frontend processes,
which no worker plugin reaches, register the same configs from scheduler metadata (``MODELS_KEY``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ...models.repository import RepositoryError, register_config

logger = logging.getLogger("nexus_lab.backend")

__all__ = ["MODELS_KEY", "ModelPlugin", "pack_configs", "register_packed"]

#: Scheduler metadata under which a controller publishes its model configs (``{"version", "configs"}``, packed):
#: frontend processes, which no ``WorkerPlugin`` reaches, register them from there as they follow the routes.
MODELS_KEY = "nexus_lab-models"


def pack_configs(configs: Sequence[Mapping[str, Any]]) -> str:
    """Model configs as one text for scheduler metadata (a factory travels pickled, as in the plugin)."""
    import base64

    import cloudpickle

    return base64.b64encode(cloudpickle.dumps([dict(c) for c in configs])).decode()


def register_packed(packed: str) -> dict[str, str]:
    """Register ``pack_configs``' configs in this process's zoo; the errors of those that failed, by name (each is
    logged and left out: its requests still reach the backends, which registered it themselves)."""
    import base64

    import cloudpickle

    return register_configs(cloudpickle.loads(base64.b64decode(packed)), "this frontend")


def register_configs(configs: Sequence[Mapping[str, Any]], where: str) -> dict[str, str]:
    """Register each config in this process's zoo; the errors of those that failed, by name (logged with
    ``where``)."""
    errors: dict[str, str] = {}
    for cfg in configs:
        try:
            register_config(cfg)
        except (RepositoryError, OSError, RuntimeError) as exc:
            errors[str(cfg.get("name"))] = str(exc)
            logger.error("nexus model %s not registered on %s: %s", cfg.get("name"), where, exc)
    return errors


class ModelPlugin(WorkerPlugin):
    """Registers ``configs`` (``ModelConfig.to_dict()`` each) on a worker at setup; ``errors`` names any that
    failed there (the controller reads them through ``nexus_models``)."""

    name = "nexus-models"

    def __init__(self, configs: Sequence[Mapping[str, Any]] = ()) -> None:
        self.configs = [dict(c) for c in configs]
        self.errors: dict[str, str] = {}

    def setup(self, worker: Any) -> None:
        self.errors = register_configs(self.configs, worker.address)
        worker.handlers["nexus_models"] = self.nexus_models

    def teardown(self, worker: Any) -> None:
        worker.handlers.pop("nexus_models", None)

    async def nexus_models(self) -> dict[str, Any]:
        """The models this worker registered from configs, and the errors of those it could not."""
        from ...models.sources import weight_warnings

        return {"models": [str(c.get("name")) for c in self.configs], "errors": dict(self.errors),
                "model_warnings": weight_warnings()}
