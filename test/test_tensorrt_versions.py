"""The TensorRT backend on each TensorRT release line, driven through stand-ins.

No GPU and no TensorRT can exist on this machine, so every test here runs the real builder,
cache, binding and inference code of :class:`TensorRTBackend` (through its public entry
point :meth:`TensorRTBackend.with_toolchain`) against ``tensorrt_standin``: a stand-in
``tensorrt`` module claiming 8.6, 10.3 or 11.4 that offers only the names of that release
line, and host memory standing in for the GPU. Its "engine" is the parsed ONNX graph run by
onnxruntime, so logits are real numbers, compared with PyTorch. The ONNX artifact maker
(``evit_ros.runtime.artifact``, another branch's work, tested there) is stood in by one that
writes the real fp32 export of the model and a sidecar, so these tests check what TensorRT is
given and what it is asked to do, not the artifact's numerics.
"""

import dataclasses
import json
from pathlib import Path
import re
import sys
import types

import cv2
import numpy as np
import pytest
import torch

from evit_ros.cli import main
from evit_ros.model import create_model, get_entry
from evit_ros.runtime.backends import BackendUnavailable
from evit_ros.runtime.backends.attention_layers import attention_node_names, trt_network_nodes
from evit_ros.runtime.backends.tensorrt_backend import (
    check_version, engine_key, TensorRTBackend)
from evit_ros.runtime.backends.torch_backend import TorchBackend
from evit_ros.runtime.engine_cache import EngineCache, weights_sha256
from evit_ros.runtime.export import build_onnx, save_onnx
from tensorrt_standin import HostMemory, make_tensorrt

SIZE = (64, 128)
ENTRY = get_entry('b0-cityscapes')
CHECKS = {'finite': True, 'argmax_agreement': 0.9912, 'camvid_miou': 61.37,
          'fp32_camvid_miou': 61.52, 'frames': 101}


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return create_model('b0-cityscapes')


@pytest.fixture
def artifacts(monkeypatch):
    """Stand in for evit_ros.runtime.artifact (a1's): the real fp32 export, batch dynamic."""
    made = []

    def export_artifact(model, input_size, precision, path, calibration=None, entry=None,
                        checks=True):
        proto, _ = build_onnx(model, input_size, check=False)
        for value in (proto.graph.input[0], proto.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = 'batch'
        save_onnx(proto, path)
        info = {'model': entry.name if entry else 'custom', 'precision': precision,
                'input_size': list(input_size), 'recipe': f'stand-in {precision}',
                'checks': CHECKS}
        Path(str(path) + '.json').write_text(json.dumps(info))
        made.append({'precision': precision, 'path': Path(path),
                     'calibration': calibration})
        return info

    def read_artifact_info(path):
        return json.loads(Path(str(path) + '.json').read_text())

    module = types.ModuleType('evit_ros.runtime.artifact')
    module.export_artifact, module.read_artifact_info = export_artifact, read_artifact_info
    monkeypatch.setitem(sys.modules, 'evit_ros.runtime.artifact', module)
    return made


@pytest.fixture
def calib_dir(tmp_path):
    """Three calibration images (fixed noise: the stand-in only counts the batches)."""
    folder = tmp_path / 'calib'
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(folder / f'{i}.png'), rng.integers(0, 256, (48, 96, 3), np.uint8))
    return folder


def build(model, version, tmp_path, precision='fp32', **options):
    memory = HostMemory()
    trt = make_tensorrt(version, memory)
    options.setdefault('engine_dir', str(tmp_path / 'engines'))
    backend = TensorRTBackend.with_toolchain(trt, memory, model, SIZE, precision=precision,
                                             entry=ENTRY, **options)
    return backend, trt


def torch_logits(model, x):
    reference = TorchBackend(model, SIZE)
    return torch.cat([reference.infer(x[i:i + 1]) for i in range(x.shape[0])]).numpy()


