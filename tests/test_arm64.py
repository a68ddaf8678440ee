"""The arm64 stand-in: setup, and validation and profiling on aarch64 onnxruntime under qemu-user.

These need root and binfmt_misc (CI has both); elsewhere they skip with the reason the setup gave."""

from __future__ import annotations

import json
import os

import pytest
from conftest import ROOT, base_recipe

from edgeq import api
from edgeq.errors import DeviceError

pytestmark = pytest.mark.qemu
DEVICE = "raspberry-pi-5"


@pytest.fixture(scope="module")
def standin():
    try:
        return api.setup_device(DEVICE)
    except DeviceError as exc:
        pytest.skip(f"this machine cannot run the arm64 stand-in: {exc}")


def test_setup_is_idempotent_and_holds_aarch64_onnxruntime(standin, run_cli):
    from importlib import metadata

    assert standin["machine"] == "aarch64" and standin["onnxruntime"] == metadata.version("onnxruntime")
    result = run_cli("devices", "setup", DEVICE)
    assert result.exit_code == 0 and f"{DEVICE}: stand-in ready (aarch64" in result.stdout


def test_build_validates_on_aarch64_onnxruntime(standin, tiny_bert, write_recipe, tmp_path):
    recipe = base_recipe(
        str(tiny_bert), targets=[DEVICE], validation={"samples": 12, "thresholds": {"cosine_mean": 0.99}}
    )
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    (entry,) = report["validations"]  # an emulated arm64 is slow: the quantized model only
    assert entry["artifact"] == "int8" and entry["mode"] == "emulated"
    assert entry["environment"]["machine"] == "aarch64" and "qemu" in entry["note"]
    assert entry["samples"] == 12 and entry["metrics"]["cosine_mean"] >= 0.99 and entry["passed"]
    assert set(entry["versus_host_cpu"]) == {"cosine_mean", "cosine_min", "max_abs_error"}
    assert "stand-in" in entry["latency_note"]


def test_profile_runs_in_the_standin_and_says_its_latency_is_not_the_devices(standin, tiny_onnx, run_cli):
    result = run_cli(
        "profile",
        tiny_onnx,
        "--device",
        DEVICE,
        "--runs",
        "3",
        "--min-seconds",
        "0",
        "--warmup",
        "1",
        "--sequence-length",
        "8",
        "--json",
        "-",
    )
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout)
    assert profile["transport"] == "qemu" and profile["mode"] == "emulated"
    assert profile["environment"]["machine"] == "aarch64" and "not of the device" in profile["note"]


def test_setup_explains_why_a_machine_cannot(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DeviceError) as caught:
        api.setup_device(DEVICE)
    assert str(caught.value) == (
        "setting up the arm64 stand-in needs root (debootstrap, chroot and binfmt_misc). "
        "Run it as root, e.g. sudo edgeq devices setup raspberry-pi-5"
    )


def test_devices_without_a_standin_need_no_setup(run_cli):
    result = run_cli("devices", "setup", "x86-avx512-vnni")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: device 'x86-avx512-vnni' needs no setup. Only devices with `stand_in: qemu-arm64` have one"
    )


@pytest.mark.real_model
def test_raspberry_pi_recipe_on_minilm(standin, tmp_path):
    out = tmp_path / "build"
    result = api.build(ROOT / "recipes" / "minilm-raspberry-pi.yaml", output=out)
    (entry,) = json.loads((out / "report.json").read_text())["validations"]
    assert result.exit_code == 0 and entry["environment"]["machine"] == "aarch64"
    assert entry["metrics"]["cosine_mean"] >= 0.99
