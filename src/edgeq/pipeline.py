"""The build: check every input first, then run the stages in order into the build folder.

Each artifact stage writes its folder atomically with an `edgeq-stage.json` holding a cache key: the hash of
the stage's recipe section, its input's key (so the model's bytes flow through), its data and the tool
versions. An unchanged stage is served from that folder and says so. Validation is never cached: every
number in the report was measured by this run.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from edgeq.artifact import copy_companions, sha256_tree
from edgeq.atomic import atomic_dir, remove_leftovers
from edgeq.errors import OutputError, StageError
from edgeq.headroom import StagePeak, peak_rss_mb, trim_heap
from edgeq.progress import say
from edgeq.quantize import check_against_device, quantization_scheme, resolve_op_types
from edgeq.recipe import Recipe, load_recipe
from edgeq.stage_cache import MODEL_FILE, StageResult, cached_stage
from edgeq.static_decoder import DECODE_FILE
from edgeq.targets import HOST, DeviceProfile, Target, host_cpu_device, load_target

EXPORT_CHECK_SAMPLES = 8


@dataclass
class Plan:
    """Everything a build needs, checked before anything is written."""

    recipe_path: Path
    recipe: Recipe
    targets: list[Target]  # one per recipe target, built once: profile, runtime, remote
    op_types: list[str] | None
    scheme: str
    task: object  # edgeq.tasks.Task
    task_reason: str
    validation_samples: list
    calibration_samples: list | None
    out_dir: Path
    model_dir: Path
    model_hash: str
    cost_estimate: dict | None = None  # edgeq.build_cost's estimate, said before the build starts

    @property
    def devices(self) -> list[DeviceProfile]:
        """The targets' profiles: what the stages read of their rules."""
        return [t.profile for t in self.targets]

    @property
    def legalizes(self) -> bool:
        """A target asks for legalization and the shapes are fixed (folding needs them)."""
        return self.recipe.static_shapes and any(d.legalize and d.coverage for d in self.devices)


@dataclass
class BuildResult:
    report: dict
    out_dir: Path
    exit_code: int


def plan_build(recipe_path: str | Path, output: str | Path | None = None, targets: list[str] | None = None) -> Plan:
    """Load and check the recipe, devices, data, output path and model source; write nothing. `targets` replace
    the recipe's (a cross-build; the report's recipe records them)."""
    from edgeq.export.source import resolve_source
    from edgeq.tasks import model_positions, resolve_task

    recipe = load_recipe(recipe_path)
    if targets:
        recipe = recipe.model_copy(update={"targets": list(targets)})
    targets = [load_target(target) for target in recipe.targets]
    devices = [t.profile for t in targets]
    quantized_for = [d for d in devices if d.artifact == "recipe"] or devices  # the devices the recipe's model serves
    for device in quantized_for:
        check_against_device(recipe.quantization, device, recipe.static_shapes)
    out_dir = Path(output) if output else Path("build") / recipe.name
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output path '{out_dir}' is an existing file", "Choose a folder with --output")
    model_dir = resolve_source(recipe.model.source)
    task, reason = resolve_task(recipe.model.task, model_dir)
    check_metric_names(recipe, task)
    recipe.fit_to_model(model_positions(model_dir))
    check_context(recipe, model_dir)
    check_kv_cache(recipe, task, model_dir, quantization_scheme(quantized_for))
    cost = None
    if (
        task.modality == "text"
    ):  # a build can outgrow the machine: know it before the kernel does (an OOM kill says nothing)
        from edgeq.build_cost import check_fits_memory
        from edgeq.tasks import model_config

        cost = check_fits_memory(model_config(model_dir), recipe, targets, task, say)
    validation = task.read(recipe.validation.data, recipe.validation.samples, "validation.data", model_dir)
    calib = recipe.quantization.calibration
    calibration = task.read(calib.data, calib.samples, "quantization.calibration.data", model_dir) if calib else None
    return Plan(
        recipe_path=Path(recipe_path),
        recipe=recipe,
        targets=targets,
        op_types=resolve_op_types(recipe.quantization, quantized_for),
        scheme=quantization_scheme(quantized_for),
        task=task,
        task_reason=reason,
        validation_samples=validation,
        calibration_samples=calibration,
        out_dir=out_dir,
        model_dir=model_dir,
        model_hash=sha256_tree(model_dir),
        cost_estimate=cost,
    )


