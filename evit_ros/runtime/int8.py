"""Explicit int8 quantization (QuantizeLinear / DequantizeLinear) for strongly typed TensorRT.

The quantizer is ONNX Runtime's static one (``onnxruntime.quantization.quantize_static``,
QDQ format) in the form TensorRT consumes: int8 weights, symmetric and per output channel
(zero points 0), int8 activations with symmetric per-tensor scales from MinMax ranges over
real calibration frames, and Q/DQ pairs only on the inputs of the quantized convolutions
(none on their outputs: the next quantized layer's input pair requantizes, as NVIDIA's
placement recommends, so TensorRT can fuse conv + activation + requantize).

Which layers stay float is :data:`RECIPE`, found by measurement on the official B0 at
736x960 (``bench/precision_artifacts.py --sensitivity``): each convolution and MatMul
quantized alone against the fp32 graph on real CamVid frames, then the whole recipe scored on
the 101 CamVid val frames. The depthwise convolutions of the MBConv blocks lose the most,
and the pointwise projections reading their outputs next: the channels of those inputs span
two orders of magnitude in one tensor (max |x| from 0.2 to 120 on a CamVid frame), and a
per-tensor int8 scale leaves the small channels a few levels. The convolutions at half
resolution or more (the stem quantizes the image itself) stay float too, and the attention's
MatMuls and the rest of LiteMLA stay fp32 as in the fp16 artifact. Layers left float run in
fp32 under a strongly typed TensorRT build.
"""

import dataclasses
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from evit_ros.runtime.backends.attention_layers import attention_node_names, onnx_graph_nodes
from evit_ros.runtime.export import INPUT_NAME


class Int8Error(RuntimeError):
    """Quantization failed or produced a graph not in the required form."""


@dataclasses.dataclass(frozen=True)
class Int8Recipe:
    """Which layers are int8 and how their scales are calibrated.

    :param op_types: op types that may be quantized.
    :param keep_float: groups of nodes left float, read off the graph: ``attention``
        (LiteMLA between qkv concat and proj), ``depthwise`` (convolutions with one input
        channel per group), ``head`` (the segmentation head).
    :param calibrate_method: ONNX Runtime calibration method (``MinMax``).
    """

    op_types: Tuple[str, ...] = ('Conv', 'MatMul')
    keep_float: Tuple[str, ...] = ('attention', 'mbconv_depthwise_pointwise',
                                   'half_resolution')
    calibrate_method: str = 'MinMax'

    def describe(self) -> Dict[str, object]:
        """Return the recipe as it goes into the artifact's sidecar."""
        return {
            'quantizer': 'onnxruntime.quantization.quantize_static, QuantFormat.QDQ',
            'weights': 'int8, symmetric, per output channel (zero point 0)',
            'activations': 'int8, symmetric per tensor (zero point 0), Q/DQ on inputs of '
                           'quantized layers only',
            'calibration': f'{self.calibrate_method} ranges over the calibration frames',
            'op_types': list(self.op_types),
            'kept_float': list(self.keep_float),
        }


RECIPE = Int8Recipe()


def float_groups(proto) -> Dict[str, List[str]]:
    """Return group name -> node names for the groups :class:`Int8Recipe` may keep float.

    ``attention``: the LiteMLA regions (:mod:`.backends.attention_layers`).
    ``depthwise``: convolutions with one input channel per group.
    ``mbconv_depthwise_pointwise``: the depthwise convolution of each MBConv / DSConv block
    and the pointwise projection that reads its output (``depth_conv``, ``point_conv``).
    ``half_resolution``: convolutions reading tensors at half the input resolution or more.
    ``head``: the segmentation head.
    """
    import onnx
    from onnx import numpy_helper

    weights = {init.name: init for init in proto.graph.initializer}
    depthwise = []
    for node in proto.graph.node:
        if node.op_type != 'Conv' or len(node.input) < 2 or node.input[1] not in weights:
            continue
        group = next((a.i for a in node.attribute if a.name == 'group'), 1)
        shape = numpy_helper.to_array(weights[node.input[1]]).shape
        if group > 1 and shape[1] == 1:
            depthwise.append(node.name)
    inferred = onnx.shape_inference.infer_shapes(proto)
    heights = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
               for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    image_height = heights[INPUT_NAME][2]
    half = [n.name for n in proto.graph.node if n.op_type == 'Conv'
            and len(heights.get(n.input[0], ())) == 4
            and 2 * heights[n.input[0]][2] >= image_height]
    return {
        'attention': attention_node_names(onnx_graph_nodes(proto)),
        'depthwise': depthwise,
        'mbconv_depthwise_pointwise': [n.name for n in proto.graph.node
                                       if '/depth_conv/' in n.name or '/point_conv/' in n.name],
        'half_resolution': half,
        'head': [n.name for n in proto.graph.node if n.name.startswith('/head/')],
    }


