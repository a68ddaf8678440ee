"""What every task is: how data becomes samples, samples become model inputs, outputs become what is compared,
and what is compared becomes metrics. The pipeline, validation, mixed precision and profiling call these
methods; no module outside `tasks/` asks which task it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeq.data_source import DataSource
from edgeq.errors import DataError
from edgeq.tasks.metrics import Metric


@dataclass(frozen=True)
class Sample:
    """One validation or calibration item; `label` is a class, a tuple of tags or an answer text."""

    text: str | None = None
    words: tuple[str, ...] | None = None
    question: str | None = None
    context: str | None = None
    image: str | None = None
    label: object = None
    row: int = 0  # where it came from, for error messages

    def key(self) -> dict:
        return asdict(self)


@dataclass
class Batch:
    """Model inputs for a group of samples; `mask` marks real tokens [B, S] (None for images)."""

    feed: dict[str, np.ndarray]
    mask: np.ndarray | None
    samples: list[Sample]
    extra: dict = field(default_factory=dict)


class Task:
    """The base: subclasses set the class attributes and override what differs."""

    name = ""
    export_task = ""
    auto_class = "AutoModel"
    modality = "text"  # text | image
    head_suffixes: tuple[str, ...] = ()  # config.json architectures this task's head comes from; () = any
    own_metrics: tuple[Metric, ...] = ()  # the task's own metrics (beside cosine, SQNR, errors), declared once

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.own_metrics)

    compares = ""  # what output is compared, in words (for reports)
    proxy_name = "cosine"  # what proxy_score measures, in words

    # ------------------------------------------------------------------ data
    def read(self, source: DataSource, limit: int | None, key: str, model_dir: Path) -> list[Sample]:
        raise NotImplementedError

    # ---------------------------------------------------------------- inputs
    def inputs(self, model_dir: Path, sequence_length: int, pad_to_length: bool):
        from edgeq.tasks.text_inputs import TextInputs

        return TextInputs(model_dir, sequence_length, pad_to_length)

    def batches(self, samples: list[Sample], inputs, batch_size: int, whole_batches_only: bool = False) -> list[Batch]:
        groups = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
        if whole_batches_only:
            groups = [g for g in groups if len(g) == batch_size] or [(samples * batch_size)[:batch_size]]
        return [self.encode(group, inputs) for group in groups]

    def encode(self, samples: list[Sample], inputs) -> Batch:
        feed = inputs.encode([s.text for s in samples])
        return Batch(feed, feed["attention_mask"], samples)

    def shape_label(self, batch_size: int, sequence_length: int) -> str:
        """How a deployment shape is named: `b32-s128` = batches of 32, at most 128 tokens a text."""
        return f"b{batch_size}-s{sequence_length}"

    # --------------------------------------------------------------- outputs
    def compared(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        """One array per sample: what is compared with the reference."""
        raise NotImplementedError

    def metrics(
        self,
        reference: list[np.ndarray],
        candidate: list[np.ndarray],
        samples: list[Sample],
        inputs,
        followed: tuple[list, list] | None = None,
    ) -> dict:
        """Fidelity of `candidate` against `reference` (and, with labels, the task metric of both). `followed`
        holds what `follow_up` produced for the reference and the candidate, when the task has one."""
        from edgeq.tasks.fidelity import fidelity

        return fidelity(reference, candidate)

    def fidelity_loss(self, metrics: dict) -> float | None:
        """One number from the metrics, 0 for the reference itself and larger the further a model is from it: what
        a device's fidelity is weighed by against its simulation's (the build runs `edgeq diverge` when the device's
        loss is over the simulation's by more than a tenth). Default: 1 - cosine_mean."""
        value = metrics.get("cosine_mean")
        return None if value is None else 1.0 - value

    proxy_loss_name = "1 - mean cosine vs FP32"  # what the proxy score's fall from FP32's own is, in the report

    def proxy_score(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
        """One number, higher is better, for the mixed-precision proxy passes: the mean cosine per sample."""
        from edgeq.tasks.fidelity import sample_cosines

        return float(sample_cosines(reference, candidate).mean())

    def pair(self, reference: list, candidate: list, batch: Batch) -> list:
        """Per sample, what the metrics need of a candidate beside the reference, computed batch by batch as both
        are produced. A task with large outputs (a language model's logits) reduces them here so that no pass
        holds more than one batch of them; by default the candidate's outputs are kept whole."""
        return candidate

    def summarize(self, reference: list, batch: Batch) -> list:
        """What a stored reference keeps of one batch's outputs, to pair later candidates with (default: all)."""
        return reference

    follow_up_samples = 0  # how many samples a validation runs `follow_up` on (0: the task has none)
    generates = False  # profiled as generations (prompt, then token by token through a KV cache)

    def follow_up(self, session, batch: Batch, inputs, sibling=None) -> list:
        """Further per-sample results that need the session itself (e.g. generated tokens)."""
        raise NotImplementedError

    def example_feed(self, inputs, batch_size: int) -> dict[str, np.ndarray]:
        """Inputs for profiling when no data is given."""
        return self.encode([Sample(text="an example input for profiling")] * batch_size, inputs).feed


# ---------------------------------------------------------------------- helpers shared by tasks
def first_output(outputs: dict[str, np.ndarray], *names: str) -> np.ndarray:
    """The first of `names` the model outputs, else its first output."""
    return next((outputs[n] for n in names if n in outputs), next(iter(outputs.values())))


def model_labels(model_dir: Path) -> dict[str, int]:
    """label name -> class id from config.json (id2label), plus the ids themselves as strings."""
    from edgeq.model_folder import config_of

    config = config_of(model_dir)
    id2label = config.get("id2label") or {}
    mapping = {str(name): int(i) for i, name in id2label.items()}
    mapping.update({str(i): int(i) for i in id2label})
    return mapping


def class_id(label, labels: dict[str, int], where: str) -> int:
    """The class id of a label (a name in id2label, or an id), or a DataError naming where it came from."""
    found = labels.get(str(label).strip())
    if found is None:
        shown = ", ".join(list(labels)[:8]) + (", ..." if len(labels) > 8 else "")
        raise DataError(
            f"{where}: label '{label}' is not one of the model's labels", f"The model's id2label has: {shown}"
        )
    return found


def text_records(source: DataSource, limit: int | None, key: str):
    """(row number, record) of a text data file, the first `limit` of them."""
    from edgeq.data import read_records

    records = read_records(source, key)
    return records[:limit] if limit else records


def labelled(metrics: dict, name: str, candidate: float, reference: float) -> dict:
    """Adds `name`, `name_reference` and `name_delta` (candidate minus reference)."""
    metrics[name] = round(float(candidate), 6)
    metrics[f"{name}_reference"] = round(float(reference), 6)
    metrics[f"{name}_delta"] = round(float(candidate - reference), 6)
    return metrics


def require_label(value, number: int, path, key: str, name: str):
    if value is None or value == "":
        raise DataError(f"{key}: '{path}' line {number} has no field '{name}'", "Every labelled record needs its label")
    return value
