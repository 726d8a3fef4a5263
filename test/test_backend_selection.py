"""Backend selection: ``auto``'s order and its one-line reasons, explicit names, options."""

import importlib.util
import logging

import numpy as np
import pytest
import torch

from evit_ros.model import create_model
from evit_ros.runtime import BackendUnavailable, Segmenter
from evit_ros.runtime.backends import Backend, selection
from evit_ros.runtime.backends.selection import AUTO_ORDER, BACKENDS, create_backend
from evit_ros.runtime.backends.torch_backend import TorchBackend

SIZE = (64, 128)
HAVE_ORT_BACKEND = importlib.util.find_spec(
    'evit_ros.runtime.backends.onnxruntime_backend') is not None


NO_GPU_HERE = pytest.mark.skipif(
    torch.cuda.is_available() or importlib.util.find_spec('tensorrt') is not None,
    reason='checks the fallback of a machine without GPU and TensorRT')


@pytest.fixture(autouse=True)
def private_engine_dir(tmp_path, monkeypatch):
    """Keep any engine a test might build out of the package's engines/ folder."""
    monkeypatch.setenv('EVIT_ROS_ENGINE_DIR', str(tmp_path / 'engines'))


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return create_model('b0-cityscapes')


@pytest.fixture
def runtime_log(caplog):
    caplog.set_level(logging.INFO, logger='evit_ros.runtime')

    def lines(level=logging.INFO):
        return [r.getMessage() for r in caplog.records
                if r.name == 'evit_ros.runtime' and r.levelno >= level]
    return lines


def skips(lines):
    """Map 'name on device' -> reasons, from auto's skip lines."""
    found = {}
    for line in lines:
        if line.startswith('auto: skipping '):
            where, reason = line[len('auto: skipping '):].split(': ', 1)
            found.setdefault(where, []).append(reason)
    return found


@NO_GPU_HERE
def test_auto_here_falls_back_to_the_cpu(model, runtime_log):
    backend = create_backend('auto', model, SIZE, device='cuda',
                             engine_dir='/nonexistent/engines')
    expected = 'onnxruntime' if HAVE_ORT_BACKEND else 'torch'
    assert (backend.name, backend.device, backend.precision) == (expected, 'cpu', 'fp32')
    lines = runtime_log()
    found = skips(lines)
    # Exactly one line, with a reason, for each GPU candidate skipped on this machine.
    assert {k: len(v) for k, v in found.items()} == {
        'tensorrt on cuda': 1, 'onnxruntime on cuda': 1, 'torch on cuda': 1,
        **({} if HAVE_ORT_BACKEND else {'onnxruntime on cpu': 1})}
    assert found['tensorrt on cuda'][0].startswith('TensorRT is not installed here (it needs '
                                                   'an NVIDIA GPU')
    assert found['torch on cuda'] == ['CUDA is not available on this machine']
    assert len(found['onnxruntime on cuda'][0]) > 10
    assert lines[-1] == f'backend: {expected} on cpu, fp32 (auto)'
    # The chosen backend computes the model's logits.
    x = np.random.default_rng(0).standard_normal((1, 3) + SIZE).astype(np.float32)
    reference = TorchBackend(model, SIZE).infer(x)
    assert float((backend.infer(x) - reference).abs().max()) < 1e-4


@NO_GPU_HERE
def test_auto_on_the_cpu_says_when_it_runs_fp32(model, runtime_log):
    backend = create_backend('auto', model, SIZE, device='cuda', precision='fp16')
    assert backend.device == 'cpu' and backend.precision == 'fp32'
    assert skips(runtime_log())['onnxruntime on cuda'] == [
        'it has no fp16 (TensorRT or torch do); fp16 was asked for']
    assert runtime_log()[-1].endswith('(auto; fp16 needs a GPU, fp32 on the CPU)')


@NO_GPU_HERE
def test_segmenter_reports_the_backend_auto_chose(model):
    segmenter = Segmenter(model, backend='auto', input_size=SIZE)
    assert segmenter.backend_name == ('onnxruntime' if HAVE_ORT_BACKEND else 'torch')
    assert (segmenter.backend.device, segmenter.backend.precision) == ('cpu', 'fp32')
    label_map = segmenter.segment(np.zeros((48, 96, 3), np.uint8))
    reference = Segmenter(model, backend='torch', input_size=SIZE)
    np.testing.assert_array_equal(label_map, reference.segment(np.zeros((48, 96, 3),
                                                                        np.uint8)))


