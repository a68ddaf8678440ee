"""Where a device's models run, resolved once: its execution provider (built in, or a plugin EP library such as
onnxruntime-qnn), a declared CPU stand-in when the EP is not installed, the arm64 stand-in, or the real device
over a transport (`remote`); and onnxruntime sessions on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import DeviceError
from edgeq.targets.host import machine, mode_for
from edgeq.targets.profiles import DeviceProfile, ExecutionProvider

CPU_EP = "CPUExecutionProvider"
_registered_plugins: set[str] = set()


@dataclass(frozen=True)
class Runtime:
    """Where a device's validation actually runs, and how honest that is."""

    device: DeviceProfile
    provider: str
    mode: str  # on-host | emulated | remote
    note: str

    @property
    def stand_in(self) -> bool:
        return self.provider != self.device.execution_provider.name

    @property
    def in_runner(self) -> bool:
        """Models run in the device runner (an arm64 stand-in), not in this process."""
        return self.device.runs_in_arm64_stand_in and self.mode == "emulated"


def runtime_for(device: DeviceProfile, remote: bool = False) -> Runtime:
    """`remote`: the device's own EP on the real device, reached over a transport. Else the device's EP when this
    onnxruntime has it; else its CPU stand-in (emulated); else a DeviceError."""
    ep = device.execution_provider
    if remote:
        return Runtime(device, ep.name, "remote", "")
    if device.runs_in_arm64_stand_in and mode_for(device) != "on-host":
        cpu = f", emulating a {device.stand_in_cpu}" if device.stand_in_cpu else ""
        note = (
            f"aarch64 onnxruntime in an arm64 stand-in (qemu-user on this {machine()} host{cpu}): the "
            f"numerics are aarch64's integer kernels; the latency is qemu's, not the device's. {device.emulation_note}"
        )
        return Runtime(device, ep.name, "emulated", note.strip())
    if provider_available(ep):
        mode = mode_for(device)
        note = f"{device.emulation_note} {_unnamed_htp(ep)}".strip() if mode == "emulated" else ""
        return Runtime(device, ep.name, mode, note)
    if device.stand_in == "cpu":
        note = f"{ep.name} is not installed here: numerics checked on the CPU EP. {device.emulation_note}".strip()
        return Runtime(device, CPU_EP, "emulated", note)
    hint = f"Install it: pip install {ep.package}" if ep.package else f"Available: {', '.join(_builtin_providers())}"
    raise DeviceError(f"device '{device.id}' needs {ep.name}, which this onnxruntime does not have", hint)


def _unnamed_htp(ep: ExecutionProvider) -> str:
    """A warning when a QNN HTP profile does not say which HTP: the emulator then computes as the oldest it knows."""
    if ep.name != "QNNExecutionProvider" or ep.options.get("backend_type", "htp") != "htp":
        return ""
    if ep.options.get("htp_arch") or ep.options.get("soc_model"):
        return ""
    return (
        "The device profile names no htp_arch or soc_model: the emulator computes as an HTP v68/v69, whose "
        "16-bit arithmetic is coarser than v73+ (MiniLM: cosine 0.9978 against 0.9992, measured)."
    )


def provider_available(ep: ExecutionProvider) -> bool:
    if ep.name in _builtin_providers():
        return True
    return ep.plugin is not None and _register_plugin(ep)


def _builtin_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def _register_plugin(ep: ExecutionProvider) -> bool:
    import importlib

    import onnxruntime as ort

    if ep.name in _registered_plugins:
        return True
    try:
        module = importlib.import_module(ep.plugin)
        ort.register_execution_provider_library(ep.name, module.get_library_path())
    except Exception:  # not installed, or a library this platform cannot load
        return False
    _registered_plugins.add(ep.name)
    return True


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
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / "edgeq_profile")
    return options


def make_session(
    model: Path | bytes,
    device: DeviceProfile,
    profile_dir: Path | None = None,
    spinning: bool = True,
    runtime: Runtime | None = None,
):
    """A session on the device's runtime; `model` is a file or serialized bytes. On a stand-in, the device's
    own session settings (e.g. disable_cpu_ep_fallback) do not apply."""
    import onnxruntime as ort

    runtime = runtime or runtime_for(device)
    options = session_options(device, profile_dir, spinning)
    source = model if isinstance(model, bytes) else str(model)
    if runtime.stand_in:
        return ort.InferenceSession(source, options, providers=[CPU_EP])
    for key, value in device.session_config.items():
        options.add_session_config_entry(key, value)
    ep = device.execution_provider
    if ep.name in _registered_plugins:
        devices = [d for d in ort.get_ep_devices() if d.ep_name == ep.name]
        options.add_provider_for_devices(devices, {k: str(v) for k, v in ep.options.items()})
        return _create(ort, source, options, None, device)
    providers = [(ep.name, dict(ep.options))] if ep.options else [ep.name]
    return _create(ort, source, options, providers, device)


def _create(ort, source, options, providers, device: DeviceProfile):
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DeviceError(
            f"{device.execution_provider.name} refused the model on device '{device.id}': {first[:300]}",
            "`edgeq inspect MODEL --device ID` lists what the device cannot run",
        ) from None


def host_cpu(device: DeviceProfile) -> DeviceProfile:
    """This machine's CPU EP with the device's thread count: where FP32 references run."""
    return device.model_copy(
        update={
            "execution_provider": ExecutionProvider(name=CPU_EP),
            "session_config": {},
            "stand_in": None,
            "runs_float": True,
        }
    )
