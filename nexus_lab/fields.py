"""Field-by-field checks of untrusted input (workload files, editor calls): every error names the field, no
value is coerced to another type, and nothing a user writes can raise anything but a ``WorkloadError``.

Pure; reads one file at most (``read_document``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["MAX_SLO_MS", "WorkloadError", "as_list", "fmt", "label", "number", "read_document", "slo_ms", "text",
           "unknown"]

#: The longest SLO an edit accepts: a minute. Beyond it nothing is interactive serving any more (and a dashboard's
#: latency axis would stretch to show it); the editors and the controller's API refuse it by this one rule.
MAX_SLO_MS = 60_000.0


class WorkloadError(ValueError):
    """A workload or edit that cannot be planned; the message starts with the field path."""


def read_document(path: Path) -> Mapping:
    """A YAML or JSON file's top-level mapping; unreadable, non-UTF-8 or malformed files raise naming the file."""
    if not path.is_file():
        raise WorkloadError(f"workload: no such file {str(path)!r}")
    try:
        body = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkloadError(f"workload: {path.name} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise WorkloadError(f"workload: cannot read {path.name}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(body)
        else:
            raw = _yaml(body)
    except Exception as exc:  # any parser failure (syntax, nesting depth, huge numbers) is a bad file
        raise WorkloadError(f"workload: cannot parse {path.name}: {label(exc, 200)}") from None
    if not isinstance(raw, Mapping):
        raise WorkloadError("workload: top level must be a mapping")
    return raw


def fmt(x: float) -> str:
    """A number as a name or a message shows it: ``100``, ``2.5``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _yaml(text: str) -> object:
    """``yaml.safe_load``, but ``1e9`` is a number as in YAML 1.2 and JSON (PyYAML's YAML 1.1 reads a string)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    number = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", number, list("-+0123456789"))
    return yaml.load(text, Loader=Loader)


def label(val: object, width: int = 40) -> str:
    """``repr(val)`` for a message, shortened; never raises (a 10**5000 int cannot be printed in full)."""
    try:
        text = repr(val) if not isinstance(val, BaseException) else str(val)
    except ValueError:
        text = f"<integer of {val.bit_length()} bits>" if isinstance(val, int) else "<unprintable>"
    return text if len(text) <= width else text[:width - 3] + "..."


def number(raw: Mapping, key: str, where: str, *, default: float | None = None, gt: float | None = None,
            ge: float | None = None, le: float | None = None) -> float:
    """A real number (not a bool, not a numeric string) in range; absent or null gives ``default``."""
    if key not in raw or raw[key] is None:
        if default is None:
            raise WorkloadError(f"{where}.{key}: required")
        return default
    val = raw[key]
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise WorkloadError(f"{where}.{key}: must be a number, got {label(val)}")
    try:
        val = float(val)
    except OverflowError:
        raise WorkloadError(f"{where}.{key}: must be a finite number, got an integer beyond float range") from None
    if not math.isfinite(val):
        raise WorkloadError(f"{where}.{key}: must be finite")
    if gt is not None and not val > gt:
        raise WorkloadError(f"{where}.{key}: must be > {fmt(gt)}")
    if ge is not None and not val >= ge:
        raise WorkloadError(f"{where}.{key}: must be >= {fmt(ge)}")
    if le is not None and not val <= le:
        raise WorkloadError(f"{where}.{key}: must be <= {fmt(le)}, got {val:g}")
    return val


def slo_ms(value: object, where: str) -> float:
    """An SLO in ms as an edit gives it: a finite number above 0 and at most ``MAX_SLO_MS``. The ``WorkloadError``
    names the field and the range: ``set_slo.slo_ms: must be <= 60000, got 1e+12; allowed: more than 0 and at most
    60000 ms (a minute)``."""
    allowed = f"allowed: more than 0 and at most {fmt(MAX_SLO_MS)} ms (a minute)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorkloadError(f"{where}: must be a finite number, got {label(value)}; {allowed}")
    try:
        val = float(value)
    except OverflowError:
        raise WorkloadError(f"{where}: must be <= {fmt(MAX_SLO_MS)}, got an integer beyond float range; "
                            f"{allowed}") from None
    if not math.isfinite(val):
        raise WorkloadError(f"{where}: must be a finite number, got {label(value)}; {allowed}")
    if not val > 0:
        raise WorkloadError(f"{where}: must be > 0, got {val:g}; {allowed}")
    if val > MAX_SLO_MS:
        raise WorkloadError(f"{where}: must be <= {fmt(MAX_SLO_MS)}, got {val:g}; {allowed}")
    return val


def text(raw: Mapping, key: str, where: str) -> str:
    """A non-empty string: a name is never made from a number or a mapping."""
    val = raw.get(key)
    if not isinstance(val, str) or not val.strip():
        raise WorkloadError(f"{where}.{key}: must be a non-empty string, got {label(val)}")
    return val


def as_list(raw: Mapping, key: str, where: str) -> Sequence:
    """A list field; absent or null is empty. Anything else (``sessions: 0``, a string, a mapping) is refused."""
    val = raw.get(key)
    if val is None:
        return []
    if isinstance(val, (str, bytes)) or not isinstance(val, Sequence):
        raise WorkloadError(f"{where}: must be a list, got {label(val)}")
    return val


def unknown(raw: Mapping, allowed: set[str], where: str) -> None:
    """Refuse keys outside ``allowed`` (a typo would otherwise be ignored); keys may be of any type."""
    extra = [k for k in raw if k not in allowed]
    if extra:
        raise WorkloadError(f"{where}: unknown field(s) {sorted(label(k) for k in extra)}; "
                            f"allowed: {sorted(allowed)}")
