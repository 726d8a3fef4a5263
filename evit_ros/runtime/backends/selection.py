"""Choosing and building a backend by name."""

from typing import Tuple

from torch import nn

from evit_ros.runtime.backends import Backend, BackendUnavailable

BACKENDS = ('torch',)


def create_backend(name: str, model: nn.Module, input_size: Tuple[int, int],
                   device: str = 'cpu', precision: str = 'fp32', **options) -> Backend:
    """Build the backend called ``name`` for ``model`` at ``input_size``.

    :raises BackendUnavailable: when that backend cannot run here, saying why.
    :raises ValueError: for an unknown backend name.
    """
    options.pop('entry', None)
    options.pop('weights', None)
    if name == 'torch':
        from evit_ros.runtime.backends.torch_backend import TorchBackend
        return TorchBackend(model, input_size, device=device, precision=precision, **options)
    if name not in BACKENDS:
        raise ValueError(f'unknown backend {name!r}; choose one of {", ".join(BACKENDS)}')
    raise BackendUnavailable(f'backend {name} is not available')
