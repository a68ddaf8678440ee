"""Mixed precision for an NPU that runs a fully quantized (QDQ) model: per island, 8- or 16-bit activations
(rungs `a8w8`, `a16w8`: weights 8-bit either way), following onnxruntime's QNN mixed-precision rules.

The HTP (and its kind) computes every op in integers; what a recipe can choose is each tensor's activation type.
16-bit activations are faithful and cost the NPU time and bandwidth; 8-bit ones are cheap and lossy where the
range is wide. The search:

1. quantizes the model twice with onnxruntime's QNN configuration, from the same calibration: 16-bit activations
   everywhere and 8-bit everywhere (embedding tables 8-bit in both);
2. islands are the model's blocks (per layer: attention, intermediate, output; the embeddings), found from node
   names; each island's activation tensors take one type (the top-level ones, the mask's arithmetic, stay 16-bit);
3. sensitivity: each island alone set to 8 bits in the 16-bit model (its Q/DQ parameters swapped for the 8-bit
   model's, no converts; on the CPU EP, which computes QDQ models exactly), scored on the proxy texts: this only
   orders the islands;
4. islands ordered from least to most sensitive; the most islands at 8 bits that still meet the budget on the
   validation texts, by bisection over that order, each configuration made by onnxruntime's QNN quantizer itself
   with tensor overrides (it inserts the 8↔16-bit converts at island boundaries and keeps the HTP's fixed output
   parameters) and scored on the CPU EP;
5. the chosen model is then validated on the device.

The emulated HTP cannot time the difference, so the cost is counted, not measured: 16-bit activation tensors and
converts, both reported."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.graph import producers, readers
from edgeq.mixed_precision.search import Budget
from edgeq.progress import say, track
from edgeq.rungs import BY_NAME, names

LAYER = re.compile(r"^(layer|layers|h|block|blocks|encoder_layer|stages?)\.\d+$|^\w+\.\d+$")
ACTIVATION_TYPES_KIND = "activation-types"  # the report section's kind (report_contract.MixedPrecision)
RUNGS = names("activation")
MODEL_LEVEL = "/model"  # top-level tensors (the attention mask's arithmetic, read by every layer): kept 16-bit
HOST_HELD = "(graph inputs and the KV cache)"  # read from a quantized graph input or written into the KV cache: kept
MEANING = {rung: BY_NAME[rung].meaning for rung in RUNGS}


def island_of(node_name: str) -> str:
    """The block a node belongs to, from its exported name: '/encoder/layer.3/attention/self/MatMul' →
    '/encoder/layer.3/attention'; '/embeddings/word_embeddings/Gather' → '/embeddings'; top-level nodes ('/Sub':
    the attention mask's arithmetic, shared by every layer) → MODEL_LEVEL."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return MODEL_LEVEL
    for index, part in enumerate(parts[:-1]):
        if LAYER.match(part):
            return "/" + "/".join(parts[: min(index + 2, len(parts) - 1)])
    return "/" + parts[0]


@dataclass
class QuantizedActivation:
    tensor: str
    quantize_node: int  # index of its QuantizeLinear in the graph
    island: str


def activation_quantizers(model: onnx.ModelProto) -> list[QuantizedActivation]:
    """Every QuantizeLinear of an activation (not a weight), with the island of the node producing it (HOST_HELD
    for a tensor computed from a quantized graph input or written into a KV cache)."""
    from edgeq.quantize.run import cache_tensors

    weights = {t.name for t in model.graph.initializer}
    producer, reading = producers(model), readers(model)
    graph_inputs = {i.name for i in model.graph.input}
    from_inputs = {  # a graph input as its readers see it: the DequantizeLinear after its QuantizeLinear
        dequantize.output[0]
        for quantize in model.graph.node
        if quantize.op_type == "QuantizeLinear" and quantize.input[0] in graph_inputs
        for dequantize in reading[quantize.output[0]]
    }
    held = _held_by_host(model, producer, set(cache_tensors(model)))
    found = []
    for index, node in enumerate(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] in weights or node.input[0] not in producer:
            continue
        source = producer[node.input[0]]
        if source.op_type == "DequantizeLinear":  # a convert: belongs with the tensor it converts
            continue
        kept = node.input[0] in held or bool(set(source.input) & from_inputs)
        island = HOST_HELD if kept else island_of(path_name(source, node, reading))
        found.append(QuantizedActivation(node.input[0], index, island))
    return found


PASS_THROUGH = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}  # a tensor's type unchanged


