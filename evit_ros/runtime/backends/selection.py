"""Choosing and building a backend by name, or the best one that works here (``auto``).

``auto`` tries, in order: TensorRT, ONNX Runtime on CUDA, PyTorch on CUDA, ONNX Runtime on
the CPU, PyTorch on the CPU, and takes the first that builds; with ``device: cpu`` it tries
the CPU candidates only, so ``cpu`` keeps it off the GPU. Each one skipped gets one log
line (logger ``evit_ros.runtime``) saying why, and the one chosen one more, so a robot's log
always tells which backend, device and precision run.

When a running backend fails, :func:`next_auto_backend` builds the next one of the ``auto``
order after it (the node's fallback). Backends built here pass through
:func:`evit_ros.runtime.fault_injection.armed`, the documented fault-injection switch.
"""

import importlib
import inspect
import logging
import os
from typing import Optional, Set, Tuple

from torch import nn

from evit_ros.runtime import fault_injection
from evit_ros.runtime.backends import Backend, BackendUnavailable

LOG = logging.getLogger('evit_ros.runtime')

#: names users may choose.
BACKENDS = ('auto', 'tensorrt', 'onnxruntime', 'torch')
#: (backend, device kind) in the order ``auto`` tries them.
AUTO_ORDER = (('tensorrt', 'cuda'), ('onnxruntime', 'cuda'), ('torch', 'cuda'),
              ('onnxruntime', 'cpu'), ('torch', 'cpu'))
_CLASSES = {
    'torch': ('evit_ros.runtime.backends.torch_backend', 'TorchBackend'),
    'onnxruntime': ('evit_ros.runtime.backends.onnxruntime_backend', 'OnnxRuntimeBackend'),
    'tensorrt': ('evit_ros.runtime.backends.tensorrt_backend', 'TensorRTBackend'),
}
# Arguments every backend gets positionally or by name, never as options.
_COMMON = {'self', 'model', 'input_size', 'device', 'precision'}
#: the options each backend takes by name. Declared here, not read from the classes, so
#: which options reach a backend never depends on which other backends import on this
#: machine (test_backend_selection checks the table against the constructors).
OPTIONS = {
    'torch': frozenset({'fold', 'threads'}),
    'onnxruntime': frozenset({'threads', 'onnx_file', 'optimization', 'spin', 'cache',
                              'entry', 'weights'}),
    'tensorrt': frozenset({'engine_dir', 'workspace_mb', 'calib', 'calib_topic',
                           'calib_images', 'rebuild', 'entry', 'weights', 'engine_cache',
                           'engine', 'max_batch', 'artifact_checks', 'artifact'}),
}
#: backends that run a prebuilt file, and the option naming it.
PREBUILT_OPTION = {'tensorrt': 'engine', 'onnxruntime': 'onnx_file'}
# What each auto candidate runs for a requested precision: (precision, note), or
# (None, why it is skipped). Missing entries run the requested precision as it is.
_AUTO_PRECISION = {
    ('onnxruntime', 'cuda'): {'fp16': (None, 'it has no fp16 (TensorRT or torch do)'),
                              'int8': (None, 'its int8 runs on the CPU only')},
    ('torch', 'cuda'): {'int8': ('fp16', 'int8 needs TensorRT, fp16 instead')},
    ('onnxruntime', 'cpu'): {'fp16': ('fp32', 'fp16 needs a GPU, fp32 on the CPU')},
    ('torch', 'cpu'): {'fp16': ('fp32', 'fp16 needs a GPU, fp32 on the CPU'),
                       'int8': ('fp32', 'int8 needs TensorRT or onnxruntime, fp32 instead')},
}


