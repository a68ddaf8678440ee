"""A language model end to end, on tiny random decoders and synthetic files (mechanics, not quality): GGUF sources
and their errors, chat data, streamed metrics equal to the whole-array ones, the tied LM head, a final/ that
onnxruntime-genai runs with edgeq's own greedy tokens, and `edgeq generate`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import DATA, base_recipe
from tiny_models import make_decoder

from edgeq import api
from edgeq.tasks.base import Batch
from edgeq.tasks.text_generation import TASK, TokenComparison, compare_logits, top_tokens
from edgeq.validate.metrics import fidelity


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------ GGUF sources
def test_a_file_that_is_not_gguf_is_refused_in_one_line(run_cli, write_recipe, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf at all")
    line = one_error_line(run_cli("build", write_recipe(base_recipe(str(fake)))))
    assert (
        line
        == f"Error: '{fake}' is not a GGUF file (it does not start with 'GGUF'). Give a llama.cpp .gguf file, or a Hugging Face folder"
    )


def test_a_truncated_gguf_is_refused_in_one_line(run_cli, write_recipe, tmp_path):
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (10).to_bytes(8, "little"))  # 10 tensors, then nothing
    line = one_error_line(run_cli("build", write_recipe(base_recipe(str(truncated)))))
    assert line.startswith(f"Error: GGUF file '{truncated}' is corrupt or truncated (")


def test_a_gguf_architecture_transformers_cannot_load_is_named(run_cli, write_recipe, tmp_path):
    import gguf

    path = tmp_path / "encoder.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    line = one_error_line(run_cli("build", write_recipe(base_recipe(str(path)))))
    assert line.startswith("Error: GGUF architecture 'bert' cannot be loaded by transformers' GGUF loader. It loads: ")


def test_score_merges_tokenize_as_llama_cpp_does():
    from edgeq.export.gguf import ScoreMerges

    tokens = ["▁", "t", "h", "e", "▁t", "he", "▁the", "c", "a", "▁c", "at", "▁cat"]
    scores = [0, 0, 0, 0, -3, -2, -1, 0, 0, -4, -5, -0.5]
    assert ScoreMerges(tokens, scores).tokenize("the cat") == ["▁the", "▁cat"]
    assert ScoreMerges(tokens, scores).tokenize("thé") == ["▁t", "h", "<0xC3>", "<0xA9>"]


# ------------------------------------------------------------------ chat data
@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    folder = make_decoder(tmp_path_factory.mktemp("chat-llama"), "llama")
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return folder


def test_messages_are_rendered_with_the_chat_template(chat_llama, tmp_path):
    from edgeq.recipe.schema import DataSource

    data = tmp_path / "chat.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]})
        + "\n"
    )
    samples = TASK.read(DataSource(path=data), None, "validation.data", chat_llama)
    assert [s.text for s in samples] == ["<|user|>Hi there\n<|assistant|>Hello!\n"]


def test_a_message_with_an_unknown_role_is_named(run_cli, write_recipe, chat_llama, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}]})
        + "\n"
        + json.dumps({"messages": [{"role": "narrator", "content": "b"}]})
        + "\n"
    )
    recipe = base_recipe(
        str(chat_llama),
        model={"task": "text-generation"},
        validation={"data": {"path": str(data)}, "thresholds": {"cosine_mean": None}},
    )
    line = one_error_line(run_cli("build", write_recipe(recipe)))
    assert line == (
        f"Error: validation.data: '{data}' line 2: message 0 has an unknown role 'narrator'. "
        "Roles: system, user, assistant, tool"
    )


# ------------------------------------------------------------------ streamed metrics
def test_streamed_comparisons_give_the_whole_array_figures():
    rng = np.random.default_rng(0)
    reference = [rng.normal(size=(n, 50)).astype(np.float32) for n in (7, 12)]
    candidate = [r + rng.normal(scale=0.3, size=r.shape).astype(np.float32) for r in reference]
    ids = np.zeros((2, 12), np.int64)
    ids[0, :7], ids[1] = rng.integers(0, 50, 7), rng.integers(0, 50, 12)
    batch = Batch({"input_ids": ids}, np.ones_like(ids), [])
    streamed = TASK.metrics(None, TASK.pair(reference, candidate, batch), [], None)
    whole = fidelity(reference, candidate)
    for key in ("cosine_mean", "cosine_min", "max_abs_error", "mean_abs_error", "sqnr_db"):
        assert streamed[key] == pytest.approx(whole[key], rel=1e-5), key
    exact = np.concatenate([c.kl for c in TASK.pair(reference, candidate, batch)])
    manual = []
    for r, c in zip(reference, candidate):
        p = np.exp(r - r.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        q = np.exp(c - c.max(-1, keepdims=True))
        q /= q.sum(-1, keepdims=True)
        manual.append((p * np.log(p / q)).sum(-1))
    assert np.allclose(exact, np.concatenate(manual), atol=1e-6)
    assert streamed["perplexity"] > 0 and streamed["tokens"] == 19


def test_a_stored_reference_keeps_its_top_tokens_and_bounds_the_kl_from_below():
    rng = np.random.default_rng(1)
    reference = rng.normal(scale=3, size=(9, 400)).astype(np.float32)
    candidate = reference + rng.normal(scale=0.5, size=reference.shape).astype(np.float32)
    ids = rng.integers(0, 400, 9)
    exact = compare_logits(reference, candidate, ids).kl
    coarse = compare_logits(top_tokens(reference, keep=256), candidate, ids)
    assert isinstance(coarse, TokenComparison) and np.all(coarse.kl <= exact + 1e-9)
    assert np.allclose(coarse.kl, exact, rtol=0.1)  # 256 of 400 tokens hold nearly all the mass here


# ------------------------------------------------------------------ the tied LM head, genai, generate
@pytest.fixture(scope="module")
def tied_build(tmp_path_factory):
    folder = make_decoder(tmp_path_factory.mktemp("tied-llama"), "llama", tie_word_embeddings=True)
    recipe = base_recipe(
        str(folder),
        model={"task": "text-generation"},
        quantization={"mode": "int4", "op_types": ["MatMul", "Gather"]},
        validation={
            "data": {"path": str(DATA / "validation.txt")},
            "samples": 8,
            "sequence_length": 32,
            "thresholds": {"cosine_mean": None},
        },
    )
    out = tmp_path_factory.mktemp("tied-build")
    (out / "recipe.yaml").write_text(json.dumps(recipe))
    return api.build(out / "recipe.yaml", output=out / "build")


def test_a_tied_lm_head_is_quantized_too(tied_build):
    model = onnx.load(str(tied_build.out_dir / "final" / "model.onnx"))
    head = next(n for n in model.graph.node if n.output[0] == "logits")
    assert head.op_type == "MatMulNBits"
    assert any(n.op_type == "GatherBlockQuantized" for n in model.graph.node)
    assert next(a.i for a in head.attribute if a.name == "accuracy_level") == 4


def test_genai_runs_the_final_folder_with_edgeqs_own_greedy_tokens(tied_build, run_cli):
    pytest.importorskip("onnxruntime_genai")
    final = tied_build.out_dir / "final"
    assert json.loads((final / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "model.onnx"
    runs = {}
    for engine in ("genai", "onnxruntime"):
        result = run_cli(
            "generate",
            str(tied_build.out_dir),
            "The river runs",
            "--max-tokens",
            "12",
            "--engine",
            engine,
            "--json",
            "-",
        )
        assert result.exit_code == 0, result.stderr
        runs[engine] = json.loads(result.stdout)
    assert runs["genai"]["engine"] == "onnxruntime-genai" and runs["onnxruntime"]["engine"] == "onnxruntime"
    assert runs["genai"]["tokens"] == runs["onnxruntime"]["tokens"] and len(runs["genai"]["tokens"]) >= 1
    assert runs["genai"]["tokens_per_s"] > 0 and runs["genai"]["peak_rss_mb"] > 0


def test_generate_errors(tied_build, run_cli):
    line = one_error_line(run_cli("generate", str(tied_build.out_dir), "hello", "--chat"))
    assert line.startswith("Error: the model in '") and line.endswith(
        "has no chat template. Give plain text, or a model whose tokenizer_config.json or chat_template.jinja has one"
    )
    long_prompt = " ".join(["river"] * 600)
    line = one_error_line(run_cli("generate", str(tied_build.out_dir), long_prompt, "--engine", "onnxruntime"))
    assert "over the model's context of" in line or "exceed the model's context of" in line


# ------------------------------------------------------------------ bounded memory
def test_a_262k_vocabulary_decoder_builds_in_bounded_memory(tmp_path):
    """Logits of 262,144 tokens x 64 positions are 67 MB a text: holding them for 24 validation texts and four models,
    as validation once did, would take over 6 GB. The build reduces them batch by batch; its peak RSS (the whole
    build in a child process: export, quantization, search, validation) is asserted under 4 GB."""
    import os
    import subprocess
    import sys

    import yaml

    folder = make_decoder(tmp_path / "wide", "llama", vocab_size=262_144, tie_word_embeddings=True)
    recipe = base_recipe(
        str(folder),
        model={"task": "text-generation"},
        quantization={
            "mode": "int4",
            "op_types": ["MatMul", "Gather"],
            "calibration": {"data": {"path": str(DATA / "calibration.txt")}, "samples": 8, "sequence_length": 64},
        },
        mixed_precision={
            "proxy_samples": 4,
            "candidates": ["int4", "w8"],
            "budget": {"min_cosine_mean": None, "max_size_over_lowest": 1.2, "ceilings": {"kl_divergence_mean": 1e-9}},
        },
        validation={
            "data": {"path": str(DATA / "validation.txt")},
            "samples": 24,
            "sequence_length": 64,
            "thresholds": {"cosine_mean": None},
        },
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # a fresh parent whose only child is the build: its RUSAGE_CHILDREN peak is the build's own
    measure = (
        "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            measure,
            sys.executable,
            "-m",
            "edgeq.cli",
            "build",
            str(path),
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEQ_QUIET": "1"},
    )
    code, peak_kb = (int(v) for v in done.stdout.split()[-2:])
    assert code in (0, 3), done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {v["artifact"] for v in report["validations"]} == {"fp32", "int4", "mixed"}
    assert peak_kb / 1024 < 4000, f"peak RSS {peak_kb / 1024:.0f} MB"  # measured 3.1 GB here (export included)


# ------------------------------------------------------------------ the 4-bit grid of a GGUF, and 8-bit blocks
def _run_candidate(candidate, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    k, n = weight.shape
    graph = helper.make_graph(
        candidate.nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, n])],
        candidate.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_int4_with_offsets_reproduces_a_q4_1_grid_exactly():
    from onnx import helper

    from edgeq.mixed_precision.candidates import matmul_int4, matmul_int4_offset, matmul_int8_blocks

    rng = np.random.default_rng(3)
    k, n = 96, 40
    d = rng.uniform(0.01, 0.03, (k // 32, n)).astype(np.float16).astype(np.float64)
    m = rng.normal(scale=0.2, size=(k // 32, n)).astype(np.float16).astype(np.float64)
    q = rng.integers(0, 16, (k // 32, 32, n))
    q[:, 0], q[:, 1] = 0, 15  # every block uses its whole range, as llama.cpp's Q4_1 does
    weight = (d[:, None] * q + m[:, None]).reshape(k, n).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="/layer/proj/MatMul")
    x = rng.normal(size=(2, 5, k)).astype(np.float32)
    exact = x.astype(np.float64) @ weight.astype(np.float64)
    offset = _run_candidate(matmul_int4_offset(node, weight), weight, x)
    integer = _run_candidate(matmul_int4(node, weight), weight, x)
    eight = _run_candidate(matmul_int8_blocks(node, weight), weight, x)
    assert np.abs(offset - exact).max() < 1e-4 * np.abs(exact).max()  # on the grid: exact up to float rounding
    assert np.abs(integer - exact).max() > 100 * np.abs(offset - exact).max()  # integer zero points move weights
    assert np.abs(eight - exact).max() < 0.02 * np.abs(exact).max()


def test_the_report_says_a_model_came_from_a_gguf_and_what_its_reference_is():
    from edgeq.report import _source_lines

    source = {
        "source": "/x/m.gguf",
        "architecture": "llama",
        "tensor_types": {"Q4_1": 210, "F32": 61},
        "tokenizer_check": {"agrees": False, "detail": "'The' is 3 pieces here and 1 by the GGUF's own merges"},
        "note": "the FP32 reference is the dequantized GGUF",
    }
    line = _source_lines(source)[0]
    assert (
        "210 Q4_1, 61 F32" in line and "**disagrees**" in line and "The FP32 reference is the dequantized GGUF" in line
    )


def test_a_relative_ceiling_is_set_from_the_all_lowest_models_measurement():
    from edgeq.mixed_precision.search import Budget

    budget = Budget(
        min_cosine_mean=None, ceilings={"perplexity": 50.0}, ceilings_over_lowest={"kl_divergence_mean": 0.5}
    )
    said = budget.settle({"kl_divergence_mean": 0.4, "perplexity": 60.0})
    assert budget.ceilings == {"perplexity": 50.0, "kl_divergence_mean": 0.2}
    assert said == ["ceiling kl_divergence_mean = 0.5 x the all-lowest model's 0.4 = 0.2"]
    assert budget.fidelity_failures({"kl_divergence_mean": 0.3, "perplexity": 40.0}) == [
        "kl_divergence_mean 0.3000 > 0.2"
    ]


def test_a_build_that_cannot_fit_is_refused_before_it_starts(run_cli, write_recipe, tmp_path, monkeypatch):
    import edgeq.headroom

    folder = make_decoder(tmp_path / "small", "llama")
    monkeypatch.setattr(edgeq.headroom, "available_bytes", lambda: 200 * 2**20)
    recipe = base_recipe(
        str(folder), model={"task": "text-generation"}, validation={"thresholds": {"cosine_mean": None}}
    )
    line = one_error_line(run_cli("build", write_recipe(recipe), "-o", str(tmp_path / "out")))
    assert (
        line.startswith("Error: this build needs about ")
        and "GiB at peak and this machine has 0.2 GiB available" in line
    )
    assert not (tmp_path / "out").exists()


def test_a_decoder_genai_has_no_type_for_is_said_not_failed(tmp_path):
    from edgeq.genai import unsupported

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    assert unsupported(tmp_path) == "onnxruntime-genai has no decoder type for model_type 'falcon'"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert unsupported(tmp_path) is None


# ------------------------------------------------------------------ the fused decoder graph and the tied table
def _decoder_logits(model_path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": np.maximum(np.cumsum(mask, 1) - 1, 0)}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            feed[spec.name] = np.zeros((ids.shape[0], spec.shape[1], 0, spec.shape[3]), np.float32)
    names = {s.name for s in session.get_inputs()}
    return session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_fused_decoder_graph_computes_what_optimums_trace_does(arch, tmp_path):
    from edgeq.export import export_onnx

    folder = make_decoder(tmp_path / arch, arch, tie_word_embeddings=arch == "llama")
    fused = export_onnx(folder, tmp_path / "fused", "text-generation-with-past", 17, decoder="fused")
    traced = export_onnx(folder, tmp_path / "traced", "text-generation-with-past", 17, decoder="traced")
    ids = np.array([[5, 17, 99, 3, 42, 8], [7, 11, 64, 0, 0, 0]], np.int64)  # the second row right-padded
    mask = (np.arange(6) < np.array([[6], [3]])).astype(np.int64)
    a, b = _decoder_logits(fused, ids, mask), _decoder_logits(traced, ids, mask)
    real = mask.astype(bool)
    assert np.abs(a[real] - b[real]).max() < 1e-4 * max(1.0, np.abs(b[real]).max())
    nodes = {name: len(onnx.load(str(p)).graph.node) for name, p in (("fused", fused), ("traced", traced))}
    assert nodes["fused"] * 4 < nodes["traced"], nodes
    assert not {"position_ids"} & {i.name for i in onnx.load(str(fused)).graph.input}


def test_a_fused_graph_asked_of_a_model_it_cannot_write_is_one_error_line(run_cli, write_recipe, tmp_path):
    folder = make_decoder(tmp_path / "gelu", "llama", hidden_act="gelu")
    recipe = base_recipe(
        str(folder),
        model={"task": "text-generation"},
        export={"decoder": "fused"},
        quantization={"mode": "int4", "op_types": ["MatMul"]},
    )
    line = one_error_line(run_cli("build", write_recipe(recipe), "-o", str(tmp_path / "out")))
    assert "export.decoder 'fused' cannot be written" in line and "hidden_act 'gelu'" in line


def test_every_rung_of_a_tied_head_gives_its_lookup_and_shareable_ones_store_one_table(tmp_path):
    import onnxruntime as ort

    from edgeq.export.decoder import export_decoder
    from edgeq.mixed_precision.assemble import assemble
    from edgeq.mixed_precision.islands import build_candidates, find_islands

    folder = make_decoder(tmp_path / "tied", "llama", tie_word_embeddings=True)
    path = export_decoder(folder, tmp_path / "fp32" / "model.onnx", 17)
    fp32 = onnx.load(str(path))
    islands = find_islands(fp32, ["MatMul", "Gather"])
    head = next(i for i in islands if i.tied)
    assert head.name == "lm_head" and not [i for i in islands if i.kind == "gather"]
    build_candidates(fp32, islands, ["int4", "int4o", "int8b", "int8", "fp16"], accuracy_level=4)
    ids, mask = np.array([[5, 9, 11, 40]], np.int64), np.ones((1, 4), np.int64)
    reference = _decoder_logits(path, ids, mask)
    table_shape = [
        int(d) for d in next(t for t in fp32.graph.initializer if t.name == "model.embed_tokens.weight").dims
    ]
    for rung in ("int4", "int4o", "int8b", "int8", "fp16"):
        model = assemble(fp32, islands, {**{i.name: "fp32" for i in islands}, head.name: rung})
        out = tmp_path / rung / "model.onnx"
        out.parent.mkdir()
        onnx.save(model, str(out))
        error = np.abs(_decoder_logits(out, ids, mask) - reference).max() / np.abs(reference).max()
        assert error < {"int4": 0.2, "int4o": 0.2}.get(rung, 0.02), (rung, error)
        lookup = next(n for n in model.graph.node if n.name == "/model/embed_tokens/Gather")
        tables = [t for t in model.graph.initializer if t.dims and int(t.dims[0]) == table_shape[0]]
        if rung in ("int4", "int4o", "int8b"):
            assert lookup.op_type == "GatherBlockQuantized", rung
            assert all(t.name.startswith("lm_head") for t in tables), (
                rung,
                [t.name for t in tables],
            )  # the head's only
        assert ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
