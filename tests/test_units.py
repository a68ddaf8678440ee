"""Small pieces: import hygiene, metrics and judgement, data files, device profiles."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeq.data import load_texts
from edgeq.errors import DataError, DeviceError
from edgeq.recipe.schema import DataSource
from edgeq.targets.profiles import load_device
from edgeq.validate.metrics import compare, judge

pytestmark = pytest.mark.fast  # the whole file is in `make test-fast`


def test_importing_the_cli_pulls_in_no_torch_transformers_or_onnxruntime():
    code = (
        "import sys, edgeq.cli; heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'optimum') "
        "if m in sys.modules]; print(heavy)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_identical_outputs_are_exact():
    ref = np.random.default_rng(0).standard_normal((5, 8))
    metrics = compare(ref, ref.copy())
    assert metrics["cosine_mean"] == 1.0 and metrics["max_abs_error"] == 0 and metrics["sqnr_db"] is None
    assert judge(metrics, {"cosine_mean": 0.99, "sqnr_db": 30}) == []


def test_noise_lowers_cosine_and_sqnr_and_breaks_thresholds_in_words():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 16))
    metrics = compare(ref, ref + 0.3 * rng.standard_normal(ref.shape))
    assert 0.8 < metrics["cosine_mean"] < 0.99 and metrics["cosine_min"] <= metrics["cosine_mean"]
    assert 5 < metrics["sqnr_db"] < 15
    failures = judge(metrics, {"cosine_mean": 0.99, "max_abs_error": 0.01})
    assert failures[0].startswith("cosine_mean 0.9") and failures[0].endswith("< 0.99")
    assert failures[1].startswith("max_abs_error") and failures[1].endswith("> 0.01")


def test_nan_output_never_passes():
    ref = np.ones((3, 4))
    metrics = compare(ref, np.full((3, 4), np.nan))
    assert metrics["cosine_mean"] is None
    assert judge(metrics, {"cosine_mean": 0.5}) == ["cosine_mean not measured or not finite (threshold 0.5)"]


def test_top1_agreement_for_classification():
    ref = np.array([[3.0, 1.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    cand = np.array([[3.0, 1.0], [0.0, 2.0], [0.0, 1.0], [0.0, 1.0]])
    assert compare(ref, cand, classification=True)["top1_agreement"] == 0.75


def test_data_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \nthree\n")
    (tmp_path / "b.jsonl").write_text('{"t": "x"}\n\n{"t": "y"}\n')
    (tmp_path / "c.csv").write_text('id,text\n1,hello\n2,"a, b"\n')
    assert load_texts(DataSource(path=tmp_path / "a.txt")) == ["one", "two", "three"]
    assert load_texts(DataSource(path=tmp_path / "a.txt"), limit=2) == ["one", "two"]
    assert load_texts(DataSource(path=tmp_path / "b.jsonl", field="t")) == ["x", "y"]
    assert load_texts(DataSource(path=tmp_path / "c.csv", field="text")) == ["hello", "a, b"]
    with pytest.raises(DataError, match=r"line 1 has no field 'text'"):
        load_texts(DataSource(path=tmp_path / "b.jsonl", field="text"))
    with pytest.raises(DataError, match=r"has no column 'body'. Columns: id, text"):
        load_texts(DataSource(path=tmp_path / "c.csv", field="body"))
    (tmp_path / "bad.jsonl").write_text('{"t": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"line 2 is not valid JSON"):
        load_texts(DataSource(path=tmp_path / "bad.jsonl", field="t"))


def test_data_source_checks_its_field():
    with pytest.raises(ValueError, match="needs `field`"):
        DataSource(path="x.csv")
    with pytest.raises(ValueError, match="only for .jsonl and .csv"):
        DataSource(path="x.txt", field="text")
    with pytest.raises(ValueError, match="unsupported data file type '.parquet'"):
        DataSource(path="x.parquet")


def test_bundled_device_profile():
    device = load_device("x86-avx512-vnni")
    assert device.execution_provider.name == "CPUExecutionProvider" and device.arch == "x86_64"


def test_device_profile_whose_id_does_not_match_its_file(tmp_path, monkeypatch):
    (tmp_path / "board.yaml").write_text(
        "id: other\ndescription: d\ndevice_class: cpu\narch: x86_64\nexecution_provider: {name: CPUExecutionProvider}\n"
    )
    monkeypatch.setenv("EDGEQ_DEVICES_PATH", str(tmp_path))
    with pytest.raises(DeviceError, match="id 'other' does not match the file name 'board'"):
        load_device("board")


def test_activation_islands_follow_block_paths_and_reach_past_unnamed_preprocessing_nodes():
    """A tensor's island is its producer's block; a node without a path (QNN pre-processing's Reshape before a Gemm)
    hands its tensor to the block of the node that reads it; top-level nodes (the mask's arithmetic) are '/model'."""
    from onnx import TensorProto, helper

    from edgeq.mixed_precision.activation_types import activation_quantizers

    def qdq(tensor: str) -> list:
        return [
            helper.make_node("QuantizeLinear", [tensor, "s", "z"], [f"{tensor}_q"]),
            helper.make_node("DequantizeLinear", [f"{tensor}_q", "s", "z"], [f"{tensor}_dq"]),
        ]

    nodes = [
        helper.make_node("Sub", ["one", "mask"], ["/Sub_output_0"], name="/Sub"),
        *qdq("/Sub_output_0"),
        helper.make_node("Reshape", ["x", "shape"], ["gemm_input"], name="gemm_input_reshape"),
        *qdq("gemm_input"),
        helper.make_node("Gemm", ["gemm_input_dq", "w"], ["y"], name="/encoder/layer.2/intermediate/dense/Gemm"),
        helper.make_node("Relu", ["y"], ["/encoder/layer.2/output/Relu_output_0"], name="fused_7"),
        *qdq("/encoder/layer.2/output/Relu_output_0"),
    ]
    inits = [
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("z", TensorProto.UINT8, [], [0]),
        helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.0] * 16),
    ]
    graph = helper.make_graph(nodes, "g", [], [], inits)
    islands = {q.tensor: q.island for q in activation_quantizers(helper.make_model(graph))}
    assert islands == {
        "/Sub_output_0": "/model",
        "gemm_input": "/encoder/layer.2/intermediate",
        "/encoder/layer.2/output/Relu_output_0": "/encoder/layer.2/output",
    }


