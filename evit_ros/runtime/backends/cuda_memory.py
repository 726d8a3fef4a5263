"""GPU buffers and streams for the TensorRT backend, through cuda-python or pycuda.

TensorRT's Python API takes raw device pointers; whichever of NVIDIA's ``cuda-python``
(preferred: it uses the CUDA runtime's primary context, shared with PyTorch) or ``pycuda``
is installed provides them. Neither is imported until a TensorRT backend is built.
"""

import contextlib
from typing import Dict, Iterator, Tuple

import numpy as np

from evit_ros.runtime.backends import BackendUnavailable

NO_LIBRARY = ('tensorrt: needs cuda-python or pycuda for GPU buffers; install one '
              '(pip install cuda-python, or JetPack\'s python3-pycuda)')


class CudaMemory:
    """Device memory, copies and a stream on one GPU."""

    #: the library behind it (``cuda-python`` or ``pycuda``).
    library = ''

    def device_info(self) -> Tuple[str, str]:
        """Return the GPU's name and compute capability (``"8.7"``)."""
        raise NotImplementedError

    def alloc(self, nbytes: int) -> int:
        """Allocate ``nbytes`` on the GPU and return the device pointer."""
        raise NotImplementedError

    def free(self, pointer: int) -> None:
        """Release memory from :meth:`alloc`."""
        raise NotImplementedError

    def host_empty(self, shape: Tuple[int, ...], dtype) -> np.ndarray:
        """Return a host array suited to this library's asynchronous copies."""
        return np.empty(shape, dtype)

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        """Copy a contiguous host array to the device (queued on the stream)."""
        raise NotImplementedError

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        """Copy device memory into a contiguous host array (queued on the stream)."""
        raise NotImplementedError

    @property
    def stream_handle(self) -> int:
        """Return the raw CUDA stream handle, for ``execute_async_v3``."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for everything queued on the stream."""
        raise NotImplementedError

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this GPU current on the calling thread (ROS callbacks run on other threads)."""
        yield


class CudaPythonMemory(CudaMemory):
    """:class:`CudaMemory` on NVIDIA's cuda-python runtime bindings."""

    library = 'cuda-python'

    def __init__(self, index: int):
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python; ImportError propagates
        self.rt = cudart
        self.index = index
        count = self._check(cudart.cudaGetDeviceCount(), 'count GPUs')
        if index >= count:
            raise BackendUnavailable(f'tensorrt: no CUDA GPU {index} ({count} found)')
        self._check(cudart.cudaSetDevice(index), 'select the GPU')
        self.stream = self._check(cudart.cudaStreamCreate(), 'create a stream')

    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != int(self.rt.cudaError_t.cudaSuccess):
            name = self.rt.cudaGetErrorString(err)[1]
            raise BackendUnavailable(f'tensorrt: CUDA could not {what} '
                                     f'({name.decode() if isinstance(name, bytes) else name})')
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def device_info(self) -> Tuple[str, str]:
        prop = self._check(self.rt.cudaGetDeviceProperties(self.index), 'read the GPU')
        name = prop.name.decode(errors='replace') if isinstance(prop.name, bytes) else prop.name
        return name.split('\x00', 1)[0].strip(), f'{prop.major}.{prop.minor}'

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes), f'allocate {nbytes} bytes'))

    def free(self, pointer: int) -> None:
        self.rt.cudaFree(pointer)

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, kind,
                                            self.stream), 'copy to the GPU')

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, kind,
                                            self.stream), 'copy from the GPU')

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), 'finish the stream')

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._check(self.rt.cudaSetDevice(self.index), 'select the GPU')
        yield


class PyCudaMemory(CudaMemory):
    """:class:`CudaMemory` on pycuda, in the GPU's primary context (as PyTorch uses)."""

    library = 'pycuda'

    def __init__(self, index: int):
        import pycuda.driver as driver  # ImportError propagates
        self.driver = driver
        try:
            driver.init()
            if index >= driver.Device.count():
                raise BackendUnavailable(
                    f'tensorrt: no CUDA GPU {index} ({driver.Device.count()} found)')
            self.device = driver.Device(index)
            self.context = self.device.retain_primary_context()
            with self.active():
                self.stream = driver.Stream()
        except driver.Error as exc:
            raise BackendUnavailable(f'tensorrt: CUDA is not usable here ({exc})') from None
        self._buffers: Dict[int, object] = {}

    def device_info(self) -> Tuple[str, str]:
        major, minor = self.device.compute_capability()
        return self.device.name(), f'{major}.{minor}'

    def alloc(self, nbytes: int) -> int:
        with self.active():
            buffer = self.driver.mem_alloc(nbytes)
        self._buffers[int(buffer)] = buffer
        return int(buffer)

    def free(self, pointer: int) -> None:
        buffer = self._buffers.pop(pointer, None)
        if buffer is not None:
            with self.active():
                buffer.free()

    def host_empty(self, shape: Tuple[int, ...], dtype) -> np.ndarray:
        # pycuda's asynchronous copies need page-locked host memory.
        with self.active():
            return self.driver.pagelocked_empty(shape, dtype)

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        self.driver.memcpy_htod_async(pointer, host, self.stream)

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        self.driver.memcpy_dtoh_async(host, pointer, self.stream)

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def synchronize(self) -> None:
        self.stream.synchronize()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.driver.Context.pop()


def open_cuda_memory(index: int = 0) -> CudaMemory:
    """Return GPU memory access on GPU ``index`` through cuda-python, else pycuda.

    :raises BackendUnavailable: when neither is installed or no usable GPU is found.
    """
    reasons = []
    for kind in (CudaPythonMemory, PyCudaMemory):
        try:
            return kind(index)
        except ImportError as exc:
            reasons.append(f'{kind.library}: {exc}')
        except Exception as exc:  # a broken driver surfaces as many types
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(f'tensorrt: CUDA is not usable through {kind.library} '
                                     f'({type(exc).__name__}: {exc})') from None
    raise BackendUnavailable(NO_LIBRARY + ' [' + '; '.join(reasons) + ']')
