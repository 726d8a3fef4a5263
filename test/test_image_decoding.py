"""One decoder: the node, bag reading and calibration decode the same bytes the same way.

Each case is written as a real message into a real rosbag2 bag (one topic per case), then
read three ways: as the node does (an rclpy message with the same fields through
``image_to_array`` / ``check_compressed`` / ``compressed_to_array``), through
:class:`BagReader`, and through :class:`CalibrationData`. All three must give the same RGB
pixels, or refuse with the same one-line reason.
"""

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from evit_ros.eval.bags import BagReader, BagWriter, camera_encoding, COMPRESSED, IMAGE, typestore
from evit_ros.ros.messages import (check_compressed, compressed_to_array, image_to_array,
                                   MessageError)
from evit_ros.runtime.calibration import CalibrationData, CalibrationError
from evit_ros.runtime.image import decode_compressed, ImageError, MAX_PIXELS_PER_BYTE, to_rgb
from evit_ros.runtime.preprocess import preprocess

RNG = np.random.default_rng(12)
RGB = cv2.resize(RNG.integers(0, 256, (6, 8, 3), np.uint8), (32, 24),
                 interpolation=cv2.INTER_NEAREST)
BGR = np.ascontiguousarray(RGB[:, :, ::-1])
JPEG = cv2.imencode('.jpg', BGR)[1].tobytes()
PNG = cv2.imencode('.png', BGR)[1].tobytes()
# A jpeg whose headers are intact but whose entropy-coded body is noise.
CORRUPT_JPEG = JPEG[:600] + RNG.integers(0, 256, len(JPEG) - 602).astype(np.uint8).tobytes() \
    + JPEG[-2:]
# A png header declaring 5000x5000 pixels in a few dozen bytes: a decompression bomb.
BOMB_PNG = (b'\x89PNG\r\n\x1a\n' + b'\x00\x00\x00\rIHDR' + (5000).to_bytes(4, 'big') * 2
            + b'\x08\x02\x00\x00\x00' + bytes(4) + bytes(20))


def padded(pixels, extra):
    rows = pixels.reshape(pixels.shape[0], -1)
    return np.concatenate([rows, np.full((rows.shape[0], extra), 7, np.uint8)], 1).tobytes()


