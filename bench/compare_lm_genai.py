"""A language model as an app runs it: every model through onnxruntime-genai, side by side in one run on one machine.

    python bench/compare_lm_genai.py --build build/smollm2-int4 [--heldout bench/data/lm-chat-heldout.jsonl]

Rows: FP32 (edgeq's export), the build's uniform INT4 (onnxruntime's quantizer), the onnxruntime-genai model builder's
int4 model (its default RTN) and its `k_quant_mixed` rule, and edgeq's final model. The builder needs transformers 5,
which edgeq's own environment cannot have (optimum-onnx pins transformers < 4.58), so this script makes the builder
its own virtual environment (`bench/.builder-venv`, torch from the same CPU wheel) and runs it there on the FP32 folder
the build used (for a GGUF source: the converted folder), once; its models are cached under `bench/.builder/`.

Fidelity: each held-out text through each model once (genai's `append_tokens`, logits of every position), against
the FP32 export's logits: KL (nats/token), top-1 agreement, perplexity; greedy continuations (16 tokens after a
16-token prompt) against FP32's. Speed: `edgeq generate --json` in a child process per model and round (64-token
prompt, 32 new tokens), models interleaved: decode tokens/s, time to first token, and the child's peak RSS."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from compare_lm import held_out_texts  # noqa: E402

from edgeq.genai import write_genai_config  # noqa: E402
from edgeq.tasks.base import Batch  # noqa: E402
from edgeq.tasks.text_generation import TASK, common_prefix  # noqa: E402

BUILDER_VENV = ROOT / "bench" / ".builder-venv"
BUILDER_MODELS = ROOT / "bench" / ".builder"
RULES = {"builder int4 (RTN)": "default", "builder k_quant_mixed": "k_quant_mixed"}


def builder_python() -> Path:
    """The builder's own environment: transformers 5, onnxruntime-genai, torch from the local CPU wheel."""
    python = BUILDER_VENV / "bin" / "python"
    if not python.is_file():
        print(f"  making {BUILDER_VENV} (transformers 5 + onnxruntime-genai's builder)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(BUILDER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "transformers>=5", "onnxruntime-genai", "onnx", "onnx-ir", "numpy"], check=True)
    return python


def builder_model(source: Path, rule: str) -> Path:
    out = BUILDER_MODELS / f"{source.name}-{rule}"
    if not (out / "genai_config.json").is_file():
        print(f"  building the builder's {rule} model from {source}", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
        command = [
            str(builder_python()),
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(source),
            "-o",
            str(out),
            "-p",
            "int4",
            "-e",
            "cpu",
            "-c",
            str(BUILDER_MODELS / "cache"),
            "--extra_options",
            f"algo_config={rule}",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"Error: the genai builder failed on {source} ({rule}): {done.stderr.strip()[-400:]}")
    return out


def genai_folder(onnx_path: Path, scratch: Path) -> Path:
    """A folder genai runs for one of edgeq's models: the model's own folder when it has genai_config.json, else a
    scratch folder linking the model and its companions, with one written."""
    folder = onnx_path.parent
    if (folder / "genai_config.json").is_file():
        return folder
    target = scratch / folder.name
    target.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if not (target / item.name).exists():
            (target / item.name).symlink_to(item)
    write_genai_config(target)
    return target


def logits_of(model, ids: np.ndarray) -> np.ndarray:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids.astype(np.int32))
    return np.asarray(generator.get_output("logits"))[0].astype(np.float32)


def greedy_of(model, ids: np.ndarray, steps: int) -> list[int]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids.astype(np.int32))
    produced = []
    while not generator.is_done():
        generator.generate_next_token()
        produced.append(int(generator.get_next_tokens()[0]))
    return produced


