"""What the recipe schema and the task layer share, below both: a data file's description (`DataSource`), the
strict base of every recipe and device-profile model, and edgeq's default sequence length. The schema imports the
task registry for the task names; the tasks read data sources: this module is what lets both do so without a
circle."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

DEFAULT_SEQUENCE_LENGTH = 128  # tokens, when neither the section nor the export sets one (capped by the model)


def length_for_model(positions: int | None) -> int:
    """edgeq's default length, or the model's position table when that is shorter."""
    return min(DEFAULT_SEQUENCE_LENGTH, positions or DEFAULT_SEQUENCE_LENGTH)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def base_dir_of(info: ValidationInfo) -> Path | None:
    """The folder a recipe's relative paths are read against (the validation context's `base_dir`)."""
    return (info.context or {}).get("base_dir")


class DataSource(Strict):
    path: Path = Field(
        description="Data file: `.txt` (one text a line; for images, one image path a line), `.jsonl` (one JSON "
        "object a line) or `.csv` (a header row); or, for images, a folder (images in sub-folders named by label, "
        "or directly inside it)."
    )
    field: str | None = Field(
        default=None,
        description="The JSON key or CSV column holding the text (for token classification: the "
        "list of words). A .jsonl without it: each record's `text`, or, for text generation, its `messages` "
        "([{role, content}], roles system/user/assistant/tool): a conversation rendered with the model's chat "
        "template, as an instruct model sees it.",
    )
    label_field: str | None = Field(
        default=None,
        description="The key or column holding the label: a class name or id (classification), a "
        "list of tags, one per word (token classification), or the answer text (question answering). With "
        "labels, the report gives the task metric (accuracy, F1, exact match) for FP32 and for each candidate.",
    )
    question_field: str | None = Field(
        default=None, description="Question answering: the key or column of the question."
    )
    context_field: str | None = Field(default=None, description="Question answering: the key or column of the context.")

    @field_validator("path")
    @classmethod
    def _resolve_against_recipe(cls, path: Path, info: ValidationInfo) -> Path:
        base = base_dir_of(info)
        return (base / path.expanduser()).resolve() if base is not None else path

    @model_validator(mode="after")
    def _field_matches_format(self) -> DataSource:
        suffix = self.path.suffix.lower()
        if suffix and suffix not in (".txt", ".jsonl", ".csv"):
            raise ValueError(f"unsupported data file type '{suffix}': use .txt, .jsonl or .csv (or an image folder)")
        records = suffix in (".jsonl", ".csv")
        if suffix == ".csv" and not (self.field or self.question_field):
            raise ValueError(f"a {suffix} file needs `field` (the key or column holding the text)")
        if not records and self.fields():
            raise ValueError(
                "`field` and the other *_field keys are only for .jsonl and .csv files; a .txt file has one text a line"
            )
        if bool(self.question_field) != bool(self.context_field):
            raise ValueError("question answering data needs both `question_field` and `context_field`")
        return self

    def fields(self) -> list[str]:
        """The record fields this source names."""
        return [f for f in (self.field, self.label_field, self.question_field, self.context_field) if f]
