"""``build-engine --check-data`` and ``build-engine --artifact``, with the real artifact maker.

No GPU and no TensorRT can exist on this machine, so TensorRT and CUDA are stood in by
``tensorrt_standin`` (a module claiming 10.3 or 11.4 with only that line's names, host
memory for the GPU); its "engine" runs the parsed ONNX graph with onnxruntime, so an engine's
logits are the artifact's. Everything else is real: the fp16 artifact made and scored on real
CamVid frames by :func:`evit_ros.runtime.artifact.export_artifact`, the engine cache, the CLI.
"""

import re

import numpy as np
import onnxruntime as ort
import pytest

from conftest import require_shared
from evit_ros.cli import main
from evit_ros.model import get_entry
from evit_ros.runtime.artifact import read_artifact_info
from evit_ros.runtime.backends import BackendUnavailable
from evit_ros.runtime.backends.selection import OPTIONS
from evit_ros.runtime.backends.tensorrt_backend import TensorRTBackend
from evit_ros.runtime.engine_cache import EngineCache
from tensorrt_standin import HostMemory, make_tensorrt

ENTRY = get_entry('b0-cityscapes')


def stand_in(monkeypatch, version):
    """Make ``import tensorrt`` and the CUDA binding the stand-ins claiming ``version``."""
    from evit_ros.runtime.backends import cuda_memory, tensorrt_backend
    memory = HostMemory()
    trt = make_tensorrt(version, memory)
    monkeypatch.setattr(tensorrt_backend, 'import_tensorrt', lambda: trt)
    monkeypatch.setattr(cuda_memory, 'open_cuda_memory', lambda index=0: memory)
    return trt, memory


@pytest.fixture(scope='module')
def fp16_artifact(tmp_path_factory):
    """An fp16 artifact of random-weight B0 at 64x128, made by ``evit-ros export``."""
    path = tmp_path_factory.mktemp('artifact') / 'b0_fp16.onnx'
    assert main(['export', '--model', 'b0-cityscapes', '--weights', 'none', '--precision',
                 'fp16', '--height', '64', '--width', '128', '-o', str(path)]) == 0
    return path


def test_artifact_options_go_to_tensorrt_only():
    owners = {name for name, options in OPTIONS.items()
              if {'artifact_checks', 'artifact'} & options}
    assert owners == {'tensorrt'}


def test_build_engine_check_data_puts_the_camvid_miou_in_engines_list(
        official_weights, tmp_path, monkeypatch, capsys):
    trt, _ = stand_in(monkeypatch, '10.3.0')
    engines = tmp_path / 'engines'
    argv = ['build-engine', '--model', 'b0-cityscapes', '--height', '192', '--width', '256',
            '--precision', 'fp16', '--engine-dir', str(engines)]
    camvid = str(require_shared('data', 'camvid'))
    # Without labelled frames the artifact has no mIoU: the list says so with '-'.
    assert main(argv) == 0
    assert main(['engines', 'list', '--engine-dir', str(engines)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.split()[6] == '-' and re.fullmatch(r'\d+\.\d\d%', row.split()[7])
    # With them, the unscored artifact is made again, scored, and its engine rebuilt.
    assert main(argv + ['--check-data', camvid, '--check-frames', '3']) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r'\S+/b0-cityscapes_192x256_fp16_[0-9a-f]{16}\.engine \(built; '
                        r'fp16, 192x256, .*TensorRT 10\.3\.0, Stand-in GPU\)', line), line
    record, = EngineCache(engines).records()
    checks = record.build['artifact']['checks']
    assert checks['frames'] == 3 and checks['passed']
    # fp16 within the artifact's bound of fp32, measured on the same three frames.
    assert abs(checks['camvid_miou'] - checks['fp32_camvid_miou']) <= 0.3
    assert 0.9 < checks['argmax_agreement'] <= 1.0
    # The artifact beside the engine carries the same numbers in its own sidecar.
    artifact = engines / (record.path.stem + '.onnx')
    assert read_artifact_info(artifact)['checks']['camvid_miou'] == checks['camvid_miou']
    assert main(['engines', 'list', '--engine-dir', str(engines)]) == 0
    header, row = capsys.readouterr().out.splitlines()[1:3]
    assert header.split()[6:8] == ['CPU_MIOU', 'AGREE']
    assert row.split()[6:8] == [f'{checks["camvid_miou"]:.2f}',
                                f'{100 * checks["argmax_agreement"]:.2f}%']
    assert float(row.split()[6]) > 0
    # Cached and scored: asking again builds nothing.
    assert main(argv + ['--check-data', camvid, '--check-frames', '3']) == 0
    assert '(already cached and valid;' in capsys.readouterr().out
    assert len(trt.builds) == 2


@pytest.mark.parametrize('version', ['10.3.0', '11.4.0.106'])
def test_build_engine_compiles_the_given_artifact(fp16_artifact, tmp_path, monkeypatch,
                                                  capsys, version):
    trt, memory = stand_in(monkeypatch, version)
    engines = tmp_path / 'engines'
    argv = ['build-engine', '--model', 'b0-cityscapes', '--artifact', str(fp16_artifact),
            '--engine-dir', str(engines)]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert f'(built; fp16, 64x128, batch up to 1, TensorRT {version},' in line, line
    engine = line.split()[0]
    # The given artifact, byte for byte, beside the engine; no build flags, no calibrator.
    copied = engines / (engine.rsplit('/', 1)[1][:-len('.engine')] + '.onnx')
    assert copied.read_bytes() == fp16_artifact.read_bytes()
    assert trt.builds[0]['set_flags'] == [] and trt.builds[0]['calibrator'] is False
    record, = EngineCache(engines).records()
    assert record.key.precision == 'fp16'
    assert record.build['artifact']['sha256'] == read_artifact_info(fp16_artifact)['sha256']
    # Its engine's logits are the artifact's (the stand-in runs the compiled graph).
    backend = TensorRTBackend.with_toolchain(trt, memory, None, (64, 128), precision='fp16',
                                             engine=engine)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 128)).astype(np.float32)
    session = ort.InferenceSession(str(fp16_artifact), providers=['CPUExecutionProvider'])
    expected, = session.run(None, {'image': x})
    np.testing.assert_array_equal(backend.infer(x).numpy(), expected)
    # Again: the same engine from the cache, nothing compiled.
    assert main(argv) == 0
    again = capsys.readouterr().out.strip()
    assert again.split()[0] == engine and '(already cached and valid;' in again
    assert len(trt.builds) == 1