def check_metric_names(recipe: Recipe, task) -> None:
    """Thresholds and budget floors may only name metrics the task reports."""
    from edgeq.errors import RecipeError
    from edgeq.tasks.metrics import COMMON

    known = {*(m.name for m in COMMON), *task.metric_names, *(f"{m}_delta" for m in task.metric_names)}
    named = [(f"validation.thresholds.{k}", k) for k in recipe.validation.thresholds.model_dump(exclude_none=True)]
    if recipe.mixed_precision is not None:
        budget = recipe.mixed_precision.budget
        named += [(f"mixed_precision.budget.floors.{k}", k) for k in budget.floors]
        named += [(f"mixed_precision.budget.ceilings.{k}", k) for k in budget.ceilings]
        named += [(f"mixed_precision.budget.ceilings_over_lowest.{k}", k) for k in budget.ceilings_over_lowest]
        if budget.min_nn_agreement is not None:
            named.append(("mixed_precision.budget.min_nn_agreement", "nn_agreement"))
    for key, metric in named:
        if metric not in known:
            raise RecipeError(
                f"{key}: {task.name} has no metric '{metric}'", f"Its metrics: {', '.join(sorted(known))}"
            )


def check_context(recipe: Recipe, model_dir: Path) -> None:
    """No sequence length may pass the model's position table (max_position_embeddings / n_positions)."""
    from edgeq.errors import RecipeError
    from edgeq.tasks import model_positions, positions_phrase

    limit = model_positions(model_dir)
    if limit is None:
        return
    used = [("validation.sequence_length", recipe.sequence_length_for(recipe.validation))]
    used += [
        (f"validation.shapes.{i}.sequence_length", s.sequence_length)
        for i, s in enumerate(recipe.validation.shapes or [])
    ]
    if recipe.quantization.calibration is not None:
        used.append(
            ("quantization.calibration.sequence_length", recipe.sequence_length_for(recipe.quantization.calibration))
        )
    if recipe.profile is not None:
        used.append(("profile.sequence_length", recipe.profile.sequence_length))
    for key, length in used:
        if length is not None and length > limit:
            raise RecipeError(
                f"{key}: {length} tokens is over the model's {positions_phrase(model_dir)}", f"Use at most {limit}"
            )


def check_kv_cache(recipe: Recipe, task, model_dir: Path, scheme: str) -> None:
    """An INT8 KV cache is a language model's: in the fused decoder graph (GroupQueryAttention holds the cache), or,
    for the HTP, in a static decoder pair's QDQ (its cache inputs and outputs take 8-bit encodings)."""
    from edgeq.errors import RecipeError
    from edgeq.export.hf import uses_fused_decoder

    q = recipe.quantization
    if q.kv_cache != "int8":
        return
    if not task.generates:
        raise RecipeError(
            f"quantization.kv_cache: int8 is for language models, and this is a {task.name} model", "Remove kv_cache"
        )
    if recipe.export.decoder == "static":
        if q.mode != "static" or scheme != "qnn":
            raise RecipeError(
                "quantization.kv_cache: int8 on a static decoder pair is the HTP's: its cache inputs and outputs take "
                "8-bit QDQ encodings",
                "Use quantization.mode: static with a Qualcomm HTP target, or kv_cache: fp32",
            )
        return
    fixed = recipe.static_shapes or recipe.fixed_batch
    if not uses_fused_decoder(model_dir, task.export_task, recipe.export.decoder, fixed):
        raise RecipeError(
            "quantization.kv_cache: int8 needs the fused decoder graph (its GroupQueryAttention holds "
            "the cache), which this model and export do not write",
            "Use a Llama, Mistral or Qwen2 model at dynamic shapes with export.decoder auto or fused, or kv_cache: fp32",
        )


def run_build(plan: Plan, force: bool = False) -> BuildResult:
    """Run the stages into the build folder; libraries' logging goes to its build.log (edgeq.buildlog)."""
    from edgeq.buildlog import LOG_FILE, library_log

    plan.out_dir.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / LOG_FILE).unlink(missing_ok=True)
    with library_log(plan.out_dir / LOG_FILE):
        try:
            return _run_stages(plan, force)
        except BaseException as exc:  # the log ends with why the build stopped (the terminal shows it too)
            import logging

            logging.getLogger("edgeq").error("the build stopped: %s: %s", type(exc).__name__, exc)
            raise


