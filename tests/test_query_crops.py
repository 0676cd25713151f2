"""Crops of a query frame (issue 16): a child whose model pre-processes images gets ``{"image", "box"}`` requests
and crops on its backend's CPU threads; a child without (the zoo's tiny nets) still gets crops cut on the
frontend; boxes map back from the parent's input to its image; and end to end on a small cluster, a torchvision
detector's boxes go to a torchvision classifier whose answers are those of the crops made locally."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nexus_lab.models import imaging, sources, zoo  # noqa: E402
from nexus_lab.runtime.crops import BoxCrop, backend_crops  # noqa: E402
from nexus_lab.runtime.queries import crop_boxes, start_query  # noqa: E402

FRAME = np.random.default_rng(1).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
QUERY = {"name": "q", "slo_ms": 5000.0, "stages": [{"name": "det", "session": "q/det", "budget_ms": 2000.0},
                                                   {"name": "cls", "session": "q/cls", "budget_ms": 2000.0}]}
PARENTS = {"det": [], "cls": ["det"]}
DETS = [{"box": [0.0, 0.0, 16.0, 16.0], "score": 0.9, "index": 1, "label": "person"},
        {"box": [8.0, 4.0, 24.0, 30.0], "score": 0.5, "index": 3, "label": "car"}]


@pytest.fixture(scope="module")
def models():
    """A detector with a plain resize to 32 x 32 and a classifier with resize + centre crop (both take images)."""
    sources.register_source("crop-det", "torchvision:ssdlite320_mobilenet_v3_large", input_shape=(3, 32, 32))
    sources.register_source("crop-cls", "torchvision:mobilenet_v3_small", input_shape=(3, 24, 24))
    return "crop-det", "crop-cls"


class RecordingFrontend:
    """Routes two sessions to models; the detector answers ``DETS``, the classifier echoes what it was sent."""

    def __init__(self, det_model: str, cls_model: str) -> None:
        self.sessions = {"q/det": {"model": det_model, "slo_ms": 5000.0}, "q/cls": {"model": cls_model,
                                                                                   "slo_ms": 5000.0}}
        self.sent: dict[str, list] = {}
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run_on_loop(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def send_many(self, session, items, on_done, *, deadline=None, arrived=None, timeout_s=None):
        self.sent[session] = list(items)
        for cb, x in zip(on_done, items, strict=True):
            self.loop.call_soon(cb, "ok", DETS if session == "q/det" else x)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_box_to_source_undoes_resize_and_centre_crop():
    plain = imaging.ImageTransform((32, 32), None, None, None)  # a detector's: straight to 32 x 32
    assert plain.box_to_source([0, 0, 32, 32], (60, 80)) == [0.0, 0.0, 80.0, 60.0]
    assert plain.box_to_source([8, 16, 16, 32], (60, 80)) == [20.0, 30.0, 40.0, 60.0]
    # shorter side 60 -> 40 (80 -> 53), centre crop 32 x 32: offsets (top 4, left 10) in the resized image
    cc = imaging.ImageTransform((32, 32), 40)
    assert cc.resized_size((60, 80)) == (40, 53)
    x1, y1, x2, y2 = cc.box_to_source([0, 0, 32, 32], (60, 80))
    assert (x1, y1) == pytest.approx((10 * 80 / 53, 4 * 60 / 40)) and (x2, y2) == pytest.approx((42 * 80 / 53, 54.0))
    # what the transform makes of that source region is what it makes of the whole image: the crop it keeps
    region = imaging.crop_box(FRAME, [x1, y1, x2, y2])
    assert abs(region.shape[0] / region.shape[1] - 1.0) < 0.1
    with pytest.raises(zoo.InputError, match="box"):
        cc.box_to_source([1, 2], (60, 80))


def test_image_size_reads_headers_and_frames_only():
    assert imaging.image_size(imaging.encode_jpeg(FRAME)) == (60, 80)
    assert imaging.image_size(FRAME) == (60, 80)
    assert imaging.image_size(np.zeros((3, 8, 8), np.float32)) is None
    assert imaging.image_size(b"junk") is None and imaging.image_size("x") is None


def test_a_child_that_crops_gets_image_and_box_and_the_frontend_crops_for_the_rest(models):
    det, cls = models
    jpeg = imaging.encode_jpeg(FRAME)
    items = backend_crops(det, cls, jpeg, DETS)
    assert [it["image"] for it in items] == [jpeg, jpeg]  # the parent's own input, cropped on the backend
    assert items[1]["box"] == pytest.approx([8 * 80 / 32, 4 * 60 / 32, 24 * 80 / 32, 30 * 60 / 32])
    # the zoo detector's rows are fractions of its input: the same boxes in pixels of the image
    rows = np.array([[0.25, 0.5, 0.5, 1.0, 0.9]])
    assert backend_crops(det, cls, FRAME, rows)[0]["box"] == pytest.approx([20.0, 30.0, 40.0, 60.0])
    assert backend_crops(det, cls, jpeg, []) == []  # nothing detected: no child requests
    assert backend_crops(det, "tiny", jpeg, DETS) is None  # the child takes tensors: no backend crop
    assert backend_crops(det, cls, np.zeros((3, 8, 8), np.float32), DETS) is None  # not an image
    assert backend_crops(det, cls, jpeg, "no boxes") is None
    tensor = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    out = crop_boxes.for_models(det, "tiny", tensor, np.array([[0, 0, 0.5, 0.5, 0.9]]), "cls")
    assert len(out) == 1 and out[0].shape == tensor.shape  # frontend crop, as before
    assert isinstance(BoxCrop(backend=False).for_models(det, cls, FRAME, DETS, "cls")[0], np.ndarray)


def test_a_query_frame_sends_the_crops_to_the_childs_backend(models):
    det, cls = models
    jpeg = imaging.encode_jpeg(FRAME)
    fe = RecordingFrontend(det, cls)
    try:
        out = start_query(fe, QUERY, PARENTS, jpeg).result(5)
        assert out["ended_by"] is None
        assert [it["box"] for it in fe.sent["q/cls"]] == [backend_crops(det, cls, jpeg, DETS)[k]["box"]
                                                         for k in range(2)]
        assert all(it["image"] is jpeg for it in fe.sent["q/cls"])
        fe.sessions["q/cls"]["model"] = "tiny"  # a child that takes tensors: the frontend crops, as before
        frame = np.zeros((3, 8, 8), np.float32)
        start_query(fe, QUERY, PARENTS, frame).result(5)
        assert all(isinstance(x, np.ndarray) and x.shape == frame.shape for x in fe.sent["q/cls"])
    finally:
        fe.close()


@pytest.mark.slow
def _query_over_http(url: str, jpeg: bytes) -> dict:
    """Query ``q`` through the endpoint with tritonclient: one JPEG as BYTES; each stage's BYTES output."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    try:
        meta = client.get_model_metadata("q")
        assert meta["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [1]}]
        assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("det", "BYTES"), ("cls", "BYTES")]
        inp = httpclient.InferInput("input", [1], "BYTES")
        inp.set_data_from_numpy(np.array([jpeg], dtype=object), binary_data=True)
        res = client.infer("q", [inp])
        return {name: list(res.as_numpy(name)) for name in ("det", "cls")}
    finally:
        client.close()


