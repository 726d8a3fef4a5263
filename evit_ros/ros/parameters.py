"""The segmentation node's parameters: one table that declares, checks and documents them.

Each :class:`ParameterSpec` carries the default, a description, the allowed values (as ROS
descriptor ranges where ROS has them) and whether it may change while the node runs. The
node, ``config/segmentation.yaml``, the launch-file tests and the README table all read
:data:`PARAMETERS`.
"""

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)

from evit_ros.model.registry import MODELS, UnknownModelError, get_entry

MAX_NETWORK_SIDE = 8192
_DEVICE = re.compile(r'^(cpu|cuda(:\d+)?)$')


class ParameterError(ValueError):
    """An invalid parameter value; ``str()`` is one line naming the value and the fix."""


@dataclass(frozen=True)
class ParameterSpec:
    """One declared node parameter."""

    name: str
    default: Any
    description: str
    choices: Tuple[str, ...] = ()
    int_range: Optional[Tuple[int, int, int]] = None          # from, to, step
    float_range: Optional[Tuple[float, float]] = None         # from, to (inclusive)
    runtime: bool = False                                     # may change while running
    constraints: str = ''                                     # allowed values, when no range

    @property
    def type_name(self) -> str:
        """ROS type of the parameter: ``string``, ``integer`` or ``double``."""
        return {str: 'string', int: 'integer', float: 'double', bool: 'boolean',
                tuple: 'string array'}[type(self.default)]

    @property
    def a_type(self) -> str:
        """The type with its article, for messages: ``a string``, ``an integer``."""
        return ('an ' if self.type_name[0] in 'aeiou' else 'a ') + self.type_name

    @property
    def allowed(self) -> str:
        """Human-readable allowed values."""
        if self.constraints:
            return self.constraints
        if self.choices:
            return 'one of ' + ', '.join(self.choices)
        if self.int_range:
            low, high, step = self.int_range
            if step > 1:
                return f'0 (model default) or a multiple of {step} up to {high}'
            if low == 0:
                return f'0 (default) or an integer up to {high}'
            return f'an integer from {low} to {high}'
        if self.float_range:
            return f'a number from {self.float_range[0]:g} to {self.float_range[1]:g}'
        return 'a string'

    def descriptor(self) -> ParameterDescriptor:
        """Return the ROS descriptor: type, description, constraints and ranges."""
        descriptor = ParameterDescriptor(
            name=self.name, description=self.description,
            additional_constraints=self.allowed + ('' if self.runtime else
                                                   '; read at start-up only'),
            read_only=not self.runtime)
        if isinstance(self.default, tuple):
            descriptor.type = ParameterType.PARAMETER_STRING_ARRAY
        if self.int_range:
            low, high, step = self.int_range
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=step)]
        if self.float_range:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(self.float_range[0]), to_value=float(self.float_range[1]),
                step=0.0)]
        return descriptor

    def check(self, value: Any) -> Optional[str]:
        """Return why ``value`` is invalid for this parameter, or ``None`` when it is valid."""
        expected = type(self.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str)
                                                               for v in value):
                return f'{self.name} must be a list of strings, got {value!r}'
            extra = _EXTRA_CHECKS.get(self.name)
            return extra(list(value)) if extra else None
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            return (f'{self.name} must be {self.a_type}, got {value!r}'
                    + (' (write 1.0, not 1)' if expected is float else ''))
        if self.choices and value not in self.choices:
            return f'{self.name} must be {self.allowed}, got {value!r}'
        if self.int_range:
            low, high, step = self.int_range
            if not low <= value <= high or (value - low) % step:
                return f'{self.name} must be {self.allowed}, got {value}'
        if self.float_range and not self.float_range[0] <= value <= self.float_range[1]:
            return f'{self.name} must be {self.allowed}, got {value:g}'
        extra = _EXTRA_CHECKS.get(self.name)
        return extra(value) if extra else None


def _check_model(value: str) -> Optional[str]:
    try:
        get_entry(value)
    except UnknownModelError as exc:
        return str(exc)
    return None


def _check_weights(value: str) -> Optional[str]:
    if value in ('', 'official') or os.path.isfile(os.path.expanduser(value)):
        return None
    return (f'weights file {value!r} does not exist; give a checkpoint path, or leave '
            f"weights empty ('') for the official checkpoint")


def _check_device(value: str) -> Optional[str]:
    if _DEVICE.match(value):
        return None
    return f"device must be 'cpu', 'cuda' or 'cuda:N', got {value!r}"