def _run_stages(plan: Plan, force: bool) -> BuildResult:
    from edgeq.manifest import manifest_of, write_manifest
    from edgeq.report import build_report, write_report

    started = time.perf_counter()
    remove_leftovers(plan.out_dir)
    say(f"[bold]edgeq build[/bold] {plan.recipe.name} → {plan.out_dir}")
    say(f"  task: {plan.task.name} ({plan.task_reason})")
    if HOST in plan.recipe.targets:
        say(f"  target host: {host_cpu_device()} (the bundled CPU profile whose numerics this machine reproduces)")
    say(
        f"  sequence length where the recipe sets none: {plan.recipe.default_sequence_length} tokens "
        f"({plan.recipe.default_sequence_length_origin})"
    )
    stages = [export_stage(plan, force)]
    source = stages[0]
    if plan.recipe.optimize.enabled:
        stages.append(optimize_stage(plan, source, force))
        source = stages[-1]
    if plan.legalizes:
        stages.append(legalize_stage(plan, source, force))
        source = stages[-1]
    quantized = quantize_stage(plan, source, force)
    stages.append(quantized)
    chosen = quantized
    if plan.recipe.runs_mixed_precision:
        chosen = mixed_precision_stage(plan, source, force, quantized)
        stages.append(chosen)
    if plan.recipe.quantization.kv_cache == "int8" and plan.recipe.export.decoder != "static":  # the fused graph's:
        # validated beside the model before it, so the report says its cost (a static pair's is in its QDQ)
        chosen = kv_cache_stage(plan, stages[0], chosen, force)
        stages.append(chosen)
    own = {}  # device id -> the stage of the artifact it takes instead of the recipe's
    if any(d.artifact == "fp16" for d in plan.devices):
        stages.append(fp16_stage(plan, source, force))
        own = {d.id: stages[-1] for d in plan.devices if d.artifact == "fp16"}
    served = {d.id: own.get(d.id, chosen) for d in plan.devices}
    candidates = {s.folder.name: s.folder / MODEL_FILE for s in stages if s.folder is not None}
    validation = validate_stage(plan, candidates, "fp32", {d: s.folder.name for d, s in served.items()})
    stages.append(validation)
    finals = finalize(plan, served)
    if plan.recipe.profile is not None and plan.recipe.profile.enabled:
        stages.append(profile_stage(plan, finals))
    report = build_report(
        plan,
        stages,
        final_artifact=served[plan.devices[0].id].folder.name,
        total=time.perf_counter() - started,
        finals={d: f"{finals[d].name}/{MODEL_FILE}" for d in finals},
        served={d: s.folder.name for d, s in served.items()},
    )
    write_report(plan.out_dir, plan.recipe, report)
    write_manifest(plan.out_dir, manifest_of(plan, report))
    return BuildResult(report=report, out_dir=plan.out_dir, exit_code=0 if report["passed"] else 3)


def export_stage(plan: Plan, force: bool) -> StageResult:
    from edgeq.isolated import run_isolated

    recipe, exp, task = plan.recipe, plan.recipe.export, plan.task
    check_samples = plan.validation_samples[:EXPORT_CHECK_SAMPLES]

    def produce(folder: Path) -> dict:
        check, peak = run_isolated(
            export_and_check,
            plan.model_dir,
            folder,
            task,
            exp,
            check_samples,
            recipe.default_sequence_length,
            recipe.static_shapes,
            recipe.model.trust_remote_code,
        )
        if check["cosine_min"] is None or check["cosine_min"] < 0.99:
            raise StageError(f"the exported ONNX model disagrees with PyTorch (cosine min {check['cosine_min']})")
        return {
            "source": recipe.model.source,
            "task": task.name,
            "task_reason": plan.task_reason,
            "compared_output": task.compares,
            "export_check": check,
            "child_peak_rss_mb": peak,
        }

    key = {
        "model": plan.model_hash,
        "model_config": recipe.model.model_dump(mode="json"),
        "task": task.name,
        "export": exp.model_dump(mode="json"),
        "check_samples": [s.key() for s in check_samples],
    }
    return cached_stage(plan.out_dir / "fp32", "export", key, produce, force)


