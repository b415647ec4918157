"""Choosing the backend from GENV_GPU_BACKEND or from what the machine has."""

from __future__ import annotations

import pytest

import genv.backends.choose as select
from genv.backends import nvml_binding, open_backend
from genv.backends.base import BackendError
from genv.backends.fake import FakeBackend
from genv.backends.nvidia_smi import NvidiaSmiBackend
from genv.backends.nvml import NvmlBackend


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENV_GPU_BACKEND", raising=False)
    monkeypatch.setenv("GENV_FAKE_MACHINE", "/nonexistent/machine.json")
    monkeypatch.setattr(select, "_nvml", None)


def machine(nvml: bool, smi: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "nvml_library_loads", lambda: nvml)
    monkeypatch.setattr(select, "nvidia_smi_on_path", lambda: smi)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("nvml", NvmlBackend),
        ("nvidia-smi", NvidiaSmiBackend),
        ("fake", FakeBackend),
        (" NVML ", NvmlBackend),
    ],
)
def test_env_var_names_the_backend(value: str, kind: type, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(False, False, monkeypatch)  # detection must not matter
    monkeypatch.setenv("GENV_GPU_BACKEND", value)
    backend = open_backend()
    assert isinstance(backend, kind)
    assert backend.name == value.strip().lower()


def test_argument_wins_over_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENV_GPU_BACKEND", "nvml")
    assert isinstance(open_backend("fake"), FakeBackend)


@pytest.mark.parametrize("value", ["cuda", "nvidia_smi"])
def test_unknown_value(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENV_GPU_BACKEND", value)
    with pytest.raises(BackendError) as raised:
        open_backend()
    message = str(raised.value)
    assert "\n" not in message
    assert "GENV_GPU_BACKEND" in message and value in message
    for name in ("nvml", "nvidia-smi", "fake"):
        assert name in message


def test_empty_env_var_means_detect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENV_GPU_BACKEND", "")
    machine(False, True, monkeypatch)
    assert isinstance(open_backend(), NvidiaSmiBackend)


@pytest.mark.parametrize(
    ("nvml", "smi", "kind"),
    [(True, True, NvmlBackend), (True, False, NvmlBackend), (False, True, NvidiaSmiBackend)],
)
def test_auto_detection(nvml: bool, smi: bool, kind: type, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(nvml, smi, monkeypatch)
    assert isinstance(open_backend(), kind)


def test_nothing_found(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(False, False, monkeypatch)
    with pytest.raises(BackendError) as raised:
        open_backend()
    message = str(raised.value)
    assert "\n" not in message
    assert "no NVIDIA driver" in message
    assert "GENV_GPU_BACKEND=fake GENV_FAKE_MACHINE=machine.json" in message


def test_nvml_instance_is_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(True, False, monkeypatch)
    first = open_backend()
    assert open_backend() is first
    assert open_backend("nvml") is first


def test_real_detectors_do_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml_binding, "LIBRARY", "libgenv-test-does-not-exist.so.1")
    assert select.nvml_library_loads() is False
    monkeypatch.setenv("PATH", "/nonexistent")
    assert select.nvidia_smi_on_path() is False