@pytest.mark.parametrize('version', ['10.3.0', '11.4.0.106'])
@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'int8'])
def test_strongly_typed_build_from_the_artifact(model, tmp_path, artifacts, calib_dir,
                                                version, precision):
    calib = str(calib_dir) if precision == 'int8' else None
    backend, trt = build(model, version, tmp_path, precision, calib=calib)
    assert backend.built and backend.precision == precision
    [record] = trt.builds
    assert record['creation_flags'] == 1 << 5          # STRONGLY_TYPED, nothing else
    assert record['set_flags'] == []                  # no FP16 / INT8 / constraints
    assert record['cleared'] == (['TF32'] if precision == 'fp32' else [])
    assert not record['calibrator'] and record['calibrated_batches'] == 0
    assert record['pinned'] == [] and record['progress_monitor']
    # The engine is compiled from the precision's artifact, kept beside it; int8's artifact
    # got the calibration data (once, when it was made), the engine build none.
    [made] = artifacts
    assert made['precision'] == precision
    assert made['path'] == backend.cache.artifact_path(backend.key)
    assert (made['calibration'] is not None) == (precision == 'int8')
    if precision == 'int8':
        assert made['calibration'].sha256 == backend.key.calibration_sha256
    sidecar = json.loads(backend.cache.sidecar_path(backend.key).read_text())
    assert sidecar['build']['typing'] == 'strong'
    assert sidecar['build']['artifact']['checks'] == CHECKS
    x = np.random.default_rng(0).standard_normal((1, 3) + SIZE).astype(np.float32)
    logits = backend.infer(x).numpy()
    assert logits.shape == (1, 19, 8, 16)
    assert float(np.abs(logits - torch_logits(model, x)).max()) < 1e-3


@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'int8'])
def test_tensorrt_8_6_flag_path_pins_attention(model, tmp_path, artifacts, calib_dir,
                                               precision):
    calib = str(calib_dir) if precision == 'int8' else None
    backend, trt = build(model, '8.6.1', tmp_path, precision, calib=calib)
    [record] = trt.builds
    assert artifacts == []                            # 8.x parses the fp32 export
    assert record['creation_flags'] == 1 << 0         # EXPLICIT_BATCH
    assert not record['progress_monitor']             # 8.x has no IProgressMonitor
    if precision == 'fp32':
        assert record['set_flags'] == [] and record['cleared'] == ['TF32']
        assert record['pinned'] == []
    else:
        expected = ['FP16', 'OBEY_PRECISION_CONSTRAINTS'] + (
            ['INT8'] if precision == 'int8' else [])
        assert record['set_flags'] == expected and record['cleared'] == []
        # Every LiteMLA layer of B0's network (four blocks) is pinned to fp32.
        network = trt.Builder(None).create_network(0)
        parser = trt.OnnxParser(network, None)
        parser.parse(build_onnx(model, SIZE, check=False)[0].SerializeToString())
        attention = set(attention_node_names(trt_network_nodes(network)))
        pinned = set(record['pinned'])
        compute = {name for name in attention if re.search(r'/(MatMul|Div|Add|Relu)', name)}
        assert len(compute) >= 4 * 5 and compute <= pinned
        assert len(pinned - attention) >= 4     # the constants feeding them (the eps)
        assert all('/context_module/main/' in name for name in pinned)
    assert record['calibrator'] == (precision == 'int8')
    assert record['calibrated_batches'] == (3 if precision == 'int8' else 0)
    assert backend.key.build_settings == (('recipe', '2'), ('typing', 'weak'))
    x = np.random.default_rng(0).standard_normal((1, 3) + SIZE).astype(np.float32)
    assert float(np.abs(backend.infer(x).numpy() - torch_logits(model, x)).max()) < 1e-3


@pytest.mark.parametrize('version', ['9.2.0', '8.4.3', '7.1.3', '12.0.0'])
def test_unsupported_tensorrt_gets_one_line(model, tmp_path, version):
    with pytest.raises(BackendUnavailable) as info:
        build(model, version, tmp_path, 'fp16')
    assert str(info.value) == (f'tensorrt: TensorRT {version} is not supported; supported: '
                               '8.5, 8.6, 10.x, 11.x')
    assert not (tmp_path / 'engines').exists()


def test_supported_versions():
    for version, expected in [('8.5.2.2', (8, 5)), ('8.6.2', (8, 6)), ('10.3.0', (10, 3)),
                              ('10.13.3.9', (10, 13)), ('11.4.0.106', (11, 4))]:
        assert check_version(types.SimpleNamespace(__version__=version)) == expected


def test_batch_profile_and_batched_inference(model, tmp_path, artifacts):
    backend, trt = build(model, '10.3.0', tmp_path, 'fp16', max_batch=3)
    [record] = trt.builds
    assert record['profiles'] == [{'image': ((1, 3) + SIZE, (1, 3) + SIZE, (3, 3) + SIZE)}]
    assert backend.max_batch == 3 and backend.key.input_shape == (3, 3) + SIZE
    x = np.random.default_rng(0).standard_normal((3, 3) + SIZE).astype(np.float32)
    reference = torch_logits(model, x)
    for count in (2, 3, 1):
        logits = backend.infer(x[:count]).numpy()
        assert logits.shape == (count, 19, 8, 16)
        assert float(np.abs(logits - reference[:count]).max()) < 1e-3
    with pytest.raises(ValueError, match=re.escape('1 <= N <= 3, got (4, 3, 64, 128)')):
        backend.infer(np.concatenate([x, x[:1]]))


