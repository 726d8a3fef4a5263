"""The TensorRT backend: attention layers found in the real exported graph, fp32 pinning,
build-failure messages, and parity with PyTorch where TensorRT exists.

This machine has no GPU and TensorRT cannot be installed here, so the parity tests skip
with "TensorRT not installed". The pinning test drives ``pin_attention_fp32`` with a stand-in
for TensorRT's network definition, built layer for layer from the real exported ONNX graph.
"""

import importlib.util
import re
import types

import cv2
import numpy as np
import onnx
from onnx import shape_inference
import pytest

from conftest import require_shared
from evit_ros.model import create_model, get_entry
from evit_ros.runtime.backends import BackendUnavailable
from evit_ros.runtime.backends.attention_layers import (
    attention_node_names, attention_regions, onnx_graph_nodes, trt_network_nodes)
from evit_ros.runtime.backends.tensorrt_backend import (
    BuildStatus, explain_build_failure, make_progress_monitor, pin_attention_fp32,
    TensorRTBackend)
from evit_ros.runtime.export import build_onnx
from evit_ros.runtime.preprocess import preprocess

HAVE_TENSORRT = importlib.util.find_spec('tensorrt') is not None
needs_tensorrt = pytest.mark.skipif(not HAVE_TENSORRT, reason='TensorRT not installed')
SCOPE = re.compile(r'(/backbone/stages\.\d+/op_list\.\d+/context_module/main/)(.*)')


@pytest.fixture(scope='module')
def model():
    return create_model('b0-cityscapes')


@pytest.fixture(scope='module')
def exported(model):
    """The B0 graph at a size as the project exports it (legacy exporter, folded, static)."""
    graphs = {}

    def export(size):
        if size not in graphs:
            proto, _ = build_onnx(model, size, check=False)
            graphs[size] = shape_inference.infer_shapes(proto)
        return graphs[size]
    return export


def float_activations(proto):
    """Names of tensors that are float32 with rank >= 3, from ONNX shape inference."""
    infos = list(proto.graph.value_info) + list(proto.graph.output)
    return {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            and len(v.type.tensor_type.shape.dim) >= 3}


def expected_attention(proto):
    """Each LiteMLA's float computations, read off the exporter's module scopes.

    Independent of the graph walk: every node named inside a LiteMLA (``context_module/
    main``) that computes a float activation, except the qkv and aggregation convolutions,
    their concat and the proj convolution.
    """
    activations = float_activations(proto)
    blocks = {}
    for node in proto.graph.node:
        match = SCOPE.match(node.name)
        if not match or match.group(2).startswith(('qkv/', 'aggreg', 'proj/')):
            continue
        if match.group(2) != 'Concat' and node.output[0] in activations:
            blocks.setdefault(match.group(1), set()).add(node.name)
    return blocks


@pytest.mark.parametrize('size, per_block', [
    ((128, 256), {'MatMul': 2, 'Div': 1, 'Relu': 2}),            # linear attention
    ((64, 64), {'MatMul': 2, 'Div': 1, 'ReduceSum': 1}),         # quadratic (H*W <= dim)
])
def test_attention_regions_of_exported_b0(exported, size, per_block):
    proto = exported(size)
    nodes = onnx_graph_nodes(proto)
    regions = attention_regions(nodes)
    blocks = expected_attention(proto)
    # B0 has 2 + 2 EfficientViT blocks in stages 3 and 4: four LiteMLAs.
    assert len(blocks) == 4 and len(regions) == 4
    for region in regions:
        scope = region.start[:-len('Concat')]
        assert region.start == scope + 'Concat'
        assert region.ends == (scope + 'proj/conv/Conv',)
        assert set(region.nodes) == blocks[scope]
        for op, count in per_block.items():
            assert len(region.of_type(nodes, op)) == count, (scope, op)
    # Every MatMul/Div inside a LiteMLA is found; the head's upsampling MatMuls are not.
    found = set(attention_node_names(nodes))
    for node in nodes:
        if node.op in ('MatMul', 'Div'):
            assert (node.name in found) == ('/context_module/' in node.name), node.name