@NO_GPU_HERE
def test_explicit_tensorrt_is_unavailable_here(model, tmp_path):
    with pytest.raises(BackendUnavailable, match='^tensorrt: TensorRT is not installed here '):
        create_backend('tensorrt', model, SIZE, device='cuda', precision='fp16',
                       engine_dir=str(tmp_path))


def test_unknown_names_and_options(model):
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'; choose one of "
                                         'auto, tensorrt, onnxruntime, torch'):
        create_backend('tensorflow', model, SIZE)
    with pytest.raises(ValueError, match='unknown backend option'):
        create_backend('torch', model, SIZE, workspace_mbb=10)
    # One configuration serves every backend: TensorRT's options don't bother torch.
    backend = create_backend('torch', model, SIZE, engine_dir='/x', workspace_mb=256,
                             calib=None, threads=1)
    assert backend.name == 'torch'


class StandIn(Backend):
    """Stands in for a GPU backend (TensorRT, ONNX Runtime CUDA): neither a GPU nor
    TensorRT can exist on this machine, so auto's order is tested with these."""

    name = 'stand-in'
    fail = None

    def __init__(self, model, input_size, device='cpu', precision='fp32', calib=None,
                 engine_dir=None):
        if self.fail is not None:
            raise self.fail
        super().__init__(input_size, device, precision)
        self.options = {'calib': calib, 'engine_dir': engine_dir}


def stand_in(name, fail=None):
    return type(f'StandIn_{name}', (StandIn,), {'name': name, 'fail': fail})


def patch_classes(monkeypatch, classes):
    real = selection.backend_class
    monkeypatch.setattr(selection, 'backend_class',
                        lambda name: classes[name] if name in classes else real(name))


def test_auto_takes_tensorrt_first_when_it_works(model, monkeypatch, runtime_log):
    patch_classes(monkeypatch, {'tensorrt': stand_in('tensorrt')})
    backend = create_backend('auto', model, SIZE, device='cuda:1', precision='int8',
                             calib='/data/calib', threads=2, engine_dir='/e')
    assert (backend.name, backend.device, backend.precision) == ('tensorrt', 'cuda:1', 'int8')
    # Each backend gets the options it names; threads (torch's, onnxruntime's) is not one.
    assert backend.options == {'calib': '/data/calib', 'engine_dir': '/e'}
    assert skips(runtime_log()) == {}


def test_auto_order_and_fallback_reasons(model, monkeypatch, runtime_log):
    patch_classes(monkeypatch, {
        'tensorrt': stand_in('tensorrt', RuntimeError('CUDA driver version is insufficient')),
        'onnxruntime': stand_in('onnxruntime'),
    })
    backend = create_backend('auto', model, SIZE, device='cuda')
    # A broken TensorRT is skipped with a warning; ONNX Runtime CUDA is next in line.
    assert (backend.name, backend.device, backend.precision) == ('onnxruntime', 'cuda', 'fp32')
    assert runtime_log(logging.WARNING) == [
        'auto: skipping tensorrt on cuda: RuntimeError: CUDA driver version is insufficient']
    assert runtime_log()[-1] == 'backend: onnxruntime on cuda, fp32 (auto)'
    assert [name for name, _ in AUTO_ORDER] == ['tensorrt', 'onnxruntime', 'torch',
                                                'onnxruntime', 'torch']


def test_auto_skips_candidates_without_the_precision(model, monkeypatch, runtime_log):
    patch_classes(monkeypatch, {
        'tensorrt': stand_in('tensorrt', BackendUnavailable('tensorrt: not here')),
        'onnxruntime': stand_in('onnxruntime'),
        'torch': stand_in('torch'),
    })
    backend = create_backend('auto', model, SIZE, device='cuda', precision='int8')
    assert (backend.name, backend.device, backend.precision) == ('torch', 'cuda', 'fp16')
    assert skips(runtime_log()) == {
        'tensorrt on cuda': ['not here'],
        'onnxruntime on cuda': ['its int8 runs on the CPU only; int8 was asked for']}
    assert runtime_log()[-1] == ('backend: torch on cuda, fp16 (auto; int8 needs TensorRT, '
                                 'fp16 instead)')


