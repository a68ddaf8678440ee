"""`edgeq generate`: try a language model. Greedy tokens streamed as they come, through onnxruntime-genai where it is
installed and the folder has a genai_config.json (what an app would run), else through edgeq's own loop on
onnxruntime (the same graph, the same tokens); then tokens/s, time to first token and peak RSS, measured."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeq.errors import DataError, ModelError


def model_folder(model_or_build: str | Path) -> Path:
    """The folder holding model.onnx: the folder itself, a build folder's final/, or a model.onnx's folder."""
    path = Path(model_or_build).expanduser()
    if path.is_file() and path.suffix == ".onnx":
        path = path.parent
    if (path / "final" / "model.onnx").is_file():
        path = path / "final"
    if not (path / "model.onnx").is_file():
        raise ModelError(f"no model.onnx in '{model_or_build}'", "Give a build folder, its final/, or a model folder")
    return path


def generate(
    model_or_build: str | Path,
    prompt: str,
    max_tokens: int = 64,
    chat: bool = False,
    on_text: Callable[[str], None] | None = None,
    engine: str = "auto",
) -> dict:
    """Generate up to `max_tokens` greedy tokens after `prompt` (a user message rendered with the chat template when
    `chat`); `on_text` receives the text as it grows. Returns the tokens, the text and the measured figures."""
    from edgeq.targets.runner import peak_rss_mb  # VmHWM: a child's own peak, not its parent's

    folder = model_folder(model_or_build)
    text = prompt
    if chat:
        from edgeq.chat import render

        text = render(folder, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    use_genai = engine == "genai" or (engine == "auto" and _genai_ready(folder))
    run = _with_genai if use_genai else _with_onnxruntime
    started = time.perf_counter()
    tokens, prompt_tokens, first_token_s, decode = run(folder, text, max_tokens, on_text or (lambda _t: None))
    total = time.perf_counter() - started
    return {
        "model": str(folder),
        "engine": "onnxruntime-genai" if use_genai else "onnxruntime",
        "prompt": prompt,
        "chat": chat,
        "prompt_tokens": prompt_tokens,
        "tokens": tokens,
        "generated_tokens": len(tokens),
        "ttft_ms": round(first_token_s * 1000, 2),
        "tokens_per_s": round((len(tokens) - 1) / decode, 2) if len(tokens) > 1 and decode > 0 else None,
        "seconds": round(total, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "mode": "on-host",
    }


def _genai_ready(folder: Path) -> bool:
    import importlib.util

    return (folder / "genai_config.json").is_file() and importlib.util.find_spec("onnxruntime_genai") is not None


def _check_length(folder: Path, prompt_tokens: int, max_tokens: int) -> None:
    from edgeq.tasks import model_config

    config = model_config(folder)
    context = config.get("max_position_embeddings") or config.get("n_positions")
    if context and prompt_tokens >= context:
        raise DataError(
            f"the prompt is {prompt_tokens} tokens, over the model's context of {context}", "Shorten the prompt"
        )
    if context and prompt_tokens + max_tokens > context:
        raise DataError(
            f"the prompt ({prompt_tokens} tokens) and --max-tokens {max_tokens} exceed the model's context "
            f"of {context}",
            f"Use --max-tokens {context - prompt_tokens} or less",
        )


def _with_genai(folder: Path, text: str, max_tokens: int, on_text):
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    stream = tokenizer.create_stream()
    ids = tokenizer.encode(text)
    _check_length(folder, len(ids), max_tokens)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(ids)
    tokens, first, decode_start = [], 0.0, 0.0
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if not tokens:
            first = decode_start = time.perf_counter() - started
        tokens.append(token)
        on_text(stream.decode(token))
    return tokens, len(ids), first, time.perf_counter() - started - decode_start


def _with_onnxruntime(folder: Path, text: str, max_tokens: int, on_text):
    import json

    from tokenizers import Tokenizer

    from edgeq.targets import load_target
    from edgeq.tasks.text_generation import DecoderInputs, greedy

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = np.array(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    _check_length(folder, len(ids), max_tokens)
    generation = {}
    if (folder / "generation_config.json").is_file():
        generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    eos = generation.get("eos_token_id")
    stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    session = load_target().session(folder / "model.onnx", spinning=False)
    inputs = DecoderInputs(folder, max(len(ids), 1))
    times, tokens, shown = [], [], [""]

    def each(token: int) -> bool:
        times.append(time.perf_counter())
        tokens.append(token)
        text_so_far = tokenizer.decode(tokens, skip_special_tokens=False)
        if not text_so_far.endswith("\ufffd"):  # a character split across tokens waits for its last byte
            on_text(text_so_far[len(shown[0]) :])
            shown[0] = text_so_far
        return token not in stops

    started = time.perf_counter()
    greedy(session, inputs, ids, max_tokens, on_token=each)
    first = times[0] - started if times else 0.0
    return tokens, len(ids), first, (times[-1] - times[0]) if len(times) > 1 else 0.0
