"""report.json (the contract in DESIGN.md) and report.md (the same, as tables a person reads)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from edgeq import __version__
from edgeq.artifact import describe
from edgeq.atomic import write_text
from edgeq.buildlog import LOG_FILE

RESOLVED_RECIPE = "recipe.resolved.yaml"


def _gguf_source(model_dir) -> dict | None:
    """Where a model converted from a GGUF came from, its llama.cpp tensor types and the tokenizer check."""
    from edgeq.export.gguf import describe

    info = describe(model_dir)
    if info is None:
        return None
    return {
        "kind": "gguf",
        **{k: info[k] for k in ("source", "sha256", "architecture", "tensor_types", "tokenizer_check")},
        "note": "the FP32 reference is the dequantized GGUF: its weights already lie on the GGUF's grid, so "
        "fidelity is measured against the GGUF users have, not against the model as trained",
    }


def build_report(
    plan,
    stages,
    final_artifact: str,
    total: float,
    finals: dict[str, str] | None = None,
    served: dict[str, str] | None = None,
) -> dict:
    artifacts = [describe(s.folder / "model.onnx", s.folder.name, plan.out_dir) for s in stages if s.folder]
    reference_size = artifacts[0]["size_bytes"]
    for artifact in artifacts:
        artifact["size_ratio"] = round(artifact["size_bytes"] / reference_size, 4)
    validations = [v for s in stages for v in s.details.get("validations", [])]
    served = served or {d.id: final_artifact for d in plan.devices}
    final_checks = [v for v in validations if v["artifact"] == served.get(v["device"])]
    return {
        "edgeq_version": __version__,
        "recipe": plan.recipe.model_dump(mode="json"),
        "recipe_file": str(plan.recipe_path),
        "task": plan.task.name,
        "task_reason": plan.task_reason,
        "compared_output": plan.task.compares,
        "default_sequence_length": {
            "tokens": plan.recipe.default_sequence_length,
            "from": plan.recipe.default_sequence_length_origin,
        },
        **({"model_source": source} if (source := _gguf_source(plan.model_dir)) else {}),
        "stages": [
            {k: v for k, v in s.record().items() if k not in ("validations", "mixed_precision", "profiles")}
            for s in stages
        ],
        "artifacts": artifacts,
        "validations": validations,
        "final": "final/model.onnx",
        **({"final_ort": "final/model.ort"} if (plan.out_dir / "final" / "model.ort").is_file() else {}),
        **({"mixed_precision": mp} if (mp := _mixed_precision(stages)) else {}),
        **({"kv_cache": kv} if (kv := _kv_cache(stages, validations, plan.task.metric_names)) else {}),
        **({"profiles": profiles} if (profiles := [p for s in stages for p in s.details.get("profiles", [])]) else {}),
        "final_artifact": final_artifact,
        "finals": {device: {"artifact": served[device], "path": path} for device, path in (finals or {}).items()},
        "passed": all(v["passed"] for v in final_checks),
        "total_seconds": round(total, 2),
        "log_file": LOG_FILE,
        "peak_rss_mb": _build_peak_mb(stages),
        **(
            {"build_cost_estimate": {k: plan.cost_estimate[k] for k in ("peak_rss_bytes", "disk_bytes", "seconds")}}
            if plan.cost_estimate
            else {}
        ),
    }


def _build_peak_mb(stages) -> float | None:
    """The build's peak resident memory: this process's high-water mark, or a child's (the export) when higher."""
    from edgeq.headroom import peak_rss_mb

    children = [s.details.get("child_peak_rss_mb") or 0 for s in stages if not s.cached]
    return max([peak_rss_mb() or 0, *children]) or None


def _mixed_precision(stages) -> dict | None:
    return next((s.details["mixed_precision"] for s in stages if "mixed_precision" in s.details), None)


