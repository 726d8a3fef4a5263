"""Hostile images fed to the running node over DDS: it rejects them, says why, and goes on.

Hypothesis generates ``sensor_msgs/Image`` and ``CompressedImage`` messages with wrong,
random and huge fields (declared sizes up to 2**32-1 pixels a side with a few bytes of data,
forged jpeg/png headers, random bytes); the test process publishes them, reliably, to the
node in its own process. After every :data:`BATCH` of them a good frame goes out and its
label map must come back at the right size. At the end every message is accounted for on
/diagnostics and the node's peak resident memory (VmHWM) grew by less than
:data:`RAW_MAX_GROWTH_KB` / :data:`COMPRESSED_MAX_GROWTH_KB`, the bounds the README states
(measured: +5 MB raw, up to +25 MB compressed, printed with ``pytest -s``). Decoding one of
the forged 8192x8192 JPEGs would take 192 MB, so the compressed bound also shows the pixels
per byte check refuses them before decoding.

The network runs at 64x128 and good frames are 24x40, so each batch costs milliseconds.
"""

import zlib

import cv2
import numpy as np
import pytest
from conftest import require_shared
from hypothesis import HealthCheck, given, settings, strategies as st
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import counts, image_msg, proc_stats, reliability_domain_id, Session, TOPIC

EXAMPLES = 500          # messages per transport
BATCH = 10              # bad messages between two good frames
RAW_MAX_GROWTH_KB = 16 * 1024
COMPRESSED_MAX_GROWTH_KB = 32 * 1024
GOOD = (24, 40)
PARAMS = {'backend': 'torch', 'network_height': 64, 'network_width': 128, 'cpu_threads': 1,
          'qos_reliability': 'reliable', 'qos_depth': 100, 'diagnostics_period': 0.05,
          'latency_budget_ms': 100000.0}
RELIABLE = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

# Channels per encoding, as sensor_msgs defines them (written here, not imported, so the
# test's idea of a valid image is independent of the node's).
CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'yuv422': 2,
            'uyvy': 2, 'yuv422_yuy2': 2, 'yuyv': 2}
HUGE = [2**31 - 1, 2**32 - 1, 2**16, 10**6]


def raw_verdict(encoding, width, height, step, size, bigendian):
    """Return ``None`` for a segmentable raw image, else a phrase the rejection must contain."""
    if width == 0 or height == 0:
        return 'zero-size image'
    if bigendian and (encoding.endswith('16') or encoding[:2] in ('16', '32', '64')):
        return 'big-endian'
    if encoding not in CHANNELS:
        return 'unsupported encoding'
    channels = CHANNELS[encoding]
    if channels == 2 and width % 2:
        return 'needs an even width'
    if step < width * channels:
        return 'is shorter than a row'
    if size < step * height:
        return 'truncated image'
    if size > step * height:
        return 'does not match step * height'
    return None


@st.composite
def raw_images(draw):
    """Fields of a raw image: mostly plausible, each one possibly wrong or huge."""
    encoding = draw(st.one_of(
        st.sampled_from(sorted(CHANNELS)),
        st.sampled_from(['mono16', '16UC1', '32FC1', 'bgra16', 'rgb16', '', 'RGB8', 'jpeg']),
        st.text(max_size=12)))
    small = st.integers(0, 48)
    width = draw(st.one_of(small, small, st.sampled_from(HUGE)))
    height = draw(st.one_of(small, small, st.sampled_from(HUGE)))
    channels = CHANNELS.get(encoding, 3)
    step = draw(st.one_of(st.just(width * channels), st.just(width * channels + 3),
                          st.integers(0, 2**32 - 1), st.integers(0, 200)))
    step = min(step, 2**32 - 1)
    expected = step * height
    size = draw(st.one_of(st.just(expected), st.integers(0, 4096),
                          st.just(max(0, expected - 1)), st.just(expected + 1)))
    size = min(size, 256 * 1024)
    return encoding, width, height, step, size, draw(st.booleans()), draw(st.integers(0, 2**32))


def _png_with_size(width, height):
    """A real 8x8 png whose IHDR claims ``width`` x ``height`` (CRC fixed, data unchanged)."""
    png = bytearray(cv2.imencode('.png', np.full((8, 8, 3), 90, np.uint8))[1].tobytes())
    png[16:24] = width.to_bytes(4, 'big') + height.to_bytes(4, 'big')
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, 'big')
    return bytes(png)


