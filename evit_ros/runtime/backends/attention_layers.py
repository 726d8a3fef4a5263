"""Find the LiteMLA attention inside an exported graph, to keep it in fp32 under TensorRT.

In fp16 the attention's sums over thousands of tokens overflow (max 65504) and its eps
(1e-15) is zero, so an fp16 TensorRT build gives NaN masks unless the attention runs in
fp32, as PyTorch does (see ``docs``: release issues #113, #116, #123). Which layers those
are is read off the graph itself, not configured: starting from each MatMul, walk back along
data edges to the qkv ``Concat`` (the one fed by the qkv / aggregation convolutions), then
forward along data edges to the ``proj`` convolution. Every node on a path between the two
(reshape, slices, ReLU, pad, transposes, MatMuls, the eps ``Add``, the ``Div``, casts) is
attention. The same walk runs on an ONNX graph and on a TensorRT network definition.
"""

import dataclasses
from typing import Dict, Iterable, List, Sequence, Tuple

#: nodes whose only data input is the first; the others are shapes, starts, pads or axes.
_FIRST_INPUT_ONLY = {'Reshape', 'Slice', 'Pad', 'Expand', 'Tile', 'Resize', 'Gather',
                     'Unsqueeze', 'Squeeze', 'ReduceSum', 'Split', 'Upsample'}
#: walks never enter these: they leave the data path for shape arithmetic or weights.
_NOT_DATA = {'Shape', 'Size', 'Constant', 'ConstantOfShape'}
_START, _END = 'Concat', 'Conv'

#: TensorRT layer type name -> the ONNX op it plays in this walk.
TRT_LAYER_OPS = {
    'MATRIX_MULTIPLY': 'MatMul', 'CONCATENATION': 'Concat', 'CONVOLUTION': 'Conv',
    'SHUFFLE': 'Reshape', 'SLICE': 'Slice', 'SHAPE': 'Shape', 'CONSTANT': 'Constant',
    'RESIZE': 'Resize', 'GATHER': 'Gather', 'PADDING': 'Pad', 'FILL': 'ConstantOfShape',
}


@dataclasses.dataclass(frozen=True)
class GraphNode:
    """One operation: its name, ONNX op type, data inputs and outputs (tensor names)."""

    name: str
    op: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class AttentionRegion:
    """The nodes of one LiteMLA attention, between its qkv concat and its proj conv."""

    start: str                 # the qkv Concat (not part of the region)
    ends: Tuple[str, ...]      # the proj Conv(s) (not part of the region)
    nodes: Tuple[str, ...]     # in graph order

    def of_type(self, nodes: Sequence[GraphNode], op: str) -> List[str]:
        """Return the names of this region's nodes whose op type is ``op``."""
        ops = {n.name: n.op for n in nodes}
        return [name for name in self.nodes if ops.get(name) == op]


def data_inputs(op: str, inputs: Sequence[str]) -> Tuple[str, ...]:
    """Return the inputs of an ``op`` node that carry activations (not shapes or axes)."""
    inputs = tuple(i for i in inputs if i)
    return inputs[:1] if op in _FIRST_INPUT_ONLY else inputs


def attention_regions(nodes: Sequence[GraphNode]) -> List[AttentionRegion]:
    """Return the attention regions of a graph, one per qkv concat, in graph order.

    :param nodes: the graph in topological order (ONNX node order / TensorRT layer order).
    """
    producer: Dict[str, GraphNode] = {}
    consumers: Dict[str, List[GraphNode]] = {}
    for node in nodes:
        for tensor in node.outputs:
            producer[tensor] = node
        for tensor in node.inputs:
            consumers.setdefault(tensor, []).append(node)
    starts: List[GraphNode] = []
    for node in nodes:
        if node.op == 'MatMul':
            for start in _qkv_concats(node, producer):
                if start not in starts:
                    starts.append(start)
    order = {node.name: i for i, node in enumerate(nodes)}
    regions = []
    for start in sorted(starts, key=lambda n: order[n.name]):
        forward, ends = _downstream(start, consumers)
        on_path = _upstream(ends, producer, stop=start.name)
        region = sorted(forward & on_path, key=order.__getitem__)
        if region:
            regions.append(AttentionRegion(start.name, tuple(sorted(ends, key=order.get)),
                                           tuple(region)))
    return regions


def attention_node_names(nodes: Sequence[GraphNode]) -> List[str]:
    """Return the names of every attention node in the graph, in graph order."""
    return [name for region in attention_regions(nodes) for name in region.nodes]


def _qkv_concats(matmul: GraphNode, producer: Dict[str, GraphNode]) -> List[GraphNode]:
    """Walk back along data edges from a MatMul to the Concat(s) fed by convolutions."""
    found, seen, stack = [], set(), list(matmul.inputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen or node.op in _NOT_DATA or node.op == _END:
            continue
        seen.add(node.name)
        if node.op == _START and any(
                producer.get(t) is not None and producer[t].op == _END for t in node.inputs):
            found.append(node)
            continue
        stack.extend(node.inputs)
    return found


def _downstream(start: GraphNode, consumers: Dict[str, List[GraphNode]]
                ) -> Tuple[set, List[str]]:
    """Walk forward along data edges from ``start`` up to the first Conv on each path."""
    seen, ends, stack = set(), [], list(start.outputs)
    while stack:
        for node in consumers.get(stack.pop(), ()):
            if node.op in _NOT_DATA or node.name in seen:
                continue
            if node.op == _END:
                if node.name not in ends:
                    ends.append(node.name)
                continue
            seen.add(node.name)
            stack.extend(node.outputs)
    return seen, ends


def _upstream(ends: Iterable[str], producer: Dict[str, GraphNode], stop: str) -> set:
    """Return every node with a data path into one of ``ends``, not crossing ``stop``."""
    by_name = {node.name: node for node in producer.values()}
    seen, stack = set(), []
    for end in ends:
        stack.extend(by_name[end].inputs if end in by_name else ())
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen or node.name == stop:
            continue
        seen.add(node.name)
        stack.extend(node.inputs)
    return seen


def onnx_graph_nodes(model) -> List[GraphNode]:
    """Return the nodes of an ``onnx.ModelProto`` for :func:`attention_regions`."""
    return [GraphNode(node.name or f'{node.op_type}_{index}', node.op_type,
                      data_inputs(node.op_type, node.input), tuple(node.output))
            for index, node in enumerate(model.graph.node)]


def trt_network_nodes(network) -> List[GraphNode]:
    """Return the layers of a ``tensorrt.INetworkDefinition`` for :func:`attention_regions`.

    Layer types map to the ONNX ops they implement (:data:`TRT_LAYER_OPS`); others keep
    their TensorRT type name and count every input as data.
    """
    nodes = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        kind = getattr(layer.type, 'name', str(layer.type).rsplit('.', 1)[-1])
        op = TRT_LAYER_OPS.get(kind, kind)
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        nodes.append(GraphNode(
            layer.name, op, data_inputs(op, [t.name if t is not None else '' for t in inputs]),
            tuple(t.name for t in outputs if t is not None)))
    return nodes
