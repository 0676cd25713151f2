"""Real models (issue 16): the ``torchvision:`` source, model files, image pre/post-processing, the model
repository (good and bad configs), the profiler writing into it, and a cluster that knows a repository's models on
every worker (including one that joins later) and serves JPEG bytes with top-k labels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nexus_lab.models import imaging, sources, zoo  # noqa: E402
from nexus_lab.models.repository import (  # noqa: E402
    RepositoryError,
    load_config,
    load_repository,
    register_config,
    store_profile,
    stored_profiles,
)

RNG = np.random.default_rng(0)
FRAME = RNG.integers(0, 256, size=(48, 60, 3), dtype=np.uint8)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)
    return folder


# ---------------------------------------------------------------------------------------------- sources
def test_torchvision_names_resolve_with_transforms_labels_and_seeded_weights():
    spec = zoo.get_model_spec("torchvision:resnet18")
    assert spec.input_shape == (3, 224, 224)
    assert spec.input_spec is None  # requests send images; the backend makes the tensor
    assert spec.transform.crop == (224, 224) and spec.transform.resize == 256
    assert spec.post.labels[0] == "tench" and len(spec.post.labels) == 1000
    sources.register_source("r18-small", "torchvision:resnet18", input_shape=(3, 32, 32))
    a, b = zoo.build("r18-small"), zoo.build("r18-small")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert a(x).shape == (2, 1000)
        assert torch.equal(a(x), b(x))  # the same name builds the same weights (in every process)
    sources.register_source("r18-other", "torchvision:resnet18", input_shape=(3, 32, 32))
    with torch.inference_mode():
        assert not torch.equal(zoo.build("r18-other")(x), a(x))


def test_other_architectures_and_unknown_names():
    sources.register_source("mnv3", "torchvision:mobilenet_v3_small", input_shape=(3, 32, 32), num_classes=7,
                            labels=[f"c{i}" for i in range(7)], topk=2)
    with torch.inference_mode():
        out = zoo.build("mnv3")(torch.zeros(3, 3, 32, 32))
    assert out.shape == (3, 7)
    top = zoo.get_model_spec("mnv3").post.apply(out[0].numpy())
    assert len(top) == 2 and top[0]["label"].startswith("c") and top[0]["score"] >= top[1]["score"]
    with pytest.raises(zoo.UnknownModelError, match="torchvision:no_such_net"):
        zoo.get_model_spec("torchvision:no_such_net")
    with pytest.raises(ValueError, match="weights"):
        sources.register_source("bad-w", "torchvision:resnet18", weights="NOT_A_WEIGHT")


def test_a_detector_batches_and_returns_boxes_with_scores_and_names():
    spec = sources.register_source("det", "torchvision:ssdlite320_mobilenet_v3_large", input_shape=(3, 96, 96),
                                   min_score=0.0)
    assert spec.transform.mean is None  # torchvision detectors normalise inside
    assert spec.post.labels[1] == "person"
    with torch.inference_mode():
        packed = zoo.build("det")(torch.rand(2, 3, 96, 96)).numpy()
    assert packed.shape == (2, sources.MAX_DETECTIONS, 6)
    boxes = spec.post.apply(packed[0])
    assert all(b["score"] >= 0 and len(b["box"]) == 4 and isinstance(b["label"], str) for b in boxes)
    rows = np.array([[1, 2, 3, 4, 0.9, 1], [0, 0, 1, 1, 0.1, 3], [0, 0, 0, 0, -1, -1]], dtype=np.float32)
    assert imaging.Boxes(0.5, ("bg", "person")).apply(rows) == [
        {"box": [1.0, 2.0, 3.0, 4.0], "score": pytest.approx(0.9), "index": 1, "label": "person"}]


def test_nms_fallback_matches_greedy_suppression():
    from nexus_lab.models.tv_import import nms_fallback

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = nms_fallback(boxes, torch.tensor([0.5, 0.9, 0.3]), 0.5)
    assert keep.tolist() == [1, 2]


def test_pretrained_weights_offline_fall_back_to_random_with_a_warning(monkeypatch):
    from urllib.error import URLError

    def offline(*_a, **_k):
        raise URLError("no network")

    from torchvision.models import _api  # where WeightsEnum.get_state_dict looks the downloader up

    monkeypatch.setattr(_api, "load_state_dict_from_url", offline)
    sources.register_source("pre-r18", "torchvision:resnet18", weights="DEFAULT", input_shape=(3, 32, 32))
    net = zoo.build("pre-r18")
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
    assert "no network" in sources.weight_warnings()["pre-r18"] and "random weights" in sources.weight_warnings()[
        "pre-r18"]


def test_torchscript_and_torch_export_files(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x = torch.randn(2, 3, 2, 2)
    torch.jit.save(torch.jit.script(net), str(tmp_path / "m.pt"))
    torch.export.save(torch.export.export(net, (x,)), str(tmp_path / "m.pt2"))
    for f in ("m.pt", "m.pt2"):
        sources.register_source(f"file-{f}", str(tmp_path / f), input_shape=(3, 2, 2), labels=["a", "b", "c"])
        with torch.inference_mode():
            assert torch.allclose(zoo.build(f"file-{f}")(x), net(x), atol=1e-6)
    with pytest.raises(ValueError, match="input_shape"):
        sources.register_source("nofile", str(tmp_path / "m.pt"))


# ---------------------------------------------------------------------------------------------- imaging
def test_transform_decodes_jpeg_and_png_and_takes_frames_or_tensors():
    t = imaging.ImageTransform((16, 16), 18)
    for payload in (imaging.encode_jpeg(FRAME), _png(FRAME), FRAME):
        x = t.apply(payload)
        assert x.shape == (3, 16, 16) and x.dtype == np.float32
    png = t.apply(_png(FRAME))
    assert np.allclose(png, t.apply(FRAME), atol=1e-5)  # PNG is lossless: the same input as the frame itself
    ready = np.ones((3, 16, 16), dtype=np.float32)
    assert t.apply(ready) is ready
    with pytest.raises(zoo.InputError, match="JPEG/PNG"):
        t.apply(b"not an image")
    with pytest.raises(zoo.InputError, match="payload"):
        t.apply(np.zeros((3, 4), dtype=np.float64))


def test_crop_box_clips_to_the_frame():
    assert imaging.crop_box(FRAME, [10, 5, 20.5, 15]).shape == (10, 11, 3)
    assert imaging.crop_box(FRAME, [-5, -5, 1000, 1000]).shape == FRAME.shape
    assert imaging.crop_box(FRAME, [30, 30, 30, 30]).shape == (1, 1, 3)
    with pytest.raises(zoo.InputError, match="box"):
        imaging.crop_box(FRAME, [1, 2])
    t = imaging.ImageTransform((8, 8), None, None, None)  # a child stage: its parent's box of the frame
    crop = t.apply({"image": _png(FRAME), "box": [10, 5, 30, 25]})
    assert np.allclose(crop, t.apply(np.ascontiguousarray(FRAME[5:25, 10:30])))
    with pytest.raises(zoo.InputError, match="crop"):
        t.apply({"image": FRAME})


def test_prepost_pool_prepares_images_and_fails_only_bad_ones():
    import asyncio

    from nexus_lab.runtime.backend.prepost import PrePost

    sources.register_source("pp", "torchvision:resnet18", input_shape=(3, 16, 16), topk=1)

    class Sink:
        def __init__(self):
            self.ok, self.err = [], []

        def complete_ok(self, rids, outs):
            self.ok += list(zip(rids, outs, strict=True))

        def complete(self, rid, status, value):
            self.err.append((rid, status, value))

    async def go(threads):
        pp, sink, queued = PrePost(threads), Sink(), []
        rows = [[1, "s", 9.0, imaging.encode_jpeg(FRAME)], [2, "s", 9.0, b"junk"], [3, "plain", 9.0, "x"]]
        rest = pp.intake(rows, lambda s: "pp" if s == "s" else "", lambda *a: queued.append(a),
                         lambda sk, rid, msg: sk.complete(rid, "error", msg), sink)
        pp.reply("pp", sink, [7], [np.arange(1000, dtype=np.float32)])
        for _ in range(200):
            if queued and sink.err and sink.ok:
                break
            await asyncio.sleep(0.01)
        pp.close()
        return rest, queued, sink

    for threads in (0, 2):
        rest, queued, sink = asyncio.run(go(threads))
        assert rest == [[3, "plain", 9.0, "x"]]
        assert [q[0] for q in queued] == [1] and queued[0][3].shape == (3, 16, 16)
        assert sink.err[0][0] == 2 and "pre-processing failed" in sink.err[0][2]
        assert sink.ok[0][0] == 7 and sink.ok[0][1][0]["index"] == 999


# ---------------------------------------------------------------------------------------------- prefix groups
def test_fine_tuned_heads_share_a_detected_backbone():
    for k in range(3):
        sources.register_source(f"head{k}", "torchvision:resnet18", input_shape=(3, 32, 32), group="r18heads",
                                num_classes=5)
    assert zoo.prefix_length("r18heads") == 10  # every layer but the head (conv .. avgpool, flatten)
    x = torch.randn(2, 3, 32, 32)
    prefix = zoo.build("r18heads.prefix")
    with torch.inference_mode():
        feats = prefix(x)
        outs = [zoo.build(f"head{k}")(x) for k in range(3)]
        for k in range(3):
            assert torch.allclose(zoo.build(f"head{k}.suffix")(feats), outs[k], atol=1e-5)
    assert not torch.allclose(outs[0], outs[1])  # different heads


# ---------------------------------------------------------------------------------------------- repository
def test_repository_reads_configs_labels_and_stored_profiles(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "labels.txt").write_text("cat\ndog\n")
    _write(tmp_path / "cls", "source: torchvision:resnet18\ninput: {shape: [3, 32, 32]}\nnum_classes: 2\n"
                             "labels: labels.txt\ntopk: 1\npreprocess: {crop: [32, 32], resize: 36}\n")
    _write(tmp_path / "det", "name: my-det\nsource: torchvision:ssdlite320_mobilenet_v3_large\nmin_score: 0.5\n")
    (tmp_path / "notes").mkdir()  # a folder without config.yaml is not a model
    configs = load_repository(tmp_path)
    assert [c.name for c in configs] == ["cls", "my-det"]
    assert [register_config(c.to_dict()) for c in configs] == ["cls", "my-det"]
    spec = zoo.get_model_spec("cls")
    assert spec.post.labels == ("cat", "dog") and spec.transform.resize == 36
    from nexus_lab.profiles import ModelProfile

    prof = ModelProfile.from_inline("cls", {"latency_ms": {1: 2.0, 4: 5.0}, "memory_mb": {1: 10.0, 4: 12.0}})
    path = store_profile(tmp_path, "cls", prof)
    assert path.parent == tmp_path / "cls" / "profiles"
    assert stored_profiles(configs[0])[prof.device].latency_ms(4) == pytest.approx(prof.latency_ms(4))


@pytest.mark.parametrize(("text", "field"), [
    ("input: {shape: [3, 8, 8]}\n", "source"),
    ("source: torchvision:resnet18\nbatch: 3\n", "batch"),
    ("source: torchvision:resnet18\ninput: {shape: [3, 0]}\n", "input.shape"),
    ("source: torchvision:resnet18\npreprocess: {crop: [224]}\n", "preprocess.crop"),
    ("source: torchvision:resnet18\npreprocess: {crop: [8, 8], std: [1, 0, 1]}\n", "preprocess.std"),
    ("source: torchvision:resnet18\nweights_file: missing.pth\n", "weights_file"),
    ("source: missing.pt\ninput: {shape: [3]}\n", "source"),
    ("source: torchvision:resnet18\ntopk: 0\n", "topk"),
    ("source: torchvision:resnet18\nlabels: 3\n", "labels"),
    ("source: [unclosed\n", "cannot parse"),
    ("- a list\n", "top level"),
])
def test_a_bad_config_is_refused_naming_the_file_and_the_field(tmp_path, text, field):
    _write(tmp_path / "m", text)
    with pytest.raises(RepositoryError) as err:
        load_config(tmp_path / "m")
    assert str(tmp_path / "m" / "config.yaml") in str(err.value) and field in str(err.value)


def test_a_factory_config_builds_the_same_weights_in_every_process():
    import functools

    from nexus_lab.models.repository import ModelConfig

    cfg = ModelConfig("emb-f", "", "factory", shape=(1,), dtype="int64",
                      factory=functools.partial(torch.nn.Embedding, 10, 2))
    register_config(cfg.to_dict())
    first = zoo.build("emb-f").weight.detach().clone()
    register_config(cfg.to_dict())  # as a second worker would
    assert torch.equal(zoo.build("emb-f").weight, first)
    with pytest.raises(RepositoryError, match=r"add_model\('emb-g'\): shape"):
        register_config(ModelConfig("emb-g", "", "factory", factory=torch.nn.Identity))


def test_a_config_that_cannot_be_built_and_duplicate_names_are_refused(tmp_path):
    _write(tmp_path / "a", "source: torchvision:not_a_net\n")
    with pytest.raises(RepositoryError, match=r"a/config.yaml.*not_a_net"):
        register_config(load_config(tmp_path / "a"))
    _write(tmp_path / "a", "name: same\nsource: torchvision:resnet18\n")
    _write(tmp_path / "b", "name: same\nsource: torchvision:resnet18\n")
    with pytest.raises(RepositoryError, match="name: 'same'"):
        load_repository(tmp_path)
    with pytest.raises(RepositoryError, match="no such folder"):
        load_repository(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- profiler
def test_profile_cli_writes_into_the_repository_and_the_planner_reads_it(tmp_path, capsys):
    from nexus_lab import load_workload, plan_workload
    from nexus_lab.cli import main

    _write(tmp_path / "small", "source: torchvision:resnet18\ninput: {shape: [3, 32, 32]}\n")
    assert main(["profile", "small", "--models", str(tmp_path), "--batches", "1,2", "--repeats", "2",
                 "--out", str(tmp_path)]) == 0
    path = tmp_path / "small" / "profiles" / "cpu_1-thread.txt"
    assert "wrote" in capsys.readouterr().err and path.is_file()
    prof = stored_profiles(load_config(tmp_path / "small"))["cpu_1-thread"]
    assert prof.max_batch == 2 and prof.preprocess_ms > 0 and prof.postprocess_ms > 0
    wl = load_workload({"device": {"name": "cpu", "memory_mb": 4096},
                        "models": [{"name": "small", "profile": str(path)}],
                        "sessions": [{"model": "small", "slo_ms": 2000, "rate": 5}]})
    assert plan_workload(wl).num_gpus >= 1
    assert main(["profile", "small", "--models", str(tmp_path / "nowhere")]) == 2


# ---------------------------------------------------------------------------------------------- a cluster
@pytest.mark.slow
def test_a_repository_is_known_on_every_worker_and_serves_images(tmp_path):
    import functools
    import time

    import nexus_lab
    from nexus_lab.runtime.profiler import profile_builtin
    from nexus_lab.runtime.results import RequestFailed

    repo = tmp_path / "repo"
    _write(repo / "r18", "source: torchvision:resnet18\ninput: {shape: [3, 32, 32]}\ntopk: 3\n")
    for k in range(2):  # two fine-tuned heads on one frozen backbone: planned and served as a prefix group
        _write(repo / f"ft{k}", "source: torchvision:resnet18\ninput: {shape: [3, 32, 32]}\nnum_classes: 4\n"
                                "labels: [a, b, c, d]\ntopk: 1\ngroup: ft\n")
    for cfg in load_repository(repo):
        register_config(cfg)
    for name in ("r18", "ft0", "ft1", "ft.prefix", "ft0.suffix", "ft1.suffix"):
        store_profile(repo, name, profile_builtin(name, batches=(1, 2), repeats=2, progress=False))
    with nexus_lab.start(gpus=1, device="cpu", auto=False, models=str(repo)) as ctl:
        ctl.add_session("r18", slo_ms=2000, rate=5, name="cls")
        ctl.add_session("ft0", slo_ms=2000, rate=2, name="f0")
        ctl.add_session("ft1", slo_ms=2000, rate=2, name="f1")
        plan = ctl.apply()
        assert "ft.prefix" in {a.model for g in plan.gpus for a in g.allocations}
        top = ctl.infer("cls", imaging.encode_jpeg(FRAME), timeout_s=30)
        assert len(top) == 3 and all(isinstance(t["label"], str) for t in top)
        for s in ("f0", "f1"):  # JPEG bytes to a member: prefix once, its own head, its own class names
            assert ctl.infer(s, imaging.encode_jpeg(FRAME), timeout_s=30)[0]["label"] in "abcd"
        assert ctl.infer("cls", FRAME, timeout_s=30)[0]["index"] in range(1000)
        with pytest.raises(RequestFailed, match="pre-processing failed"):
            ctl.infer("cls", b"junk", timeout_s=30)
        ctl.add_model("torchvision:mobilenet_v3_small", shape=(3, 32, 32))
        # a model built by user code travels too: no register_model call on any worker
        ctl.add_model(functools.partial(torch.nn.Embedding, 10, 2), "embed10", shape=(1,), dtype="int64",
                      profile={"latency_ms": {1: 1.0, 8: 2.0}, "memory_mb": {1: 10.0, 8: 10.0}})
        ctl.add_session("embed10", slo_ms=500, rate=5, name="emb")
        ctl.apply()
        assert np.asarray(ctl.infer("emb", np.array([3], dtype=np.int64), timeout_s=30)).shape == (1, 2)
        ctl._cluster.scale(2)  # a worker that joins later knows both models without any register call
        deadline = time.time() + 60
        while len(ctl.client.scheduler_info()["workers"]) < 2 and time.time() < deadline:
            time.sleep(0.2)

        replies = ctl.io.call({w: ("nexus_models", {}) for w in ctl.workers()}, timeout=30)
        assert len(replies) == 2
        for rep in replies.values():  # what each worker registered through the plugin, and nothing failed
            assert {"r18", "ft0", "torchvision:mobilenet_v3_small", "embed10"} <= set(rep["models"])
            assert rep["errors"] == {}
        assert not {"r18", "ft0", "ft1"} & set(ctl.state()["cluster"]["model_warnings"])  # random weights asked
        with pytest.raises(nexus_lab.WorkloadError, match=r"bad/config\.yaml: topk"):
            _write(repo / "bad", "source: torchvision:resnet18\ntopk: -1\n")
            ctl.add_model(str(repo / "bad"))
