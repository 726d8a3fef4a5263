"""A stand-in for TensorRT and CUDA memory, for the tests of the TensorRT backend.

TensorRT and a GPU cannot exist on this machine, so :func:`make_tensorrt` returns a module
object that claims a TensorRT version and offers, per version, only the names the real
bindings of that release line have that the backend could reach (11.x: no ``FP16`` / ``INT8``
/ ``OBEY_PRECISION_CONSTRAINTS`` flags, no calibrator, no ``platform_has_fast_fp16``; 8.x: no
``STRONGLY_TYPED``, no ``IProgressMonitor``), so a path that uses a name its version lacks
fails with AttributeError. It records what the builder does (creation flags, flags set and
cleared, calibrator, profiles), "parses" ONNX into one layer per node (as TensorRT's parser
names them) and its "engine" is the parsed ONNX graph itself, run by onnxruntime on the CPU
one sample at a time, reading and writing the buffers of :class:`HostMemory`, a stand-in for
GPU memory. So what a test checks on the numbers is real: the backend's binding, copies,
shapes and batching computing the graph's logits.
"""

import json
import types
from typing import Dict, List

import numpy as np
import onnx

from evit_ros.runtime.backends.cuda_memory import CudaMemory

_HEADER = b'STAND-IN TENSORRT ENGINE\n'
# ONNX op -> the TensorRT layer type its parser makes (Pad becomes a fill-mode slice).
_TRT_KIND = {'MatMul': 'MATRIX_MULTIPLY', 'Concat': 'CONCATENATION', 'Conv': 'CONVOLUTION',
             'Reshape': 'SHUFFLE', 'Transpose': 'SHUFFLE', 'Unsqueeze': 'SHUFFLE',
             'Slice': 'SLICE', 'Pad': 'SLICE', 'Shape': 'SHAPE', 'Constant': 'CONSTANT',
             'Gather': 'GATHER', 'Relu': 'ACTIVATION', 'HardSigmoid': 'ACTIVATION',
             'Add': 'ELEMENTWISE', 'Mul': 'ELEMENTWISE', 'Div': 'ELEMENTWISE',
             'Cast': 'CAST', 'ReduceSum': 'REDUCE', 'ConstantOfShape': 'FILL'}


class HostMemory(CudaMemory):
    """Stands in for GPU memory: "device" buffers are host byte arrays keyed by pointer."""

    library = 'stand-in'

    def __init__(self):
        self.buffers: Dict[int, bytearray] = {}
        self.freed: List[int] = []
        self._next = 0x1000

    def device_info(self):
        return 'Stand-in GPU', '8.7'

    def alloc(self, nbytes: int) -> int:
        pointer = self._next
        self._next += max(int(nbytes), 1) + 256
        self.buffers[pointer] = bytearray(int(nbytes))
        return pointer

    def free(self, pointer: int) -> None:
        self.buffers.pop(pointer, None)
        self.freed.append(pointer)

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        data = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
        self.buffers[pointer][:data.size] = data.tobytes()

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        raw = np.frombuffer(bytes(self.buffers[pointer][:host.nbytes]), dtype=host.dtype)
        np.copyto(host, raw.reshape(host.shape))

    @property
    def stream_handle(self) -> int:
        return 7

    def synchronize(self) -> None:
        pass


class _Enum:
    """A pybind11-like enum value: a name, equal only to itself."""

    def __init__(self, owner: str, name: str, value: int = 0):
        self.name, self.value, self._owner = name, value, owner

    def __int__(self):
        return self.value

    def __repr__(self):
        return f'{self._owner}.{self.name}'


def _enum(owner: str, names, values=None):
    values = values or {}
    return types.SimpleNamespace(**{n: _Enum(owner, n, values.get(n, i))
                                    for i, n in enumerate(names)})


class _Tensor:
    def __init__(self, name, dtype, shape=()):
        self.name, self.dtype, self.shape = name, dtype, tuple(shape)


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


