"""Device profiles: what a target runs (execution provider, session settings) and what it allows (quantization
constraints). Profiles are YAML files named `<id>.yaml`, found in $EDGEQ_DEVICES_PATH folders, then in the
bundled `devices/` folder."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from edgeq.data_source import Strict
from edgeq.errors import DeviceError
from edgeq.resources import bundled_dir
from edgeq.rungs import ACTIVATION_TYPES, WEIGHT_TYPES
from edgeq.targets.host import machine, mode_for


class ExecutionProvider(Strict):
    name: str = Field(description="onnxruntime execution provider, e.g. CPUExecutionProvider.")
    options: dict[str, str | int | float | bool] = Field(
        default={},
        description="Provider options as the EP names them (QNN HTP: backend_type; htp_arch and soc_model "
        "name the HTP generation, which sets its numerics).",
    )
    plugin: str | None = Field(
        default=None,
        description="Python module of a plugin EP library (with get_library_path()), e.g. onnxruntime_qnn.",
    )
    package: str | None = Field(default=None, description="The pip package that provides this EP (for error hints).")


class TransportConfig(Strict):
    kind: Literal["ssh"] = Field(description="How to reach the real device.")
    host: str = Field(description="ssh://user@host:port of the device.")
    known_hosts: str | None = Field(default=None, description="known_hosts file holding the device's host key.")
    remote_python: str = Field(default="python3", description="Python on the device (with numpy and onnxruntime).")


class QuantizationConstraints(Strict):
    modes: list[Literal["dynamic", "static", "int4"]] = Field(
        default=["dynamic", "static"], description="Quantization modes the device can run (int4: MatMulNBits)."
    )
    formats: list[Literal["qdq", "qoperator"]] = Field(
        default=["qdq", "qoperator"], description="Static model formats the device accepts."
    )
    activation_types: list[Literal["uint8", "int8", "uint16", "int16"]] = Field(
        default=list(ACTIVATION_TYPES), description="Allowed activation integer types."
    )
    weight_types: list[Literal["int8", "uint8"]] = Field(
        default=list(WEIGHT_TYPES), description="Allowed weight integer types."
    )
    symmetric_weights: bool = Field(default=False, description="Weights must have zero point 0.")
    symmetric_activations: bool = Field(default=False, description="Activations must have zero point 0.")
    per_channel: bool = Field(default=True, description="Per-channel weight scales are allowed.")
    power_of_two_scales: bool = Field(default=False, description="Every scale must be a power of two.")
    static_shapes: bool = Field(default=False, description="The model must have fixed input shapes.")
    int8_pairs_saturate: bool = Field(
        default=False,
        description="The CPU multiplies u8 activations by s8 weights with an instruction that adds "
        "adjacent products into a saturating 16-bit sum (x86 VPMADDUBSW, without VNNI). edgeq then quantizes "
        "MatMul weights so that no pair can saturate.",
    )
    supported_ops: list[str] | None = Field(
        default=None, description="Op types the device runs quantized. Unset: anything onnxruntime quantizes."
    )
    scheme: Literal["onnxruntime", "qnn"] = Field(
        default="onnxruntime",
        description="How static QDQ models are made: onnxruntime's quantizer, or its QNN rules (QNN preprocessing, "
        "fixed 16-bit Sigmoid/Tanh output parameters, type converts between 8- and 16-bit regions).",
    )


class DeviceProfile(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Device id; the file is <id>.yaml.")
    description: str = Field(description="What the device is, in a line.")
    device_class: Literal["cpu", "mobile-npu", "mobile-gpu", "fpga", "npu"] = Field(description="Kind of device.")
    arch: Literal["x86_64", "aarch64"] = Field(description="CPU architecture of the device.")
    cpu_features: list[str] = Field(
        default=[], description="CPU flags the device has (as in /proc/cpuinfo); a host without them is no stand-in."
    )
    cpu_features_absent: list[str] = Field(
        default=[],
        description="CPU flags the device lacks and whose presence changes the kernels onnxruntime picks "
        "(e.g. avx512_vnni: no 16-bit saturation in u8 x s8 products); a host with any of them is no stand-in.",
    )
    execution_provider: ExecutionProvider = Field(description="Where the model runs on the device.")
    session_config: dict[str, str] = Field(default={}, description="onnxruntime session config entries.")
    threads: int | None = Field(default=None, ge=1, description="Intra-op threads. Unset: onnxruntime decides.")
    memory_budget_mb: int | None = Field(default=None, ge=1, description="Memory the model may use on the device.")
    memory_mb: int | None = Field(default=None, ge=1, description="The device's total memory (RAM), for `edgeq plan`.")
    runtime_mb: float | None = Field(
        default=None,
        ge=0,
        description="Resident memory of the inference process before it loads a model, for `edgeq "
        "plan`. Unset: 55 MiB, a Python process with numpy and onnxruntime imported and one session's fixed cost "
        "(measured on x86-64 Linux).",
    )
    memory_bandwidth_gbps: float | None = Field(
        default=None,
        gt=0,
        description="Peak DRAM bandwidth of the device (GB/s), for the roofline estimate of a language model's decode "
        "(bytes a token moves / bandwidth) where a device's latency cannot be measured here. Unset: no estimate.",
    )
    kv_cache_dtype: Literal["float32", "float16"] = Field(
        default="float32",
        description="The type the device's runtime keeps a language model's KV cache in "
        "(onnxruntime's CPU EP: float32; NPUs and GPUs: float16).",
    )
    runs_float: bool = Field(default=True, description="The EP can run an FP32 model (an NPU such as the HTP cannot).")
    stand_in: Literal["cpu", "qemu-arm64"] | None = Field(
        default=None,
        description="When the device is not here: `cpu` checks numerics on this machine's CPU EP; "
        "`qemu-arm64` runs aarch64 onnxruntime in a local arm64 stand-in (edgeq devices setup ID). Mode emulated.",
    )
    stand_in_cpu: str | None = Field(
        default=None,
        description="The CPU model qemu emulates in the arm64 stand-in (QEMU_CPU), e.g. `cortex-a76`: the "
        "device's own core, so onnxruntime's MLAS picks the kernels the device has. Unset: qemu's `max`, which adds "
        "SVE/SME that most boards lack (SmolLM2 ran 8x slower under it, measured).",
    )
    emulation_note: str = Field(default="", description="What a validation here covers and what it does not.")
    coverage: Literal["nnapi", "coreml-mlprogram", "coreml-neuralnetwork"] | None = Field(
        default=None, description="Estimate the EP's partitions with onnxruntime's mobile helpers."
    )
    ort_format: bool = Field(default=False, description="Also write the final model in ORT format (.ort) for mobile.")
    artifact: Literal["recipe", "fp16"] = Field(
        default="recipe",
        description="The model this device is served: `recipe`, the recipe's quantized (or mixed) "
        "model; `fp16`, its own FP16 conversion of the FP32 export, for runtimes that compute in FP16 and split a QDQ "
        "model into many partitions (CoreML MLProgram). A device with its own artifact gets `final-<id>/` when it is "
        "not the recipe's first target.",
    )
    legalize: bool = Field(
        default=False,
        description="Before quantization, fold shapes at fixed sizes and rewrite ops the EP lacks "
        "into exact decompositions it has (see `coverage`), when that leaves fewer partitions.",
    )
    max_opset: int | None = Field(default=None, description="Highest ai.onnx opset the device's runtime supports.")
    control_flow: bool = Field(default=True, description="The EP runs Loop/If/Scan.")
    transport: TransportConfig | None = Field(
        default=None,
        description="Where the real device is (profiling runs there, mode remote). No secrets here: "
        "the key comes from --ssh-key or the SSH agent.",
    )
    quantization: QuantizationConstraints = Field(
        default=QuantizationConstraints(), description="What the device allows."
    )

    # Named traits: what the flags above mean, so no other module reads a flag as a kind of device.
    @property
    def is_dpu(self) -> bool:
        """A DPU-style accelerator: INT8, symmetric, per-tensor, power-of-two scales (Vitis AI)."""
        return self.quantization.power_of_two_scales

    @property
    def uses_qnn(self) -> bool:
        """A Qualcomm HTP, quantized by onnxruntime's QNN scheme (QDQ, 16-bit activations where they pay)."""
        return self.quantization.scheme == "qnn"

    @property
    def is_cpu(self) -> bool:
        return self.device_class == "cpu"

    @property
    def runs_in_arm64_stand_in(self) -> bool:
        """Measured off the device in edgeq's arm64 stand-in (aarch64 onnxruntime under qemu-user)."""
        return self.stand_in == "qemu-arm64"


