"""Tests of the model zoo: seeded weights, shapes, prefix sharing of the fine-tuned variants, input validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nexus_lab import models  # noqa: E402
from nexus_lab.models import shared_prefix_length  # noqa: E402


def _params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in m.state_dict().values()]


def test_import_does_not_pull_torch() -> None:
    code = "import sys, nexus_lab.models as m; m.input_spec('convnet'); m.check_input('tiny', " \
           "__import__('numpy').zeros((3, 32, 32), 'float32')); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_builtins_listed() -> None:
    names = models.available_models()
    for n in ("tiny", "convnet", "convnet-cars", "convnet-faces", "detector", "noop"):
        assert n in names
    assert models.prefix_groups()["convnet"] == ["convnet", "convnet-cars", "convnet-faces"]


@pytest.mark.parametrize("name", ["tiny", "convnet", "convnet-cars", "detector"])
def test_same_name_same_weights(name: str) -> None:
    a, b = models.build(name), models.build(name)
    assert not a.training
    pa, pb = _params(a), _params(b)
    assert pa and all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))


def test_weights_independent_of_global_rng() -> None:
    torch.manual_seed(1)
    a = _params(models.build("tiny"))
    torch.manual_seed(2)
    torch.rand(100)
    b = _params(models.build("tiny"))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_different_models_differ() -> None:
    a, b = models.build("convnet-cars"), models.build("convnet-faces")
    assert not torch.equal(list(a.children())[-1].weight[:10, :], list(b.children())[-1].weight[:10, :])


@pytest.mark.parametrize(("name", "out"), [("tiny", (10,)), ("convnet", (100,)), ("convnet-cars", (10,)),
                                           ("convnet-faces", (20,))])
def test_classifier_shapes(name: str, out: tuple[int, ...]) -> None:
    spec = models.get_model_spec(name)
    x = torch.randn(3, *spec.input_shape)
    with torch.inference_mode():
        y = models.build(name)(x)
    assert tuple(y.shape) == (3, *out)


def test_variants_share_the_prefix() -> None:
    mods = [models.build(n) for n in ("convnet", "convnet-cars", "convnet-faces")]
    k = shared_prefix_length(mods)
    assert k == models.prefix_length("convnet")
    assert 0 < k < len(list(mods[0].children()))
    # the shared prefix then each head reproduces each whole model
    x = torch.randn(4, 3, 64, 64)
    prefix = models.build("convnet.prefix")
    with torch.inference_mode():
        feats = prefix(x)
        assert tuple(feats.shape[1:]) == models.feature_shape("convnet") == models.get_model_spec(
            "convnet-cars.suffix").input_shape
        for name, whole in zip(("convnet", "convnet-cars", "convnet-faces"), mods, strict=True):
            torch.testing.assert_close(models.build(f"{name}.suffix")(feats), whole(x))


def test_detector_box_count_varies_and_is_deterministic() -> None:
    spec = models.get_model_spec("detector")
    det = models.build("detector")
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 3, 64, 64)).astype(np.float32))
    with torch.inference_mode():
        maps = det(x).numpy()
        again = det(x).numpy()
    boxes = [spec.postprocess(m) for m in maps]
    counts = [len(b) for b in boxes]
    assert len(set(counts)) >= 3  # variable fan-out
    with torch.inference_mode():
        assert len(spec.postprocess(det(torch.zeros(1, 3, 64, 64))[0].numpy())) >= 1  # blank frames fan out too
    assert 0.5 <= np.mean(counts) <= 4.0
    for b, m in zip(boxes, again, strict=True):
        np.testing.assert_array_equal(b, spec.postprocess(m))
        assert b.shape[1:] == (6,) and b.dtype == np.float32
        if len(b):
            assert np.all((b[:, :4] >= 0) & (b[:, :4] <= 1))
            assert np.all(b[:, 2] >= b[:, 0]) and np.all(b[:, 3] >= b[:, 1])
            assert np.all(np.diff(b[:, 4]) <= 0)  # best first


def test_noop_returns_input() -> None:
    x = torch.randn(2, 5)
    assert torch.equal(models.build("noop")(x), x)
    assert models.input_spec("noop") is None
    models.check_input("noop", None)  # any payload


def test_check_input_errors_name_expected_and_given() -> None:
    models.check_input("convnet", np.zeros((3, 64, 64), np.float32))
    models.check_input("convnet", np.zeros((5, 3, 64, 64), np.float32), batched=True)
    with pytest.raises(models.InputError, match=r"shape must be \(3, 64, 64\), got \(3, 32, 32\)"):
        models.check_input("convnet", np.zeros((3, 32, 32), np.float32))
    with pytest.raises(models.InputError, match="dtype must be float32, got float64"):
        models.check_input("convnet", np.zeros((3, 64, 64)))
    with pytest.raises(models.InputError, match="numpy array"):
        models.check_input("convnet", [1, 2, 3])
    with pytest.raises(models.InputError, match=r"\(n, 3, 64, 64\)"):
        models.check_input("convnet", np.zeros((3, 64, 64), np.float32), batched=True)


def test_unknown_names() -> None:
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        models.get_model_spec("nope")
    with pytest.raises(ValueError, match="unknown prefix group"):
        models.get_model_spec("tiny.prefix")
    with pytest.raises(ValueError, match="belongs to no prefix group"):
        models.get_model_spec("tiny.suffix")


def test_preprocess_image() -> None:
    img = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    x = models.preprocess_image("convnet", img)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    models.check_input("convnet", x)
    with pytest.raises(models.InputError, match="uint8"):
        models.preprocess_image("convnet", img.astype(np.float32))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_register_user_model_and_torchscript(tmp_path) -> None:
    def factory() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2))

    try:
        models.register_model("user-lin", factory, (2, 3))
        with pytest.raises(ValueError, match="already registered"):
            models.register_model("user-lin", factory, (2, 3))
        path = tmp_path / "m.pt"
        torch.jit.script(factory()).save(str(path))
        models.register_model("user-ts", path, (2, 3))
        with torch.inference_mode():
            assert tuple(models.build("user-ts")(torch.zeros(4, 2, 3)).shape) == (4, 2)
        assert models.get_model_spec("user-lin").input_shape == (2, 3)
        with pytest.raises(ValueError, match="input_shape"):
            models.register_model("bad", factory, (0, 3))
        with pytest.raises(ValueError, match="does not exist"):
            models.register_model("bad", tmp_path / "missing.pt", (2, 3))
    finally:
        models.unregister_model("user-lin")
        models.unregister_model("user-ts")
    assert "user-lin" not in models.available_models()
