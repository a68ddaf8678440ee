"""The `edgeq` command: a thin click layer over edgeq.api. Parse, call, render.

Library errors become one `Error: …` line on stderr and exit 1; usage errors exit 2; a build whose final
model falls below the recipe's thresholds exits 3. Imports stay light: no torch, no transformers, and
onnxruntime only inside the commands that run a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from edgeq import __version__
from edgeq.errors import EdgeqError
from edgeq.tasks import TASK_NAMES

EXIT_BELOW_THRESHOLDS = 3
TASK_CHOICES = click.Choice(TASK_NAMES)


class EdgeqGroup(click.Group):
    """Turns every EdgeqError (and any unexpected exception) into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            with _native_stdout_to_stderr():
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except EdgeqError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted; nothing half-written was kept", err=True)
            ctx.exit(130)
        except Exception as exc:
            if os.environ.get("EDGEQ_DEBUG"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            click.echo(
                f"Error: internal error ({type(exc).__name__}: {first}). Run with EDGEQ_DEBUG=1 for the "
                "traceback and please report it",
                err=True,
            )
            ctx.exit(1)


@contextlib.contextmanager
def _native_stdout_to_stderr():
    """Native libraries print banners on file descriptor 1 (onnxruntime-qnn's HTP emulator does, on every session):
    point it at stderr while a command runs, with Python's stdout kept on the real stdout, so that what edgeq prints
    (e.g. `--json`) is all that stdout holds. A stream that is not file descriptor 1 (a test runner's) is left alone."""
    try:
        redirect = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):
        redirect = False
    if not redirect:
        yield
        return
    original = sys.stdout
    original.flush()
    sys.stdout = os.fdopen(os.dup(1), "w", buffering=1, encoding=original.encoding, errors=original.errors)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(sys.stdout.fileno(), 1)
        sys.stdout.close()
        sys.stdout = original


@click.group(cls=EdgeqGroup)
@click.version_option(__version__, prog_name="edgeq")
def cli() -> None:
    """edgeq: export, quantize and validate a transformer for an edge device, honestly measured."""


