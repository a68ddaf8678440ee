"""GGUF files (llama.cpp's format) as model sources: converted once, through transformers' own GGUF loader, into a
Hugging Face folder cached by the file's content.

What the conversion means for fidelity: transformers dequantizes every tensor to FP32, so the "FP32 reference"
of a build from a GGUF is the dequantized GGUF. Its weights already lie on the GGUF's grid (SmolLM2's package:
Q4_1, blocks of 32 with a scale and a minimum), and a 4-bit scheme that matches that grid looks better against it
than it would against the original FP16 weights. `edgeq-gguf.json` in the converted folder records the source,
its hash and its llama.cpp tensor types; the build report repeats them.

transformers' GGUF tokenizer conversion can be wrong for some families (a Unigram model built from BPE merge ranks
was seen). The converted tokenizer is checked against the GGUF's own token list and, for SentencePiece-style
vocabularies, against a reference tokenization by the GGUF's own scores, on sample text; a disagreement is
recorded and said, never silent."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
from collections import Counter
from pathlib import Path

from edgeq.errors import ModelError

MAGIC = b"GGUF"
INFO_FILE = "edgeq-gguf.json"
CONVERTER_VERSION = 2
SAMPLE_TEXTS = (
    "The capital of France is",
    "Quantization keeps a model small; its accuracy must be measured.",
    "def add(a, b):\n    return a + b",
    "Numbers 12345 and naïve café, ünïcode!",
)


def is_gguf(path: Path) -> bool:
    return path.is_file() and (path.suffix.lower() == ".gguf" or _magic(path) == MAGIC)


def gguf_in_package(folder: Path) -> Path | None:
    """The one .gguf file a package ships at its top level, if any."""
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def package_folder(module_name: str) -> Path | None:
    """A package's folder, found without importing it (a model package may import heavy runtimes)."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    return Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq"))


