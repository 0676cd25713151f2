"""The controller's model catalogue: ``add_model`` / ``add_models`` make a model (a repository folder, or a source
such as ``torchvision:resnet18``) known in this process (the frontend checks inputs with it), on every worker now
and on workers that join later (``runtime.backend.model_plugin.ModelPlugin``), and to the planner with the
profile measured for this controller's device, when the repository has one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..workload import WorkloadError

__all__ = ["ModelCatalogue", "declare_prefix", "profile_for_device"]

WARNINGS_REFRESH_S = 10.0


def profile_for_device(profiles: Mapping[str, Any], device: str) -> Any:
    """The stored profile that fits ``device``: for ``cpu`` the one-thread cpu profile (what a single-threaded
    backend sees), for ``cuda`` a GPU's, for ``simulated:<set>`` one named for the set; else None."""
    if not profiles:
        return None
    kind = device.split(":", 1)[0]
    for label, prof in sorted(profiles.items()):
        if kind == "cpu" and label.startswith("cpu_1-"):
            return prof
        if kind == "cuda" and not label.startswith("cpu"):
            return prof
        if kind == "simulated" and label == device.split(":", 1)[-1]:
            return prof
    return None


def declare_prefix(editor: Any, model: str, group: str, prefix: Any, suffix: Any) -> None:
    """Declare a declared model a member of prefix ``group`` with its measured prefix and suffix profiles."""
    from ..workload import PrefixSpec

    models = dict(editor.base.models)
    if model not in models:
        raise WorkloadError(f"model: {model!r} is not declared; add it with its profile first")
    models[model] = replace(models[model], prefix=PrefixSpec(group, prefix, suffix))
    editor.base = replace(editor.base, models=models)


class ModelCatalogue:
    """Mixin of ``Controller``: needs ``client``, ``device``, ``editor``, ``io`` and ``_event``."""

    def _catalogue(self) -> dict[str, dict[str, Any]]:
        cat = self.__dict__.get("_model_configs")
        if cat is None:
            cat = self.__dict__["_model_configs"] = {}
            self.__dict__["_models_lock"] = threading.Lock()
        return cat

    def add_models(self, path: str | Path) -> list[str]:
        """Every model of a repository folder (one sub-folder with ``config.yaml`` per model); their names."""
        from ..models.repository import RepositoryError, load_repository

        try:
            configs = load_repository(path)
        except RepositoryError as exc:
            raise WorkloadError(str(exc)) from None
        return self._add_configs(configs)

    def add_model(self, source: str | Path | Callable[[], Any], name: str | None = None, *, profile: Any = None,
                  **options: Any) -> str:
        """Make one model known everywhere; its name.

        ``source``: a repository model folder (holding ``config.yaml``), ``torchvision:<arch>``, a TorchScript
        / ``.pt2`` file, or a callable returning an ``nn.Module`` (with ``name`` and ``shape``; it travels to the
        workers pickled, so define it at module level or with ``functools.partial``). ``options`` are
        ``config.yaml``'s fields (``weights``, ``weights_file``, ``shape``, ``dtype``, ``labels``, ``num_classes``,
        ``topk``, ``group``, ...). ``profile`` (a ``ModelProfile``, a file or an inline table) is what the planner
        uses when the folder holds no profile measured for this device.
        """
        from ..models.repository import CONFIG, ModelConfig, RepositoryError, load_config

        path = Path(str(source))
        try:
            if callable(source):
                if not isinstance(name, str) or not name:
                    raise RepositoryError(f"add_model.name: required with a factory, got {name!r}")
                source, options = "factory", {**options, "factory": source}
            if source != "factory" and (path / CONFIG).is_file():
                cfg = load_config(path)
                if name is not None or options:
                    raise RepositoryError(f"{path / CONFIG}: name/options: given with a folder; edit its config")
            else:
                if not isinstance(source, str) or not source:
                    raise RepositoryError(f"add_model.source: must be a folder, 'torchvision:<arch>' or a file, "
                                          f"got {source!r}")
                fields = set(ModelConfig.__dataclass_fields__) - {"name", "folder", "source"}
                bad = sorted(set(options) - fields)
                if bad:
                    raise RepositoryError(f"add_model.{bad[0]}: unknown option; allowed: {', '.join(sorted(fields))}")
                src = source if source.startswith("torchvision:") or source == "factory" else str(path.resolve())
                cfg = ModelConfig.from_dict({"name": name or source, "folder": str(path.parent.resolve()),
                                             "source": src, **options})
        except RepositoryError as exc:
            raise WorkloadError(str(exc)) from None
        return self._add_configs([cfg], profile)[0]

    def _add_configs(self, configs: list[Any], profile: Any = None) -> list[str]:
        from ..models.repository import RepositoryError, register_config, stored_profiles
        from ..runtime.backend.model_plugin import MODELS_KEY, ModelPlugin, pack_configs

        cat = self._catalogue()
        names = []
        for cfg in configs:  # here first: a config that cannot be built is refused before any worker sees it
            try:
                register_config(cfg)
            except RepositoryError as exc:
                raise WorkloadError(str(exc)) from None
        with self.__dict__["_models_lock"]:
            for cfg in configs:
                cat[cfg.name] = cfg.to_dict()
            plugin = ModelPlugin(list(cat.values()))
        self.client.register_plugin(plugin)  # every worker now, and every worker that joins later
        # and every frontend process (no worker plugin reaches it): it registers them as it follows the routes
        self.client.set_metadata(MODELS_KEY, {"version": time.time_ns(), "configs": pack_configs(plugin.configs)})
        for cfg in configs:
            prof = profile if profile is not None else profile_for_device(stored_profiles(cfg), self.device)
            if prof is not None:
                self.editor.add_model(cfg.name, prof)
                self._declare_prefix(cfg)
            names.append(cfg.name)
            self._event("model", name=cfg.name, source=cfg.source, profiled=prof is not None)
        return names

    def _declare_prefix(self, cfg: Any) -> None:
        """A member of a prefix group whose folder holds its prefix and suffix profiles for this device is
        planned as one (``workload.PrefixSpec``): the planner then runs the shared backbone once per batch."""
        from ..models.repository import stored_profiles

        if cfg.group is None:
            return
        pre = profile_for_device(stored_profiles(cfg, "prefix"), self.device)
        suf = profile_for_device(stored_profiles(cfg, "suffix"), self.device)
        if pre is not None and suf is not None:
            declare_prefix(self.editor, cfg.name, cfg.group, pre, suf)

    def model_warnings(self) -> dict[str, str]:
        """Models running with random weights although pretrained ones were asked for (worker -> reason, per
        model), polled from the workers at most every ``WARNINGS_REFRESH_S``."""
        from ..models.sources import weight_warnings

        cached = self.__dict__.get("_model_warnings")
        now = time.monotonic()
        if cached is not None and now - cached[0] < WARNINGS_REFRESH_S:
            return cached[1]
        out = dict(weight_warnings())
        if self._catalogue():
            try:
                replies = self.io.call({w: ("nexus_models", {}) for w in self.io.usable()}, timeout=2.0)
            except Exception:
                replies = {}
            for rep in replies.values():
                if isinstance(rep, dict):
                    out.update(rep.get("model_warnings", {}))
                    out.update({m: f"not registered: {e}" for m, e in rep.get("errors", {}).items()})
        self.__dict__["_model_warnings"] = (now, out)
        return out