def _kv_cache(stages, validations: list[dict], metric_names) -> dict | None:
    """The INT8 KV cache stage's details, and what it cost on each device: its model's metrics minus those of the
    same model with an FP32 cache (both validated on the same texts)."""
    kv = next((dict(s.details["kv_cache"]) for s in stages if "kv_cache" in s.details), None)
    if kv is None:
        return None
    by = {(v["device"], v["artifact"]): v["metrics"] for v in validations}
    kv["cost"] = [
        {
            "device": device,
            **{
                m: round(after[m] - before[m], 6)
                for m in metric_names
                if isinstance(after.get(m), (int, float)) and isinstance(before.get(m), (int, float))
            },
        }
        for (device, artifact), after in by.items()
        if artifact == "kv8"
        if (before := by.get((device, kv["from_artifact"])))
    ]
    kv["cost_is"] = "the INT8-cache model's metric minus the same model's with an FP32 cache (against FP32)"
    return kv


def render_html(report: dict) -> str:
    from edgeq.report_html import render_html as html

    return html(report)


def write_report(out_dir: Path, recipe, report: dict) -> None:
    from edgeq.report_contract import check

    check(report)  # the typed contract (docs/report.md): a report that breaks it is edgeq's bug, said before writing
    write_text(out_dir / RESOLVED_RECIPE, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    write_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    write_text(out_dir / "report.md", render_markdown(report))
    write_text(out_dir / "report.html", render_html(report))


def _source_lines(source: dict | None) -> list[str]:
    if not source:
        return []
    types = ", ".join(f"{count} {kind}" for kind, count in source["tensor_types"].items())
    check = source["tokenizer_check"]
    said = "agrees with the GGUF's own" if check["agrees"] else f"**disagrees** with the GGUF's own: {check['detail']}"
    return [
        f"Converted from GGUF `{source['source']}` ({source['architecture']}; llama.cpp tensor types: {types}); "
        f"the converted tokenizer {said}. {source['note'][0].upper()}{source['note'][1:]}.",
        "",
    ]


def _length_lines(default: dict | None) -> list[str]:
    if not default:
        return []
    return [f"Sequence length where the recipe sets none: {default['tokens']} tokens, from {default['from']}.", ""]


def render_markdown(report: dict) -> str:
    recipe = report["recipe"]
    lines = [
        f"# edgeq report: {recipe['name']}",
        "",
        f"Model `{recipe['model']['source']}` ({report.get('task', recipe['model']['task'])}), "
        f"final artifact **{report['final_artifact']}** → `{report['final']}`: "
        f"**{'PASSED' if report['passed'] else 'FAILED'}** ({report['total_seconds']:.1f} s in all"
        f"{f', peak RSS {peak:.0f} MB' if (peak := report.get('peak_rss_mb')) else ''}).",
        "",
        *_source_lines(report.get("model_source")),
        *_length_lines(report.get("default_sequence_length")),
        "## Stages",
        "",
        table(
            ["stage", "seconds", "cached"],
            [[s["name"], f"{s['seconds']:.2f}", "yes" if s["cached"] else "no"] for s in report["stages"]],
        ),
        "",
        "## Artifacts",
        "",
        table(
            ["artifact", "path", "size (MB)", "size vs fp32", "precision (nodes)"],
            [
                [
                    a["name"],
                    f"`{a['path']}`",
                    f"{a['size_bytes'] / 1e6:.2f}",
                    f"{a['size_ratio']:.1%}",
                    ", ".join(f"{k} {v}" for k, v in a["precision"].items()),
                ]
                for a in report["artifacts"]
            ],
        ),
        "",
        *_served_markdown(report),
        *_legalization_markdown(report),
        *_weight_rounding_markdown(report),
        "## Validations",
        "",
        "Every figure was measured by this build; `mode` says where: `on-host` (the device's own execution "
        "provider on this machine), `emulated` (a stand-in), `remote` (the real device).",
        "",
        validation_table(report["validations"]),
    ]
    task_rows = task_metric_rows(report["validations"])
    if task_rows:
        lines += [
            "",
            "## Task metrics",
            "",
            "Worst shape. Agreement metrics compare with FP32's predictions; with labelled data, the task metric "
            "of the FP32 model and of each candidate side by side, and the change.",
            "",
            table(["artifact", "device", "metric", "value", "FP32", "change"], task_rows),
        ]
    if any(len(v.get("shapes", [])) > 1 for v in report["validations"]):
        lines += [
            "",
            "## Per shape",
            "",
            "Each deployment shape measured on its own (`bB-sS`: batches of B texts padded to the longest, at "
            "most S tokens a text); the validations above show the worst case over shapes.",
            "",
            shape_table(report["validations"]),
        ]
    notes = sorted({f"- {v['device']} ({v['mode']}): {v['note']}" for v in report["validations"] if v.get("note")})
    if notes:
        lines += ["", "Where the figures come from:", "", *notes]
    coverage = [v for v in report["validations"] if v.get("coverage")]
    if coverage:
        lines += ["", "## Coverage estimates (not a run)", "", coverage_table(coverage)]
    failures = [
        f"- {v['artifact']} on {v['device']}: {'; '.join(v['failures'])}"
        for v in report["validations"]
        if v["failures"]
    ]
    if failures:
        lines += ["", "## Below thresholds", "", *failures]
    if "mixed_precision" in report:
        lines += ["", *mixed_precision_markdown(report["mixed_precision"])]
    if "kv_cache" in report:
        kv = report["kv_cache"]
        lines += [
            "",
            "## KV cache",
            "",
            f"INT8, {kv['quant_type']}, {kv['layers']} layers, scales from "
            f"{kv['calibration_batches']} calibration batches. What it cost ({kv['cost_is']}):",
            "",
        ]
        lines += [
            f"- {c['device']}: " + ", ".join(f"{m} {v:+.4g}" for m, v in c.items() if m != "device") for c in kv["cost"]
        ]
    if "profiles" in report:
        lines += ["", "## Profiles of the final model", "", profile_table(report["profiles"])]
        if decoding := [p for p in report["profiles"] if "decode_tokens_per_s" in p]:
            lines += ["", "Language model, batch 1 (latency above is one decoded token):", "", decode_table(decoding)]
    checks = [s for s in report["stages"] if "export_check" in s]
    if checks:
        c = checks[0]["export_check"]
        lines += [
            "",
            f"Export check against PyTorch on {c['samples']} texts: cosine min {c['cosine_min']:.6f}, "
            f"max abs error {c['max_abs_error']:.2e}.",
        ]
    return "\n".join(lines) + "\n"


def mixed_precision_markdown(mp: dict) -> list[str]:
    from edgeq.report_contract import MixedPrecision

    if MixedPrecision.model_validate(mp).kind == "activation-types":
        return activation_types_markdown(mp)
    counts = ", ".join(f"{k} {v}" for k, v in mp["precision_counts"].items())
    lines = [
        "## Mixed precision",
        "",
        f"Islands: {counts}; size {mp['size_ratio']:.1%} of FP32; {mp['proxy_passes']} proxy passes, "
        f"{mp['full_evaluations']} full evaluations, {mp['search_seconds']:.1f} s. Budget met: {mp['budget_met']} "
        f"({', '.join(f'{k}: {v}' for k, v in (mp.get('budget_status') or {}).items())}).",
        *[f"- {note}" for note in mp["notes"]],
        *_cpu_forms_lines(mp.get("cpu_forms")),
        "",
    ]
    judged = _budget_metrics(mp.get("budget") or {})
    sizes = {c["index"]: c["size_ratio"] for c in mp.get("configurations", [])}
    for e in mp.get("evaluations", []):
        m = e["metrics"]
        shown = ", ".join(f"{name.replace('_', ' ')} {m[name]:.4g}" for name in judged if name in m)
        size = f", size {sizes[e['configuration']]:.1%}" if e["configuration"] in sizes else ""
        timed = "".join(
            f", {label} {m[key]:.2f}"
            for key, label in (("latency_ratio", "latency ratio"), ("slowdown", "slowdown"))
            if m.get(key) is not None
        )
        lines.append(
            f"- configuration {e['configuration']}: {shown}{size}{timed} → "
            f"{'meets' if e['passed'] else 'misses'} the budget"
        )
    rows = [
        [
            i["name"],
            f"{i['parameters']:,}",
            _fmt(i.get("output_sqnr_db"), ".1f"),
            " ".join(f"{k} {v:+.5f}" for k, v in i.get("gain", {}).items()),
            f"**{i['precision']}**",
            i["reason"],
        ]
        for i in mp["islands"]
    ]
    return [*lines, "", table(["island", "params", "output SQNR dB", "proxy gain", "precision", "reason"], rows)]


def _cpu_forms_lines(forms: dict | None) -> list[str]:
    if not forms:
        return []
    split = forms.get("skip_layer_norms_split", 0), forms.get("bias_gelus_split", 0), forms.get("biases_into_gemm", 0)
    return [
        f"- Written in onnxruntime's fast CPU forms: {split[0]} SkipLayerNormalization as Sum + LayerNormalization, "
        f"{split[1]} BiasGelu as Gelu, {split[2]} biases inside the integer GEMM before them (onnxruntime 1.32's "
        "fused CPU kernels for these are scalar loops, 2-5x slower; `bench/cpu_kernels.py` measures them here)."
    ]


def activation_types_markdown(mp: dict) -> list[str]:
    counts = ", ".join(f"{k} {v}" for k, v in mp["precision_counts"].items())
    lines = [
        "## Mixed precision (activation types)",
        "",
        f"Blocks: {counts}; {mp['sixteen_bit_activation_share']:.0%} of activation tensors at 16 bits, "
        f"{mp['converts']} type converts; size {mp['size_ratio']:.1%} of FP32 (weights 8-bit either way); "
        f"{mp['proxy_passes']} proxy passes, {mp['full_evaluations']} full evaluations, {mp['search_seconds']:.1f} s. "
        f"Budget met: {mp['budget_met']}.",
        *[f"- {note}" for note in mp["notes"]],
        *_cpu_forms_lines(mp.get("cpu_forms")),
        "",
    ]
    judged = _budget_metrics(mp.get("budget") or {})
    for e in mp.get("evaluations", []):
        shown = ", ".join(
            f"{name.replace('_', ' ')} {e['metrics'][name]:.5f}" for name in judged if name in e["metrics"]
        )
        lines.append(
            f"- {e['configuration']} least sensitive blocks at 8 bits: {shown} → "
            f"{'meets' if e['passed'] else 'misses'} the budget"
        )
    rows = [
        [
            i["name"],
            str(i["tensors"]),
            _fmt(i["proxy_loss_at_8_bit"], "+.6f"),
            _fmt(i["rank"], "d"),
            f"**{i['precision']}**",
            i["reason"],
        ]
        for i in mp["islands"]
    ]
    return [*lines, "", table(["block", "activations", "proxy loss at 8 bits", "rank", "precision", "reason"], rows)]


def _served_markdown(report: dict) -> list[str]:
    finals = report.get("finals") or {}
    if len({f["path"] for f in finals.values()}) < 2:
        return []
    rows = [[device, f["artifact"], f"`{f['path']}`"] for device, f in finals.items()]
    return ["## One artifact per target", "", table(["device", "artifact", "path"], rows), ""]


def _weight_rounding_markdown(report: dict) -> list[str]:
    """Which MatMul weights went to 4 bits and why, and how GPTQ rounded the rest (the quantize stage's words)."""
    quantize = next((s for s in report["stages"] if s["name"] == "quantize"), {})
    lines = []
    if four := quantize.get("four_bit_weights"):
        lines.append(
            f"- **4-bit weights**: {len(four['matmuls'])} MatMuls ({four['reason']}): {four['codes']}, a scale per "
            f"{four['block_size']} input rows and column, {four['method']}; their summed output error on "
            f"{four['calibration_tokens']} calibration tokens is {_fmt(four['relative_output_error'], '.4f')} of their "
            f"output energy. `{'`, `'.join(four['matmuls'][:4])}`{' …' if len(four['matmuls']) > 4 else ''}"
        )
    if (rounded := quantize.get("weight_rounding")) and rounded.get("matmuls"):
        lines.append(
            f"- **GPTQ rounding**: {rounded['matmuls']} MatMuls at their quantizer's scales; output error "
            f"{rounded['output_error_vs_nearest']}× round to nearest's on {rounded['calibration_tokens']} tokens"
        )
    if lines and (search := four.get("search") if four else None):
        lines += ["", *_four_bit_search_markdown(search)]
    return ["## Weights", "", *lines, ""] if lines else []


def _four_bit_search_markdown(search: dict) -> list[str]:
    """quantization.four_bit_budget's measurements: every candidate in the order the search took them."""
    rows = [
        [
            c["rank"] + 1,
            f"`{c['matmul']}`",
            _fmt(c["loss"], ".5f"),
            f"{c['bytes_saved'] / 1e6:.2f}",
            "4-bit" if c["four_bit"] else "8-bit",
        ]
        for c in sorted(search["candidates"], key=lambda c: c["rank"])
    ]
    return [
        f"Budget {search['budget']} of the MatMuls' FP16 bytes (8-bit weights take {search['eight_bit_bytes_vs_fp16']}; "
        f"chosen: {search['bytes_vs_fp16']}). Each MatMul's {search['loss']} with its weight alone at 4 bits, on "
        f"{search['samples']} calibration samples, in order of least loss per byte saved:",
        "",
        table(["rank", "MatMul", search["loss"], "MB saved", "weights"], rows),
    ]


def _legalization_markdown(report: dict) -> list[str]:
    done = next((s["legalization"] for s in report["stages"] if "legalization" in s), None)
    if not done:
        return []
    rows = [
        [
            kind,
            f"{before['partitions']} → {done['coverage_after'][kind]['partitions']}",
            f"{before['share']:.1%} → {done['coverage_after'][kind]['share']:.1%}",
            ", ".join(o.split(":")[-1] for o in done["coverage_after"][kind]["unsupported_ops"]) or "—",
        ]
        for kind, before in done["coverage_before"].items()
    ]
    rewritten = ", ".join(f"{op} ×{n}" for op, n in done["rewritten"].items()) or "nothing"
    return [
        "## Legalization",
        "",
        f"Shapes folded at their fixed sizes, then rewritten into ops the EP has: {rewritten} (estimates from "
        "onnxruntime's mobile helpers, on the FP32 model before quantization).",
        "",
        table(["coverage", "partitions", "nodes supported", "still unsupported"], rows),
        "",
    ]


def _budget_metrics(budget: dict) -> list[str]:
    """The metrics a mixed-precision budget judges (cosine when it names none), for the evaluation lines."""
    named = [
        key.removeprefix("min_")
        for key in ("min_cosine_mean", "min_cosine_min", "min_nn_agreement")
        if budget.get(key) is not None
    ]
    named += [*(budget.get("floors") or {}), *(budget.get("ceilings") or {})]
    return named or ["cosine_mean", "cosine_min"]


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def validation_table(validations: list[dict]) -> str:
    rows = []
    for v in validations:
        m = v["metrics"]
        placement = ", ".join(f"{ep.removesuffix('ExecutionProvider')} {n}" for ep, n in v["placement"].items())
        rows.append(
            [
                v["artifact"],
                v["device"],
                v["mode"],
                f"{m['cosine_mean']:.4f}",
                f"{m['cosine_min']:.4f}",
                f"{m['max_abs_error']:.4f}",
                f"{m['sqnr_db']:.1f}" if m["sqnr_db"] is not None else "exact",
                f"{v['latency_ms']['p50']:.2f}",
                f"{v['latency_ms']['p90']:.2f}",
                _fmt(v["latency_ratio_to_reference"], ".2f"),
                placement,
                str(v["fallback_nodes"]),
                "pass" if v["passed"] else "FAIL",
            ]
        )
    header = [
        "artifact",
        "device",
        "mode",
        "cos mean",
        "cos min",
        "max abs err",
        "SQNR dB",
        "p50 ms",
        "p90 ms",
        "p50 vs fp32",
        "placement (nodes)",
        "fallbacks",
        "result",
    ]
    if any(len(v.get("shapes", [])) > 1 for v in validations):
        header[3:7] = [f"{h} (worst shape)" for h in header[3:7]]
        header[7:10] = [f"{h} ({validations[0]['shapes'][0]['shape']})" for h in header[7:10]]
    return table(header, rows)


def task_metric_rows(validations: list[dict]) -> list[list[str]]:
    from edgeq.validate.metrics import TASK_METRICS

    rows = []
    for v in validations:
        for name in TASK_METRICS:
            if v["metrics"].get(name) is not None:
                m = v["metrics"]
                rows.append(
                    [
                        v["artifact"],
                        v["device"],
                        name,
                        f"{m[name]:.4f}",
                        _fmt(m.get(f"{name}_reference"), ".4f"),
                        _fmt(m.get(f"{name}_delta"), "+.4f"),
                    ]
                )
    return rows


def shape_table(validations: list[dict]) -> str:
    rows = []
    for v in validations:
        for s in v.get("shapes", []):
            m = s["metrics"]
            rows.append(
                [
                    v["artifact"],
                    v["device"],
                    s["shape"],
                    str(s["samples"]),
                    _fmt(s.get("tokens_mean"), ".1f"),
                    f"{m['cosine_mean']:.4f}",
                    f"{m['cosine_min']:.4f}",
                    _fmt(m.get("nn_agreement"), ".3f"),
                    _fmt(m.get("top1_agreement"), ".3f"),
                    f"{s['latency_ms']['p50']:.2f}",
                    _fmt(s["latency_ratio_to_reference"], ".2f"),
                ]
            )
    return table(
        [
            "artifact",
            "device",
            "shape",
            "texts",
            "tokens/text",
            "cos mean",
            "cos min",
            "NN agreement",
            "top-1 agreement",
            "p50 ms",
            "p50 vs fp32",
        ],
        rows,
    )


def profile_table(profiles: list[dict]) -> str:
    rows = [
        [
            p["device"],
            f"{p['mode']} ({p['transport']})",
            str(p["runs"]),
            *(f"{p['latency_ms'][k]:.3f}" for k in ("min", "p50", "p90", "p99")),
            f"{p['throughput_per_s']:.1f}",
            f"{p['load_ms']:.0f}",
            f"{p['first_run_ms']:.1f}",
            _mb(p["peak_rss_mb"]),
            ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in p["ops"][:3]),
        ]
        for p in profiles
    ]
    return table(
        [
            "device",
            "mode",
            "runs",
            "min ms",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "per s",
            "load ms",
            "first ms",
            "peak RSS MB",
            "top ops",
        ],
        rows,
    )


