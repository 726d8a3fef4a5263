"""sensor_msgs <-> numpy conversion: exact round trips, zero copies, one-line refusals."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from evit_ros.ros.messages import (
    array_to_image, check_compressed, compressed_to_array, image_to_array, label_map_to_image,
    MAX_DECODED_PIXELS, MessageError, scaled_camera_info)
from evit_ros.runtime.image import ENCODINGS, to_rgb

RNG = np.random.default_rng(0)


def raw(pixels, encoding, padding=0, **fields):
    """An Image holding ``pixels`` with ``padding`` extra bytes at the end of each row."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, padding), 99, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@settings(max_examples=60, deadline=None)
@given(encoding=st.sampled_from(sorted(ENCODINGS)), height=st.integers(1, 9),
       half_width=st.integers(1, 9), padding=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_raw_images_round_trip_through_a_view(encoding, height, half_width, padding, seed):
    channels = ENCODINGS[encoding][0]
    width = 2 * half_width                       # even: YUV 4:2:2 needs pairs of pixels
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
    msg = raw(pixels, encoding, padding)
    view, got_encoding = image_to_array(msg)
    assert got_encoding == encoding
    np.testing.assert_array_equal(view, pixels)
    assert not view.flags.owndata                # a view of msg.data, not a copy
    assert to_rgb(view, encoding).shape == (height, width, 3)
    back = array_to_image(pixels, encoding, msg.header)
    assert (back.step, back.is_bigendian) == (width * channels, 0)
    np.testing.assert_array_equal(image_to_array(back)[0], pixels)


def test_header_is_carried_by_reference():
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = array_to_image(np.zeros((2, 3, 3), np.uint8), 'rgb8', header)
    assert msg.header.frame_id == 'cam' and (msg.header.stamp.sec,
                                             msg.header.stamp.nanosec) == (12, 345)


def test_label_maps_are_mono8_or_little_endian_mono16():
    labels = RNG.integers(0, 19, (4, 5), np.uint8)
    msg = label_map_to_image(labels, Header())
    assert (msg.encoding, msg.step, bytes(msg.data)) == ('mono8', 5, labels.tobytes())
    wide = np.array([[0, 1, 255, 256, 1000]], np.uint16)
    msg = label_map_to_image(wide, Header())
    assert (msg.encoding, msg.step, msg.is_bigendian) == ('mono16', 10, 0)
    assert bytes(msg.data) == wide.astype('<u2').tobytes()
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), '<u2').reshape(1, 5), wide)
    with pytest.raises(ValueError, match='uint8 or uint16'):
        label_map_to_image(wide.astype(np.int32), Header())


FRAME = RNG.integers(0, 256, (4, 6, 3), np.uint8)


@pytest.mark.parametrize('msg, reason', [
    (raw(FRAME, 'bayer_rggb8'), "unsupported encoding 'bayer_rggb8'; supported: rgb8, bgr8"),
    (raw(FRAME, '32FC1'), "unsupported encoding '32FC1'"),
    (raw(FRAME, 'mono16', is_bigendian=1), 'big-endian mono16 image (is_bigendian=1) is not '
     'supported; publish 8-bit images'),
    (raw(FRAME, 'rgb8', step=17), 'step 17 is shorter than a row of a 6x4 rgb8 image (18 '
     'bytes); set step >= width * channels'),
    (raw(FRAME, 'rgb8', data=FRAME.tobytes()[:50]), 'truncated image: 6x4 rgb8 with step 18 '
     'needs 72 bytes, got 50'),
    (raw(FRAME, 'rgb8', data=FRAME.tobytes() + b'x'), 'data size 73 does not match step * '
     'height = 18 * 4 = 72 for 6x4 rgb8'),
    (raw(FRAME, 'rgb8', width=0), 'zero-size image 0x4'),
    (Image(height=100000, width=100000, encoding='rgb8', step=300000, data=bytes(12)),
     'truncated image: 100000x100000 rgb8 with step 300000 needs 30000000000 bytes, got 12'),
])
def test_bad_raw_images_are_refused_with_one_line(msg, reason):
    with pytest.raises(MessageError) as error:
        image_to_array(msg)
    assert str(error.value).startswith(reason)
    assert '\n' not in str(error.value)


def test_big_endian_flag_on_single_byte_data_is_harmless():
    view, _ = image_to_array(raw(FRAME, 'rgb8', is_bigendian=1))
    np.testing.assert_array_equal(view, FRAME)


