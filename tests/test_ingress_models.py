"""The endpoint's model metadata gives real output shapes: a zoo net's ``[-1, classes]`` worked out once per model
(meta tensor) and cached, variable outputs (a detector's boxes, top-k labels, profile-only models) as ``-1``, a
query's outputs per stage; and over plain HTTP from an ``IngressServer`` with routes installed by hand."""

from __future__ import annotations

import contextlib

import pytest
import requests
import torch

from nexus_lab.ingress import models as ingress_models
from nexus_lab.ingress.models import OUTPUT, model_table, output_item
from nexus_lab.ingress.server import IngressServer
from nexus_lab.models import builtin, zoo


@contextlib.contextmanager
def registered(name, factory, shape):
    """``name`` in the zoo for the block, then gone again with its cached output shape."""
    zoo.register_model(name, factory, shape, replace=True)
    try:
        yield name
    finally:
        zoo.unregister_model(name)
        ingress_models._OUTPUTS.pop(name, None)


def test_zoo_classifiers_declare_their_class_count():
    assert output_item("tiny") == ((10,), "FP32")
    assert output_item("convnet") == ((builtin.CONVNET_CLASSES,), "FP32")
    for name, classes in builtin.VARIANTS.items():
        assert output_item(name) == ((classes,), "FP32")
        assert output_item(f"{name}.suffix") == ((classes,), "FP32")  # a prefix member answers as its whole model


def test_variable_or_unknown_outputs_stay_minus_one():
    for model in ("detector", "noop", "vgg16", "", "convnet.prefix", "no-such-model", "torchvision:resnet18"):
        assert output_item(model) is None, model  # boxes per image, any payload, profile only, top-k labels
    table = model_table({"det": {"model": "detector", "slo_ms": 50}, "sim": {"model": "vgg16", "slo_ms": 50}})
    assert table["det"].outputs[0].shape == (-1, -1) and table["sim"].outputs[0].shape == (-1, -1)


def test_a_registered_net_is_inferred_once_and_cached(monkeypatch):
    calls = []

    def factory():
        calls.append(1)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7), torch.nn.Unflatten(1, (7, 1)))

    with registered("s3c-linear", factory, (3, 4)):
        table = model_table({"lin": {"model": "s3c-linear", "slo_ms": 20}})
        assert not calls  # building the table runs nothing: shapes are worked out when metadata asks
        assert table["lin"].outputs[0].shape == (-1, 7, 1) and table["lin"].outputs[0].name == OUTPUT
        again = model_table({"lin": {"model": "s3c-linear", "slo_ms": 20}, "lin2": {"model": "s3c-linear"}})
        assert again["lin2"].outputs[0].shape == (-1, 7, 1) and again["lin"].outputs == table["lin"].outputs
        assert len(calls) == 1  # once per model and process


def test_a_net_that_fails_on_meta_tensors_runs_once_on_zeros():
    class NeedsData(torch.nn.Module):
        def forward(self, x):
            n = int(x.sum().item() >= 0) + 4  # data-dependent: impossible on the meta device
            return x.reshape(x.shape[0], -1)[:, :n]

    with registered("s3c-data", NeedsData, (2, 5)):
        assert output_item("s3c-data") == ((5,), "FP32")


def test_a_net_that_cannot_run_is_declared_variable():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no")

    with registered("s3c-broken", Broken, (2,)):
        assert output_item("s3c-broken") is None
        assert model_table({"b": {"model": "s3c-broken"}})["b"].outputs[0].shape == (-1, -1)


def test_query_outputs_are_per_stage():
    sessions = {"q/detect": {"model": "detector", "slo_ms": 30}, "q/car": {"model": "convnet-cars", "slo_ms": 30}}
    queries = {"q": {"query": {"slo_ms": 100, "stages": [{"name": "detect", "session": "q/detect"},
                                                         {"name": "car", "session": "q/car"}]}, "parents": {}}}
    entry = model_table(sessions, queries)["q"]
    assert [(o.name, o.shape) for o in entry.outputs] == [("detect", (-1, -1)),
                                                           ("car", (-1, builtin.VARIANTS["convnet-cars"]))]


@pytest.fixture(scope="module")
def server():
    with IngressServer() as srv:
        srv.install({"routes": {"cls": [], "det": []},
                     "sessions": {"cls": {"model": "convnet", "slo_ms": 50.0},
                                  "det": {"model": "detector", "slo_ms": 50.0}}})
        yield srv


def test_metadata_over_http_gives_the_output_shape(server):
    meta = requests.get(server.url + "/v2/models/cls", timeout=30).json()
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, builtin.CONVNET_CLASSES]}]
    assert meta["inputs"][0]["shape"] == [-1, *zoo.input_spec("convnet").shape]
    det = requests.get(server.url + "/v2/models/det", timeout=30).json()
    assert det["outputs"][0]["shape"] == [-1, -1]


def test_published_outputs_are_adopted_as_they_were_worked_out():
    with registered("pub_net", lambda: torch.nn.Linear(4, 3), (4,)):
        pub = ingress_models.published_outputs(["pub_net", "pub_net", "noop", ""])
        assert pub == {"pub_net": [[3], "FP32"], "noop": None}
        ingress_models._OUTPUTS.pop("pub_net")
        ingress_models.adopt_outputs({"pub_net": [[7], "FP16"]})  # what a controller said wins over working out
        assert output_item("pub_net") == ((7,), "FP16")
    ingress_models.adopt_outputs(None)  # routes from a controller that published none: nothing changes


def test_a_frontend_process_answers_metadata_without_importing_torch():
    """A serving controller publishes each routed model's output shape: a dedicated frontend process answers
    ``[-1, classes]`` without loading torch (seconds, with its loop starved while it loads)."""
    import nexus_lab

    with nexus_lab.start(gpus=1, device="cpu", auto=False) as ctl:
        ctl.editor.add_model("convnet", {"latency_ms": {1: 2.0, 8: 8.0}, "memory_mb": {1: 50.0, 8: 60.0}})
        ctl.add_session("convnet", slo_ms=2000, rate=5, name="cls")
        ctl.apply()
        url = ctl.serve()[0]
        meta = requests.get(f"{url}/v2/models/cls", timeout=30).json()
        assert meta["outputs"] == [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, builtin.CONVNET_CLASSES]}]
        pid = ctl.frontends_state()[0]["pid"]
        with open(f"/proc/{pid}/maps") as f:
            assert "libtorch" not in f.read()