def test_auto_with_nothing_working_says_why_for_each(model, monkeypatch):
    patch_classes(monkeypatch, {name: stand_in(name, BackendUnavailable(f'{name}: no'))
                                for name in BACKENDS[1:]})
    with pytest.raises(BackendUnavailable) as info:
        create_backend('auto', model, SIZE, device='cuda')
    assert str(info.value) == (
        'auto: no backend works here: tensorrt on cuda: no; onnxruntime on cuda: no; '
        'torch on cuda: no; onnxruntime on cpu: no; torch on cpu: no')


def test_auto_skips_a_backend_refusing_a_setting(model, monkeypatch, runtime_log):
    patch_classes(monkeypatch, {'tensorrt': stand_in('tensorrt', ValueError('bad calib'))})
    backend = create_backend('auto', model, SIZE, device='cuda')
    assert backend.device == 'cpu'
    assert runtime_log(logging.WARNING) == ['auto: skipping tensorrt on cuda: ValueError: '
                                            'bad calib']
    patch_classes(monkeypatch, {'tensorrt': stand_in('tensorrt', TypeError('a bug'))})
    with pytest.raises(TypeError, match='a bug'):
        create_backend('auto', model, SIZE, device='cuda')


def test_device_cpu_keeps_auto_off_the_gpu(model, monkeypatch, runtime_log):
    built = []

    class WouldWork(StandIn):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get('device'))
            super().__init__(*args, **kwargs)
    patch_classes(monkeypatch, {'tensorrt': type('T', (WouldWork,), {'name': 'tensorrt'}),
                                'onnxruntime': type('O', (WouldWork,), {'name': 'onnxruntime'})})
    backend = create_backend('auto', model, SIZE, device='cpu')
    # TensorRT and ONNX Runtime CUDA would build, but cpu means no GPU candidate is tried.
    assert (backend.name, backend.device) == ('onnxruntime', 'cpu')
    assert built == ['cpu']
    assert skips(runtime_log()) == {}
    backend = create_backend('auto', model, SIZE, device='cuda')
    assert (backend.name, backend.device) == ('tensorrt', 'cuda')


def test_options_reach_torch_when_other_backends_do_not_import(model, monkeypatch):
    """Issue 10: with onnxruntime's module unimportable, torch got its options and failed."""
    real = selection.backend_class

    def broken(name):
        if name == 'onnxruntime':
            raise BackendUnavailable('onnxruntime: cannot import x: ImportError: shadowed')
        return real(name)
    monkeypatch.setattr(selection, 'backend_class', broken)
    segmenter = Segmenter(model, backend='torch', input_size=SIZE)   # passes entry, weights
    assert segmenter.backend_name == 'torch'
    backend = create_backend('torch', model, SIZE, entry=None, weights='official',
                             onnx_file='/x.onnx', engine_dir='/e', max_batch=2)
    assert backend.name == 'torch'
    with pytest.raises(ValueError, match='unknown backend option'):
        create_backend('torch', model, SIZE, workspace_mbb=10)


def test_unavailable_backend_shows_the_real_import_error(monkeypatch):
    monkeypatch.setitem(selection._CLASSES, 'onnxruntime',
                        ('evit_ros.runtime.backends.no_such_module', 'X'))
    with pytest.raises(BackendUnavailable) as info:
        selection.backend_class('onnxruntime')
    assert str(info.value) == (
        'onnxruntime: cannot import evit_ros.runtime.backends.no_such_module: '
        "ModuleNotFoundError: No module named 'evit_ros.runtime.backends.no_such_module'")


@pytest.mark.parametrize('name', ['torch', 'onnxruntime', 'tensorrt'])
def test_option_table_matches_the_constructors(name):
    own, takes_any = selection._signature(selection.backend_class(name))
    assert own == set(selection.OPTIONS[name]) and not takes_any


def test_prebuilt_file_picks_its_backend():
    assert selection.prebuilt_options('auto', '/e/b0.engine') == (
        'tensorrt', {'engine': '/e/b0.engine'})
    assert selection.prebuilt_options('auto', '/a/b0_int8.onnx') == (
        'onnxruntime', {'onnx_file': '/a/b0_int8.onnx'})
    with pytest.raises(ValueError, match='backend torch cannot run a prebuilt file'):
        selection.prebuilt_options('torch', '/e/b0.engine')