def test_a_detectors_boxes_are_cropped_and_classified_on_the_backend():
    """A detector parent and a classifier child (random weights) on a one-worker cluster: every box of every frame
    is classified, and each answer is the classifier's on that box's crop made locally from the JPEG; the same
    query through the HTTP endpoint, a JPEG as BYTES, answers the same."""
    import nexus_lab

    with nexus_lab.start(gpus=1, device="cpu", auto=False) as ctl:
        ctl.add_model("torchvision:ssdlite320_mobilenet_v3_large", "det32", shape=(3, 32, 32), min_score=0.0,
                      profile={"latency_ms": {1: 40.0, 8: 200.0}, "memory_mb": {1: 50.0, 8: 50.0}})
        ctl.add_model("torchvision:mobilenet_v3_small", "cls24", shape=(3, 24, 24), topk=1,
                      profile={"latency_ms": {1: 5.0, 32: 60.0}, "memory_mb": {1: 20.0, 32: 20.0}})
        ctl.add_query("q", 8000, [{"name": "det", "model": "det32"},
                                  {"name": "cls", "model": "cls24", "parent": "det", "gamma": 10}], rate=1)
        ctl.apply()
        jpeg = imaging.encode_jpeg(FRAME)
        out = ctl.query("q", jpeg, timeout_s=60)
        raw = ctl.query("q", FRAME, timeout_s=60)  # a uint8 frame travels inside the crop request too
        http = _query_over_http(ctl.serve()[0], jpeg)
    # the endpoint's frontend process knows the add_model models as the backends do: the same answers over HTTP
    assert [d["index"] for d in json.loads(http["det"][0])] == [d["index"] for d in out["outputs"]["det"][0]]
    assert [json.loads(t)[0]["index"] for t in http["cls"]] == [t[0]["index"] for t in out["outputs"]["cls"]]
    assert out["ended_by"] is None and raw["ended_by"] is None, (out["ended_by"], raw["ended_by"])
    assert len(raw["outputs"]["cls"]) == len(raw["outputs"]["det"][0]) > 0
    dets, tops = out["outputs"]["det"][0], out["outputs"]["cls"]
    assert len(dets) > 0 and len(tops) == len(dets)
    det_t, cls_spec = zoo.get_model_spec("det32").transform, zoo.get_model_spec("cls24")
    net = zoo.build("cls24")
    for d, top in list(zip(dets, tops, strict=True))[:5]:
        crop = imaging.crop_box(imaging.decode_image(jpeg).numpy().transpose(1, 2, 0),
                                det_t.box_to_source(d["box"], FRAME.shape[:2]))
        with torch.inference_mode():
            logits = net(torch.from_numpy(cls_spec.transform.apply(crop))[None]).numpy()[0]
        assert top[0]["index"] == int(np.argmax(logits))
