"""Fleet builds on a real Ray cluster on loopback: a head and a second worker node, each `ray start`ed as its own
processes; a sweep of a tiny model × two devices × a two-value grid (and a broken recipe × two devices) runs on it
through the shared stage cache; one worker running a cell is killed mid-cell and that cell is retried; a re-run
skips finished cells. No timed assertions."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import DATA, base_recipe

from edgeq.sweep_ray import device_resource

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(1800)
RAY = Path(sys.executable).parent / "ray"
EDGEQ = Path(sys.executable).parent / "edgeq"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # token authentication with the cluster's own token (a fresh machine has no ~/.ray/auth_token)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    _ray([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *common], env)
    try:
        _ray([RAY, "start", "--address", address, *common], env)
        yield address, env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)


def _ray(command: list, env: dict) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"{' '.join(map(str, command[1:3]))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def _sweep_files(folder: Path, tiny_bert: Path) -> Path:
    recipe = base_recipe(
        str(tiny_bert),
        validation={"data": {"path": str(DATA / "validation.txt")}, "samples": 8, "thresholds": {"cosine_mean": 0.9}},
    )
    recipe["name"] = "tiny"
    broken = {**recipe, "name": "broken", "model": {"source": str(folder / "no-such-model")}}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "broken.yaml").write_text(yaml.safe_dump(broken))
    sweep = {
        "name": "loopback",
        "recipes": ["tiny.yaml", "broken.yaml"],
        "targets": ["x86-avx2", "x86-avx512-vnni"],
        "grid": {"quantization.per_channel": [True, False]},
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return folder / "sweep.yaml"


def _kill_first_running_cell(cells: Path, killed: list, stop: threading.Event) -> None:
    """Wait until a cell's build is running, then SIGKILL the Ray worker process that runs it (once)."""
    running = cells / ".running"
    while not stop.is_set():
        markers = sorted(running.glob("tiny_*.json")) if running.is_dir() else []
        for marker in markers:
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue
            os.kill(info["pid"], signal.SIGKILL)
            killed.append(marker.stem)
            return
        stop.wait(0.2)