def host_cpu_device() -> str:
    """The id of the bundled x86-64/aarch64 CPU profile whose numerics this host reproduces (mode on-host), or
    the first CPU profile of this architecture when none does."""
    cpus = [d for d in list_devices() if d.device_class == "cpu" and d.stand_in is None]
    on_host = [d for d in cpus if mode_for(d) == "on-host"]
    same_arch = [d for d in cpus if d.arch == machine()]
    return (on_host or same_arch or cpus)[0].id


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("EDGEQ_DEVICES_PATH", "").split(os.pathsep) if p]
    return [*extra, bundled_dir("devices")]


def device_files() -> dict[str, Path]:
    """Device id -> profile file; a folder earlier in the search path wins."""
    found: dict[str, Path] = {}
    for folder in search_dirs():
        for file in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(file.stem, file)
    return found


def list_devices() -> list[DeviceProfile]:
    return [load_device(device_id) for device_id in device_files()]


HOST = "host"  # a target that means: the CPU profile this host reproduces (host_cpu_device)


def load_device(device_id: str | None = None) -> DeviceProfile:
    """A device profile by id; `host` (or no id) is the bundled CPU profile whose numerics this machine reproduces."""
    files = device_files()
    if device_id is None or (device_id == HOST and HOST not in files):
        device_id = host_cpu_device()
    if device_id not in files:
        known = ", ".join([*files, HOST]) or "none"
        raise DeviceError(f"unknown device '{device_id}'", f"Known devices: {known}")
    return _load_file(files[device_id])


@cache
def _load_file(path: Path) -> DeviceProfile:
    from edgeq.schema_errors import explain, parse_yaml

    text = path.read_text(encoding="utf-8")
    data = parse_yaml(text, path, "device profile", DeviceError)
    if not isinstance(data, dict):
        raise DeviceError(f"device profile '{path}': the top level must be a mapping of keys")
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, text, f"device profile '{path}'", DeviceProfile, DeviceError) from None
    if profile.id != path.stem:
        raise DeviceError(f"device profile '{path}': id '{profile.id}' does not match the file name '{path.stem}'")
    return profile
