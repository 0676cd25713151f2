"""The endpoint's HTTP contract with a plain client, no cluster: an ``IngressServer`` whose routes are installed by
hand (a session of the zoo's conv net with no backend): 400 naming the field, 401, 404, 405, 413, 503 with the
reason, the id echoed, and never a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from nexus_lab.ingress.protocol import HEADER
from nexus_lab.ingress.server import IngressServer
from nexus_lab.models import zoo

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server():
    with IngressServer(token=TOKEN, max_body_bytes=200_000) as srv:
        srv.install({"routes": {"cls": []}, "sessions": {"cls": {"model": "convnet", "slo_ms": 50.0}}})
        yield srv


def call(srv, method, path, *, token=TOKEN, **kw):
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, srv.url + path, headers=headers, timeout=10, **kw)


def frame_body(shape, dtype=np.float32, rid="r-7"):
    x = np.zeros(shape, dtype=dtype)
    head = json.dumps({"id": rid, "inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32",
                                              "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return head + x.tobytes(), {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def test_binds_loopback_by_default_and_serves_metadata(server):
    assert server.url.startswith("http://127.0.0.1:")
    r = call(server, "GET", "/v2")
    assert r.status_code == 200 and "binary_tensor_data" in r.json()["extensions"]
    meta = call(server, "GET", "/v2/models/cls").json()
    assert meta["inputs"][0]["shape"] == [-1, *zoo.input_spec("convnet").shape]
    assert call(server, "GET", "/v2/models/cls/versions/1/ready").status_code == 200


def test_token_is_checked_on_every_route_but_health(server):
    for path in ("/v2", "/v2/models/cls", "/v2/models/cls/ready"):
        r = call(server, "GET", path, token=None)
        assert r.status_code == 401 and "bearer token" in r.json()["error"]
        assert call(server, "GET", path, token="wrong").status_code == 401
    r = call(server, "POST", "/v2/models/cls/infer", token=None, data=b"{}")
    assert r.status_code == 401
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert call(server, "GET", path, token=None).status_code == 200


def test_unknown_model_and_route_are_404_and_wrong_method_405(server):
    r = call(server, "POST", "/v2/models/nope/infer", data=b"{}")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    assert call(server, "GET", "/v2/models/nope").status_code == 404
    assert call(server, "GET", "/v2/models/cls/versions/2").status_code == 404
    assert call(server, "GET", "/v3/what").json()["error"]
    r = call(server, "GET", "/v2/models/cls/infer")
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize("shape, field", [((1, 3, 8, 8), "inputs['input'].shape"),
                                          ((1,), "inputs['input'].shape")])
def test_bad_shape_is_400_naming_the_field(server, shape, field):
    body, headers = frame_body(shape)
    r = call(server, "POST", "/v2/models/cls/infer", data=body, headers=headers)
    assert r.status_code == 400 and field in r.json()["error"]


def test_bad_datatype_missing_input_and_malformed_header_are_400(server):
    spec = zoo.input_spec("convnet")
    n = int(np.prod(spec.shape))
    doc = {"inputs": [{"name": "input", "shape": [1, *spec.shape], "datatype": "INT32", "data": [0] * n}]}
    r = call(server, "POST", "/v2/models/cls/infer", data=json.dumps(doc))
    assert r.status_code == 400 and "inputs['input'].datatype" in r.json()["error"]
    doc["inputs"][0]["name"] = "image"
    r = call(server, "POST", "/v2/models/cls/infer", data=json.dumps(doc))
    assert r.status_code == 400 and "no input 'image'" in r.json()["error"]
    body, headers = frame_body((1, *spec.shape))
    headers[HEADER] = "12x"
    r = call(server, "POST", "/v2/models/cls/infer", data=body, headers=headers)
    assert r.status_code == 400 and HEADER in r.json()["error"]
    r = call(server, "POST", "/v2/models/cls/infer", data=body[:-4], headers={HEADER: str(len(body) - n * 4)})
    assert r.status_code == 400 and "malformed binary data" in r.json()["error"]


def test_body_over_the_limit_is_413(server):
    r = call(server, "POST", "/v2/models/cls/infer", data=b"x" * 300_000)
    assert r.status_code == 413 and "200000" in r.json()["error"]


def test_a_request_the_system_drops_is_503_with_its_reason(server):
    body, headers = frame_body((2, *zoo.input_spec("convnet").shape))
    r = call(server, "POST", "/v2/models/cls/infer", data=body, headers=headers)
    assert r.status_code == 503 and "no_route" in r.json()["error"]
    assert "Traceback" not in r.text
    counts = server.stats.snapshot()
    assert counts["errors"]["503"] >= 1 and counts["errors"]["401"] >= 1 and counts["inflight"] == 0


def test_system_failures_are_503_and_model_errors_500():
    from nexus_lab.ingress.app import drop_status, failure_status

    assert drop_status("overload") == 429
    assert {drop_status(r) for r in ("deadline", "no_route", "worker_lost")} == {503}
    assert failure_status("worker tls://127.0.0.1:1 lost with request 3 of session 'a' in flight (x)") == 503
    assert failure_status("worker tls://h:1 unresponsive (its stream silent for 0.40 s) with request 1") == 503
    assert failure_status("no reply from worker tls://h:1 for request 2") == 503
    assert failure_status("frontend closed") == 503
    assert failure_status("RuntimeError: the model raised") == 500


def test_more_rows_in_flight_than_the_frontend_allows_is_429():
    with IngressServer(max_inflight=1) as srv:
        srv.install({"routes": {"cls": []}, "sessions": {"cls": {"model": "convnet", "slo_ms": 50.0}}})
        body, headers = frame_body((2, *zoo.input_spec("convnet").shape))
        r = requests.post(srv.url + "/v2/models/cls/infer", data=body, headers=headers, timeout=10)
        assert r.status_code == 429 and "overload" in r.json()["error"] and "at most 1" in r.json()["error"]
        assert requests.get(srv.url + "/v2/health/live", timeout=5).status_code == 200  # no token asked for


def test_head_405_and_a_chunked_body_over_the_limit(server):
    r = requests.head(server.url + "/v2/health/live", timeout=5)
    assert r.status_code == 200 and r.content == b""
    r = call(server, "POST", "/v2")
    assert r.status_code == 405 and "GET" in r.json()["error"]
    assert call(server, "GET", "/v2/").status_code == 404
    assert call(server, "GET", "/v2/models//infer").status_code == 404

    def chunks():  # no Content-Length: the limit is checked as the body arrives
        for _ in range(30):
            yield b"x" * 10_000

    r = call(server, "POST", "/v2/models/cls/infer", data=chunks())
    assert r.status_code == 413 and "200000" in r.json()["error"]
    assert call(server, "GET", "/v2/health/ready").status_code == 200  # the server goes on


def test_one_keep_alive_connection_carries_many_answers_whole():
    """Every response is one write of head and body (``CoalescingTransport``); many in a row on one connection
    must each arrive whole, with its own id, whatever the status."""
    import http.client
    import socket

    with IngressServer() as srv:
        srv.install({"routes": {"cls": []}, "sessions": {"cls": {"model": "convnet", "slo_ms": 50.0}}})
        peers = set()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        for k in range(30):
            body, headers = frame_body((1, *zoo.input_spec("convnet").shape), rid=f"q{k}")
            conn.request("POST", "/v2/models/cls/infer", body=body, headers=headers)
            peers.add(conn.sock.getsockname())
            r = conn.getresponse()
            assert r.status == 503 and "no_route" in json.loads(r.read())["error"]
            conn.request("GET", "/v2/models/cls")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["name"] == "cls"
            peers.add(conn.sock.getsockname())
        conn.close()
        assert len(peers) == 1
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:  # two requests in one send
            c.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/nope HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while got.count(b"HTTP/1.1 ") < 2 or not got.endswith(b"}"):
                got += c.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 404 " in got and b"Not Found" in got


def test_coalescing_transport_sends_one_turns_writes_as_one():
    import asyncio

    from nexus_lab.ingress.httpserver import CoalescingTransport

    class Raw:
        def __init__(self):
            self.sent, self.closed = [], False

        def write(self, data):
            self.sent.append(bytes(data))

        def is_closing(self):
            return self.closed

        def close(self):
            self.closed = True

        def get_extra_info(self, name):
            return ("127.0.0.1", 1) if name == "peername" else None

    async def main():
        raw = Raw()
        t = CoalescingTransport(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"body")
        assert raw.sent == []
        await asyncio.sleep(0)
        assert raw.sent == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        t.write(b"last")
        t.close()  # pending bytes go first
        assert raw.sent[-1] == b"last" and raw.closed and t.is_closing()
        t.write(b"late")
        await asyncio.sleep(0)
        assert raw.sent[-1] == b"last"  # nothing is written to a closed transport
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)

    asyncio.run(main())


def test_a_frontend_process_runs_in_a_session_of_its_own():
    """With autogroup scheduling, CPU is shared between sessions first: a frontend in its worker's session got
    what the worker's forward passes left (docs/architecture.md, "HTTP library")."""
    import os

    from nexus_lab.ingress.process import spawn, stop

    proc, url = spawn({"name": "fe-session-test", "port": 0}, None)
    try:
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
        assert requests.get(url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        stop(proc)
    assert proc.poll() is not None


def test_coalescing_needs_the_uvicorn_internals_it_relies_on():
    """A uvicorn whose protocol no longer keeps ``transport`` and ``loop`` is served as uvicorn made it."""
    import asyncio

    from nexus_lab.ingress.httpserver import CoalescingTransport, _protocol_class, coalesce

    class Protocol:
        pass

    async def main():
        raw = object()
        same = Protocol()
        same.transport, same.loop = raw, asyncio.get_running_loop()
        assert coalesce(same, raw) and isinstance(same.transport, CoalescingTransport)
        renamed = Protocol()
        renamed._transport, renamed.loop = raw, asyncio.get_running_loop()
        assert not coalesce(renamed, raw) and not hasattr(renamed, "transport")
        no_loop = Protocol()
        no_loop.transport = raw
        assert not coalesce(no_loop, raw) and no_loop.transport is raw

    asyncio.run(main())
    assert _protocol_class().__name__ == "CoalescingHttpToolsProtocol"  # the installed uvicorn is the one it knows