def export_and_check(
    model_dir: Path,
    folder: Path,
    task,
    exp,
    check_samples: list,
    check_length: int,
    static: bool,
    trust_remote_code: bool,
) -> tuple[dict, float | None]:
    """Export, then check the ONNX model against PyTorch; run in a child process (edgeq.isolated), so PyTorch and
    its model never sit in the build's memory. Returns the check and the child's peak RSS."""
    from edgeq.buildlog import route_transformers
    from edgeq.export import export_onnx
    from edgeq.export.check import check_export

    route_transformers()

    model = export_onnx(
        model_dir,
        folder,
        task.export_task,
        exp.opset,
        exp.batch_size,
        exp.sequence_length,
        trust_remote_code,
        exp.decoder,
        exp.kv_cache_length,
    )
    trim_heap()  # the export's graph is on disk now: the check's PyTorch model need not sit on top of it
    check = check_export(model_dir, model, task, check_samples, check_length, static, trust_remote_code)
    return check, peak_rss_mb()


def optimize_stage(plan: Plan, source: StageResult, force: bool) -> StageResult:
    from edgeq.optimize import fuse_transformer
    from edgeq.optimize.fusions import fusion_family

    opt = plan.recipe.optimize

    def produce(folder: Path) -> dict:
        family = fusion_family(opt.model_type, plan.model_dir)
        fused = fuse_transformer(
            source.folder / MODEL_FILE,
            folder / MODEL_FILE,
            family,
            opt.opt_level,
            opt.fuse_attention,
            opt.fuse_embed_layer_norm,
        )
        copy_companions(source.folder, folder)
        return {"fusion_family": family, "fused_operators": fused}

    key = {"input": source.key, "optimize": opt.model_dump(mode="json")}
    return cached_stage(plan.out_dir / "optimized", "optimize", key, produce, force)


def quantize_stage(plan: Plan, source: StageResult, force: bool) -> StageResult:
    from edgeq.quantize import quantize_model

    q = plan.recipe.quantization
    name = "w8a16" if q.mode == "static" and q.resolved_activation_type.endswith("16") else "int8"
    if q.four_bit_weights or q.four_bit_budget:  # some MatMuls at 4 bits, the rest at 8
        name = "w4w8a16" if name == "w8a16" else "w4w8a8"
    name = "int4" if q.mode == "int4" else name
    calib_samples = plan.calibration_samples if q.mode == "static" else None
    power_of_two = any(d.is_dpu for d in plan.devices)

    def produce(folder: Path) -> dict:
        batches = calibration_batches(plan, source) if calib_samples is not None else None
        feeds = [b.feed for b in batches] if batches is not None else None
        done = quantize_model(
            source.folder / MODEL_FILE,
            folder / MODEL_FILE,
            q,
            plan.op_types,
            feeds,
            plan.scheme,
            power_of_two,
            folded=plan.legalizes,
            four_bit_budget=four_bit_budget(plan, batches) if q.four_bit_budget else None,
        )
        four_bit = done.get("four_bit_weights", {}).get("matmuls") or []
        if (source.folder / DECODE_FILE).is_file():  # a static decoder pair: the decode graph takes the same encodings
            from edgeq.quantize.static_pair import quantize_decode_graph

            again = same_weights_quantizer(plan, four_bit)  # the decode graph's codes: the prefill's
            done["decode_graph"] = quantize_decode_graph(source.folder, folder, again, feeds or [])
        copy_companions(source.folder, folder)
        return {
            **done,
            "mode": q.mode,
            "format": q.resolved_format,
            "op_types": plan.op_types or "onnxruntime default",
            "calibration_samples": len(calib_samples) if calib_samples else 0,
        }

    key = {
        "input": source.key,
        "quantization": q.model_dump(mode="json"),
        "op_types": plan.op_types,
        "scheme": plan.scheme,
        "power_of_two": power_of_two,
        "folded": plan.legalizes,
        "calibration": [c.key() for c in calib_samples] if calib_samples else None,
        "calibration_shape": [
            plan.recipe.static_shapes,
            q.calibration and plan.recipe.sequence_length_for(q.calibration),
        ],
    }
    return cached_stage(plan.out_dir / name, "quantize", key, produce, force)


def calibration_feeds(plan: Plan, source: StageResult) -> list[dict]:
    """The calibration samples as model inputs, one dict a batch, at the calibration's sequence length."""
    return [b.feed for b in calibration_batches(plan, source)]


def calibration_batches(plan: Plan, source: StageResult) -> list:
    """The calibration samples as the task's batches (model inputs, and what the task compares), at the
    calibration's sequence length."""
    from edgeq.quantize.calibration import pads_to_length

    q = plan.recipe.quantization
    seq = plan.recipe.sequence_length_for(q.calibration)
    inputs = plan.task.inputs(source.folder, seq, pads_to_length(q.calibration.method, plan.recipe.static_shapes))
    return list(plan.task.batches(plan.calibration_samples, inputs, q.calibration.batch_size, True))


def four_bit_budget(plan: Plan, batches: list):
    """quantization.four_bit_budget's search: the first `four_bit_search_samples` calibration samples, and the
    task's proxy loss against FP32 on them (a language model's KL per token)."""
    from edgeq.quantize.four_bit_budget import Budget

    q = plan.recipe.quantization
    taken, count = [], 0
    for batch in batches:
        if count >= q.four_bit_search_samples:
            break
        taken.append(batch)
        count += len(batch.samples)
    loss = partial(proxy_loss, plan.task, taken)
    return Budget(q.four_bit_budget, [b.feed for b in taken], loss, plan.task.proxy_loss_name)


def proxy_loss(task, batches: list, reference: list[dict], candidate: list[dict]) -> float:
    """How far the candidate's outputs (one dict a batch) are from the reference's by the task's proxy score
    (0: the same)."""
    kept, same, paired = [], [], []
    for batch, ref, cand in zip(batches, reference, candidate):
        compared = task.compared(ref, batch)
        kept += compared
        same += task.pair(compared, compared, batch)
        paired += task.pair(compared, task.compared(cand, batch), batch)
    return task.proxy_score(kept, same) - task.proxy_score(kept, paired)


def same_weights_quantizer(plan: Plan, four_bit: list[str], weights_from: Path | None = None):
    """`quantize(fp32, out, feeds, overrides=None, activation_type=None)`: quantize_model as the recipe says, but for
    the weights: the MatMuls `four_bit` at 4 bits, rounded to nearest and then, with `weights_from`, replaced by
    that model's codes (the quantize stage's: GPTQ and the 4-bit search run once). `overrides` set single tensors'
    activation types, `activation_type` every tensor's. What a static pair's decode graph and the activation-type
    search's models are quantized by."""
    from edgeq.quantize import quantize_model
    from edgeq.quantize.static_pair import share_weights

    update = {"weight_rounding": "nearest", "four_bit_weights": four_bit, "four_bit_budget": None}
    same = plan.recipe.quantization.model_copy(update=update)
    power_of_two = any(d.is_dpu for d in plan.devices)

    def quantize(fp32: Path, out: Path, feeds: list[dict], overrides: dict | None = None, activation_type=None):
        settings = same.model_copy(update={"activation_type": activation_type}) if activation_type else same
        quantize_model(fp32, out, settings, plan.op_types, feeds, plan.scheme, power_of_two, overrides)
        if weights_from is not None:
            share_weights(out, weights_from)

    return quantize


