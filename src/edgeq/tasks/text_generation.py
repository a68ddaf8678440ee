"""Decoder-only language models (GPT-2, Llama, Qwen2, Phi-3, Mistral class), exported with a KV cache.

Validation runs each text through the model once (an empty cache, the whole text as the prompt) and compares the
next-token distribution at every real position: top-1 agreement, KL(FP32 ‖ candidate) in nats per token, and
each model's perplexity on the text itself. Greedy continuations of held-out prompts, decoded token by token
through the cache, give `greedy_match_tokens` (the mean common prefix with FP32's continuation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeq.errors import ModelError
from edgeq.recipe.schema import DataSource
from edgeq.tasks.base import Batch, Sample, Task, first_output, text_records

PROMPT_TOKENS, GREEDY_TOKENS, GREEDY_SAMPLES = 16, 16, 16


class DecoderInputs:
    """Texts as decoder inputs: token ids (right-padded), attention mask, position ids, and an empty KV cache of
    the shape config.json implies."""

    def __init__(self, model_dir: Path, sequence_length: int, pad_to_length: bool = False):
        from edgeq.tasks.text_inputs import TextInputs

        self.text = TextInputs(model_dir, sequence_length, pad_to_length)
        self.tokenizer_dir, self.sequence_length, self.pad_to_length = Path(model_dir), sequence_length, pad_to_length
        self.cache = cache_shape(model_dir)

    def for_length(self, sequence_length: int) -> DecoderInputs:
        return self if sequence_length == self.sequence_length else DecoderInputs(self.tokenizer_dir, sequence_length, self.pad_to_length)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        feed = self.text.encode(texts)
        feed.pop("token_type_ids", None)
        return {**feed, **self.step_inputs(feed["input_ids"], feed["attention_mask"], None)}

    def step_inputs(self, ids: np.ndarray, mask: np.ndarray, past: dict | None) -> dict[str, np.ndarray]:
        """position_ids and past_key_values.* for a step whose full attention mask is `mask`."""
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -ids.shape[1]:]
        layers, heads, head_dim = self.cache
        empty = np.zeros((ids.shape[0], heads, 0, head_dim), dtype=np.float32)
        cache = past or {f"past_key_values.{i}.{kind}": empty for i in range(layers) for kind in ("key", "value")}
        return {"position_ids": positions.astype(np.int64), **cache}


def cache_shape(model_dir: Path) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) from config.json, as the KV-cache inputs of the export use them."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelError(f"no config.json in '{model_dir}'", "A language model's folder needs its config.json") from None
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    heads = config.get("num_attention_heads") or config.get("n_head")
    kv_heads = config.get("num_key_value_heads") or heads
    hidden = config.get("hidden_size") or config.get("n_embd")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        raise ModelError(f"config.json in '{model_dir}' does not give layers, heads and hidden size",
                         "Is it a decoder-only language model?")  # fmt: skip
    return int(layers), int(kv_heads), int(head_dim)


class TextGeneration(Task):
    name = "text-generation"
    export_task = "text-generation-with-past"
    auto_class = "AutoModelForCausalLM"
    head_suffixes = ("ForCausalLM", "LMHeadModel")
    metric_names = ("next_token_top1_agreement", "kl_divergence_mean", "perplexity", "greedy_match_tokens")
    compares = "next-token logits at every position"
    proxy_name = "score (minus KL, nats/token)"

    def read(self, source: DataSource, limit: int | None, key: str, model_dir: Path) -> list[Sample]:
        from edgeq.data import field_of

        return [Sample(text=str(field_of(r, source.field or "text", n, source.path, key)).strip(), row=n)
                for n, r in text_records(source, limit, key)]  # fmt: skip

    def inputs(self, model_dir: Path, sequence_length: int, pad_to_length: bool):
        return DecoderInputs(model_dir, sequence_length, pad_to_length)

    def compared(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        logits = np.asarray(first_output(outputs, "logits"), dtype=np.float32)
        return [logits[i, : int(batch.mask[i].sum())] for i in range(len(batch.samples))]

    def proxy_score(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
        """Higher is better: minus the mean KL(FP32 ‖ candidate) per token."""
        return -float(np.mean(np.concatenate([kl_per_token(r, c) for r, c in zip(reference, candidate)])))

    def follow_up(self, session, batch: Batch, inputs) -> list[np.ndarray]:
        """Greedy continuations of the first samples' prompts, decoded through the KV cache."""
        return [greedy(session, inputs, batch.feed["input_ids"][i, : min(PROMPT_TOKENS, int(batch.mask[i].sum()))], GREEDY_TOKENS)
                for i in range(len(batch.samples))]  # fmt: skip

    follow_up_samples = GREEDY_SAMPLES
    generates = True

    def metrics(self, reference, candidate, samples, inputs, followed=None) -> dict:
        from edgeq.validate.metrics import fidelity

        metrics = fidelity(reference, candidate)
        agree = np.concatenate([r.argmax(-1) == c.argmax(-1) for r, c in zip(reference, candidate)])
        metrics["next_token_top1_agreement"] = round(float(agree.mean()), 6)
        metrics["kl_divergence_mean"] = _finite(np.mean(np.concatenate([kl_per_token(r, c) for r, c in zip(reference, candidate)])))
        targets = [inputs.encode([s.text])["input_ids"][0] for s in samples]
        metrics["perplexity"] = _finite(perplexity(candidate, targets))
        metrics["perplexity_reference"] = _finite(perplexity(reference, targets))
        metrics["tokens"] = int(agree.size)
        if followed is not None:
            ref_runs, cand_runs = followed
            metrics["greedy_match_tokens"] = round(float(np.mean([common_prefix(r, c) for r, c in zip(ref_runs, cand_runs)])), 3)
            metrics["greedy_tokens"] = GREEDY_TOKENS
        return metrics

    def example_feed(self, inputs, batch_size: int) -> dict[str, np.ndarray]:
        """A prompt of exactly `sequence_length` tokens (drawn from the vocabulary) and an empty cache."""
        ids = np.random.default_rng(0).integers(min(100, inputs.text.vocab_size - 1), inputs.text.vocab_size,
                                                size=(batch_size, inputs.sequence_length)).astype(np.int64)  # fmt: skip
        mask = np.ones_like(ids)
        return {"input_ids": ids, "attention_mask": mask, **inputs.step_inputs(ids, mask, None)}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_per_token(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(P_reference ‖ P_candidate) in nats at each position."""
    log_p, log_q = log_softmax(reference), log_softmax(candidate)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def perplexity(logits: list[np.ndarray], targets: list[np.ndarray]) -> float:
    """exp(mean negative log-likelihood of each next token of the texts themselves)."""
    nll = [-log_softmax(l[:-1])[np.arange(len(l) - 1), t[1 : len(l)]] for l, t in zip(logits, targets) if len(l) > 1]
    return float(np.exp(np.mean(np.concatenate(nll)))) if nll else float("nan")


def greedy(session, inputs: DecoderInputs, prompt: np.ndarray, steps: int) -> np.ndarray:
    """`steps` greedy tokens after `prompt`: the prompt in one pass, then one token a step through the cache."""
    from edgeq.feeds import feed_for

    specs, names = session.get_inputs(), [o.name for o in session.get_outputs()]
    ids, mask, past, produced = prompt[None, :].astype(np.int64), np.ones((1, len(prompt)), np.int64), None, []
    for _ in range(steps):
        feed = {"input_ids": ids, "attention_mask": mask, **inputs.step_inputs(ids, mask, past)}
        outputs = dict(zip(names, session.run(None, feed_for(specs, feed))))
        token = int(outputs["logits"][0, -1].argmax())
        produced.append(token)
        past = {n.replace("present", "past_key_values"): v for n, v in outputs.items() if n.startswith("present")}
        ids, mask = np.array([[token]], np.int64), np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
    return np.array(produced)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    same = np.asarray(a) == np.asarray(b)
    return int(same.argmin()) if not same.all() else len(same)


def _finite(value) -> float | None:
    value = float(value)
    return round(value, 6) if np.isfinite(value) else None


TASK = TextGeneration()
