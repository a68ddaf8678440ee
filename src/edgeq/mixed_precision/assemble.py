"""Assemble a model from the FP32 graph and one candidate per island."""

from __future__ import annotations

import onnx
from onnx import helper

from edgeq.mixed_precision.candidates import MS_DOMAIN, TOKEN_MASK, token_mask_nodes
from edgeq.mixed_precision.islands import Island
from edgeq.optimize.cpu_forms import split_fused_norms

MASK_INPUT = "attention_mask"


def assemble(fp32: onnx.ModelProto, islands: list[Island], assignment: dict[str, str]) -> onnx.ModelProto:
    """A new model where each island uses `assignment[island.name]` (default: fp32), in the forms onnxruntime's CPU
    EP runs fastest (edgeq.optimize.cpu_forms), so that every model the search times is the form it ships in. The
    input is unchanged."""
    model = compose(fp32, islands, assignment)
    split_fused_norms(model)
    return model


def compose(fp32: onnx.ModelProto, islands: list[Island], assignment: dict[str, str]) -> onnx.ModelProto:
    """A new model where each island uses `assignment[island.name]` (default: fp32). The input is unchanged."""
    by_node = {i.node_name: i for i in islands}
    by_tied = {i.tied: i for i in islands if i.tied}
    nodes, initializers = [], {}
    replaced_weights = set()
    for node in fp32.graph.node:
        if tied := by_tied.get(node.name):  # a tied lookup takes the form its head's precision gives it, in its place
            nodes.extend(tied.candidates[assignment.get(tied.name, "fp32")].tied_nodes)
            continue
        island = by_node.get(node.name)
        choice = assignment.get(island.name, "fp32") if island else None
        if island is None or choice == "fp32":
            nodes.append(node)
            continue
        candidate = island.candidates[choice]
        nodes.extend(candidate.nodes)
        initializers.update({t.name: t for t in candidate.initializers})
        replaced_weights.update({island.weight, *([nodes_input(fp32, island.tied)] if island.tied else [])})
    still_used = {name for node in nodes for name in node.input}
    if TOKEN_MASK in still_used:
        mask_nodes, mask_inits = token_mask_nodes(MASK_INPUT)
        nodes = mask_nodes + nodes
        initializers.update({t.name: t for t in mask_inits})
    kept = [t for t in fp32.graph.initializer if t.name not in replaced_weights or t.name in still_used]
    graph = helper.make_graph(
        nodes,
        fp32.graph.name,
        list(fp32.graph.input),
        list(fp32.graph.output),
        kept + list(initializers.values()),
        value_info=list(fp32.graph.value_info),
    )
    opsets = list(fp32.opset_import)
    if not any(o.domain == MS_DOMAIN for o in opsets):
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgeq")
    four_bit = any(t.data_type in (onnx.TensorProto.UINT4, onnx.TensorProto.INT4) for t in initializers.values())
    model.ir_version = max(fp32.ir_version, 10) if four_bit else fp32.ir_version
    return model


def nodes_input(model: onnx.ModelProto, node_name: str, position: int = 0) -> str:
    return next(n.input[position] for n in model.graph.node if n.name == node_name)


def has_token_mask(model: onnx.ModelProto) -> bool:
    """Whether the model takes an attention mask (so padded rows can be zeroed inside it)."""
    return any(i.name == MASK_INPUT for i in model.graph.input)