def backend_class(name: str) -> type:
    """Import and return the class of backend ``name``.

    :raises BackendUnavailable: when its module (or a library it needs) cannot be imported.
    """
    module, attr = _CLASSES[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:  # the real reason, e.g. a folder shadowing the package
        where = f' from {exc.path}' if getattr(exc, 'path', None) else ''
        raise BackendUnavailable(f'{name}: cannot import {module}{where}: '
                                 f'{type(exc).__name__}: {exc}') from None


def prebuilt_options(backend: str, path: str) -> Tuple[str, dict]:
    """Return the backend that runs the prebuilt file ``path`` and the option naming it.

    ``auto`` picks by the file: ``.onnx`` runs on onnxruntime, anything else is taken for a
    TensorRT engine.

    :raises ValueError: for a backend that cannot run a prebuilt file (torch).
    """
    if backend == 'auto':
        backend = 'onnxruntime' if str(path).endswith('.onnx') else 'tensorrt'
    if backend not in PREBUILT_OPTION:
        raise ValueError(f'engine {path}: backend {backend} cannot run a prebuilt file; use '
                         'tensorrt (an engine) or onnxruntime (an ONNX artifact)')
    return backend, {PREBUILT_OPTION[backend]: str(path)}


def create_backend(name: str, model: nn.Module, input_size: Tuple[int, int],
                   device: str = 'cpu', precision: str = 'fp32', **options) -> Backend:
    """Build the backend called ``name`` for ``model`` at ``input_size``.

    :param name: one of :data:`BACKENDS`. ``auto`` takes the first of :data:`AUTO_ORDER`
        that works; there ``device`` only picks the GPU (``cuda:1``) for CUDA candidates,
        candidates without the requested precision are skipped, and CPU candidates run
        fp32 when fp16 was asked for (the log line says so).
    :param options: backend options (``threads``, ``engine_dir``, ``workspace_mb``,
        ``calib``, ...); each backend receives those it takes.
        With ``device='cpu'``, ``auto`` tries only the CPU candidates.
    :raises BackendUnavailable: when that backend (for ``auto``: every one) cannot run here,
        saying why.
    :raises ValueError: for an unknown backend name or an option no backend takes.
    """
    if name not in BACKENDS:
        raise ValueError(f'unknown backend {name!r}; choose one of {", ".join(BACKENDS)}')
    fault_injection.parse(os.environ.get(fault_injection.VARIABLE, ''))
    if name == 'auto':
        return _auto(model, input_size, device, precision, options)
    cls = backend_class(name)
    backend = cls(model, input_size, device=device, precision=precision,
                  **_options_for(name, cls, options, strict=True))
    LOG.info('backend: %s on %s, %s', backend.name, backend.device, backend.precision)
    return fault_injection.armed(backend)


def next_auto_backend(current: Backend, model: nn.Module, input_size: Tuple[int, int],
                      device: str = 'cpu', precision: str = 'fp32', **options) -> Backend:
    """Build the first backend that works among those ``auto`` tries after ``current``.

    Used when ``current`` failed at run time; arguments as :func:`create_backend`'s.

    :raises BackendUnavailable: when no later candidate works (or none is left), saying why.
    """
    kind = 'cuda' if str(current.device).startswith('cuda') else 'cpu'
    try:
        later = AUTO_ORDER[AUTO_ORDER.index((current.name, kind)) + 1:]
    except ValueError:
        later = ()
    if not later:
        raise BackendUnavailable(f'auto: no backend left after {current.name} on '
                                 f'{current.device}')
    return _auto(model, input_size, device, precision, options, later)


def _auto(model: nn.Module, input_size, device: str, precision: str, options,
          order=AUTO_ORDER) -> Backend:
    gpu = device if str(device).startswith('cuda') else 'cuda'
    if str(device) == 'cpu':  # the user said cpu: never touch a GPU
        order = tuple(candidate for candidate in order if candidate[1] == 'cpu')
        if not order:
            raise BackendUnavailable('auto: no CPU backend left to try (device is cpu)')
    _check_options(options)
    reasons = []
    for name, kind in order:
        where = gpu if kind == 'cuda' else 'cpu'
        wanted, note = _auto_precision(name, kind, precision, options)
        try:
            if wanted is None:
                raise BackendUnavailable(f'{note}; {precision} was asked for')
            cls = backend_class(name)
            backend = cls(model, input_size, device=where, precision=wanted,
                          **_options_for(name, cls, options, strict=False))
        except BackendUnavailable as exc:
            reason = _without_prefix(str(exc), name)
            LOG.info('auto: skipping %s on %s: %s', name, where, reason)
        except TypeError:
            raise  # a programming error, not a property of this machine
        except Exception as exc:  # a broken install or driver, a setting it refuses
            reason = f'{type(exc).__name__}: {_without_prefix(str(exc), name)}'
            LOG.warning('auto: skipping %s on %s: %s', name, where, reason)
        else:
            LOG.info('backend: %s on %s, %s (auto%s)', backend.name, backend.device,
                     backend.precision, f'; {note}' if note else '')
            return fault_injection.armed(backend)
        reasons.append(f'{name} on {where}: {reason}')
    raise BackendUnavailable('auto: no backend works here: ' + '; '.join(reasons))


def _auto_precision(name: str, kind: str, precision: str, options: dict
                    ) -> Tuple[Optional[str], str]:
    """Return the precision ``auto`` asks of a candidate (``None``: skip it) and a note."""
    if (name, kind) == ('onnxruntime', 'cpu') and precision == 'int8' \
            and not options.get('calib'):
        return 'fp32', 'int8 needs calibration data (calib), fp32 instead'
    return _AUTO_PRECISION.get((name, kind), {}).get(precision, (precision, ''))


def _without_prefix(text: str, name: str) -> str:
    text = text.strip().splitlines()[0] if text.strip() else 'no reason given'
    return text[len(name) + 2:] if text.startswith(f'{name}: ') else text


def _signature(cls: type) -> Tuple[Set[str], bool]:
    """Return the option names ``cls`` takes by name, and whether it takes ``**options``."""
    params = inspect.signature(cls.__init__).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - _COMMON, any(p.kind == p.VAR_KEYWORD for p in params)


def _check_options(options: dict) -> None:
    """Raise ValueError for options that no backend takes (:data:`OPTIONS`)."""
    everyone = set().union(*OPTIONS.values())
    unknown = sorted(set(options) - everyone)
    if unknown:
        raise ValueError(f'unknown backend option(s) {", ".join(unknown)}; known: '
                         f'{", ".join(sorted(everyone))}')


def _options_for(name: str, cls: type, options: dict, strict: bool) -> dict:
    """Return the subset of ``options`` for backend ``name``.

    Options another backend takes are dropped (one configuration serves every backend);
    options nobody takes are an error when ``strict`` (an explicitly chosen backend), and
    otherwise go only to a backend class taking ``**options``.
    """
    own, takes_any = _signature(cls)
    everyone = set().union(*OPTIONS.values())
    unknown = sorted(set(options) - everyone - own)
    if unknown and not takes_any and strict:
        raise ValueError(f'unknown backend option(s) {", ".join(unknown)} for {name}; '
                         f'known: {", ".join(sorted(everyone | own))}')
    chosen = {k: v for k, v in options.items() if k in own}
    if takes_any:
        chosen.update({k: options[k] for k in unknown})
    return chosen