def mixed_precision_stage(plan: Plan, source: StageResult, force: bool, quantized: StageResult) -> StageResult:
    from edgeq.artifact import sha256_file as file_hash
    from edgeq.mixed_precision import MixedPrecisionJob, choose_precisions
    from edgeq.mixed_precision.activation_types import RUNGS, choose_activation_types

    mp, q, val = plan.recipe.mixed_precision, plan.recipe.quantization, plan.recipe.validation
    proxy_samples = (plan.calibration_samples or [])[: mp.proxy_samples]

    def produce(folder: Path) -> dict:
        inputs = plan.task.inputs(source.folder, plan.recipe.sequence_length_for(val), plan.recipe.static_shapes)
        job = MixedPrecisionJob(
            source.folder / MODEL_FILE,
            folder,
            mp,
            plan.op_types,
            q.per_channel,
            plan.targets[0],
            plan.task,
            proxy_samples,
            plan.validation_samples,
            inputs,
            plan.recipe.validation_shapes,
            plan.calibration_samples or [],
            plan.recipe.fixed_batch,
            q.accuracy_level,
        )
        if set(mp.candidates) <= set(RUNGS):  # activation types of a QDQ NPU's model
            model16 = quantized.folder / MODEL_FILE
            four_bit = quantized.details.get("four_bit_weights", {}).get("matmuls") or []
            quantize = same_weights_quantizer(plan, four_bit, weights_from=model16)
            feeds = calibration_feeds(plan, source)
            section, overrides = choose_activation_types(job, quantize, feeds, model16)
            if (source.folder / DECODE_FILE).is_file():  # a static pair: the decode graph takes the same types
                from edgeq.quantize.static_pair import quantize_decode_graph

                def again(fp32: Path, out: Path, step_feeds: list[dict]) -> None:
                    quantize(fp32, out, step_feeds, overrides)

                section["decode_graph"] = quantize_decode_graph(source.folder, folder, again, feeds)
        else:
            section = choose_precisions(job)
        copy_companions(source.folder, folder)
        return {"mixed_precision": section}

    pinned = file_hash(mp.overrides) if mp.overrides and Path(mp.overrides).is_file() else None
    key = {
        "input": source.key,
        "quantized": quantized.key,
        "mixed_precision": mp.model_dump(mode="json"),
        "pinned": pinned,
        "op_types": plan.op_types,
        "per_channel": q.per_channel,
        "task": plan.task.name,
        "validation": [s.key() for s in plan.validation_samples],
        "device": plan.devices[0].model_dump(mode="json"),
        "shapes": plan.recipe.validation_shapes,
        "calibration": [s.key() for s in plan.calibration_samples or []],
    }
    return cached_stage(plan.out_dir / "mixed", "mixed_precision", key, produce, force)


def kv_cache_stage(plan: Plan, fp32: StageResult, source: StageResult, force: bool) -> StageResult:
    from edgeq.quantize.kv_cache import quantize_kv_cache

    def produce(folder: Path) -> dict:
        done = quantize_kv_cache(
            source.folder / MODEL_FILE, folder / MODEL_FILE, fp32.folder / MODEL_FILE, calibration_feeds(plan, fp32)
        )
        copy_companions(source.folder, folder)
        return done

    key = {
        "input": source.key,
        "fp32": fp32.key,
        "calibration": [s.key() for s in plan.calibration_samples or []],
        "calibration_length": plan.recipe.sequence_length_for(plan.recipe.quantization.calibration),
    }
    return cached_stage(plan.out_dir / "kv8", "kv_cache", key, produce, force)


def legalize_stage(plan: Plan, source: StageResult, force: bool) -> StageResult:
    from edgeq.optimize.legalize import legalize

    kinds = sorted({d.coverage for d in plan.devices if d.legalize and d.coverage})

    def produce(folder: Path) -> dict:
        done = legalize(source.folder / MODEL_FILE, folder / MODEL_FILE, kinds)
        copy_companions(source.folder, folder)
        for kind, after in done["coverage_after"].items():
            before = done["coverage_before"][kind]
            say(
                f"  {kind}: {before['partitions']} → {after['partitions']} partitions, "
                f"{before['share']:.1%} → {after['share']:.1%} of nodes"
            )
        return {"legalization": done}

    key = {"input": source.key, "coverage": kinds}
    return cached_stage(plan.out_dir / "legalized", "legalize", key, produce, force)


def fp16_stage(plan: Plan, source: StageResult, force: bool) -> StageResult:
    from edgeq.quantize.fp16 import convert_to_fp16

    def produce(folder: Path) -> dict:
        done = convert_to_fp16(source.folder / MODEL_FILE, folder / MODEL_FILE)
        copy_companions(source.folder, folder)
        return done

    return cached_stage(plan.out_dir / "fp16", "fp16", {"input": source.key}, produce, force)


