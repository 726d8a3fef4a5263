"""Int8 calibration data from image folders and rosbag2 bags: frames, spread, fingerprint."""

import cv2
import numpy as np
import pytest

from conftest import require_shared
from evit_ros.runtime.calibration import CalibrationData, CalibrationError
from evit_ros.runtime.preprocess import preprocess

SIZE = (64, 96)


def gradient(seed, height=40, width=60):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / 'frames'
    (root / 'b').mkdir(parents=True)
    for i in range(5):
        sub = root / ('b' if i >= 3 else '')
        cv2.imwrite(str(sub / f'frame{i}.png'), cv2.cvtColor(gradient(i), cv2.COLOR_RGB2BGR))
    (root / 'notes.txt').write_text('not an image')
    return root


def test_folder_frames_are_spread_and_preprocessed(folder):
    data = CalibrationData(folder, SIZE, max_images=3)
    names = [str(p.relative_to(folder)) for p in data.files]
    # Sorted by path: b/frame3, b/frame4, frame0, frame1, frame2 -> every other one.
    assert names == ['b/frame3.png', 'frame0.png', 'frame2.png']
    frames = list(data)
    assert len(data) == 3 and len(frames) == 3
    for frame, file in zip(frames, data.files):
        rgb = cv2.cvtColor(cv2.imread(str(file)), cv2.COLOR_BGR2RGB)
        assert frame.shape == (1, 3) + SIZE and frame.dtype == np.float32
        np.testing.assert_array_equal(frame, preprocess(rgb, SIZE))
    assert data.describe() == f'3 images from {folder}'


def test_folder_fingerprint_follows_the_frames_used(folder):
    first = CalibrationData(folder, SIZE, max_images=3).sha256
    assert CalibrationData(folder, SIZE, max_images=3).sha256 == first
    assert CalibrationData(folder, SIZE, max_images=5).sha256 != first
    # A frame not among the three used leaves the fingerprint alone; a used one changes it.
    cv2.imwrite(str(folder / 'frame1.png'), gradient(99))
    assert CalibrationData(folder, SIZE, max_images=3).sha256 == first
    cv2.imwrite(str(folder / 'frame2.png'), gradient(99))
    assert CalibrationData(folder, SIZE, max_images=3).sha256 != first


def test_bad_calibration_paths(tmp_path):
    with pytest.raises(CalibrationError, match='does not exist; pass a folder of images or'):
        CalibrationData(tmp_path / 'nowhere', SIZE)
    with pytest.raises(CalibrationError, match='no readable images'):
        CalibrationData(tmp_path, SIZE)
    with pytest.raises(CalibrationError, match='max_images must be >= 1'):
        CalibrationData(tmp_path, SIZE, max_images=0)


def test_real_rosbag2_from_the_ros_recorder():
    bag = require_shared('data', 'rosbag2_sqlite_tiny')
    data = CalibrationData(bag, SIZE)
    assert (data.kind, data.topic, len(data)) == ('bag', '/image', 3)
    expected = preprocess(cv2.cvtColor(np.array([[0, 128], [128, 255]], np.uint8),
                                       cv2.COLOR_GRAY2RGB), SIZE)
    frames = list(data)
    assert len(frames) == 3
    for frame in frames:
        np.testing.assert_array_equal(frame, expected)
    assert CalibrationData(bag / 'images.bag_0.db3', SIZE).sha256 == data.sha256
    assert CalibrationData(bag, SIZE, max_images=2).sha256 != data.sha256
    with pytest.raises(CalibrationError, match='has no image topic /camera; its image '
                                               'topics: /image'):
        CalibrationData(bag, SIZE, topic='/camera')


def write_bag(path, images):
    """Write a rosbag2 bag with rosbags: /cam/raw (rgb8, padded rows), /cam/png."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import get_typestore, Stores
    store = get_typestore(Stores.LATEST)
    Image = store.types['sensor_msgs/msg/Image']
    Compressed = store.types['sensor_msgs/msg/CompressedImage']
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    with Writer(path, version=9) as writer:
        raw = writer.add_connection('/cam/raw', Image.__msgtype__, typestore=store)
        png = writer.add_connection('/cam/png', Compressed.__msgtype__, typestore=store)
        for i, rgb in enumerate(images):
            header = Header(stamp=Time(sec=i, nanosec=0), frame_id='cam')
            height, width = rgb.shape[:2]
            step = width * 3 + 4   # row padding, as some drivers send
            rows = np.zeros((height, step), np.uint8)
            rows[:, :width * 3] = rgb.reshape(height, -1)
            msg = Image(header=header, height=height, width=width, encoding='rgb8',
                        is_bigendian=0, step=step, data=rows.reshape(-1))
            writer.write(raw, i * 10**9, store.serialize_cdr(msg, Image.__msgtype__))
            ok, encoded = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            msg = Compressed(header=header, format='png', data=encoded.reshape(-1))
            writer.write(png, i * 10**9, store.serialize_cdr(msg, Compressed.__msgtype__))


def test_bag_with_two_image_topics(tmp_path):
    images = [gradient(i) for i in range(4)]
    bag = tmp_path / 'run1'
    write_bag(bag, images)
    with pytest.raises(CalibrationError, match=r'has 2 image topics \(/cam/png, /cam/raw\); '
                                               'choose one with --calib-topic'):
        CalibrationData(bag, SIZE)
    for topic in ('/cam/raw', '/cam/png'):
        data = CalibrationData(bag, SIZE, max_images=2, topic=topic)
        assert len(data) == 2 and data.describe() == f'2 frames of {topic} in bag {bag}'
        for frame, rgb in zip(data, (images[0], images[3])):
            np.testing.assert_array_equal(frame, preprocess(rgb, SIZE))
    assert (CalibrationData(bag, SIZE, topic='/cam/raw').sha256
            != CalibrationData(bag, SIZE, topic='/cam/png').sha256)
