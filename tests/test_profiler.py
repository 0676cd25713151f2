"""Tests of the profiler: a tiny torch model on CPU gives a valid profile that round-trips through the text format,
and ``nexus-lab profile`` runs it on a built-in model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nexus_lab.cli import main  # noqa: E402
from nexus_lab.profiles import ModelProfile, ProfileError  # noqa: E402
from nexus_lab.runtime.profiler import profile_builtin, profile_module  # noqa: E402


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2048), torch.nn.ReLU(),
                               torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10))


def test_profile_module_valid_and_round_trips() -> None:
    prof = profile_module(_mlp(), (256,), batches=(1, 4, 64), repeats=5, warmup=2, name="mlp", threads=1,
                          progress=False)
    assert isinstance(prof, ModelProfile)
    assert prof.name == "mlp" and prof.max_batch == 64
    assert list(prof.batches) == list(range(1, 65))
    assert np.all(prof.latency_us > 0) and np.all(prof.std_us >= 0)
    # latency grows with batch: 64 rows of this MLP (~300 M multiply-adds, milliseconds) cost far more than one row
    # (~5 M), by more than the preemptions of a loaded 2-core machine can add to the mean of 5 runs
    assert prof.latency_us[63] > prof.latency_us[0]
    assert prof.lat_ms[64] > prof.lat_ms[1]
    # interpolated linearly between measured sizes
    assert prof.latency_us[1] == pytest.approx(prof.latency_us[0] + (prof.latency_us[3] - prof.latency_us[0]) / 3)
    # cpu memory estimate: weights plus activations, growing with batch
    params = sum(p.numel() * 4 for p in _mlp().parameters())
    assert prof.memory_bytes[0] > params
    assert prof.memory_bytes[63] > prof.memory_bytes[0]
    assert prof.preprocess_us[0] > 0 and prof.postprocess_us[0] > 0
    back = ModelProfile.from_text(prof.to_text())
    assert back.name == "mlp" and back.device == prof.device == "cpu_1-thread"
    np.testing.assert_allclose(back.latency_us, prof.latency_us, rtol=1e-5)
    np.testing.assert_allclose(back.std_us, prof.std_us, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(back.memory_bytes, prof.memory_bytes, atol=1)
    np.testing.assert_allclose(back.lat_ms, prof.lat_ms, rtol=1e-5)
    assert back.preprocess_us == pytest.approx(prof.preprocess_us, rel=1e-5)


def test_threads_restored() -> None:
    before = torch.get_num_threads()
    profile_module(_mlp(), (256,), batches=(1,), repeats=1, warmup=0, threads=1, progress=False)
    assert torch.get_num_threads() == before


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batches"):
        profile_module(_mlp(), (256,), batches=(0, 2), progress=False)
    with pytest.raises(ValueError, match="repeats"):
        profile_module(_mlp(), (256,), repeats=0, progress=False)
    with pytest.raises(ValueError, match="device"):
        profile_module(_mlp(), (256,), device="tpu", progress=False)
    with pytest.raises(ProfileError, match="unknown model"):
        profile_builtin("nope", progress=False)
    with pytest.raises(ProfileError, match="any payload"):
        profile_builtin("noop", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when cuda is absent")
def test_cuda_absent_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"cuda\.is_available"):
        profile_builtin("tiny", device="cuda", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda is not available (no GPU on this machine)")
def test_profile_on_cuda() -> None:
    prof = profile_builtin("convnet", device="cuda", batches=(1, 8), repeats=3, progress=False)
    assert prof.max_batch == 8 and prof.memory_bytes[0] > 0 and "cpu" not in prof.device


def test_profile_builtin_detector_has_postprocess() -> None:
    prof = profile_builtin("detector", batches=(1, 2), repeats=2, warmup=1, progress=False)
    assert prof.max_batch == 2 and prof.postprocess_us[0] > 0 and prof.preprocess_us[0] > 0


def test_cli_profile(tmp_path, capsys) -> None:
    assert main(["profile", "tiny", "--batches", "1,2", "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    prof = ModelProfile.from_text(text)
    assert prof.name == "tiny" and prof.max_batch == 2
    out = tmp_path / "tiny.txt"
    assert main(["profile", "tiny", "--batches", "1,2", "--repeats", "2", "--out", str(out)]) == 0
    assert ModelProfile.from_text(out.read_text()).max_batch == 2
    assert main(["profile", "nope", "--batches", "1"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["profile", "tiny", "--device", "gpu", "--batches", "1"]) == 2
