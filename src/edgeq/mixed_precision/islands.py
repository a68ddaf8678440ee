"""Islands: the units that switch precision together.

An island is one weight-bearing node: a MatMul whose B is a constant matrix, a fused Attention (com.microsoft,
from onnxruntime's transformer fusions: Q, K and V projections in one weight), or a Gather from a constant
table (an embedding). `candidates.py` builds the node group of each precision (rung) an island can take.
A Gather reads rows of its table and computes nothing, so all its INT8 rungs are the same INT8 rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.mixed_precision import candidates as C
from edgeq.mixed_precision.candidates import MS_DOMAIN, Candidate
from edgeq.mixed_precision.statistics import ActivationStats
from edgeq.rungs import names

# Every precision an island can take, cheapest first, and the groups the islands tell apart (edgeq.rungs).
LADDER = names()
STATS_RUNGS = set(names(needs_statistics=True))  # rungs that need activation statistics
INT8_ROWS = set(names(int8_rows=True))  # the rungs whose embedding tables are INT8 rows
# Rungs whose activation scale is taken at run time over the whole input tensor: in a batch, the other texts and
# their padding move it. Every other rung (static scales, weight-only, per-row blocks) treats each text alone.
BATCH_DEPENDENT = set(names(batch_dependent=True))


@dataclass
class Island:
    name: str  # readable, e.g. encoder.layer.0.attention.self.query
    node_name: str  # the ONNX node it replaces
    kind: str  # matmul | attention | gather
    weight: str  # initializer name
    parameters: int
    candidates: dict[str, Candidate] = field(default_factory=dict)
    tied: str | None = None  # the embedding lookup (Gather node) that reads this LM head's table: they switch together


def batch_invariant(islands: list[Island], assignment: dict[str, str]) -> bool:
    """Whether a model with this assignment computes each text of a padded batch as it does alone (an embedding
    table's INT8 rows are looked up, never scaled at run time)."""
    return not any(assignment[i.name] in BATCH_DEPENDENT for i in islands if i.kind != "gather")


def readable_name(node_name: str) -> str:
    parts = [p for p in node_name.strip("/").split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else (parts[0] if parts else node_name)


def tied_pair(model: onnx.ModelProto) -> tuple[str, str] | None:
    """(embedding Gather, LM head MatMul) node names when the export says they read one table (tied embeddings)."""
    from edgeq.export.decoder import TIED_KEY

    value = next((p.value for p in model.metadata_props if p.key == TIED_KEY), None)
    names = {n.name for n in model.graph.node}
    pair = tuple(value.split(",")) if value else ()
    return pair if len(pair) == 2 and set(pair) <= names else None  # type: ignore[return-value]


def find_islands(model: onnx.ModelProto, op_types: list[str] | None = None) -> list[Island]:
    """Weight-bearing MatMul / Gather nodes of the FP32 model, in graph order. A tied embedding's lookup is no island
    of its own: it follows the LM head's precision (one table for both), when both kinds are wanted."""
    wanted = set(op_types or ("MatMul", "Attention", "Gather"))
    inits = {t.name: t for t in model.graph.initializer}
    gather, head = tied_pair(model) or (None, None)
    if not {"MatMul", "Gather"} <= wanted:
        gather = head = None
    islands = []
    for node in model.graph.node:
        if node.name == gather:
            continue
        if node.op_type == "MatMul" and "MatMul" in wanted and node.input[1] in inits:
            weight = inits[node.input[1]]
            if len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT:
                islands.append(
                    Island(
                        readable_name(node.name),
                        node.name,
                        "matmul",
                        weight.name,
                        _numel(weight),
                        tied=gather if node.name == head else None,
                    )
                )
        elif node.op_type == "Attention" and "Attention" in wanted and _plain_attention(node, inits):
            weight = inits[node.input[1]]
            islands.append(Island(readable_name(node.name), node.name, "attention", weight.name, _numel(weight)))
        elif node.op_type == "Gather" and "Gather" in wanted and node.input[0] in inits:
            table = inits[node.input[0]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if len(table.dims) == 2 and axis == 0 and table.data_type == onnx.TensorProto.FLOAT:
                islands.append(Island(readable_name(node.name), node.name, "gather", table.name, _numel(table)))
    return islands


def build_candidates(
    model: onnx.ModelProto,
    islands: list[Island],
    rungs: list[str],
    per_channel: bool = True,
    stats: dict[str, ActivationStats] | None = None,
    smooth_alpha: float = 0.8,
    token_mask: bool = False,
    pair_safe: bool = False,
    accuracy_level: int = 0,
) -> None:
    """Fill each island's candidates for `rungs` (and fp32). `stats` maps the input tensor of a MatMul/Attention
    island to its activation statistics, which the static and smoothed rungs need; `token_mask` says the model
    has an attention mask with which int8s can zero padded rows; `pair_safe` quantizes the weights of u8 x s8
    rungs so that a CPU without VNNI cannot saturate (see candidates.pair_safe_int8)."""
    from edgeq.progress import track

    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for island in track(islands, "candidates", total=len(islands)):
        node, weight = nodes[island.node_name], numpy_helper.to_array(inits[island.weight])
        fp32 = Candidate([node], [inits[island.weight]], weight.nbytes)
        if island.kind == "gather":
            island.candidates = _gather_candidates(node, weight, rungs) | {"fp32": fp32}
            continue
        island.candidates = _matmul_candidates(
            node,
            weight,
            island.kind,
            rungs,
            per_channel,
            (stats or {}).get(node.input[0]),
            smooth_alpha,
            token_mask,
            pair_safe,
            accuracy_level,
        )
        island.candidates["fp32"] = fp32
        if island.tied:
            _tie_lookup(island, nodes[island.tied], inits[nodes[island.tied].input[0]], rungs)
    for island in islands:
        for candidate in island.candidates.values():
            candidate.size_bytes = serialized_bytes(candidate)


def _tie_lookup(island: Island, gather: onnx.NodeProto, table: onnx.TensorProto, rungs: list[str]) -> None:
    """Give each of the LM head's candidates the embedding lookup that goes with it: read from the head's own
    MatMulNBits codes where the form allows (one table in the file), else the lookup's own rung (INT8 rows, FP16)
    or the FP32 table."""
    rows, width = table.dims
    own = _gather_candidates(gather, numpy_helper.to_array(table), rungs) if width % C.INT4_BLOCK == 0 else {}
    for rung, candidate in list(island.candidates.items()):
        shared = rung in C.SHAREABLE and width % C.INT4_BLOCK == 0
        lookup = own.get(rung) if rung != "fp32" else Candidate([gather], [table], 0)
        if not shared and lookup is None:  # no lookup of this precision: the island cannot take the rung
            del island.candidates[rung]
            continue
        tied = Candidate(list(candidate.nodes), list(candidate.initializers), 0, candidate.detail)
        if shared:
            tied.tied_nodes = C.tied_lookup(gather, candidate, rows, width)
            tied.detail = {**(candidate.detail or {}), "tied_embedding": "shares the head's table"}
        else:
            tied.tied_nodes, tied.initializers = list(lookup.nodes), tied.initializers + list(lookup.initializers)
        island.candidates[rung] = tied


def serialized_bytes(candidate: Candidate) -> int:
    """What the candidate's nodes and initializers weigh inside a saved model: each message's bytes plus its field
    tag and length prefix. A model's bytes are the sum of such fields, so the search counts what the file holds
    (up to the few bytes of the graph's own length prefix, and a weight another island still reads)."""
    return sum(_field_bytes(m.ByteSize()) for m in [*candidate.nodes, *candidate.tied_nodes, *candidate.initializers])


def _field_bytes(size: int) -> int:
    prefix = 1
    while size >= 0x80**prefix:
        prefix += 1
    return 1 + prefix + size


def _gather_candidates(node, table, rungs) -> dict[str, Candidate]:
    found: dict[str, Candidate] = {}
    # every INT8 rung: the same INT8 rows (for a DPU model, looked up on the CPU side)
    rows = C.gather_int8(node, table) if (INT8_ROWS | {"xint8"}) & set(rungs) else None
    for rung in rungs:
        if rung in INT8_ROWS or rung == "xint8":
            found[rung] = rows
        elif rung in ("int4", "int4a", "int4g", "int4o") and table.shape[1] % C.INT4_BLOCK == 0:
            found.setdefault("int4", C.gather_int4(node, table))
            found[rung] = found["int4"]
        elif rung == "fp16":
            found[rung] = C.gather_fp16(node, table)
    return found


def _matmul_candidates(
    node, weight, kind, rungs, per_channel, stats, smooth_alpha, token_mask, pair_safe, accuracy_level=0
) -> dict[str, Candidate]:
    found: dict[str, Candidate] = {}
    for rung in rungs:
        if rung == "int4" and kind == "matmul":
            found[rung] = C.matmul_int4(node, weight, accuracy_level=accuracy_level)
        elif rung == "int4a" and kind == "matmul" and stats is not None:
            found[rung] = C.matmul_int4(
                node,
                weight,
                (stats.rows.astype(np.float64) ** 2).mean(axis=0),
                tag="q4a",
                accuracy_level=accuracy_level,
            )
        elif rung == "int4g" and kind == "matmul" and stats is not None:
            found[rung] = C.matmul_int4(node, weight, tag="q4g", samples=stats.rows, accuracy_level=accuracy_level)
        elif rung == "int4o" and kind == "matmul":
            found[rung] = C.matmul_int4_offset(node, weight, accuracy_level)
        elif rung == "int8b" and kind == "matmul":
            found[rung] = C.matmul_int8_blocks(node, weight, accuracy_level)
        elif rung == "fp16" and kind == "matmul":
            found[rung] = C.matmul_fp16(node, weight)
        elif rung == "int8":
            found[rung] = C.matmul_int8(node, weight, per_channel, pair_safe)
        elif rung == "int8s" and stats is not None:
            found[rung] = C.matmul_smoothed(node, weight, stats, smooth_alpha, per_channel, token_mask, pair_safe)
        elif rung == "sint8" and stats is not None:
            found[rung] = C.matmul_static(node, weight, stats, pair_safe=pair_safe)
        elif rung == "sint8u" and stats is not None:
            alpha = found["sint8"].detail["alpha"] if "sint8" in found else None
            found[rung] = C.matmul_static(node, weight, stats, unsigned=True, alpha=alpha)
        elif rung == "w8" and kind == "matmul":  # onnxruntime folds a weight DQ into MatMul, not into Attention
            # beside a DPU's rungs, w8 runs on the CPU, where the DPU's per-tensor rule does not apply
            found[rung] = C.matmul_w8(node, weight, per_channel or "xint8" in rungs)
        elif rung == "xint8" and kind == "matmul" and stats is not None:
            found[rung] = C.matmul_xint8(node, weight, stats.rows.ravel())
    return found


def _plain_attention(node: onnx.NodeProto, inits: dict) -> bool:
    """A fused Attention whose QKV weight is a constant 2-D float matrix, with no past state or extra inputs."""
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    return (
        node.domain == MS_DOMAIN
        and weight is not None
        and len(weight.dims) == 2
        and weight.data_type == onnx.TensorProto.FLOAT
        and node.input[2] in inits
        and all(not name for name in node.input[4:])
        and len([o for o in node.output if o]) == 1
    )


def matmul_inputs(model: onnx.ModelProto, islands: list[Island]) -> list[str]:
    """The activation tensors the MatMul and Attention islands read (what SmoothQuant needs statistics of)."""
    nodes = {n.name: n for n in model.graph.node}
    return sorted({nodes[i.node_name].input[0] for i in islands if i.kind != "gather"})


def release_fp32_weights(model: onnx.ModelProto, islands: list[Island]) -> int:
    """Empty, in place, the FP32 weights of every island (and a tied lookup's table): once the FP32 session exists
    and no island can be assigned fp32, no model assembled from `model` reads them, and they are the largest thing
    the search holds in Python (650 MB for SmolLM2). Returns the bytes released."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    names = {i.weight for i in islands} | {nodes[i.tied].input[0] for i in islands if i.tied}
    released = 0
    for name in names:
        released += len(inits[name].raw_data)
        inits[name].ClearField("raw_data")
        inits[name].ClearField("float_data")
    return released


def island_outputs(model: onnx.ModelProto, islands: list[Island]) -> dict[str, str]:
    """Each island's output tensor (by island name): what its precision changes first."""
    writes = {n.name: n.output[0] for n in model.graph.node}
    return {i.name: writes[i.node_name] for i in islands if i.node_name in writes}


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1
