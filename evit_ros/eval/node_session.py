"""The real ``segmentation_node`` in its own process, fed over DDS like a recorded bag.

:class:`NodeSession` starts the node with ``use_sim_time``, publishes ``/clock`` and the
camera images from this process, and collects the node's ``~/label_map`` outputs and its
``/diagnostics``. Outputs are matched to inputs by header stamp by the caller.
"""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from evit_ros.eval.bags import Frame, image_from_raw, ns_to_stamp, stamp_to_ns

NODE_NAME = 'segmentation_node'
NODE_MODULE = 'evit_ros.ros.segmentation_node'
LABEL_TOPIC = f'/{NODE_NAME}/label_map'
DIAGNOSTICS_TOPIC = '/diagnostics'
PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
#: Seconds a node stopped by an interrupted replay gets to exit before it is killed.
QUICK_GRACE_S = 1.0
#: Longest wait of the spin thread, so that it sees a stop request soon.
SPIN_PERIOD_S = 0.1


class NodeError(RuntimeError):
    """The node could not start or died; ``str()`` is one line with the node's own reason."""


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors='replace').splitlines()]
    except OSError:
        return ''
    lines = [line for line in lines if line]
    return lines[-1] if lines else ''


def _parent_death_signal():
    """In the child: ask Linux to SIGTERM the node if the replay process dies."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Before Python 3.11 (no -P): run the node's main() after dropping the entries that stand
# for the current folder, which ``-c`` puts first on sys.path.
_MAIN_WITHOUT_CWD = ('import sys; sys.path[:] = [p for p in sys.path if p not in ("", ".")]; '
                     f'from {NODE_MODULE} import main; sys.exit(main())')


def node_command() -> List[str]:
    """Return the argv prefix that starts ``segmentation_node`` with this interpreter.

    ``python -m`` would put the current folder first on ``sys.path``, so a folder named
    ``evit_ros`` there (a clone, seen from its parent folder) would shadow the installed
    package. ``-P`` (Python 3.11+) leaves it out; the ROS wheels' start-up hook re-executes
    with the same flags (``sys.orig_argv``), so it holds after that too. The interpreter is
    this one, so the node gets the same venv, PYTHONPATH and ROS libraries.
    """
    if sys.version_info >= (3, 11):
        return [sys.executable, '-P', '-m', NODE_MODULE]
    return [sys.executable, '-c', _MAIN_WITHOUT_CWD]


def large_image_environment(environ: Dict[str, str]) -> Dict[str, str]:
    """Return ``environ`` with the Fast DDS large-image profile set, unless one is set."""
    env = dict(environ)
    if any(env.get(name) for name in PROFILE_VARIABLES):
        return env
    try:
        from evit_ros.ros.resources import fastdds_profile
        path = str(fastdds_profile())
    except (ImportError, FileNotFoundError):
        return env
    # Only the current name: Fast DDS warns that FASTRTPS_DEFAULT_PROFILES_FILE is deprecated.
    env[PROFILE_VARIABLES[0]] = path
    return env


class NodeSession:
    """Run ``segmentation_node`` and talk to it.

    :param image_topic: topic the images are published on (the node's ``~/image`` or
        ``~/image/compressed`` is remapped to it).
    :param compressed: publish ``sensor_msgs/CompressedImage`` (node ``input_transport``
        ``compressed``) instead of ``sensor_msgs/Image``.
    :param parameters: node parameters (name -> value), ``use_sim_time`` is added.
    :param log_path: file that receives the node's stdout and stderr.
    """

    def __init__(self, image_topic: str, compressed: bool, parameters: Dict[str, object],
                 log_path: Path, qos_reliability: str = 'reliable'):
        self.image_topic = image_topic
        self.compressed = compressed
        self.log_path = Path(log_path)
        self.outputs: 'queue.Queue[Tuple[int, np.ndarray, float]]' = queue.Queue()
        self.diagnostics: Dict[str, str] = {}
        self.diagnostics_count = 0
        self._proc: Optional[subprocess.Popen] = None
        self._context = None
        self._executor = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._closed = False
        os.environ.update(large_image_environment(os.environ))
        self._start_node(parameters)
        try:
            self._start_ros(qos_reliability)
        except BaseException:
            self.close()
            raise

    def _start_node(self, parameters: Dict[str, object]) -> None:
        args = node_command() + [
            '--ros-args', '-p', 'use_sim_time:=true',
            '-p', f'input_transport:={"compressed" if self.compressed else "raw"}']
        for name, value in parameters.items():
            if isinstance(value, bool):
                value = 'true' if value else 'false'
            args += ['-p', f'{name}:={value}']
        transport = 'image/compressed' if self.compressed else 'image'
        args += ['-r', f'/{NODE_NAME}/{transport}:={self.image_topic}']
        self._log = open(self.log_path, 'wb')
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=dict(os.environ),
                                      preexec_fn=_parent_death_signal)

    def _start_ros(self, qos_reliability: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, Image
        from diagnostic_msgs.msg import DiagnosticArray

        self._context = rclpy.Context()
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node('evit_replay', context=self._context)
        reliability = (ReliabilityPolicy.RELIABLE if qos_reliability == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                               reliability=reliability)
        self._image_type = CompressedImage if self.compressed else Image
        self._image_pub = self._node.create_publisher(self._image_type, self.image_topic,
                                                      image_qos)
        self._clock_pub = self._node.create_publisher(Clock, '/clock', 10)
        self._clock_type = Clock
        # The node publishes reliable keep-last; the depth covers every frame in flight.
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                             reliability=ReliabilityPolicy.RELIABLE)
        self._node.create_subscription(Image, LABEL_TOPIC, self._on_label_map, out_qos)
        self._node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                       self._on_diagnostics, 10)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name='replay-spin', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while not self._stopping.is_set():
                self._executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except Exception:  # the context shut down under it (ExternalShutdownException, kin)
            pass

    def _on_label_map(self, msg) -> None:
        received = time.monotonic()
        try:
            label_map, _ = image_from_raw(msg)
        except Exception:  # an output we cannot read counts as not returned
            return
        stamp = stamp_to_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.outputs.put((stamp, label_map.copy(), received))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if NODE_NAME in status.name:
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics['level'] = str(int.from_bytes(status.level, 'little')
                                                if isinstance(status.level, bytes)
                                                else status.level)
                self.diagnostics['message'] = status.message
                self.diagnostics_count += 1

    @property
    def returncode(self) -> Optional[int]:
        """The node's exit status, or ``None`` while it runs."""
        return self._proc.poll() if self._proc else None

    def node_failure(self) -> str:
        """One line saying why the node exited (its last log line)."""
        code = self.returncode
        reason = _last_line(self.log_path) or 'no output'
        return f'segmentation_node exited with status {code}: {reason}'

    def wait_ready(self, timeout_s: float, stop=lambda: False) -> None:
        """Block until the node subscribes to the images and publishes label maps.

        :raises NodeError: when the node exits first (with its reason) or ``timeout_s`` passes.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stop():
            if self.returncode is not None:
                raise NodeError(self.node_failure())
            if (self._image_pub.get_subscription_count() > 0
                    and self._node.count_publishers(LABEL_TOPIC) > 0):
                return
            time.sleep(0.05)
        if stop():
            return
        raise NodeError(f'segmentation_node did not subscribe to {self.image_topic} within '
                        f'{timeout_s:.0f} s; see {self.log_path}')

    def publish(self, frame: Frame, raw: Optional[Tuple[str, bytes]] = None) -> float:
        """Publish ``/clock`` at the frame's bag time, then the frame; return the send time.

        :param raw: ``(format, bytes)`` of a compressed frame, forwarded unchanged.
        """
        from builtin_interfaces.msg import Time
        clock = self._clock_type()
        sec, nanosec = ns_to_stamp(frame.bag_time_ns)
        clock.clock = Time(sec=sec, nanosec=nanosec)
        self._clock_pub.publish(clock)
        msg = self._image_type()
        sec, nanosec = ns_to_stamp(frame.stamp_ns)
        msg.header.stamp = Time(sec=sec, nanosec=nanosec)
        msg.header.frame_id = frame.frame_id
        if self.compressed:
            msg.format, msg.data = raw[0], raw[1]
        else:
            pixels = np.ascontiguousarray(frame.image)
            msg.height, msg.width = pixels.shape[:2]
            msg.encoding = frame.encoding
            msg.is_bigendian = 0
            msg.step = pixels[0].nbytes
            msg.data = pixels.tobytes()
        sent = time.monotonic()
        self._image_pub.publish(msg)
        return sent

    def drain(self, timeout_s: float = 0.0) -> List[Tuple[int, np.ndarray, float]]:
        """Return the label maps received so far, waiting up to ``timeout_s`` for the first."""
        out = []
        try:
            out.append(self.outputs.get(timeout=timeout_s) if timeout_s > 0
                       else self.outputs.get_nowait())
            while True:
                out.append(self.outputs.get_nowait())
        except queue.Empty:
            pass
        return out

    def close(self, quick: bool = False) -> None:
        """Stop the node (SIGINT, then SIGTERM, then SIGKILL) and shut down ROS here.

        A killed node cannot delete its DDS participant; its shared-memory segments are
        removed here (:mod:`evit_ros.ros.shm`).

        This process's ROS side goes first, one step at a time from this thread: the spin
        thread stops, then the subscriptions, the node and the context are destroyed, all
        while the node is still up and quiet. Only then is the node signalled. (Destroying
        them from the spin thread while the node was exiting hung about one replay in 30
        here, inside Fast DDS and holding the GIL, so that no timeout could fire.)
        ``quick`` (a replay stopped by Ctrl-C, which must return within 2 s): the node gets
        :data:`QUICK_GRACE_S` to exit, then is killed; every label map it sent is already
        in, and its log is a file it wrote as it went.
        """
        if self._closed:
            return
        self._closed = True
        if self._context is not None:
            self._stopping.set()
            if self._thread:
                self._thread.join(timeout=2.0)
            try:
                self._executor.shutdown(timeout_sec=1.0)
                self._node.destroy_node()
                self._context.try_shutdown()
            except Exception:  # already shut down
                pass
        running = self._proc is not None and self._proc.poll() is None
        if running:
            self._signal(signal.SIGINT)
            steps = (((None, QUICK_GRACE_S),) if quick else
                     ((None, 5.0), (signal.SIGTERM, 3.0)))
            for sig, wait in steps:
                if sig is not None:
                    self._signal(sig)
                try:
                    self._proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                self._kill()
        if self._proc:
            self._log.close()

    def _kill(self) -> None:
        """SIGKILL the node and remove the shared-memory segments it can no longer remove."""
        from evit_ros.ros.shm import owned_segments, remove_abandoned
        segments = owned_segments(self._proc.pid)
        self._signal(signal.SIGKILL)
        try:
            self._proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            return
        remove_abandoned(segments)

    def _signal(self, sig: int) -> None:
        try:
            self._proc.send_signal(sig)
        except ProcessLookupError:
            pass
