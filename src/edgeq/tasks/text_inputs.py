"""Text as model inputs, with the model's own tokenizer.json (the `tokenizers` library: no torch, no
transformers): its special tokens and post-processor, its pad token, truncation to a shape's length."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeq.errors import ModelError


def pad_token_id(tokenizer, folder: Path) -> int:
    """The model's own pad id: tokenizer_config.json or special_tokens_map.json `pad_token`, else config.json
    `pad_token_id`, else the tokenizer's padding setting, else 0."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        pad = _read_json(folder / name).get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if isinstance(pad, str) and tokenizer.token_to_id(pad) is not None:
            return tokenizer.token_to_id(pad)
    pad_id = _read_json(folder / "config.json").get("pad_token_id")
    if isinstance(pad_id, int):
        return pad_id
    return (tokenizer.padding or {}).get("pad_id", 0)


class TextInputs:
    """Tokenizes texts, text pairs or pre-split words to a shape's length, as int64 numpy arrays."""

    def __init__(self, tokenizer_dir: Path, sequence_length: int, pad_to_length: bool = False):
        from tokenizers import Tokenizer

        self.tokenizer_dir = Path(tokenizer_dir)
        file = self.tokenizer_dir / "tokenizer.json"
        if not file.is_file():
            raise ModelError(
                f"no tokenizer.json in '{tokenizer_dir}'", "Export with `edgeq export` or pass --tokenizer DIR"
            )
        self.sequence_length, self.pad_to_length = sequence_length, pad_to_length
        self.tokenizer = Tokenizer.from_file(str(file))
        self.pad_id = pad_token_id(self.tokenizer, self.tokenizer_dir)
        self.tokenizer.enable_padding(
            pad_id=self.pad_id,
            pad_token=self.tokenizer.id_to_token(self.pad_id) or "[PAD]",
            length=sequence_length if pad_to_length else None,
        )
        self.vocab_size = self.tokenizer.get_vocab_size()

    def for_length(self, sequence_length: int) -> TextInputs:
        """The same tokenizer truncating (and, for a fixed-shape model, padding) to `sequence_length`."""
        if sequence_length == self.sequence_length:
            return self
        return TextInputs(self.tokenizer_dir, sequence_length, self.pad_to_length)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        self.tokenizer.enable_truncation(max_length=self.sequence_length)
        return arrays(self.tokenizer.encode_batch(texts))

    def encode_pairs(self, pairs: list[tuple[str, str]]):
        """(arrays, encodings) of (question, context) pairs; only the context is truncated."""
        self.tokenizer.enable_truncation(max_length=self.sequence_length, strategy="only_second")
        encodings = self.tokenizer.encode_batch(pairs)
        return arrays(encodings), encodings

    def encode_words(self, words: list[list[str]]):
        """(arrays, encodings) of texts already split into words (token classification)."""
        self.tokenizer.enable_truncation(max_length=self.sequence_length)
        encodings = self.tokenizer.encode_batch(words, is_pretokenized=True)
        return arrays(encodings), encodings


def arrays(encodings) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
