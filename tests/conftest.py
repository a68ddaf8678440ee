"""Fixtures: tiny random BERT models built from a config (no download), recipes written for them, a CLI runner."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EDGEQ_QUIET", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "data"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocabulary() -> list[str]:
    words = set()
    for name in ("calibration.txt", "validation.txt"):
        words |= set(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]", (DATA / name).read_text().lower()))
    return SPECIAL + sorted(words)


PLANTED_ISLAND = "encoder.layer.1.output.dense"


def host_device() -> str:
    """The CPU device profile this machine reproduces (x86-avx512-vnni or x86-avx2): validations on it are on-host."""
    from edgeq.targets.profiles import host_cpu_device

    return host_cpu_device()


def make_tiny_bert(
    folder: Path, task: str = "feature-extraction", seed: int = 0, outlier: float = 0.0, padding_outlier: bool = False
) -> Path:
    """A 2-layer BERT (hidden 64) with random weights and a word-level tokenizer, saved with save_pretrained.

    `outlier` > 0 plants a sensitive layer: one channel of layer 1's FFN activation is scaled up by that factor
    (and the next weight scaled down to match), so per-tensor activation quantization of PLANTED_ISLAND's
    input crushes every other channel.

    `padding_outlier` plants a trap that only padding springs: the [PAD] embedding becomes a loud vector, and one
    neuron of layer 0's FFN fires (to ~128) only on rows that look like it, feeding nothing. At batch 1 there is
    no padding and nothing happens; in a padded batch that neuron sets the run-time INT8 scale of
    PADDING_ISLAND's input, whose real values are below 1."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(_vocabulary()) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=len(_vocabulary()),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=3,
    )
    torch.manual_seed(seed)
    model = (BertForSequenceClassification if task == "text-classification" else BertModel)(config)
    if outlier:
        layer = (model.bert if task == "text-classification" else model).encoder.layer[1]
        with torch.no_grad():
            layer.intermediate.dense.weight[5] *= outlier
            layer.intermediate.dense.bias[5] = outlier
            layer.output.dense.weight[:, 5] /= outlier
    if padding_outlier:
        _plant_padding_outlier(model)
    model.save_pretrained(str(folder))
    return folder


PADDING_ISLAND = "encoder.layer.0.output.dense"


def _plant_padding_outlier(model) -> None:
    import torch

    with torch.no_grad():
        model.embeddings.word_embeddings.weight[0] = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 3
        seen = {}
        layer = model.encoder.layer[0]
        hook = layer.intermediate.dense.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0]))
        model(torch.tensor([[5, 6, 7, 0, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0, 0]]))
        hook.remove()
        rows = seen["x"][0]
        direction = rows[3] / rows[3].norm()  # what a padded row looks like at layer 0's FFN
        threshold = 0.6 * float((rows[3:] @ direction).min())
        layer.intermediate.dense.weight[5] = 40.0 * direction
        layer.intermediate.dense.bias[5] = -40.0 * threshold
        layer.output.dense.weight *= 8.0  # the FFN path dominates the residual, so its error shows
        layer.output.dense.weight[:, 5] = 0.0  # the planted neuron feeds nothing: FP32 outputs are unchanged


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-classifier"), task="text-classification", seed=1)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT exported once: a folder with model.onnx, config.json and tokenizer files."""
    from edgeq import api

    return api.export(str(tiny_bert), tmp_path_factory.mktemp("tiny-onnx") / "fp32")


def base_recipe(model_source: str, **sections) -> dict:
    recipe = {
        "name": "tiny",
        "model": {"source": model_source, "task": "feature-extraction"},
        "quantization": {"mode": "dynamic", "op_types": ["MatMul", "Gather"]},
        "validation": {
            "data": {"path": "data/validation.txt"},
            "samples": 24,
            "warmup": 1,
            "thresholds": {"cosine_mean": 0.9},
        },
        "targets": [host_device()],
    }
    for key, value in sections.items():
        recipe[key] = value if not isinstance(value, dict) else {**recipe.get(key, {}), **value}
    return recipe


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe dict (or text) into tmp_path beside a copy of recipes/data; return its path."""
    shutil.copytree(DATA, tmp_path / "data", dirs_exist_ok=True)

    def write(recipe: dict | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


@pytest.fixture
def run_cli():
    """Invoke the edgeq CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from edgeq.cli import cli

    def run(*args: str):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run


def build_bundled_recipe(name: str, folder: Path, adjust) -> tuple:
    """Build recipes/<name>.yaml into `folder` with its data paths made absolute and `adjust(recipe)` applied (a
    lighter test-time variant); returns (BuildResult, report.json)."""
    import json

    import yaml

    from edgeq import api

    recipe = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    for section in (recipe["quantization"]["calibration"], recipe["validation"]):
        section["data"]["path"] = str(ROOT / "recipes" / section["data"]["path"])
    adjust(recipe)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = api.build(folder / "recipe.yaml", output=folder / "build")
    return result, json.loads((folder / "build" / "report.json").read_text())


# What a test may leave in the repository: screenshots kept on purpose, caches of Python and pytest.
LEFT_ON_PURPOSE = {".git", ".venv", "test-artifacts", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}


def _repository_files() -> dict[str, int]:
    """Every file of the repository (outside LEFT_ON_PURPOSE) with its modification time, so a test that rewrites a
    file left by an earlier run is caught as well as one that writes a new file."""
    found = {}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in LEFT_ON_PURPOSE and not d.endswith(".egg-info")]
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, ROOT)] = os.stat(path, follow_symlinks=False).st_mtime_ns
    return found


@pytest.fixture(autouse=True)
def leaves_no_files_in_the_repository():
    """Fails a test that writes into the repository (a build folder, a report, a model) instead of its tmp folder."""
    before = _repository_files()
    yield
    left = sorted(path for path, written in _repository_files().items() if before.get(path) != written)
    if left:
        pytest.fail(f"the test wrote {len(left)} file(s) in the repository: {', '.join(left[:5])}")
