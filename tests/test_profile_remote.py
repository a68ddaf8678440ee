"""`edgeq profile` over SSH to a real OpenSSH server on 127.0.0.1: the contract, strict host keys, cleanup."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sshd import SSHD, start_sshd

pytestmark = pytest.mark.skipif(not SSHD.exists(), reason="openssh-server is not installed (make system-deps)")

CONTRACT = {
    "transport",
    "latency_ms",
    "runs",
    "throughput_per_s",
    "load_ms",
    "first_run_ms",
    "peak_rss_mb",
    "ops",
    "placement",
    "environment",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


def leftover_work_folders() -> set[Path]:
    return set(Path("/tmp").glob("edgeq-run-*"))


def remote_args(server, python: str = sys.executable, known_hosts: Path | None = None) -> list:
    return [
        "--host",
        server.url,
        "--ssh-key",
        server.client_key,
        "--known-hosts",
        known_hosts or server.known_hosts,
        "--remote-python",
        python,
    ]


def test_profile_over_ssh_carries_the_contract_and_cleans_up(server, tiny_onnx, run_cli, tmp_path):
    before = leftover_work_folders()
    out = tmp_path / "remote.json"
    result = run_cli(
        "profile",
        tiny_onnx,
        "--runs",
        "30",
        "--min-seconds",
        "0.2",
        "--sequence-length",
        "16",
        *remote_args(server),
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    profile = json.loads(out.read_text())
    assert CONTRACT <= set(profile)
    assert profile["transport"] == "ssh" and profile["mode"] == "remote" and profile["host"].endswith(f":{server.port}")
    lat = profile["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] and profile["runs"] >= 30
    assert profile["ops"] and abs(sum(o["share"] for o in profile["ops"]) - 1) < 0.01
    assert profile["placement"] == {"CPUExecutionProvider": sum(profile["placement"].values())}
    assert {"machine", "onnxruntime", "cpu", "threads"} <= set(profile["environment"])
    assert leftover_work_folders() == before


def test_unknown_host_key_is_refused(server, tiny_onnx, run_cli, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = run_cli("profile", tiny_onnx, *remote_args(server, known_hosts=empty))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: the host key of 127.0.0.1:{server.port} is not in {empty}: refusing to "
        "connect. Check the device's fingerprint, then add it (ssh-keyscan) to that file"
    )


def test_a_remote_failure_still_cleans_up(server, tiny_onnx, run_cli):
    before = leftover_work_folders()
    result = run_cli("profile", tiny_onnx, *remote_args(server, python="/nonexistent/python3"))
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: the profiling run on {server.user}@127.0.0.1:")
    assert "Traceback" not in result.output
    assert leftover_work_folders() == before


def test_a_remote_timeout_kills_the_run_and_cleans_up(server, tiny_onnx, run_cli):
    before = leftover_work_folders()
    result = run_cli(
        "profile", tiny_onnx, "--runs", "100000000", "--min-seconds", "1000", "--timeout", "10", *remote_args(server)
    )
    assert result.exit_code == 1
    assert "time limit" in result.stderr or "exceeded" in result.stderr
    assert leftover_work_folders() == before


def test_compare_two_models_interleaved(tiny_onnx, run_cli, tmp_path):
    out = tmp_path / "compare.json"
    result = run_cli(
        "profile", tiny_onnx, tiny_onnx, "--runs", "20", "--min-seconds", "0.1", "--sequence-length", "8", "--json", out
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["profiles"]) == 2 and data["profiles"][0]["runs"] == data["profiles"][1]["runs"]
    assert set(data["comparison"][0]) == {"model", "against", "p50_ratio", "mean_ratio", "min_ratio"}


def test_profile_from_an_inputs_file_and_a_bad_one(tiny_onnx, run_cli, tmp_path):
    import numpy as np

    good = tmp_path / "inputs.npz"
    ids = np.array([[2, 50, 60, 3]], dtype=np.int64)
    np.savez(good, input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids))
    result = run_cli("profile", tiny_onnx, "--runs", "5", "--min-seconds", "0", "--inputs", good, "--json", "-")
    assert result.exit_code == 0 and json.loads(result.stdout)["runs"] >= 5
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=ids)
    result = run_cli("profile", tiny_onnx, "--inputs", bad)
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"Error: --inputs '{bad}' has no array for attention_mask, token_type_ids. It has: input_ids"
    )
