"""onnxruntime sessions configured from a device profile, and where their nodes were placed."""

from __future__ import annotations

import json
import platform
import tempfile
from collections import Counter
from pathlib import Path

from edgeq.devices import DeviceProfile
from edgeq.errors import DeviceError

NOTABLE_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimddp", "i8mm"}
HOST_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def session_options(device: DeviceProfile, profile_dir: Path | None = None, spinning: bool = True):
    """Options from the device profile. `spinning=False` stops idle intra-op threads from busy-waiting, which
    several sessions measured interleaved on a few cores need: a spinning session steals the others' cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device.threads:
        options.intra_op_num_threads = device.threads
    for key, value in device.session_config.items():
        options.add_session_config_entry(key, value)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / "edgeq_profile")
    return options


def make_session(model: Path | bytes, device: DeviceProfile, profile_dir: Path | None = None, spinning: bool = True):
    """A session on the device's execution provider; `model` is a file or serialized bytes."""
    import onnxruntime as ort

    ep = device.execution_provider
    available = ort.get_available_providers()
    if ep.name not in available:
        raise DeviceError(
            f"device '{device.id}' needs {ep.name}, which this onnxruntime does not have",
            f"Available: {', '.join(available)}",
        )
    providers = [(ep.name, dict(ep.options))] if ep.options else [ep.name]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(device, profile_dir, spinning), providers=providers)


def mode_for(device: DeviceProfile) -> str:
    """`on-host` when the device's own EP runs on a host of the device's architecture with the CPU features
    the device relies on; `emulated` otherwise (a stand-in ran)."""
    host = HOST_ARCH.get(platform.machine().lower(), platform.machine())
    has_features = set(device.cpu_features) <= set(cpu_flags())
    return "on-host" if host == device.arch and has_features else "emulated"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def environment() -> dict:
    import onnxruntime as ort

    return {
        "machine": HOST_ARCH.get(platform.machine().lower(), platform.machine()),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_features": [f for f in cpu_flags() if f in NOTABLE_FLAGS],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def placement(model_path: Path, device: DeviceProfile, feed: dict) -> dict[str, int]:
    """Nodes per execution provider, read from onnxruntime's profiler trace of one inference.

    Counts the nodes of the graph onnxruntime actually ran (after its own graph optimizations)."""
    with tempfile.TemporaryDirectory(prefix="edgeq-placement-") as tmp:
        session = make_session(model_path, device, profile_dir=Path(tmp))
        session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    return nodes_per_provider(trace)


def nodes_per_provider(trace: list[dict]) -> dict[str, int]:
    providers: dict[str, str] = {}
    for event in trace:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args:
            node = event["name"].removesuffix("_kernel_time")
            providers[node] = args["provider"]
    return dict(Counter(providers.values()))
