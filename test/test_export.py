"""ONNX export: I/O contract, parity with PyTorch, the eps that keeps 0/0 out, atomic writes."""

import functools

from conftest import require_shared
import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort
import pytest
import torch
from torch import nn

import evit_ros.model.blocks as blocks
from evit_ros.model import create_model
from evit_ros.runtime import deploy, export
from evit_ros.runtime.export import build_onnx, export_onnx, ExportError, parity_inputs

SIZES = [(128, 256), (256, 256)]


# PyTorch single-threaded here: same results, steady times on a loaded machine.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def random_model(name):
    """A random-weight model (seeded) with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = create_model(name)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope='module')
def official_b0():
    """The official B0 Cityscapes model."""
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt')
    return create_model('b0-cityscapes', weights=str(weights))


def run(proto_or_path, x):
    """Run an ONNX model on the CPU; return its only output."""
    source = proto_or_path.SerializeToString() if hasattr(proto_or_path, 'graph') \
        else str(proto_or_path)
    session = ort.InferenceSession(source, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def io_of(proto):
    """Return ``[(name, elem_type, dims)]`` of the graph's inputs and outputs."""
    def describe(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in values]
    return describe(proto.graph.input), describe(proto.graph.output)


@pytest.mark.parametrize('size', SIZES)
def test_official_b0_export_file_matches_pytorch(official_b0, tmp_path, size):
    path = tmp_path / 'nested' / 'b0.onnx'
    report = export_onnx(official_b0, size, path)
    assert path.is_file() and report.path == path
    assert report.size_bytes == path.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == ['b0.onnx']   # no .part left
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    h, w = size
    inputs, outputs = io_of(proto)
    # A plain export has a batch of 1 (dynamic_batch=True, as the onnxruntime backend and
    # the artifacts use, makes it symbolic: see the dynamic-batch test below).
    assert inputs == [('image', onnx.TensorProto.FLOAT, [1, 3, h, w])]
    assert outputs == [('logits', onnx.TensorProto.FLOAT, [1, 19, h // 8, w // 8])]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta['input_size'] == f'{h}x{w}' and meta['num_classes'] == '19'
    assert report.max_abs_diff <= 1e-3 and report.argmax_agreement >= 0.999
    # Independently of the report: the file against eager PyTorch on an image-like input.
    x = parity_inputs(size)['synthetic']
    with torch.inference_mode():
        expected = official_b0(torch.from_numpy(x)).numpy()
    got = run(path, x)
    assert np.abs(got - expected).max() <= 1e-3
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize('name', ['b1-cityscapes', 'l1-cityscapes', 'b1-ade20k'])
@pytest.mark.parametrize('size', SIZES)
def test_export_parity_across_models(name, size):
    model = random_model(name)
    proto, report = build_onnx(model, size)
    classes = model.cfg.num_classes
    assert report.output_shape == (1, classes, size[0] // 8, size[1] // 8)
    assert report.max_abs_diff <= 1e-3 and report.argmax_agreement >= 0.999
    assert io_of(proto)[1][0][2] == [1, classes, size[0] // 8, size[1] // 8]


def test_release_form_export_keeps_cubic_resize_and_matches(official_b0):
    proto, report = build_onnx(official_b0, (128, 256), upsample='resize', fold=False)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count('Resize') == 2            # the head's bicubic x4 and x2
    assert report.max_abs_diff <= 1e-3
    fast, _ = build_onnx(official_b0, (128, 256))
    assert 'Resize' not in {node.op_type for node in fast.graph.node}


def eps_constants(proto):
    """The Constant nodes holding the attention's 1e-15."""
    found = []
    for node in proto.graph.node:
        if node.op_type == 'Constant':
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.size == 1 and value.dtype == np.float32 and \
                    float(value.reshape(-1)[0]) == np.float32(blocks.ATTENTION_EPS):
                found.append(node)
    return found


def test_black_frame_gives_finite_logits_and_eps_is_what_keeps_it_so(official_b0):
    size = (128, 256)
    proto, _ = build_onnx(official_b0, size)
    black = parity_inputs(size)['black']
    logits = run(proto, black)
    assert np.isfinite(logits).all()
    # One eps per attention layer of B0 (stages 3 and 4, two blocks each)...
    constants = eps_constants(proto)
    assert len(constants) == 4
    # ...and without it, as the dynamo exporter leaves the graph, a black frame is NaN.
    for node in constants:
        node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(0, np.float32)))
    assert np.isnan(run(proto, black)).mean() > 0.5


def test_a_graph_that_differs_from_pytorch_is_refused_and_not_written(official_b0, tmp_path,
                                                                      monkeypatch):
    def without_eps(model, input_size, **options):
        deployed = deploy.deployment_model(model, input_size, **options)

        class Traced(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = deployed

            def forward(self, x):
                # The eps vanishes only while tracing: the reference keeps it.
                original = blocks.relu_linear_attention
                blocks.relu_linear_attention = functools.partial(original, eps=0.0)
                try:
                    return self.inner(x)
                finally:
                    blocks.relu_linear_attention = original
        return Traced()

    monkeypatch.setattr(export, 'deployment_model', without_eps)
    path = tmp_path / 'broken.onnx'
    with pytest.raises(ExportError, match='does not match PyTorch.*nothing written'):
        export_onnx(official_b0, (128, 256), path)
    assert list(tmp_path.iterdir()) == []


def test_bad_sizes_and_samples_are_refused_with_the_reason():
    model = random_model('b0-cityscapes')
    with pytest.raises(ValueError, match='multiple of 32'):
        build_onnx(model, (100, 256))
    with pytest.raises(ExportError, match=r'parity sample has shape \(1, 3, 64, 64\)'):
        build_onnx(model, (64, 128), sample=np.zeros((1, 3, 64, 64), np.float32))


def test_unwritable_destination_is_one_clear_error(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(ExportError, match='cannot write'):
        export_onnx(random_model('b0-cityscapes'), (64, 64), blocker / 'm.onnx')


def test_matmul_upsample_equals_bicubic_interpolation():
    x = torch.randn(2, 5, 7, 9)
    up = deploy.MatmulUpsample((7, 9), (28, 36))
    expected = torch.nn.functional.interpolate(x, size=(28, 36), mode='bicubic',
                                               align_corners=False)
    assert torch.allclose(up(x), expected, atol=1e-5)


def test_dynamic_batch_export_runs_any_batch_like_pytorch():
    model = random_model('b0-cityscapes')
    proto, report = build_onnx(model, (64, 128), dynamic_batch=True)
    inputs, outputs = io_of(proto)
    assert inputs[0][2] == ['batch', 3, 64, 128] and outputs[0][2] == ['batch', 19, 8, 16]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert report.max_abs_diff <= 1e-3
    x = np.concatenate([parity_inputs((64, 128))['synthetic'], parity_inputs((64, 128))[
        'black'], np.flip(parity_inputs((64, 128))['synthetic'], -1).copy()])
    got = run(proto, x)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 19, 8, 16)
    assert np.abs(got - expected).max() <= 1e-3
    for index in range(3):      # each image of the batch as if alone
        assert np.abs(run(proto, x[index:index + 1])[0] - got[index]).max() <= 1e-4
