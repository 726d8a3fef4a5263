"""Every TensorRT name the backend reaches exists in the TensorRT release it runs on.

TensorRT cannot run here (no GPU, and NVIDIA's libraries are not on PyPI for this use), but
the Python bindings of each release can be read: ``tensorrt_surface`` imports NVIDIA's real
bindings wheels of 8.6.1, 10.3.0 and 11.4.0.106 against stand-in libraries and lists each
class's and enum's members. The backend is then driven through build, deserialize, binding
and inference, per precision, against a stand-in ``tensorrt`` module made from one release's
table (the stand-in is the only way to run that code here); every name it touches is checked
against that release; stand-in GPU memory takes CUDA's place there. cuda-python is checked
the same way: cuda-bindings 12.9.4 and 13.5.0 import without a GPU, and the backend's
``CudaPythonMemory`` runs against a recording ``cuda.bindings.runtime`` holding exactly the
real module's names.

What this proves: each name exists with that owner in that release. Not argument types,
not behaviour, not numerics.
"""

import inspect
import sys

import numpy as np
import onnx
import pytest

from evit_ros.runtime.backends.cuda_memory import CudaMemory
from evit_ros.runtime.backends.tensorrt_backend import TensorRTBackend
from conftest import REPO
import tensorrt_surface as surface

VERSIONS = tuple(surface.WHEELS)
#: the backend in this tree uses the flag path (BuilderFlag.FP16/INT8, int8_calibrator,
#: ILayer.precision) on every release, so 11.x lacks names it uses. Set to True once the
#: version-aware backend (strongly typed on >= 10) is merged: the 11.x cases then must pass.
BACKEND_IS_VERSION_AWARE = True


@pytest.fixture(scope='module')
def tables():
    """Each release's table of names (downloaded and read once per machine)."""
    try:
        return {version: surface.read_surface(version) for version in VERSIONS}
    except surface.SurfaceUnavailable as exc:
        pytest.skip(f'TensorRT bindings unavailable: {exc}')


# --- the tables read what each release really has -----------------------------------------

# Names each release is documented to have and to lack (release notes of 8.6, 10.0, 11.0).
PRESENT = {
    '8.6.1': ['BuilderFlag.FP16', 'BuilderFlag.INT8', 'BuilderFlag.STRICT_TYPES',
              'BuilderFlag.OBEY_PRECISION_CONSTRAINTS', 'IBuilderConfig.int8_calibrator',
              'tensorrt.IInt8EntropyCalibrator2', 'IExecutionContext.execute_async_v2',
              'IExecutionContext.execute_async_v3', 'IExecutionContext.set_tensor_address',
              'NetworkDefinitionCreationFlag.EXPLICIT_BATCH', 'Builder.platform_has_fast_fp16'],
    '10.3.0': ['BuilderFlag.FP16', 'BuilderFlag.INT8', 'BuilderFlag.TF32',
               'NetworkDefinitionCreationFlag.STRONGLY_TYPED', 'tensorrt.IProgressMonitor',
               'IBuilderConfig.progress_monitor', 'IExecutionContext.execute_async_v3'],
    '11.4.0.106': ['NetworkDefinitionCreationFlag.STRONGLY_TYPED', 'BuilderFlag.TF32',
                   'IExecutionContext.execute_async_v3', 'IExecutionContext.set_tensor_address',
                   'DataType.INT8', 'DataType.UINT8', 'DataType.HALF', 'ILogger.Severity.ERROR',
                   'Builder.build_serialized_network', 'IBuilderConfig.set_memory_pool_limit'],
}
ABSENT = {
    '8.6.1': ['NetworkDefinitionCreationFlag.STRONGLY_TYPED', 'IBuilderConfig.progress_monitor',
              'tensorrt.IProgressMonitor'],
    '10.3.0': ['IExecutionContext.execute_async_v2', 'BuilderFlag.STRICT_TYPES'],
    '11.4.0.106': ['BuilderFlag.FP16', 'BuilderFlag.INT8',
                   'BuilderFlag.OBEY_PRECISION_CONSTRAINTS',
                   'BuilderFlag.PREFER_PRECISION_CONSTRAINTS', 'IBuilderConfig.int8_calibrator',
                   'tensorrt.IInt8EntropyCalibrator2', 'Builder.platform_has_fast_fp16',
                   'IExecutionContext.execute_async_v2'],
}