def converted_folder(gguf_path: Path, say=print) -> Path:
    """The Hugging Face folder converted from `gguf_path` (cached by its content); converted first if needed."""
    from edgeq.atomic import atomic_dir

    _check_magic(gguf_path)
    digest = _sha256(gguf_path)
    folder = cache_root() / "models" / f"gguf-{digest[:16]}-v{CONVERTER_VERSION}"
    if (folder / INFO_FILE).is_file() and (folder / "config.json").is_file():
        return folder
    reader, header = open_gguf(gguf_path)
    say(
        f"  converting {gguf_path.name} ({header['architecture']}, {gguf_path.stat().st_size / 1e6:.0f} MB) "
        f"to a Hugging Face folder, once: {folder}"
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as scratch:
        tokenizer = _convert(gguf_path, header, scratch)
        repaired = repair_byte_level_tokenizer(reader, scratch)
        check = {**check_tokenizer(reader, tokenizer), "repaired": repaired}
        info = {
            "source": str(gguf_path),
            "sha256": digest,
            **header,
            "tokenizer_check": check,
            "reference_note": "the FP32 reference is the dequantized GGUF: its weights lie on the GGUF's grid",
        }
        (scratch / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    if not check["agrees"]:
        say(f"  [yellow]warning[/yellow]: the converted tokenizer disagrees with the GGUF's own: {check['detail']}")
    return folder


def _check_magic(gguf_path: Path) -> None:
    if _magic(gguf_path) != MAGIC:
        raise ModelError(
            f"'{gguf_path}' is not a GGUF file (it does not start with 'GGUF')",
            "Give a llama.cpp .gguf file, or a Hugging Face folder",
        )


def open_gguf(gguf_path: Path) -> tuple:
    """The file's reader (read once, for the conversion and both tokenizer passes) and its header: architecture,
    tensor count and llama.cpp tensor types; one ModelError for a corrupt or truncated file."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelError("reading a GGUF source needs the 'gguf' package", "pip install 'edgeq[gguf]'") from None
    try:
        reader = GGUFReader(str(gguf_path))
        architecture = _field_text(reader, "general.architecture")
        types = Counter(t.tensor_type.name for t in reader.tensors)
        tensors = len(reader.tensors)
    except Exception as exc:
        raise ModelError(
            f"GGUF file '{gguf_path}' is corrupt or truncated ({type(exc).__name__}: {_first_line(exc)})",
            "Download it again and check its size",
        ) from None
    return reader, {
        "architecture": architecture,
        "tensors": tensors,
        "tensor_types": dict(types.most_common()),
        "name": _field_text(reader, "general.name", default=None),
    }


def _convert(gguf_path: Path, header: dict, out: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        raise ModelError(
            "converting a GGUF source needs torch and transformers", "pip install 'edgeq[export,gguf]'"
        ) from None
    architecture = header["architecture"]
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"GGUF architecture '{architecture}' cannot be loaded by transformers' GGUF loader",
            f"It loads: {', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer'))}",
        )
    _quiet()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the loader's own progress bar: edgeq says what it does
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:
        raise ModelError(
            f"transformers could not load GGUF '{gguf_path}' ({type(exc).__name__}: {_first_line(exc)})",
            "Check that the file is whole and its architecture is a decoder transformers knows",
        ) from None
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return tokenizer


def check_tokenizer(reader, tokenizer) -> dict:
    """Does the converted tokenizer agree with the GGUF's own token list (every id) and, for a SentencePiece-style
    vocabulary, with the GGUF's own score-driven merges on sample text?"""
    tokens = _field_list(reader, "tokenizer.ggml.tokens")
    kind = _field_text(reader, "tokenizer.ggml.model", default="")
    converted = tokenizer.convert_ids_to_tokens(list(range(len(tokens))))
    wrong = [i for i, (a, b) in enumerate(zip(tokens, converted)) if a != b]
    result = {
        "gguf_tokenizer": kind,
        "vocabulary": len(tokens),
        "ids_differing": len(wrong),
        "agrees": not wrong,
        "detail": f"{len(wrong)} of {len(tokens)} token ids map to other strings (first: id {wrong[0]})"
        if wrong
        else "",
    }
    if kind == "llama" and not wrong:  # SentencePiece vocabulary with scores: tokenize as llama.cpp does
        scores = _field_list(reader, "tokenizer.ggml.scores")
        reference = ScoreMerges(tokens, scores)
        for text in SAMPLE_TEXTS:
            ours = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
            theirs = reference.tokenize(text, add_prefix=_field_value(reader, "tokenizer.ggml.add_space_prefix", True))
            if ours != theirs:
                result.update(
                    agrees=False,
                    detail=f"{text!r} is {len(ours)} pieces here and {len(theirs)} by the GGUF's own merges",
                )
                break
    if kind == "gpt2" and not wrong:  # byte-level BPE: the converted model must be BPE with the GGUF's merges
        result.update(_check_bpe(tokenizer, tokens, _field_list(reader, "tokenizer.ggml.merges")))
    result["samples_checked"] = len(SAMPLE_TEXTS) if kind in ("llama", "gpt2") else 0
    return result


def _check_bpe(tokenizer, tokens: list[str], merges: list[str]) -> dict:
    """A BPE tokenizer built from the GGUF's own vocabulary and merges, with the converted pre-tokenizer, must cut
    the sample texts into the same pieces."""
    from tokenizers import Tokenizer, models

    backend = getattr(tokenizer, "backend_tokenizer", None)
    kind = type(backend.model).__name__ if backend is not None else "none"
    if kind != "BPE":
        return {
            "agrees": False,
            "detail": f"the GGUF's vocabulary is byte-level BPE, the converted tokenizer is {kind}",
        }
    reference = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ", 1)) for m in merges]))
    reference.normalizer, reference.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    for text in SAMPLE_TEXTS:
        ours = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
        theirs = reference.encode(text, add_special_tokens=False).tokens
        if ours != theirs:
            return {
                "agrees": False,
                "detail": f"{text!r} is {len(ours)} pieces here and {len(theirs)} by the GGUF's own merges",
            }
    return {}


def repair_byte_level_tokenizer(reader, folder: Path) -> list[str]:
    """Undo what transformers' GGUF conversion gets wrong for a byte-level BPE vocabulary (tokenizer.ggml.model
    "gpt2"), measured on SmolLM2's: it writes a SentencePiece-style tokenizer.json (byte fallback, a decoder that maps
    '▁' to spaces) that onnxruntime-genai's tokenizer then cuts into unknown ids (-1) at every space; it adds the BOS
    token the GGUF says not to add (tokenizer.ggml.add_bos_token false); and its tokenizer_config names BOS as EOS.
    The GGUF's own fields decide. Returns what was changed, for the conversion record."""
    if _field_text(reader, "tokenizer.ggml.model", default="") != "gpt2":
        return []
    tokens = _field_list(reader, "tokenizer.ggml.tokens")
    add_bos = bool(_field_value(reader, "tokenizer.ggml.add_bos_token", False))
    bos_id, eos_id = (
        _field_value(reader, "tokenizer.ggml.bos_token_id"),
        _field_value(reader, "tokenizer.ggml.eos_token_id"),
    )
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    changed = []
    if data.get("model", {}).get("byte_fallback"):
        data["model"]["byte_fallback"] = False
        changed.append("byte fallback off (a byte-level vocabulary has every byte)")
    if (data.get("decoder") or {}).get("type") != "ByteLevel":
        data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        changed.append("byte-level decoder")
    if not add_bos and (data.get("post_processor") or {}).get("type") == "TemplateProcessing":
        data["post_processor"] = {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        }
        changed.append("no BOS added to every text (tokenizer.ggml.add_bos_token is false)")
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    wanted = {"add_bos_token": add_bos}
    if isinstance(eos_id, int) and eos_id < len(tokens):
        wanted["eos_token"] = tokens[eos_id]
    if isinstance(bos_id, int) and bos_id < len(tokens):
        wanted["bos_token"] = tokens[bos_id]
    for key, value in wanted.items():
        if config.get(key) != value:
            changed.append(f"{key} {config.get(key)!r} -> {value!r} (the GGUF's own)")
            config[key] = value
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return changed


class ScoreMerges:
    """llama.cpp's SentencePiece-style tokenization: characters (spaces as '▁'), then repeatedly merge the adjacent
    pair whose joined string is a token with the highest score; characters outside the vocabulary as <0xNN>."""

    def __init__(self, tokens: list[str], scores: list[float]):
        self.score = {t: float(s) for t, s in zip(tokens, scores)}

    def tokenize(self, text: str, add_prefix: bool = True) -> list[str]:
        text = ("▁" if add_prefix and not text.startswith(" ") else "") + text.replace(" ", "▁")
        pieces = list(text)
        while True:
            best, where = None, -1
            for i in range(len(pieces) - 1):
                joined = pieces[i] + pieces[i + 1]
                if joined in self.score and (best is None or self.score[joined] > best):
                    best, where = self.score[joined], i
            if where < 0:
                break
            pieces[where : where + 2] = [pieces[where] + pieces[where + 1]]
        out = []
        for piece in pieces:
            out += [piece] if piece in self.score else [f"<0x{b:02X}>" for b in piece.encode("utf-8")]
        return out


def describe(model_dir: Path) -> dict | None:
    """The conversion record of a folder converted from a GGUF, for the report."""
    path = Path(model_dir) / INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError:
        return b""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _field_value(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None or not field.data:
        return default
    return field.parts[field.data[0]].tolist()[0] if len(field.data) == 1 else default


def _field_text(reader, key: str, default: str | None = "unknown") -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return default
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def _field_list(reader, key: str) -> list:
    field = reader.fields.get(key)
    if field is None:
        return []
    values = [field.parts[i] for i in field.data]
    if values and values[0].dtype.kind == "u" and values[0].dtype.itemsize == 1:
        return [bytes(v).decode("utf-8", errors="replace") for v in values]
    return [v.tolist()[0] for v in values]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]


def _quiet() -> None:
    from edgeq.buildlog import route_transformers

    route_transformers()