def main() -> None:
    cli(prog_name="edgeq")


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _write_json(data, target: str) -> None:
    """JSON to a file (written atomically), or to stdout for '-'."""
    if target == "-":
        _echo_json(data)
        return
    from edgeq.atomic import write_text

    write_text(Path(target), json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- build
@cli.command()
@click.argument("recipe", required=False)
@click.option("--model", help="Build this model (folder, pkg:<module> or hub id) with a starter recipe, no RECIPE.")
@click.option(
    "--device",
    help="With --model: the target device (default: this host's CPU profile). With a RECIPE: "
    "build for this device instead of the recipe's targets (a cross-build).",
)
@click.option("--data", help="With --model: calibration and validation data (default: edgeq's samples).")
@click.option("-o", "--output", help="Build folder. Default: build/<recipe name>.")
@click.option("--force", is_flag=True, help="Rebuild every stage, ignoring the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def build(
    recipe: str | None,
    model: str | None,
    device: str | None,
    data: str | None,
    output: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Run RECIPE (or --model with --device): export, quantize, validate on every target, write the build folder,
    report.json/.md/.html, and end with a summary."""
    from edgeq import api
    from edgeq.summary import print_summary

    if (recipe is None) == (model is None):
        raise click.UsageError("give a RECIPE, or --model (with --device) to build without one")
    if recipe is not None and data:
        raise click.UsageError("--data goes with --model; a recipe names its own data")
    result = (
        api.build(recipe, output, force, [device] if device else None)
        if recipe
        else api.build_model(model, device, output, data, force)
    )
    if as_json:
        _echo_json(result.report)
    else:
        print_summary(result.report, result.out_dir)
        if model:
            click.echo(f"recipe used: {result.out_dir / 'recipe.yaml'}")
    if result.exit_code == EXIT_BELOW_THRESHOLDS:
        failures = [
            f"{v['artifact']} on {v['device']}: {'; '.join(v['failures'])}"
            for v in result.report["validations"]
            if v["artifact"] == result.report["final_artifact"] and v["failures"]
        ]
        click.echo(f"Below thresholds: built, but {' | '.join(failures)}", err=True)
        sys.exit(EXIT_BELOW_THRESHOLDS)


@cli.command()
@click.argument("model")
@click.option("--device", help="Target device id. Default: this host's CPU profile.")
@click.option("--data", help="Calibration and validation data (default: edgeq's samples for the task).")
@click.option("-o", "--output", help="Write the recipe here (default: stdout).")
def init(model: str, device: str | None, data: str | None, output: str | None) -> None:
    """Write a commented starter recipe for MODEL on a device: task detected, the device's rules applied."""
    from edgeq import api

    text = api.init_recipe(model, device, data)
    if output is None:
        click.echo(text, nl=False)
        return
    from edgeq.atomic import write_text

    if Path(output).exists():
        raise click.UsageError(f"'{output}' exists; choose another path (edgeq init never overwrites)")
    write_text(Path(output), text)
    click.echo(f"wrote {output}: edit the data paths, then `edgeq build {output}`")


@cli.command()
@click.argument("build_dir")
def report(build_dir: str) -> None:
    """Render BUILD_DIR's report.md and report.html again from its report.json."""
    from edgeq import api

    for path in api.rerender_report(build_dir):
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("builds", nargs=-1, required=True)
@click.option("--output", help="Also write the Pareto plots (fidelity against size and p50, per target) to this .html.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(builds: tuple[str, ...], output: str | None, as_json: bool) -> None:
    """Build folders side by side: per target, artifact, verdict, fidelity, size and latency; with --output, the
    Pareto plots of every validated artifact of every build."""
    from edgeq import api
    from edgeq.summary import print_comparison

    found = api.compare_builds(*builds)
    if output:
        api.write_comparison_html(found, output)
    if as_json:
        _echo_json(found)
    else:
        print_comparison(list(builds), found["rows"])
        if output:
            print(f"plots: {output}")


@cli.command()
@click.argument("build_dir")
@click.option("--rebuild", is_flag=True, help="Also rebuild into a scratch folder (no cache) and compare the bytes.")
@click.option(
    "--allow-new-versions",
    is_flag=True,
    help="Say changed edgeq/tool versions but judge only hashes, metrics and thresholds (a dependency bump's CI job).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verification as JSON.")
def verify(build_dir: str, rebuild: bool, allow_new_versions: bool, as_json: bool) -> None:
    """Does BUILD_DIR still hold? Versions and hashes against its manifest.json, its final artifacts validated again
    on their targets (metrics within the recipe's verify.tolerance, thresholds still met). Exit 0: nothing moved;
    1: one Error line naming what moved."""
    from edgeq import api
    from edgeq.errors import EdgeqError
    from edgeq.verify import moved_line

    result = api.verify(build_dir, rebuild, allow_new_versions)
    if as_json:
        _echo_json(result)
    else:
        click.echo(verification_text(result))
    if not result["holds"]:
        raise EdgeqError(moved_line(result))


def verification_text(result: dict) -> str:
    lines = [*result["notes"]]
    for v in result["validations"]:
        lines.append(f"validated {v['artifact']} on {v['device']} ({v['mode']}): {'pass' if v['passed'] else 'FAIL'}")
    for c in result["changes"]:
        mark = "moved" if c["moves"] else "said "
        lines.append(f"  {mark} {c['kind']:<11} {c['what']}: {c['recorded']} → {c['now']}")
    if result["rebuild"]:
        r = result["rebuild"]
        lines.append(
            f"rebuild: identical {', '.join(r['identical']) or 'none'}; differing {', '.join(r['differing']) or 'none'}"
        )
    if result["holds"]:
        lines.append(f"{result['build']} holds: nothing moved beyond tolerance")
    return "\n".join(lines)


@cli.command()
@click.argument("sweep_file")
@click.option("--address", help="Join this Ray cluster (host:port). Default: start a local Ray.")
@click.option("-o", "--output", help="Sweep folder. Default: build/sweeps/<sweep name>.")
@click.option("--cell-timeout", type=click.FloatRange(min=1), help="Seconds a cell's build may take.")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json to stdout.")
def sweep(sweep_file: str, address: str | None, output: str | None, cell_timeout: float | None, as_json: bool) -> None:
    """Run SWEEP_FILE: recipes × target devices × a grid of overrides, each cell one build, as Ray tasks."""
    from edgeq.errors import EdgeqError as _Error

    try:
        import ray  # noqa: F401

        from edgeq.sweep_ray import run_sweep
    except ImportError:
        raise _Error("edgeq sweep needs Ray, which is not installed", "pip install 'edgeq[ray]'") from None
    from edgeq.sweep import print_table

    result = run_sweep(sweep_file, output, address, cell_timeout)
    if as_json:
        _echo_json(result)
    else:
        print_table(result["cells"])
    if any(row["status"] != "passed" for row in result["cells"]):
        sys.exit(EXIT_BELOW_THRESHOLDS if all(r["status"] in ("passed", "failed") for r in result["cells"]) else 1)


# --------------------------------------------------------------------------------------------- export
@cli.command()
@click.argument("source")
@click.option("-o", "--output", required=True, help="Folder for model.onnx, config.json and tokenizer files.")
@click.option("--task", type=TASK_CHOICES, help="Default: detected from the model's config.json architectures.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), help="Fix the batch dimension (static shapes).")
@click.option("--sequence-length", type=click.IntRange(min=1), help="Fix the sequence dimension.")
@click.option("--trust-remote-code", is_flag=True, help="Let the model folder's own code run.")
def export(source, output, task, opset, batch_size, sequence_length, trust_remote_code) -> None:
    """Export SOURCE (a model folder, pkg:<module> or a hub id) to ONNX."""
    from edgeq import api

    path = api.export(source, output, task, opset, batch_size, sequence_length, trust_remote_code)
    click.echo(f"exported: {path}")


# ------------------------------------------------------------------------------------------- quantize
@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, help="Folder for the quantized model.onnx.")
@click.option("--mode", type=click.Choice(["dynamic", "static"]), default="dynamic", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), help="Static only. Default qdq.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True)
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True)
@click.option("--activation-type", type=click.Choice(["uint8", "int8", "uint16", "int16"]), help="Static only.")
@click.option("--op-types", help="Comma-separated op types to quantize, e.g. MatMul,Gather.")
@click.option("--exclude", "exclude", multiple=True, help="Node name to keep in FP32 (repeatable).")
@click.option(
    "--calibration", type=click.Path(path_type=Path), help="Calibration data (.txt/.jsonl/.csv, or an image folder)."
)
@click.option("--field", help="JSON key or CSV column of the calibration texts.")
@click.option("--task", type=TASK_CHOICES, help="How to read the calibration data. Default: from config.json.")
@click.option("--samples", type=click.IntRange(min=1), default=128, show_default=True)
@click.option(
    "--sequence-length",
    type=click.IntRange(min=1),
    help="Tokens per text. Default: 128, or the model's max_position_embeddings when shorter.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option(
    "--tokenizer", type=click.Path(path_type=Path), help="Folder with tokenizer.json. Default: MODEL's folder."
)
@click.option("--device", default=None, help="Device whose rules apply. Default: this host's CPU profile.")
def quantize(
    model,
    output,
    mode,
    fmt,
    per_channel,
    weight_type,
    activation_type,
    op_types,
    exclude,
    calibration,
    field,
    task,
    samples,
    sequence_length,
    batch_size,
    method,
    tokenizer,
    device,
) -> None:
    """Quantize any ONNX MODEL (static mode needs --calibration)."""
    from edgeq import api
    from edgeq.recipe.schema import CalibrationConfig, QuantizationConfig

    if mode == "static" and not calibration:
        raise EdgeqError("--mode static needs --calibration FILE", "Give texts to measure activation ranges on")
    data = _data_source(calibration, field, "--calibration") if calibration else None
    calib = (
        _build(
            CalibrationConfig,
            data=data,
            samples=samples,
            batch_size=batch_size,
            method=method,
            sequence_length=sequence_length,
        )
        if data
        else None
    )
    config = _build(
        QuantizationConfig,
        mode=mode,
        format=fmt,
        per_channel=per_channel,
        weight_type=weight_type,
        activation_type=activation_type,
        calibration=calib,
        nodes_to_exclude=list(exclude),
        op_types=[t.strip() for t in op_types.split(",") if t.strip()] if op_types else None,
    )
    path = api.quantize(model, output, config, tokenizer, device, task)
    click.echo(f"quantized: {path}")


# ------------------------------------------------------------------------------------------- validate
@cli.command()
@click.argument("model")
@click.option("--reference", required=True, help="The FP32 ONNX model to compare against.")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Validation data (.txt/.jsonl/.csv, or an image folder).",
)
@click.option("--field", help="JSON key or CSV column of the texts (token classification: of the words).")
@click.option("--label-field", help="Key or column of the labels: the report then gives accuracy/F1/exact match.")
@click.option("--question-field", help="Question answering: key or column of the question.")
@click.option("--context-field", help="Question answering: key or column of the context.")
@click.option("--device", default=None, help="Device id. Default: this host's CPU profile.")
@click.option("--task", type=TASK_CHOICES, help="Default: detected from the reference folder's config.json.")
@click.option("--samples", type=click.IntRange(min=1), help="Use the first N samples.")
@click.option(
    "--sequence-length",
    type=click.IntRange(min=1),
    help="Tokens per text. Default: 128, or the model's max_position_embeddings when shorter.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--min-cosine-mean", type=float, default=0.99, show_default=True)
@click.option("--min-cosine-min", type=float)
@click.option("--tokenizer", type=click.Path(path_type=Path), help="Folder with tokenizer.json.")
@click.option(
    "--follow-ups",
    type=click.IntRange(min=1),
    help="A language model: greedy continuations on at most N samples (on the HTP emulator each takes minutes). "
    "Default: the task's 16.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the validation entry as JSON.")
def validate(
    model,
    reference,
    data_path,
    field,
    label_field,
    question_field,
    context_field,
    device,
    task,
    samples,
    sequence_length,
    batch_size,
    min_cosine_mean,
    min_cosine_min,
    tokenizer,
    follow_ups,
    as_json,
) -> None:
    """Compare MODEL with REFERENCE on DEVICE; exit 3 when below the thresholds."""
    from edgeq import api
    from edgeq.recipe.schema import Thresholds

    limits = _build(Thresholds, cosine_mean=min_cosine_mean, cosine_min=min_cosine_min)
    data = _data_source(
        data_path, field, "--data", label_field=label_field, question_field=question_field, context_field=context_field
    )
    result = api.validate(
        model, reference, data, device, task, samples, sequence_length, batch_size, limits, tokenizer, follow_ups
    )
    if as_json:
        _echo_json(result)
    else:
        from edgeq.report import validation_table

        click.echo(validation_table([result]))
    if not result["passed"]:
        click.echo(f"Below thresholds: {'; '.join(result['failures'])}", err=True)
        sys.exit(EXIT_BELOW_THRESHOLDS)


# -------------------------------------------------------------------------------------------- profile
@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--device", default=None, help="Device id. Default: this host's CPU profile.")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True, help="At least this many runs.")
@click.option(
    "--min-seconds", type=click.FloatRange(min=0), default=2.0, show_default=True, help="And at least this long."
)
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads. Default: the device profile's.")
@click.option("--standard", is_flag=True, help="MLPerf Mobile's rule: at least 1024 runs and 60 s.")
@click.option("--inputs", type=click.Path(path_type=Path), help=".npz with one array per model input.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--sequence-length",
    type=click.IntRange(min=1),
    help="Tokens per text. Default: 128, or the model's max_position_embeddings when shorter.",
)
@click.option("--host", help="A remote device: ssh://user@host:port (key auth, strict host keys).")
@click.option("--ssh-key", help="Private key for --host.")
@click.option("--known-hosts", help="known_hosts file holding the device's host key.")
@click.option("--remote-python", help="Python on the device (needs numpy and onnxruntime). Default python3.")
@click.option("--timeout", type=click.FloatRange(min=10), default=900, show_default=True, help="Seconds for the run.")
@click.option(
    "--new-tokens",
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="Language models: tokens generated per run (the prompt is --sequence-length tokens).",
)
@click.option("--json", "json_file", help="Write the profile JSON to this file ('-' for stdout).")
def profile(
    models,
    device,
    runs,
    min_seconds,
    warmup,
    threads,
    standard,
    inputs,
    batch_size,
    sequence_length,
    host,
    ssh_key,
    known_hosts,
    remote_python,
    timeout,
    new_tokens,
    json_file,
) -> None:
    """Measure MODELS on DEVICE: load, first run, latency percentiles, memory, per-op time, placement.
    Several models run interleaved and are compared with the first."""
    from edgeq import api
    from edgeq.profile import STANDARD

    if standard:
        runs, min_seconds = max(runs, STANDARD["runs"]), max(min_seconds, STANDARD["min_seconds"])
    result = api.profile(
        list(models),
        device,
        runs,
        min_seconds,
        warmup,
        threads,
        batch_size,
        sequence_length,
        inputs,
        host,
        ssh_key,
        known_hosts,
        remote_python,
        timeout,
        new_tokens,
    )
    if json_file:
        _write_json(result, json_file)
        if json_file == "-":
            return
    for one in result.get("profiles", [result]):
        _print_profile(one)
    for pair in result.get("comparison", []):
        click.echo(
            f"{pair['model']} vs {pair['against']}: p50 x{pair['p50_ratio']:.3f}, mean x{pair['mean_ratio']:.3f}, "
            f"min x{pair['min_ratio']:.3f} (interleaved)"
        )


def _print_profile(result: dict) -> None:
    lat, env = result["latency_ms"], result["environment"]
    where = f"{result['transport']}{' ' + result['host'] if 'host' in result else ''}"
    click.echo(
        f"{result['model']} on {result['device']} ({result['mode']} via {where}, {result['provider']}, "
        f"{env['machine']}, {env['cpu']}, onnxruntime {env['onnxruntime']}, {env['threads']} threads)"
    )
    click.echo(
        f"  latency ms  min {lat['min']:.3f}  p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}"
        f"  max {lat['max']:.3f}  mean {lat['mean']:.3f}  ({result['runs']} runs, {result['seconds']:.1f} s)"
    )
    click.echo(
        f"  throughput {result['throughput_per_s']:.1f}/s  load {result['load_ms']:.0f} ms  first run "
        f"{result['first_run_ms']:.1f} ms  warm-up {result['warmup']} runs  peak RSS "
        f"{f'{peak:.0f} MB' if (peak := result['peak_rss_mb']) is not None else 'not measured'}"
    )
    if "ttft_ms" in result:
        click.echo(
            f"  generation: {result['prompt_tokens']}-token prompt, {result['generated_tokens']} tokens: time to "
            f"first token p50 {result['ttft_ms']['p50']:.2f} ms, decode {result['decode_tokens_per_s']:.1f} "
            "tokens/s (latency above: per decoded token)"
        )
    click.echo(
        "  placement: "
        + ", ".join(f"{ep} {n}" for ep, n in result["placement"].items())
        + f"  (fallbacks {result['fallback_nodes']})"
    )
    for op in result["ops"][:6]:
        click.echo(f"    {op['op_type']:<28} {op['ms']:8.3f} ms  {op['share']:6.1%}")
    if result.get("note"):
        click.echo(f"  note: {result['note']}")


# ----------------------------------------------------------------------------------------------- plan
@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--device", default=None, help="Device id. Default: this host's CPU profile.")
@click.option("--context", type=click.IntRange(min=1), default=2048, show_default=True, help="Context length (tokens).")
@click.option(
    "--memory-mb", type=click.IntRange(min=1), help="Memory to plan for. Default: the device profile's memory_mb."
)
@click.option(
    "--kv-dtype",
    type=click.Choice(["fp32", "fp16", "int8"]),
    help="The KV cache's precision. Default: the device runtime's (kv_cache_dtype).",
)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False),
    help="Estimate the build cost of this recipe. Default: the recipe `edgeq init` would write.",
)
@click.option("--json", "json_file", help="Write the plan JSON to this file ('-' for stdout).")
def plan(models, device, context, memory_mb, kv_dtype, recipe, json_file) -> None:
    """What a language model (a folder with config.json, or the file; no weights needed) needs per precision on
    DEVICE at a context length, what fits, and the longest context each precision leaves room for. Two or more
    models: ranked at equal memory."""
    from edgeq import api

    result = api.plan(list(models), device, context, memory_mb, kv_dtype, recipe)
    if json_file:
        _write_json(result, json_file)
        if json_file == "-":
            return
    plans = result["plans"] if "plans" in result else [result]
    for entry in plans:
        m, d = entry["model"], entry["device"]
        click.echo(
            f"{m['config']}: {m['architecture']}, {m['parameters'] / 1e9:.3f} B parameters, {m['layers']} layers, "
            f"{m['kv_heads']} KV heads x {m['head_dim']}; {d['id']} with {d['memory_bytes'] / 2**30:.2f} GiB, "
            f"context {entry['context']}"
        )
        if m.get("sliding_window"):
            click.echo(
                f"  sliding window: {m['sliding_window']['window']} tokens on {m['sliding_window']['layers']} of "
                f"{m['layers']} layers (a windowed runtime such as onnxruntime-genai keeps only the window)"
            )
        for o in entry["options"]:
            packed = f" + packed {o['prepacked_bytes'] / 2**30:.2f} GiB" if o["prepacked_bytes"] else ""
            windowed = o.get("windowed_runtime")
            click.echo(
                f"  {o['precision']:<5} runtime {o['runtime_bytes'] / 2**30:.2f} GiB + weights "
                f"{o['weights_bytes'] / 2**30:7.2f} GiB{packed} + KV ({o['kv_dtype']}) "
                f"{o['kv_cache_bytes'] / 2**30:6.2f} GiB + workspace {o['workspace_bytes'] / 2**30:5.2f} GiB = "
                f"{o['total_bytes'] / 2**30:7.2f} GiB  {'fits' if o['fits'] else 'does not fit'}; "
                f"longest context that fits: {o['max_context'] or 'none'}"
                f"{' (the model limit)' if o['max_context_limited_by'] == 'model' else ''}"
                + (
                    f" (windowed: {windowed['total_bytes'] / 2**30:.2f} GiB, {windowed['max_context'] or 'none'})"
                    if windowed
                    else ""
                )
            )
        click.echo(f"  largest that fits: {entry['largest_fitting'] or 'none'}")
        cost = entry["build_cost"]
        click.echo(
            f"  building it here ({cost['recipe']}): about {cost['seconds'] / 60:.0f} min, peak "
            f"{cost['peak_rss_bytes'] / 2**30:.1f} GiB, {cost['disk_bytes'] / 2**30:.1f} GiB on disk "
            f"(estimated before any download, fitted on {cost['basis']['machine']}"
            + (
                "; this model is larger than any build the fit saw: an extrapolation)"
                if cost["basis"]["extrapolated"]
                else ")"
            )
        )
    if "comparison" in result:
        click.echo(
            "at equal memory, ranked: "
            + "; ".join(
                f"{r['rank']}. {r['model']} at {r['precision'] or 'nothing'}" for r in result["comparison"]["models"]
            )
        )


