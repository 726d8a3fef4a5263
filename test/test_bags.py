"""Reading and writing images in real rosbag2 bags (sqlite3 and mcap), damaged ones too."""

import os
import shutil

import cv2
import numpy as np
import pytest

from conftest import require_shared
from evit_ros.eval.bags import (BagError, BagReader, BagWriter, COMPRESSED, IMAGE,
                                image_from_compressed, image_from_raw, ns_to_stamp,
                                stamp_to_ns, typestore)

STORAGES = ('mcap', 'sqlite3')


def write_frames(path, storage='mcap', count=20, size=(60, 80)):
    """A bag of ``count`` rgb8 frames on /cam whose pixels all equal the frame number."""
    with BagWriter(path, storage) as bag:
        for i in range(count):
            bag.write_image('/cam', np.full(size + (3,), i, np.uint8), 10**9 + i * 10**8,
                            'cam', encoding='rgb8')
    return path


def storage_file(bag):
    return next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))


def test_tiny_bag_with_out_of_range_nanoseconds():
    tiny = require_shared('data', 'rosbag2_sqlite_tiny')
    with BagReader(tiny) as reader:
        assert reader.topics == {'/image': ('sensor_msgs/msg/Image', 3)}
        frames = [frame for _, frame in reader.frames('/image')]
        assert reader.errors == []
    # nanosec = 1e9 and 2e9 are carried into the seconds.
    assert [f.stamp_ns for f in frames] == [0, 10**9, 2 * 10**9]
    assert [f.bag_time_ns for f in frames] == [0, 10**9, 2 * 10**9]
    assert {f.frame_id for f in frames} == {'camera_optical_frame'}
    for frame in frames:
        assert frame.encoding == 'mono8'
        assert frame.image.tolist() == [[0, 128], [128, 255]]


def test_stamp_conversions():
    assert stamp_to_ns(0, 2_000_000_000) == 2 * 10**9
    assert ns_to_stamp(stamp_to_ns(0, 2_000_000_000)) == (2, 0)
    assert ns_to_stamp(1_500_000_001) == (1, 500_000_001)


@pytest.mark.parametrize('storage', STORAGES)
@pytest.mark.parametrize('encoding,shape,dtype', [
    ('rgb8', (5, 7, 3), np.uint8), ('bgr8', (5, 7, 3), np.uint8), ('mono8', (5, 7), np.uint8),
    ('mono16', (5, 7), np.uint16), ('rgba8', (4, 6, 4), np.uint8)])
def test_images_round_trip_losslessly(tmp_path, storage, encoding, shape, dtype):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    with BagWriter(tmp_path / 'bag', storage) as bag:
        bag.set_custom_data('evit_ros.label_format', 'camvid')
        bag.write_image('/a', pixels, stamp_to_ns(12, 345), 'cam', bag_time_ns=99,
                        encoding=encoding)
    with BagReader(tmp_path / 'bag') as reader:
        assert reader.topics == {'/a': (IMAGE, 1)}
        assert reader.custom_data == {'evit_ros.label_format': 'camvid'}
        (topic, frame), = list(reader.frames('/a'))
    assert frame.encoding == encoding
    assert frame.image.dtype == dtype and np.array_equal(frame.image, pixels)
    assert (frame.stamp_ns, frame.bag_time_ns, frame.frame_id) == (12 * 10**9 + 345, 99, 'cam')


def raw_message(pixels_bytes, encoding, height, width, step, bigendian=0):
    store = typestore()
    header = store.types['std_msgs/msg/Header'](
        stamp=store.types['builtin_interfaces/msg/Time'](sec=0, nanosec=0), frame_id='')
    return store.types[IMAGE](header=header, height=height, width=width, encoding=encoding,
                              is_bigendian=bigendian, step=step,
                              data=np.frombuffer(pixels_bytes, np.uint8))


def test_row_padding_and_big_endian_16_bit():
    rows = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = np.concatenate([rows, np.full((3, 4), 99, np.uint8)], axis=1)
    pixels, _ = image_from_raw(raw_message(padded.tobytes(), 'mono8', 3, 4, 8))
    assert np.array_equal(pixels, rows)
    values = np.array([[1, 258], [65535, 4096]], dtype='>u2')
    pixels, encoding = image_from_raw(raw_message(values.tobytes(), 'mono16', 2, 2, 4, 1))
    assert encoding == 'mono16' and pixels.tolist() == [[1, 258], [65535, 4096]]


@pytest.mark.parametrize('encoding,data,message', [
    ('rgb8', bytes(10), 'truncated image: 2x2 rgb8 with step 6 needs 12 bytes, got 10'),
    ('32FC1', bytes(16), "unsupported encoding '32FC1'; supported: rgb8, bgr8"),
])
def test_bad_raw_messages(encoding, data, message):
    with pytest.raises(BagError, match=message):
        image_from_raw(raw_message(data, encoding, 2, 2, 6 if encoding == 'rgb8' else 8))


def compressed_message(data, fmt):
    store = typestore()
    header = store.types['std_msgs/msg/Header'](
        stamp=store.types['builtin_interfaces/msg/Time'](sec=0, nanosec=0), frame_id='')
    return store.types[COMPRESSED](header=header, format=fmt,
                                   data=np.frombuffer(data, np.uint8))