def _check_cameras(value) -> Optional[str]:
    from evit_ros.ros.cameras import check_cameras
    try:
        check_cameras(list(value))
    except ValueError as exc:
        return str(exc)
    return None


_EXTRA_CHECKS = {'model': _check_model, 'weights': _check_weights, 'device': _check_device,
                 'cameras': _check_cameras}

#: Every parameter of ``segmentation_node``, in the order of ``config/segmentation.yaml``.
PARAMETERS: Tuple[ParameterSpec, ...] = (
    ParameterSpec('model', 'b0-cityscapes',
                  'Model name from the registry (e.g. b0-cityscapes, l2-ade20k).',
                  constraints='one of ' + ', '.join(MODELS) + ' (or the release name, '
                  'efficientvit-seg-<model>)'),
    ParameterSpec('weights', '',
                  "Checkpoint path; '' loads the official checkpoint from "
                  'EVIT_ROS_WEIGHTS_DIR or the cache (see `evit-ros weights fetch`).',
                  constraints="'' or the path of a checkpoint file"),
    ParameterSpec('backend', 'auto',
                  'Inference backend; auto picks the fastest available (tensorrt, '
                  'onnxruntime, torch); with device cpu it tries the CPU ones only.',
                  choices=('auto', 'tensorrt', 'onnxruntime', 'torch')),
    ParameterSpec('device', 'cpu', "Device to run on: 'cpu', 'cuda' or 'cuda:N'.",
                  constraints='cpu, cuda or cuda:N'),
    ParameterSpec('precision', 'fp32',
                  'Numeric precision; fp16 and int8 need a GPU backend.',
                  choices=('fp32', 'fp16', 'int8')),
    ParameterSpec('network_height', 0,
                  'Network input height in pixels; 0 = the model default. Set together with '
                  'network_width.', int_range=(0, MAX_NETWORK_SIDE, 32)),
    ParameterSpec('network_width', 0,
                  'Network input width in pixels; 0 = the model default. Set together with '
                  'network_height.', int_range=(0, MAX_NETWORK_SIDE, 32)),
    ParameterSpec('cpu_threads', 0,
                  'CPU threads for inference (PyTorch intra-op, ONNX Runtime); 0 = the '
                  "library's default (every core). 1-2 keep latency steady on a CPU shared "
                  'with other nodes.', int_range=(0, 256, 1)),
    ParameterSpec('cameras', (),
                  "Image topics of several cameras served by one model (e.g. "
                  "['/front/image_raw', '/left/image_raw']); [] = the single ~/image. A "
                  "camera's name is the last part of its topic's namespace (front); its "
                  'outputs are ~/<name>/label_map etc.', constraints='absolute topics, one '
                  'camera per namespace'),
    ParameterSpec('max_batch', 4,
                  'Most frames (one per camera) segmented in one inference; cameras beyond '
                  'it wait their round-robin turn.', int_range=(1, 16, 1)),
    ParameterSpec('workers', 1,
                  'Inference workers, each segmenting the frames waiting at that moment as one '
                  'batch; a camera has one frame in a worker at a time, so its outputs stay in '
                  'order. For several cameras on a CPU, 2 workers with cpu_threads 1 keep both '
                  'cores busier than 1 worker with 2 threads; a TensorRT engine runs one batch '
                  'at a time (the workers then overlap only the CPU work).',
                  int_range=(1, 8, 1)),
    ParameterSpec('autostart', True,
                  'Configure and activate at start (one-step ros2 run / launch); false waits '
                  'for ~/change_state from a lifecycle manager.', constraints='true or false'),
    ParameterSpec('autostart_listener_timeout', 0.0,
                  'Under autostart, seconds to wait for a subscriber on ~/transition_event '
                  'before configuring, so a launch file that acts on the transition to active '
                  '(replay.launch.py) cannot miss it: the events are not kept for late '
                  'subscribers. 0 = start at once.', float_range=(0.0, 600.0)),
    ParameterSpec('input_transport', 'raw',
                  'raw subscribes ~/image (sensor_msgs/Image); compressed subscribes '
                  '~/image/compressed (jpeg or png sensor_msgs/CompressedImage).',
                  choices=('raw', 'compressed')),
    ParameterSpec('output_resolution', 'input',
                  'input publishes outputs at the camera resolution; network at the network '
                  'size, with ~/label_map/camera_info scaled to match.',
                  choices=('input', 'network'), runtime=True),
    ParameterSpec('qos_reliability', 'best_effort',
                  'Alias: default reliability of the image subscriptions (best_effort, the '
                  'sensor-data profile, matches every camera driver); '
                  'qos_overrides.<topic>.subscription.reliability wins.',
                  choices=('best_effort', 'reliable')),
    ParameterSpec('qos_depth', 1,
                  'Alias: default history depth of the image subscriptions and the outputs; '
                  'qos_overrides.<topic>.subscription.depth (input) and '
                  '.publisher.depth (output) win.', int_range=(1, 100, 1)),
    ParameterSpec('overlay_alpha', 0.5,
                  'Weight of the colour mask in ~/overlay (0 = camera image only, 1 = mask '
                  'only).', float_range=(0.0, 1.0), runtime=True),
    ParameterSpec('latency_budget_ms', 0.0,
                  'Node latency (image received to outputs published) above which a frame '
                  'makes /diagnostics warn (10 frames in a row: error); 0 = auto, 3x the '
                  'warm-up frame, at least 1000 ms on CPU / 100 ms on GPU.',
                  float_range=(0.0, 600000.0), runtime=True),
    ParameterSpec('diagnostics_period', 1.0,
                  'Seconds between /diagnostics messages (steady clock, also under sim time).',
                  float_range=(0.05, 60.0), runtime=True),
    ParameterSpec('engine_dir', '',
                  "Folder for TensorRT engines / ONNX files; '' = the evit_ros cache.",
                  constraints="'' or a folder path"),
    ParameterSpec('engine', '',
                  'Prebuilt file run as it is, no build or calibration at start-up: a TensorRT '
                  "engine (evit-ros build-engine) or an ONNX artifact (evit-ros export, for "
                  "onnxruntime); its precision is what runs. '' = build or use the cache.",
                  constraints="'' or an .engine / .onnx file path"),
)