def validate_stage(plan: Plan, models: dict[str, Path], reference: str, served: dict[str, str]) -> StageResult:
    """Every device validates the models of the recipe's chain, or (a device with its own artifact) that one."""
    from edgeq.validate import validate_models

    val, task = plan.recipe.validation, plan.task
    limits = val.thresholds.model_dump(exclude_none=True)
    thresholds = {name: limits for name in models if name != reference}
    inputs = task.inputs(models[reference].parent, plan.recipe.sequence_length_for(val), plan.recipe.static_shapes)
    shapes = plan.recipe.validation_shapes
    say(
        f"▶ validate on {', '.join(d.id for d in plan.devices)} ({len(plan.validation_samples)} samples; shapes "
        f"{', '.join(task.shape_label(*s) for s in shapes)})"
    )
    start = time.perf_counter()
    trim_heap()
    own_artifacts = {name for d in plan.devices if d.artifact != "recipe" for name in [served[d.id]]}
    results = []
    with StagePeak() as sampled:
        for target in plan.targets:
            device, emulated = target.profile, target.runs_in_stand_in  # slow: the served model, `emulated_samples`
            if device.artifact == "recipe" and not emulated:
                wanted = {n: p for n, p in models.items() if n not in own_artifacts}
            else:
                wanted = {n: p for n, p in models.items() if n in (reference, served[device.id])}
            slow = target.on_an_emulator
            samples = plan.validation_samples[: val.emulated_samples] if slow else plan.validation_samples
            found = validate_models(
                wanted,
                reference,
                target,
                samples,
                inputs,
                task,
                shapes,
                val.warmup,
                thresholds,
                plan.recipe.fixed_batch,
                val.emulated_follow_ups if slow else None,
            )
            explain_departures(plan, target, found, wanted, reference, inputs)
            estimate_decode_speed(device, found, wanted)
            results += found
    seconds, peak = time.perf_counter() - start, sampled.mb
    say(f"  validate: {seconds:.1f}s, peak RSS {peak or '?'} MB (measured now, never cached)")
    return StageResult("validate", None, None, seconds, False, {"validations": results, "peak_rss_mb": peak})


def estimate_decode_speed(device: DeviceProfile, entries: list[dict], models: dict) -> None:
    """A static decoder pair on a device with a known memory bandwidth: its decode's roofline (an estimate)."""
    from edgeq.roofline import decode_roofline
    from edgeq.static_decoder import static_decoder

    for entry in entries:
        folder = models[entry["artifact"]].parent
        if device.memory_bandwidth_gbps and static_decoder(folder) is not None:
            entry["roofline"] = decode_roofline(folder, device.memory_bandwidth_gbps)


DIVERGE_SAMPLES = 4  # inputs `edgeq diverge` reads when the build looks for where a device departs


def explain_departures(plan: Plan, target: Target, entries: list[dict], models: dict, reference: str, inputs) -> None:
    """Where a device's fidelity is below its simulation's by more than the margin (validate/run.py), find where:
    `edgeq diverge` on the first validation samples, its JSON beside the report, its first departure and the
    per-tensor curve in the validation entry (report.html draws it)."""
    import json

    from edgeq.atomic import write_text
    from edgeq.diverge import diverge

    batch_size, length = plan.recipe.validation_shapes[0]
    when = plan.recipe.validation.diverge
    for entry in entries:
        beside = entry.get("simulation")
        if beside is None or when == "never" or (when == "when-departing" and not beside.get("departs")):
            continue
        name = entry["artifact"]
        samples = plan.validation_samples[:DIVERGE_SAMPLES]
        feeds = [b.feed for b in plan.task.batches(samples, inputs.for_length(length), batch_size, True)]
        why = "loses more than its simulation" if beside.get("departs") else "against its simulation (diverge: always)"
        say(f"  {target.id} {why} on {name}: looking for where (edgeq diverge)")
        found = diverge(models[name], target, models[reference], feeds)
        file = plan.out_dir / f"divergence-{target.id}-{name}.json"
        write_text(file, json.dumps(found, indent=2, allow_nan=False) + "\n")
        entry["divergence"] = {
            "file": file.name,
            "threshold_db": found["threshold_db"],
            "departures": found["departures"],
            "first_departure": found["first_departure"],
            "curve": [[t["local_sqnr_db"], t["sqnr_vs_simulation_db"]] for t in found["tensors"]],
        }