@pytest.mark.parametrize('version', VERSIONS)
def test_tables_hold_known_names_and_lack_removed_ones(tables, version):
    table = tables[version]
    assert table['version'] == version
    assert [n for n in PRESENT[version] if not surface.has_name(table, n)] == []
    assert [n for n in ABSENT[version] if surface.has_name(table, n)] == []
    # Per owner, not per string: 11.x still has the INT8 *data type* and FP16's HALF.
    if version.startswith('11.'):
        assert surface.has_name(table, 'DataType.INT8')
        assert not surface.has_name(table, 'BuilderFlag.INT8')
    # A whole surface was read, not a few names: hundreds of classes and enums.
    assert len(table['classes']) > 150
    assert table['classes']['Builder']['create_builder_config']['returns'] == 'IBuilderConfig'


def test_readme_table_is_what_the_wheels_say(tables):
    section = (REPO / 'README.md').read_text().split('### API surface check', 1)[1]
    lines = [line for line in section.split('\n## ', 1)[0].splitlines()
             if line.startswith('|')]
    assert lines == surface.markdown_table(surface.name_table())


def test_a_damaged_download_is_refused_and_pypi_out_of_reach_is_one_line(
        tmp_path, monkeypatch):
    wheel = surface.WHEELS['10.3.0']
    damaged = tmp_path / wheel.filename
    damaged.write_bytes(b'PK\x03\x04 not the wheel')
    # Nothing answers on this loopback port: the test makes no outside traffic.
    for name, value in (('PIP_INDEX_URL', 'http://127.0.0.1:9/simple'),
                        ('PIP_EXTRA_INDEX_URL', ''), ('PIP_FIND_LINKS', ''),
                        ('PIP_RETRIES', '0'), ('PIP_TIMEOUT', '2')):
        monkeypatch.setenv(name, value)
    with pytest.raises(surface.SurfaceUnavailable, match=r'^cannot download tensorrt_cu12_'
                       r'bindings-10\.3\.0-cp311-.*\.whl from PyPI: '):
        surface.fetch_wheel(wheel, tmp_path)
    assert not damaged.exists()


# --- the check catches a missing name, independent of the backend ---------------------------

def weakly_typed_int8(trt):
    """A deliberately wrong build: the int8 flag on every release (11.x has none)."""
    builder = trt.Builder(trt.Logger(trt.Logger.Severity.WARNING))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    return builder.build_serialized_network(builder.create_network(0), config)


def version_aware_int8(trt):
    """The same build done right: strongly typed on >= 10, probing for the old flag."""
    builder = trt.Builder(trt.Logger(trt.Logger.Severity.WARNING))
    config = builder.create_builder_config()
    if int(trt.__version__.split('.')[0]) >= 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    else:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        config.set_flag(trt.BuilderFlag.INT8)
    if getattr(builder, 'platform_has_fast_fp16', True):  # a probe, fine on 11.x
        config.clear_flag(trt.BuilderFlag.TF32)
    return builder.build_serialized_network(builder.create_network(flags), config)


@pytest.mark.parametrize('version', VERSIONS)
def test_a_missing_name_on_a_path_fails_the_check(tables, version):
    trt = surface.stand_in_tensorrt(version)
    weakly_typed_int8(trt)
    used = trt.recorder.used
    assert {'tensorrt.Builder', 'Builder.create_builder_config', 'IBuilderConfig.set_flag',
            'BuilderFlag.INT8', 'Builder.build_serialized_network'} <= set(used)
    if version.startswith('11.'):
        assert list(trt.recorder.missing) == ['BuilderFlag.INT8']
        where = trt.recorder.missing['BuilderFlag.INT8']
        line = inspect.getsourcelines(weakly_typed_int8)[1] + 4
        assert where == f'test_tensorrt_api.py:{line}'
    else:
        assert trt.recorder.missing == {}


@pytest.mark.parametrize('version', VERSIONS)
def test_a_version_aware_build_passes_and_probes_are_not_misses(tables, version):
    trt = surface.stand_in_tensorrt(version)
    version_aware_int8(trt)
    assert trt.recorder.missing == {}
    used = set(trt.recorder.used)
    major = int(version.split('.')[0])
    assert ('NetworkDefinitionCreationFlag.STRONGLY_TYPED' in used) == (major >= 10)
    assert ('BuilderFlag.INT8' in used) == (major < 10)
    # The probe behaves as the real module does: AttributeError, so getattr's default.
    assert ('Builder.platform_has_fast_fp16' in used) == (not version.startswith('11.'))