SPECS: Dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}


@dataclass
class NodeSettings:
    """Validated parameter values as the node uses them."""

    model: str
    weights: str
    backend: str
    device: str
    precision: str
    network_height: int
    network_width: int
    cpu_threads: int
    cameras: Tuple[str, ...]
    max_batch: int
    workers: int
    autostart: bool
    autostart_listener_timeout: float
    input_transport: str
    output_resolution: str
    qos_reliability: str
    qos_depth: int
    overlay_alpha: float
    latency_budget_ms: float
    diagnostics_period: float
    engine_dir: str
    engine: str

    @property
    def network_size(self) -> Optional[Tuple[int, int]]:
        """``(height, width)`` asked for, or ``None`` for the model's default."""
        if self.network_height == 0 and self.network_width == 0:
            return None
        return self.network_height, self.network_width


def check_settings(values: Dict[str, Any]) -> NodeSettings:
    """Check every value and the combinations, and return the settings.

    :param values: parameter name -> value, for every name in :data:`SPECS`.
    :raises ParameterError: one line naming the first bad value and what to set.
    """
    for spec in PARAMETERS:
        reason = spec.check(values[spec.name])
        if reason:
            raise ParameterError(reason)
    height, width = values['network_height'], values['network_width']
    if (height == 0) != (width == 0):
        raise ParameterError(f'network_height={height} and network_width={width}: set both '
                             '(multiples of 32) or leave both 0 for the model default')
    settings = NodeSettings(**{name: values[name] for name in SPECS})
    settings.cameras = tuple(settings.cameras)
    return settings


def refusal(name: str, old: Any, new: Any) -> Optional[str]:
    """Return why changing ``name`` from ``old`` to ``new`` at runtime is refused, or ``None``.

    Parameters that shape the model, its backend or the subscriptions are read at start-up
    only (declared read-only, so ROS refuses them first); setting them to their current
    value is accepted here.
    """
    spec = SPECS.get(name)
    if spec is None:
        return None
    if not spec.runtime:
        if new == old:
            return None
        return (f'{name} is read at start-up only; restart the node with '
                f'-p {name}:={new} (or change it in the launch/params file)')
    return spec.check(new)


def markdown_table(specs: Iterable[ParameterSpec] = PARAMETERS) -> str:
    """Return the parameters as a markdown table (name, type, default, allowed, description)."""
    lines = ['| parameter | type | default | allowed | runtime | description |',
             '|---|---|---|---|---|---|']
    for spec in specs:
        default = (repr(spec.default) if isinstance(spec.default, str) else
                   '[]' if isinstance(spec.default, tuple) else
                   str(spec.default).lower() if isinstance(spec.default, bool) else
                   spec.default)
        lines.append(f'| `{spec.name}` | {spec.type_name} | `{default}` | {spec.allowed} | '
                     f'{"yes" if spec.runtime else "no"} | {spec.description} |')
    return '\n'.join(lines)
