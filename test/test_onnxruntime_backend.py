"""ONNX Runtime backend: parity with PyTorch on a real frame, custom ONNX files, cache, errors."""

import logging

from conftest import require_shared
import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from evit_ros.eval.labels import MAPPINGS
from evit_ros.model import create_model
from evit_ros.runtime import BackendUnavailable, Segmenter
from evit_ros.runtime.backends import onnxruntime_backend
from evit_ros.runtime.backends.onnxruntime_backend import cache_root, OnnxRuntimeBackend
from evit_ros.runtime.backends.selection import create_backend
from evit_ros.runtime.export import export_onnx
from evit_ros.runtime.preprocess import preprocess


# PyTorch single-threaded here: same results, steady times on a loaded machine.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def cityscapes_frame():
    """The real Cityscapes val frame (256x128), RGB."""
    path = require_shared('data', 'cityscapes_val_sample',
                          'frankfurt_000000_000294_leftImg8bit.png')
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope='module')
def official_b0():
    """The official B0 Cityscapes model."""
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt')
    return create_model('b0-cityscapes', weights=str(weights))


def random_b1():
    """B1 with seeded random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(1)
    model = create_model('b1-cityscapes')
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def compare(backend, model, x):
    """Return (max |dlogit|, argmax agreement) of a backend against eager PyTorch fp32."""
    with torch.inference_mode():
        expected = model(torch.from_numpy(x))
    got = backend.infer(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    return (got - expected).abs().max().item(), agreement


@pytest.mark.parametrize('backend', ['onnxruntime', 'torch'])
@pytest.mark.parametrize('which, size', [('official-b0', (512, 1024)),
                                         ('random-b1', (256, 512))])
def test_fp32_parity_with_pytorch_on_the_real_frame(backend, which, size, cityscapes_frame,
                                                    request):
    # Every CPU backend against the eager, unfolded model (TensorRT: its own tests, GPU).
    model = request.getfixturevalue('official_b0') if which == 'official-b0' else random_b1()
    built = create_backend(backend, model, size, device='cpu', precision='fp32', threads=1)
    assert built.name == backend
    diff, agreement = compare(built, model, preprocess(cityscapes_frame, size))
    assert diff <= 1e-3
    assert agreement >= 0.999


def test_segmenter_label_maps_match_the_torch_pipeline(cityscapes_frame, official_weights):
    size = (256, 512)
    fast = Segmenter('b0-cityscapes', backend='onnxruntime', input_size=size, threads=1)
    reference = Segmenter('b0-cityscapes', backend='torch', input_size=size)
    assert (fast.postprocess, reference.postprocess) == ('fast', 'reference')
    out_size = (1024, 2048)       # camera resolution, 8x the logits
    got = fast.segment(cityscapes_frame, output_size=out_size)
    expected = reference.segment(cityscapes_frame, output_size=out_size)
    assert got.shape == expected.shape == out_size and got.dtype == np.uint8
    assert (got == expected).mean() >= 0.999
    # and at the frame's own size, in BGR
    bgr = np.ascontiguousarray(cityscapes_frame[:, :, ::-1])
    assert (fast.segment(bgr, 'bgr8') == reference.segment(bgr, 'bgr8')).mean() >= 0.999
    assert fast.timings.total_ms > 0 and fast.backend_name == 'onnxruntime'


@pytest.fixture(scope='module')
def small_onnx(tmp_path_factory):
    """A random-weight B0 exported at 64x128 with a batch axis, and the model."""
    torch.manual_seed(0)
    model = create_model('b0-cityscapes')
    path = tmp_path_factory.mktemp('onnx') / 'b0_64x128.onnx'
    export_onnx(model, (64, 128), path, dynamic_batch=True)
    return path, model


def test_a_custom_onnx_file_is_read_for_its_io(small_onnx):
    path, model = small_onnx
    backend = OnnxRuntimeBackend(model, (64, 128), onnx_file=path)
    assert (backend.input_name, backend.output_name) == ('image', 'logits')
    assert backend.output_shape == ('batch', 19, 8, 16)    # symbolic batch
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 128)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x))
    assert (backend.infer(x) - expected).abs().max().item() <= 1e-3


def renamed(path, tmp_path):
    """The same graph with its input called ``input.1`` and output ``out``."""
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        node.input[:] = ['input.1' if n == 'image' else n for n in node.input]
        node.output[:] = ['out' if n == 'logits' else n for n in node.output]
    proto.graph.input[0].name, proto.graph.output[0].name = 'input.1', 'out'
    out = tmp_path / 'renamed.onnx'
    onnx.save(proto, str(out))
    return out


def test_names_come_from_the_file_and_a_size_mismatch_says_what_to_do(small_onnx, tmp_path):
    path, model = small_onnx
    other = renamed(path, tmp_path)
    backend = OnnxRuntimeBackend(model, (64, 128), onnx_file=other)
    assert (backend.input_name, backend.output_name) == ('input.1', 'out')
    message = (r"takes Nx3x64x128 input 'input.1' but the network size is Nx3x128x256: "
               r'pass input_size=\(64, 128\)')
    with pytest.raises(ValueError, match=message):
        OnnxRuntimeBackend(model, (128, 256), onnx_file=other)


def test_wrong_class_count_missing_file_and_bad_settings_are_refused(small_onnx, tmp_path):
    path, _ = small_onnx
    with pytest.raises(ValueError, match='outputs 19 classes but the model has 150'):
        OnnxRuntimeBackend(create_model('b1-ade20k'), (64, 128), onnx_file=path)
    with pytest.raises(ValueError, match='does not exist'):
        OnnxRuntimeBackend(nn.Conv2d(3, 3, 1), (64, 128), onnx_file=tmp_path / 'none.onnx')
    garbage = tmp_path / 'garbage.onnx'
    garbage.write_bytes(b'not onnx')
    with pytest.raises(ValueError, match='onnxruntime cannot load'):
        OnnxRuntimeBackend(nn.Conv2d(3, 3, 1), (64, 128), onnx_file=garbage)
    model = create_model('b0-cityscapes')
    with pytest.raises(ValueError, match='fp16.*use tensorrt or torch'):
        OnnxRuntimeBackend(model, (64, 128), precision='fp16')
    with pytest.raises(ValueError, match='optimization'):
        OnnxRuntimeBackend(model, (64, 128), optimization='max')
    with pytest.raises(ValueError, match='threads must be >= 0'):
        OnnxRuntimeBackend(model, (64, 128), threads=-1)
    with pytest.raises(ValueError, match='int8 is not offered.*tensorrt for int8'):
        OnnxRuntimeBackend(model, (64, 128), precision='int8')


def test_cuda_without_onnxruntime_gpu_is_unavailable_with_the_fix(small_onnx):
    # This machine has the CPU build of onnxruntime only (no GPU here).
    path, model = small_onnx
    with pytest.raises(BackendUnavailable, match='install onnxruntime-gpu'):
        OnnxRuntimeBackend(model, (64, 128), device='cuda', onnx_file=path)


def test_wrong_input_shape_to_infer_is_refused(small_onnx):
    path, model = small_onnx
    backend = OnnxRuntimeBackend(model, (64, 128), onnx_file=path)
    with pytest.raises(ValueError, match=r'input shape \(1, 3, 32, 32\), expected'):
        backend.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_exports_are_cached_and_reused(monkeypatch, caplog):
    torch.manual_seed(0)
    model = create_model('b0-cityscapes')
    caplog.set_level(logging.INFO, logger='evit_ros.runtime')
    first = OnnxRuntimeBackend(model, (64, 64), threads=1)
    assert first.path.parent == cache_root() and first.path.is_file()
    assert first.session.get_session_options().intra_op_num_threads == 1

    def no_export(*args, **kwargs):
        raise AssertionError('exported again despite the cache')
    with monkeypatch.context() as patch:
        patch.setattr('evit_ros.runtime.export.build_onnx', no_export)
        second = OnnxRuntimeBackend(model, (64, 64))
    assert second.path == first.path
    assert 'using cached' in caplog.text
    x = np.zeros((1, 3, 64, 64), np.float32)
    assert torch.equal(first.infer(x), second.infer(x))
    # A damaged cached file is exported again, with a warning, not a failure.
    first.path.write_bytes(b'damaged')
    again = OnnxRuntimeBackend(model, (64, 64))
    assert 'cannot load cached' in caplog.text
    assert torch.equal(again.infer(x), first.infer(x))
    assert first.path.read_bytes() != b'damaged'
    # Other weights are another cache entry, never the stale file.
    with torch.no_grad():
        model.head.output_ops[0].op_list[-1].conv.bias.add_(1.0)
    third = OnnxRuntimeBackend(model, (64, 64))
    assert third.path != first.path


def test_weights_digest_sees_every_value():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1)
    before = onnxruntime_backend.weights_digest(model)
    with torch.no_grad():
        model.weight[0, 0, 0, 0] += 1e-6
    assert onnxruntime_backend.weights_digest(model) != before


def test_camvid_miou_of_the_fast_cpu_path_matches_the_official_implementation(
        official_weights):
    """The whole ORT pipeline (fast pre/post included) on the 101 real CamVid val frames.

    The official implementation measured mIoU 69.3 (736x960 bicubic in, logits bicubic
    back to 360x480); the torch path reproduces it in test_accuracy.py.
    """
    images = sorted(require_shared('data', 'camvid', 'val').glob('*.png'))
    labels = require_shared('data', 'camvid', 'valannot')
    assert len(images) == 101
    mapping = MAPPINGS['camvid']
    segmenter = Segmenter('b0-cityscapes', backend='onnxruntime', input_size=(736, 960),
                          threads=1)
    assert segmenter.postprocess == 'fast'
    matrix = np.zeros((11, 11), np.int64)
    for path in images:
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        label_map = segmenter.segment(rgb)
        assert label_map.shape == (360, 480)
        truth = mapping.ground_truth(cv2.imread(str(labels / path.name), cv2.IMREAD_UNCHANGED))
        pred = mapping.prediction(label_map)
        scored = truth < 11
        matrix += np.bincount(truth[scored].astype(np.int64) * 11 + pred[scored],
                              minlength=121).reshape(11, 11)
    inter = np.diag(matrix)
    iou = 100.0 * inter / (matrix.sum(0) + matrix.sum(1) - inter)
    assert iou.mean() == pytest.approx(69.3, abs=0.1)
