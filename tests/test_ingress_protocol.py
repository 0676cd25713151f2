"""The Open Inference Protocol's parsing and encoding (nexus_lab.ingress.protocol, models): pure, no server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nexus_lab.ingress.models import INPUT, OUTPUT, model_table
from nexus_lab.ingress.protocol import (
    HEADER,
    ProtocolError,
    TensorSpec,
    check_inputs,
    datatype_of,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
    stack_outputs,
)


def binary_body(doc: dict, *arrays: np.ndarray) -> tuple[bytes, str]:
    head = json.dumps(doc).encode()
    return head + b"".join(a.tobytes() for a in arrays), str(len(head))


def test_json_tensors_parse_to_arrays_and_id_and_outputs():
    body = json.dumps({"id": "r1", "inputs": [{"name": "input", "shape": [2, 3], "datatype": "INT32",
                                               "data": [1, 2, 3, 4, 5, 6]}],
                       "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    req = parse_infer_request(body)
    assert req.id == "r1"
    assert req.inputs["input"].dtype == np.int32 and req.inputs["input"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert req.binary("output") and not req.binary("other")


def test_nested_json_data_is_accepted_row_major():
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                   "data": [[1, 2], [3, 4]]}]}).encode()
    assert parse_infer_request(body).inputs["x"].tolist() == [[1, 2], [3, 4]]


def test_binary_tensors_are_read_after_the_json_header_in_input_order():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.int64)
    doc = {"inputs": [{"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
                      {"name": "b", "shape": [4], "datatype": "INT64", "parameters": {"binary_data_size": 32}}],
           "parameters": {"binary_data_output": True}}
    body, hl = binary_body(doc, a, b)
    req = parse_infer_request(body, hl)
    np.testing.assert_array_equal(req.inputs["a"], a)
    np.testing.assert_array_equal(req.inputs["b"], b)
    assert req.binary_all and req.binary("anything")


@pytest.mark.parametrize("header, field", [("abc", HEADER), ("0", HEADER), ("99999", HEADER)])
def test_malformed_binary_header_is_400_naming_the_header(header, field):
    body, _ = binary_body({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 4}}]}, np.zeros(1, np.float32))
    with pytest.raises(ProtocolError, match=field) as err:
        parse_infer_request(body, header)
    assert err.value.status == 400


def test_binary_sizes_that_do_not_add_up_are_400():
    doc = {"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    body, hl = binary_body(doc, np.zeros(1, np.float32))  # 4 bytes where 8 are declared
    with pytest.raises(ProtocolError, match=r"inputs\[0\].parameters.binary_data_size"):
        parse_infer_request(body, hl)
    doc["inputs"][0]["parameters"]["binary_data_size"] = 12  # not what shape x datatype takes
    with pytest.raises(ProtocolError, match="takes 8 bytes, got 12"):
        parse_infer_request(*binary_body(doc, np.zeros(3, np.float32)))
    doc["inputs"][0]["parameters"]["binary_data_size"] = 8  # trailing bytes nobody declared
    with pytest.raises(ProtocolError, match="malformed binary data"):
        parse_infer_request(*binary_body(doc, np.zeros(3, np.float32)))


@pytest.mark.parametrize("doc, field", [
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]}, r"inputs\[0\].datatype"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}]}, r"inputs\[0\].data: a BYTES"),
    ({"inputs": [{"name": "x", "shape": [-2], "datatype": "FP32", "data": [1]}]}, r"inputs\[0\].shape"),
    ({"inputs": [{"name": "x", "shape": "3", "datatype": "FP32", "data": [1]}]}, r"inputs\[0\].shape"),
    ({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, r"inputs\[0\].data"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, r"inputs\[0\].data"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, r"inputs\[0\].data: missing"),
    ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, r"inputs\[0\].name"),
    ({"id": 5, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, "id"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": [{}]},
     r"outputs\[0\].name"),
    ([1, 2], "body"),
])
def test_bad_requests_are_400_naming_the_field(doc, field):
    with pytest.raises(ProtocolError, match=field) as err:
        parse_infer_request(json.dumps(doc).encode())
    assert err.value.status == 400


def test_not_json_is_400():
    with pytest.raises(ProtocolError, match="body: not valid JSON"):
        parse_infer_request(b"\xff{nope")


def test_inputs_are_checked_against_the_model():
    specs = (TensorSpec("input", "FP32", (-1, 3, 4)),)
    ok = parse_infer_request(*binary_body(
        {"inputs": [{"name": "input", "shape": [2, 3, 4], "datatype": "FP32",
                     "parameters": {"binary_data_size": 96}}]}, np.zeros((2, 3, 4), np.float32)))
    assert check_inputs(ok, specs, "m") == 2
    with pytest.raises(ProtocolError, match="at most 1 per request"):
        check_inputs(ok, specs, "m", batch=1)

    def req(shape, dt="FP32", name="input"):
        n = int(np.prod(shape))
        return parse_infer_request(json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": dt,
                                                           "data": [0] * n}]}).encode())

    with pytest.raises(ProtocolError, match=r"inputs\['input'\].shape: model 'm' takes \[-1, 3, 4\]"):
        check_inputs(req([2, 4, 3]), specs, "m")
    with pytest.raises(ProtocolError, match=r"inputs\['input'\].datatype: model 'm' takes FP32, got INT8"):
        check_inputs(req([1, 3, 4], "INT8"), specs, "m")
    with pytest.raises(ProtocolError, match="has no input 'other'"):
        check_inputs(req([1, 3, 4], name="other"), specs, "m")
    with pytest.raises(ProtocolError, match="batch axis must be >= 1"):
        check_inputs(req([0, 3, 4]), specs, "m")


def test_response_json_and_binary_round_trip():
    out = np.arange(6, dtype=np.float32).reshape(2, 3)
    req = parse_infer_request(json.dumps({"id": "q", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                                  "data": [1]}]}).encode())
    body, headers = encode_infer_response("m", req, {"output": out})
    doc = json.loads(body)
    assert doc["id"] == "q" and doc["outputs"][0]["data"] == out.reshape(-1).tolist()
    assert doc["outputs"][0]["shape"] == [2, 3] and HEADER not in headers
    req.binary_all = True
    body, headers = encode_infer_response("m", req, {"output": out})
    n = int(headers[HEADER])
    doc = json.loads(body[:n])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 24 and "data" not in doc["outputs"][0]
    np.testing.assert_array_equal(np.frombuffer(body[n:], np.float32).reshape(2, 3), out)
    req.outputs = {"missing": True}
    with pytest.raises(ProtocolError, match=r"outputs\[0\].name: model 'm' has no output 'missing'"):
        encode_infer_response("m", req, {"output": out})


def test_ragged_outputs_are_zero_padded_and_datatypes_named():
    stacked = stack_outputs([np.ones((2, 6), np.float32), np.ones((0, 6), np.float32)])
    assert stacked.shape == (2, 2, 6) and stacked[1].sum() == 0 and stacked[0].sum() == 12
    assert datatype_of(np.float32) == "FP32" and datatype_of(np.dtype(">i4")) == "INT32"
    assert datatype_of(np.uint8) == "UINT8" and datatype_of(bool) == "BOOL"


def test_model_table_names_sessions_and_takes_zoo_input_specs():
    table = model_table({"cls": {"model": "convnet", "slo_ms": 50}, "any": {"model": "vgg16", "slo_ms": 100},
                         "q/stage": {"model": "vgg16", "slo_ms": 10}})
    assert set(table) == {"cls", "any"}  # query stages are not models of their own
    from nexus_lab.models import zoo

    spec = zoo.input_spec("convnet")
    assert table["cls"].inputs[0].shape == (-1, *spec.shape) and table["cls"].inputs[0].name == INPUT
    assert table["any"].inputs[0].shape == (-1, -1) and table["any"].outputs[0].name == OUTPUT
    meta = model_metadata("cls", table["cls"].inputs, table["cls"].outputs)
    assert meta["inputs"][0]["datatype"] == "FP32" and meta["versions"] == ["1"]


def test_a_repeated_binary_header_is_parsed_once_and_gives_the_same_request():
    from nexus_lab.ingress import protocol

    protocol._LAYOUTS.clear()
    doc = {"id": "r1", "inputs": [{"name": "a", "shape": [2, 3], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 24}},
                                  {"name": "b", "shape": [2], "datatype": "INT64",
                                   "parameters": {"binary_data_size": 16}}],
           "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    first = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, hl = binary_body(doc, first, np.array([7, 8]))
    a = parse_infer_request(body, hl)
    assert len(protocol._LAYOUTS) == 1
    body2, _ = binary_body(doc, first + 10, np.array([1, 2]))  # same header, other tensors
    b = parse_infer_request(body2, hl)
    assert len(protocol._LAYOUTS) == 1
    np.testing.assert_array_equal(b.inputs["a"], first + 10)
    assert b.inputs["b"].tolist() == [1, 2] and b.inputs["b"].dtype == np.int64
    assert (b.id, b.outputs, b.binary_all) == (a.id, a.outputs, a.binary_all) == ("r1", {"y": True}, False)
    b.outputs["z"] = True  # each request owns its tables: the kept layout does not change
    assert parse_infer_request(body, hl).outputs == {"y": True}
    with pytest.raises(ProtocolError, match="malformed binary data"):  # same header, short body: checked in full
        parse_infer_request(body[:-8], hl)
    json_only = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode()
    parse_infer_request(json_only)
    parse_infer_request(json_only, str(len(json_only)))  # JSON data: nothing kept
    assert len(protocol._LAYOUTS) == 1


def test_kept_layouts_are_bounded():
    from nexus_lab.ingress import protocol

    protocol._LAYOUTS.clear()
    for k in range(protocol.LAYOUTS_KEPT + 20):
        body, hl = binary_body({"id": f"r{k}", "inputs": [{"name": "a", "shape": [1], "datatype": "FP32",
                                                         "parameters": {"binary_data_size": 4}}]},
                               np.zeros(1, np.float32))
        assert parse_infer_request(body, hl).id == f"r{k}"
    assert len(protocol._LAYOUTS) == protocol.LAYOUTS_KEPT