# name -> raw fields (encoding, width, height, step, data) or compressed (format, data)
RAW = {
    'rgb8_padded': ('rgb8', 32, 24, 100, padded(RGB, 4)),
    'bgr8': ('bgr8', 32, 24, 96, BGR.tobytes()),
    'yuyv': ('yuv422_yuy2', 32, 24, 64, RNG.integers(0, 256, 24 * 64).astype(np.uint8)
             .tobytes()),
    'short': ('rgb8', 32, 24, 96, RGB.tobytes()[:-5]),
    'long': ('rgb8', 32, 24, 96, RGB.tobytes() + b'xx'),
    'bad_step': ('rgb8', 32, 24, 90, RGB.tobytes()),
    'unknown': ('bayer_rggb8', 32, 24, 32, bytes(32 * 24)),
    'mono16': ('mono16', 32, 24, 64, bytes(64 * 24)),
    'odd_yuv': ('yuv422', 31, 24, 62, bytes(62 * 24)),
}
COMPRESSED_CASES = {
    'jpeg_transport': ('bgr8; jpeg compressed bgr8', JPEG),
    'png_transport': ('rgb8; png compressed', PNG),
    'png_stored_rgb': ('rgb8; png compressed rgb8', cv2.imencode('.png', RGB)[1].tobytes()),
    'jpeg_plain': ('jpeg', JPEG),
    'png_plain': ('png', PNG),
    'corrupt_jpeg': ('jpeg', CORRUPT_JPEG),
    'truncated_jpeg': ('jpeg', JPEG[:len(JPEG) // 2]),
    'bomb': ('png', BOMB_PNG),
    'tiff': ('tiff', b'II*\x00' + bytes(40)),
    'depth': ('16UC1; compressedDepth png', PNG),
}
EXPECTED = {   # the one-line reason, or None for an image that decodes to RGB
    'rgb8_padded': None, 'bgr8': None, 'yuyv': None,
    'short': 'truncated image: 32x24 rgb8 with step 96 needs 2304 bytes, got 2299',
    'long': 'data size 2306 does not match step * height = 96 * 24 = 2304 for 32x24 rgb8',
    'bad_step': 'step 90 is shorter than a row of a 32x24 rgb8 image (96 bytes); set step '
                '>= width * channels',
    'unknown': "unsupported encoding 'bayer_rggb8'; supported: rgb8, bgr8, rgba8, bgra8, "
               'mono8, yuv422, uyvy, yuv422_yuy2, yuyv',
    'mono16': "unsupported encoding 'mono16'; supported: rgb8, bgr8, rgba8, bgra8, mono8, "
              'yuv422, uyvy, yuv422_yuy2, yuyv',
    'odd_yuv': 'yuv422 (YUV 4:2:2) needs an even width, got 31',
    'jpeg_transport': None, 'png_transport': None, 'png_stored_rgb': None,
    'jpeg_plain': None, 'png_plain': None,
    'corrupt_jpeg': f'corrupt jpeg: cannot decode {len(CORRUPT_JPEG)} bytes',
    'truncated_jpeg': f'truncated jpeg: no end-of-image marker in {len(JPEG) // 2} bytes',
    'bomb': f'png declares 5000x5000 pixels in only {len(BOMB_PNG)} bytes (over '
            f'{MAX_PIXELS_PER_BYTE} pixels per byte); corrupt header, not decoded',
    'tiff': "unsupported compressed format 'tiff'; publish jpeg or png (image_transport "
            '"compressed")',
    'depth': "unsupported compressed format '16UC1; compressedDepth png'; publish jpeg or png "
             '(image_transport "compressed")',
}


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('decoding') / 'bag'
    store = typestore()
    header = store.types['std_msgs/msg/Header'](
        stamp=store.types['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='cam')
    with BagWriter(path) as writer:
        for name, (encoding, width, height, step, data) in RAW.items():
            writer.add_topic(f'/{name}', IMAGE)
            writer._write(f'/{name}', store.types[IMAGE](
                header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                step=step, data=np.frombuffer(data, np.uint8)), IMAGE, 1)
        for name, (fmt, data) in COMPRESSED_CASES.items():
            writer.add_topic(f'/{name}', COMPRESSED)
            writer._write(f'/{name}', store.types[COMPRESSED](
                header=header, format=fmt, data=np.frombuffer(data, np.uint8)), COMPRESSED, 1)
    return path


def node_path(name):
    """What the node makes of it: (rgb, None) or (None, reason)."""
    try:
        if name in RAW:
            encoding, width, height, step, data = RAW[name]
            msg = Image(encoding=encoding, width=width, height=height, step=step)
            msg.data = data
            pixels, encoding = image_to_array(msg)
        else:
            fmt, data = COMPRESSED_CASES[name]
            msg = CompressedImage(format=fmt)
            msg.data = data
            check_compressed(msg)          # on arrival, then in the worker:
            pixels, encoding = compressed_to_array(msg)
        return to_rgb(pixels, encoding), None
    except MessageError as exc:
        return None, str(exc)
    except ImageError as exc:              # the segmenter's conversion refuses it
        return None, str(exc)


def bag_path(bag, name):
    with BagReader(bag) as reader:
        frames = [frame for _, frame in reader.frames(f'/{name}')]
        errors = list(reader.errors)
    if not frames:
        prefix = f'/{name} message 0 unreadable: '
        assert len(errors) == 1 and errors[0].startswith(prefix), errors
        return None, errors[0][len(prefix):]
    frame, = frames
    try:
        return to_rgb(frame.image, camera_encoding(frame.encoding)), None
    except ImageError as exc:
        return None, str(exc)


def calibration_path(bag, name):
    try:
        data = CalibrationData(bag, (32, 32), max_images=1, topic=f'/{name}')
        return next(iter(data)), None
    except CalibrationError as exc:
        return None, str(exc)


@pytest.mark.parametrize('name', list(EXPECTED))
def test_the_three_paths_agree(bag, name):
    node_rgb, node_reason = node_path(name)
    bag_rgb, bag_reason = bag_path(bag, name)
    calib_input, calib_reason = calibration_path(bag, name)
    assert node_reason == bag_reason == calib_reason == EXPECTED[name]
    if EXPECTED[name] is None:
        assert node_rgb.shape == (24, 32, 3) and node_rgb.dtype == np.uint8
        np.testing.assert_array_equal(node_rgb, bag_rgb)
        np.testing.assert_array_equal(preprocess(node_rgb, (32, 32)), calib_input)
    else:
        assert '\n' not in node_reason


def test_colour_order_follows_the_format_string():
    # Lossless cases show the exact pixels: RGB in, RGB out, whichever order was stored.
    for name in ('rgb8_padded', 'bgr8', 'png_transport', 'png_plain', 'png_stored_rgb'):
        np.testing.assert_array_equal(node_path(name)[0], RGB)
    # JPEG is lossy, but far closer to RGB than to the channels swapped.
    decoded = node_path('jpeg_transport')[0].astype(int)
    assert np.abs(decoded - RGB).mean() * 3 < np.abs(decoded - BGR).mean()


def test_label_maps_keep_their_depth():
    label = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)
    pixels, encoding = decode_compressed(cv2.imencode('.png', label)[1].tobytes(), 'png',
                                         keep_depth=True)
    assert encoding == 'mono16' and np.array_equal(pixels, label)
