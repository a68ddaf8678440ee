"""Tiny random models of many architectures, built from configs (no download), with a tokenizer of the kind the
architecture uses (WordPiece, byte-level BPE, or a SentencePiece-style Unigram trained here on the project's own
texts) or an image processor. Random weights: they prove mechanics, never quality."""

from __future__ import annotations

import json
import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data"
TEST_DATA = Path(__file__).resolve().parents[1] / "recipes" / "data"  # the labelled samples edgeq ships
TEXT_LABELS = ["negative", "neutral", "positive"]
ENTITY_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
IMAGE_LABELS = ["astronaut", "cat", "coffee", "rocket"]
WORDPIECE = {"bert", "distilbert", "electra", "mobilebert", "mpnet", "squeezebert", "roformer"}
TEXT_ARCHITECTURES = (
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "albert",
    "electra",
    "mpnet",
    "deberta-v2",
    "mobilebert",
)
VISION_ARCHITECTURES = ("vit", "deit", "swin")


def corpus() -> list[str]:
    lines = []
    for file in (DATA / "calibration.txt", DATA / "validation.txt"):
        lines += [line for line in file.read_text().splitlines() if line.strip()]
    for file in sorted(TEST_DATA.glob("*.jsonl")):
        for line in file.read_text().splitlines():
            record = json.loads(line)
            lines += [
                " ".join(x["content"] if isinstance(x, dict) else str(x) for x in v) if isinstance(v, list) else str(v)
                for v in record.values()
            ]
    return lines


def _vocabulary(special: list[str]) -> list[str]:
    words = set()
    for line in corpus():
        words |= set(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]", line.lower()))
    return special + sorted(words)


def _trained(kind: str, special: list[str]):
    """A `tokenizers` model trained on the project's texts: byte-level BPE or a Metaspace Unigram."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=800, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=800, special_tokens=special, unk_token="<unk>")
    tokenizer.train_from_iterator(corpus(), trainer)
    return tokenizer


def _with_template(tokenizer, cls: str, sep: str, pair_sep: str):
    from tokenizers.processors import TemplateProcessing

    ids = {t: tokenizer.token_to_id(t) for t in {cls, sep}}
    tokenizer.post_processor = TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {pair_sep} $B:1 {sep}:1", special_tokens=list(ids.items())
    )
    return tokenizer


def save_tokenizer(arch: str, folder: Path) -> dict:
    """Write the tokenizer files for `arch` into `folder`; return the config values it implies."""
    import transformers

    if arch in WORDPIECE:
        special = (
            ["<pad>", "[UNK]", "<s>", "</s>", "<mask>"]
            if arch == "mpnet"
            else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        )
        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(_vocabulary(special)) + "\n")
        cls = {
            "bert": "BertTokenizerFast",
            "distilbert": "DistilBertTokenizerFast",
            "electra": "ElectraTokenizerFast",
            "mobilebert": "MobileBertTokenizerFast",
            "mpnet": "MPNetTokenizerFast",
            "squeezebert": "SqueezeBertTokenizerFast",
            "roformer": "BertTokenizerFast",
        }[arch]  # RoFormer's own needs rjieba (Chinese); same WordPiece
        tokenizer = getattr(transformers, cls)(vocab_file=str(vocab), do_lower_case=True)
    elif arch == "roberta":
        raw = _with_template(_trained("bpe", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), "<s>", "</s>", "</s> </s>")
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=raw,
            bos_token="<s>",
            eos_token="</s>",
            cls_token="<s>",
            sep_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            mask_token="<mask>",
        )
    elif arch in ("xlm-roberta", "camembert"):
        raw = _with_template(
            _trained("unigram", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), "<s>", "</s>", "</s> </s>"
        )
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=raw,
            bos_token="<s>",
            eos_token="</s>",
            cls_token="<s>",
            sep_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            mask_token="<mask>",
        )
    else:  # albert, deberta-v2: SentencePiece-style Unigram with [CLS]/[SEP]
        special = (
            ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
            if arch == "albert"
            else ["[PAD]", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
        )
        raw = _with_template(_trained("unigram", special), "[CLS]", "[SEP]", "[SEP]")
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=raw,
            cls_token="[CLS]",
            sep_token="[SEP]",
            pad_token=special[0],
            unk_token="<unk>",
            mask_token="[MASK]",
        )
    tokenizer.save_pretrained(str(folder))
    return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}


def text_config(arch: str, vocab: dict, labels: list[str] | None, positions: int = 160):
    import transformers

    small = dict(vocab_size=vocab["vocab_size"], pad_token_id=vocab["pad_token_id"], max_position_embeddings=positions)
    layers = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    configs = {
        "bert": lambda: transformers.BertConfig(**small, **layers),
        "distilbert": lambda: transformers.DistilBertConfig(**small, dim=64, n_layers=2, n_heads=4, hidden_dim=128),
        "roberta": lambda: transformers.RobertaConfig(
            **small, **layers, bos_token_id=0, eos_token_id=2, type_vocab_size=1
        ),
        "xlm-roberta": lambda: transformers.XLMRobertaConfig(
            **small, **layers, bos_token_id=0, eos_token_id=2, type_vocab_size=1
        ),
        "camembert": lambda: transformers.CamembertConfig(
            **small, **layers, bos_token_id=0, eos_token_id=2, type_vocab_size=1
        ),
        "squeezebert": lambda: transformers.SqueezeBertConfig(**small, **layers, embedding_size=64),
        "roformer": lambda: transformers.RoFormerConfig(**small, **layers, embedding_size=64),
        "albert": lambda: transformers.AlbertConfig(**small, **layers, embedding_size=32),
        "electra": lambda: transformers.ElectraConfig(**small, **layers, embedding_size=32),
        "mpnet": lambda: transformers.MPNetConfig(**small, **layers),
        "deberta-v2": lambda: transformers.DebertaV2Config(**small, **layers, max_relative_positions=64),
        "mobilebert": lambda: transformers.MobileBertConfig(
            **small,
            hidden_size=64,
            embedding_size=32,
            intra_bottleneck_size=32,
            true_hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=64,
            num_feedforward_networks=2,
        ),
    }
    config = configs[arch]()
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    return config


HEADS = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "image-classification": "AutoModelForImageClassification",
}
TASK_LABELS = {"text-classification": TEXT_LABELS, "token-classification": ENTITY_LABELS}


def make_text_model(folder: Path, arch: str, task: str, seed: int = 0, positions: int = 160) -> Path:
    """A tiny `arch` model for `task`; `positions` is its max_position_embeddings (the longest text it takes;
    RoBERTa-style models reserve pad_token_id + 1 of them)."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(arch, folder)
    config = text_config(arch, vocab, TASK_LABELS.get(task), positions)
    torch.manual_seed(seed)
    getattr(transformers, HEADS[task]).from_config(config).save_pretrained(str(folder))
    return folder