def _held_by_host(model: onnx.ModelProto, producer: dict, outputs: set[str]) -> set[str]:
    """The activation tensors that reach the graph outputs `outputs` (a KV cache's entries) unchanged in type: each
    output's own tensor, back through its Q/DQ pairs and through ops that pass a tensor on (an Identity naming it)."""
    held = set()
    for name in outputs:
        while name in producer:
            node = producer[name]
            if node.op_type == "DequantizeLinear" and node.input[0] in producer:
                name = producer[node.input[0]].input[0]  # the tensor its QuantizeLinear quantizes
                held.add(name)
            elif node.op_type in PASS_THROUGH:
                name = node.input[0]
            else:
                break
    return held


def path_name(source: onnx.NodeProto, quantize: onnx.NodeProto, reading: dict) -> str:
    """A name with the block's path for the tensor `quantize` quantizes: its producer's; else (fused nodes) the
    tensor's own; else (a node a pre-processing added, e.g. QNN's Reshape before a Gemm) that of the node reading
    it through its DequantizeLinear."""
    for name in (source.name, quantize.input[0]):
        if "/" in name:
            return name
    for dequantize in reading[quantize.output[0]]:
        for reader in reading[dequantize.output[0]]:
            if "/" in reader.name:
                return reader.name
    return quantize.input[0]