# -------------------------------------------------------------------------------------------- generate
@cli.command()
@click.argument("model_or_build")
@click.argument("prompt")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--chat", is_flag=True, help="Send PROMPT as a user message through the model's chat template.")
@click.option(
    "--engine",
    type=click.Choice(["auto", "genai", "onnxruntime"]),
    default="auto",
    show_default=True,
    help="auto: onnxruntime-genai when installed and the folder has genai_config.json.",
)
@click.option(
    "--json", "json_file", help="Write the result (tokens, tokens_per_s, ttft_ms, peak_rss_mb) here ('-': stdout)."
)
def generate(model_or_build, prompt, max_tokens, chat, engine, json_file) -> None:
    """Greedy text from a language model (a build folder, its final/, or a model folder), streamed as it comes,
    then the measured tokens/s, time to first token and peak RSS."""
    from edgeq.generate import generate as run

    streaming = json_file != "-"
    result = run(
        model_or_build, prompt, max_tokens, chat, (lambda t: click.echo(t, nl=False)) if streaming else None, engine
    )
    if streaming:
        click.echo("")
        click.echo(
            f"[{result['engine']}, {result['mode']}] {result['generated_tokens']} tokens, "
            f"{result['tokens_per_s'] or 0:.1f} tokens/s, first token {result['ttft_ms']:.0f} ms "
            f"(prompt {result['prompt_tokens']} tokens), peak RSS {result['peak_rss_mb']:.0f} MB",
            err=True,
        )
    if json_file:
        _write_json(result, json_file)


