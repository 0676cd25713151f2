"""Profiles: parsing the shipped TITAN X tables, the inflated monotone envelope, inline profiles, round trips."""

import numpy as np
import pytest

from nexus_lab.profiles import ModelProfile, ProfileError, builtin_profiles, load_profile, profile_set


def test_builtins_are_the_four_titan_x_models():
    assert builtin_profiles() == [
        "titan-x-pascal/vgg16", "titan-x-pascal/vgg_face", "titan-x-pascal/vgg_s", "titan-x-pascal/yolo9000"]
    assert sorted(profile_set("titan-x-pascal")) == ["vgg16", "vgg_face", "vgg_s", "yolo9000"]


def test_latency_is_mean_plus_std_times_safety():
    p = load_profile("titan-x-pascal/vgg16")
    # Row 1 of caffe-vgg16.txt: 6277.4 us mean, 22.3517 us std.
    assert p.latency_ms(1) == pytest.approx((6277.4 + 22.3517) * 1.15 / 1000)
    assert p.max_batch == 174
    assert p.preprocess_ms == pytest.approx((3306.44 + 1535.62) * 1.15 / 1000)
    assert p.budget_ms(100, net_ms=2.0) == pytest.approx(100 - p.preprocess_ms - p.postprocess_ms - 2.0)


def test_envelope_is_monotone_and_pads_to_faster_batch():
    p = load_profile("titan-x-pascal/vgg_s")
    # The measured table is noisy: l(143) > l(144). The envelope takes min over b' >= b.
    raw = (p.latency_us + p.std_us) * p.safety / 1000
    assert raw[142] > raw[143]
    assert p.latency_ms(143) == pytest.approx(raw[143])
    assert np.all(np.diff(p.lat_ms[1:]) >= 0)
    assert np.all(np.diff(p.mem_mb[1:]) >= 0)


def test_vectorised_queries_and_range_errors():
    p = load_profile("titan-x-pascal/yolo9000")
    got = p.latency_ms(np.array([1, 2, 24]))
    assert got.shape == (3,)
    with pytest.raises(ValueError, match=r"batch must be in 1..24"):
        p.latency_ms(25)


def test_inline_profile_interpolates_and_extrapolates_memory():
    p = ModelProfile.from_inline("tiny", {"latency_ms": {1: 2.0, 8: 5.0, 32: 14.0},
                                          "memory_mb": {1: 300, 32: 900}}, safety=1.0)
    assert p.max_batch == 32
    assert p.latency_ms(4) == pytest.approx(2.0 + 3 * (3.0 / 7))
    assert p.memory_mb(16) == pytest.approx(300 + 15 * 600 / 31)


@pytest.mark.parametrize("spec, field", [
    ({}, "latency_ms"),
    ({"latency_ms": {0: 1.0}}, "latency_ms"),
    ({"latency_ms": {1: -1.0}}, "latency_ms"),
    ({"latency_ms": {1: 1.0}, "colour": 3}, "unknown field"),
    ({"latency_ms": {1: 1.0}, "preprocess_ms": -2}, "preprocess_ms"),
])
def test_inline_profile_errors_name_the_field(spec, field):
    with pytest.raises(ProfileError, match=field):
        ModelProfile.from_inline("m", spec)


def test_text_round_trip():
    p = load_profile("titan-x-pascal/vgg_face")
    q = ModelProfile.from_text(p.to_text(), name="vgg_face")
    np.testing.assert_allclose(q.lat_ms, p.lat_ms, rtol=1e-5)
    np.testing.assert_allclose(q.mem_mb, p.mem_mb, rtol=1e-5)
    assert q.preprocess_ms == pytest.approx(p.preprocess_ms, rel=1e-5)


def test_unknown_profile_lists_the_builtins():
    with pytest.raises(ProfileError, match="titan-x-pascal/vgg16"):
        load_profile("nope/none")


