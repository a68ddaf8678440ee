"""edgeq's own small language model, for the demo and the real-model tests: no hub, no download.

`trained:tiny-llama` is a Llama-architecture causal LM (4 layers, hidden 256, 8 heads with 4 key/value heads,
vocabulary 4096, about 5 million parameters) trained here, once, on documentation this machine already has: the
docstrings of Python's standard library and of numpy. A byte-level BPE tokenizer is trained on the same text.
Training takes about 5 minutes on 2 cores and is cached under ~/.cache/edgeq/models (or $EDGEQ_CACHE).

It writes English-like technical prose, badly: what matters is that its weights have the structure training
gives (outlier channels, sensitive layers), so quantization errors measured on it mean something, unlike on
random weights. The modules whose docs are in `recipes/data/lm-*.txt` (calibration, validation) and in
`bench/data/lm-heldout.txt` are left out of its training text."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import warnings
import zlib
from pathlib import Path

NAME = "tiny-llama"
VERSION = 1
STEPS, BATCH, SEQUENCE, LEARNING_RATE = 500, 16, 128, 1e-3
SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "venv",
    "pydoc_data",
}
NUMPY = ("numpy", "numpy.linalg", "numpy.random", "numpy.fft", "numpy.ma", "numpy.polynomial", "numpy.lib")


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq"))
    return root / "models" / f"{NAME}-v{VERSION}"


def split_of(module: str) -> str:
    """train (8 in 10 modules), tune (calibration and validation texts) or heldout, by a stable hash of the name."""
    bucket = zlib.crc32(module.split(".")[0].encode()) % 10
    return {0: "heldout", 1: "tune"}.get(bucket, "train")


def module_docs(name: str, depth: int = 2) -> list[str]:
    """Docstrings (over 80 characters) of a module and of the public classes and functions it defines."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except Exception:
        return []
    found, seen = [], set()

    def walk(obj, level: int) -> None:
        if id(obj) in seen or level < 0:
            return
        seen.add(id(obj))
        try:
            doc = inspect.getdoc(obj)
        except Exception:
            doc = None
        if doc and len(doc) > 80:
            found.append(doc)
        if inspect.ismodule(obj) or inspect.isclass(obj):
            for member_name, member in inspect.getmembers(obj):
                home = getattr(member, "__module__", None) or ""
                if (
                    not member_name.startswith("_")
                    and home.startswith(name.split(".")[0])
                    and (inspect.isclass(member) or inspect.isroutine(member))
                ):
                    walk(member, level - 1)

    walk(module, depth)
    return found


def corpus(split: str) -> list[str]:
    modules = [m for m in sorted(sys.stdlib_module_names) if not m.startswith("_") and m not in SKIP] + list(NUMPY)
    return [doc for m in modules if split_of(m) == split for doc in module_docs(m)]


def train(out: Path | None = None, steps: int = STEPS, say=print) -> Path:
    """Train the model and its tokenizer into `out` (default: the cache folder); return the folder."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from edgeq.atomic import atomic_dir

    out = out or cache_dir()
    texts = corpus("train")
    say(f"  training {NAME}: {len(texts)} docstrings, {sum(map(len, texts)) / 1e6:.1f} M characters, {steps} steps")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=4096, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    eos = tokenizer.token_to_id("<eos>")
    ids = [token for text in texts for token in [*tokenizer.encode(text).ids, eos]]
    stream = torch.tensor(ids, dtype=torch.long)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    config = transformers.LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps, pct_start=0.06)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        starts = torch.randint(0, len(stream) - SEQUENCE - 1, (BATCH,), generator=generator)
        batch = torch.stack([stream[s : s + SEQUENCE] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            say(f"  step {step + 1}/{steps}: loss {loss.item():.3f}")
    with atomic_dir(out) as folder:
        model.save_pretrained(str(folder))
        wrapped = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>", bos_token="<eos>", unk_token=None
        )
        wrapped.save_pretrained(str(folder))
        (folder / "edgeq-training.json").write_text(
            json.dumps(
                {
                    "name": NAME,
                    "version": VERSION,
                    "steps": steps,
                    "batch": BATCH,
                    "sequence": SEQUENCE,
                    "tokens_seen": steps * BATCH * SEQUENCE,
                    "corpus_tokens": len(ids),
                    "final_loss": round(loss.item(), 4),
                    "text": "docstrings of Python's standard library and numpy, modules outside the tune/heldout splits",
                },
                indent=2,
            )
        )
    return out


def ensure(say=print) -> Path:
    """The cached model folder, trained first if it is not there."""
    folder = cache_dir()
    if not (folder / "config.json").is_file():
        say(f"  {NAME} is not trained yet: training it once (about 5 minutes on 2 cores) into {folder}")
        train(folder, say=say)
    return folder


def write_texts(folder: Path, split: str, count: int, seed: int) -> list[str]:
    """Paragraphs (200 to 1200 characters) of one split's docs, for recipe and bench data files."""
    import random

    paragraphs = [p.strip() for doc in corpus(split) for p in doc.split("\n\n") if 200 <= len(p.strip()) <= 1200]
    paragraphs = [" ".join(p.split()) for p in paragraphs]
    random.Random(seed).shuffle(paragraphs)
    return paragraphs[:count]
