"""A built model: where it is, what it weighs, its content hash and in which precision each node computes."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import onnx
from onnx import TensorProto

from edgeq.errors import ModelError

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
INTEGER_OPS = {
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QGemm",
    "QAttention",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearSoftmax",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearLeakyRelu",
    "QEmbedLayerNormalization",
    "DynamicQuantizeMatMul",
    "QLinearGlobalAveragePool",
    "QLinearReduceMean",
}
BITS = {
    TensorProto.INT8: 8,
    TensorProto.UINT8: 8,
    TensorProto.INT16: 16,
    TensorProto.UINT16: 16,
    TensorProto.INT4: 4,
    TensorProto.UINT4: 4,
}


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, or raise ModelError naming the file when it is missing, not ONNX, or keeps weights
    outside its own folder."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model '{path}' not found", "Give the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf raises several unrelated types for garbage input
        model = None
    if model is None or model.ir_version <= 0 or not model.graph.node:
        raise ModelError(f"'{path}' is not an ONNX model", "Give an .onnx file, e.g. one made by `edgeq export`")
    files = external_files(model)
    folder = path.resolve().parent
    for name in files:
        target = (folder / name).resolve()
        if folder not in target.parents:
            raise ModelError(
                f"'{path}' keeps weights in '{name}', outside its own folder",
                "External data must sit beside the model; edgeq does not read files elsewhere",
            )
        if not target.is_file():
            raise ModelError(f"'{path}' keeps weights in '{name}', which is missing", "Copy it beside the model")
    if load_weights and files:
        onnx.load_external_data_for_model(model, str(folder))
    return model


def external_files(model: onnx.ModelProto) -> list[str]:
    """The external-data files a model's initializers name."""
    return sorted(
        {
            entry.value
            for tensor in model.graph.initializer
            if tensor.data_location == TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )


def check_loadable(path: str | Path) -> None:
    """Raise ModelError (one line) when this onnxruntime cannot load the model, e.g. an opset it does not know."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(
            f"onnxruntime {ort.__version__} cannot load '{path}': {ort_error_line(exc)}",
            "Export it with an opset this onnxruntime supports (edgeq export --opset 17)",
        ) from None


def ort_error_line(exc: Exception) -> str:
    """onnxruntime's message without its error-code prefix and C++ source location."""
    import re

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^/\S+:\d+ [^)]*\) ", "", text)
    support = re.search(
        r"(Opset \d+ is under development).*(Current official support for domain \S+ is till opset \d+)", text
    )
    return f"{support.group(1)}; {support.group(2)}" if support else text[:300]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: str | Path) -> str:
    """One hash over every file's relative name and bytes: the identity of a model folder."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def node_precisions(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> the precision it computes in: `fp32`, `int8`, `int16`, `int4` or `mixed-8/16`.

    A node is quantized when it is an integer op, when an input comes from a DequantizeLinear (QDQ), or when
    it reads a low-bit initializer (dynamic Gather). Q/DQ conversion nodes themselves are left out.
    """
    inits = {t.name: t.data_type for t in model.graph.initializer}
    dq_bits = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            dq_bits[node.output[0]] = _tensor_bits(model, node.input[0], inits)
    result = {}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        if node.op_type == "MatMulNBits":
            bits = {next((a.i for a in node.attribute if a.name == "bits"), 4)}
        elif node.op_type in INTEGER_OPS:
            bits = {8}
        else:
            bits = {dq_bits[i] for i in node.input if i in dq_bits}
            bits |= {BITS[inits[i]] for i in node.input if inits.get(i) in BITS}
        result[node.name] = _label(bits)
    return result


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the named intermediate tensors (to read activations)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    present = {o.name for o in extended.graph.output}
    extended.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return extended


def is_quantized(path: str | Path) -> bool:
    """Whether any node of the model computes in an integer precision."""
    model = onnx.load(str(path), load_external_data=False)
    return any(p != "fp32" for p in node_precisions(model).values())


def precision_summary(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(node_precisions(model).values())
    counts["qdq"] = sum(1 for node in model.graph.node if node.op_type in QDQ_OPS)
    return {key: value for key, value in sorted(counts.items()) if value}


def _tensor_bits(model: onnx.ModelProto, name: str, inits: dict[str, int]) -> int:
    if name in inits:
        return BITS.get(inits[name], 8)
    for node in model.graph.node:
        if name in node.output and node.op_type == "QuantizeLinear" and len(node.input) > 2:
            zero_point = node.input[2]
            return BITS.get(inits.get(zero_point, TensorProto.UINT8), 8)
    return 8


def _label(bits: set[int]) -> str:
    if not bits:
        return "fp32"
    if len(bits) == 1:
        return f"int{bits.pop()}"
    return "mixed-" + "/".join(str(b) for b in sorted(bits))


def describe(path: str | Path, name: str | None = None, relative_to: Path | None = None) -> dict:
    """The report.json entry of one artifact."""
    path = Path(path)
    model = load_onnx(path)
    return {
        "name": name or path.parent.name,
        "path": str(path.relative_to(relative_to)) if relative_to else str(path),
        "size_bytes": model_size(path),
        "sha256": sha256_file(path),
        "precision": precision_summary(model),
        "nodes": len(model.graph.node),
    }


def model_size(path: str | Path) -> int:
    """Bytes of the model file plus any external-data files beside it."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in external_files(model))


def inspect_model(path: str | Path) -> dict:
    """What `edgeq inspect` prints: inputs, outputs, opset, op histogram, size and precision summary."""
    path = Path(path)
    model = load_onnx(path)

    def signature(values):
        return [
            {
                "name": v.name,
                "type": TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    init_names = {t.name for t in model.graph.initializer}
    return {
        "path": str(path),
        "size_bytes": model_size(path),
        "ir_version": model.ir_version,
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "inputs": signature([i for i in model.graph.input if i.name not in init_names]),
        "outputs": signature(model.graph.output),
        "nodes": len(model.graph.node),
        "parameters": sum(_numel(t) for t in model.graph.initializer),
        "op_types": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "precision": precision_summary(model),
    }


def _numel(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


# The files that travel with a model: its config, tokenizer, image processor and generation settings. Nothing else
# of the model's folder is copied (a user's downloads folder is not a model's companion).
COMPANIONS = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "chat_template.jinja",
    "genai_config.json",
    "overrides.yaml",
    "static_decoder.json",
)


def copy_companions(source: Path, target: Path) -> None:
    """Copy the model's companion files (COMPANIONS) from `source` into `target`."""
    for name in COMPANIONS:
        if (source / name).is_file() and not (target / name).exists():
            shutil.copy2(source / name, target / name)
