"""Validation through the device runner (runner.py), for targets whose models do not run in this process: the
arm64 stand-in, or the real device over SSH. Every model runs on every feed once; the outputs come back."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeq.targets.target import Target

RUNNER = Path(__file__).with_name("runner.py")


def run_outputs(models: list[Path], feeds: list[dict], target: Target, timeout: float = 7200) -> list[dict]:
    """Validation through the device runner: every model on every feed once. Per model: the outputs of each feed
    (name -> array), the time of each run (ms) and an onnxruntime trace of one run."""
    runtime, transport = target.measured_runtime, target.transport()
    with tempfile.TemporaryDirectory(prefix="edgeq-outputs-") as tmp:
        job_dir = Path(tmp)
        shutil.copy2(RUNNER, job_dir / "runner.py")
        inputs = []
        for index, feed in enumerate(feeds):
            np.savez(job_dir / f"inputs_{index}.npz", **feed)
            inputs.append(f"inputs_{index}.npz")
        names = []
        for index, model in enumerate(models):
            shutil.copy2(model, job_dir / f"model_{index}.onnx")
            names.append(f"model_{index}.onnx")
        job = {
            "mode": "outputs",
            "models": names,
            "inputs": inputs,
            "threads": target.profile.threads,
            "provider": {"name": runtime.provider, "options": {}, "plugin": None},
            "session_config": {},
        }
        (job_dir / "job.json").write_text(json.dumps(job))
        transport.run(job_dir, ["runner.py", "job.json", *inputs, *names], timeout)
        result = json.loads((job_dir / "result.json").read_text())
        produced = []
        for raw in result["models"]:
            with np.load(job_dir / raw["outputs"]) as data:
                outputs = [
                    {k.split("/", 1)[1]: data[k] for k in data.files if k.split("/", 1)[0] == f"b{i}"}
                    for i in range(len(feeds))
                ]
            trace = json.loads((job_dir / Path(raw["trace"]).name).read_text())
            produced.append(
                {
                    "outputs": outputs,
                    "timings_ms": raw["timings_ms"],
                    "trace": trace,
                    "environment": result["environment"],
                }
            )
    return produced
