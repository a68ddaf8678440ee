"""The sweep on Ray: one task per cell. Without an address a local Ray starts (with one unit of a custom resource per
device that must run one job at a time); with one, the sweep joins that cluster, whose nodes declare those
resources (`ray start ... --resources='{"device:raspberry-pi-5": 1}'`). A cell that validates or profiles on a
remote device (SSH) or in a stand-in holds that device's resource; host-only cells spread over the cluster.

A worker that dies mid-cell (killed, out of memory, node lost) has its task retried once by Ray; the attempt it
left in a scratch folder is removed by the next. A cell that ends with an error is a row of sweep.json, not a
stopped sweep. The stage cache is shared through EDGEQ_SHARED_CACHE (a folder every node can reach)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from edgeq.errors import DeviceError
from edgeq.progress import say
from edgeq.sweep import Cell, build_cell, finished, load_sweep, write_results
from edgeq.targets import load_target

CELL_RETRIES = 1


def device_resource(device_id: str) -> str | None:
    """The Ray custom resource a cell on this device holds, or None for a device this host stands for."""
    target = load_target(device_id)
    needs_one_at_a_time = target.remote is not None or target.profile.runs_in_arm64_stand_in
    return f"device:{device_id}" if needs_one_at_a_time else None


def run_sweep(
    sweep_file: str | Path,
    output: str | Path | None = None,
    address: str | None = None,
    cell_timeout: float | None = None,
) -> dict:
    sweep, cells = load_sweep(sweep_file)  # every cell checked before Ray is imported, let alone started
    import ray

    out_dir = Path(output) if output else Path("build") / "sweeps" / sweep.name
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    resources = {cell.target: device_resource(cell.target) for cell in cells}
    wanted = {r: 1.0 for r in resources.values() if r}
    if address:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    else:
        ray.init(resources=wanted, log_to_driver=False, include_dashboard=False)
    try:
        available = ray.cluster_resources()
        missing = [r for r in wanted if available.get(r, 0) < 1]
        if missing:
            raise DeviceError(
                f"the Ray cluster at {address} has no {', '.join(missing)} resource",
                "Start a node that owns the device with ray start --resources='{\"" + missing[0] + "\": 1}'",
            )
        shared = os.environ.get("EDGEQ_SHARED_CACHE")
        rows = _run_cells(ray, cells, out_dir, resources, cell_timeout, shared)
        info = {"address": address or "local", "nodes": len([n for n in ray.nodes() if n.get("Alive")])}
    finally:
        ray.shutdown()
    for stale in (out_dir / "cells").glob(".tmp-*"):  # nothing half-written stays
        import shutil

        shutil.rmtree(stale, ignore_errors=True)
    result = write_results(out_dir, rows, info)
    say(f"sweep: {out_dir / 'sweep.json'}, index {out_dir / 'sweep.html'}")
    return result


def _run_cells(ray, cells: list[Cell], out_dir: Path, resources: dict, cell_timeout, shared) -> list[dict]:
    @ray.remote(num_cpus=1, max_retries=CELL_RETRIES, retry_exceptions=False)
    def run_cell(cell: Cell, out: str, timeout, shared_cache) -> dict:
        if shared_cache:
            os.environ["EDGEQ_SHARED_CACHE"] = shared_cache
        return build_cell(
            cell,
            Path(out),
            socket.gethostname() + f" ({ray.get_runtime_context().get_node_id()[:8]})",
            uuid.uuid4().hex[:8],
            timeout,
        )

    rows: dict[int, dict] = {}
    pending = {}
    for index, cell in enumerate(cells):
        done = finished(out_dir, cell)
        if done is not None:
            say(f"  {cell.id}: finished earlier ({done['status']}), skipped")
            rows[index] = {**done, "skipped": True}
            continue
        options = {"resources": {resources[cell.target]: 1}} if resources[cell.target] else {}
        pending[run_cell.options(**options).remote(cell, str(out_dir), cell_timeout, shared)] = index
    say(f"▶ sweep: {len(pending)} cells on Ray ({len(rows)} finished earlier)")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        try:
            rows[index] = ray.get(ready[0])
        except Exception as exc:  # the task failed twice (a worker died on each attempt) or raised
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            rows[index] = {
                "recipe": str(cells[index].recipe_path),
                "target": cells[index].target,
                "overrides": cells[index].overrides,
                "status": "error",
                "exit_code": None,
                "metrics": None,
                "size_ratio": None,
                "build_dir": None,
                "seconds": None,
                "node": None,
                "cell": cells[index].id,
                "error": f"Error: the cell's task failed: {first[:300]}",
            }
        say(f"  {rows[index]['cell']}: {rows[index]['status']}")
    return [rows[i] for i in sorted(rows)]