# -------------------------------------------------------------------------------------------- diverge
@cli.command()
@click.argument("model")
@click.option("--reference", required=True, help="The FP32 ONNX model MODEL was quantized from.")
@click.option("--device", default=None, help="Device id. Default: this host's CPU profile.")
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    help="Inputs (.txt/.jsonl/.csv, or an image folder). Default: the task's example input.",
)
@click.option("--field", help="JSON key or CSV column of the texts.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True, help="Use the first N samples.")
@click.option(
    "--threshold-db",
    type=float,
    help="An op departs when its own SQNR against the simulation (on the device's inputs) is below this. Default: 30 dB.",
)
@click.option("--task", type=TASK_CHOICES, help="Default: detected from the model folder's config.json.")
@click.option("--tokenizer", type=click.Path(path_type=Path), help="Folder with tokenizer.json.")
@click.option("--json", "json_file", help="Also write the report as JSON to this file ('-': stdout only).")
def diverge(model, reference, device, data_path, field, samples, threshold_db, task, tokenizer, json_file) -> None:
    """Where a QDQ MODEL on DEVICE departs from its simulation on this host's CPU EP: per quantized tensor, in
    graph order, the SQNR of the device against the simulation and against REFERENCE; the first tensor below the
    threshold is named with its op and block."""
    from edgeq import api

    data = _data_source(data_path, field, "--data") if data_path else None
    result = api.diverge(model, reference, device, data, samples, threshold_db, task, tokenizer)
    if json_file == "-":
        _echo_json(result)
        return
    click.echo(divergence_text(result))
    if json_file:
        _write_json(result, json_file)


def divergence_text(result: dict) -> str:
    """The first departure (or none), and the tensors furthest from the simulation."""
    tensors = result["tensors"]
    lines = [
        f"{result['device']} ({result['mode']}, {result['provider']}) against the CPU EP's simulation: "
        f"{len(tensors)} quantized tensors, {result['samples']} input(s), threshold {result['threshold_db']:g} dB"
    ]
    first = result["first_departure"]
    if first is None:
        lines.append("No departure: every tensor is within the threshold of the simulation.")
    else:
        lines.append(
            f"First departure: {first['name']} ({first['op']}, block {first['block']}, {first['type']}): its op alone "
            f"{first['local_sqnr_db']} dB against the simulation; by there {first['sqnr_vs_simulation_db']} dB against "
            f"the simulation and {first['sqnr_vs_fp32_db']} dB against FP32; {result['departures']} op(s) below the "
            "threshold in all"
        )
    exact = sum(t["sqnr_vs_simulation_db"] is None for t in tensors)
    ranked = sorted(
        (t for t in tensors if t["sqnr_vs_simulation_db"] is not None), key=lambda t: t["sqnr_vs_simulation_db"]
    )
    lines.append(f"{exact} tensor(s) identical to the simulation; the furthest from it:")
    for t in ranked[:8]:
        lines.append(
            f"  {t['sqnr_vs_simulation_db']:>8.2f} dB  {t['op']:<18} {t['type']:<7} {t['block']:<32} {t['name']}"
        )
    if result.get("note"):
        lines.append(result["note"])
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("model")
@click.option("--device", help="Pre-flight: list what will not run on this device (exit 3 if anything).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(model: str, device: str | None, as_json: bool) -> None:
    """Inputs, outputs, opsets, op histogram, size and precision summary of an ONNX MODEL."""
    from edgeq import api

    if device:
        _preflight(api.preflight(model, device), as_json)
        return
    info = api.inspect(model)
    if as_json:
        _echo_json(info)
        return
    click.echo(
        f"{info['path']}: {info['size_bytes'] / 1e6:.2f} MB, {info['nodes']} nodes, "
        f"{info['parameters']:,} parameters, IR {info['ir_version']}, opsets {info['opsets']}"
    )
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            click.echo(f"  {kind[:-1]:<6} {v['name']:<24} {v['type']:<8} {v['shape']}")
    click.echo("precision: " + ", ".join(f"{k} {v}" for k, v in info["precision"].items()))
    click.echo("ops: " + ", ".join(f"{k} {v}" for k, v in info["op_types"].items()))


def _preflight(result: dict, as_json: bool) -> None:
    if as_json:
        _echo_json(result)
    else:
        where = (
            "installed here"
            if result["provider_available_here"]
            else (
                f"not installed here (stand-in: {result['stand_in']})" if result["stand_in"] else "not installed here"
            )
        )
        click.echo(f"{result['model']} on {result['device']} ({result['provider']}, {where})")
        for problem in result["problems"]:
            click.echo(f"  problem: {problem}")
        if "compliance" in result:
            c = result["compliance"]
            click.echo(
                f"  DPU nodes {c['dpu_nodes']}; left to the CPU: "
                + ", ".join(f"{op} {n}" for op, n in c["cpu_nodes"].items())
            )
        if "coverage" in result:
            c = result["coverage"]
            click.echo(
                f"  {c['ep']} estimate: {c['supported_nodes']}/{c['nodes']} nodes in {c['partitions']} "
                f"partitions; unsupported: {', '.join(c['unsupported_ops']) or 'none'}"
            )
        click.echo(
            "  ok: nothing found that the device will refuse"
            if result["ok"]
            else f"  {len(result['problems'])} problem(s)"
        )
    if not result["ok"]:
        sys.exit(EXIT_BELOW_THRESHOLDS)


# -------------------------------------------------------------------------------------------- devices
@cli.group()
def devices() -> None:
    """Device profiles (devices/*.yaml and $EDGEQ_DEVICES_PATH)."""


@devices.command("list")
@click.option("--json", "as_json", is_flag=True)
def devices_list(as_json: bool) -> None:
    """List the known devices."""
    from edgeq import api

    found = api.devices()
    if as_json:
        _echo_json([d.model_dump(mode="json") for d in found])
        return
    for d in found:
        click.echo(f"{d.id:<20} {d.device_class:<11} {d.arch:<8} {d.execution_provider.name:<26} {d.description}")


@devices.command("show")
@click.argument("device_id")
@click.option("--json", "as_json", is_flag=True)
def devices_show(device_id: str, as_json: bool) -> None:
    """Show one device profile."""
    import yaml

    from edgeq import api

    data = api.device(device_id).model_dump(mode="json")
    click.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False).rstrip())