def test_native_prints_on_stdout_go_to_stderr_while_a_command_runs():
    """onnxruntime-qnn's emulator prints a banner on file descriptor 1; `--json` output must stay parseable."""
    code = (
        "import os\nfrom edgeq.cli import _native_stdout_to_stderr\nwith _native_stdout_to_stderr():\n"
        "    os.write(1, b'native banner\\n')\n    print('{\"ok\": 1}')\nprint('after')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == '{"ok": 1}\nafter\n' and done.stderr == "native banner\n"


def test_eight_bit_simulation_requantizes_the_int32_bias_of_a_gemm_whose_input_changed(tmp_path):
    """onnxruntime's fused integer Gemm assumes bias scale = input scale × weight scale: a swapped input scale
    without a requantized bias puts the bias off by the ratio of the scales."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeq.mixed_precision.activation_types import _params, with_eight_bit

    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((8, 8)).astype(np.float32), (5 * rng.standard_normal(8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["g"]), helper.make_node("Relu", ["g"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "f.onnx")
    feeds = [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    for kind in ("u16", "u8"):
        quantize_static(
            str(tmp_path / "f.onnx"),
            str(tmp_path / f"{kind}.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt16 if kind == "u16" else QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
        )
    model16, model8 = onnx.load(str(tmp_path / "u16.onnx")), onnx.load(str(tmp_path / "u8.onnx"))
    params8 = _params(model8)  # the Gemm's input and output (its Relu folded into the output's quantizer)
    simulated = with_eight_bit(model16, params8, set(params8))

    def run(model) -> np.ndarray:
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]

    exact, eight = run(tmp_path / "f.onnx"), run(simulated)
    assert np.abs(eight - exact).max() < 0.2 * np.abs(exact).max()  # 8-bit error, not a bias off by ~256×


def test_a_synthetic_kv_cache_starts_empty_with_the_configs_head_size(tmp_path):
    """onnxruntime-genai's builder leaves the cache's head size free (`kv_cache_dim`): the profile's synthetic feed
    takes it from the model's config, and starts the cache with no past positions."""
    import json
    from types import SimpleNamespace

    from edgeq.profile.inputs import head_dim_near, synthetic_feed

    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"head_size": 64}}}))
    specs = [
        SimpleNamespace(name="input_ids", shape=["batch_size", "sequence_length"], type="tensor(int64)"),
        SimpleNamespace(
            name="past_key_values.0.key",
            shape=["batch_size", 3, "past_sequence_length", "kv_cache_dim"],
            type="tensor(float)",
        ),
    ]
    feed = synthetic_feed(specs, 1, 16, 100, head_dim=head_dim_near(tmp_path / "model.onnx"))
    assert feed["input_ids"].shape == (1, 16) and feed["past_key_values.0.key"].shape == (1, 3, 0, 64)


