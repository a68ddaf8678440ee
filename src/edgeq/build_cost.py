"""What a build will cost this machine, known before any weight is downloaded: peak RSS, disk and seconds, from the
model's config.json and the recipe (`edgeq plan`'s `build_cost`; `edgeq build` refuses a build whose peak will
not fit the memory available).

The estimate counts the work the recipe asks for, then prices it with constants fitted to measured builds:

    work      fp32 bytes     the FP32 export (a tied LM head is written as its own matrix)
              compute        the weights a token multiplies (every matrix but the embedding tables)
              tokens         forward passes, per stage: activation statistics over the calibration texts, the
                             search's proxy passes (4 + measured islands x higher rungs) over the proxy texts at
                             every shape, its full evaluations over the validation texts, validation of the chain's
                             models on every target, the profile's runs; a text's tokens are estimated as its
                             characters / 4, capped by the sequence length, padded to the longest in its batch
              sessions       models assembled and loaded (each costs time in proportion to its FP32 bytes)
              emulated       the same counts for targets validated in an emulated stand-in (qemu)
    seconds = startup + export x fp32 bytes (+ optimize x fp32 bytes, graph fusions)
              + session x fp32 bytes x sessions + forward x compute x tokens + process start x profile processes
              + stand-in start x stand-ins started + emulated forward x compute x emulated tokens
    peak    = base + per fp32 byte x fp32 bytes + per activation byte x the widest activation of one batch
              (batch x tokens x the widest of intermediate, attention scores and vocabulary, 4 bytes)
    disk    = the FP32 model (twice when graph fusions write an optimized copy) + the uniform model + the final,
              each priced by bits per weight (the final at the budget's size over the uniform)

The constants (build_cost_fit.json) are fitted by `bench/fit_build_costs.py` to the builds measured in
`bench/data/build-costs*.json` (non-negative least squares on each stage's relative error), which also states the
error in the fit and leave-one-out; the plan's `basis` carries both, and the machine. Seconds scale with the
machine: the fit is of a 2-core x86-64 host."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

CHARS_PER_TOKEN = 4  # English text through a BPE or WordPiece vocabulary
FULL_EVALUATIONS = 3  # the search's full evaluations (measured 2, 6 and 2 on the fitted builds)
PROFILE_RUNS_CAP = 200  # an encoder's profile stops at `runs` or when `min_seconds` is spent

FIT_FILE = Path(__file__).with_name("build_cost_fit.json")  # written by bench/fit_build_costs.py --write
FIT = json.loads(FIT_FILE.read_text())  # the constants, the machine they were fitted on, the fit's error


@dataclass(frozen=True)
class Work:
    fp32_bytes: int
    compute_parameters: int
    widest_activation_bytes: int
    quantized_bytes: int  # the uniform model's file
    final_bytes: int  # the final model's file (the size budget over the uniform)
    optimized_copy: bool
    tokens: dict  # stage -> tokens of forward passes on this machine
    emulated_tokens: dict  # stage -> tokens in emulated stand-ins
    sessions: dict  # stage -> models loaded on this machine
    emulated_starts: dict  # stage -> stand-ins started (one per emulated target to validate, one to profile)
    profile_processes: int  # host processes the profile starts (one per model)
    generates: bool = False  # a language model: its forward passes run other kernels (4-bit blocks, KV cache)


def model_counts(config: dict, generates: bool) -> tuple[int, int, int]:
    """(FP32 export bytes, compute parameters, widest per-token row) of a decoder (edgeq.plan's count) or a BERT-style
    encoder (embeddings, then per layer four attention and two feed-forward matrices)."""
    from edgeq.model_shape import model_shape

    vocab = int(config.get("vocab_size") or 0)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or config.get("dim") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or config.get("n_layers") or 0)
    intermediate = int(
        config.get("intermediate_size") or config.get("n_inner") or config.get("hidden_dim") or 4 * hidden
    )
    if generates:
        shape = model_shape(config)
        head = vocab * hidden
        fp32 = 4 * (shape.parameters + (head if shape.tied else 0))
        compute = shape.matmul_parameters - vocab * hidden * (1 if shape.tied else 2) + head
        return fp32, compute, max(intermediate, vocab)
    positions = int(config.get("max_position_embeddings") or 512)
    embeddings = (vocab + positions + int(config.get("type_vocab_size") or 0)) * hidden
    per_layer = 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate
    compute = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    return 4 * (embeddings + layers * per_layer), compute, intermediate


def text_tokens(source, limit: int | None, key: str = "data") -> list[int]:
    """Estimated tokens of each of the first `limit` texts of a data source: its characters / 4 (every string of a
    record, a chat's messages included)."""
    from edgeq.data import read_records

    records = [record for _, record in read_records(source, key)][:limit]
    return [max(1, _characters(record) // CHARS_PER_TOKEN) for record in records]


def _characters(value) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_characters(v) for v in value.values())
    if isinstance(value, list):
        return sum(_characters(v) for v in value)
    return 0


def batch_tokens(lengths: list[int], batch: int, cap: int) -> int:
    """Tokens a pass over these texts computes at this batch size: each batch padded to its longest text."""
    return sum(batch * min(cap, max(lengths[i : i + batch])) for i in range(0, len(lengths), batch))


def islands(config: dict, recipe, generates: bool) -> int:
    """Weight matrices the search scores: seven per decoder layer and the LM head (GPT-2: four and the head); per
    encoder layer four when attention is fused, else six; and the embedding tables when Gather is quantized."""
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    gathers = "Gather" in (recipe.quantization.op_types or [])
    if generates:
        return layers * (4 if config.get("model_type") == "gpt2" else 7) + 1 + gathers
    fused = recipe.optimize.enabled and recipe.optimize.fuse_attention
    return layers * (4 if fused else 6) + 3 * gathers


def work(config: dict, recipe, emulated: list[bool], generates: bool) -> Work:
    """The work `recipe` asks of a build of this model; `emulated`: per target, whether it validates in a stand-in;
    `generates`: whether its task is a language model's."""
    fp32, compute, widest_row = model_counts(config, generates)
    val = recipe.validation
    shapes = recipe.validation_shapes
    validation = text_tokens(val.data, val.samples, "validation.data")
    calib = recipe.quantization.calibration
    calibration = text_tokens(calib.data, calib.samples, "quantization.calibration.data") if calib else []
    calib_cap = recipe.sequence_length_for(calib) if calib else 0

    def over_shapes(lengths: list[int], which=shapes) -> int:
        return sum(batch_tokens(lengths, b, s) for b, s in which) if lengths else 0

    tokens = {"search": 0, "validate": 0, "profile": 0}
    sessions = {"search": 0, "validate": 0, "profile": 0}
    emulated_tokens = {"validate": 0, "profile": 0}
    mp = recipe.mixed_precision if recipe.runs_mixed_precision else None
    if mp is not None:
        from edgeq.mixed_precision.islands import STATS_RUNGS
        from edgeq.rungs import BY_NAME, RUNG_NAMES

        rungs = len(mp.candidates) - 1
        measured = min(islands(config, recipe, generates), (mp.measure_top + 2) if mp.measure_top else 10**9)
        passes = 4 + measured * rungs
        # A model with no run-time activation scale computes a padded batch's texts as alone: the search takes its
        # batched outputs from the first shape's, so only promotions to a batch-dependent rung (or every promotion,
        # when the lowest rung is one) run at the other shapes.
        dependent = [BY_NAME[r].batch_dependent for r in RUNG_NAMES if r in mp.candidates]  # cheapest first
        batched_passes = 4 + measured * (rungs if dependent[0] else sum(dependent[1:]))
        statistics = batch_tokens(calibration, 1, calib_cap) if STATS_RUNGS & set(mp.candidates) else 0
        proxy = calibration[: mp.proxy_samples]
        tokens["search"] = (
            statistics
            + passes * over_shapes(proxy, shapes[:1])
            + batched_passes * over_shapes(proxy, shapes[1:])
            + FULL_EVALUATIONS * over_shapes(validation)
        )
        sessions["search"] = passes + FULL_EVALUATIONS + 2 * len(shapes)
    optimized = recipe.optimize.enabled and not generates
    # FP32, its fused copy, the uniform model, the search's, the one with an INT8 KV cache
    chain = 2 + optimized + (mp is not None) + (recipe.quantization.kv_cache == "int8")
    host_targets = emulated.count(False)
    tokens["validate"] = host_targets * chain * over_shapes(validation)
    sessions["validate"] = host_targets * chain
    some = validation[: val.emulated_samples] if val.emulated_samples else validation
    emulated_tokens["validate"] = emulated.count(True) * 2 * over_shapes(some)
    processes = 0
    if recipe.profile is not None:
        prof = recipe.profile
        prompt = prof.sequence_length or recipe.default_sequence_length
        per_run = prompt + (prof.new_tokens or 0) if generates else prompt
        models = 2 if generates else 1  # a language model's uniform INT4 beside its final: the plan's check
        tokens["profile"] = host_targets * models * (min(prof.runs, PROFILE_RUNS_CAP) + prof.warmup) * per_run
        sessions["profile"] = host_targets * models
        emulated_tokens["profile"] = emulated.count(True) * per_run
        processes = host_targets * models
    widest_batch = max(b * s for b, s in shapes)
    widest = 4 * widest_batch * max(widest_row, max(s for _, s in shapes) * int(config.get("num_attention_heads") or 1))
    quantized = quantized_bytes(fp32, compute, recipe)
    over = (mp.budget.max_size_over_lowest or 1.0) if mp is not None else 1.0
    final = (
        int(min(quantized * over, fp32 * mp.budget.max_size_ratio))
        if mp is not None and mp.budget.max_size_ratio
        else int(quantized * over)
    )
    return Work(
        fp32,
        compute,
        widest,
        quantized,
        final if mp is not None else 0,
        optimized,
        tokens,
        emulated_tokens,
        sessions,
        {"validate": emulated.count(True), "profile": emulated.count(True) * (recipe.profile is not None)},
        processes,
        generates,
    )


BITS_PER_WEIGHT = {"int4": 4 + 40 / 32, "int8": 8 + 32 / 384, "uint8": 8 + 32 / 384}  # scales (and int4's zero points)


def quantized_bytes(fp32: int, compute: int, recipe) -> int:
    """The uniform model's bytes: the quantized matrices at their bits per weight (embedding tables too when Gather
    is quantized, as 8-bit rows), the rest in FP32."""
    q = recipe.quantization
    bits = BITS_PER_WEIGHT["int4"] if q.mode == "int4" else BITS_PER_WEIGHT["int8"]
    quantized = compute * bits / 8
    rest = fp32 - 4 * compute
    if "Gather" in (q.op_types or []):
        rest = rest * (8 + 32 / 384) / 32
    return int(quantized + rest)


def time_terms(w: Work) -> dict[str, dict[str, float]]:
    """Per stage (export: start-up to quantization), what each seconds constant multiplies. A language model's
    forward passes are priced apart from an encoder's: other kernels, measured at other rates."""
    e, c = w.fp32_bytes, w.compute_parameters
    forward = "decoder_forward" if w.generates else "forward"
    return {
        "export": {"startup": 1.0, "export_per_byte": e, "optimize_per_byte": e * w.optimized_copy},
        "search": {"session_per_byte": e * w.sessions["search"], forward: c * w.tokens["search"]},
        "validate": {
            "session_per_byte": e * w.sessions["validate"],
            forward: c * w.tokens["validate"],
            "emulated_start": w.emulated_starts["validate"],
            "emulated_forward": c * w.emulated_tokens["validate"],
        },
        "profile": {
            "session_per_byte": e * w.sessions["profile"],
            forward: c * w.tokens["profile"],
            "process_start": w.profile_processes,
            "emulated_start": w.emulated_starts["profile"],
            "emulated_forward": c * w.emulated_tokens["profile"],
        },
    }


def peak_terms(w: Work) -> dict[str, float]:
    return {"base": 1.0, "per_fp32_byte": w.fp32_bytes, "per_activation_byte": w.widest_activation_bytes}


def estimate(w: Work, fit: dict | None = None) -> dict:
    """The `build_cost` of the plan JSON: peak RSS, disk and seconds, with the fit's machine and error."""
    fit = fit or FIT
    stages = {stage: sum(fit["seconds"][k] * v for k, v in terms.items()) for stage, terms in time_terms(w).items()}
    peak = sum(fit["peak"][k] * v for k, v in peak_terms(w).items())
    disk = w.fp32_bytes * (2 if w.optimized_copy else 1) + w.quantized_bytes + w.final_bytes
    return {
        "peak_rss_bytes": int(peak),
        "disk_bytes": int(disk),
        "seconds": round(sum(stages.values())),
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "basis": {
            "method": "counted work priced by constants fitted to measured builds (edgeq.build_cost)",
            "machine": fit["machine"],
            "error": fit["error"],
            "fitted_fp32_bytes": fit["fitted_fp32_bytes"],
            "extrapolated": not fit["fitted_fp32_bytes"][0] <= w.fp32_bytes <= fit["fitted_fp32_bytes"][1],
            "work": asdict(w),
        },
    }


def build_cost(config: dict, recipe, targets, task) -> dict:
    """The estimate for building `recipe` on this model's config for `task`, for `targets` (Target objects)."""
    return estimate(work(config, recipe, [t.runs_in_stand_in for t in targets], task.generates))


def starter(model_dir: Path, device):
    """The recipe `edgeq build --model MODEL --device ID` would build (edgeq init's), parsed."""
    import yaml

    from edgeq.recipe import Recipe
    from edgeq.starter import starter_recipe

    text = starter_recipe(str(model_dir), model_dir, device)
    return Recipe.model_validate(yaml.safe_load(text), context={"base_dir": model_dir.resolve()})


def plan_build_cost(model: str | Path, device, recipe_path: str | Path | None = None) -> dict:
    """`build_cost` for `edgeq plan`: building the recipe at `recipe_path` (its targets), or the starter recipe for
    this model and device, on this machine; only config.json is read."""
    from edgeq.model_shape import read_config
    from edgeq.recipe import load_recipe
    from edgeq.tasks import TASKS, positions_in, task_for_config

    config = read_config(model)
    model_dir = Path(model) if Path(model).is_dir() else Path(model).parent
    recipe = load_recipe(recipe_path) if recipe_path else starter(model_dir, device)
    recipe.fit_to_model(positions_in(config))
    task = TASKS[recipe.model.task] if recipe.model.task else task_for_config(config, model)[0]
    from edgeq.targets import load_target

    targets = [load_target(t) for t in recipe.targets] if recipe_path else [load_target(device)]
    cost = build_cost(config, recipe, targets, task)
    cost["recipe"] = str(recipe_path) if recipe_path else f"edgeq init's starter recipe for {device.id}"
    return cost


def check_fits_memory(config: dict, recipe, targets, task, say) -> dict | None:
    """Say the build's estimated peak; refuse (MemoryHeadroomError) when it is over what this machine has available
    (EDGEQ_MEMORY_CHECK=0 turns the refusal off). Returns the estimate, None when the config is not one edgeq counts."""
    import os

    from edgeq.errors import DataError
    from edgeq.headroom import MemoryHeadroomError, available_bytes

    try:
        cost = build_cost(config, recipe, targets, task)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, DataError):  # the data's own reading says what is wrong
        return None
    peak, available = cost["peak_rss_bytes"], available_bytes()
    say(
        f"  estimated cost: peak {peak / 2**30:.1f} GiB, {cost['disk_bytes'] / 1e6:.0f} MB on disk, about "
        f"{_minutes(cost['seconds'])} on a 2-core x86-64"
        + (f"; {available / 2**30:.1f} GiB available" if available else "")
    )
    if available is not None and peak > available and os.environ.get("EDGEQ_MEMORY_CHECK", "1") != "0":
        raise MemoryHeadroomError(
            f"this build needs about {peak / 2**30:.1f} GiB at peak and this machine has {available / 2**30:.1f} GiB "
            "available",
            "Free memory, lower validation.samples and validation.sequence_length, or set EDGEQ_MEMORY_CHECK=0 to try anyway",
        )
    return cost


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