def compressed(fmt, payload):
    msg = CompressedImage(format=fmt)
    msg.data = payload
    return msg


def encoded(ext, image):
    return cv2.imencode(ext, image)[1].tobytes()


PICTURE = cv2.resize(RNG.integers(0, 256, (8, 12, 3), np.uint8), (48, 32),
                     interpolation=cv2.INTER_NEAREST)


@pytest.mark.parametrize('fmt, ext', [('jpeg', '.jpg'), ('png', '.png'),
                                      ('rgb8; jpeg compressed bgr8', '.jpg'),
                                      ('bgr8; png compressed bgr8', '.png')])
def test_compressed_images_decode_as_opencv_does(fmt, ext):
    payload = encoded(ext, PICTURE)
    assert check_compressed(compressed(fmt, payload)) == ('png' if 'png' in fmt else 'jpeg')
    image, encoding = compressed_to_array(compressed(fmt, payload))
    assert encoding == 'bgr8'
    np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(payload, np.uint8),
                                                      cv2.IMREAD_COLOR))
    if ext == '.png':
        np.testing.assert_array_equal(image, PICTURE)   # lossless


def png_header(width, height):
    """A PNG signature and IHDR chunk declaring ``width`` x ``height`` (no pixel data)."""
    return (b'\x89PNG\r\n\x1a\n' + b'\x00\x00\x00\rIHDR' + width.to_bytes(4, 'big')
            + height.to_bytes(4, 'big') + b'\x08\x02\x00\x00\x00' + bytes(4))


JPEG = encoded('.jpg', PICTURE)


@pytest.mark.parametrize('fmt, payload, reason', [
    ('tiff', b'II*\x00', "unsupported compressed format 'tiff'; publish jpeg or png"),
    ('16UC1; compressedDepth png', png_header(4, 4), 'unsupported compressed format'),
    ('jpeg', b'', 'empty jpeg image (0 bytes)'),
    ('jpeg', bytes(100), 'corrupt jpeg: bad signature in 100 bytes'),
    ('jpeg', b'\xff\xd8\xff\xda' + bytes(40), 'corrupt jpeg: no frame header'),
    ('jpeg', JPEG[:len(JPEG) // 2], 'truncated jpeg: no end-of-image marker'),
    ('png', b'GIF89a' + bytes(40), 'corrupt png: bad signature'),
    ('png', png_header(100000, 100000), f'png declares 100000x100000 pixels, more than the '
     f'{MAX_DECODED_PIXELS}'),
    ('png', png_header(0, 5), 'zero-size png image 0x5'),
])
def test_bad_compressed_images_are_refused_before_decoding(fmt, payload, reason):
    with pytest.raises(MessageError) as error:
        check_compressed(compressed(fmt, payload))
    assert str(error.value).startswith(reason)


def test_undecodable_jpeg_is_refused_after_decoding():
    body = RNG.integers(0, 256, len(JPEG) - 602).astype(np.uint8).tobytes()
    garbage = JPEG[:600] + body + JPEG[-2:]
    check_compressed(compressed('jpeg', garbage))      # the header looks fine...
    with pytest.raises(MessageError, match=f'corrupt jpeg: cannot decode {len(garbage)} bytes'):
        compressed_to_array(compressed('jpeg', garbage))


def test_camera_info_scales_with_the_label_map():
    info = CameraInfo(width=2048, height=1024, distortion_model='plumb_bob',
                      d=[0.1, -0.2, 0, 0, 0], k=[2000.0, 0, 1024, 0, 2000.0, 512, 0, 0, 1],
                      p=[2000.0, 0, 1024, 40.0, 0, 2000.0, 512, 0, 0, 0, 1, 0])
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 50, 400, 200
    header = Header(frame_id='cam')
    out = scaled_camera_info(info, 512, 256, header)
    assert (out.width, out.height, out.header.frame_id) == (512, 256, 'cam')
    np.testing.assert_allclose(out.k, [500, 0, 256, 0, 500, 128, 0, 0, 1])
    np.testing.assert_allclose(out.p, [500, 0, 256, 10, 0, 500, 128, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(out.d, info.d)
    assert (out.roi.x_offset, out.roi.y_offset, out.roi.width, out.roi.height) == (
        25, 12, 100, 50)