def test_max_batch_on_8x_exports_a_dynamic_batch_axis(model, tmp_path):
    # 8.6 parses the plain fp32 export: asked for batches, it exports a dynamic batch axis and
    # builds the same profile as the artifact path.
    backend, trt = build(model, '8.6.1', tmp_path, 'fp32', max_batch=2)
    [record] = trt.builds
    assert record['profiles'] == [{'image': ((1, 3) + SIZE, (1, 3) + SIZE, (2, 3) + SIZE)}]
    x = np.random.default_rng(0).standard_normal((2, 3) + SIZE).astype(np.float32)
    logits = backend.infer(x).numpy()
    assert logits.shape == (2, 19, 8, 16)
    assert float(np.abs(logits - torch_logits(model, x)).max()) < 1e-3


def test_engine_key_is_the_same_for_build_and_lookup(model, tmp_path, artifacts):
    first, trt = build(model, '10.3.0', tmp_path, 'fp16', workspace_mb=2048)
    # A later lookup with other build-only settings (the node's default workspace) finds it.
    again, trt_again = build(model, '10.3.0', tmp_path, 'fp16', workspace_mb=512)
    assert first.built and not again.built and trt_again.builds == []
    assert again.key == first.key and again.engine_path == first.engine_path
    environment = {'tensorrt_version': '10.3.0', 'gpu_name': 'Stand-in GPU',
                   'compute_capability': '8.7'}
    assert engine_key('b0-cityscapes', weights_sha256(model, ENTRY, None), SIZE, 'fp16',
                      environment, 'strong', 1) == first.key
    # What changes the engine changes the key: TensorRT version, precision, batch range.
    assert build(model, '10.4.0', tmp_path, 'fp16')[0].built
    assert build(model, '10.3.0', tmp_path, 'fp16', max_batch=2)[0].built


def test_prebuilt_engine_runs_as_it_is(model, tmp_path, artifacts, calib_dir):
    made, _ = build(model, '10.3.0', tmp_path, 'int8', calib=str(calib_dir))
    engine = str(made.engine_path)
    # No calibration data, no build: the int8 engine runs, and says it is int8.
    backend, trt = build(model, '10.3.0', tmp_path / 'elsewhere', 'fp32', engine=engine)
    assert trt.builds == [] and not backend.built and backend.precision == 'int8'
    assert not (tmp_path / 'elsewhere').exists()
    x = np.random.default_rng(0).standard_normal((1, 3) + SIZE).astype(np.float32)
    np.testing.assert_array_equal(backend.infer(x).numpy(), made.infer(x).numpy())
    # Another TensorRT: one line naming the engine and both versions.
    with pytest.raises(BackendUnavailable) as info:
        build(model, '10.4.0', tmp_path, 'int8', engine=engine)
    assert str(info.value) == (
        f"tensorrt: engine {engine} was built for another setup (tensorrt_version '10.3.0', "
        "here '10.4.0'); build it again here with `evit-ros build-engine`")
    with pytest.raises(BackendUnavailable, match='engine file /nowhere/x.engine does not '
                                                 'exist; build one with'):
        build(model, '10.3.0', tmp_path, 'fp16', engine='/nowhere/x.engine')


def test_engines_list_shows_typing_and_the_artifact_checks(model, tmp_path, artifacts,
                                                           capsys):
    backend, _ = build(model, '11.4.0.106', tmp_path, 'fp16')
    assert main(['engines', 'list', '--engine-dir', str(tmp_path / 'engines')]) == 0
    header, row = capsys.readouterr().out.splitlines()[1:3]
    assert header.split()[:8] == ['ENGINE', 'MODEL', 'INPUT', 'PREC', 'TENSORRT', 'TYPING',
                                  'CPU_MIOU', 'AGREE']
    assert row.split()[:8] == [backend.engine_path.name, 'b0-cityscapes', '64x128', 'fp16',
                               '11.4.0.106', 'strong', '61.37', '99.12%']
    assert row.endswith('ok')


