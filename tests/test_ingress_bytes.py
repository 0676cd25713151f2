"""BYTES tensors of the Open Inference Protocol (``ingress.bytes_tensors``): length-prefixed elements in the binary
extension, strings in JSON, structured results as one JSON element per row; malformed data names the field."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest

from nexus_lab.ingress.bytes_tensors import (
    MAX_ELEMENTS,
    BytesError,
    decode_binary,
    encode_binary,
    from_json,
    result_elements,
    to_json,
)


def test_binary_round_trip_keeps_every_byte():
    items = [b"\xff\xd8\xff\xe0jpeg", b"", "caf\u00e9".encode(), bytes(range(256))]
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    raw = encode_binary(arr)
    assert raw[:4] == struct.pack("<I", len(items[0]))
    back = decode_binary(memoryview(raw), len(items), "inputs[0]")
    assert back.dtype == object and list(back) == items


@pytest.mark.parametrize("raw, count, match", [
    (b"\x05\x00\x00\x00abc", 1, r"inputs\[0\]: BYTES element 0 says 5 bytes, only 3 follow"),
    (b"\x01\x00", 1, r"inputs\[0\]: BYTES element 0 has no 4-byte length"),
    (b"\x01\x00\x00\x00ab", 1, r"inputs\[0\]: 1 bytes left after 1 BYTES elements"),
    (b"", MAX_ELEMENTS + 1, r"inputs\[0\]\.shape: at most 4096 BYTES elements"),
])
def test_malformed_binary_is_refused_naming_the_field(raw, count, match):
    with pytest.raises(BytesError, match=match):
        decode_binary(memoryview(raw), count, "inputs[0]")


def test_json_strings_and_their_refusals():
    assert list(from_json(["a", "\u00e9"], 2, "inputs[0]")) == [b"a", "\u00e9".encode()]
    with pytest.raises(BytesError, match=r"inputs\[0\]\.data: a BYTES tensor of 2 elements takes a list of 2"):
        from_json(["a", 3], 2, "inputs[0]")
    with pytest.raises(BytesError, match="binary data extension"):
        from_json(["a"], 2, "inputs[0]")


def test_results_become_one_json_element_per_row():
    rows = [({"label": "tabby", "index": np.int64(281), "score": np.float32(0.5)},),
            [{"box": (1.0, 2.0, 3.0, 4.0), "score": 0.9, "label": "car", "index": 3}]]
    arr = result_elements(rows)
    assert arr.shape == (2,)
    assert json.loads(arr[0]) == [{"label": "tabby", "index": 281, "score": 0.5}]
    assert json.loads(to_json(arr)[1])[0]["box"] == [1.0, 2.0, 3.0, 4.0]


def test_an_image_model_takes_jpeg_bytes_and_answers_labels_over_http():
    """tritonclient sends encoded images as BYTES (binary and JSON outputs); the answer is each image's top-k as
    JSON text; an image that does not decode is a 400 naming pre-processing, and the other images still work."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    import nexus_lab
    from nexus_lab.models import imaging

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    model = "torchvision:mobilenet_v3_small"
    with nexus_lab.start(gpus=1, device="cpu", auto=False) as ctl:
        ctl.add_model(model, profile={"latency_ms": {1: 30.0, 4: 90.0}, "memory_mb": {1: 60.0, 4: 80.0}})
        ctl.add_session(model, slo_ms=5000, rate=2, name="cls")
        ctl.apply()
        url = ctl.serve()[0]
        client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
        meta = client.get_model_metadata("cls")
        assert meta["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "BYTES", "shape": [-1]}]
        images = np.empty(2, dtype=object)
        images[:] = [imaging.encode_jpeg(frame), imaging.encode_jpeg(frame[::-1].copy(), quality=70)]
        inp = httpclient.InferInput("input", [2], "BYTES")
        inp.set_data_from_numpy(images, binary_data=True)
        for binary in (True, False):
            res = client.infer("cls", [inp], outputs=[httpclient.InferRequestedOutput("output", binary_data=binary)],
                               request_id="r1")
            out = res.as_numpy("output")
            assert out.shape == (2,) and res.get_response()["id"] == "r1"
            for row in out:
                top = json.loads(row)
                assert len(top) == 5 and isinstance(top[0]["label"], str) and 0 < top[0]["score"] <= 1
        bad = httpclient.InferInput("input", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"not an image"], dtype=object), binary_data=True)
        with pytest.raises(InferenceServerException, match="pre-processing failed") as err:
            client.infer("cls", [bad])
        assert err.value.status() == "400"
        tensor = httpclient.InferInput("input", [1, 3, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.float32))
        with pytest.raises(InferenceServerException, match=r"inputs\['input'\]\.datatype: .* takes BYTES"):
            client.infer("cls", [tensor])
        # a model under a name of its own, added after serve: the running frontend process learns it (it knew
        # only the built-in zoo, and declared such a model FP32) before the routes that use it
        ctl.add_model(model, "late", profile={"latency_ms": {1: 30.0, 4: 90.0}, "memory_mb": {1: 60.0, 4: 80.0}})
        ctl.add_session("late", slo_ms=5000, rate=2, name="late")
        ctl.apply()
        meta = None
        for _ in range(50):
            try:
                meta = client.get_model_metadata("late")
                break
            except InferenceServerException:  # 404 until the frontend has polled the new routes
                time.sleep(0.2)
        assert meta is not None and meta["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
        out = client.infer("late", [inp]).as_numpy("output")
        assert out.shape == (2,) and len(json.loads(out[0])) == 5
        client.close()