def _jpeg_with_size(width, height):
    """A real 16x16 jpeg whose frame header claims ``width`` x ``height``."""
    jpeg = bytearray(cv2.imencode('.jpg', np.full((16, 16, 3), 90, np.uint8))[1].tobytes())
    index = 2
    while jpeg[index + 1] not in (0xC0, 0xC1, 0xC2):
        index += 2 + (jpeg[index + 2] << 8 | jpeg[index + 3])
    jpeg[index + 5:index + 9] = (height.to_bytes(2, 'big') + width.to_bytes(2, 'big'))
    return bytes(jpeg)


@st.composite
def compressed_images(draw):
    """``(format, data, definitely_bad)`` of a compressed image: real, forged or random."""
    fmt = draw(st.one_of(st.sampled_from(['jpeg', 'png', 'jpg', 'rgb8; jpeg compressed bgr8',
                                          'PNG', 'tiff', '', 'compressedDepth png']),
                         st.text(max_size=12)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.RandomState(seed % 2**32)
    kind = draw(st.sampled_from(['random', 'real', 'bomb', 'truncated', 'flipped', 'empty']))
    side = draw(st.integers(1, 40))
    ext = '.png' if 'png' in fmt.lower() else '.jpg'
    real = cv2.imencode(ext, rng.randint(0, 256, (side, side + 3, 3)).astype(np.uint8))[1]
    real = real.tobytes()
    if kind == 'random':
        data = rng.randint(0, 256, draw(st.integers(1, 2048))).astype(np.uint8).tobytes()
    elif kind == 'real':
        data = real
    elif kind == 'bomb':
        width, height = draw(st.sampled_from([(65535, 65535), (8192, 8192), (30000, 2000),
                                              (4000, 4000)]))
        if ext == '.png':
            width, height = draw(st.sampled_from([(2**31 - 1, 2**31 - 1), (width, height)]))
            data = _png_with_size(width, height)
        else:
            data = _jpeg_with_size(width, height)
    elif kind == 'truncated':
        data = real[:draw(st.integers(0, len(real) - 1))]
    elif kind == 'flipped':
        data = bytearray(real)
        for index in rng.randint(0, len(data), 8):
            data[index] ^= 0xFF
        data = bytes(data)
    else:
        data = b''
    lower = fmt.lower()
    known = 'compresseddepth' not in lower and any(k in lower for k in ('jpeg', 'jpg', 'png'))
    # Refused on arrival whatever the bytes say: unknown format, no data, a forged header.
    definitely_bad = not known or not data or kind == 'bomb'
    return fmt, data, definitely_bad


@pytest.fixture(scope='module')
def weights_dir():
    return require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt').parent


def _good_frame(session, index):
    """Publish a good rgb8 frame and return its label map's stamp."""
    rgb = np.random.RandomState(index).randint(0, 256, GOOD + (3,)).astype(np.uint8)
    stamp = session.next_stamp()
    session.image_pub.publish(image_msg(rgb, stamp, 'good'))
    return stamp


def _start(params, tmp_path, weights_dir):
    session = Session(params, tmp_path, weights_dir, domain=reliability_domain_id(),
                      image_qos=RELIABLE)
    session.wait_ready()
    session.warm_up(np.zeros(GOOD + (3,), np.uint8))
    return session


def _check_label_map(session, stamp):
    msg = session.label_map(stamp)
    assert (msg.encoding, msg.height, msg.width) == ('mono8',) + GOOD
    assert len(msg.data) == GOOD[0] * GOOD[1]


def test_raw_image_fuzz(tmp_path, weights_dir):
    from sensor_msgs.msg import Image
    session = _start(PARAMS, tmp_path, weights_dir)
    try:
        base = counts(session.settled())
        before = proc_stats(session.node.proc.pid)
        tally = {'sent': 0, 'bad': 0, 'good': 0, 'batch': [], 'reasons': set()}

        def end_batch():
            stamp = _good_frame(session, tally['good'])
            tally['sent'] += 1
            tally['good'] += 1
            _check_label_map(session, stamp)
            last_bad = next((r for r in reversed(tally['batch']) if r), None)
            if last_bad:
                # All of the batch arrived (one reliable writer delivers in order) and the
                # last refusal names what was wrong with the last bad message.
                total = base['received'] + tally['sent']
                status = session.status(lambda s: int(s['frames_received']) == total,
                                        f'{total} frames received')
                assert last_bad in status['last_rejection_reason'], (last_bad, status)
            tally['batch'] = []

        @FUZZ
        @given(raw_images())
        def fuzz(fields):
            encoding, width, height, step, size, bigendian, seed = fields
            msg = Image(encoding=encoding, width=width, height=height, step=step,
                        is_bigendian=bigendian)
            msg.data = np.random.RandomState(seed % 2**32).bytes(size)
            verdict = raw_verdict(encoding, width, height, step, size, bigendian)
            session.image_pub.publish(msg)
            tally['sent'] += 1
            tally['bad'] += verdict is not None
            tally['batch'].append(verdict)
            if verdict:
                tally['reasons'].add(verdict)
            if len(tally['batch']) == BATCH:
                end_batch()

        fuzz()
        end_batch()
        total = base['received'] + tally['sent']
        end = session.status(lambda s: int(s['frames_received']) == total
                             and s['frames_in_flight'] == '0', f'{total} frames settled')
        after = proc_stats(session.node.proc.pid)
        now = counts(end)
        delta = {k: now[k] - base[k] for k in now}
        assert session.node.proc.poll() is None, session.node.log()
        assert tally['sent'] - tally['good'] >= EXAMPLES
        assert delta['received'] == tally['sent']
        assert delta['rejected'] == tally['bad'], (delta, tally['bad'])
        assert now['received'] == now['processed'] + now['dropped'] + now['rejected']
        assert delta['processed'] >= tally['good']
        # Every kind of refusal was tried.
        assert len(tally['reasons']) == 7, tally['reasons']
        assert after['hwm_kb'] - before['hwm_kb'] < RAW_MAX_GROWTH_KB, (before, after)
        print(f'raw fuzz: {tally["sent"]} sent, {tally["bad"]} bad, {delta}, '
              f'before {before}, after {after}')
    finally:
        session.close()


def test_compressed_image_fuzz(tmp_path, weights_dir):
    from sensor_msgs.msg import CompressedImage
    params = dict(PARAMS, input_transport='compressed')
    session = Session(params, tmp_path, weights_dir, image_type=CompressedImage,
                      image_topic=TOPIC + 'image/compressed', domain=reliability_domain_id(),
                      image_qos=RELIABLE)
    good = cv2.imencode('.png', np.random.RandomState(1).randint(
        0, 256, GOOD + (3,)).astype(np.uint8))[1].tobytes()

    def send(fmt, data, stamp=0):
        msg = CompressedImage(format=fmt)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        msg.data = data
        session.image_pub.publish(msg)

    def send_good():
        stamp = session.next_stamp()
        send('png', good, stamp)
        return stamp

    try:
        session.wait_ready()
        for _ in range(10):
            try:
                _check_label_map(session, send_good())
                break
            except AssertionError:
                continue
        base = counts(session.settled())
        before = proc_stats(session.node.proc.pid)
        tally = {'sent': 0, 'bad': 0, 'good': 0, 'pending': 0}

        def end_batch():
            stamp = send_good()
            tally['sent'] += 1
            tally['good'] += 1
            tally['pending'] = 0
            _check_label_map(session, stamp)

        @FUZZ
        @given(compressed_images())
        def fuzz(case):
            fmt, data, definitely_bad = case
            send(fmt, data)
            tally['sent'] += 1
            tally['bad'] += definitely_bad
            tally['pending'] += 1
            if tally['pending'] == BATCH:
                end_batch()

        fuzz()
        end_batch()
        total = base['received'] + tally['sent']
        end = session.status(lambda s: int(s['frames_received']) == total
                             and s['frames_in_flight'] == '0', f'{total} frames settled')
        after = proc_stats(session.node.proc.pid)
        now = counts(end)
        delta = {k: now[k] - base[k] for k in now}
        assert session.node.proc.poll() is None, session.node.log()
        assert tally['sent'] - tally['good'] >= EXAMPLES
        assert delta['received'] == tally['sent']
        # Corrupt data that passes the cheap checks is refused by the decoder, unless a
        # newer frame replaced it first (dropped): so at least the sure ones are rejected.
        assert tally['bad'] <= delta['rejected'] <= tally['sent'] - tally['good'], (
            delta, tally)
        assert now['received'] == now['processed'] + now['dropped'] + now['rejected']
        assert delta['processed'] >= tally['good']
        assert after['hwm_kb'] - before['hwm_kb'] < COMPRESSED_MAX_GROWTH_KB, (before, after)
        print(f'compressed fuzz: {tally["sent"]} sent, {tally["bad"]} surely bad, {delta}, '
              f'before {before}, after {after}')
    finally:
        session.close()
