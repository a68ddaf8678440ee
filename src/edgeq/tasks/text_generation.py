"""Decoder-only language models (GPT-2, Llama, Qwen2, Phi-3, Mistral class), exported with a KV cache.

Validation runs each text through the model once (an empty cache, the whole text as the prompt) and compares the
next-token distribution at every real position: top-1 agreement, KL(FP32 ‖ candidate) in nats per token, and
each model's perplexity on the text itself. Greedy continuations of held-out prompts, decoded token by token
through the cache, give `greedy_match_tokens` (the mean common prefix with FP32's continuation).

Memory is bounded by design: logits are vocabulary × tokens per text (49,152 × 128 × 4 bytes = 25 MB for SmolLM2),
so they are reduced batch by batch, as the reference and the candidate are produced (`pair`), to a few numbers per
token (`TokenComparison`), and never held for a whole data set. A reference stored for repeated passes (the
mixed-precision proxy) keeps only its `TOP_TOKENS` most likely tokens per position (`TopTokens`); KL against it
is the KL of the two distributions coarse-grained to those tokens plus "the rest" (a lower bound of the exact KL,
used only to rank islands; every reported KL is exact)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.data_source import DataSource
from edgeq.errors import ModelError
from edgeq.model_folder import config_of
from edgeq.tasks.base import Batch, Sample, Task, first_output, text_records
from edgeq.tasks.metrics import Metric

PROMPT_TOKENS, GREEDY_TOKENS, GREEDY_SAMPLES = 16, 16, 16
TOP_TOKENS = 256  # tokens per position a stored reference keeps


@dataclass
class TokenComparison:
    """One text's candidate logits against the reference's, reduced to what the metrics need, per position."""

    kl: np.ndarray  # KL(reference ‖ candidate), nats
    agree: np.ndarray  # same most likely token
    nll: np.ndarray  # candidate's negative log-likelihood of the text's next token (one fewer position)
    nll_reference: np.ndarray
    dot: float  # sums over the text's flattened logits, for cosine, SQNR and errors as `fidelity` gives them
    reference_sq: float
    candidate_sq: float
    error_sq: float
    error_abs: float
    error_max: float
    values: int
    contexts: np.ndarray  # per position, a hash of the tokens it predicts from (the text up to and including it)


def prefix_hashes(ids: np.ndarray) -> np.ndarray:
    """Per position, a 64-bit hash of ids[: position + 1]: equal for two positions that see the same tokens."""
    found, value = np.zeros(len(ids), np.uint64), 0
    for position, token in enumerate(ids.tolist()):
        value = (value * 1_000_003 + int(token) + 1) % (1 << 64)
        found[position] = value
    return found


def distinct_contexts(comparisons: list[TokenComparison]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Which positions count, text by text: a position whose tokens so far were seen before (in an earlier text or
    earlier in the same) is the same prediction again: counted once. Chat texts share their system turn, so without
    this its ~30 positions count once a text and outweigh the rest (SmolLM2, 32 chat texts: 996 of 2,016 positions).
    Returns (masks over each text's positions, masks over its next-token likelihoods: the context with the token)."""
    seen, seen_with_next, positions, likelihoods = set(), set(), [], []
    for comparison in comparisons:
        keys = comparison.contexts.tolist()
        positions.append(np.array([not (k in seen or seen.add(k)) for k in keys], bool))
        following = keys[1 : len(comparison.nll) + 1]
        likelihoods.append(np.array([not (k in seen_with_next or seen_with_next.add(k)) for k in following], bool))
    return positions, likelihoods