def int8_nodes(proto, recipe: Int8Recipe = RECIPE) -> List[str]:
    """Return the names of the nodes ``recipe`` quantizes, in graph order."""
    groups = float_groups(proto)
    unknown = set(recipe.keep_float) - set(groups)
    if unknown:
        raise Int8Error(f'unknown layer groups {sorted(unknown)}; known: {sorted(groups)}')
    kept = {name for group in recipe.keep_float for name in groups[group]}
    return [n.name for n in proto.graph.node
            if n.op_type in recipe.op_types and n.name not in kept]


class _Frames:
    """Feed :class:`~evit_ros.runtime.calibration.CalibrationData` to ONNX Runtime."""

    def __init__(self, calibration):
        self._frames = iter(calibration)

    def get_next(self):
        network_input = next(self._frames, None)
        return None if network_input is None else {INPUT_NAME: network_input}

    def rewind(self):  # ONNX Runtime's reader interface; one pass is all it needs here
        return None


def quantize_int8(proto, calibration, recipe: Int8Recipe = RECIPE,
                  only: Optional[Sequence[str]] = None):
    """Return ``(int8 onnx.ModelProto, recipe dict)`` for an fp32 graph.

    :param proto: the checked fp32 export.
    :param calibration: a :class:`~evit_ros.runtime.calibration.CalibrationData`.
    :param recipe: which layers are quantized and how.
    :param only: quantize just these nodes instead (sensitivity measurements).
    :raises Int8Error: when quantization fails or the result is not symmetric int8 Q/DQ.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static, QuantType)

    class Reader(_Frames, CalibrationDataReader):
        pass

    selected = list(only) if only is not None else int8_nodes(proto, recipe)
    if not selected:
        raise Int8Error('the recipe leaves no layer to quantize')
    with tempfile.TemporaryDirectory(prefix='evit_ros_int8_') as folder:
        source = os.path.join(folder, 'fp32.onnx')
        target = os.path.join(folder, 'int8.onnx')
        onnx.save(proto, source)
        try:
            quantize_static(
                source, target, Reader(calibration), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(recipe.op_types), nodes_to_quantize=selected,
                per_channel=True, reduce_range=False, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
                extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True,
                               'OpTypesToExcludeOutputQuantization': list(recipe.op_types)})
        except Exception as exc:  # the quantizer raises many types; report them as one
            raise Int8Error(f'int8 quantization failed: {exc}') from None
        quantized = onnx.load(target)
    summary = qdq_summary(quantized)
    if summary['asymmetric']:
        raise Int8Error(f'quantizer left non-zero zero points on {summary["asymmetric"][:3]}')
    described = recipe.describe()
    described.update({'int8_layers': summary['quantized_layers'],
                      'float_layers': len([n for n in proto.graph.node
                                           if n.op_type in recipe.op_types]) -
                      summary['quantized_layers']})
    return quantized, described


def qdq_summary(proto) -> Dict[str, object]:
    """Describe the Q/DQ of a graph: quantized layers, per-channel weights, zero points."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    asymmetric, per_channel, per_tensor_weights, layers = [], 0, [], 0
    for node in proto.graph.node:
        if node.op_type in ('QuantizeLinear', 'DequantizeLinear') and len(node.input) > 2:
            zero = constants.get(node.input[2])
            # int32 zero points are the biases'; activations and weights must be int8.
            if zero is not None and (zero.dtype.name not in ('int8', 'int32') or zero.any()):
                asymmetric.append(node.name)
        if node.op_type in ('Conv', 'MatMul') and len(node.input) > 1:
            weight = producers.get(node.input[1])
            data = producers.get(node.input[0])
            if weight is None or weight.op_type != 'DequantizeLinear':
                continue
            if data is None or data.op_type != 'DequantizeLinear':
                per_tensor_weights.append(node.name)
                continue
            layers += 1
            if np.size(constants.get(weight.input[1], 0)) > 1:
                per_channel += 1
    return {'quantized_layers': layers, 'per_channel_weights': per_channel,
            'asymmetric': asymmetric, 'weights_without_input_qdq': per_tensor_weights}
