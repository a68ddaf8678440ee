"""The Python API: what the CLI calls, and what users can import.

    import edgeq.api as edgeq
    result = edgeq.build("recipes/minilm-int8-cpu.yaml")
    print(result.report["validations"][-1]["metrics"])

Every function raises an `edgeq.errors.EdgeqError` subclass with a one-line message on bad input.
Heavy libraries (onnxruntime, torch, transformers) are imported only by the functions that need them.
"""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import OutputError
from edgeq.recipe.schema import DataSource, QuantizationConfig, Thresholds
from edgeq.targets import DeviceProfile, list_devices, load_device, load_target
from edgeq.tasks import default_length


def build(recipe: str | Path, output: str | Path | None = None, force: bool = False, targets: list[str] | None = None):
    """Run a recipe end to end (for `targets` instead of its own when given). Returns a BuildResult (report dict,
    build folder, exit code 0 or 3)."""
    from edgeq.pipeline import plan_build, run_build

    return run_build(plan_build(recipe, output, targets), force=force)


def init_recipe(model: str, device: str | None = None, data: str | Path | None = None) -> str:
    """A commented starter recipe (YAML text) for MODEL on DEVICE: task detected, the device's rules applied, data
    paths pointing at edgeq's samples (or at `data`)."""
    from edgeq.export import resolve_source
    from edgeq.starter import starter_recipe

    return starter_recipe(model, resolve_source(model), load_device(device), str(data) if data else None)


def build_model(
    model: str,
    device: str | None = None,
    output: str | Path | None = None,
    data: str | Path | None = None,
    force: bool = False,
):
    """Build MODEL for DEVICE with the starter recipe (no recipe file needed); the recipe used is written into the
    build folder as recipe.yaml."""
    import tempfile

    from edgeq.atomic import write_text
    from edgeq.manifest import moved_recipe
    from edgeq.pipeline import plan_build, run_build

    text = init_recipe(model, device, data)
    with tempfile.TemporaryDirectory(prefix="edgeq-recipe-") as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(text)
        plan = plan_build(path, output)
        result = run_build(plan, force=force)
    write_text(result.out_dir / "recipe.yaml", text)
    moved_recipe(result.out_dir, result.out_dir / "recipe.yaml")
    return result


def rerender_report(build_dir: str | Path) -> list[Path]:
    """Write report.md and report.html again from BUILD_DIR/report.json (e.g. after an edgeq upgrade)."""

    from edgeq.atomic import write_text
    from edgeq.report import render_html, render_markdown

    folder = Path(build_dir)
    report = _read_report(folder)
    write_text(folder / "report.md", render_markdown(report))
    write_text(folder / "report.html", render_html(report))
    return [folder / "report.md", folder / "report.html"]


def compare_builds(*builds: str | Path) -> dict:
    """Builds side by side: per target device, each build's final artifact, verdict, fidelity, size, latency; and
    `points`, every validated artifact of every build (what the Pareto plots draw)."""
    from edgeq.pareto import build_points
    from edgeq.summary import summary_rows

    if not builds:
        raise OutputError("no build folder given", "Give one or more build folders")
    reports = [_read_report(Path(b)) for b in builds]
    return {
        "builds": [str(b) for b in builds],
        "rows": [summary_rows(r) for r in reports],
        "points": [p for b, r in zip(builds, reports) for p in build_points(r, str(b), Path(b).name)],
    }


def write_comparison_html(comparison: dict, output: str | Path) -> Path:
    """The Pareto page of a comparison (edgeq.pareto): fidelity against size and against p50, per target."""
    from edgeq.atomic import write_text
    from edgeq.pareto import pareto_html

    path = Path(output)
    write_text(path, pareto_html("edgeq compare", comparison["points"], comparison["builds"]))
    return path


def verify(build_dir: str | Path, rebuild: bool = False, allow_new_versions: bool = False) -> dict:
    """Whether a build still holds on this machine now (edgeq.verify): `holds`, and every `changes` entry."""
    from edgeq.verify import verify_build

    return verify_build(build_dir, rebuild, allow_new_versions)