def _params(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tensor → (scale, zero point) of its QuantizeLinear."""
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if (
            node.op_type == "QuantizeLinear"
            and len(node.input) == 3
            and node.input[1] in inits
            and node.input[2] in inits
        ):
            found.setdefault(
                node.input[0],
                (numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])),
            )
    return found


def with_eight_bit(model16: onnx.ModelProto, params8: dict, tensors: set[str]) -> onnx.ModelProto:
    """The 16-bit model with `tensors` quantized as the 8-bit model quantizes them (a simulation without converts:
    every consumer reads the 8-bit value)."""
    model = onnx.ModelProto()
    model.CopyFrom(model16)
    consumers = readers(model)
    rescaled = {}  # dequantized tensor → (its scale in the 16-bit model, its 8-bit scale)
    inits = {t.name: t for t in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in tensors or node.input[0] not in params8:
            continue
        scale, zero = params8[node.input[0]]
        names = (f"{node.input[0]}_a8_scale", f"{node.input[0]}_a8_zero_point")
        model.graph.initializer.extend(
            [numpy_helper.from_array(scale, names[0]), numpy_helper.from_array(zero, names[1])]
        )
        old_scale = numpy_helper.to_array(inits[node.input[1]])
        node.input[1], node.input[2] = names
        for consumer in consumers[node.output[0]]:
            if consumer.op_type == "DequantizeLinear":
                consumer.input[1], consumer.input[2] = names
                rescaled[consumer.output[0]] = (old_scale, scale)
    _requantize_biases(model, rescaled, consumers)
    return model


def _requantize_biases(model: onnx.ModelProto, rescaled: dict, consumers: dict) -> None:
    """A Gemm/Conv's INT32 bias is quantized with scale input scale × weight scale, and onnxruntime's fused integer
    kernel assumes that scale: when the input's scale changed, requantize the bias to the new product (else the
    bias is off by the ratio of the scales)."""
    producer = producers(model)
    inits = {t.name: t for t in model.graph.initializer}
    for dequantized, (old, new) in rescaled.items():
        for node in consumers[dequantized]:
            if node.op_type not in ("Gemm", "Conv") or node.input[0] != dequantized or len(node.input) < 3:
                continue
            bias = producer.get(node.input[2])
            if bias is None or bias.op_type != "DequantizeLinear" or bias.input[0] not in inits:
                continue
            values = numpy_helper.to_array(inits[bias.input[0]])
            if values.dtype != np.int32:
                continue
            ratio = old / new  # the bias scale shrinks by it, its integers grow by it
            new_scale = (numpy_helper.to_array(inits[bias.input[1]]) / ratio).astype(np.float32)
            requantized = np.clip(np.round(values * ratio), -(2**31), 2**31 - 1).astype(np.int32)
            names = (f"{bias.input[0]}_a8", f"{bias.input[1]}_a8")
            model.graph.initializer.extend(
                [numpy_helper.from_array(requantized, names[0]), numpy_helper.from_array(new_scale, names[1])]
            )
            bias.input[0], bias.input[1] = names


@dataclass
class ActivationSearch:
    """The inputs of a search: both quantized models, the scorers, the budget."""

    model16: onnx.ModelProto
    model8: onnx.ModelProto
    proxy: object  # callable(model) -> float, higher is better
    evaluate: object  # callable(model) -> metrics dict (worst case over shapes)
    budget: Budget
    build: object  # callable(set of tensors at 8 bits) -> the model onnxruntime's QNN quantizer writes for it


def search_activation_types(job: ActivationSearch) -> dict:
    """Which islands take 8-bit activations: the longest prefix of the sensitivity order that meets the budget."""
    started = time.perf_counter()
    quantizers = activation_quantizers(job.model16)
    islands: dict[str, set[str]] = defaultdict(set)
    for q in quantizers:
        if q.island not in (MODEL_LEVEL, HOST_HELD):
            islands[q.island].add(q.tensor)
    fixed = {kept: sorted(q.tensor for q in quantizers if q.island == kept) for kept in (MODEL_LEVEL, HOST_HELD)}
    params8 = _params(job.model8)
    base = job.proxy(job.model16)
    say(f"  {len(islands)} blocks: sensitivity of each at 8-bit activations on the proxy texts")
    loss = {
        name: base - job.proxy(with_eight_bit(job.model16, params8, islands[name]))
        for name in track(list(islands), "blocks at 8-bit activations", len(islands))
    }
    order = sorted(islands, key=lambda name: loss[name])
    evaluations: dict[int, dict] = {}

    def evaluate(count: int) -> dict:
        if count not in evaluations:
            tensors = set().union(*(islands[name] for name in order[:count])) if count else set()
            metrics = job.evaluate(job.build(tensors) if tensors else job.model16)
            evaluations[count] = {
                "eight_bit_islands": count,
                "metrics": metrics,
                "failures": job.budget.fidelity_failures(metrics),
            }
        return evaluations[count]

    low, high = 0, len(order)  # invariant: `low` islands at 8 bits meet the budget (checked below), `high`+1 do not
    if evaluate(0)["failures"]:
        chosen = 0
    elif not evaluate(high)["failures"]:
        chosen = high
    else:
        high -= 1
        while low < high:
            middle = (low + high + 1) // 2
            if evaluate(middle)["failures"]:
                high = middle - 1
            else:
                low = middle
        chosen = low
    eight = set(order[:chosen])
    return {
        "islands": [
            {
                "name": name,
                "tensors": len(islands[name]),
                "proxy_loss_at_8_bit": round(loss[name], 6),
                "rank": order.index(name) + 1,
                "precision": "a8w8" if name in eight else "a16w8",
                "reason": _reason(name, name in eight, loss[name], order, chosen, evaluations),
            }
            for name in islands
        ]
        + _kept_sixteen_bit(fixed),
        "order": order,
        "eight_bit_islands": sorted(eight),
        "eight_bit_tensors": sorted(set().union(*(islands[n] for n in eight)) if eight else set()),
        "proxy_base": round(base, 6),
        "evaluations": [evaluations[k] for k in sorted(evaluations)],
        "evaluations_by_count": evaluations,
        "chosen": chosen,
        "budget_met": not evaluate(chosen)["failures"],
        "seconds": round(time.perf_counter() - started, 1),
    }


KEPT_REASONS = {
    # At 8 bits onnxruntime's QNN rules (one type per op) put those scores through 8 bits too, which the sensitivity
    # pass (parameters swapped per tensor) cannot see.
    MODEL_LEVEL: "16-bit activations, not searched: the attention mask's arithmetic, added to every layer's scores; "
    "at 8 bits the QNN rules (one type per op) put all those scores through 8 bits (MiniLM: cosine 0.9984 against "
    "0.9992, measured), and an HTP v68/v69 refuses the graph",
    HOST_HELD: "the type the host holds them in (16-bit; the cache's own under quantization.kv_cache), not searched: "
    "computed from a graph input (a KV cache, an additive "
    "mask) or written into the KV cache the host feeds back (the cache written must be the cache read); at another "
    "type a graph input's convert would be a QuantizeLinear of a graph input, which the HTP's execution provider "
    "does not take (measured on the emulated HTP: the node falls back to the CPU)",
}


def _kept_sixteen_bit(fixed: dict[str, list[str]]) -> list[dict]:
    """The tensors that stay 16-bit, unsearched, by why (KEPT_REASONS)."""
    return [
        {
            "name": name,
            "tensors": len(tensors),
            "proxy_loss_at_8_bit": None,
            "rank": None,
            "precision": "a16w8",
            "reason": KEPT_REASONS[name],
        }
        for name, tensors in fixed.items()
        if tensors
    ]


def _reason(name: str, eight: bool, loss: float, order: list[str], chosen: int, evaluations: dict) -> str:
    rank = f"rank {order.index(name) + 1} of {len(order)} by sensitivity"
    if eight:
        return (
            f"8-bit activations: alone at 8 bits it lowers the proxy score by {loss:.5f} ({rank}); the "
            f"{chosen} least sensitive islands at 8 bits still meet the budget"
        )
    missed = evaluations.get(chosen + 1)
    why = (
        f"with it at 8 bits too the budget breaks ({'; '.join(missed['failures'])})"
        if missed and missed["failures"]
        else "the islands before it in the order already take what the budget allows"
    )
    return f"16-bit activations: alone at 8 bits it lowers the proxy score by {loss:.5f} ({rank}); {why}"


def _headline(task, metrics: dict) -> str:
    """The task's headline fidelity metrics, as the note names them."""
    from edgeq.tasks.metrics import COMMON, headline_order

    order = headline_order(task.own_metrics + COMMON)
    shown = [name for name in order if metrics.get(name) is not None][:2]
    return ", ".join(f"{name} {metrics[name]:.5f}" for name in shown) or "no metric"


