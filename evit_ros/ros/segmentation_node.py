"""ROS 2 semantic segmentation node: camera images in, label maps out, one model for a rig.

Topics, relative to the node. With ``cameras`` empty there is one camera, ``~/image``
(remap it to the camera's topic) and its outputs are ``~/label_map`` etc.; with
``cameras: ['/front/image_raw', ...]`` each camera is named after its topic's namespace
(``front``) and its outputs are ``~/front/label_map`` etc.:

* in  the image topic (sensor_msgs/Image) when ``input_transport`` is ``raw``, or
  ``<image topic>/compressed`` (sensor_msgs/CompressedImage, jpeg or png) when
  ``compressed``;
* in  ``<image namespace>/camera_info`` (sensor_msgs/CameraInfo, optional), where
  image_transport's camera subscriber looks;
* out ``label_map`` (sensor_msgs/Image mono8, mono16 beyond 256 classes): class ids;
* out ``label_map/camera_info``: the camera info scaled to the label map, whenever the
  label map's size differs from the camera's;
* out ``color_mask``, ``overlay`` (rgb8), ``confidence`` (mono8, 255 x the winning class's
  softmax probability) and ``label_map/compressed`` (lossless PNG): computed only while
  subscribed;
* out ``~/class_info`` (std_msgs/String JSON, transient local): model, classes, palette;
* out ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): one status per camera.

Every output carries its camera's image header. Callbacks only validate and hand the frame
to the worker threads (``workers``, default one) through the camera's depth-1 slot (latest
wins); a worker segments the frames waiting at that moment as one batch (round-robin beyond
``max_batch``), so a slow model drops stale frames instead of queueing them. A camera has
one frame in a worker at a time, so its outputs stay in order.

The node is a managed (lifecycle) node: configure loads the model and warms it up,
activate subscribes and publishes, deactivate stops both, cleanup frees the model. With
``autostart`` (the default) it configures and activates itself, first waiting up to
``autostart_listener_timeout`` seconds for a subscriber on ``~/transition_event`` (a launch
file acting on the transition). QoS follows rclpy's
overrides (``qos_overrides.<topic>.subscription.depth`` ...). Parameters are in
:mod:`evit_ros.ros.parameters`.
"""

import ctypes
import gc
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from evit_ros.ros.batching import BatchGate
from evit_ros.ros.cameras import camera_info_topic, camera_name
from evit_ros.ros.compat import on_parameters_set
from evit_ros.ros.diagnostics import auto_budget_ms, NodeHealth
from evit_ros.ros.latest_slot import LatestSlot
from evit_ros.ros.messages import (
    array_to_image, check_compressed, compressed_to_array, image_to_array, label_map_to_image,
    label_map_to_png, MessageError, scaled_camera_info)
from evit_ros.ros.parameters import (
    check_settings, NodeSettings, PARAMETERS, ParameterError, refusal, SPECS)
from evit_ros.ros.resources import use_large_image_profile
from evit_ros.runtime.image import ImageError, to_rgb

NODE_NAME = 'segmentation_node'

# Topics (relative names; see the module docstring).
IMAGE = '~/image'
COMPRESSED_SUFFIX = '/compressed'
CAMERA_INFO = '~/camera_info'
LABEL_MAP = '~/label_map'
LABEL_MAP_CAMERA_INFO = '~/label_map/camera_info'
LABEL_MAP_COMPRESSED = '~/label_map/compressed'
COLOR_MASK = '~/color_mask'
OVERLAY = '~/overlay'
CONFIDENCE = '~/confidence'
CLASS_INFO = '~/class_info'
DIAGNOSTICS = '/diagnostics'

#: Every topic name the node uses (single camera), for launch-file checks and docs.
TOPICS = (IMAGE, IMAGE + COMPRESSED_SUFFIX, CAMERA_INFO, LABEL_MAP, LABEL_MAP_CAMERA_INFO,
          LABEL_MAP_COMPRESSED, COLOR_MASK, OVERLAY, CONFIDENCE, CLASS_INFO, DIAGNOSTICS)
#: The outputs of one camera, relative to its prefix (``~/`` or ``~/<name>/``).
CAMERA_OUTPUTS = ('label_map', 'label_map/camera_info', 'label_map/compressed', 'color_mask',
                  'overlay', 'confidence')

# class_info is published once; late joiners get it from the writer's history.
CLASS_INFO_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTICS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