def test_stand_in_types_come_from_the_signatures(tables):
    trt = surface.stand_in_tensorrt('10.3.0')
    builder = trt.Builder(trt.Logger())
    config = builder.create_builder_config()
    assert type(config).__name__ == 'IBuilderConfig'
    assert isinstance(config.num_optimization_profiles, int)
    assert trt.ILogger.Severity.ERROR == trt.ILogger.Severity.ERROR
    assert trt.ILogger.Severity.ERROR != trt.ILogger.Severity.WARNING
    assert trt.float32 == trt.DataType.FLOAT
    assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    # Setting a read-only or unknown member is a miss too.
    config.no_such_setting = 3
    assert list(trt.recorder.missing) == ['IBuilderConfig.no_such_setting']
    # Code subclasses TensorRT's interfaces (loggers, monitors): those classes are real.
    monitor_base = trt.IProgressMonitor

    class Monitor(monitor_base):
        def __init__(self):
            monitor_base.__init__(self)
            self.phases = []
    assert Monitor().phases == []


# --- the backend, driven through every precision on every release ---------------------------

# ONNX op -> the TensorRT layer type its parser makes.
_LAYER_TYPE = {'MatMul': 'MATRIX_MULTIPLY', 'Concat': 'CONCATENATION', 'Conv': 'CONVOLUTION',
               'Reshape': 'SHUFFLE', 'Transpose': 'SHUFFLE', 'Unsqueeze': 'SHUFFLE',
               'Slice': 'SLICE', 'Pad': 'SLICE', 'Shape': 'SHAPE', 'Constant': 'CONSTANT',
               'Gather': 'GATHER', 'Relu': 'ACTIVATION', 'HardSigmoid': 'ACTIVATION',
               'Add': 'ELEMENTWISE', 'Mul': 'ELEMENTWISE', 'Div': 'ELEMENTWISE',
               'Cast': 'CAST', 'ReduceSum': 'REDUCE', 'ConstantOfShape': 'FILL',
               'Resize': 'RESIZE'}
INPUT_SIZE = (64, 128)
CLASSES = 19


@pytest.fixture(scope='module')
def b0_graph():
    """The B0 graph as the project exports it, to give the stand-in network real layers."""
    from onnx import shape_inference

    from evit_ros.model import create_model
    from evit_ros.runtime.export import build_onnx
    proto, _ = build_onnx(create_model('b0-cityscapes'), INPUT_SIZE, check=False)
    return shape_inference.infer_shapes(proto)


def small_model():
    """A model with B0's input and output shapes that exports in a blink.

    The stand-in ONNX parser never reads what the backend exports; the network it hands
    back is B0's (:func:`network_behaviour`).
    """
    from torch import nn
    return nn.Sequential(nn.Conv2d(3, CLASSES, 8, stride=8)).eval()


