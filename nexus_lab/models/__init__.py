"""A small model zoo built in code (seeded random weights, no downloads) and the registry for user models.

Torch is imported only when a model is built, so importing this package stays light (the frontend validates
inputs with it). Knows nothing of devices, planners or Dask.
"""

from . import sources  # noqa: F401  (``torchvision:<arch>`` names resolve on first use)
from .builtin import register_builtins
from .sharing import shared_prefix_length
from .zoo import (
    InputError,
    InputSpec,
    ModelSpec,
    UnknownModelError,
    available_models,
    build,
    check_input,
    feature_shape,
    get_model_spec,
    input_spec,
    model_seed,
    part_of,
    prefix_groups,
    prefix_length,
    preprocess_image,
    register_model,
    unregister_model,
)

register_builtins()

__all__ = [
    "InputError",
    "InputSpec",
    "ModelSpec",
    "UnknownModelError",
    "available_models",
    "build",
    "check_input",
    "feature_shape",
    "get_model_spec",
    "input_spec",
    "model_seed",
    "part_of",
    "prefix_groups",
    "prefix_length",
    "preprocess_image",
    "register_model",
    "shared_prefix_length",
    "unregister_model",
]