# ---------------------------------------------------------------------------------------------- validation
def _vgg16_text() -> str:
    return load_profile("titan-x-pascal/vgg16").to_text()


@pytest.mark.parametrize("line, content, message", [
    (184, "-100500,0", r"line 184: mean\(us\): must be finite and >= 0, got -100500"),
    (6, "2,14499,nan,1061093376", r"line 6: std\(us\): must be finite and >= 0, got nan"),
    (5, None, r"line 4: 'Forward latency' has no rows"),
    (7, "4,18180.1,183.652,1061093376", r"line 7: batch: expected 3 \(batches run 1, 2, \.\.\. without gaps\)"),
    (6, "2.5,14499,20,1061093376", r"line 6: batch: must be finite and an integer >= 1, got 2\.5"),
    (5, "1,6277.4,22.3", r"line 5: expected batch,latency\(us\),std\(us\),memory\(B\)"),
    (5, "1,-5,0,0", r"line 5: latency\(us\): must be finite and > 0"),
    (5, "1,inf,0,0", r"line 5: latency\(us\): must be finite and > 0"),
    (5, "1,one,0,0", r"line 5: latency\(us\): 'one' is not a number"),
    (6, "2,14499,20.6559,-1", r"line 6: memory\(B\): must be finite and >= 0"),
])
def test_profile_files_are_validated_naming_file_line_and_field(tmp_path, line, content, message):
    lines = _vgg16_text().splitlines()
    lines = lines[:line - 1] if content is None else [*lines[:line - 1], content, *lines[line:]]
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProfileError, match=r"^models\[0\]\.profile \(bad\.txt\) " + message):
        load_profile(str(path), "m", field_path="models[0].profile")


def test_profile_file_not_utf8(tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"\xff\xfe" + _vgg16_text().encode())
    with pytest.raises(ProfileError, match=r"^models\[0\]\.profile: bin\.txt is not UTF-8 text \(byte 0\)"):
        load_profile(str(path), "m", field_path="models[0].profile")


@pytest.mark.parametrize("kwargs, message", [
    ({"std_us": [float("nan")]}, "std and memory must be finite"),
    ({"memory_bytes": [-1.0]}, "std and memory must be finite"),
    ({"postprocess_us": (-100500.0, 0.0)}, r"m\.postprocess: mean and std must be finite and >= 0"),
    ({"safety": float("inf")}, r"m\.safety: must be finite"),
    ({"latency_us": [1e-320]}, r"m\.latency: inflated l\(b\) must be in"),
])
def test_profile_values_are_validated(kwargs, message):
    args = {"name": "m", "device": "d", "batches": [1], "latency_us": [1000.0], "std_us": [0.0],
            "memory_bytes": [0.0], **kwargs}
    with pytest.raises(ProfileError, match=message):
        ModelProfile(**args)


@pytest.mark.parametrize("spec, field", [
    ({"latency_ms": {1: 1.0, "1": 2.0}}, r"latency_ms\['1'\]: batch 1 given twice"),
    ({"latency_ms": {True: 1.0}}, r"latency_ms\[True\]: batch must be an integer"),
    ({"latency_ms": {1.5: 1.0}}, r"latency_ms\[1\.5\]: batch must be an integer"),
    ({"latency_ms": {5000: 1.0}}, r"latency_ms\[5000\]: batch must be an integer in 1\.\.4096"),
    ({"latency_ms": {1: float("nan")}}, r"latency_ms\[1\]: must be a finite number > 0"),
    ({"latency_ms": {1: "2"}}, r"latency_ms\[1\]: must be a finite number > 0"),
    ({"latency_ms": {1: 1.0}, "device": ["x"]}, r"m\.device: must be a string"),
    ({"latency_ms": {1: 1.0}, 3: 1, "a": 2}, "unknown field"),
])
def test_inline_profile_keys_and_values_are_strict(spec, field):
    with pytest.raises(ProfileError, match=field):
        ModelProfile.from_inline("m", spec)