def test_sweep_on_a_loopback_cluster_survives_a_killed_worker(cluster, tiny_bert, tmp_path):
    address, env = cluster
    sweep_file = _sweep_files(tmp_path, tiny_bert)
    out = tmp_path / "out"
    env = {**env, "EDGEQ_SHARED_CACHE": str(tmp_path / "shared-cache")}
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_first_running_cell, args=(out / "cells", killed, stop))
    killer.start()
    try:
        done = subprocess.run(
            [EDGEQ, "sweep", sweep_file, "--address", address, "-o", out, "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        stop.set()
        killer.join()
    assert "will be retried" in done.stdout + done.stderr  # Ray saw the worker die and ran its task again
    assert done.returncode == 1, done.stderr  # the broken recipe's cells are errors; the sweep went on
    result = json.loads((out / "sweep.json").read_text())  # stdout also carries Ray's note on the killed worker
    assert result["ray"] == {"address": address, "nodes": 2}
    rows = {
        (Path(r["recipe"]).stem, r["target"], r["overrides"]["quantization.per_channel"]): r for r in result["cells"]
    }
    assert len(rows) == 8  # every cell accounted for
    for (recipe, _target, _), row in rows.items():
        if recipe == "tiny":
            assert row["status"] == "passed" and row["exit_code"] == 0 and row["metrics"]["cosine_mean"] > 0.9
            assert Path(row["build_dir"], "report.html").is_file() and row["node"]
        else:
            assert row["status"] == "error" and row["exit_code"] == 1 and "no-such-model" in row["error"]
    assert len(killed) == 1, "no cell was seen running"  # and yet the killed cell passed: Ray ran it again
    assert not list((out / "cells").glob(".tmp-*"))  # nothing half-written left behind
    exports = [
        json.loads(Path(r["build_dir"], "report.json").read_text())["stages"][0]
        for r in rows.values()
        if r["status"] == "passed"
    ]
    assert sum(stage["cached"] for stage in exports) >= 1  # the shared cache served the export to another cell
    html = (out / "sweep.html").read_text()
    assert html.count("report</a>") == 4
    # the Pareto plots: every validated artifact of the 4 finished cells (fp32 and int8 each), both targets' fronts
    assert html.count("<svg class=plot") >= 4 and html.count("<polyline class=front") >= 4
    assert html.count("<g class=point") == html.count("<svg class=plot") * 8 and "<script" not in html
    passed = [r for r in json.loads((out / "sweep.json").read_text())["cells"] if r["status"] == "passed"]
    assert all(r["mode"] and r["p50_ms"] > 0 and r["build_peak_rss_mb"] > 0 for r in passed)
    _sweep_page_in_the_browser(out / "sweep.html")

    again = subprocess.run(
        [EDGEQ, "sweep", sweep_file, "--address", address, "-o", out, "--json"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 1, again.stderr
    rerun = json.loads((out / "sweep.json").read_text())["cells"]
    assert sum(bool(r.get("skipped")) for r in rerun) == 4  # finished cells are not built again; errors are retried
    assert {r["status"] for r in rerun if not r.get("skipped")} == {"error"}


def _sweep_page_in_the_browser(page: Path) -> None:
    """sweep.html in Chromium: no console error, no request but the page, the plots and their points drawn; the
    screenshot is kept in test-artifacts/."""
    from browser import CHROMIUM, Browser
    from conftest import ROOT

    if CHROMIUM is None:
        pytest.skip("chromium not installed (make test installs it as root)")
    browser = Browser()
    try:
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        seen = browser.open(
            page.as_uri(),
            screenshot=ROOT / "test-artifacts" / "sweep-pareto.png",
            expression="[document.querySelectorAll('svg.plot').length, "
            "document.querySelectorAll('svg.plot g.point').length]",
        )
    finally:
        browser.close()
    assert seen["console_errors"] == [] and seen["exceptions"] == [] and seen["requests"] == [page.as_uri()]
    plots, points = seen["value"]
    assert plots >= 4 and points == plots * 8


def test_devices_are_resources_and_bad_sweeps_are_one_line(run_cli, tmp_path):
    assert device_resource("raspberry-pi-5") == "device:raspberry-pi-5"  # the arm64 stand-in: one job at a time
    assert device_resource("x86-avx2") is None  # this host: cells spread over the cluster
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "recipes": ["r.yaml"], "grid": {"a.b": []}}))
    result = run_cli("sweep", tmp_path / "sweep.yaml")
    assert result.exit_code == 1 and result.stderr.strip() == (
        f"Error: sweep '{tmp_path / 'sweep.yaml'}' line 1: key 'grid': grid key 'a.b' has no values"
    )
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "recipes": ["r.yaml"], "devices": ["x"]}))
    result = run_cli("sweep", tmp_path / "sweep.yaml")
    assert result.stderr.strip() == (
        f"Error: sweep '{tmp_path / 'sweep.yaml'}' line 1: unknown key 'devices'. "
        "Valid keys here: name, recipes, targets, grid"
    )


def test_a_sweep_checks_every_cell_before_ray_starts(run_cli, write_recipe, tiny_bert, tmp_path, monkeypatch):
    import ray

    write_recipe(
        {
            "name": "r",
            "model": {"source": str(tiny_bert)},
            "quantization": {"mode": "dynamic"},
            "validation": {"data": {"path": "data/validation.txt"}, "samples": 4},
            "targets": ["x86-avx2"],
        },
        "r.yaml",
    )

    def never(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", never)
    out = tmp_path / "out"

    def sweep(grid: dict):
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "recipes": ["r.yaml"], "grid": grid}))
        return run_cli("sweep", tmp_path / "sweep.yaml", "-o", out)

    result = sweep({"quantization.per_chanel": [True, False]})
    assert result.exit_code == 1 and not out.exists()
    assert result.stderr.strip() == (
        f"Error: sweep '{tmp_path / 'sweep.yaml'}': grid key 'quantization.per_chanel': "
        "unknown recipe key 'quantization.per_chanel'. Did you mean "
        "'quantization.per_channel'?"
    )
    result = sweep({"quantization.mode": ["dynamic", "int3"]})
    assert result.exit_code == 1 and not out.exists() and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(
        f"Error: sweep '{tmp_path / 'sweep.yaml'}': the cell r on x86-avx2, "
        "quantization.mode='int3': key 'quantization.mode': Input should be"
    )