def _kept(values: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Each text's values where its mask counts them, concatenated."""
    return np.concatenate([v[m] for v, m in zip(values, masks)])


@dataclass
class TopTokens:
    """A stored reference: per position its most likely token ids, their log-probabilities and its top-1."""

    ids: np.ndarray  # [positions, TOP_TOKENS]
    log_p: np.ndarray  # [positions, TOP_TOKENS]
    top1: np.ndarray  # [positions]


class DecoderInputs:
    """Texts as decoder inputs: token ids (right-padded), attention mask, position ids, and an empty KV cache of
    the shape config.json implies."""

    def __init__(self, model_dir: Path, sequence_length: int, pad_to_length: bool = False):
        from edgeq.tasks.text_inputs import TextInputs

        self.text = TextInputs(model_dir, sequence_length, pad_to_length)
        self.tokenizer_dir, self.sequence_length, self.pad_to_length = Path(model_dir), sequence_length, pad_to_length
        self.cache = cache_shape(model_dir)

    def for_length(self, sequence_length: int) -> DecoderInputs:
        return (
            self
            if sequence_length == self.sequence_length
            else DecoderInputs(self.tokenizer_dir, sequence_length, self.pad_to_length)
        )

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        feed = self.text.encode(texts)
        feed.pop("token_type_ids", None)
        return {**feed, **self.step_inputs(feed["input_ids"], feed["attention_mask"], None)}

    def step_inputs(self, ids: np.ndarray, mask: np.ndarray, past: dict | None) -> dict[str, np.ndarray]:
        """position_ids and past_key_values.* for a step whose full attention mask is `mask`."""
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -ids.shape[1] :]
        layers, heads, head_dim = self.cache
        empty = np.zeros((ids.shape[0], heads, 0, head_dim), dtype=np.float32)
        cache = past or {f"past_key_values.{i}.{kind}": empty for i in range(layers) for kind in ("key", "value")}
        return {"position_ids": positions.astype(np.int64), **cache}


class StaticDecoderInputs:
    """Texts as a static decoder pair's inputs (export.decoder: static): one text at a time, right-padded to the
    prefill's N tokens, its positions, the additive mask, and an empty cache of L tokens. `encode` also returns the
    real tokens' [1, N] mask (`token_mask`), which the graph does not take but the metrics read."""

    def __init__(self, model_dir: Path):
        from edgeq.static_decoder import static_decoder
        from edgeq.tasks.text_inputs import TextInputs

        self.shape = static_decoder(model_dir)
        self.tokenizer_dir, self.sequence_length, self.pad_to_length = Path(model_dir), self.shape.tokens, True
        self.text = TextInputs(model_dir, self.shape.tokens, True)
        self.cache = cache_shape(model_dir)

    def for_length(self, sequence_length: int) -> StaticDecoderInputs:
        return self  # the graph's shape is fixed: every text is cut or padded to its N tokens

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        if len(texts) != 1:
            raise ModelError("a static decoder graph takes one text at a time", "Set validation.batch_size: 1")
        feed = self.text.encode(texts)
        count = int(feed["attention_mask"][0].sum())
        return {**self.step([int(t) for t in feed["input_ids"][0, :count]]), "token_mask": feed["attention_mask"]}

    def decode_batch(self) -> Batch:
        """One decode step (a token at position 0, an empty cache) as a batch: what placement runs the decode graph on."""
        from edgeq.static_decoder import KVShape

        feed = self.step([0], 0, None, KVShape(1, self.shape.cache))
        return Batch(feed, np.ones((1, 1), np.int64), [Sample(text="")])

    def step(self, ids: list[int], start: int = 0, cache: dict | None = None, shape=None) -> dict[str, np.ndarray]:
        from edgeq.static_decoder import kv_feed

        return kv_feed(ids, shape or self.shape, *self.cache, start=start, cache=cache)


