"""Token classification (NER and friends): per-word logits compared (the first sub-token of each word, as
Hugging Face trains them); token agreement; entity F1 (BIO spans) against labels when the data has them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.data_source import DataSource
from edgeq.errors import DataError
from edgeq.tasks.base import Batch, Sample, Task, class_id, first_output, labelled, model_labels, text_records
from edgeq.tasks.metrics import Metric


class TokenClassification(Task):
    name = "token-classification"
    export_task = "token-classification"
    auto_class = "AutoModelForTokenClassification"  # the PyTorch class the export is checked against
    head_suffixes = ("ForTokenClassification",)
    own_metrics = (
        Metric(
            "token_agreement",
            True,
            "Token classification: minimum share of words tagged as FP32 tags them.",
            low=0,
            high=1,
            headline=90,
        ),
        Metric(
            "f1",
            True,
            "Token classification with labels: minimum entity F1.",
            low=0,
            high=1,
            headline=30,
            delta_threshold="Token classification with labels: minimum F1 minus FP32's.",
        ),
    )
    compares = "per-word logits (first sub-token of each word)"

    def read(self, source: DataSource, limit: int | None, key: str, model_dir: Path) -> list[Sample]:
        from edgeq.data import field_of

        labels = model_labels(model_dir) if source.label_field else {}
        samples = []
        for n, record in text_records(source, limit, key):
            words = _words(field_of(record, source.field or "text", n, source.path, key))
            tags = None
            if source.label_field:
                where = f"{key}: '{source.path}' line {n}"
                raw = _words(field_of(record, source.label_field, n, source.path, key))
                if len(raw) != len(words):
                    raise DataError(f"{where} has {len(words)} words but {len(raw)} labels", "Give one label a word")
                tags = tuple(class_id(tag, labels, where) for tag in raw)
            samples.append(Sample(words=tuple(words), label=tags, row=n))
        return samples

    def encode(self, samples: list[Sample], inputs) -> Batch:
        feed, encodings = inputs.encode_words([list(s.words) for s in samples])
        return Batch(
            feed, feed["attention_mask"], samples, {"positions": [first_subwords(e.word_ids) for e in encodings]}
        )

    def compared(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        logits = np.asarray(first_output(outputs, "logits"), dtype=np.float32)
        return [logits[i, positions] for i, positions in enumerate(batch.extra["positions"])]

    def metrics(self, reference, candidate, samples, inputs, followed=None) -> dict:
        from edgeq.tasks.fidelity import fidelity

        metrics = fidelity(reference, candidate)
        ref_tags = [r.argmax(-1) for r in reference]
        cand_tags = [c.argmax(-1) for c in candidate]
        metrics["token_agreement"] = round(float(np.mean(np.concatenate(ref_tags) == np.concatenate(cand_tags))), 6)
        known = [i for i, s in enumerate(samples) if s.label is not None]
        if known:
            names = {v: k for k, v in model_labels(inputs.tokenizer_dir).items() if not k.isdigit()}
            gold = [[names.get(t, str(t)) for t in samples[i].label[: len(ref_tags[i])]] for i in known]
            predicted = lambda tags: [[names.get(int(t), str(t)) for t in tags[i]] for i in known]  # noqa: E731
            labelled(metrics, "f1", entity_f1(gold, predicted(cand_tags)), entity_f1(gold, predicted(ref_tags)))
            metrics["labelled_samples"] = len(known)
        return metrics

    def example_feed(self, inputs, batch_size: int) -> dict[str, np.ndarray]:
        return self.encode([Sample(words=("an", "example", "input"))] * batch_size, inputs).feed


def first_subwords(word_ids: list[int | None]) -> list[int]:
    """The position of each word's first sub-token (special tokens and padding have no word)."""
    seen, positions = set(), []
    for position, word in enumerate(word_ids):
        if word is not None and word not in seen:
            seen.add(word)
            positions.append(position)
    return positions


def entity_spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) of every entity in a BIO (IOB2) tag sequence; a lone I- starts an entity too."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-") if tag[:2] in ("B-", "I-") else ("", "", tag)
        continues = prefix == "I" and kind == name or (not prefix and tag != "O" and kind == name)
        if start is not None and not continues:
            spans.add((start, i, kind))
            start, kind = None, None
        if tag != "O" and start is None:
            start, kind = i, name
    return spans


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    """Micro entity F1 over all sentences (an entity counts only when its type and both ends match)."""
    true = [(i, *s) for i, tags in enumerate(gold) for s in entity_spans(tags)]
    found = [(i, *s) for i, tags in enumerate(predicted) for s in entity_spans(tags)]
    hits = len(set(true) & set(found))
    if not true and not found:
        return 1.0
    precision, recall = hits / max(len(found), 1), hits / max(len(true), 1)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _words(value) -> list[str]:
    return [str(w) for w in value] if isinstance(value, list) else str(value).split()


TASK = TokenClassification()
