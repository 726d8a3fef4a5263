"""ROS 2 semantic segmentation node: camera images in, label maps out.

Topics, relative to the node (remap ``~/image`` to the camera's topic):

* in  ``~/image`` (sensor_msgs/Image) when ``input_transport`` is ``raw``, or
  ``<~/image>/compressed`` (sensor_msgs/CompressedImage, jpeg or png) when ``compressed``;
* in  ``~/camera_info`` (sensor_msgs/CameraInfo, optional);
* out ``~/label_map`` (sensor_msgs/Image mono8, mono16 beyond 256 classes): class ids;
* out ``~/label_map/camera_info``: the camera info scaled to the label map, when
  ``output_resolution`` is ``network`` and camera info was received;
* out ``~/color_mask`` and ``~/overlay`` (rgb8): computed only while subscribed;
* out ``~/class_info`` (std_msgs/String JSON, transient local): model, classes, palette;
* out ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): status, counters, latencies.

Every output carries the input image's header. Callbacks only validate and hand the frame
to a single worker thread through a depth-1 slot (latest wins), so a slow model drops stale
frames instead of queueing them. Parameters are in :mod:`evit_ros.ros.parameters`.
"""

import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from evit_ros.ros.diagnostics import NodeHealth
from evit_ros.ros.latest_slot import LatestSlot
from evit_ros.ros.messages import (
    check_compressed, compressed_to_array, image_to_array, label_map_to_image, MessageError,
    array_to_image, scaled_camera_info)
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
COLOR_MASK = '~/color_mask'
OVERLAY = '~/overlay'
CLASS_INFO = '~/class_info'
DIAGNOSTICS = '/diagnostics'

#: Every topic name the node uses, for launch-file checks and docs.
TOPICS = (IMAGE, IMAGE + COMPRESSED_SUFFIX, CAMERA_INFO, LABEL_MAP, LABEL_MAP_CAMERA_INFO,
          COLOR_MASK, OVERLAY, CLASS_INFO, DIAGNOSTICS)

# class_info is published once; late joiners get it from the writer's history.
CLASS_INFO_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTICS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

# Start-up failures: exit codes and the exceptions that mean "the user must fix something".
EXIT_PARAMETER = 2
EXIT_STARTUP = 1


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
    try:
        return Segmenter(settings.model, backend=settings.backend, device=settings.device,
                         input_size=settings.network_size,
                         weights=weights,
                         precision=settings.precision, **options)
    except (ImportError, LookupError, OSError, RuntimeError, TypeError, ValueError) as exc:
        raise StartupError(f'cannot load {settings.model} on {settings.backend}/'
                           f'{settings.device}: {exc}') from exc