# Start-up failures: exit codes and the exceptions that mean "the user must fix something".
EXIT_PARAMETER = 2
EXIT_STARTUP = 1
# Seconds a deactivate waits for the frame the worker runs (a CPU frame at 1024x2048).
WORKER_JOIN_S = 10.0


def image_qos(reliability: str, depth: int) -> QoSProfile:
    """Return the input QoS: keep-last ``depth``, best effort (sensor data) or reliable."""
    policy = (ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
              else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos(depth: int) -> QoSProfile:
    """Return the output QoS: reliable keep-last, which both kinds of subscriber match."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


class StartupError(Exception):
    """The node cannot start; ``str()`` is the one line to print, ``code`` the exit status."""

    def __init__(self, message: str, code: int = EXIT_STARTUP):
        super().__init__(' '.join(str(message).split()))
        self.code = code


@dataclass
class Frame:
    """An accepted image waiting for the worker."""

    msg: Any                          # sensor_msgs Image or CompressedImage
    received: float                   # time.monotonic() on arrival
    pixels: Optional[np.ndarray]      # raw images: a view of msg.data; None when compressed
    encoding: str = ''


def _checked_compressed(msg: CompressedImage) -> Tuple[None, str]:
    """Check a compressed image's header cheaply; the worker decodes it off the callback."""
    check_compressed(msg)
    return None, ''


@dataclass
class Camera:
    """One camera: its topics, health, latest camera info and output publishers."""

    index: int
    name: str                         # '' for the single ~/image camera
    image_topic: str                  # the resolved image topic (raw)
    input_topic: str                  # what is subscribed (raw or <image>/compressed)
    info_topic: str
    health: NodeHealth
    camera_info: Optional[CameraInfo] = None
    subscriptions: List[Any] = field(default_factory=list)
    publishers: Dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The private prefix of this camera's outputs: ``~/`` or ``~/<name>/``."""
        return f'~/{self.name}/' if self.name else '~/'

    def wanted(self, output: str) -> bool:
        """Whether anybody subscribes to an optional output (computed only then)."""
        publisher = self.publishers.get(output)
        return publisher is not None and publisher.get_subscription_count() > 0


def build_segmenter(settings: NodeSettings):
    """Return the :class:`evit_ros.runtime.Segmenter` the settings describe.

    :raises StartupError: with the runtime's one-line reason (unknown model, missing
        weights, unusable backend...).
    """
    from evit_ros.runtime import Segmenter
    # Each backend takes the options it knows and ignores the others'.
    options = {}
    if settings.engine_dir:
        engine_dir = Path(settings.engine_dir).expanduser().resolve()
        if engine_dir.exists() and not engine_dir.is_dir():
            raise StartupError(f'engine_dir {str(engine_dir)!r} is a file, not a folder; give '
                               f"a folder (created if missing) or '' for the evit_ros cache",
                               EXIT_PARAMETER)
        options['engine_dir'] = str(engine_dir)
    weights = settings.weights or 'official'
    if weights != 'official':
        weights = str(Path(weights).expanduser().resolve())
    if settings.cpu_threads:
        options['threads'] = settings.cpu_threads
    if settings.engine:
        options['engine'] = str(Path(settings.engine).expanduser().resolve())
    if settings.max_batch > 1 and settings.device != 'cpu' and \
            settings.backend in ('auto', 'tensorrt'):
        # TensorRT builds its optimization profile over batch 1..max_batch (CPU backends
        # take any batch and have no such option).
        options['max_batch'] = settings.max_batch
    try:
        return Segmenter(settings.model, backend=settings.backend, device=settings.device,
                         input_size=settings.network_size,
                         weights=weights,
                         precision=settings.precision, **options)
    except (ImportError, LookupError, OSError, RuntimeError, TypeError, ValueError) as exc:
        raise StartupError(f'cannot load {settings.model} on {settings.backend}/'
                           f'{settings.device}: {exc}') from exc


class SegmentationNode(LifecycleNode):
    """Segment every camera frame it can keep up with and publish label maps.

    A lifecycle node; :func:`main` configures and activates it under ``autostart``.

    :raises StartupError: for an invalid parameter.
    """

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.settings = self._declare_parameters()
        _forward_runtime_log(self.get_logger())
        self.segmenter = None
        self.palette = _palette((), 256)
        self.class_names: List[str] = []
        #: ``unconfigured``, ``inactive``, ``active`` or ``finalized``.
        self.state = 'unconfigured'
        #: why the last configure failed (one line), '' after a success.
        self.configure_error = ''
        self.startup_error: Optional[StartupError] = None
        #: set by :func:`main` while it configures under ``autostart``.
        self.autostarting = False
        self.backend_failures = 0   # frames a backend raised on
        self.backend_switches = 0   # fallbacks to the next backend (backend:=auto)
        self.auto_budget_ms = auto_budget_ms(self.settings.device, 0.0)
        self.cameras = self._make_cameras()
        self.gate = BatchGate(len(self.cameras))
        self.gate.close()
        self.slot: LatestSlot = self.gate.slots[0]
        self._workers: List[threading.Thread] = []
        self._fallback_lock = threading.Lock()
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS,
                                                     DIAGNOSTICS_QOS)
        self.class_info_pub = self.create_publisher(String, CLASS_INFO, CLASS_INFO_QOS)
        self._diagnostics_timer = self.create_timer(
            self.settings.diagnostics_period, self.publish_diagnostics, clock=self._steady)
        self.parameter_path = on_parameters_set(self, self._on_set_parameters,
                                                self._after_set_parameters)
        self._silence_logged: Dict[int, float] = {}

    # -- cameras ---------------------------------------------------------------------------

    def _make_cameras(self) -> List[Camera]:
        compressed = self.settings.input_transport == 'compressed'
        cameras = []
        if not self.settings.cameras:
            image = self.resolve_topic_name(IMAGE)
            source = self._compressed_topic(image) if compressed else image
            info = self._explicit(CAMERA_INFO) or camera_info_topic(image)
            cameras.append(Camera(0, '', image, source, info,
                                  NodeHealth(self._budget(), source, time.monotonic())))
        for index, topic in enumerate(self.settings.cameras):
            source = topic + COMPRESSED_SUFFIX if compressed else topic
            cameras.append(Camera(index, camera_name(topic), topic, source,
                                  camera_info_topic(topic),
                                  NodeHealth(self._budget(), source, time.monotonic())))
        return cameras

    def _explicit(self, name: str) -> Optional[str]:
        """Return the topic ``name`` was remapped to, or ``None`` when not remapped."""
        explicit = self.resolve_topic_name(name)
        default = self.resolve_topic_name(name, only_expand=True)
        return explicit if explicit != default else None

    def _budget(self) -> float:
        return self.settings.latency_budget_ms or self.auto_budget_ms

    # -- lifecycle -------------------------------------------------------------------------

    def await_transition_listener(self) -> bool:
        """Spin until ``~/transition_event`` has a subscriber or the wait times out.

        Transition events are not kept for late subscribers: a launch file that starts
        something on the transition to active misses it when its subscription is not
        discovered yet as autostart activates, which a fast model load on a slow network
        makes possible. ``autostart_listener_timeout`` bounds the wait (0: no wait).

        :returns: whether a subscriber was seen (``True`` at once without a timeout).
        """
        timeout = self.settings.autostart_listener_timeout
        if timeout <= 0:
            return True
        topic = self.get_fully_qualified_name() + '/transition_event'
        if self.count_subscribers(topic):
            return True
        self.get_logger().info(f'autostart: waiting up to {timeout:g} s for a subscriber on '
                               f'{topic}')
        deadline = time.monotonic() + timeout
        while not self.count_subscribers(topic):
            if time.monotonic() >= deadline:
                self.get_logger().warning(
                    f'autostart: nothing subscribed to {topic} within {timeout:g} s '
                    '(autostart_listener_timeout); starting anyway')
                return False
            rclpy.spin_once(self, timeout_sec=0.05)
        return True

    def on_configure(self, state) -> TransitionCallbackReturn:
        """Load the model, build or load the engine, warm up, create the publishers."""
        try:
            self.segmenter = build_segmenter(self.settings)
            warmup_ms = self._warm_up()
        except StartupError as exc:
            self.segmenter = None
            self.configure_error = str(exc)
            self.startup_error = exc
            if not self.autostarting:       # main() prints the one line and exits
                self.get_logger().error(f'configure failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ''
        self.startup_error = None
        entry = self.segmenter.entry
        self.palette = _palette(entry.palette if entry else (), self.segmenter.num_classes)
        self.class_names = list(entry.class_names) if entry else []
        self.auto_budget_ms = auto_budget_ms(self.segmenter.device
                                             if hasattr(self.segmenter, 'device')
                                             else self.settings.device, warmup_ms)
        for camera in self.cameras:
            camera.health.budget_ms = self._budget()
            out = output_qos(self.settings.qos_depth)
            for output in CAMERA_OUTPUTS:
                kind = (CameraInfo if output.endswith('camera_info') else
                        CompressedImage if output.endswith('compressed') else Image)
                camera.publishers[output] = self.create_publisher(
                    kind, camera.prefix + output, out,
                    qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self.class_info_pub.publish(String(data=json.dumps(self.class_info())))
        height, width = self.segmenter.input_size
        self.state = 'inactive'
        self.get_logger().info(
            f'{self.settings.model} on {self.segmenter.backend_name}/'
            f'{getattr(self.segmenter, "device", self.settings.device)} '
            f'{getattr(self.segmenter, "precision", self.settings.precision)} at '
            f'{height}x{width}; warm-up {warmup_ms:.0f} ms; latency budget '
            f'{self._budget():g} ms')
        return TransitionCallbackReturn.SUCCESS

    def _warm_up(self) -> float:
        """Run one batch of black frames (first-run allocations); return its milliseconds."""
        count = min(len(self.cameras), self.settings.max_batch)
        height, width = self.segmenter.input_size
        black = np.zeros((height, width, 3), np.uint8)
        start = time.perf_counter()
        try:
            self.segmenter.segment_batch([black] * count, ['rgb8'] * count)
        except Exception as exc:  # noqa: B902 - the frames will retry (and fall back)
            # Not fatal: a backend that fails here fails on frames too, where it is counted,
            # reported on /diagnostics and, under backend:=auto, replaced by the next one.
            self.get_logger().error(
                f'warm-up failed on {self.segmenter.backend_name}: '
                f"{' '.join(f'{type(exc).__name__}: {exc}'.split())}; frames will retry")
            return 0.0
        return (time.perf_counter() - start) * 1e3

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Subscribe to every camera and start the workers."""
        self.gate = BatchGate(len(self.cameras))
        self.slot = self.gate.slots[0]
        now = time.monotonic()
        options = QoSOverridingOptions.with_default_policies
        qos = image_qos(self.settings.qos_reliability, self.settings.qos_depth)
        for camera in self.cameras:
            camera.health.restart(now)
            if self.settings.input_transport == 'compressed':
                callback = self._input_callback(camera, _checked_compressed)
                kind = CompressedImage
            else:
                callback = self._input_callback(camera, image_to_array)
                kind = Image
            camera.subscriptions = [
                self.create_subscription(kind, camera.input_topic, callback, qos,
                                         qos_overriding_options=options()),
                self.create_subscription(CameraInfo, camera.info_topic,
                                         self._info_callback(camera), qos,
                                         qos_overriding_options=options())]
        self._workers = [threading.Thread(target=self._work, name=f'segmentation_worker_{n}',
                                          daemon=True) for n in range(self.settings.workers)]
        for worker in self._workers:
            worker.start()
        self.state = 'active'
        self.get_logger().info('listening on ' + ', '.join(c.input_topic
                                                           for c in self.cameras))
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Unsubscribe and stop the workers; the model stays loaded."""
        self._stop_active()
        self.state = 'inactive'
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Destroy the outputs and free the model."""
        self._release()
        self.state = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """Stop everything from any state."""
        self._stop_active()
        self._release()
        self.state = 'finalized'
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Destroy the node, its lifecycle state machine and with them its DDS participant.

        rclpy's lifecycle nodes do not destroy their state machine, which holds the node's
        handle: the participant then outlives the node and, since :func:`main` leaves with
        ``os._exit``, its Fast DDS shared-memory segment (64 MB with the large-image profile)
        stays in ``/dev/shm`` after every run.
        """
        super().destroy_node()
        state_machine = getattr(self, '_state_machine', None)
        if state_machine is not None:
            state_machine.destroy_when_not_in_use()

    def _stop_active(self) -> bool:
        for camera in self.cameras:
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions = []
        return self.stop(WORKER_JOIN_S)

    def _release(self) -> None:
        for camera in self.cameras:
            for publisher in camera.publishers.values():
                self.destroy_publisher(publisher)
            camera.publishers = {}
        self.segmenter = None
        gc.collect()
        _return_freed_memory()

    # -- parameters ------------------------------------------------------------------------

    def _declare_parameters(self) -> NodeSettings:
        overrides = getattr(self, '_parameter_overrides', {})
        for spec in PARAMETERS:
            try:
                if isinstance(spec.default, tuple):
                    self._declare_string_array(spec)
                else:
                    self.declare_parameter(spec.name, spec.default, spec.descriptor())
            except InvalidParameterTypeException as exc:
                value = overrides[spec.name].value if spec.name in overrides else '?'
                hint = ' (write 1.0, not 1)' if spec.type_name == 'double' else ''
                raise StartupError(f'invalid parameter: {spec.name} must be {spec.a_type}, '
                                   f'got {value!r}{hint}', EXIT_PARAMETER) from exc
            except InvalidParameterValueException as exc:
                value = overrides[spec.name].value if spec.name in overrides else None
                reason = spec.check(value) if value is not None else None
                raise StartupError(f'invalid parameter: {reason}' if reason else
                                   f'invalid parameter {spec.name}: {exc}; allowed: '
                                   f'{spec.allowed}', EXIT_PARAMETER) from exc
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        try:
            return check_settings(values)
        except ParameterError as exc:
            raise StartupError(f'invalid parameter: {exc}', EXIT_PARAMETER) from exc

    def _declare_string_array(self, spec) -> None:
        """Declare a read-only string array whose default is empty.

        rclpy infers no type from ``[]`` (it would declare a byte array and refuse the
        user's strings), so declare it typed, give it ``[]`` when nobody set it, and only
        then make it read-only.
        """
        descriptor = spec.descriptor()
        descriptor.read_only = False
        try:
            parameter = self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY,
                                               descriptor)
        except InvalidParameterTypeException:
            # A params file's `name: []` reaches rclpy as "not set": the default, then.
            self.undeclare_parameter(spec.name) if self.has_parameter(spec.name) else None
            parameter = self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY,
                                               descriptor, ignore_override=True)
        if parameter.type_ == Parameter.Type.NOT_SET:
            self.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, [])])
        self.set_descriptor(spec.name, spec.descriptor())

    def _on_set_parameters(self, parameters: List[rclpy.parameter.Parameter]):
        for parameter in parameters:
            if parameter.name not in SPECS:
                continue
            reason = refusal(parameter.name, self.get_parameter(parameter.name).value,
                             parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, parameters: List[rclpy.parameter.Parameter]) -> None:
        for parameter in parameters:
            if parameter.name not in SPECS:
                continue
            setattr(self.settings, parameter.name, parameter.value)
            if parameter.name == 'latency_budget_ms':
                for camera in self.cameras:
                    camera.health.budget_ms = self._budget()
            elif parameter.name == 'diagnostics_period':
                self.destroy_timer(self._diagnostics_timer)
                self._diagnostics_timer = self.create_timer(
                    parameter.value, self.publish_diagnostics, clock=self._steady)

    # -- callbacks: validate and hand over, never block ------------------------------------

    def _input_callback(self, camera: Camera, accept: Callable):
        """Return the camera's image callback, which hands accepted frames to its slot.

        ``accept(msg)`` returns ``(pixels, encoding)`` (``(None, '')``: the worker decodes
        it) or raises :class:`MessageError` for a frame to reject.
        """
        slot, health = self.gate.slots[camera.index], camera.health

        def on_image(msg) -> None:
            now = time.monotonic()
            health.record_image(now)
            try:
                pixels, encoding = accept(msg)
            except MessageError as exc:
                self._reject(camera, now, str(exc))
                return
            slot.put(Frame(msg, now, pixels, encoding))
        return on_image

    @staticmethod
    def _info_callback(camera: Camera):
        def on_camera_info(msg: CameraInfo) -> None:
            camera.camera_info = msg
        return on_camera_info

    def _reject(self, camera: Camera, now: float, reason: str, counted: bool = False) -> None:
        if not counted:
            self.gate.slots[camera.index].reject()
        camera.health.record_rejection(now, reason)
        where = f' on {camera.input_topic}' if camera.name else ''
        self.get_logger().warning(f'rejected frame{where}: {reason}',
                                  throttle_duration_sec=5.0)

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        gate = self.gate
        while True:
            batch = gate.take(self.settings.max_batch)
            if batch is None:
                return
            self._process_batch(gate, batch)

    def _process_batch(self, gate: BatchGate, batch) -> None:
        start = time.perf_counter()
        ready = []
        for index, frame in batch:
            camera = self.cameras[index]
            try:
                if frame.pixels is None:
                    pixels, encoding = compressed_to_array(frame.msg)
                else:
                    pixels, encoding = frame.pixels, frame.encoding
            except ImageError as exc:
                gate.slots[index].done(processed=False)
                self._reject(camera, time.monotonic(), str(exc), counted=True)
                continue
            ready.append((camera, frame, pixels, encoding))
        if not ready:
            return
        decode_ms = (time.perf_counter() - start) * 1e3 / len(ready)
        segmenter = self.segmenter
        backend = segmenter.backend
        at_network = self.settings.output_resolution == 'network'
        size = segmenter.input_size if at_network else None
        try:
            # Not segment_batch: other workers share the segmenter and its attributes.
            inferred = segmenter.infer_batch([item[2] for item in ready],
                                             [item[3] for item in ready])
            label_maps, timings = segmenter.label_batch(inferred, [size] * len(ready))
        except ImageError as exc:
            if len(ready) > 1:
                # One bad frame must not cost the others theirs: run them one by one.
                for camera, frame, _, _ in ready:
                    self._process_batch(gate, [(camera.index, frame)])
                return
            gate.slots[ready[0][0].index].done(processed=False)
            self._reject(ready[0][0], time.monotonic(), str(exc), counted=True)
            return
        except Exception as exc:  # noqa: B902 - the node must outlive a backend failure
            for camera, _, _, _ in ready:
                gate.slots[camera.index].done(processed=False)
            if gate.closed or not self.context.ok():
                return
            self._backend_failed(exc, [item[0] for item in ready], backend)
            return
        logits = inferred.logits
        share = len(ready)
        for position, (camera, frame, pixels, encoding) in enumerate(ready):
            try:
                self._publish(camera, frame, label_maps[position], logits, position, pixels,
                              encoding)
            except Exception:  # noqa: B902 - a publisher destroyed under us at shutdown
                for unpublished, _, _, _ in ready[position:]:
                    gate.slots[unpublished.index].done(processed=False)
                if gate.closed or not self.context.ok():
                    return
                raise
            latency = {'preprocess': decode_ms + timings.preprocess_ms / share,
                       'inference': timings.inference_ms, 'postprocess':
                       timings.postprocess_ms / share,
                       'total': decode_ms + timings.total_ms}
            # Pipeline latency on the node's clock: bag time under use_sim_time. Skipped
            # for unstamped images and before the first /clock message (sim time still 0).
            stamp = Time.from_msg(frame.msg.header.stamp)
            now = self.get_clock().now()
            if stamp.nanoseconds > 0 and now.nanoseconds > 0:
                latency['pipeline'] = (now - stamp).nanoseconds / 1e6
            latency['node'] = (time.monotonic() - frame.received) * 1e3
            camera.health.record_frame(time.monotonic(), latency)
            gate.slots[camera.index].done(processed=True)

    def _publish(self, camera: Camera, frame: Frame, label_map: np.ndarray, logits,
                 position: int, pixels: np.ndarray, encoding: str) -> None:
        header = frame.msg.header
        publishers = camera.publishers
        publishers['label_map'].publish(label_map_to_image(label_map, header))
        height, width = label_map.shape
        info = camera.camera_info
        if info is not None and (info.width, info.height) != (width, height):
            publishers['label_map/camera_info'].publish(
                scaled_camera_info(info, width, height, header))
            camera.health.record_output('label_map/camera_info')
        if camera.wanted('label_map/compressed'):
            publishers['label_map/compressed'].publish(label_map_to_png(label_map, header))
            camera.health.record_output('label_map/compressed')
        if camera.wanted('confidence'):
            from evit_ros.runtime.confidence import confidence_map
            confidence = confidence_map(logits[position:position + 1], (height, width))
            publishers['confidence'].publish(array_to_image(confidence, 'mono8', header))
            camera.health.record_output('confidence')
        self._publish_colour(camera, label_map, pixels, encoding, header)

    def _backend_failed(self, exc: Exception, cameras: List[Camera], backend) -> None:
        """Count a failed batch, report ERROR and, under ``backend:=auto``, fall back.

        The failed frames are counted as rejected. With ``auto`` the next backend of the
        auto order is built (one log line naming both), once: a worker whose batch failed
        on a backend another worker has already replaced only counts it. With an explicit
        backend the same one keeps being tried on later frames, and diagnostics stay at
        ERROR while it fails.
        """
        from evit_ros.runtime import BackendUnavailable
        with self._fallback_lock:
            reason = ' '.join(f'{type(exc).__name__}: {exc}'.split())
            self.backend_failures += len(cameras)
            for camera in cameras:
                camera.health.record_failure(time.monotonic(), reason)
            if self.segmenter.backend is not backend:
                return
            failed = self.segmenter.backend_name
            if self.settings.backend != 'auto':
                self.get_logger().error(f'inference failed on {failed}: {reason}',
                                        throttle_duration_sec=5.0)
                return
            try:
                new = self.segmenter.fall_back()
            except (BackendUnavailable, OSError, RuntimeError, ValueError) as error:
                self.get_logger().error(
                    f'inference failed on {failed}: {reason}; no backend to fall back to '
                    f"({' '.join(str(error).split())}); retrying {failed}",
                    throttle_duration_sec=5.0)
                return
            self.backend_switches += 1
            self.get_logger().error(f'inference failed on {failed}: {reason}; switched to {new} '
                                    f'on {self.segmenter.backend.device}')

    def _publish_colour(self, camera: Camera, label_map: np.ndarray, pixels: np.ndarray,
                        encoding: str, header) -> None:
        want_mask = camera.wanted('color_mask')
        want_overlay = camera.wanted('overlay')
        if not (want_mask or want_overlay):
            return
        colour = self.palette[label_map]
        if want_mask:
            camera.publishers['color_mask'].publish(array_to_image(colour, 'rgb8', header))
            camera.health.record_output('color_mask')
        if want_overlay:
            rgb = to_rgb(pixels, encoding)
            if rgb.shape[:2] != label_map.shape:
                rgb = cv2.resize(rgb, (label_map.shape[1], label_map.shape[0]),
                                 interpolation=cv2.INTER_AREA)
            alpha = self.settings.overlay_alpha
            blend = cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0)
            camera.publishers['overlay'].publish(array_to_image(blend, 'rgb8', header))
            camera.health.record_output('overlay')

    # -- reporting --------------------------------------------------------------------------

    def class_info(self) -> dict:
        """Return the ``~/class_info`` content: model, class names, palette, encoding."""
        num_classes = self.segmenter.num_classes
        return {'model': self.settings.model, 'classes': self.class_names,
                'palette': self.palette[:num_classes].tolist(),
                'label_map_encoding': 'mono8' if num_classes <= 256 else 'mono16',
                'cameras': {c.name or 'image': c.prefix for c in self.cameras}}

    def publish_diagnostics(self) -> None:
        """Publish one status per camera on ``/diagnostics``."""
        settings = self.settings
        now = time.monotonic()
        segmenter = self.segmenter
        statuses = []
        for camera in self.cameras:
            name = self.get_fully_qualified_name() + (f'/{camera.name}' if camera.name else '')
            fixed = [('model', settings.model),
                     ('backend', segmenter.backend_name if segmenter else ''),
                     ('device', getattr(segmenter, 'device', settings.device)
                      if segmenter else settings.device),
                     ('precision', getattr(segmenter, 'precision', settings.precision)
                      if segmenter else settings.precision),
                     ('network_size', 'x'.join(map(str, segmenter.input_size))
                      if segmenter else ''),
                     ('camera', camera.name), ('input_topic', camera.input_topic),
                     ('camera_info_topic', camera.info_topic),
                     ('input_transport', settings.input_transport),
                     ('output_resolution', settings.output_resolution),
                     ('lifecycle_state', self.state),
                     ('latency_budget_source',
                      'parameter' if settings.latency_budget_ms else 'auto'),
                     ('backend_failures', str(self.backend_failures)),
                     ('backend_switches', str(self.backend_switches))]
            if self.state == 'active':
                camera.health.publishers = self._publishers_of(camera.input_topic)
                self._log_silence(camera, now)
            status = camera.health.status(now, self.gate.slots[camera.index].counters(),
                                          f'{name}: segmentation',
                                          f'{settings.device}@{socket.gethostname()}', fixed)
            if self.state != 'active':
                status.level, status.message = self._idle_status()
            statuses.append(status)
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    def _idle_status(self):
        from diagnostic_msgs.msg import DiagnosticStatus
        if self.configure_error:
            return DiagnosticStatus.ERROR, f'configure failed: {self.configure_error}'
        if self.state == 'inactive':
            return DiagnosticStatus.OK, 'inactive: model loaded, not subscribed'
        return DiagnosticStatus.OK, f'{self.state}: waiting for configure'

    def _publishers_of(self, topic: str) -> List[str]:
        try:
            infos = self.get_publishers_info_by_topic(topic)
        except Exception:  # noqa: B902 - the graph may be gone at shutdown
            return []
        names = sorted({f"{info.node_namespace.rstrip('/')}/{info.node_name}"
                        for info in infos})
        return names

    def _log_silence(self, camera: Camera, now: float) -> None:
        """Say once per silence which topic gets nothing, and who publishes on it."""
        level, message = camera.health.judge(now, self.gate.slots[camera.index].counters())
        if not message.startswith('nothing published on'):
            self._silence_logged.pop(camera.index, None)
            return
        if camera.index not in self._silence_logged:
            self._silence_logged[camera.index] = now
            self.get_logger().warning(
                f'{message} (check the remap, e.g. -r \'~/image:=/camera/image_raw\', '
                'and that QoS and the Fast DDS profile match)')

    def stop(self, timeout: float = 0.5) -> bool:
        """Stop the workers, waiting up to ``timeout`` seconds for the frames they run.

        :returns: whether every worker has finished (``False``: a frame is still running).
        """
        self.gate.close()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return not any(worker.is_alive() for worker in self._workers)

    def _compressed_topic(self, image_topic: str) -> str:
        # image_transport's convention: <base topic>/compressed, unless remapped explicitly.
        return self._explicit(IMAGE + COMPRESSED_SUFFIX) or image_topic + COMPRESSED_SUFFIX