@pytest.mark.parametrize('flags, message', [
    (['--precision', 'int8'], '--precision int8 does not match the artifact '),
    (['--height', '96'], '--height 96 does not match the artifact '),
    (['--width', '256'], '--width 256 does not match the artifact '),
    (['--calib', '.'], '--calib does not apply with --artifact'),
    (['--check-data', '.'], '--check-data does not apply with --artifact'),
])
def test_build_engine_refuses_what_contradicts_the_artifact(fp16_artifact, tmp_path, capsys,
                                                            flags, message):
    code = main(['build-engine', '--model', 'b0-cityscapes', '--artifact', str(fp16_artifact),
                 '--engine-dir', str(tmp_path)] + flags)
    err = capsys.readouterr().err
    assert code == 1 and err.count('\n') == 1, err
    assert err.startswith('evit-ros build-engine: error: ') and message in err
    assert list(tmp_path.iterdir()) == []


def test_build_engine_refuses_an_artifact_without_its_sidecar(fp16_artifact, tmp_path,
                                                              capsys):
    bare = tmp_path / 'bare.onnx'
    bare.write_bytes(fp16_artifact.read_bytes())
    code = main(['build-engine', '--model', 'b0-cityscapes', '--artifact', str(bare)])
    err = capsys.readouterr().err
    assert code == 1 and err.count('\n') == 1
    assert f'artifact {bare} has no sidecar {bare}.json' in err


def test_backend_refuses_an_artifact_of_another_precision_or_version(fp16_artifact,
                                                                     tmp_path):
    memory = HostMemory()
    with pytest.raises(BackendUnavailable) as exc:
        TensorRTBackend.with_toolchain(make_tensorrt('11.4.0', memory), memory, None,
                                       (64, 128), precision='fp32', artifact=fp16_artifact,
                                       engine_dir=str(tmp_path))
    assert str(exc.value) == (f'tensorrt: artifact {fp16_artifact} is fp16 at 64x128, not the '
                              'fp32 at 64x128 asked for; export it again or ask for what it is')
    with pytest.raises(BackendUnavailable, match=r'^tensorrt 8\.6\.1: compiling an artifact '
                                                 r'needs TensorRT >= 10 \(strongly typed\)'):
        TensorRTBackend.with_toolchain(make_tensorrt('8.6.1', memory), memory, None,
                                       (64, 128), precision='fp16', artifact=fp16_artifact,
                                       engine_dir=str(tmp_path))


def test_an_official_artifact_gets_the_key_of_the_same_build_from_the_model(
        official_weights, tmp_path, monkeypatch, capsys):
    stand_in(monkeypatch, '11.4.0.106')
    artifact = tmp_path / 'b0_fp16.onnx'
    size = ['--height', '64', '--width', '128']
    assert main(['export', '--model', 'b0-cityscapes', '--precision', 'fp16', '-o',
                 str(artifact)] + size) == 0
    capsys.readouterr()
    build = ['build-engine', '--model', 'b0-cityscapes']
    assert main(build + ['--artifact', str(artifact), '--engine-dir',
                         str(tmp_path / 'given')]) == 0
    given = capsys.readouterr().out.split()[0]
    assert main(build + size + ['--precision', 'fp16', '--engine-dir',
                                str(tmp_path / 'made')]) == 0
    made = capsys.readouterr().out.split()[0]
    assert given.rsplit('/', 1)[1] == made.rsplit('/', 1)[1]
    assert given != made