def make_tensorrt(version: str, memory: HostMemory):
    """Return a stand-in ``tensorrt`` module claiming ``version`` (e.g. ``10.3.0``)."""
    major = int(version.split('.')[0])
    trt = types.SimpleNamespace(__version__=version, builds=[])
    trt.DataType = _enum('DataType', ['FLOAT', 'HALF', 'INT8', 'INT32', 'BOOL', 'INT64'])
    trt.LayerType = _enum('LayerType', sorted(set(_TRT_KIND.values())))
    trt.TensorIOMode = _enum('TensorIOMode', ['NONE', 'INPUT', 'OUTPUT'])
    trt.MemoryPoolType = _enum('MemoryPoolType', ['WORKSPACE'])
    creation = ['EXPLICIT_BATCH'] + (['STRONGLY_TYPED'] if major >= 10 else [])
    trt.NetworkDefinitionCreationFlag = _enum('NetworkDefinitionCreationFlag', creation,
                                              {'EXPLICIT_BATCH': 0, 'STRONGLY_TYPED': 5})
    flags = ['TF32', 'DEBUG', 'REFIT']
    if major < 11:  # removed in 11 with weak typing
        flags += ['FP16', 'INT8', 'OBEY_PRECISION_CONSTRAINTS',
                  'PREFER_PRECISION_CONSTRAINTS']
    trt.BuilderFlag = _enum('BuilderFlag', flags)

    class ILogger:
        Severity = _enum('Severity', ['INTERNAL_ERROR', 'ERROR', 'WARNING', 'INFO',
                                      'VERBOSE'])

        def __init__(self):
            pass

    trt.ILogger = ILogger
    if major >= 10:
        trt.IProgressMonitor = type('IProgressMonitor', (), {'__init__': lambda self: None})
    if major < 11:
        trt.IInt8EntropyCalibrator2 = type('IInt8EntropyCalibrator2', (),
                                           {'__init__': lambda self: None})

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    config_names = {'progress_monitor'} | ({'int8_calibrator'} if major < 11 else set())

    class Config:
        def __init__(self):
            object.__setattr__(self, 'set_flags', [])
            object.__setattr__(self, 'cleared', [])
            object.__setattr__(self, 'profiles', [])
            object.__setattr__(self, 'pools', {})
            object.__setattr__(self, 'calibration_profile', None)

        def __setattr__(self, name, value):
            if name not in config_names:  # as pybind11: no such property in this version
                raise AttributeError(f"'IBuilderConfig' object has no attribute '{name}'")
            object.__setattr__(self, name, value)

        def set_flag(self, flag):
            self.set_flags.append(flag.name)

        def clear_flag(self, flag):
            self.cleared.append(flag.name)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool.name] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile):
            object.__setattr__(self, 'calibration_profile', profile)

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.layers, self.inputs, self.proto = [], [], None

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse(self, data):
            proto = onnx.load_from_string(bytes(data))
            self.network.proto = proto
            proto = onnx.shape_inference.infer_shapes(proto)  # tensor types, as TensorRT
            floats = {v.name for v in list(proto.graph.value_info) + list(proto.graph.output)
                      + list(proto.graph.input) if v.type.tensor_type.elem_type == 1}
            initializers = {i.name for i in proto.graph.initializer}
            for node in proto.graph.node:
                if node.op_type == 'Constant':
                    value = next(a.t for a in node.attribute if a.name == 'value')
                    floats.update(node.output if value.data_type == 1 else ())

                def dtype(name):
                    return trt.DataType.FLOAT if name in floats else trt.DataType.INT64
                inputs = [_Tensor(t, dtype(t)) for t in node.input
                          if t and t not in initializers]
                outputs = [_Tensor(t, dtype(t)) for t in node.output]
                kind = getattr(trt.LayerType, _TRT_KIND.get(node.op_type, ''), None) \
                    or _Enum('LayerType', node.op_type.upper())
                self.network.layers.append(_Layer(node.name, kind, inputs, outputs))
            for value in proto.graph.input:
                dims = [d.dim_value if d.HasField('dim_value') else -1
                        for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(_Tensor(value.name, trt.DataType.FLOAT, dims))
            return True

        def get_error(self, i):
            return ''

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            if major < 11:
                self.platform_has_fast_fp16 = True

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calibrated = 0
            calibrator = getattr(config, 'int8_calibrator', None)
            if calibrator is not None:  # as TensorRT: pull batches until None
                while calibrator.get_batch(['image']) is not None:
                    calibrated += 1
            record = {
                'creation_flags': network.flags,
                'set_flags': list(config.set_flags), 'cleared': list(config.cleared),
                'pools': dict(config.pools),
                'profiles': [p.shapes for p in config.profiles],
                'calibration_profile': config.calibration_profile is not None,
                'calibrator': calibrator is not None, 'calibrated_batches': calibrated,
                'progress_monitor': getattr(config, 'progress_monitor', None) is not None,
                'pinned': sorted(layer.name for layer in network.layers
                                 if layer.precision is not None),
            }
            trt.builds.append(record)
            meta = json.dumps({'version': version, 'build': record},
                              default=lambda v: list(v)).encode()
            return _HEADER + meta + b'\n' + network.proto.SerializeToString()

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.shapes = {engine.input_name: engine.static_input}
            self.addresses = {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(int(d) for d in shape)
            return True

        def get_tensor_shape(self, name):
            if name == self.engine.input_name:
                return self.shapes[name]
            batch = self.shapes[self.engine.input_name][0]
            return (batch,) + self.engine.output_tail

        def set_tensor_address(self, name, pointer):
            self.addresses[name] = pointer
            return True

        def execute_async_v3(self, stream):
            import onnxruntime as ort
            engine = self.engine
            if engine.session is None:
                engine.session = ort.InferenceSession(engine.onnx_bytes,
                                                      providers=['CPUExecutionProvider'])
            shape = self.shapes[engine.input_name]
            count = int(np.prod(shape))
            raw = bytes(memory.buffers[self.addresses[engine.input_name]][:4 * count])
            x = np.frombuffer(raw, np.float32).reshape(shape)
            # One sample at a time: the exported graph's reshapes fix the batch at 1.
            logits = np.concatenate([engine.session.run(None, {engine.input_name: x[i:i + 1]})[0]
                                     for i in range(shape[0])])
            out = np.ascontiguousarray(logits, np.float32).view(np.uint8).reshape(-1)
            memory.buffers[self.addresses[engine.output_name]][:out.size] = out.tobytes()
            return True

    class Engine:
        def __init__(self, meta, onnx_bytes):
            self.meta, self.onnx_bytes, self.session = meta, onnx_bytes, None
            proto = onnx.load_from_string(onnx_bytes)
            graph_in, graph_out = proto.graph.input[0], proto.graph.output[0]
            self.input_name, self.output_name = graph_in.name, graph_out.name
            dims = [d.dim_value if d.HasField('dim_value') else -1
                    for d in graph_in.type.tensor_type.shape.dim]
            self.shape = tuple(dims)
            profiles = meta['build']['profiles']
            self.profile = profiles[0][self.input_name] if profiles else None
            self.static_input = tuple(self.profile[2]) if self.profile else self.shape
            self.output_tail = tuple(d.dim_value for d in
                                     graph_out.type.tensor_type.shape.dim[1:])
            self.num_io_tensors = 2

        def get_tensor_name(self, i):
            return (self.input_name, self.output_name)[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self.input_name else \
                trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return self.shape if name == self.input_name else (self.shape[0],) + \
                self.output_tail

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name, index):
            return [tuple(s) for s in self.profile]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(_HEADER):
                self.logger.log(ILogger.Severity.ERROR, 'Serialization assertion failed: '
                                'magic tag mismatch')
                return None
            meta, onnx_bytes = data[len(_HEADER):].split(b'\n', 1)
            meta = json.loads(meta)
            if meta['version'] != version:
                self.logger.log(ILogger.Severity.ERROR, 'Serialization assertion failed: '
                                'version tag mismatch')
                return None
            return Engine(meta, onnx_bytes)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt
