"""An fp16 ONNX graph whose LiteMLA attention stays in fp32, for strongly typed TensorRT.

The conversion is ONNX Runtime's own (``onnxruntime.transformers.float16``, shipped with
onnxruntime): every float tensor and initializer becomes fp16 except in the nodes of a block
list, around which it inserts explicit ``Cast`` nodes; the graph keeps fp32 input and
output. The block list is read off the graph (:mod:`.backends.attention_layers`): every
node between each attention's qkv ``Concat`` and its ``proj`` convolution (the ReLUs, the
padding row of ones, both MatMuls, the eps ``Add`` and the ``Div``) plus the ``Constant``
nodes that feed only those nodes. The second part matters: a converter that blocks only the
attention nodes still converts the eps constant, and 1e-15 has no fp16 value (the converters
clamp it to their smallest positive value, 6e-8 here or 1e-7 in onnxconverter-common), so a
black frame, whose attention sums are exactly zero, would divide by that clamp instead of
by 1e-15.

The model's own ``Cast`` nodes (the attention's cast to fp32 and the head's upsampling casts)
are handled by the same rule: inside the block list they keep ``to=FLOAT``, outside it they
become casts to fp16, so no node receives a type it was not written for; the graph is then
re-sorted topologically, because the converter appends the input and output casts at the end.
"""

from typing import Dict, List, Sequence, Set

import numpy as np

from evit_ros.model.blocks import ATTENTION_EPS
from evit_ros.runtime.backends.attention_layers import attention_node_names, onnx_graph_nodes

#: what the converted graph keeps in fp32, written into the artifact's recipe.
RECIPE = {
    'converter': 'onnxruntime.transformers.float16.convert_float_to_float16',
    'fp32_regions': 'LiteMLA attention: every node from the qkv Concat (exclusive) to the '
                    'proj Conv (exclusive), and the Constants feeding only them (the 1e-15 '
                    'eps)',
    'io': 'float32 input and output (Cast nodes at both ends)',
}


class Fp16Error(RuntimeError):
    """The graph could not be converted to fp16 as required."""


def fp32_nodes(proto) -> List[str]:
    """Return the names of the nodes kept in fp32: attention regions and their constants.

    :raises Fp16Error: when the graph has no attention region to keep (it would overflow).
    """
    attention = attention_node_names(onnx_graph_nodes(proto))
    if not attention:
        raise Fp16Error('found no LiteMLA attention in the graph to keep in fp32; refusing an '
                        'fp16 graph whose attention could overflow')
    blocked = set(attention)
    consumers: Dict[str, Set[str]] = {}
    for node in proto.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, set()).add(node.name)
    constants = [node.name for node in proto.graph.node
                 if node.op_type == 'Constant' and node.output[0] in consumers
                 and consumers[node.output[0]] <= blocked]
    return attention + constants


def convert_to_fp16(proto):
    """Return an fp16 copy of an fp32 ``onnx.ModelProto``, attention kept in fp32.

    :raises Fp16Error: when the graph has no attention region or the result is not valid.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    _name_nodes(model)
    blocked = fp32_nodes(model)
    model = onnx.shape_inference.infer_shapes(model)
    # The converter turns every typed float tensor into fp16 and then casts around each
    # blocked node, so a tensor between two blocked nodes would make an fp32 -> fp16 -> fp32
    # round trip (the eps and the denominator through fp16: 0/0 on a black frame). Tensors
    # inside the block list lose their type annotation and stay as their producer made them.
    inside = _inside(model, set(blocked))
    kept = [v for v in model.graph.value_info if v.name not in inside]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    # The default op block list keeps ops without fp16 kernels in ONNX Runtime fp32; none of
    # them occur in these models, and the artifact is for TensorRT, so only ours applies.
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=[],
                                         node_block_list=blocked, disable_shape_infer=True)
    sort_topologically(converted.graph)
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        raise Fp16Error(f'the fp16 graph is not valid ONNX: {exc}') from None
    problems = check_fp32_regions(converted, blocked)
    if problems:
        raise Fp16Error('the fp16 conversion did not keep the attention in fp32: '
                        + '; '.join(problems[:3]))
    return converted


def _inside(model, blocked: Set[str]) -> Set[str]:
    """Return the tensors produced by a blocked node and consumed only by blocked nodes."""
    consumers: Dict[str, Set[str]] = {}
    for node in model.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, set()).add(node.name)
    outputs = {value.name for value in model.graph.output}
    return {tensor for node in model.graph.node if node.name in blocked
            for tensor in node.output
            if tensor not in outputs and consumers.get(tensor, set()) <= blocked}


def check_fp32_regions(proto, blocked: Sequence[str]) -> List[str]:
    """Return what is wrong with the fp32 regions of a converted graph (empty: all fp32).

    Every float input and output of the attention's MatMul, Add and Div must be fp32, and
    every eps added there must be the fp32 value 1e-15, not rounded.
    """
    from onnx import TensorProto

    types = float_types(proto)
    wanted = set(blocked)
    problems = []
    for node in proto.graph.node:
        if node.name in wanted and node.op_type in ('MatMul', 'Add', 'Div'):
            for tensor in list(node.input) + list(node.output):
                if types.get(tensor) not in (None, TensorProto.FLOAT):
                    problems.append(f'{node.name} {tensor} is type {types[tensor]}')
    eps = eps_values(proto, blocked)
    if not eps:
        problems.append('no eps constant found in the attention')
    for value in eps:
        if value.dtype != np.float32 or float(value.reshape(-1)[0]) != np.float32(ATTENTION_EPS):
            problems.append(f'eps is {value.dtype} {float(value.reshape(-1)[0]):g}, not '
                            'float32 1e-15')
    return problems


def _name_nodes(model) -> None:
    """Give unnamed nodes unique names: block lists and region walks work by name."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f'{node.op_type}_{index}'
            while name in taken:
                name += '_'
            node.name = name
            taken.add(name)


def sort_topologically(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after its inputs' producers.

    Ties keep the original order, so an already sorted graph is unchanged.

    :raises Fp16Error: when the graph has a cycle or an input nobody produces.
    """
    known = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    known.add('')
    nodes = list(graph.node)
    pending = list(range(len(nodes)))
    order: List[int] = []
    while pending:
        ready = [i for i in pending if all(t in known for t in nodes[i].input)]
        if not ready:
            missing = sorted({t for i in pending for t in nodes[i].input if t not in known})
            raise Fp16Error(f'graph cannot be sorted: unproduced tensors {missing[:3]}')
        for index in ready:
            known.update(nodes[index].output)
        order.extend(ready)
        taken = set(ready)
        pending = [i for i in pending if i not in taken]
    sorted_nodes = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)


def float_types(proto) -> Dict[str, int]:
    """Return tensor name -> ONNX element type for every typed tensor (shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
            inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    for node in inferred.graph.node:
        if node.op_type == 'Constant':
            for attr in node.attribute:
                if attr.name == 'value':
                    types[node.output[0]] = attr.t.data_type
    return types


def eps_values(proto, nodes: Sequence[str]) -> List[np.ndarray]:
    """Return the scalar float constants added in ``nodes`` (the attention's eps)."""
    from onnx import numpy_helper

    wanted = set(nodes)
    constants = {}
    for node in proto.graph.node:
        if node.op_type == 'Constant':
            for attr in node.attribute:
                if attr.name == 'value':
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    for init in proto.graph.initializer:
        constants[init.name] = numpy_helper.to_array(init)
    found = []
    for node in proto.graph.node:
        if node.name in wanted and node.op_type == 'Add':
            for tensor in node.input:
                value = constants.get(tensor)
                if value is not None and value.size == 1 and value.dtype.kind == 'f':
                    found.append(value)
    return found