def decode_table(profiles: list[dict]) -> str:
    """Decode speed, time to first token and the decoding process's memory beside `edgeq plan`'s prediction."""
    rows = [
        [
            p["model"],
            p["device"],
            p["mode"],
            str(p["prompt_tokens"]),
            str(p["generated_tokens"]),
            f"{p['decode_tokens_per_s']:.1f}",
            f"{p['ttft_ms']['p50']:.0f}",
            _mb(p["peak_rss_mb"]),
            f"{p['planned_bytes'] / 2**20:.0f} ({p['measured_over_planned']}x)" if "planned_bytes" in p else "—",
        ]
        for p in profiles
    ]
    return table(
        [
            "model",
            "device",
            "mode",
            "prompt tokens",
            "new tokens",
            "decode tokens/s",
            "TTFT p50 ms",
            "peak RSS MB",
            "edgeq plan MB (measured / planned)",
        ],
        rows,
    )


def coverage_table(validations: list[dict]) -> str:
    rows = [
        [
            v["artifact"],
            v["device"],
            v["coverage"]["ep"],
            f"{v['coverage']['supported_nodes']}/{v['coverage']['nodes']}",
            str(v["coverage"]["partitions"]),
            ", ".join(v["coverage"]["unsupported_ops"]) or "none",
            str(v["coverage"]["nodes_unsupported_due_to_dynamic_shape"]),
            v["coverage"]["suitability"],
        ]
        for v in validations
    ]
    header = [
        "artifact",
        "device",
        "EP",
        "nodes supported",
        "partitions",
        "unsupported ops",
        "dynamic-shape nodes",
        "suitability",
    ]
    return table(header, rows)


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out)


def _mb(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "—"