class _Tensor:
    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class _Layer:
    def __init__(self, name, kind, inputs, outputs):
        self.name, self.type = name, kind
        self._inputs, self._outputs = inputs, outputs
        self.num_inputs, self.num_outputs = len(inputs), len(outputs)
        self.precision = None
        self.output_types = {}

    def get_input(self, i):
        return self._inputs[i]

    def get_output(self, i):
        return self._outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


# ONNX op -> the TensorRT layer type its parser makes (Pad becomes a fill-mode slice).
_TRT_KIND = {'MatMul': 'MATRIX_MULTIPLY', 'Concat': 'CONCATENATION', 'Conv': 'CONVOLUTION',
             'Reshape': 'SHUFFLE', 'Transpose': 'SHUFFLE', 'Unsqueeze': 'SHUFFLE',
             'Slice': 'SLICE', 'Pad': 'SLICE', 'Shape': 'SHAPE', 'Constant': 'CONSTANT',
             'Gather': 'GATHER', 'Relu': 'ACTIVATION', 'HardSigmoid': 'ACTIVATION',
             'Add': 'ELEMENTWISE', 'Mul': 'ELEMENTWISE', 'Div': 'ELEMENTWISE',
             'Cast': 'CAST', 'ReduceSum': 'REDUCE', 'ConstantOfShape': 'FILL'}


def stand_in_tensorrt(proto):
    """Stand in for TensorRT (it cannot exist here): a ``trt`` namespace and a network
    definition with one layer per ONNX node, as TensorRT's ONNX parser names them."""
    kinds = {name: types.SimpleNamespace(name=name) for name in set(_TRT_KIND.values())}
    trt = types.SimpleNamespace(
        DataType=types.SimpleNamespace(FLOAT='float32', INT64='int64'),
        LayerType=types.SimpleNamespace(**kinds),
        BuilderFlag=types.SimpleNamespace(OBEY_PRECISION_CONSTRAINTS='obey'))
    floats = {v.name for v in list(proto.graph.value_info) + list(proto.graph.output)
              + list(proto.graph.input) if v.type.tensor_type.elem_type == 1}
    initializers = {i.name for i in proto.graph.initializer}
    layers = []
    for node in proto.graph.node:
        if node.op_type == 'Constant':
            value = next(a.t for a in node.attribute if a.name == 'value')
            floats.update(node.output if value.data_type == 1 else ())
        inputs = [_Tensor(t, 'float32' if t in floats else 'int64') for t in node.input
                  if t and t not in initializers]
        outputs = [_Tensor(t, 'float32' if t in floats else 'int64') for t in node.output]
        kind = kinds.get(_TRT_KIND.get(node.op_type, ''),
                         types.SimpleNamespace(name=node.op_type.upper()))
        layers.append(_Layer(node.name, kind, inputs, outputs))
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    config = types.SimpleNamespace(flags=[])
    config.set_flag = config.flags.append
    return trt, network, config, layers


def test_pin_attention_fp32_on_the_network(exported):
    proto = exported((128, 256))
    trt, network, config, layers = stand_in_tensorrt(proto)
    nodes = trt_network_nodes(network)
    attention = set(attention_node_names(nodes))
    assert attention == set().union(*expected_attention(proto).values())

    pinned = pin_attention_fp32(trt, network, config)

    assert config.flags == ['obey']
    by_output = {t.name: layer for layer in layers for t in layer._outputs}
    feeding = {by_output[t.name].name for layer in layers if layer.name in attention
               for t in layer._inputs if t.name in by_output
               and by_output[t.name].type.name == 'CONSTANT' and t.dtype == 'float32'}
    assert any(name.endswith('main/Constant_34') for name in feeding)  # the eps of the Div
    chosen = {layer.name for layer in layers if layer.precision == 'float32'}
    assert chosen == attention | feeding and pinned == len(chosen)
    for layer in layers:
        if layer.name in chosen:
            assert layer.output_types == {0: 'float32'}
        else:
            assert layer.output_types == {}


def test_build_failure_messages():
    oom = explain_build_failure(
        ['Requested amount of GPU memory (1073741824 bytes) could not be allocated.'], 1024)
    assert oom.startswith('tensorrt: the engine build ran out of memory (workspace 1024 MiB)')
    assert '--workspace-mb (e.g. 512)' in oom and 'evit-ros build-engine' in oom
    assert 'TensorRT said: Requested amount' in oom
    tactic = explain_build_failure(['Could not find any implementation for node X.'], 256)
    assert 'raise --workspace-mb (e.g. 512)' in tactic
    assert explain_build_failure([], 256) == (
        'tensorrt: the engine build failed. TensorRT gave no reason.')


def test_progress_monitor_reports_phases():
    base = type('IProgressMonitor', (), {'__init__': lambda self: None})
    status = BuildStatus()
    monitor = make_progress_monitor(types.SimpleNamespace(IProgressMonitor=base), status)
    monitor.phase_start('Building engine', None, 3)
    monitor.phase_start('Tactic selection', 'Building engine', 40)
    assert monitor.step_complete('Building engine', 0) is True
    monitor.step_complete('Tactic selection', 9)
    assert status.text() == 'Building engine 1/3, Tactic selection 10/40'
    monitor.phase_finish('Tactic selection')
    assert status.text() == 'Building engine 1/3'
    assert make_progress_monitor(types.SimpleNamespace(), status) is None  # TensorRT 8


@pytest.mark.parametrize('kwargs, message', [
    ({'device': 'cpu'}, 'tensorrt runs on CUDA GPUs only'),
    ({'device': 'cuda', 'precision': 'bf16'}, "tensorrt precision 'bf16' is not one of"),
    ({'device': 'cuda', 'precision': 'int8'}, 'int8 needs calibration data'),
    ({'device': 'cuda', 'workspace_mb': 0}, 'workspace_mb must be >= 16'),
])
def test_bad_settings_are_refused_first(model, kwargs, message):
    with pytest.raises(BackendUnavailable, match=re.escape(message)):
        TensorRTBackend(model, (64, 64), **kwargs)


@pytest.mark.skipif(HAVE_TENSORRT, reason='TensorRT is installed here')
def test_without_tensorrt_the_reason_is_given(model, tmp_path):
    with pytest.raises(BackendUnavailable) as info:
        TensorRTBackend(model, (64, 64), device='cuda', precision='fp16', engine_dir=tmp_path)
    assert str(info.value).startswith('tensorrt: TensorRT is not installed here (it needs an '
                                      'NVIDIA GPU; on a Jetson it comes with JetPack) (')
    assert list(tmp_path.iterdir()) == []


@needs_tensorrt
@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_tensorrt_matches_torch(official_weights, tmp_path, precision):
    import torch

    from evit_ros.runtime.backends.torch_backend import TorchBackend
    if not torch.cuda.is_available():
        pytest.skip('no CUDA GPU')
    frame = require_shared('data', 'frames', 'city_2048x1024.png')
    rgb = cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)
    size = (512, 1024)
    x = preprocess(rgb, size)
    model = create_model('b0-cityscapes', weights='official')
    reference = TorchBackend(model, size).infer(x).numpy()
    options = dict(device='cuda', precision=precision, engine_dir=str(tmp_path),
                   entry=get_entry('b0-cityscapes'), weights='official')
    backend = TensorRTBackend(model, size, **options)
    assert backend.built and backend.input_name == 'image' and backend.output_name == 'logits'
    logits = backend.infer(x).numpy()
    assert logits.shape == reference.shape and np.isfinite(logits).all()
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    if precision == 'fp32':
        assert float(np.abs(logits - reference).max()) <= 1e-3
        assert agreement >= 0.999
    else:
        assert agreement >= 0.99
    # The second start loads the cached engine and computes the same logits.
    again = TensorRTBackend(model, size, **options)
    assert not again.built and again.engine_path == backend.engine_path
    np.testing.assert_array_equal(again.infer(x).numpy(), logits)