def network_behaviour(trt, proto, batch) -> dict:
    """Make ``INetworkDefinition`` hold one layer per ONNX node, as TensorRT's parser would,
    so the code that walks the network (attention pinning) runs for real.

    :param batch: the graph input's batch dimension (-1 for a dynamic batch axis).
    """
    floats = {v.name for v in list(proto.graph.value_info) + list(proto.graph.output)
              + list(proto.graph.input) if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    initializers = {i.name for i in proto.graph.initializer}

    # The stand-in's own values are built directly, so only the backend's uses are recorded.
    def tensor(name):
        dtype = surface.EnumValue('DataType', 'FLOAT' if name in floats else 'INT32', 0)
        return trt.make('ITensor', name=name, dtype=dtype, shape=(batch, 3) + INPUT_SIZE)

    layers = []
    for node in proto.graph.node:
        if node.op_type == 'Constant':
            value = next(a.t for a in node.attribute if a.name == 'value')
            floats.update(node.output if value.data_type == onnx.TensorProto.FLOAT else ())
        inputs = [tensor(t) for t in node.input if t and t not in initializers]
        outputs = [tensor(t) for t in node.output]
        kind = surface.EnumValue('LayerType', _LAYER_TYPE.get(node.op_type, 'PLUGIN'), 0)
        layers.append(trt.make('ILayer', name=node.name, type=kind, num_inputs=len(inputs),
                               num_outputs=len(outputs), get_input=inputs.__getitem__,
                               get_output=outputs.__getitem__))
    network_input = tensor('input')
    return {'INetworkDefinition.num_layers': lambda net: len(layers),
            'INetworkDefinition.get_layer': lambda net, i: layers[i],
            'INetworkDefinition.num_inputs': lambda net: 1,
            'INetworkDefinition.num_outputs': lambda net: 1,
            'INetworkDefinition.get_input': lambda net, i: network_input}


def engine_behaviour(trt, batch) -> dict:
    """An engine with one float input ``input`` and one float output ``logits``.

    :param batch: the largest batch; the engine's batch axis is dynamic when it is > 1.
    """
    size = {'input': (3,) + INPUT_SIZE,
            'logits': (CLASSES, INPUT_SIZE[0] // 8, INPUT_SIZE[1] // 8)}
    names = list(size)
    float32 = surface.EnumValue('DataType', 'FLOAT', 0)

    def mode(obj, name):
        return surface.EnumValue('TensorIOMode', 'INPUT' if name == 'input' else 'OUTPUT', 0)

    def profile_shape(obj, name, *args):
        return [(1,) + size[name], (1,) + size[name], (batch,) + size[name]]

    return {'ICudaEngine.num_io_tensors': lambda obj: len(names),
            'ICudaEngine.get_tensor_name': lambda obj, i: names[i],
            'ICudaEngine.get_tensor_mode': mode,
            'ICudaEngine.get_tensor_shape': lambda obj, name: (-1 if batch > 1 else 1,)
            + size[name],
            'ICudaEngine.get_tensor_dtype': lambda obj, name: float32,
            'ICudaEngine.get_tensor_profile_shape': profile_shape,
            'IExecutionContext.get_tensor_shape': lambda obj, name: (batch,) + size[name],
            'Builder.build_serialized_network': lambda obj, *args: b'stand-in engine',
            'tensorrt.nptype': lambda obj, dtype: np.float32}


class StandInMemory(CudaMemory):
    """GPU memory without a GPU: counts allocations, copies nothing."""

    library = 'stand-in'

    def __init__(self):
        self.live = {}

    def device_info(self):
        return 'stand-in GPU', '8.7'

    def alloc(self, nbytes):
        pointer = 4096 * (len(self.live) + 1)
        self.live[pointer] = nbytes
        return pointer

    def free(self, pointer):
        self.live.pop(pointer, None)

    def to_device(self, pointer, host):
        pass

    def to_host(self, host, pointer):
        pass

    @property
    def stream_handle(self):
        return 0

    def synchronize(self):
        pass


def stand_in_artifacts(monkeypatch):
    """Stand in for the ONNX artifact maker (not a TensorRT API; its numerics are tested
    where it is written): the stand-in parser never reads the graph it would make."""
    import types

    def export_artifact(model, input_size, precision, path, calibration=None, entry=None,
                        checks=True):
        with open(path, 'wb') as handle:
            handle.write(b'stand-in artifact')
        return read_artifact_info(path) | {'precision': precision}

    def read_artifact_info(path):
        return {'model': 'custom', 'precision': 'fp32', 'input_size': list(INPUT_SIZE),
                'checks': {}}
    module = types.ModuleType('evit_ros.runtime.artifact')
    module.export_artifact, module.read_artifact_info = export_artifact, read_artifact_info
    monkeypatch.setitem(sys.modules, 'evit_ros.runtime.artifact', module)


def drive_backend(trt, model, precision, tmp_path, monkeypatch):
    """Build, deserialize, bind and run the TensorRT backend against ``trt``; then load the
    built engine as a prebuilt file and run it again, where the backend takes one.

    The only place this test knows the backend's interface: its constructor (options it
    does not have are left out) and ``infer``. Returns the logits' shapes.
    """
    import cv2

    from evit_ros.runtime.backends import cuda_memory, tensorrt_backend
    from evit_ros.runtime.engine_cache import EngineCache
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    monkeypatch.setattr(cuda_memory, 'open_cuda_memory', lambda index=0: StandInMemory())
    stand_in_artifacts(monkeypatch)
    accepted = inspect.signature(tensorrt_backend.TensorRTBackend).parameters
    batch = 2 if 'max_batch' in accepted else 1
    trt.behave(engine_behaviour(trt, batch))
    calib = tmp_path / 'calib'
    calib.mkdir(exist_ok=True)
    # Calibration frames are never read by the stand-in; any images do.
    for i in range(2):
        cv2.imwrite(str(calib / f'{i}.png'), np.full((32, 64, 3), 40 * i, np.uint8))
    options = dict(device='cuda', precision=precision, engine_cache=EngineCache(tmp_path / 'e'),
                   calib=str(calib) if precision == 'int8' else None, max_batch=batch)
    backend = tensorrt_backend.TensorRTBackend(
        model, INPUT_SIZE, **{k: v for k, v in options.items() if k in accepted})
    x = np.zeros((batch, 3) + INPUT_SIZE, np.float32)
    shapes = [tuple(backend.infer(x).shape)]
    backend.close()
    if 'engine' in accepted:
        prebuilt = tensorrt_backend.TensorRTBackend(
            model, INPUT_SIZE, device='cuda', precision=precision,
            engine=str(backend.engine_path))
        shapes.append(tuple(prebuilt.infer(x).shape))
        prebuilt.close()
    return batch, shapes


def _cases():
    for version in VERSIONS:
        for precision in ('fp32', 'fp16', 'int8'):
            marks = []
            if (version.startswith('11.') and precision != 'fp32'
                    and not BACKEND_IS_VERSION_AWARE):
                marks.append(pytest.mark.xfail(strict=False, reason=(
                    'this backend sets BuilderFlag.FP16/INT8 and ILayer.precision on every '
                    'release; TensorRT 11 removed them (flip BACKEND_IS_VERSION_AWARE after '
                    'the fix)')))
            yield pytest.param(version, precision, marks=marks)


@pytest.mark.parametrize('version, precision', list(_cases()))
def test_backend_uses_only_names_its_release_has(tables, b0_graph, version, precision,
                                                 tmp_path, monkeypatch):
    trt = surface.stand_in_tensorrt(version)
    accepted = inspect.signature(TensorRTBackend).parameters
    trt.behave(network_behaviour(trt, b0_graph, -1 if 'max_batch' in accepted else 1))
    batch, shapes = drive_backend(trt, small_model(), precision, tmp_path, monkeypatch)
    used = trt.recorder.used
    # The whole path ran: built, deserialized, bound by name and executed.
    assert shapes[0] == (batch, CLASSES, INPUT_SIZE[0] // 8, INPUT_SIZE[1] // 8)
    assert all(shape == shapes[0] for shape in shapes)
    assert {'Builder.build_serialized_network', 'Runtime.deserialize_cuda_engine',
            'IExecutionContext.set_tensor_address', 'IExecutionContext.execute_async_v3'
            } <= set(used), sorted(used)
    if BACKEND_IS_VERSION_AWARE:
        # The run took each release's own path: strongly typed from 10, TF32 off for fp32.
        strong = int(version.split('.')[0]) >= 10
        assert ('NetworkDefinitionCreationFlag.STRONGLY_TYPED' in used) == strong
        assert ('BuilderFlag.FP16' in used) == (not strong and precision != 'fp32')
        assert ('BuilderFlag.TF32' in used) == (precision == 'fp32')
    missing = [f'{name} (used at {where})' for name, where in trt.recorder.missing.items()]
    assert not missing, (f'TensorRT {version} lacks names the {precision} path uses: '
                         + '; '.join(missing))


# --- cuda-python, the backend's GPU buffers -------------------------------------------------

CUDA_VERSIONS = tuple(surface.CUDA_WHEELS)


@pytest.fixture(scope='module')
def cuda_tables():
    """Each cuda-bindings release's ``cuda.bindings.runtime`` names (read once per machine)."""
    try:
        return {version: surface.read_cuda_surface(version) for version in CUDA_VERSIONS}
    except surface.SurfaceUnavailable as exc:
        pytest.skip(f'cuda-bindings unavailable: {exc}')


def stand_in_cuda(cuda_tables, version, monkeypatch):
    """Put a recording ``cuda.bindings.runtime`` of ``version`` where the backend imports it.

    One GPU, compute capability 8.7; every call succeeds.
    """
    import types
    others = [t for v, t in cuda_tables.items() if v != version]
    table = cuda_tables[version]
    ok = surface.EnumValue('cudaError_t', 'cudaSuccess', 0)
    cudart = surface.StandInModule(table, others=others,
                                   call=lambda key: (ok, surface.Anything(key)))
    cudart.behave({
        'cudart.cudaGetDeviceCount': lambda _: (ok, 1),
        'cudart.cudaGetDeviceProperties': lambda _, index: (ok, cudart.make(
            'cudaDeviceProp', name=b'Orin (nvgpu)\x00', major=8, minor=7)),
        'cudart.cudaMalloc': lambda _, nbytes: (ok, 4096),
        'cudart.cudaStreamCreate': lambda _: (ok, cudart.make('cudaStream_t')),
        'cudart.cudaFree': lambda _, pointer: (ok,)})
    package = types.ModuleType('cuda')
    package.__path__ = []
    bindings = types.ModuleType('cuda.bindings')
    bindings.__path__ = []
    bindings.runtime = cudart
    package.bindings = bindings
    for name, module in (('cuda', package), ('cuda.bindings', bindings),
                         ('cuda.bindings.runtime', cudart)):
        monkeypatch.setitem(sys.modules, name, module)
    return cudart


def test_cuda_tables_hold_known_names_and_lack_removed_ones(cuda_tables):
    old, new = cuda_tables['12.9.4'], cuda_tables['13.5.0']
    for table in (old, new):
        for name in ('cudart.cudaMalloc', 'cudart.cudaMemcpyAsync', 'cudaError_t.cudaSuccess',
                     'cudaMemcpyKind.cudaMemcpyHostToDevice', 'cudaDeviceProp.major',
                     'cudaDeviceProp.name'):
            assert surface.has_name(table, name), (table['version'], name)
        assert not surface.has_name(table, 'cudart.cudaMallocDoesNotExist')
    # CUDA 13 removed deprecated device properties (its release notes list clockRate).
    assert surface.has_name(old, 'cudaDeviceProp.clockRate')
    assert not surface.has_name(new, 'cudaDeviceProp.clockRate')


@pytest.mark.parametrize('version', CUDA_VERSIONS)
def test_cuda_memory_uses_only_names_its_release_has(cuda_tables, version, monkeypatch):
    from evit_ros.runtime.backends.cuda_memory import open_cuda_memory
    cudart = stand_in_cuda(cuda_tables, version, monkeypatch)
    memory = open_cuda_memory(0)
    assert memory.library == 'cuda-python'
    assert memory.device_info() == ('Orin (nvgpu)', '8.7')
    host = memory.host_empty((2, 3), np.float32)
    pointer = memory.alloc(host.nbytes)
    with memory.active():
        memory.to_device(pointer, host)
        memory.to_host(host, pointer)
        assert isinstance(memory.stream_handle, int)
        memory.synchronize()
    memory.free(pointer)
    used = set(cudart.recorder.used)
    assert {'cudart.cudaGetDeviceCount', 'cudart.cudaSetDevice', 'cudart.cudaStreamCreate',
            'cudart.cudaMalloc', 'cudart.cudaMemcpyAsync', 'cudart.cudaStreamSynchronize',
            'cudart.cudaFree', 'cudaMemcpyKind.cudaMemcpyHostToDevice',
            'cudaDeviceProp.name'} <= used, sorted(used)
    assert cudart.recorder.missing == {}


def test_a_removed_cuda_name_fails_the_check(cuda_tables, monkeypatch):
    cudart = stand_in_cuda(cuda_tables, '13.5.0', monkeypatch)
    from cuda.bindings import runtime
    err, prop = runtime.cudaGetDeviceProperties(0)
    assert int(err) == int(runtime.cudaError_t.cudaSuccess)
    assert prop.clockRate is not None  # gone in CUDA 13
    assert list(cudart.recorder.missing) == ['cudaDeviceProp.clockRate']


def test_cuda_errors_are_named_through_names_the_release_has(cuda_tables, monkeypatch):
    from evit_ros.runtime.backends import BackendUnavailable
    from evit_ros.runtime.backends.cuda_memory import open_cuda_memory
    cudart = stand_in_cuda(cuda_tables, '13.5.0', monkeypatch)
    failed = surface.EnumValue('cudaError_t', 'cudaErrorMemoryAllocation', 2)
    cudart.behave({'cudart.cudaStreamCreate': lambda _: (failed, None),
                   'cudart.cudaGetErrorString': lambda _, err: (err, b'out of memory')})
    with pytest.raises(BackendUnavailable, match=r'could not create a stream \(out of memory'):
        open_cuda_memory(0)
    assert 'cudart.cudaGetErrorString' in cudart.recorder.used
    assert cudart.recorder.missing == {}
