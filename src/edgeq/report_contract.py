"""report.json's contract, typed: the keys DESIGN.md requires and the ones edgeq adds, each with what it means.
Every report is checked against it before it is written (a report that breaks it is a bug of edgeq's, said as
one), and docs/report.md is generated from it (`python -m edgeq.report_contract > docs/report.md`). Sections may
carry more keys than listed here (the contract is "keys required; add more"); the listed ones have these types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    """A section of the report: the keys listed are required (or typed when optional); more may follow."""

    model_config = ConfigDict(extra="allow")


class Stage(Open):
    """One stage of the build, in the order it ran."""

    name: str = Field(
        description="export, optimize, quantize, mixed_precision, kv_cache, legalize, fp16, validate, ..."
    )
    seconds: float = Field(ge=0, description="Wall time of the stage (0 when served from the cache).")
    cached: bool = Field(description="Served from the stage cache (this folder's or the shared one) instead of run.")
    peak_rss_mb: float | None = Field(default=None, description="The stage's own peak resident memory, sampled.")


class Artifact(Open):
    """A model the build made, by stage."""

    name: str = Field(description="fp32, optimized, int8, mixed, kv8, ...: the folder that holds it.")
    path: str = Field(description="Its model file, relative to the build folder.")
    size_bytes: int = Field(ge=0, description="Bytes of the model file (and its external data).")
    precision: dict[str, int] = Field(description="Weight-bearing nodes per precision.")


class ShapeEntry(Open):
    """A validation at one deployment shape."""

    shape: str = Field(description="The shape's label, e.g. b32-s128 (batch size, most tokens a text).")
    batch_size: int = Field(ge=1)
    samples: int = Field(ge=0, description="Samples measured at this shape.")
    metrics: dict = Field(description="The task's metrics at this shape (see the task's own metrics).")
    latency_ms: dict = Field(description="min, p50, p90, max ... of a batch, in milliseconds.")


class Validation(Open):
    """One model validated on one device."""

    artifact: str = Field(description="The artifact validated (its name in `artifacts`).")
    device: str = Field(description="The device profile's id.")
    provider: str = Field(description="The execution provider that ran it.")
    mode: Literal["on-host", "emulated", "remote"] = Field(
        description="on-host: the target's own EP ran here; emulated: a stand-in ran (QNN's HTP emulator, qemu-arm64, "
        "a DPU-constrained model on the CPU EP, another CPU's kernels); remote: the real device ran it."
    )
    placement: dict[str, int] = Field(description="Nodes per execution provider, from onnxruntime's profiler trace.")
    fallback_nodes: int = Field(ge=0, description="Nodes that ran on another provider than the device's.")
    environment: dict = Field(description="Where it ran: machine, CPU, onnxruntime version, threads ...")
    metrics: dict = Field(description="The worst case over shapes of every metric (what thresholds judge).")
    latency_ms: dict = Field(description="The first shape's latency percentiles, in milliseconds.")
    thresholds: dict = Field(description="The limits this model was judged by (validation.thresholds).")
    passed: bool = Field(description="Every threshold held (and, on a DPU, no rule was broken).")
    failures: list[str] = Field(default_factory=list, description="What broke, in words, with the shape it broke at.")
    shapes: list[ShapeEntry] = Field(default_factory=list, description="Per deployment shape, in recipe order.")


class MixedPrecision(Open):
    """The mixed-precision section: which search ran, and what it chose."""

    kind: Literal["weight-precisions", "activation-types"] = Field(
        default="weight-precisions",
        description="weight-precisions: a rung (int8, int4, fp16, fp32 ...) per weight island, chosen by measured "
        "sensitivity under a budget (the section has no `kind` key then); activation-types: 8- or 16-bit "
        "activations per block of a QDQ NPU's model.",
    )
    precision_counts: dict[str, int] = Field(description="Islands (or blocks) per precision.")
    size_ratio: float = Field(ge=0, description="The chosen model's bytes over FP32's.")
    cpu_forms: dict[str, int] | None = Field(
        default=None,
        description="How the assembled model was rewritten into the forms onnxruntime's CPU EP runs fastest "
        "(edgeq.optimize.cpu_forms): skip_layer_norms_split (SkipLayerNormalization → Sum + LayerNormalization), "
        "bias_gelus_split (BiasGelu → Gelu), biases_into_gemm (biases moved into an integer GEMM's bias input).",
    )


class Report(Open):
    """report.json at the top level."""

    edgeq_version: str = Field(description="The edgeq that built it.")
    recipe: dict = Field(description="The resolved recipe (every default filled in, paths absolute).")
    stages: list[Stage] = Field(description="The stages, in the order they ran.")
    artifacts: list[Artifact] = Field(description="Every model the build made.")
    validations: list[Validation] = Field(description="Every model validated on every target.")
    final: str = Field(description="The first target's final model, relative to the build folder (final/model.onnx).")
    passed: bool = Field(description="Every target's served model passed its thresholds.")
    mixed_precision: MixedPrecision | None = Field(
        default=None, description="Present when the search ran: islands, scores, decisions with reasons, evaluations."
    )
    finals: dict | None = Field(default=None, description="Per target: the artifact it is served and its folder.")
    profiles: list[dict] | None = Field(default=None, description="Per target: the final model's profile.")


class TensorDeparture(Open):
    """One quantized tensor of `edgeq diverge`, in graph order. SQNR is 10·log10(signal power / noise power) over
    every input; null means identical (no noise at all)."""

    name: str = Field(description="The float tensor the QuantizeLinear quantizes (its name in the FP32 model).")
    op: str = Field(description="The op type that produces it.")
    block: str = Field(description="The block it belongs to, from the node's exported path (/encoder/layer.3/...).")
    type: str = Field(description="The integer type the device holds it in (uint8, uint16, ...).")
    sqnr_vs_simulation_db: float | None = Field(
        description="The device's tensor against the CPU EP's simulation of the same QDQ model: what has departed "
        "by here, this op's share and everything before it."
    )
    sqnr_vs_fp32_db: float | None = Field(
        description="The device's tensor against the FP32 reference's (null where the FP32 model has no such tensor)."
    )
    local_sqnr_db: float | None = Field(
        default=None,
        description="This op's own share: its output on the device against the simulation of the op alone on the "
        "device's own inputs (what came in already different is not counted again). The departure test reads this.",
    )


class Divergence(Open):
    """The JSON of `edgeq diverge MODEL --device ID --reference FP32 --json F`."""

    device: str = Field(description="The device profile's id.")
    mode: Literal["on-host", "emulated", "remote"] = Field(description="Where the device's numbers came from.")
    threshold_db: float = Field(description="A tensor departs when its local SQNR is below this.")
    tensors: list[TensorDeparture] = Field(description="Every quantized activation, in graph order.")
    first_departure: TensorDeparture | None = Field(
        description="The first tensor (in graph order) whose local SQNR is below the threshold; null: none."
    )


def check(report: dict, contract: type[BaseModel] = None, label: str = "report.json") -> None:
    """Raise a StageError naming the first key that breaks the contract (an edgeq bug, never the user's input)."""
    from pydantic import ValidationError

    from edgeq.errors import StageError

    try:
        (contract or Report).model_validate(report)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise StageError(
            f"{label} breaks its contract at '{key}': {err['msg']}", "This is a bug in edgeq; please report it"
        ) from None


def render() -> str:
    """docs/report.md: the contracts' keys and what they mean (report.json, and `edgeq diverge --json`)."""
    sections = [
        "# report.json reference",
        "",
        "Generated from `src/edgeq/report_contract.py` by `python -m edgeq.report_contract`; do not edit by hand. "
        "Every build's report.json is checked against it before it is written. Sections may carry more keys than "
        "listed.",
        "",
    ]
    for model in (Report, Stage, Artifact, Validation, ShapeEntry, MixedPrecision, Divergence, TensorDeparture):
        sections += [
            f"## {model.__name__}",
            "",
            (model.__doc__ or "").strip(),
            "",
            "| key | required | meaning |",
            "|---|---|---|",
        ]
        for name, field in model.model_fields.items():
            sections.append(f"| `{name}` | {'yes' if field.is_required() else 'no'} | {field.description or ''} |")
        sections.append("")
    return "\n".join(sections)


if __name__ == "__main__":
    print(render(), end="")