def make_vision_model(folder: Path, arch: str, seed: int = 0) -> Path:
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    labels = dict(id2label=dict(enumerate(IMAGE_LABELS)), label2id={n: i for i, n in enumerate(IMAGE_LABELS)})
    if arch == "swin":
        config = transformers.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, **labels
        )
        processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    else:
        shape = dict(
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            **labels,
        )
        config = transformers.ViTConfig(**shape) if arch == "vit" else transformers.DeiTConfig(**shape)
        processor = (
            transformers.ViTImageProcessor(size={"height": 32, "width": 32})
            if arch == "vit"
            else transformers.DeiTImageProcessor(
                size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}
            )
        )
    torch.manual_seed(seed)
    head = transformers.DeiTForImageClassification if arch == "deit" else transformers.AutoModelForImageClassification
    (head(config) if arch == "deit" else head.from_config(config)).save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def make_image_folder(folder: Path, per_label: int = 4) -> Path:
    """Real photos shipped inside scikit-image, one sub-folder per label, several crops of each."""
    import numpy as np
    import skimage.data
    from PIL import Image

    sources = {
        "astronaut": skimage.data.astronaut,
        "cat": skimage.data.chelsea,
        "coffee": skimage.data.coffee,
        "rocket": skimage.data.rocket,
    }
    for label, load in sources.items():
        image = np.asarray(load())
        (folder / label).mkdir(parents=True, exist_ok=True)
        height, width = image.shape[:2]
        for k in range(per_label):
            top, left = (k * height // (3 * per_label)), (k * width // (3 * per_label))
            crop = image[top : top + 2 * height // 3, left : left + 2 * width // 3]
            Image.fromarray(crop[:, ::-1] if k % 2 else crop).save(folder / label / f"{label}_{k}.png")
    return folder


DECODERS = ("gpt2", "llama", "qwen2")


def decoder_config(arch: str, vocab: dict, **overrides):
    import transformers

    common = {"vocab_size": vocab["vocab_size"], "pad_token_id": vocab["pad_token_id"], **overrides}
    if arch == "gpt2":
        return transformers.GPT2Config(**common, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    shape = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return (transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config)(**common, **shape)


def make_decoder(folder: Path, arch: str, seed: int = 0, planted: bool = False, **config) -> Path:
    """A tiny random decoder with a byte-level BPE tokenizer. `planted` (Llama/Qwen2) makes PLANTED_DECODER_ISLAND
    sensitive to 4-bit rounding only: one input channel is always zero (its norm weight is 0), and that channel's
    weights in the value projection are huge. The fused decoder graph packs Q, K and V into one MatMul: that is the
    island. FP32 outputs do not see them; a block's round-to-nearest scale does."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer("roberta", folder)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(decoder_config(arch, vocab, **config))
    if planted:
        layer = model.model.layers[1]
        with torch.no_grad():
            layer.input_layernorm.weight[7] = 0.0
            layer.self_attn.v_proj.weight[:, 7] = 40.0
    model.save_pretrained(str(folder))
    return folder


PLANTED_DECODER_ISLAND = "model.layers.1.self_attn.qkv_proj"
