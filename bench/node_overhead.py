#!/usr/bin/env python3
"""What the ROS node adds over the bare Segmenter: publish -> label map in another process.

Usage::

    .venv/bin/python bench/node_overhead.py            # torch, 1 thread, 512x1024 and 1024x2048
    .venv/bin/python bench/node_overhead.py --backend onnxruntime --threads 0 --frames 20

For each resolution the node runs in its own process (``segmentation_node``, network size =
frame size, output at the frame's resolution) with the Fast DDS large-image profile, and this
process runs a bare :class:`~evit_ros.runtime.Segmenter` with the same model, backend and
threads. Frames alternate: the bare ``segment()`` call is timed, then the same frame is
published as rgb8 (best effort, as a camera) and the time until its label map arrives here is
taken. The node processes one frame at a time, so nothing queues. Target: the node adds at
most 10 % or 5 ms over bare inference (median), whichever is larger.

The frame is ``$EVIT_ROS_SHARED/data/frames/city_2048x1024.png`` (a real street frame),
halved for 512x1024; official weights come from ``$EVIT_ROS_WEIGHTS_DIR`` or the cache.
Other processes share this CPU: compare only numbers from one run.
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIZES = {'512x1024': (512, 1024), '1024x2048': (1024, 2048)}
PHASES = ('preprocess', 'inference', 'postprocess')


def shared_frame() -> np.ndarray:
    """Return the shared 1024x2048 street frame as RGB."""
    root = Path(os.environ.get('EVIT_ROS_SHARED', REPO.parent / 'shared'))
    path = root / 'data' / 'frames' / 'city_2048x1024.png'
    image = cv2.imread(str(path))
    if image is None:
        sys.exit(f'node_overhead: needs {path} (set EVIT_ROS_SHARED)')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Receiver:
    """An rclpy node that publishes frames and notes when each label map arrives."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('node_overhead_bench', context=self.context)
        self.publisher = self.node.create_publisher(Image, '/segmentation_node/image',
                                                    qos_profile_sensor_data)
        self.arrivals = {}
        self.label_maps = {}
        self.diagnostics = {}
        self.cond = threading.Condition()
        self.node.create_subscription(
            Image, '/segmentation_node/label_map', self._on_label_map,
            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        from diagnostic_msgs.msg import DiagnosticArray
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: B902 - shutting down
                return

    def _on_label_map(self, msg):
        now = time.perf_counter()
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.cond:
            self.arrivals[stamp] = now
            self.label_maps[stamp] = np.frombuffer(msg.data, np.uint8).reshape(
                msg.height, msg.width).copy()
            self.cond.notify_all()

    def _on_diagnostics(self, array):
        for status in array.status:
            if status.name.endswith(': segmentation'):
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def round_trip(self, msg, stamp: int, timeout: float) -> float:
        """Publish ``msg`` stamped ``stamp``; return seconds until its label map arrived."""
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        start = time.perf_counter()
        self.publisher.publish(msg)
        with self.cond:
            if not self.cond.wait_for(lambda: stamp in self.arrivals, timeout):
                raise TimeoutError
            return self.arrivals[stamp] - start

    def close(self):
        """Stop spinning and shut the context down."""
        self.context.try_shutdown()
        self.thread.join(2)


def image_msg(rgb: np.ndarray):
    """Return an rgb8 ``sensor_msgs/Image`` of ``rgb``."""
    import array
    from sensor_msgs.msg import Image
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                step=rgb.shape[1] * 3)
    msg.header.frame_id = 'camera'
    data = array.array('B')
    data.frombytes(np.ascontiguousarray(rgb).tobytes())
    msg.data = data
    return msg


