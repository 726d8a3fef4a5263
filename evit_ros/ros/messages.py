"""sensor_msgs images to numpy and back, validated; no cv_bridge needed.

Every check raises :class:`MessageError` whose text is one line saying what is wrong with the
message and what a publisher should send instead. Raw images are viewed without a copy;
compressed images are checked cheaply on arrival (:func:`check_compressed`) and decoded
later by the worker (:func:`compressed_to_array`).
"""

import array
import re
from typing import Optional, Tuple

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from evit_ros.runtime.image import ENCODINGS, ImageError

#: Largest compressed image the node decodes (pixels); bigger headers are refused unread.
MAX_DECODED_PIXELS = 8192 * 8192
#: Most pixels a compressed image may declare per byte of data. The densest real encodings
#: measured (a uniform 8-bit grey png at zlib level 9, ~1000 px/byte; progressive jpeg,
#: ~250) stay well below; a few hundred bytes declaring thousands of pixels squared are a
#: header forged or corrupted, and decoding it would allocate the declared size (libjpeg
#: fills a short scan with grey) for nothing.
MAX_PIXELS_PER_BYTE = 4096

_SUPPORTED = ', '.join(ENCODINGS)
_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# sensor_msgs names with more than one byte per channel (e.g. mono16, 32FC1, bgra16).
_MULTI_BYTE_NAME = re.compile(r'^(?:[a-z]+16|(?:16|32|64)[USF]C\d+)$')


class MessageError(ImageError):
    """A message that cannot be segmented; ``str()`` is the one-line reason."""


def _bytes(data) -> memoryview:
    """Return the message payload as a flat byte buffer (``array``, ``bytes`` or list)."""
    if isinstance(data, (bytes, bytearray, array.array, memoryview)):
        return memoryview(data).cast('B')
    return memoryview(bytes(data))


def image_to_array(msg: Image) -> Tuple[np.ndarray, str]:
    """Return an ``HxWxC`` uint8 view of a raw image's pixels and its encoding.

    Row padding (``step`` larger than ``width * channels``) is skipped without copying.

    :param msg: a ``sensor_msgs/Image`` in one of :data:`evit_ros.runtime.image.ENCODINGS`.
    :rtype: tuple(numpy.ndarray, str)
    :raises MessageError: for zero size, an unsupported encoding, big-endian multi-byte
        data, an odd width in YUV 4:2:2, a step shorter than a row, or data that does not
        match ``step * height``.
    """
    encoding, width, height, step = msg.encoding, msg.width, msg.height, msg.step
    if width == 0 or height == 0:
        raise MessageError(f'zero-size image {width}x{height}; publish an image with pixels')
    if msg.is_bigendian and _MULTI_BYTE_NAME.match(encoding):
        raise MessageError(f'big-endian {encoding} image (is_bigendian=1) is not supported; '
                           f'publish 8-bit images: {_SUPPORTED}')
    if encoding not in ENCODINGS:
        raise MessageError(f'unsupported encoding {encoding!r}; supported: {_SUPPORTED}')
    channels = ENCODINGS[encoding][0]
    if channels == 2 and width % 2:
        raise MessageError(f'{encoding} (YUV 4:2:2) needs an even width, got {width}')
    row = width * channels
    if step < row:
        raise MessageError(f'step {step} is shorter than a row of a {width}x{height} '
                           f'{encoding} image ({row} bytes); set step >= width * channels')
    data = _bytes(msg.data)
    expected = step * height
    if len(data) < expected:
        raise MessageError(f'truncated image: {width}x{height} {encoding} with step {step} '
                           f'needs {expected} bytes, got {len(data)}')
    if len(data) > expected:
        raise MessageError(f'data size {len(data)} does not match step * height = '
                           f'{step} * {height} = {expected} for {width}x{height} {encoding}')
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, step)
    return rows[:, :row].reshape(height, width, channels), encoding


def check_compressed(msg: CompressedImage) -> str:
    """Check a compressed image without decoding it and return ``'jpeg'`` or ``'png'``.

    :raises MessageError: for another format, empty data, a bad signature, a truncated
        JPEG, a declared size beyond :data:`MAX_DECODED_PIXELS`, or one implausibly large
        for the data (more than :data:`MAX_PIXELS_PER_BYTE` pixels per byte).
    """
    fmt = msg.format.lower()
    if 'compresseddepth' in fmt:
        kind = None
    elif 'jpeg' in fmt or 'jpg' in fmt:
        kind = 'jpeg'
    elif 'png' in fmt:
        kind = 'png'
    else:
        kind = None
    if kind is None:
        raise MessageError(f'unsupported compressed format {msg.format!r}; publish jpeg or png '
                           f'(image_transport "compressed")')
    data = _bytes(msg.data)
    if len(data) == 0:
        raise MessageError(f'empty {kind} image (0 bytes)')
    width, height = _declared_size(data, kind)
    if width == 0 or height == 0:
        raise MessageError(f'zero-size {kind} image {width}x{height}')
    if width * height > MAX_DECODED_PIXELS:
        raise MessageError(f'{kind} declares {width}x{height} pixels, more than the '
                           f'{MAX_DECODED_PIXELS} this node decodes; corrupt or not a '
                           f'camera image')
    if width * height > MAX_PIXELS_PER_BYTE * len(data):
        raise MessageError(f'{kind} declares {width}x{height} pixels in only {len(data)} '
                           f'bytes (over {MAX_PIXELS_PER_BYTE} pixels per byte); corrupt '
                           f'header, not decoded')
    if kind == 'jpeg' and b'\xff\xd9' not in bytes(data[-16:]):
        raise MessageError(f'truncated jpeg: no end-of-image marker in {len(data)} bytes')
    return kind