def cache_shape(model_dir: Path) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) from config.json, as the KV-cache inputs of the export use them."""
    config = config_of(model_dir, required=True, hint="A language model's folder needs its config.json")
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    heads = config.get("num_attention_heads") or config.get("n_head")
    kv_heads = config.get("num_key_value_heads") or heads
    hidden = config.get("hidden_size") or config.get("n_embd")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        raise ModelError(
            f"config.json in '{model_dir}' does not give layers, heads and hidden size",
            "Is it a decoder-only language model?",
        )
    return int(layers), int(kv_heads), int(head_dim)


class TextGeneration(Task):
    name = "text-generation"
    export_task = "text-generation-with-past"
    auto_class = "AutoModelForCausalLM"
    head_suffixes = ("ForCausalLM", "LMHeadModel")
    own_metrics = (
        Metric(
            "next_token_top1_agreement",
            True,
            "Text generation: minimum share of positions whose most likely next token is FP32's.",
            low=0,
            high=1,
            headline=10,
        ),
        Metric(
            "kl_divergence_mean",
            False,
            "Text generation: maximum mean KL(FP32 ‖ model) of the next-token distribution, nats per token.",
            low=0,
            headline=0,
        ),
        Metric("perplexity", False),
        Metric("greedy_match_tokens", True),
    )

    def fidelity_loss(self, metrics: dict) -> float | None:
        """The mean KL divergence of the next-token distributions from FP32's."""
        return metrics.get("kl_divergence_mean")

    compares = "next-token logits at every position"
    proxy_name = "score (minus KL, nats/token)"

    def read(self, source: DataSource, limit: int | None, key: str, model_dir: Path) -> list[Sample]:
        """Texts; a .jsonl record with `messages` ([{role, content}]) is a conversation, rendered with the model's
        chat template (as an instruct model sees it)."""
        from edgeq.chat import check_messages, render
        from edgeq.data import field_of

        samples = []
        for n, record in text_records(source, limit, key):
            if source.field is None and "messages" in record:
                messages = check_messages(record["messages"], f"{key}: '{source.path}' line {n}")
                samples.append(Sample(text=render(model_dir, messages), row=n))
            else:
                samples.append(
                    Sample(text=str(field_of(record, source.field or "text", n, source.path, key)).strip(), row=n)
                )
        return samples

    def inputs(self, model_dir: Path, sequence_length: int, pad_to_length: bool):
        from edgeq.static_decoder import static_decoder

        if static_decoder(model_dir) is not None:
            return StaticDecoderInputs(model_dir)
        return DecoderInputs(model_dir, sequence_length, pad_to_length)

    def encode(self, samples: list[Sample], inputs) -> Batch:
        feed = inputs.encode([s.text for s in samples])
        mask = feed.pop("token_mask", None)  # a static decoder's real tokens, apart from its graph's additive mask
        return Batch(feed, mask if mask is not None else feed["attention_mask"], samples)

    def compared(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        logits = np.asarray(first_output(outputs, "logits"), dtype=np.float32)
        return [logits[i, : int(batch.mask[i].sum())] for i in range(len(batch.samples))]

    def pair(self, reference: list, candidate: list[np.ndarray], batch: Batch) -> list[TokenComparison]:
        """Each text's logits reduced against the reference's (full logits: exact; TopTokens: coarse-grained)."""
        ids = batch.feed["input_ids"]
        return [compare_logits(r, c, ids[i, : len(c)]) for i, (r, c) in enumerate(zip(reference, candidate))]

    def summarize(self, reference: list[np.ndarray], batch: Batch) -> list[TopTokens]:
        return [top_tokens(r) for r in reference]

    proxy_loss_name = "KL per token vs FP32"

    def proxy_score(self, reference: list, candidate: list[TokenComparison]) -> float:
        """Higher is better: minus the mean KL(FP32 ‖ candidate) per token."""
        counted, _ = distinct_contexts(candidate)
        return -float(np.mean(_kept([c.kl for c in candidate], counted)))

    def follow_up(self, session, batch: Batch, inputs, sibling=None) -> list[np.ndarray]:
        """Greedy continuations of the first samples' prompts, decoded through the KV cache (a static pair: the
        prompt through the prefill graph, each new token through the decode graph, `sibling(file)`'s session)."""
        prompts = greedy_prompts(batch)
        if isinstance(inputs, StaticDecoderInputs):
            decode = sibling("decode.onnx")
            return [greedy_static(session, decode, inputs, p, GREEDY_TOKENS) for p in prompts]
        return [greedy(session, inputs, p, GREEDY_TOKENS) for p in prompts]

    follow_up_samples = GREEDY_SAMPLES
    generates = True

    def metrics(self, reference, candidate: list[TokenComparison], samples, inputs, followed=None) -> dict:
        metrics = comparison_fidelity(candidate)
        counted, counted_next = distinct_contexts(candidate)
        agree = _kept([c.agree for c in candidate], counted)
        metrics["next_token_top1_agreement"] = round(float(agree.mean()), 6)
        metrics["kl_divergence_mean"] = _finite(np.mean(_kept([c.kl for c in candidate], counted)))
        nll = [c.nll[m] for c, m in zip(candidate, counted_next) if m.any()]
        metrics["perplexity"] = _finite(np.exp(np.mean(np.concatenate(nll)))) if nll else None
        nll_ref = [c.nll_reference[m] for c, m in zip(candidate, counted_next) if c.nll_reference.size and m.any()]
        metrics["perplexity_reference"] = _finite(np.exp(np.mean(np.concatenate(nll_ref)))) if nll_ref else None
        metrics["tokens"] = int(agree.size)  # distinct contexts: a repeated one (a shared system turn) counted once
        metrics["repeated_contexts"] = int(sum(c.agree.size for c in candidate) - agree.size)
        if followed is not None:
            ref_runs, cand_runs = followed
            metrics["greedy_match_tokens"] = round(
                float(np.mean([common_prefix(r, c) for r, c in zip(ref_runs, cand_runs)])), 3
            )
            metrics["greedy_tokens"] = GREEDY_TOKENS
            metrics["greedy_prompts"] = len(cand_runs)
        return metrics

    def example_feed(self, inputs, batch_size: int) -> dict[str, np.ndarray]:
        """A prompt of exactly `sequence_length` tokens (drawn from the vocabulary) and an empty cache."""
        if isinstance(inputs, StaticDecoderInputs):
            rng = np.random.default_rng(0)
            return inputs.step([int(t) for t in rng.integers(100, inputs.text.vocab_size, size=inputs.sequence_length)])
        ids = (
            np.random.default_rng(0)
            .integers(
                min(100, inputs.text.vocab_size - 1), inputs.text.vocab_size, size=(batch_size, inputs.sequence_length)
            )
            .astype(np.int64)
        )
        mask = np.ones_like(ids)
        return {"input_ids": ids, "attention_mask": mask, **inputs.step_inputs(ids, mask, None)}


def greedy_prompts(batch: Batch) -> list[np.ndarray]:
    """Each text's prompt for a greedy continuation: the text but its last GREEDY_TOKENS tokens, at least
    PROMPT_TOKENS (all of a shorter text). Chat-formatted texts open with the same system turn (SmolLM2's is about
    30 tokens), so a prompt of their first tokens would be one prompt repeated."""
    lengths = [int(batch.mask[i].sum()) for i in range(len(batch.samples))]
    return [batch.feed["input_ids"][i, : min(n, max(PROMPT_TOKENS, n - GREEDY_TOKENS))] for i, n in enumerate(lengths)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare_logits(reference, candidate: np.ndarray, ids: np.ndarray) -> TokenComparison:
    """One text's candidate logits [positions, vocabulary] against the reference's (logits, or TopTokens)."""
    log_q = log_softmax(candidate)
    following = ids[1 : len(candidate)]
    nll = -log_q[np.arange(len(following)), following]
    contexts = prefix_hashes(ids[: len(candidate)])
    if isinstance(reference, TopTokens):
        return _against_top_tokens(reference, candidate, log_q, nll, contexts)
    log_p = log_softmax(reference)
    ref, cand = reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()
    error = cand - ref
    return TokenComparison(
        kl=(np.exp(log_p) * (log_p - log_q)).sum(axis=-1),
        agree=reference.argmax(-1) == candidate.argmax(-1),
        nll=nll,
        nll_reference=-log_p[np.arange(len(following)), following],
        dot=float(ref @ cand),
        reference_sq=float(ref @ ref),
        candidate_sq=float(cand @ cand),
        error_sq=float(error @ error),
        error_abs=float(np.abs(error).sum()),
        error_max=float(np.abs(error).max(initial=0.0)),
        values=error.size,
        contexts=contexts,
    )


def top_tokens(logits: np.ndarray, keep: int = TOP_TOKENS) -> TopTokens:
    log_p = log_softmax(logits)
    keep = min(keep, log_p.shape[-1])
    ids = np.argpartition(-log_p, keep - 1, axis=-1)[:, :keep]
    return TopTokens(ids.astype(np.int32), np.take_along_axis(log_p, ids, -1).astype(np.float32), logits.argmax(-1))


def _against_top_tokens(reference: TopTokens, candidate, log_q, nll, contexts) -> TokenComparison:
    """KL of the two distributions coarse-grained to the reference's top tokens plus one bucket for the rest."""
    p = np.exp(reference.log_p.astype(np.float64))
    q_top = np.take_along_axis(log_q, reference.ids.astype(np.int64), -1)
    p_rest = np.clip(1.0 - p.sum(-1), 1e-12, None)
    q_rest = np.clip(1.0 - np.exp(q_top).sum(-1), 1e-12, None)
    kl = (p * (reference.log_p - q_top)).sum(-1) + p_rest * (np.log(p_rest) - np.log(q_rest))
    nothing = np.zeros(0)
    return TokenComparison(
        kl=np.maximum(kl, 0.0),
        agree=reference.top1 == candidate.argmax(-1),
        nll=nll,
        nll_reference=nothing,
        dot=0.0,
        reference_sq=0.0,
        candidate_sq=0.0,
        error_sq=0.0,
        error_abs=0.0,
        error_max=0.0,
        values=0,
        contexts=contexts,
    )


def comparison_fidelity(comparisons: list[TokenComparison]) -> dict:
    """cosine mean/min (per text, over its flattened logits), abs errors and SQNR, as `fidelity` computes them."""
    from edgeq.tasks.fidelity import EXACT

    cos = np.array([c.dot / max(np.sqrt(c.reference_sq * c.candidate_sq), 1e-12) for c in comparisons])
    noise, signal = sum(c.error_sq for c in comparisons), sum(c.reference_sq for c in comparisons)
    values = max(sum(c.values for c in comparisons), 1)
    return {
        "cosine_mean": _finite(cos.mean()),
        "cosine_min": _finite(cos.min()),
        "max_abs_error": _finite(max(c.error_max for c in comparisons)),
        "mean_abs_error": _finite(sum(c.error_abs for c in comparisons) / values),
        "sqnr_db": round(float(10 * np.log10(signal / noise)), 2) if noise > 0 else EXACT,
    }


def greedy(session, inputs: DecoderInputs, prompt: np.ndarray, steps: int, on_token=None) -> np.ndarray:
    """`steps` greedy tokens after `prompt`: the prompt in one pass, then one token a step through the cache.
    `on_token(token)` is called as each comes and may stop the loop by returning False."""
    from edgeq.feeds import feed_for

    specs, names = session.get_inputs(), [o.name for o in session.get_outputs()]
    ids, mask, past, produced = prompt[None, :].astype(np.int64), np.ones((1, len(prompt)), np.int64), None, []
    for _ in range(steps):
        feed = {"input_ids": ids, "attention_mask": mask, **inputs.step_inputs(ids, mask, past)}
        outputs = dict(zip(names, session.run(None, feed_for(specs, feed))))
        token = int(outputs["logits"][0, -1].argmax())
        produced.append(token)
        if on_token is not None and on_token(token) is False:
            break
        past = {n.replace("present", "past_key_values"): v for n, v in outputs.items() if n.startswith("present")}
        ids, mask = np.array([[token]], np.int64), np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
    return np.array(produced)


def greedy_static(prefill, decode, inputs: StaticDecoderInputs, prompt: np.ndarray, steps: int) -> np.ndarray:
    """`steps` greedy tokens after `prompt` through a static pair: the prompt through the prefill graph, then one
    token a step through the decode graph, the host keeping the cache (each step's new entries written into it)."""
    from edgeq.feeds import feed_for
    from edgeq.static_decoder import KVShape

    layers, kv_heads, head_dim = inputs.cache
    length = inputs.shape.cache
    cache = {
        f"past_{kind}.{i}": np.zeros((1, kv_heads, length, head_dim), np.float32)
        for i in range(layers)
        for kind in ("key", "value")
    }
    ids, start, produced = [int(t) for t in prompt], 0, []
    session, shape = prefill, inputs.shape
    while len(produced) < steps and start + len(ids) <= length:
        names = [o.name for o in session.get_outputs()]
        feed = inputs.step(ids, start, cache, shape)
        outputs = dict(zip(names, session.run(None, feed_for(session.get_inputs(), feed))))
        for name in cache:
            new = outputs[name.replace("past_", "present_")][:, :, : len(ids)]
            cache[name][:, :, start : start + len(ids)] = new
        produced.append(int(outputs["logits"][0, len(ids) - 1].argmax()))
        start, ids, session, shape = start + len(ids), [produced[-1]], decode, KVShape(1, length)
    return np.array(produced)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Tokens the two continuations share from the start (one may have stopped early, at an end-of-text token)."""
    n = min(len(a), len(b))
    same = np.asarray(a)[:n] == np.asarray(b)[:n]
    return int(same.argmin()) if not same.all() else n


def _finite(value) -> float | None:
    value = float(value)
    return round(value, 6) if np.isfinite(value) else None


TASK = TextGeneration()