def measure(label: str, rgb: np.ndarray, args, domain_id: int) -> dict:
    """Time bare segment() and node round trips on ``rgb``, alternating."""
    from evit_ros.runtime import Segmenter
    height, width = rgb.shape[:2]
    options = {'threads': args.threads} if args.threads else {}
    bare = Segmenter(args.model, backend=args.backend, input_size=(height, width), **options)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    command = [str(Path(sys.executable).parent / 'segmentation_node'), '--ros-args',
               '-p', f'model:={args.model}', '-p', f'backend:={args.backend}',
               '-p', f'network_height:={height}', '-p', f'network_width:={width}',
               '-p', f'cpu_threads:={args.threads}', '-p', 'latency_budget_ms:=100000.0']
    node = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    receiver = Receiver(domain_id)
    bare_ms, node_ms, mismatched = [], [], 0
    phases = {'preprocess': [], 'inference': [], 'postprocess': []}
    try:
        deadline = time.monotonic() + 300
        while receiver.publisher.get_subscription_count() == 0:
            if node.poll() is not None or time.monotonic() > deadline:
                sys.exit(f'node_overhead: the node did not start: {node.stderr.read()}')
            time.sleep(0.1)
        msg = image_msg(rgb)
        stamp = time.time_ns()
        for index in range(args.warmup + args.frames):
            start = time.perf_counter()
            label_map = bare.segment(rgb)
            bare_s = time.perf_counter() - start
            stamp += 1
            try:
                node_s = receiver.round_trip(msg, stamp, timeout=120)
            except TimeoutError:   # best effort: a frame lost before matching; send again
                stamp += 1
                node_s = receiver.round_trip(msg, stamp, timeout=120)
            if index >= args.warmup:
                for phase, values in phases.items():
                    values.append(getattr(bare.timings, phase + '_ms'))
                bare_ms.append(bare_s * 1e3)
                node_ms.append(node_s * 1e3)
                mismatched += int(np.count_nonzero(receiver.label_maps[stamp] != label_map))
        time.sleep(1.5)   # one more /diagnostics period
        inside = {key: float(receiver.diagnostics.get(f'{key}_ms_p50', 'nan'))
                  for key in ('total', 'node', *phases)}
        inside.update({'bare_' + phase: float(np.median(v)) for phase, v in phases.items()})
    finally:
        receiver.close()
        node.terminate()
        node.wait(10)
    return {'size': label, 'backend': bare.backend_name, 'bare': np.array(bare_ms),
            'node': np.array(node_ms), 'mismatched': mismatched, 'inside': inside}


def table(results) -> str:
    """Return the results as markdown: the comparison, then where the node's time goes."""
    lines = ['| frame (rgb8) | backend | bare median / p90 (ms) | node median / p90 (ms) | '
             'added, median | target | met | label maps equal |',
             '|---|---|---|---|---|---|---|---|']
    for r in results:
        bare50, bare90 = np.percentile(r['bare'], [50, 90])
        node50, node90 = np.percentile(r['node'], [50, 90])
        added = node50 - bare50
        target = max(0.10 * bare50, 5.0)
        lines.append(
            f"| {r['size']} | {r['backend']} | {bare50:.1f} / {bare90:.1f} | "
            f"{node50:.1f} / {node90:.1f} | {added:+.1f} ms ({added / bare50:+.1%}) | "
            f"<= {target:.1f} ms | {'yes' if added <= target else 'no'} | "
            f"{'yes' if r['mismatched'] == 0 else str(r['mismatched']) + ' px differ'} |")
    lines += ['', 'Where the time goes (medians, ms; pre / inference / post as the Segmenter '
              'times them):', '',
              '| frame | bare: pre / inf / post | node: pre / inf / post | node: received '
              'to published | DDS both ways + (de)serialisation |', '|---|---|---|---|---|']
    for r in results:
        node50 = np.percentile(r['node'], 50)
        inside = r['inside']
        bare = ' / '.join(f"{inside['bare_' + p]:.1f}" for p in PHASES)
        node = ' / '.join(f'{inside[p]:.1f}' for p in PHASES)
        lines.append(f"| {r['size']} | {bare} | {node} | {inside['node']:.1f} | "
                     f"{node50 - inside['node']:.1f} |")
    return '\n'.join(lines)


def main(argv=None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='b0-cityscapes')
    parser.add_argument('--backend', default='torch')
    parser.add_argument('--threads', type=int, default=1,
                        help='CPU threads for both (0 = library default; on a shared 2-core '
                             'machine two threads make every timing swing by up to 10x)')
    parser.add_argument('--sizes', nargs='+', default=list(SIZES), choices=list(SIZES))
    parser.add_argument('--frames', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--domain-id', type=int, default=59)
    args = parser.parse_args(argv)

    from evit_ros.ros.resources import fastdds_profile
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds_profile()))
    full = shared_frame()
    results = []
    for offset, label in enumerate(args.sizes):
        height, width = SIZES[label]
        rgb = full if (height, width) == full.shape[:2] else cv2.resize(
            full, (width, height), interpolation=cv2.INTER_AREA)
        results.append(measure(label, rgb, args, args.domain_id - offset))
        print(f'{label}: done', file=sys.stderr, flush=True)
    print(f'model {args.model}, {args.frames} frames after {args.warmup} warm-up, '
          f'threads {args.threads or "default"}, Fast DDS profile '
          f'{os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]}\n')
    print(table(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