class SegmentationNode(Node):
    """Segment every camera frame it can keep up with and publish label maps.

    :raises StartupError: for an invalid parameter or a model that cannot be loaded.
    """

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.settings = self._declare_parameters()
        _forward_runtime_log(self.get_logger())
        self.segmenter = build_segmenter(self.settings)
        entry = self.segmenter.entry
        self.palette = _palette(entry.palette if entry else (), self.segmenter.num_classes)
        self.class_names = list(entry.class_names) if entry else []

        image_topic = self.resolve_topic_name(IMAGE)
        qos = image_qos(self.settings.qos_reliability, self.settings.qos_depth)
        if self.settings.input_transport == 'compressed':
            self.input_topic = self._compressed_topic(image_topic)
            self.create_subscription(CompressedImage, self.input_topic, self._on_compressed,
                                     qos)
        else:
            self.input_topic = image_topic
            self.create_subscription(Image, self.input_topic, self._on_image, qos)
        self.create_subscription(CameraInfo, CAMERA_INFO, self._on_camera_info, qos)

        out = output_qos(self.settings.qos_depth)
        self.label_map_pub = self.create_publisher(Image, LABEL_MAP, out)
        self.label_map_info_pub = self.create_publisher(CameraInfo, LABEL_MAP_CAMERA_INFO, out)
        self.color_mask_pub = self.create_publisher(Image, COLOR_MASK, out)
        self.overlay_pub = self.create_publisher(Image, OVERLAY, out)
        self.class_info_pub = self.create_publisher(String, CLASS_INFO, CLASS_INFO_QOS)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS,
                                                     DIAGNOSTICS_QOS)

        self.health = NodeHealth(self.settings.latency_budget_ms, self.input_topic)
        self.backend_failures = 0   # frames a backend raised on
        self.backend_switches = 0   # fallbacks to the next backend (backend:=auto)
        self.slot = LatestSlot()
        self._camera_info: Optional[CameraInfo] = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diagnostics_timer = self.create_timer(
            self.settings.diagnostics_period, self.publish_diagnostics, clock=self._steady)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self.class_info_pub.publish(String(data=json.dumps(self.class_info())))
        self._worker = threading.Thread(target=self._work, name='segmentation_worker',
                                        daemon=True)
        self._worker.start()
        height, width = self.segmenter.input_size
        self.get_logger().info(
            f'{self.settings.model} on {self.segmenter.backend_name}/{self.settings.device} '
            f'{self.settings.precision} at {height}x{width}; listening on {self.input_topic}')

    # -- parameters -------------------------------------------------------------------------

    def _declare_parameters(self) -> NodeSettings:
        overrides = getattr(self, '_parameter_overrides', {})
        for spec in PARAMETERS:
            try:
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
                self.health.budget_ms = parameter.value
            elif parameter.name == 'diagnostics_period':
                self.destroy_timer(self._diagnostics_timer)
                self._diagnostics_timer = self.create_timer(
                    parameter.value, self.publish_diagnostics, clock=self._steady)

    # -- callbacks: validate and hand over, never block ------------------------------------

    def _on_image(self, msg: Image) -> None:
        now = time.monotonic()
        self.health.record_image(now)
        try:
            pixels, encoding = image_to_array(msg)
        except MessageError as exc:
            self._reject(now, str(exc))
            return
        self.slot.put(Frame(msg, now, pixels, encoding))

    def _on_compressed(self, msg: CompressedImage) -> None:
        now = time.monotonic()
        self.health.record_image(now)
        try:
            check_compressed(msg)
        except MessageError as exc:
            self._reject(now, str(exc))
            return
        self.slot.put(Frame(msg, now, None))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _reject(self, now: float, reason: str, counted: bool = False) -> None:
        if not counted:
            self.slot.reject()
        self.health.record_rejection(now, reason)
        self.get_logger().warning(f'rejected frame: {reason}', throttle_duration_sec=5.0)

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            frame = self.slot.take()
            if frame is None:
                return
            try:
                self._process(frame)
            except ImageError as exc:
                self.slot.done(processed=False)
                self._reject(time.monotonic(), str(exc), counted=True)
            except Exception as exc:  # noqa: B902 - the node must outlive a backend failure
                self.slot.done(processed=False)
                if self.slot.closed or not self.context.ok():
                    return
                self._backend_failed(exc)
            else:
                self.slot.done(processed=True)

    def _backend_failed(self, exc: Exception) -> None:
        """Count a failed frame, report ERROR and, under ``backend:=auto``, fall back.

        The failed frame is counted as rejected. With ``auto`` the next backend of the auto
        order is built (one log line naming both); with an explicit backend the same one
        keeps being tried on later frames, and diagnostics stay at ERROR while it fails.
        """
        from evit_ros.runtime import BackendUnavailable
        reason = ' '.join(f'{type(exc).__name__}: {exc}'.split())
        self.backend_failures += 1
        self.health.record_failure(time.monotonic(), reason)
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

    def _process(self, frame: Frame) -> None:
        start = time.perf_counter()
        if frame.pixels is None:
            pixels, encoding = compressed_to_array(frame.msg)
        else:
            pixels, encoding = frame.pixels, frame.encoding
        decode_ms = (time.perf_counter() - start) * 1e3
        at_network = self.settings.output_resolution == 'network'
        output_size = self.segmenter.input_size if at_network else None
        label_map = self.segmenter.segment(pixels, encoding, output_size)
        timings = self.segmenter.timings
        header = frame.msg.header
        self.label_map_pub.publish(label_map_to_image(label_map, header))
        latency = {'preprocess': decode_ms + timings.preprocess_ms,
                   'inference': timings.inference_ms, 'postprocess': timings.postprocess_ms,
                   'total': decode_ms + timings.total_ms}
        # Pipeline latency on the node's clock: bag time under use_sim_time. Skipped for
        # unstamped images and before the first /clock message (sim time still 0).
        stamp = Time.from_msg(header.stamp)
        now = self.get_clock().now()
        if stamp.nanoseconds > 0 and now.nanoseconds > 0:
            latency['pipeline'] = (now - stamp).nanoseconds / 1e6
        info = self._camera_info
        if at_network and info is not None:
            height, width = label_map.shape
            self.label_map_info_pub.publish(scaled_camera_info(info, width, height, header))
        self._publish_colour(label_map, pixels, encoding, header)
        latency['node'] = (time.monotonic() - frame.received) * 1e3
        self.health.record_frame(time.monotonic(), latency)

    def _publish_colour(self, label_map: np.ndarray, pixels: np.ndarray, encoding: str,
                        header) -> None:
        want_mask = self.color_mask_pub.get_subscription_count() > 0
        want_overlay = self.overlay_pub.get_subscription_count() > 0
        if not (want_mask or want_overlay):
            return
        colour = self.palette[label_map]
        if want_mask:
            self.color_mask_pub.publish(array_to_image(colour, 'rgb8', header))
            self.health.record_output('color_mask')
        if want_overlay:
            rgb = to_rgb(pixels, encoding)
            if rgb.shape[:2] != label_map.shape:
                rgb = cv2.resize(rgb, (label_map.shape[1], label_map.shape[0]),
                                 interpolation=cv2.INTER_AREA)
            alpha = self.settings.overlay_alpha
            blend = cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0)
            self.overlay_pub.publish(array_to_image(blend, 'rgb8', header))
            self.health.record_output('overlay')

    # -- reporting --------------------------------------------------------------------------

    def class_info(self) -> dict:
        """Return the ``~/class_info`` content: model, class names, palette, encoding."""
        return {'model': self.settings.model, 'classes': self.class_names,
                'palette': self.palette[:self.segmenter.num_classes].tolist(),
                'label_map_encoding': 'mono8' if self.segmenter.num_classes <= 256
                else 'mono16'}

    def publish_diagnostics(self) -> None:
        """Publish the node's status on ``/diagnostics``."""
        settings = self.settings
        height, width = self.segmenter.input_size
        fixed = [('model', settings.model), ('backend', self.segmenter.backend_name),
                 ('device', settings.device), ('precision', settings.precision),
                 ('network_size', f'{height}x{width}'), ('input_topic', self.input_topic),
                 ('input_transport', settings.input_transport),
                 ('output_resolution', settings.output_resolution),
                 ('backend_failures', str(self.backend_failures)),
                 ('backend_switches', str(self.backend_switches))]
        status = self.health.status(time.monotonic(), self.slot.counters(),
                                    f'{self.get_fully_qualified_name()}: segmentation',
                                    f'{settings.device}@{socket.gethostname()}', fixed)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    def stop(self, timeout: float = 0.5) -> bool:
        """Stop the worker, waiting up to ``timeout`` seconds for the frame it runs.

        :returns: whether the worker has finished (``False``: a frame is still running).
        """
        self.slot.close()
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def _compressed_topic(self, image_topic: str) -> str:
        # image_transport's convention: <base topic>/compressed, unless remapped explicitly.
        explicit = self.resolve_topic_name(IMAGE + COMPRESSED_SUFFIX)
        default = self.resolve_topic_name(IMAGE + COMPRESSED_SUFFIX, only_expand=True)
        return explicit if explicit != default else image_topic + COMPRESSED_SUFFIX


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
    finished = True
    try:
        node = SegmentationNode()
        rclpy.spin(node)
    except StartupError as exc:
        print(f'{NODE_NAME}: error: {exc}', file=sys.stderr)
        return exc.code
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            finished = node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    if not finished:
        # A frame is still inside the backend's native code. Interpreter teardown would
        # unload libraries under that thread (std::terminate, SIGABRT); the node's outputs
        # are already closed, so leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