@devices.command("setup")
@click.argument("device_id")
def devices_setup(device_id: str) -> None:
    """Make the local stand-in of a device (for raspberry-pi-5: an arm64 root file system run under qemu)."""
    from edgeq import api

    info = api.setup_device(device_id)
    click.echo(
        f"{device_id}: stand-in ready ({info['machine']}, Python {info['python']}, onnxruntime "
        f"{info['onnxruntime']}, numpy {info['numpy']})"
    )


# -------------------------------------------------------------------------------------------- recipes
@cli.group()
def recipes() -> None:
    """Recipes."""


@recipes.command("list")
@click.argument("folder", required=False)
@click.option("--json", "as_json", is_flag=True)
def recipes_list(folder: str | None, as_json: bool) -> None:
    """List recipes in FOLDER (default ./recipes, else the bundled ones)."""
    from edgeq import api

    found = api.recipes(folder)
    if as_json:
        _echo_json(found)
        return
    for r in found:
        click.echo(f"{r['name']:<24} {','.join(r['targets']):<24} {r['file']}  {r['description']}")


# ---------------------------------------------------------------------------------------------- helpers
def _data_source(path: Path, field: str | None, option: str, **fields):
    from edgeq.recipe.schema import DataSource

    return _build(DataSource, path=path, field=field, option=option, **fields)


def _build(model_cls, option: str | None = None, **values):
    """Build a schema object from CLI values; a schema error becomes an EdgeqError naming the option."""
    from pydantic import ValidationError

    from edgeq.errors import EdgeqError

    try:
        return model_cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        message = err["msg"].removeprefix("Value error, ")
        where = option or ("--" + "-".join(str(p) for p in err["loc"]).replace("_", "-") if err["loc"] else "")
        raise EdgeqError(f"{where}: {message}" if where else message) from None


if __name__ == "__main__":
    main()
