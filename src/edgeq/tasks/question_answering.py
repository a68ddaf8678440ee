"""Extractive question answering: start/end logits over the context tokens compared; the predicted span's
agreement with FP32's (exact and token F1); exact match and F1 of the answer text against labels (SQuAD's
normalisation) when the data has them."""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

import numpy as np

from edgeq.data_source import DataSource
from edgeq.tasks.base import Batch, Sample, Task, labelled, text_records
from edgeq.tasks.metrics import Metric

MAX_ANSWER_TOKENS = 30


class QuestionAnswering(Task):
    name = "question-answering"
    export_task = "question-answering"
    auto_class = "AutoModelForQuestionAnswering"  # the PyTorch class the export is checked against
    head_suffixes = ("ForQuestionAnswering",)
    own_metrics = (
        Metric(
            "span_exact_match",
            True,
            "Question answering: minimum share of answers whose span is FP32's.",
            low=0,
            high=1,
            headline=100,
        ),
        Metric("span_f1", True, "Question answering: minimum token F1 with FP32's span.", low=0, high=1),
        Metric(
            "answer_exact_match",
            True,
            "Question answering with labels: minimum exact match of the answer text.",
            low=0,
            high=1,
        ),
        Metric(
            "answer_f1",
            True,
            "Question answering with labels: minimum answer F1.",
            low=0,
            high=1,
            headline=40,
        ),
    )
    compares = "start and end logits over the context tokens"

    def read(self, source: DataSource, limit: int | None, key: str, model_dir: Path) -> list[Sample]:
        from edgeq.data import field_of

        question, context = source.question_field or "question", source.context_field or "context"
        samples = []
        for n, record in text_records(source, limit, key):
            answer = str(field_of(record, source.label_field, n, source.path, key)) if source.label_field else None
            samples.append(
                Sample(
                    question=str(field_of(record, question, n, source.path, key)),
                    context=str(field_of(record, context, n, source.path, key)),
                    label=answer,
                    row=n,
                )
            )
        return samples

    def encode(self, samples: list[Sample], inputs) -> Batch:
        feed, encodings = inputs.encode_pairs([(s.question, s.context) for s in samples])
        positions = [[i for i, sid in enumerate(e.sequence_ids) if sid == 1] for e in encodings]
        return Batch(feed, feed["attention_mask"], samples, {"positions": positions})

    def compared(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        start, end = (
            np.asarray(outputs[n] if n in outputs else list(outputs.values())[i], dtype=np.float32)
            for i, n in enumerate(("start_logits", "end_logits"))
        )
        return [np.stack([start[i, p], end[i, p]], axis=1) for i, p in enumerate(batch.extra["positions"])]

    def metrics(self, reference, candidate, samples, inputs, followed=None) -> dict:
        from edgeq.tasks.fidelity import fidelity

        metrics = fidelity(reference, candidate)
        ref_spans, cand_spans = [best_span(r) for r in reference], [best_span(c) for c in candidate]
        metrics["span_exact_match"] = round(float(np.mean([r == c for r, c in zip(ref_spans, cand_spans)])), 6)
        metrics["span_f1"] = round(
            float(
                np.mean(
                    [overlap_f1(range(r[0], r[1] + 1), range(c[0], c[1] + 1)) for r, c in zip(ref_spans, cand_spans)]
                )
            ),
            6,
        )
        known = [i for i, s in enumerate(samples) if s.label is not None]
        if known:
            texts = {"ref": [], "cand": []}
            for i in known:
                _, (encoding,) = inputs.encode_pairs([(samples[i].question, samples[i].context)])
                texts["ref"].append(span_text(samples[i].context, encoding, ref_spans[i]))
                texts["cand"].append(span_text(samples[i].context, encoding, cand_spans[i]))
            gold = [samples[i].label for i in known]
            exact = lambda answers: np.mean([normalize(a) == normalize(g) for a, g in zip(answers, gold)])  # noqa: E731
            f1 = lambda answers: np.mean(
                [overlap_f1(normalize(a).split(), normalize(g).split()) for a, g in zip(answers, gold)]
            )  # noqa: E731
            labelled(metrics, "answer_exact_match", exact(texts["cand"]), exact(texts["ref"]))
            labelled(metrics, "answer_f1", f1(texts["cand"]), f1(texts["ref"]))
            metrics["labelled_samples"] = len(known)
        return metrics

    def example_feed(self, inputs, batch_size: int) -> dict[str, np.ndarray]:
        sample = Sample(question="What is this?", context="This is an example input for profiling.")
        return self.encode([sample] * batch_size, inputs).feed


def best_span(logits: np.ndarray) -> tuple[int, int]:
    """(start, end) over the context tokens maximising start + end logits, end >= start, at most 30 tokens."""
    if len(logits) == 0:
        return (0, 0)
    start, end = logits[:, 0], logits[:, 1]
    scores = start[:, None] + end[None, :]
    allowed = np.triu(np.ones_like(scores, dtype=bool)) & ~np.triu(np.ones_like(scores, dtype=bool), MAX_ANSWER_TOKENS)
    s, e = np.unravel_index(np.where(allowed, scores, -np.inf).argmax(), scores.shape)
    return int(s), int(e)


def span_text(context: str, encoding, span: tuple[int, int]) -> str:
    positions = [i for i, sid in enumerate(encoding.sequence_ids) if sid == 1]
    if not positions:
        return ""
    first, last = positions[min(span[0], len(positions) - 1)], positions[min(span[1], len(positions) - 1)]
    return context[encoding.offsets[first][0] : encoding.offsets[last][1]]


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def overlap_f1(predicted, truth) -> float:
    common = sum((Counter(predicted) & Counter(truth)).values())
    if not predicted or not truth:
        return float(list(predicted) == list(truth))
    if common == 0:
        return 0.0
    precision, recall = common / len(list(predicted)), common / len(list(truth))
    return 2 * precision * recall / (precision + recall)


TASK = QuestionAnswering()