def profile_stage(plan: Plan, finals: dict[str, Path]) -> StageResult:
    """Each target's own final model: locally, or on the real device when its profile has a transport."""
    from edgeq.profile import ProfileSettings, profile_models

    cfg = plan.recipe.profile
    seq = cfg.sequence_length or plan.recipe.default_sequence_length
    start = time.perf_counter()
    profiles = []
    uniform = plan.out_dir / "int4" / MODEL_FILE  # a language model's uniform INT4: what `edgeq plan` predicts
    for target in plan.targets:
        device = target.profile
        emulated = target.runs_in_stand_in  # qemu's latency says nothing of the device's: one run, the final
        models = [finals[device.id] / MODEL_FILE]
        models += [uniform] if plan.task.generates and uniform.is_file() and not emulated else []
        runs, seconds, warmup = (1, 0, 0) if emulated else (cfg.runs, cfg.min_seconds, cfg.warmup)
        for model in models:  # one process each: a process's peak RSS is its one model's
            settings = ProfileSettings(runs, seconds, warmup, sequence_length=seq, new_tokens=cfg.new_tokens)
            entry = profile_models([model], target, settings, plan.task)
            entry["model"] = f"{model.parent.name}/{MODEL_FILE}"
            if emulated:
                entry["runs_note"] = "one run in the emulated stand-in: its latency is qemu's, not the device's"
            if plan.task.generates and entry.get("peak_rss_mb") and device.memory_mb:
                entry.update(
                    planned_beside_measured(plan.model_dir, device, seq + cfg.new_tokens, entry["peak_rss_mb"])
                )
                entry["planned_is_same_precision"] = model == uniform
            profiles.append(entry)
    return StageResult("profile", None, None, time.perf_counter() - start, False, {"profiles": profiles})


def planned_beside_measured(model_dir: Path, device: DeviceProfile, context: int, peak_rss_mb: float) -> dict:
    """`edgeq plan`'s INT4 prediction for the same context beside the measured peak RSS of the decoding process, so
    the planner is checked against a measurement in every build (the measurement includes Python and onnxruntime).
    The build's uniform INT4 model is the like-for-like check; a mixed final carries 8-bit blocks and offsets the
    INT4 plan does not."""
    from edgeq.plan import plan as plan_memory

    int4 = next(o for o in plan_memory(model_dir, device, context)["options"] if o["precision"] == "int4")
    return {
        "planned_bytes": int4["total_bytes"],
        "planned_precision": "int4",
        "planned_context": context,
        "measured_over_planned": round(peak_rss_mb * 2**20 / int4["total_bytes"], 2),
    }


def finalize(plan: Plan, served: dict[str, StageResult]) -> dict[str, Path]:
    """final/ holds the first target's artifact (model, config.json, tokenizer files); each other target served a
    different artifact gets final-<device>/. Returns the folder serving each device."""
    first = plan.devices[0].id
    folders = {}
    for device in plan.devices:
        stage = served[device.id]
        name = "final" if device.id == first or stage is served[first] else f"final-{device.id}"
        if name not in {f.name for f in folders.values()}:
            _write_final(plan, stage, plan.out_dir / name, [d for d in plan.devices if served[d.id] is stage])
        folders[device.id] = plan.out_dir / name
    return folders


def _write_final(plan: Plan, stage: StageResult, target: Path, devices: list[DeviceProfile]) -> None:
    with atomic_dir(target) as folder:
        shutil.copy2(stage.folder / MODEL_FILE, folder / MODEL_FILE)
        if (stage.folder / DECODE_FILE).is_file():
            shutil.copy2(stage.folder / DECODE_FILE, folder / DECODE_FILE)
        copy_companions(stage.folder, folder)
        if plan.task.generates:  # a language model: onnxruntime-genai runs the folder as it is
            from edgeq.genai import unsupported, write_genai_config

            if reason := unsupported(folder):
                say(f"  {target.name}/ has no genai_config.json: {reason}")
            else:
                write_genai_config(folder, MODEL_FILE)
        if any(d.ort_format for d in devices):
            from edgeq.mobile import write_ort_format

            say(f"▶ ORT format → {target.name}/model.ort (for onnxruntime-mobile)")
            write_ort_format(folder / MODEL_FILE, folder / "model.ort")