def test_activation_statistics_keep_the_rows_with_the_smallest_keys_in_arrival_order():
    from edgeq.mixed_precision.statistics import MAX_ROWS, StatisticsAccumulator

    data = np.random.default_rng(1)
    batches = [data.normal(size=(1, int(n), 8)).astype(np.float32) for n in data.integers(1, 400, size=60)]
    masks = [np.ones(b.shape[:2], dtype=np.int64) for b in batches]
    masks[3][0, 1:] = 0  # padded positions are left out
    accumulator = StatisticsAccumulator(seed=5)
    for values, mask in zip(batches, masks):
        accumulator.add(values, mask)
    stats = accumulator.result()
    rows = np.concatenate([v[m.astype(bool)] for v, m in zip(batches, masks)])
    keys_source = np.random.default_rng(5)
    keys = np.concatenate([keys_source.random(int(m.sum())) for m in masks])
    expected = rows[np.sort(np.argsort(keys, kind="stable")[:MAX_ROWS])]
    assert len(rows) > 2 * MAX_ROWS and np.array_equal(stats.rows, expected)
    assert np.array_equal(stats.maximum, rows.max(axis=0)) and np.array_equal(stats.minimum, rows.min(axis=0))


def test_the_code_is_formatted_and_linted_by_ruff():
    """ruff's formatter and linter, configured in pyproject.toml, over every Python file the project has."""
    from conftest import ROOT

    folders = [str(ROOT / f) for f in ("src", "tests", "bench", "scripts") if (ROOT / f).is_dir()]
    ruff = [sys.executable, "-m", "ruff"]
    formatted = subprocess.run([*ruff, "format", "--check", *folders], capture_output=True, text=True, cwd=ROOT)
    assert formatted.returncode == 0, formatted.stdout[-2000:] + formatted.stderr[-500:]
    linted = subprocess.run([*ruff, "check", *folders], capture_output=True, text=True, cwd=ROOT)
    assert linted.returncode == 0, linted.stdout[-2000:] + linted.stderr[-500:]


