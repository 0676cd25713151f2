"""Shared-prefix detection: how many leading layers a set of torch models have in common, by hashing each layer's
structure, parameters and buffers (the detection half of prefix batching, docs/architecture.md section 2).

Torch is imported lazily (inside ``shared_prefix_length``). Knows nothing of devices, planners or Dask.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["shared_prefix_length"]


def _module_digest(module: torch.nn.Module) -> str:
    """Structure (the module's repr: types and hyper-parameters) plus every parameter and buffer, bit for bit."""
    import torch

    h = hashlib.sha256(repr(module).encode())
    for name, tensor in module.state_dict(keep_vars=False).items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shared_prefix_length(modules: Sequence[torch.nn.Module]) -> int:
    """Number of leading child modules identical in structure and weights across all ``modules``.

    Children are compared in order (``module.children()``) by a hash of their repr, parameters and buffers, so
    two models fine-tuned from one base share exactly the layers whose weights were frozen. A single module
    shares all its children with itself.

    Examples
    --------
    >>> import torch
    >>> base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> a = torch.nn.Sequential(*base, torch.nn.Linear(4, 2))
    >>> b = torch.nn.Sequential(*base, torch.nn.Linear(4, 3))
    >>> shared_prefix_length([a, b])
    2
    """
    import torch

    mods = list(modules)
    if not mods:
        raise ValueError("modules: must hold at least one torch.nn.Module")
    for i, m in enumerate(mods):
        if not isinstance(m, torch.nn.Module):
            raise ValueError(f"modules[{i}]: must be a torch.nn.Module, got {type(m).__name__}")
    children = [list(m.children()) for m in mods]
    n = 0
    for layer in zip(*children, strict=False):
        if len({_module_digest(c) for c in layer}) != 1:
            break
        n += 1
    return n