class _RosLogHandler(logging.Handler):
    """Send the runtime's Python log records (backend chosen, skipped...) to a ROS logger."""

    def __init__(self, ros_logger):
        super().__init__(logging.INFO)
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        text = ' '.join(self.format(record).split())
        if record.levelno >= logging.ERROR:
            self.ros_logger.error(text)
        elif record.levelno >= logging.WARNING:
            self.ros_logger.warning(text)
        else:
            self.ros_logger.info(text)


def _forward_runtime_log(ros_logger) -> None:
    """Route the ``evit_ros.runtime`` logger to ``ros_logger`` (one handler per process)."""
    runtime = logging.getLogger('evit_ros.runtime')
    for handler in list(runtime.handlers):
        if isinstance(handler, _RosLogHandler):
            runtime.removeHandler(handler)
    runtime.addHandler(_RosLogHandler(ros_logger))
    runtime.setLevel(logging.INFO)
    runtime.propagate = False


def _return_freed_memory() -> None:
    """Give the memory freed by a cleanup back to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass                               # not glibc: the allocator decides


def _palette(colours, num_classes: int) -> np.ndarray:
    """Return a uint8 ``Nx3`` palette covering every label value (grey for unlisted ids)."""
    rows = max(256, num_classes)
    palette = np.zeros((rows, 3), dtype=np.uint8)
    if colours:
        palette[:len(colours)] = np.asarray(colours, dtype=np.uint8)
    extra = np.arange(len(colours), rows)
    palette[len(colours):] = (extra * 37 % 200 + 40)[:, None].astype(np.uint8)
    return palette


def main(args: Optional[List[str]] = None) -> int:
    """Run the node until SIGINT/SIGTERM; return the exit status.

    Start-up problems (bad parameter, unknown model, missing weights, no usable backend)
    print one line on stderr and return non-zero.
    """
    use_large_image_profile()
    try:
        rclpy.init(args=args)
    except Exception as exc:  # noqa: B902 - rcl argument errors have no common base
        print(f'{NODE_NAME}: error: bad ROS arguments: {" ".join(str(exc).split())}',
              file=sys.stderr)
        return EXIT_PARAMETER
    node = None
    try:
        node = SegmentationNode()
        if node.settings.autostart:
            node.await_transition_listener()
            node.autostarting = True
            node.trigger_configure()
            node.autostarting = False
            if node.startup_error is not None:
                raise node.startup_error
            node.trigger_activate()
        rclpy.spin(node)
    except StartupError as exc:
        print(f'{NODE_NAME}: error: {exc}', file=sys.stderr)
        return exc.code
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: B902 - rclpy raises RCLError and kin from a shut-down context
        if rclpy.ok():
            raise
        # Ctrl-C or SIGTERM during start-up: the signal shut the context down under the
        # node's constructor or its first transition. A stop, not a crash.
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    # The node's outputs are closed. Leave without interpreter teardown: with a frame
    # still inside the backend's native code it would unload libraries under that thread
    # (std::terminate, SIGABRT), and even when idle, tearing down torch and onnxruntime
    # took over 2 s of a SIGTERM on a loaded 2-core machine.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


if __name__ == '__main__':
    sys.exit(main())