def compressed_to_array(msg: CompressedImage) -> Tuple[np.ndarray, str]:
    """Decode a jpeg or png ``CompressedImage`` to ``HxWx3`` BGR and return it with ``'bgr8'``.

    :rtype: tuple(numpy.ndarray, str)
    :raises MessageError: when :func:`check_compressed` refuses it or decoding fails.
    """
    kind = check_compressed(msg)
    buffer = np.frombuffer(_bytes(msg.data), dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise MessageError(f'corrupt {kind}: cannot decode {buffer.size} bytes')
    return image, 'bgr8'


def _declared_size(data: memoryview, kind: str) -> Tuple[int, int]:
    """Return ``(width, height)`` from a jpeg or png header without decoding pixels."""
    raw = bytes(data[:64]) if kind == 'png' else data
    if kind == 'png':
        if raw[:8] != _PNG_MAGIC or raw[12:16] != b'IHDR':
            raise MessageError(f'corrupt png: bad signature in {len(data)} bytes')
        return int.from_bytes(raw[16:20], 'big'), int.from_bytes(raw[20:24], 'big')
    if bytes(data[:3]) != _JPEG_MAGIC:
        raise MessageError(f'corrupt jpeg: bad signature in {len(data)} bytes')
    size = _jpeg_frame_size(data)
    if size is None:
        raise MessageError(f'corrupt jpeg: no frame header in {len(data)} bytes')
    return size


def _jpeg_frame_size(data: memoryview) -> Optional[Tuple[int, int]]:
    """Walk JPEG markers up to the start-of-frame and return its ``(width, height)``."""
    index, end = 2, len(data)
    while index + 9 <= end:
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:                   # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            index += 2                       # markers without a length
            continue
        if marker == 0xDA:                   # start of scan before any frame header
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = data[index + 5] << 8 | data[index + 6]
            width = data[index + 7] << 8 | data[index + 8]
            return width, height
        index += 2 + (data[index + 2] << 8 | data[index + 3])
    return None


def array_to_image(pixels: np.ndarray, encoding: str, header: Header) -> Image:
    """Return a ``sensor_msgs/Image`` holding ``pixels`` (``HxW`` or ``HxWxC``) and ``header``.

    Multi-byte pixels are written little-endian (``is_bigendian = 0``).

    :param pixels: uint8 or uint16 array.
    :param encoding: the encoding name to put in the message, e.g. ``mono8`` or ``rgb8``.
    :param header: copied by reference; pass the input image's header to keep its stamp.
    """
    if pixels.dtype == np.uint16:
        pixels = pixels.astype('<u2', copy=False)
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    msg = Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                step=pixels.strides[0])
    data = array.array('B')
    data.frombytes(pixels.data.cast('B'))
    msg.data = data
    return msg


def label_map_to_image(label_map: np.ndarray, header: Header) -> Image:
    """Return a label map as ``mono8`` (uint8 class ids) or ``mono16`` (uint16) image.

    :raises ValueError: for another dtype.
    """
    if label_map.dtype == np.uint8:
        return array_to_image(label_map, 'mono8', header)
    if label_map.dtype == np.uint16:
        return array_to_image(label_map, 'mono16', header)
    raise ValueError(f'label maps are uint8 or uint16, got {label_map.dtype}')


def scaled_camera_info(info: CameraInfo, width: int, height: int, header: Header) -> CameraInfo:
    """Return ``info`` rescaled to an image of ``width`` x ``height`` with ``header``.

    Focal lengths, principal point and the region of interest scale with the image, as
    image_proc's resize does; distortion and rectification are unchanged.
    """
    source_w = info.width or width
    source_h = info.height or height
    sx, sy = width / source_w, height / source_h
    out = CameraInfo(header=header, width=width, height=height,
                     distortion_model=info.distortion_model, d=list(info.d), r=list(info.r),
                     binning_x=info.binning_x, binning_y=info.binning_y)
    k = list(info.k)
    k[0], k[2], k[4], k[5] = k[0] * sx, k[2] * sx, k[4] * sy, k[5] * sy
    out.k = k
    p = list(info.p)
    p[0], p[2], p[3], p[5], p[6] = p[0] * sx, p[2] * sx, p[3] * sx, p[5] * sy, p[6] * sy
    out.p = p
    roi = info.roi
    out.roi.x_offset = int(round(roi.x_offset * sx))
    out.roi.y_offset = int(round(roi.y_offset * sy))
    out.roi.width = int(round(roi.width * sx))
    out.roi.height = int(round(roi.height * sy))
    out.roi.do_rectify = roi.do_rectify
    return out


#: ``CompressedImage.format`` of a PNG label map, as image_transport's png plugin names it.
def png_format(encoding: str) -> str:
    """Return the ``format`` string image_transport writes for a PNG of ``encoding``."""
    return f'{encoding}; png compressed '


def label_map_to_png(label_map: np.ndarray, header: Header) -> CompressedImage:
    """Return a label map as a lossless PNG ``CompressedImage`` (mono8 or mono16).

    Decoding it (``cv2.imdecode(..., cv2.IMREAD_UNCHANGED)``) gives the label map exactly.

    :raises ValueError: for a dtype other than uint8 or uint16.
    """
    if label_map.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'label maps are uint8 or uint16, got {label_map.dtype}')
    ok, encoded = cv2.imencode('.png', np.ascontiguousarray(label_map),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f'cannot encode a {label_map.shape} label map as png')
    msg = CompressedImage(header=header)
    msg.format = png_format('mono8' if label_map.dtype == np.uint8 else 'mono16')
    data = array.array('B')
    data.frombytes(encoded.tobytes())
    msg.data = data
    return msg