def fidelity(folders: dict[str, Path], texts: list[str], reference: str) -> dict[str, dict]:
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folders[reference] / "tokenizer.json"))
    encoded = [np.array(tokenizer.encode(t, add_special_tokens=False).ids[:128], np.int64) for t in texts]
    model = og.Model(str(folders[reference]))
    truth = [logits_of(model, ids) for ids in encoded]
    truth_greedy = [greedy_of(model, ids[:16], 16) for ids in encoded[:16]]
    del model
    found = {}
    for name, folder in folders.items():
        model = og.Model(str(folder))
        compared = []
        for ids, reference_logits in zip(encoded, truth):
            batch = Batch({"input_ids": ids[None, :]}, np.ones((1, len(ids))), [])
            compared += TASK.pair([reference_logits], [logits_of(model, ids)], batch)
        greedy = [greedy_of(model, ids[:16], 16) for ids in encoded[:16]]
        metrics = TASK.metrics(None, compared, [], None)
        metrics["greedy_match_tokens"] = round(
            float(np.mean([common_prefix(np.array(a), np.array(b)) for a, b in zip(truth_greedy, greedy)])), 3
        )
        found[name] = metrics
        print(
            f"  {name}: KL {metrics['kl_divergence_mean']:.4f}, top-1 {metrics['next_token_top1_agreement']:.4f}",
            file=sys.stderr,
        )
        del model
    return found


def speed(folders: dict[str, Path], prompt: str, rounds: int) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {name: [] for name in folders}
    for _ in range(rounds):
        for name, folder in folders.items():  # interleaved: every model once a round
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "edgeq.cli",
                    "generate",
                    str(folder),
                    prompt,
                    "--max-tokens",
                    "32",
                    "--engine",
                    "genai",
                    "--json",
                    "-",
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "EDGEQ_QUIET": "1"},
            )
            if done.returncode:
                sys.exit(f"Error: edgeq generate failed on {name}: {done.stderr.strip()[-300:]}")
            runs[name].append(json.loads(done.stdout))
    return {
        name: {
            "decode_tokens_per_s": round(float(np.median([r["tokens_per_s"] for r in rs])), 2),
            "ttft_ms": round(float(np.median([r["ttft_ms"] for r in rs])), 1),
            "peak_rss_mb": round(float(max(r["peak_rss_mb"] for r in rs)), 1),
        }
        for name, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, required=True)
    parser.add_argument("--heldout", type=Path, default=ROOT / "bench" / "data" / "lm-chat-heldout.jsonl")
    parser.add_argument(
        "--source", type=Path, help="The FP32 Hugging Face folder for the builder (default: the build's model folder)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    build = args.build.resolve()
    report = json.loads((build / "report.json").read_text())
    source = args.source or _model_folder(report)
    scratch = build / ".bench-genai"
    models = {
        "FP32 (export)": genai_folder(build / "fp32" / "model.onnx", scratch),
        "uniform INT4 (build's int4/)": genai_folder(build / "int4" / "model.onnx", scratch),
    }
    for name, rule in RULES.items():
        models[name] = builder_model(source, rule)
    models["edgeq final"] = build / "final"
    texts = held_out_texts(args.heldout, build / "fp32")
    print(f"measuring {len(models)} models on {len(texts)} held-out texts through onnxruntime-genai", file=sys.stderr)
    quality = fidelity(models, texts, "FP32 (export)")
    fast = speed(models, texts[0][:400], args.rounds)
    rows = []
    print(f"\n{build.name}: {len(texts)} held-out texts, onnxruntime-genai, batch 1\n")
    print(f"{'model':<30}{'MB':>8}{'top-1':>8}{'KL':>9}{'ppl':>8}{'greedy':>8}{'tok/s':>8}{'TTFT ms':>9}{'RSS MB':>8}")
    for name, folder in models.items():
        size = sum(
            p.stat().st_size
            for p in folder.iterdir()
            if p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data")
        )
        q, s = quality[name], fast[name]
        rows.append({"model": name, "bytes": size, **q, **s})
        print(
            f"{name:<30}{size / 1e6:>8.1f}{q['next_token_top1_agreement']:>8.4f}{q['kl_divergence_mean']:>9.4f}"
            f"{q['perplexity']:>8.2f}{q['greedy_match_tokens']:>8.2f}{s['decode_tokens_per_s']:>8.1f}{s['ttft_ms']:>9.0f}"
            f"{s['peak_rss_mb']:>8.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"texts": len(texts), "rows": rows}, indent=2))


def _model_folder(report: dict) -> Path:
    from edgeq.export.source import resolve_source

    return resolve_source(report["recipe"]["model"]["source"])


if __name__ == "__main__":
    main()
