"""The Segmenter and image encodings: label maps for every encoding, errors that say why."""

from conftest import require_shared
import cv2
import numpy as np
import pytest
import torch

from evit_ros.model import create_model, UnknownModelError
from evit_ros.runtime import ImageError, Segmenter
from evit_ros.runtime.image import ENCODINGS, to_rgb
from evit_ros.runtime.preprocess import MEAN, preprocess, STD

SIZE = (64, 128)           # network input of the random-weight segmenter


@pytest.fixture(scope='module')
def random_segmenter():
    """B0 with random weights at a small network size (no shared data needed)."""
    torch.manual_seed(0)
    return Segmenter('b0-cityscapes', weights=None, input_size=SIZE)


@pytest.fixture(scope='module')
def segmenter():
    """The official B0 at 128x256."""
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt')
    return Segmenter('b0-cityscapes', weights=str(weights), input_size=(128, 256))


@pytest.fixture(scope='module')
def frame():
    """A real 512x256 Cityscapes frame, RGB."""
    path = require_shared('data', 'frames', 'aachen_000000_000019_leftImg8bit.png')
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def synthetic_rgb(height=90, width=150):
    """A deterministic colourful image (stand-in where no real frame is needed)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(rgb, encoding):
    """Return ``rgb`` as the pixel array a camera would send in ``encoding``."""
    rgba = np.dstack([rgb, np.arange(rgb.size // 3, dtype=np.uint32).reshape(
        rgb.shape[:2]).astype(np.uint8)])
    return {
        'rgb8': lambda: rgb,
        'bgr8': lambda: rgb[:, :, ::-1],
        'rgba8': lambda: rgba,
        'bgra8': lambda: rgba[:, :, [2, 1, 0, 3]],
        'mono8': lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
        'yuv422': lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY),
        'uyvy': lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY),
        'yuv422_yuy2': lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUYV),
        'yuyv': lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUYV),
    }[encoding]()


# --- label maps for every encoding ---------------------------------------------------------


@pytest.mark.parametrize('encoding', list(ENCODINGS))
def test_label_map_is_uint8_at_the_image_size(random_segmenter, encoding):
    image = encode(synthetic_rgb(90, 150), encoding)
    label_map = random_segmenter.segment(image, encoding)
    assert label_map.dtype == np.uint8
    assert label_map.shape == (90, 150)
    assert label_map.max() < 19


def test_logits_are_at_stride_8_of_the_network_input(random_segmenter):
    random_segmenter.segment(synthetic_rgb(), 'rgb8')
    assert tuple(random_segmenter.logits.shape) == (1, 19, SIZE[0] // 8, SIZE[1] // 8)
    assert random_segmenter.logits.dtype == torch.float32
    assert random_segmenter.num_classes == 19
    assert random_segmenter.input_size == SIZE
    assert random_segmenter.backend_name == 'torch'


def test_timings_are_filled_in(random_segmenter):
    random_segmenter.segment(synthetic_rgb(), 'bgr8')
    t = random_segmenter.timings
    assert t.preprocess_ms > 0 and t.inference_ms > 0 and t.postprocess_ms > 0
    assert t.total_ms == pytest.approx(t.preprocess_ms + t.inference_ms + t.postprocess_ms)


def test_output_size_sets_the_label_map_size(random_segmenter):
    image = synthetic_rgb(90, 150)
    assert random_segmenter.segment(image, output_size=(45, 75)).shape == (45, 75)
    assert random_segmenter.segment(image, output_size=(300, 20)).shape == (300, 20)
    # At the logits' own size no resizing happens: the label map is their argmax.
    label_map = random_segmenter.segment(image, output_size=(8, 16))
    expected = random_segmenter.logits.argmax(1)[0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(label_map, expected)


def test_preprocess_normalises_like_the_release():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0, 128, 255
    x = preprocess(rgb, (32, 32))
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (np.array([0, 128, 255]) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(x[0, :, 5, 5], expected, rtol=1e-6, atol=1e-6)


def test_a_module_can_be_given_instead_of_a_name():
    model = create_model('b0-cityscapes', num_classes=4)
    segmenter = Segmenter(model, input_size=(32, 64))
    assert segmenter.entry is None and segmenter.num_classes == 4
    label_map = segmenter.segment(synthetic_rgb(40, 70))
    assert label_map.shape == (40, 70) and label_map.max() < 4
    assert tuple(segmenter.logits.shape) == (1, 4, 4, 8)


# --- encodings agree with each other on a real frame ---------------------------------------


def test_real_frame_gives_a_real_label_map(segmenter, frame):
    label_map = segmenter.segment(frame, 'rgb8')
    assert label_map.shape == frame.shape[:2]
    classes, counts = np.unique(label_map, return_counts=True)
    # A street scene: road, building, vegetation, sky, car... each over 1% of the frame.
    assert (counts > 0.01 * label_map.size).sum() >= 5
    assert 0 in classes and 2 in classes           # road and building


@pytest.mark.parametrize('encoding', ['bgr8', 'rgba8', 'bgra8'])
def test_channel_orders_give_exactly_the_rgb_label_map(segmenter, frame, encoding):
    expected = segmenter.segment(frame, 'rgb8')
    expected_logits = segmenter.logits.clone()
    np.testing.assert_array_equal(segmenter.segment(encode(frame, encoding), encoding),
                                  expected)
    assert torch.equal(segmenter.logits, expected_logits)


def test_bgr8_is_rgb8_of_the_swapped_frame(segmenter, frame):
    # The same bytes, read as bgr8, are the channel-swapped picture read as rgb8.
    as_bgr = segmenter.segment(frame, 'bgr8')
    swapped = np.ascontiguousarray(frame[:, :, ::-1])
    np.testing.assert_array_equal(as_bgr, segmenter.segment(swapped, 'rgb8'))
    # ... and that is a different picture: red and blue trade places.
    assert (as_bgr != segmenter.segment(frame, 'rgb8')).mean() > 0.01


def test_mono8_is_the_grey_picture_in_every_channel(segmenter, frame):
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    expected = segmenter.segment(np.dstack([grey] * 3), 'rgb8')
    np.testing.assert_array_equal(segmenter.segment(grey, 'mono8'), expected)
    np.testing.assert_array_equal(segmenter.segment(grey[:, :, None], 'mono8'), expected)


@pytest.mark.parametrize('encoding', ['yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'])
def test_yuv422_frames_segment_like_the_rgb_frame(segmenter, frame, encoding):
    packed = encode(frame, encoding)
    assert packed.shape == frame.shape[:2] + (2,)
    # 4:2:2 chroma subsampling loses a little colour, not the scene.
    assert np.abs(to_rgb(packed, encoding).astype(int) - frame).mean() < 2.0
    agree = (segmenter.segment(packed, encoding) == segmenter.segment(frame, 'rgb8')).mean()
    assert agree >= 0.97


def test_uyvy_and_yuyv_byte_orders_are_not_confused(frame):
    uyvy = encode(frame, 'yuv422')
    assert np.abs(to_rgb(uyvy, 'yuv422').astype(int) - frame).mean() < 2.0
    assert np.abs(to_rgb(uyvy, 'yuyv').astype(int) - frame).mean() > 20.0


def test_non_contiguous_views_are_accepted(segmenter, frame):
    flipped = frame[:, ::-1]
    assert not flipped.flags.c_contiguous
    np.testing.assert_array_equal(segmenter.segment(flipped, 'rgb8'),
                                  segmenter.segment(flipped.copy(), 'rgb8'))


# --- bad images: one line naming the problem -----------------------------------------------


@pytest.mark.parametrize('image, encoding, words', [
    (np.zeros((8, 8, 3), np.uint8), 'rgb16', ["unsupported encoding 'rgb16'", 'rgb8, bgr8']),
    (np.zeros((8, 8, 3), np.uint8), '', ["unsupported encoding ''", 'mono8']),
    (np.zeros((8, 8, 3), np.float32), 'rgb8', ['must be uint8', 'float32']),
    (np.zeros((8, 8, 3), np.uint16), 'bgr8', ['must be uint8', 'uint16']),
    (np.zeros((8, 8, 4), np.uint8), 'rgb8', ['rgb8 expects shape HxWx3', '(8, 8, 4)']),
    (np.zeros((8, 8, 3), np.uint8), 'mono8', ['mono8 expects shape HxWx1', '(8, 8, 3)']),
    (np.zeros((8, 8), np.uint8), 'bgra8', ['bgra8 expects shape HxWx4', '(8, 8)']),
    (np.zeros((8, 8, 3), np.uint8), 'yuv422', ['yuv422 expects shape HxWx2']),
    (np.zeros(24, np.uint8), 'rgb8', ['expects shape', '(24,)']),
    (np.zeros((1, 8, 8, 3), np.uint8), 'rgb8', ['expects shape', '(1, 8, 8, 3)']),
    (np.zeros((0, 8, 3), np.uint8), 'rgb8', ['zero size']),
    (np.zeros((8, 0), np.uint8), 'mono8', ['zero size']),
    (np.zeros((8, 7, 2), np.uint8), 'yuyv', ['even width', '7']),
    ([[0, 0, 0]], 'rgb8', ['numpy array', 'list']),
])
def test_bad_images_raise_image_error_naming_the_problem(random_segmenter, image, encoding,
                                                         words):
    with pytest.raises(ImageError) as info:
        random_segmenter.segment(image, encoding)
    message = str(info.value)
    assert '\n' not in message
    for word in words:
        assert word in message
    assert isinstance(info.value, ValueError)


def test_a_bad_image_leaves_the_last_result_alone(random_segmenter):
    random_segmenter.segment(synthetic_rgb(), 'rgb8')
    logits, timings = random_segmenter.logits, random_segmenter.timings
    with pytest.raises(ImageError):
        random_segmenter.segment(np.zeros((0, 8, 3), np.uint8))
    assert random_segmenter.logits is logits and random_segmenter.timings is timings


@pytest.mark.parametrize('kwargs, error, words', [
    ({'input_size': (100, 200)}, ValueError, ['100x200', 'multiple of 32', '128x224']),
    ({'model': 'b9-cityscapes'}, UnknownModelError, ['b9-cityscapes', 'b0-cityscapes']),
])
def test_bad_segmenter_settings_are_refused(kwargs, error, words):
    with pytest.raises(error) as info:
        Segmenter(**{'weights': None, **kwargs})
    for word in words:
        assert word in str(info.value)