def test_stand_in_lacks_what_each_version_lacks():
    """The stand-in is only as strict as its names: check it offers the right ones."""
    memory = HostMemory()
    eleven, ten, eight = (make_tensorrt(v, memory) for v in ('11.4.0', '10.3.0', '8.6.1'))
    for name in ('FP16', 'INT8', 'OBEY_PRECISION_CONSTRAINTS'):
        assert not hasattr(eleven.BuilderFlag, name) and hasattr(ten.BuilderFlag, name)
    assert not hasattr(eleven, 'IInt8EntropyCalibrator2') and hasattr(eight,
                                                                      'IInt8EntropyCalibrator2')
    assert not hasattr(eight.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED')
    assert not hasattr(eight, 'IProgressMonitor')
    config = eleven.Builder(None).create_builder_config()
    with pytest.raises(AttributeError):
        config.int8_calibrator = object()


def test_cache_key_fields_are_what_the_sidecar_holds(model, tmp_path, artifacts):
    backend, _ = build(model, '10.3.0', tmp_path, 'fp16')
    sidecar = json.loads(EngineCache(tmp_path / 'engines').sidecar_path(backend.key)
                         .read_text())
    assert sidecar['key'] == backend.key.to_dict()
    assert 'workspace_mb' not in sidecar['key']
    assert dataclasses.replace(backend.key).digest() == backend.key.digest()


def test_build_engine_cli_makes_the_int8_artifact_once(model, tmp_path, artifacts, calib_dir,
                                                       monkeypatch, capsys):
    """``evit-ros build-engine`` end to end on a 10.3 stand-in (TensorRT and CUDA stood in)."""
    from evit_ros.runtime.backends import cuda_memory, tensorrt_backend
    memory = HostMemory()
    trt = make_tensorrt('10.3.0', memory)
    monkeypatch.setattr(tensorrt_backend, 'import_tensorrt', lambda: trt)
    monkeypatch.setattr(cuda_memory, 'open_cuda_memory', lambda index=0: memory)
    monkeypatch.setattr('evit_ros.model.create_model', lambda name, weights=None: model)
    engines = tmp_path / 'engines'
    argv = ['build-engine', '--model', 'b0-cityscapes', '--height', '64', '--width', '128',
            '--precision', 'int8', '--calib', str(calib_dir), '--weights', 'none',
            '--engine-dir', str(engines)]
    assert main(argv + ['--workspace-mb', '512']) == 0
    first = capsys.readouterr().out.strip()
    assert re.fullmatch(rf'{re.escape(str(engines))}/b0-cityscapes_64x128_int8_[0-9a-f]{{16}}'
                        r'\.engine \(built; int8, 64x128, batch up to 1, TensorRT 10\.3\.0, '
                        r'Stand-in GPU\)', first), first
    # The int8 artifact was made once, from the calibration data; the engine build used none.
    assert [(m['precision'], m['calibration'] is not None) for m in artifacts] == [
        ('int8', True)]
    assert trt.builds[0]['calibrator'] is False and trt.builds[0]['set_flags'] == []
    # Again with another workspace: the same engine, found in the cache, nothing rebuilt.
    assert main(argv + ['--workspace-mb', '2048']) == 0
    again = capsys.readouterr().out.strip()
    assert again.split()[0] == first.split()[0] and '(already cached and valid;' in again
    assert len(trt.builds) == 1 and len(artifacts) == 1
    stem = Path(first.split()[0]).stem
    assert sorted(p.name for p in engines.iterdir()) == [
        stem + suffix for suffix in ('.engine', '.json', '.lock', '.onnx', '.onnx.json')]
    assert main(['engines', 'clean', '--engine-dir', str(engines)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f'5 file(s) removed from {engines}'
    assert list(engines.iterdir()) == []


def test_gpu_check_tensorrt_part_on_a_stand_in(model, tmp_path, artifacts, calib_dir,
                                               monkeypatch):
    """The TensorRT part of bench/gpu_check.py, run with TensorRT and CUDA stood in."""
    import importlib.util
    from evit_ros.runtime.backends import cuda_memory, tensorrt_backend
    memory = HostMemory()
    trt = make_tensorrt('11.4.0.106', memory)
    monkeypatch.setattr(tensorrt_backend, 'import_tensorrt', lambda: trt)
    monkeypatch.setattr(cuda_memory, 'open_cuda_memory', lambda index=0: memory)
    spec = importlib.util.spec_from_file_location(
        'gpu_check', Path(__file__).resolve().parents[1] / 'bench' / 'gpu_check.py')
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    report = gpu_check.check_tensorrt(model, [SIZE], 2, gpu_check.Budget(600), str(calib_dir),
                                      tmp_path / 'engines')
    part = report['64x128']
    assert sorted(part) == ['fp16', 'fp32', 'input', 'int8']
    for precision in ('fp32', 'fp16', 'int8'):
        result = part[precision]
        assert result['typing'] == 'strong' and result['runs'] == 2
        assert result['parity_against'].startswith('CPU artifact b0-cityscapes_64x128_'
                                                   f'{precision}_')
        # The stand-in engine is the artifact itself: parity is exact.
        assert result['finite'] and result['max_abs_dlogit'] == 0.0
        assert result['vs_torch_fp32']['max_abs_dlogit'] < 1e-3