def _edgeq_imports() -> dict[str, set[str]]:
    """Module -> the edgeq modules it imports (at its top or inside a function), read from the source."""
    import ast

    from conftest import ROOT

    source = ROOT / "src"
    modules = {}
    for path in (source / "edgeq").rglob("*.py"):
        parts = path.relative_to(source).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeq"):
                found |= {known(f"{node.module}.{alias.name}") or known(node.module) for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {known(alias.name) for alias in node.names if alias.name.startswith("edgeq")}
        graph[name] = found - {None, name}
    return graph


def test_no_module_of_edgeq_imports_itself_through_others():
    graph = _edgeq_imports()
    assert len(graph) > 80 and "edgeq.tasks.fidelity" in graph["edgeq.validate.metrics"]  # the reader sees imports
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                circles.append(" -> ".join(path[path.index(imported) :] + [imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


# The floors of src/edgeq, lowest first: a module imports from its own floor or below, never from above. A floor is
# a top-level module or package (edgeq.targets.runtime is on the `targets` floor). Within a floor, no circles (above).
FLOORS = [
    # the ground: errors, files, logging, progress, the data readers, the graph and ONNX helpers, named values
    {"edgeq", "errors", "atomic", "resources", "buildlog", "progress", "headroom", "isolated", "mobile"}
    | {"data_source", "schema_errors", "rungs", "model_shape", "model_folder", "feeds", "graph", "artifact"}
    | {"chat", "data", "demo_lm", "report_contract", "static_decoder"},
    {"tasks"},  # what a model does and how it is measured
    {"recipe"},  # what a user asks for
    {"targets"},  # the devices: profiles, host, runtimes, sessions, transports, the device runner
    {"export"},  # the stages, in build order
    {"optimize"},
    {"quantize"},
    {"mixed_precision"},
    {"validate", "profile"},
    {"preflight", "plan", "build_cost", "starter", "genai", "generate", "summary", "report_html", "report"}
    | {"stage_cache", "diverge", "roofline", "manifest", "pareto"},  # services over the stages
    {"pipeline", "sweep", "verify"},
    {"api", "sweep_ray"},
    {"cli"},
]


def test_no_module_of_edgeq_imports_from_a_floor_above_its_own():
    floor_of = {name: level for level, names in enumerate(FLOORS) for name in names}

    def floor(module: str) -> str:
        return module.split(".")[1] if "." in module else "edgeq"

    graph = _edgeq_imports()
    unplaced = sorted({floor(m) for m in graph} - set(floor_of))
    assert not unplaced, f"modules on no floor (add them to FLOORS): {unplaced}"
    upward = [
        f"{module} -> {imported}"
        for module, imports in sorted(graph.items())
        for imported in sorted(imports)
        if floor_of[floor(imported)] > floor_of[floor(module)]
    ]
    assert "edgeq.targets.runtime" in graph["edgeq.targets.target"]  # the reader sees the wing's own imports
    assert not upward, upward


def test_a_stage_is_served_from_its_folder_until_its_key_or_its_files_change(tmp_path, monkeypatch):
    from edgeq.stage_cache import MODEL_FILE, cached_stage

    monkeypatch.delenv("EDGEQ_SHARED_CACHE", raising=False)
    runs = []

    def produce(folder):
        runs.append(folder)
        (folder / MODEL_FILE).write_bytes(b"model bytes")
        return {"made": len(runs)}

    folder = tmp_path / "stage"
    first = cached_stage(folder, "quantize", {"recipe": 1}, produce, force=False)
    again = cached_stage(folder, "quantize", {"recipe": 1}, produce, force=False)
    assert (first.cached, again.cached, len(runs)) == (False, True, 1) and again.details["made"] == 1
    assert cached_stage(folder, "quantize", {"recipe": 2}, produce, force=False).cached is False  # a new key
    (folder / MODEL_FILE).write_bytes(b"edited by hand")
    assert cached_stage(folder, "quantize", {"recipe": 2}, produce, force=False).cached is False  # a changed file
    assert cached_stage(folder, "quantize", {"recipe": 2}, produce, force=True).cached is False  # --force
    assert len(runs) == 4

    monkeypatch.setenv("EDGEQ_SHARED_CACHE", str(tmp_path / "shared"))
    cached_stage(tmp_path / "one", "quantize", {"recipe": 3}, produce, force=False)  # offered to the shared cache
    elsewhere = cached_stage(tmp_path / "other", "quantize", {"recipe": 3}, produce, force=False)
    assert elsewhere.cached is True and len(runs) == 5  # another build folder: served, not produced again
    assert (tmp_path / "other" / MODEL_FILE).read_bytes() == b"model bytes"

    def fails(folder):
        (folder / MODEL_FILE).write_bytes(b"half")
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        cached_stage(tmp_path / "failed", "quantize", {"recipe": 4}, fails, force=False)
    assert not (tmp_path / "failed").exists()  # nothing half-written is left


def test_the_worst_case_over_shapes_takes_each_metrics_own_direction():
    from edgeq.tasks.judge import worst_case
    from edgeq.validate.metrics import EXACT

    shapes = [
        {"cosine_mean": 0.999, "max_abs_error": 0.2, "kl_divergence_mean": 0.01, "sqnr_db": EXACT, "note": "a"},
        {"cosine_mean": 0.990, "max_abs_error": 0.1, "kl_divergence_mean": 0.03, "sqnr_db": EXACT, "note": "b"},
        {"cosine_mean": 0.995, "max_abs_error": 0.3, "kl_divergence_mean": None, "sqnr_db": EXACT},
    ]
    metrics, worst = worst_case(shapes, ["b1", "b8", "b32"])
    assert metrics["cosine_mean"] == 0.990 and worst["cosine_mean"] == "b8"  # higher is better: the lowest
    assert metrics["max_abs_error"] == 0.3 and worst["max_abs_error"] == "b32"  # lower is better: the highest
    assert metrics["kl_divergence_mean"] is None and worst["kl_divergence_mean"] == "b32"  # not finite: worst of all
    assert metrics["sqnr_db"] is EXACT and metrics["note"] == "a"  # exact everywhere; a note from the first shape


def test_smoothquant_strength_is_chosen_only_where_it_pays():
    from edgeq.mixed_precision.statistics import ActivationStats, best_alpha

    rows = np.random.default_rng(3).uniform(-1, 1, size=(2048, 64)).astype(np.float32)
    weight = np.random.default_rng(4).normal(size=(64, 32)).astype(np.float32)
    weight /= np.abs(weight).max(axis=1, keepdims=True)  # every input channel's weights reach the same extreme
    plain = ActivationStats(np.full(64, -1.0, np.float32), np.full(64, 1.0, np.float32), rows)
    assert best_alpha(plain, weight)[0] == 0.0  # channels alike: smoothing would only rescale, so no extra Mul
    rows[:, 5] *= 80.0  # one loud channel crushes every other under a per-tensor activation scale
    loud = ActivationStats(rows.min(axis=0), rows.max(axis=0), rows)
    alpha, scores = best_alpha(loud, weight)
    assert alpha > 0 and scores[alpha] > scores[0.0] + 3


def test_the_report_reference_is_what_the_contract_says():
    from conftest import ROOT

    from edgeq.report_contract import render

    assert (ROOT / "docs" / "report.md").read_text() == render(), (
        "run: python -m edgeq.report_contract > docs/report.md"
    )


def test_a_report_that_breaks_the_contract_is_named_as_edgeqs_bug():
    from edgeq.errors import StageError
    from edgeq.report_contract import check

    report = {"edgeq_version": "0", "recipe": {}, "stages": [], "artifacts": [], "final": "final/model.onnx"}
    report |= {"passed": True, "validations": [{"artifact": "int8", "mode": "on the moon"}]}
    with pytest.raises(StageError, match=r"report.json breaks its contract at 'validations.0.device'"):
        check(report)


def test_an_island_kept_at_the_lowest_rung_is_not_said_to_meet_a_budget_nobody_met():
    from edgeq.mixed_precision import reason
    from edgeq.mixed_precision.candidates import Candidate
    from edgeq.mixed_precision.islands import Island
    from edgeq.mixed_precision.search import SearchResult

    island = Island("layer.0.dense", "n0", "matmul", "w0", 16, {r: Candidate([], [], 16) for r in ("sint8", "fp32")})
    score = {"output_sqnr_db": 30.0, "gain": {"fp32": 0.001}, "gain_by_shape": {}}

    def kept(fidelity_met: bool) -> str:
        result = SearchResult(
            {"layer.0.dense": "sint8"}, 0, [], [], {island.name: score}, 1, 1, fidelity_met, {"fidelity": fidelity_met}
        )
        return reason(island, "sint8", score, result, ["sint8", "fp32"])

    assert "already meets the budget" in kept(True)
    missed = kept(False)
    assert "already meets" not in missed and "was not met" in missed


def test_four_bit_weights_are_for_static_qdq_only():
    from pydantic import ValidationError

    from edgeq.recipe.schema import QuantizationConfig

    with pytest.raises(ValidationError, match="four_bit_weights is for mode: static with format: qdq"):
        QuantizationConfig(mode="dynamic", four_bit_weights=["*/mlp/up_proj/MatMul"])
    calibration = {"data": {"path": "-"}}
    with pytest.raises(ValidationError, match="four_bit_weights is for mode: static with format: qdq"):
        QuantizationConfig(mode="static", format="qoperator", four_bit_weights=["x"], calibration=calibration)
    assert QuantizationConfig(mode="static", four_bit_weights=["x"], calibration=calibration).four_bit_weights == ["x"]