def test_compressed_images_decode():
    bgr = np.random.default_rng(2).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    png = cv2.imencode('.png', bgr)[1].tobytes()
    pixels, encoding = image_from_compressed(compressed_message(png, 'bgr8; png compressed'))
    assert encoding == 'bgr8' and np.array_equal(pixels, bgr)
    label = np.arange(16 * 24, dtype=np.uint16).reshape(16, 24)
    png16 = cv2.imencode('.png', label)[1].tobytes()
    pixels, encoding = image_from_compressed(compressed_message(png16, 'png'))
    assert encoding == 'mono16' and np.array_equal(pixels, label)
    with pytest.raises(BagError, match='corrupt jpeg: bad signature in 12 bytes'):
        image_from_compressed(compressed_message(b'not an image', 'jpeg'))


@pytest.mark.parametrize('storage', STORAGES)
def test_wrong_or_missing_topics_list_the_bag(tmp_path, storage):
    bag = write_frames(tmp_path / 'bag', storage, count=2)
    with BagReader(bag) as reader:
        with pytest.raises(BagError) as missing:
            reader.check_topic('/camera/image')
    assert str(missing.value) == (f"no image topic '/camera/image'; bag {bag} has: /cam "
                                  f"(sensor_msgs/msg/Image, 2 msgs)")
    with BagWriter(tmp_path / 'strings', storage) as writer:
        writer._connections['/s'] = writer._writer.add_connection(
            '/s', 'std_msgs/msg/String', typestore=typestore())
        writer._types['/s'] = 'std_msgs/msg/String'
    with BagReader(tmp_path / 'strings') as reader:
        with pytest.raises(BagError, match=r'/s carries std_msgs/msg/String, not '
                                           r'sensor_msgs/msg/Image.*has: /s'):
            reader.check_topic('/s')


def test_unreadable_paths(tmp_path):
    with pytest.raises(BagError, match='does not exist'):
        BagReader(tmp_path / 'nothing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BagError, match='not a rosbag2 bag'):
        BagReader(tmp_path / 'empty')
    junk = tmp_path / 'junk.mcap'
    junk.write_bytes(b'definitely not mcap')
    with pytest.raises(BagError, match='cannot read'):
        BagReader(junk)


def test_truncated_mcap_is_read_up_to_the_damage(tmp_path):
    bag = write_frames(tmp_path / 'bag', 'mcap')
    cut = tmp_path / 'cut'
    shutil.copytree(bag, cut)
    path = storage_file(cut)
    os.truncate(path, int(path.stat().st_size * 0.6))
    with BagReader(cut) as reader:
        frames = [frame for _, frame in reader.frames('/cam')]
        errors = list(reader.errors)
    assert 0 < len(frames) < 20
    # Exactly the first frames, intact.
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(len(frames)))
    assert f'read the {len(frames)} messages before the damage' in errors[0]


def test_truncated_sqlite_says_what_the_metadata_listed(tmp_path):
    bag = write_frames(tmp_path / 'bag', 'sqlite3')
    path = storage_file(bag)
    os.truncate(path, int(path.stat().st_size * 0.6))
    with pytest.raises(BagError) as error:
        BagReader(bag)
    text = str(error.value)
    assert 'malformed' in text
    assert text.endswith('its metadata.yaml lists: /cam (sensor_msgs/msg/Image, 20 msgs)')


@pytest.mark.parametrize('storage', STORAGES)
def test_lying_metadata_is_noted_and_the_files_believed(tmp_path, storage):
    bag = write_frames(tmp_path / 'bag', storage, count=3)
    meta = bag / 'metadata.yaml'
    text = meta.read_text()
    text = text.replace('type: sensor_msgs/msg/Image', 'type: sensor_msgs/msg/CompressedImage')
    meta.write_text(text.replace('message_count: 3', 'message_count: 300'))
    with BagReader(bag) as reader:
        assert reader.topics == {'/cam': (IMAGE, 3)}
        frames = [frame for _, frame in reader.frames('/cam')]
        assert len(frames) == 3
        assert reader.errors == ['metadata.yaml says /cam is '
                                 'sensor_msgs/msg/CompressedImage, the bag files hold '
                                 'sensor_msgs/msg/Image']


def test_bag_without_metadata_and_single_files(tmp_path):
    bag = write_frames(tmp_path / 'bag', 'mcap', count=4)
    with BagReader(storage_file(bag)) as reader:
        assert len(list(reader.frames('/cam'))) == 4
    (bag / 'metadata.yaml').unlink()
    with BagReader(bag) as reader:
        assert len(list(reader.frames('/cam'))) == 4
        # Nothing is missing for replay: a note, not an error counted as unreadable.
        assert reader.errors == []
        assert reader.notes == [f'{bag} has no metadata.yaml; read the storage files']


def test_undecodable_messages_are_skipped_and_counted(tmp_path):
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_image('/cam', np.zeros((2, 2, 3), np.uint8), 1, 'c', encoding='rgb8')
        bag.write_compressed('/cam/compressed', b'garbage', 'jpeg', 2, 'c')
        bag.write_image('/cam', np.ones((2, 2, 3), np.uint8), 3, 'c', encoding='rgb8')
    with BagReader(tmp_path / 'bag') as reader:
        frames = list(reader.frames(['/cam', '/cam/compressed']))
        assert [(t, f.index) for t, f in frames] == [('/cam', 0), ('/cam', 1)]
        assert reader.errors == ['/cam/compressed message 0 unreadable: corrupt jpeg: bad '
                                 'signature in 7 bytes']


def test_writer_refuses_existing_paths_and_unknown_storage(tmp_path):
    (tmp_path / 'x').mkdir()
    with pytest.raises(BagError, match='exists already'):
        BagWriter(tmp_path / 'x')
    with pytest.raises(BagError, match='unknown storage'):
        BagWriter(tmp_path / 'y', 'rosbag1')