def _read_report(folder: Path) -> dict:
    import json

    path = folder / "report.json"
    if not path.is_file():
        raise OutputError(f"'{folder}' has no report.json", "Give a build folder (edgeq build writes report.json)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise OutputError(f"'{path}' is not valid JSON ({exc})", "Rebuild it with edgeq build") from None


def export(
    source: str,
    output: str | Path,
    task: str | None = None,
    opset: int = 17,
    batch_size: int | None = None,
    sequence_length: int | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Export a Hugging Face model (folder, `pkg:<module>` or hub id) to OUTPUT/model.onnx. Without `task`, the
    task is detected from the model's config.json."""
    from edgeq.atomic import atomic_dir
    from edgeq.export import export_onnx, resolve_source
    from edgeq.tasks import resolve_task

    out = _output_folder(output)
    model_dir = resolve_source(source)
    chosen, _ = resolve_task(task, model_dir)
    with atomic_dir(out) as folder:
        export_onnx(model_dir, folder, chosen.export_task, opset, batch_size, sequence_length, trust_remote_code)
    return out / "model.onnx"


def quantize(
    model: str | Path,
    output: str | Path,
    config: QuantizationConfig,
    tokenizer: str | Path | None = None,
    device: str | None = None,
    task: str | None = None,
) -> Path:
    """Quantize any ONNX file into OUTPUT/model.onnx, with its companion files (config, tokenizer, image
    processor) and nothing else of its folder.

    Static mode calibrates on `config.calibration` (data, samples, method, sequence length, batch size), read as
    `task` says (default: detected from the folder's config.json, else plain texts)."""
    from edgeq.artifact import check_loadable, copy_companions, load_onnx
    from edgeq.atomic import atomic_dir
    from edgeq.quantize import check_against_device, quantize_model, resolve_op_types
    from edgeq.quantize.calibration import pads_to_length

    model_path = Path(model)
    static_shapes = _has_static_shapes(load_onnx(model_path, load_weights=False))
    check_loadable(model_path)
    profile = load_device(device)
    check_against_device(config, profile, static_shapes)
    feeds = None
    if config.mode == "static":
        calib = config.calibration
        folder = Path(tokenizer) if tokenizer else model_path.parent
        chosen = _task_for(folder, task)
        samples = chosen.read(calib.data, calib.samples, "--calibration", folder)
        inputs = chosen.inputs(
            folder, calib.sequence_length or default_length(folder), pads_to_length(calib.method, static_shapes)
        )
        feeds = [b.feed for b in chosen.batches(samples, inputs, calib.batch_size, True)]
    out = _output_folder(output)
    with atomic_dir(out) as folder:
        quantize_model(
            model_path,
            folder / "model.onnx",
            config,
            resolve_op_types(config, [profile]),
            feeds,
            profile.quantization.scheme,
        )
        copy_companions(model_path.parent, folder)
    return out / "model.onnx"


def validate(
    model: str | Path,
    reference: str | Path,
    data: DataSource,
    device: str | None = None,
    task: str | None = None,
    samples: int | None = None,
    sequence_length: int | None = None,
    batch_size: int = 1,
    thresholds: Thresholds | None = None,
    tokenizer: str | Path | None = None,
    follow_ups: int | None = None,
) -> dict:
    """Compare MODEL against REFERENCE on DEVICE over the samples of DATA; the validation entry of MODEL.
    `follow_ups` bounds how many samples get the task's follow-ups (a language model's greedy continuations)."""
    from edgeq.artifact import check_loadable, load_onnx
    from edgeq.validate import validate_models

    model_path, reference_path = Path(model), Path(reference)
    static = _has_static_shapes(load_onnx(model_path, load_weights=False))
    load_onnx(reference_path, load_weights=False)
    for path in (model_path, reference_path):
        check_loadable(path)
    target = load_target(device)
    profile = target.profile
    folder = Path(tokenizer) if tokenizer else reference_path.parent
    chosen = _task_for(folder, task)
    items = chosen.read(data, samples, "--data", folder)
    asked = sequence_length or default_length(folder)
    inputs = chosen.inputs(folder, asked, static)
    sequence_length = inputs.sequence_length or asked  # a static decoder graph's own N, whatever was asked
    limits = (thresholds or Thresholds()).model_dump(exclude_none=True)
    if not profile.runs_float:
        from edgeq.artifact import is_quantized
        from edgeq.errors import DeviceError

        if not is_quantized(model_path):
            raise DeviceError(
                f"device '{profile.id}' runs quantized models only and '{model_path}' is FP32",
                f"Quantize it for the device first (see `edgeq inspect {model_path} --device {profile.id}`)",
            )
    models = {"reference": reference_path, "candidate": model_path}
    results = validate_models(
        models,
        "reference",
        target,
        items,
        inputs,
        chosen,
        [(batch_size, sequence_length)],
        thresholds={"candidate": limits},
        follow_ups=follow_ups,
    )
    return results[-1]


def profile(
    models: str | Path | list,
    device: str | None = None,
    runs: int = 100,
    min_seconds: float = 2.0,
    warmup: int = 10,
    threads: int | None = None,
    batch_size: int = 1,
    sequence_length: int | None = None,
    inputs: str | Path | None = None,
    host: str | None = None,
    ssh_key: str | None = None,
    known_hosts: str | None = None,
    remote_python: str | None = None,
    timeout: float = 900,
    new_tokens: int = 32,
) -> dict:
    """Profile one model (the profile JSON of DESIGN.md) or several, interleaved ({"profiles", "comparison"}),
    on DEVICE: locally, or on a remote device over SSH (`host`, or the device profile's transport section)."""
    from edgeq.profile import ProfileSettings, profile_models

    target = load_target(device, host, ssh_key, known_hosts, remote_python)
    paths = [Path(m) for m in (models if isinstance(models, list) else [models])]
    task = _task_for(paths[0].parent, None) if (paths[0].parent / "config.json").is_file() else None
    settings = ProfileSettings(
        runs,
        min_seconds,
        warmup,
        threads,
        batch_size,
        sequence_length or default_length(paths[0].parent),
        Path(inputs) if inputs else None,
        timeout,
        new_tokens,
    )
    return profile_models(paths, target, settings, task)


def diverge(
    model: str | Path,
    reference: str | Path,
    device: str | None = None,
    data: DataSource | None = None,
    samples: int = 4,
    threshold_db: float | None = None,
    task: str | None = None,
    tokenizer: str | Path | None = None,
) -> dict:
    """Where MODEL (a QDQ model) on DEVICE departs from its simulation on this host's CPU EP, tensor by tensor,
    against REFERENCE (its FP32 model): the JSON of `edgeq diverge`. Inputs: `samples` records of DATA, else the
    task's example input; at the model's own fixed shape when it has one."""
    from edgeq.artifact import check_loadable, load_onnx
    from edgeq.diverge import DEFAULT_THRESHOLD_DB
    from edgeq.diverge import diverge as run

    model_path, reference_path = Path(model), Path(reference)
    onnx_model = load_onnx(model_path, load_weights=False)
    load_onnx(reference_path, load_weights=False)
    for path in (model_path, reference_path):
        check_loadable(path)
    target = load_target(device)
    folder = Path(tokenizer) if tokenizer else model_path.parent
    chosen = _task_for(folder, task)
    batch_size, sequence_length = _fixed_shape(onnx_model.graph) or (1, default_length(folder))
    inputs = chosen.inputs(folder, sequence_length, _has_static_shapes(onnx_model))
    if data is None:
        feeds = [chosen.example_feed(inputs, batch_size)]
    else:
        items = chosen.read(data, samples, "--data", folder)
        feeds = [b.feed for b in chosen.batches(items, inputs, batch_size, True)]
    report = run(model_path, target, reference_path, feeds, threshold_db or DEFAULT_THRESHOLD_DB)
    report["data"] = str(data.path) if data is not None else "the task's example input"
    return report


def _fixed_shape(graph) -> tuple[int, int] | None:
    """(batch size, sequence length) of a model whose first input is fixed at two dimensions, else None."""
    inits = {t.name for t in graph.initializer}
    first = next((i for i in graph.input if i.name not in inits), None)
    dims = [d.dim_value for d in first.type.tensor_type.shape.dim] if first is not None else []
    return (dims[0], dims[1]) if len(dims) == 2 and all(d > 0 for d in dims) else None


def plan(
    models: str | Path | list,
    device: str | None = None,
    context: int = 2048,
    memory_mb: int | None = None,
    kv_dtype: str | None = None,
    recipe: str | Path | None = None,
) -> dict:
    """Memory per precision of one language model config on DEVICE at CONTEXT (the plan JSON of DESIGN.md), or,
    for several, {"plans", "comparison"} ranked at equal memory. `kv_dtype`: fp32|fp16|int8 (default: the
    device runtime's). `recipe`: the recipe whose build `build_cost` estimates (default: edgeq init's)."""
    from edgeq.plan import compare_at_equal_memory
    from edgeq.plan import plan as plan_one

    profile = load_device(device)
    plans = [
        plan_one(m, profile, context, memory_mb, kv_dtype, recipe)
        for m in (models if isinstance(models, list) else [models])
    ]
    return plans[0] if len(plans) == 1 else {"plans": plans, "comparison": compare_at_equal_memory(plans)}


def inspect(model: str | Path) -> dict:
    """Inputs, outputs, opsets, op histogram, size and precision summary of an ONNX file."""
    from edgeq.artifact import inspect_model

    return inspect_model(model)


def preflight(model: str | Path, device: str) -> dict:
    """What in MODEL will not run on DEVICE (shapes, ops, types, opset; DPU rules; mobile coverage)."""
    from edgeq.preflight import preflight as check

    return check(Path(model), load_target(device))


def setup_device(device_id: str) -> dict:
    """Make (or find) the local stand-in of a device whose profile says `stand_in: qemu-arm64`."""
    from edgeq.errors import DeviceError
    from edgeq.targets.standin import setup

    profile = load_device(device_id)
    if not profile.runs_in_arm64_stand_in:
        raise DeviceError(f"device '{device_id}' needs no setup", "Only devices with `stand_in: qemu-arm64` have one")
    return setup(device_id)


def devices() -> list[DeviceProfile]:
    return list_devices()


def device(device_id: str) -> DeviceProfile:
    return load_device(device_id)


def recipes(folder: str | Path | None = None) -> list[dict]:
    """Every recipe in FOLDER (default: ./recipes if present, else the bundled ones), valid or not."""
    from edgeq.errors import EdgeqError
    from edgeq.recipe import load_recipe
    from edgeq.resources import bundled_dir

    root = Path(folder) if folder else (Path("recipes") if Path("recipes").is_dir() else bundled_dir("recipes"))
    found = []
    for file in sorted(root.glob("*.yaml")):
        try:
            r = load_recipe(file)
            found.append({"file": str(file), "name": r.name, "description": r.description, "targets": r.targets})
        except EdgeqError as exc:
            found.append({"file": str(file), "name": file.stem, "description": f"invalid: {exc}", "targets": []})
    return found


def _output_folder(output: str | Path) -> Path:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path '{out}' is an existing file", "Give a folder path with -o/--output")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _task_for(folder: Path, name: str | None):
    """The named task (checked against the folder's model), else the one its config.json implies, else plain
    texts (feature extraction) for a bare ONNX file."""
    from edgeq.errors import EdgeqError
    from edgeq.tasks import TASKS, detect_task, resolve_task

    if name is not None:
        return resolve_task(name, folder)[0]
    try:
        return detect_task(folder)[0]
    except EdgeqError:
        return TASKS["feature-extraction"]


def _has_static_shapes(model) -> bool:
    inits = {t.name for t in model.graph.initializer}
    dims = [d for i in model.graph.input if i.name not in inits for d in i.type.tensor_type.shape.dim]
    return bool(dims) and all(d.dim_value > 0 for d in dims)


__all__ = [
    "build",
    "device",
    "devices",
    "diverge",
    "export",
    "inspect",
    "preflight",
    "profile",
    "quantize",
    "recipes",
    "validate",
]
