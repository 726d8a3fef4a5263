"""Run the segmentation node in its own process and talk to it over real DDS from the test.

``NodeProcess`` starts ``segmentation_node`` (console script) with ROS arguments;
``RosClient`` is an rclpy node in the test process, spun in a background thread, that
publishes frames and collects what comes back. Each user picks a ROS domain from
:func:`next_domain_id` (20-59, this suite's range) and discovery stays on localhost.

Run as a script it is a probe used by the Fast DDS profile test::

    python ros_harness.py publish HEIGHT WIDTH COUNT   # rgb8 frames, best effort
    python ros_harness.py receive                      # until SIGTERM; prints 'received N'
"""

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / 'config' / 'fastdds_large_images.xml'
NODE = '/segmentation_node'
_DOMAINS = itertools.count()


def next_domain_id() -> int:
    """Return a ROS domain id from this suite's range 20-59, a new one per call."""
    return 20 + next(_DOMAINS) % 40


def ros_env(domain_id: int, profile: bool = True, **extra: str) -> Dict[str, str]:
    """Return an environment for a ROS process on ``domain_id``, localhost only."""
    env = dict(os.environ)
    env.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)
    env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    if profile:
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    env.update(extra)
    return env


def node_command(entry: str = 'console') -> List[str]:
    """Return the command that starts the node: console script, ``-m`` module or CLI."""
    bindir = Path(sys.executable).parent
    if entry == 'module':
        return [sys.executable, '-m', 'evit_ros.ros.segmentation_node']
    if entry == 'cli':
        return [str(bindir / 'evit-ros'), 'node']
    script = bindir / 'segmentation_node'
    if script.exists():
        return [str(script)]
    return [sys.executable, '-m', 'evit_ros.ros.segmentation_node']


def ros_args(params: Dict[str, Any], remaps: Iterable[str] = ()) -> List[str]:
    """Return ``--ros-args -p name:=value ... -r from:=to ...``."""
    args = ['--ros-args']
    for name, value in params.items():
        args += ['-p', f'{name}:={value}']
    for remap in remaps:
        args += ['-r', remap]
    return args


class NodeProcess:
    """The node in a child process; its stdout and stderr go to a temporary file."""

    def __init__(self, params: Dict[str, Any], env: Dict[str, str], remaps: Iterable[str] = (),
                 entry: str = 'console'):
        self._log = tempfile.TemporaryFile(mode='w+')
        self.proc = subprocess.Popen(node_command(entry) + ros_args(params, remaps), env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def log(self) -> str:
        """Return everything the node printed so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0):
        """Send ``sig`` and return ``(exit code, seconds until exit)``."""
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - start


class RosClient:
    """An rclpy node in the test process on its own context and domain."""

    def __init__(self, domain_id: int, name: str = 'evit_ros_test_client'):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(PROFILE))
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.cond = threading.Condition()
        self.messages: Dict[str, List[Any]] = {}
        self._subscriptions: Dict[str, Any] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: B902 - the context is shutting down
                if self.context.ok():
                    raise
                return

    def publisher(self, msg_type, topic: str, qos=None):
        """Create a publisher (default: sensor-data QoS, as a camera driver)."""
        from rclpy.qos import qos_profile_sensor_data
        return self.node.create_publisher(msg_type, topic, qos or qos_profile_sensor_data)

    def subscribe(self, msg_type, topic: str, qos=None) -> List[Any]:
        """Collect messages on ``topic`` (default reliable, depth 50); return the live list."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        qos = qos or QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        received = self.messages.setdefault(topic, [])

        def on_message(msg):
            with self.cond:
                received.append(msg)
                self.cond.notify_all()
        self._subscriptions[topic] = self.node.create_subscription(
            msg_type, topic, on_message, qos)
        return received

    def unsubscribe(self, topic: str) -> None:
        """Destroy the subscription on ``topic``."""
        self.node.destroy_subscription(self._subscriptions.pop(topic))

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until ``predicate()`` is truthy and return it; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
                self.cond.wait(min(left, 0.1))

    def watch_diagnostics(self) -> List[Dict[str, str]]:
        """Subscribe to /diagnostics; return the live list of the node's statuses as dicts."""
        from diagnostic_msgs.msg import DiagnosticArray
        statuses: List[Dict[str, str]] = []
        self.messages['diagnostics'] = statuses

        def on_array(array):
            with self.cond:
                for status in array.status:
                    if status.name.endswith(': segmentation'):
                        entry = {kv.key: kv.value for kv in status.values}
                        entry.update(level=ord(status.level), message=status.message,
                                     name=status.name, hardware_id=status.hardware_id)
                        statuses.append(entry)
                self.cond.notify_all()
        self._subscriptions['/diagnostics'] = self.node.create_subscription(
            DiagnosticArray, '/diagnostics', on_array, 10)
        return statuses

    def set_parameters(self, values: Dict[str, Any], node: str = NODE, timeout: float = 10.0):
        """Set parameters on a remote node; return the ``SetParametersResult`` list."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        request = SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        return self._call(SetParameters, f'{node}/set_parameters', request, timeout).results

    def get_parameters(self, names: List[str], node: str = NODE, timeout: float = 10.0):
        """Return the current values of ``names`` on a remote node."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python
        response = self._call(GetParameters, f'{node}/get_parameters',
                              GetParameters.Request(names=names), timeout)
        return [parameter_value_to_python(value) for value in response.values]

    def _call(self, srv_type, name: str, request, timeout: float):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {name} did not appear')
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout):
                raise AssertionError(f'service {name} did not answer in {timeout} s')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Shut the context down and stop spinning."""
        self.context.try_shutdown()
        self._thread.join(2.0)


def image_msg(rgb, stamp_ns: int, frame_id: str, encoding: str = 'rgb8'):
    """Return a ``sensor_msgs/Image`` of an ``HxWx3`` RGB array in ``rgb8`` or ``bgr8``."""
    import numpy as np
    from sensor_msgs.msg import Image
    pixels = rgb if encoding == 'rgb8' else np.ascontiguousarray(rgb[:, :, ::-1])
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                step=pixels.shape[1] * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.data = pixels.tobytes()
    return msg


def stamp_ns(header) -> int:
    """Return a header's stamp in nanoseconds."""
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def _probe(argv: List[str]) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('evit_ros_probe')
    if argv[0] == 'publish':
        height, width, count = (int(a) for a in argv[1:4])
        publisher = node.create_publisher(Image, 'probe', qos_profile_sensor_data)
        msg = image_msg(np.full((height, width, 3), 7, np.uint8), 1, 'probe')
        deadline = time.monotonic() + 20
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        for _ in range(count):
            publisher.publish(msg)
            time.sleep(0.05)
        time.sleep(0.5)
    else:
        # Receive until SIGTERM, then report the count.
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        received = []
        node.create_subscription(Image, 'probe', received.append, qos_profile_sensor_data)
        print('ready', flush=True)
        while not stop.is_set():
            rclpy.spin_once(node, timeout_sec=0.05)
        print('received', len(received), flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == '__main__':
    _probe(sys.argv[1:])