def count_converts(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes fed by a DequantizeLinear: the type converts at island boundaries."""
    producer = producers(model)
    return sum(
        n.op_type == "QuantizeLinear" and n.input[0] in producer and producer[n.input[0]].op_type == "DequantizeLinear"
        for n in model.graph.node
    )


def sixteen_bit_share(model: onnx.ModelProto) -> float:
    """The share of activation tensors quantized to 16 bits."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    types = [
        inits.get(n.input[2])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) == 3 and n.input[0] not in inits
    ]
    sixteen = sum(t in (onnx.TensorProto.UINT16, onnx.TensorProto.INT16) for t in types)
    return round(sixteen / max(len(types), 1), 4)


def override_path(folder: Path) -> Path:
    return folder / "activation_types.yaml"


def choose_activation_types(job, quantize, feeds: list[dict], model16_path: Path) -> tuple[dict, dict[str, str]]:
    """The whole stage for a QDQ NPU: write job.out_folder/model.onnx; return the report's mixed_precision section
    and the activation overrides (tensor → type) the chosen model was quantized with. `job` is a MixedPrecisionJob,
    `quantize(fp32, out, feeds, overrides=None, activation_type=None)` quantizes as the recipe says (16-bit
    activations) with the quantize stage's weights, `feeds` the calibration batches, `model16_path` the quantize
    stage's all-16-bit model."""
    import tempfile

    from edgeq.mixed_precision.evaluate import Runner
    from edgeq.tasks.judge import worst_case

    host = job.target.on_host_cpu()
    fp32 = onnx.load(str(job.fp32_path))
    proxy_runner = Runner(job.task, job.proxy_samples, job.inputs, host, job.shapes[:1], job.whole_batches_only)
    full_runner = Runner(job.task, job.validation_samples, job.inputs, host, job.shapes, job.whole_batches_only)
    proxy_reference = proxy_runner.outputs(fp32)
    full_reference = full_runner.outputs(fp32)
    label = proxy_runner.labels[0]

    def proxy(model) -> float:
        return job.task.proxy_score(proxy_reference[label], proxy_runner.outputs(model, proxy_reference)[label])

    def evaluate(model) -> dict:
        outputs = full_runner.outputs(model, full_reference)
        per_shape = {
            shape: job.task.metrics(
                full_reference[shape], outputs[shape], [s for b in data.batches for s in b.samples], data.inputs
            )
            for shape, data in full_runner.data.items()
        }
        worst, where = worst_case(list(per_shape.values()), list(per_shape))
        return {**worst, "worst_shape": where}

    with tempfile.TemporaryDirectory(prefix="edgeq-a8-") as tmp:
        quantize(job.fp32_path, Path(tmp) / "model.onnx", feeds, activation_type="uint8")
        model8 = onnx.load(str(Path(tmp) / "model.onnx"))
    model16 = onnx.load(str(model16_path))
    budget = Budget(**job.config.budget.model_dump())
    out = job.out_folder / "model.onnx"
    built: dict[frozenset, onnx.ModelProto] = {}

    def build(tensors: set[str]) -> onnx.ModelProto:
        if frozenset(tensors) not in built:
            say(f"  quantizing with {len(tensors)} activation tensors at 8 bits")
            quantize(job.fp32_path, out, feeds, {tensor: "uint8" for tensor in tensors})
            built[frozenset(tensors)] = onnx.load(str(out))
        return built[frozenset(tensors)]

    found = search_activation_types(ActivationSearch(model16, model8, proxy, evaluate, budget, build))
    final = build(set(found["eight_bit_tensors"])) if found["eight_bit_tensors"] else model16
    onnx.save(final, str(out))
    final_metrics = found["evaluations_by_count"][found["chosen"]]["metrics"]
    overrides = found["eight_bit_tensors"]
    counts = {rung: sum(i["precision"] == rung for i in found["islands"]) for rung in RUNGS}
    section = {
        "kind": ACTIVATION_TYPES_KIND,
        "candidates": list(RUNGS),
        "shapes": [job.task.shape_label(*s) for s in job.shapes],
        "budget": job.config.budget.model_dump(),
        "precision_counts": counts,
        "size_ratio": round(out.stat().st_size / job.fp32_path.stat().st_size, 4),
        "sixteen_bit_activation_share": sixteen_bit_share(final),
        "converts": count_converts(final),
        "proxy_passes": len(found["islands"]) + 1,
        "full_evaluations": len(found["evaluations"]),
        "search_seconds": found["seconds"],
        "budget_met": not budget.fidelity_failures(final_metrics),
        "budget_status": {"fidelity": not budget.fidelity_failures(final_metrics)},
        "notes": [
            f"scored on the CPU EP (QDQ computed exactly); the chosen model, quantized by onnxruntime's QNN "
            f"quantizer with {len(overrides)} activation tensors at 8 bits and {count_converts(final)} converts, "
            f"scored {_headline(job.task, final_metrics)} there; the validation "
            f"stage measures it on the device"
        ],
        "proxy_score": job.task.proxy_name,
        "islands": [{**i, "kind": "block", "parameters": None} for i in found["islands"]],
        "evaluations": [
            {
                "configuration": e["eight_bit_islands"],
                "metrics": e["metrics"],
                "passed": not e["failures"],
                "failures": e["failures"],
            }
            for e in found["evaluations"]
        ],
        "chosen_configuration": found["chosen"],
        "final_on_cpu": final_metrics,
    }
    return section, {tensor: "uint8" for tensor in overrides}
