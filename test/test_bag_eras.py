"""Bags of every rosbag2 era replay to the label maps of their modern equivalent.

Each bag here is a real file built with the tools an older ROS 2 would have left behind:
sqlite3 written by hand in the Dashing/Eloquent schema (``topics`` without
``offered_qos_profiles``, type names without ``/msg/``, no ``metadata.yaml``), every
``metadata.yaml`` version 1-9 in the shape rosbag2 wrote it (rosbag2's ``yaml.hpp`` and
rosbags' version history: 3 compression fields, 4 QoS strings and relative paths without the
folder, 5 ``files``, 6 ``custom_data``, 7 ``type_description_hash``, 8 ``ros_distro``, 9 QoS
as a list), MCAP with zstd and lz4 chunks (the ``mcap`` package's writer), image_transport's
``CompressedImage`` format strings, zero stamps and empty frame ids. The modern equivalent is
``make-bag``'s output from the same three CamVid frames.
"""

import json
import shutil
import sqlite3
from pathlib import Path

from conftest import require_shared
import cv2
import numpy as np
import pytest
import yaml

from evit_ros.eval.bags import BagReader, COMPRESSED, IMAGE, typestore
from evit_ros.eval.make_bag import label_map_topic, make_bag
from evit_ros.eval.replay import replay, ReplayOptions

TOPIC = '/cam/image'
LABELS = '/cam/image/label_gt'
NAMES = ('0016E5_07959', '0016E5_08001', '0016E5_08159')
NETWORK = (96, 128)


@pytest.fixture(scope='module')
def camvid(tmp_path_factory):
    """Three CamVid frames and labels in their own folders."""
    source = require_shared('data', 'camvid')
    root = tmp_path_factory.mktemp('camvid3')
    for sub in ('val', 'valannot'):
        (root / sub).mkdir()
        for name in NAMES:
            shutil.copy(source / sub / f'{name}.png', root / sub)
    return root


@pytest.fixture(scope='module')
def modern(camvid, tmp_path_factory):
    """make-bag's sqlite3 bag (metadata version 9) and its messages as stored."""
    bag = tmp_path_factory.mktemp('modern') / 'bag'
    make_bag(camvid / 'val', bag, TOPIC, labels_dir=camvid / 'valannot',
             label_format='camvid', storage='sqlite3', start_ns=1_600_000_000 * 10**9)
    from rosbags.rosbag2 import Reader
    with Reader(bag) as reader:
        messages = [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in reader.messages()]
    return bag, messages


def frames_of(bag, topic=TOPIC):
    with BagReader(bag) as reader:
        frames = [frame for _, frame in reader.frames(topic)]
        return frames, list(reader.errors), list(reader.notes)


def run_replay(bag, out, topic=TOPIC, **extra):
    """Replay offline (torch, small network) and return the report and the label maps."""
    options = ReplayOptions(bag=Path(bag), image_topic=topic, out=out, label_format='camvid',
                            network_size=NETWORK, progress=False, **extra)
    report = replay(options)
    maps, _, _ = frames_of(out / 'labels', label_map_topic(topic))
    return report, [m.image for m in maps]


@pytest.fixture(scope='module')
def modern_result(modern, tmp_path_factory, official_weights_module):
    return run_replay(modern[0], tmp_path_factory.mktemp('modern_out') / 'out')


@pytest.fixture(scope='module')
def official_weights_module():
    """The shared official checkpoint for every replay of this module."""
    folder = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt').parent
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('EVIT_ROS_WEIGHTS_DIR', str(folder))
        yield folder


def legacy_name(msgtype):
    return msgtype.replace('/msg/', '/')


def write_dashing_sqlite(folder: Path, messages, zero_stamps=False):
    """A Dashing/Eloquent recording: the old schema, old type names, no metadata.yaml."""
    folder.mkdir()
    db = sqlite3.connect(folder / f'{folder.name}_0.db3')
    db.executescript('''
        CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
                            serialization_format TEXT NOT NULL);
        CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL,
                              timestamp INTEGER NOT NULL, data BLOB NOT NULL);
        CREATE INDEX timestamp_idx ON messages (timestamp ASC);
    ''')
    ids = {}
    for topic, msgtype, stamp, raw in messages:
        if topic not in ids:
            ids[topic] = len(ids) + 1
            db.execute('INSERT INTO topics VALUES (?, ?, ?, ?)',
                       (ids[topic], topic, legacy_name(msgtype), 'cdr'))
        db.execute('INSERT INTO messages (topic_id, timestamp, data) VALUES (?, ?, ?)',
                   (ids[topic], stamp, raw))
    db.commit()
    db.close()
    return folder


def test_dashing_sqlite_without_metadata_replays_like_the_modern_bag(
        modern, modern_result, tmp_path):
    bag = write_dashing_sqlite(tmp_path / 'dashing', modern[1])
    columns = [row[1] for row in sqlite3.connect(bag / 'dashing_0.db3').execute(
        'PRAGMA table_info(topics)')]
    assert columns == ['id', 'name', 'type', 'serialization_format']
    assert not (bag / 'metadata.yaml').exists()
    with BagReader(bag) as reader:
        assert reader.topics == {TOPIC: (IMAGE, 3), LABELS: (IMAGE, 3)}
        assert reader.errors == []
        assert reader.notes == [f'{bag} has no metadata.yaml; read the storage files',
                                "pre-Foxy type names read as today's: sensor_msgs/Image"]
    report, maps = run_replay(bag, tmp_path / 'out')
    want_report, want_maps = modern_result
    assert (report['frames'], report['frames_scored'], report['unreadable']) == (3, 3, 0)
    assert report['miou'] == want_report['miou']
    assert len(maps) == 3 and all(np.array_equal(a, b) for a, b in zip(maps, want_maps))
    # The .db3 file alone works too.
    frames, _, _ = frames_of(bag / 'dashing_0.db3')
    assert len(frames) == 3


def metadata_for_version(info: dict, version: int, folder: str) -> dict:
    """Rewrite a version-9 ``rosbag2_bagfile_information`` as rosbag2 wrote ``version``."""
    old = dict(info)
    out = {'version': version, 'storage_identifier': old['storage_identifier'],
           'duration': old['duration'], 'starting_time': old['starting_time'],
           'message_count': old['message_count']}
    files = [Path(p).name for p in old['relative_file_paths']]
    out['relative_file_paths'] = [f'{folder}/{f}' for f in files] if version < 4 else files
    topics = []
    for item in old['topics_with_message_count']:
        meta = item['topic_metadata']
        new = {'name': meta['name'], 'type': meta['type'],
               'serialization_format': meta['serialization_format']}
        if version >= 4:
            # A YAML list from version 9 on, YAML text inside a string before.
            qos = meta.get('offered_qos_profiles', [])
            new['offered_qos_profiles'] = (qos if version >= 9 or isinstance(qos, str)
                                           else yaml.safe_dump(qos))
        if version >= 7:
            new['type_description_hash'] = meta.get('type_description_hash', '')
        topics.append({'topic_metadata': new, 'message_count': item['message_count']})
    out['topics_with_message_count'] = topics
    if version >= 3:
        out['compression_format'] = ''
        out['compression_mode'] = ''
    if version >= 5:
        out['files'] = old['files']
    if version >= 6:
        out['custom_data'] = old.get('custom_data') or {}
    if version >= 8:
        out['ros_distro'] = 'rosbags'
    return {'rosbag2_bagfile_information': out}


@pytest.mark.parametrize('version', range(1, 10))
def test_every_metadata_version_reads_the_same_frames(modern, tmp_path, version):
    bag = tmp_path / f'v{version}'
    shutil.copytree(modern[0], bag)
    info = yaml.safe_load((modern[0] / 'metadata.yaml').read_text())
    assert info['rosbag2_bagfile_information']['version'] == 9
    rewritten = metadata_for_version(info['rosbag2_bagfile_information'], version, bag.name)
    (bag / 'metadata.yaml').write_text(yaml.safe_dump(rewritten))
    want, _, _ = frames_of(modern[0])
    frames, errors, _ = frames_of(bag)
    assert errors == []
    assert [(f.stamp_ns, f.frame_id, f.encoding) for f in frames] == [
        (f.stamp_ns, f.frame_id, f.encoding) for f in want]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, want))
    with BagReader(bag) as reader:
        # custom_data (the label format make-bag stored) exists from version 6 on.
        assert reader.custom_data == ({'evit_ros.label_format': 'camvid'} if version >= 6
                                      else {})
        assert reader.topics == {TOPIC: (IMAGE, 3), LABELS: (IMAGE, 3)}


def write_mcap(path: Path, messages, compression: str, legacy_types=False):
    """An MCAP file with ``compression`` chunks, written by the ``mcap`` package."""
    from mcap.writer import CompressionType, Writer
    store = typestore()
    with open(path, 'wb') as stream:
        writer = Writer(stream, compression=getattr(CompressionType, compression.upper()),
                        chunk_size=200_000)
        writer.start(profile='ros2', library='evit_ros test')
        channels = {}
        for topic, msgtype, stamp, raw in messages:
            if topic not in channels:
                text, _ = store.generate_msgdef(msgtype, ros_version=2)
                schema = writer.register_schema(
                    name=legacy_name(msgtype) if legacy_types else msgtype,
                    encoding='ros2msg', data=text.encode())
                channels[topic] = writer.register_channel(
                    topic=topic, message_encoding='cdr', schema_id=schema,
                    metadata={'offered_qos_profiles': ''})
            writer.add_message(channels[topic], log_time=stamp, publish_time=stamp, data=raw)
        writer.finish()
    return path


def chunk_compressions(path: Path):
    from mcap.reader import make_reader
    with open(path, 'rb') as stream:
        summary = make_reader(stream).get_summary()
    return {index.compression for index in summary.chunk_indexes}


@pytest.mark.parametrize('compression', ['zstd', 'lz4'])
def test_mcap_with_compressed_chunks_replays_like_the_modern_bag(
        modern, modern_result, tmp_path, compression):
    path = write_mcap(tmp_path / f'{compression}.mcap', modern[1], compression)
    assert chunk_compressions(path) == {compression}
    report, maps = run_replay(path, tmp_path / 'out')
    want_report, want_maps = modern_result
    assert (report['frames'], report['frames_scored'], report['miou']) == (
        3, 3, want_report['miou'])
    assert all(np.array_equal(a, b) for a, b in zip(maps, want_maps))


def transcode(messages, fmt, encode):
    """Replace the raw images by CompressedImage messages carrying ``fmt``."""
    store = typestore()
    out = []
    for topic, msgtype, stamp, raw in messages:
        if topic != TOPIC:
            out.append((topic, msgtype, stamp, raw))
            continue
        msg = store.deserialize_cdr(raw, msgtype)
        rgb = np.asarray(msg.data).reshape(msg.height, msg.width, 3)
        data = encode(rgb)
        comp = store.types[COMPRESSED](header=msg.header, format=fmt,
                                       data=np.frombuffer(data, np.uint8))
        out.append((TOPIC + '/compressed', COMPRESSED, stamp,
                    bytes(store.serialize_cdr(comp, COMPRESSED))))
    return out


def png_of_bgr(rgb):
    return cv2.imencode('.png', rgb[:, :, ::-1])[1].tobytes()


def jpeg_of_bgr(rgb):
    return cv2.imencode('.jpg', rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


@pytest.mark.parametrize('fmt, encode', [
    ('rgb8; png compressed bgr8', png_of_bgr),      # Foxy and later
    ('rgb8; png compressed', png_of_bgr),           # older image_transport
    ('png', png_of_bgr),                            # plain, as early drivers wrote it
    ('rgb8; png compressed rgb8', lambda rgb: cv2.imencode('.png', rgb)[1].tobytes()),
])
def test_lossless_format_strings_give_the_raw_label_maps(modern, modern_result, tmp_path,
                                                         fmt, encode):
    messages = transcode(modern[1], fmt, encode)
    path = write_mcap(tmp_path / 'png.mcap', messages, 'zstd')
    frames, errors, _ = frames_of(path, TOPIC + '/compressed')
    want, _, _ = frames_of(modern[0])
    assert errors == [] and len(frames) == 3
    assert frames[0].raw_format == fmt
    # Decoded pixels are the raw frames, whichever channel order the format string names.
    from evit_ros.runtime.image import to_rgb
    for got, raw in zip(frames, want):
        np.testing.assert_array_equal(to_rgb(got.image, got.encoding), raw.image)
    if fmt != 'rgb8; png compressed':
        return   # equal pixels give equal label maps; one replay shows it end to end
    report, maps = run_replay(path, tmp_path / 'out', topic=TOPIC + '/compressed',
                              label_topic=LABELS)
    assert report['frames_scored'] == 3 and report['miou'] == modern_result[0]['miou']
    assert all(np.array_equal(a, b) for a, b in zip(maps, modern_result[1]))


def test_jpeg_format_strings_decode_alike(modern, tmp_path):
    frames = {}
    for fmt in ('bgr8; jpeg compressed bgr8', 'jpeg'):
        path = write_mcap(tmp_path / f'{len(fmt)}.mcap',
                          transcode(modern[1], fmt, jpeg_of_bgr), 'lz4')
        frames[fmt], errors, _ = frames_of(path, TOPIC + '/compressed')
        assert errors == [] and len(frames[fmt]) == 3
    for a, b in zip(*frames.values()):
        assert a.encoding == b.encoding == 'bgr8' and np.array_equal(a.image, b.image)


def restamp(messages, stamp_ns, frame_id, drop_labels=()):
    """Zero (or set) every header stamp and frame id; optionally drop some labels."""
    store = typestore()
    out, seen = [], {}
    for topic, msgtype, stamp, raw in messages:
        index = seen.get(topic, 0)
        seen[topic] = index + 1
        if topic == LABELS and index in drop_labels:
            continue
        msg = store.deserialize_cdr(raw, msgtype)
        msg.header.stamp.sec, msg.header.stamp.nanosec = 0, stamp_ns
        msg.header.frame_id = frame_id
        out.append((topic, msgtype, stamp, bytes(store.serialize_cdr(msg, msgtype))))
    return out


def test_zero_stamps_and_empty_frame_ids(modern, modern_result, tmp_path):
    bag = write_dashing_sqlite(tmp_path / 'zero', restamp(modern[1], 0, ''))
    frames, _, _ = frames_of(bag)
    assert [(f.stamp_ns, f.frame_id) for f in frames] == [(0, '')] * 3
    report, maps = run_replay(bag, tmp_path / 'out')
    assert (report['frames'], report['frames_scored']) == (3, 3)
    assert report['miou'] == modern_result[0]['miou']
    assert all(np.array_equal(a, b) for a, b in zip(maps, modern_result[1]))
    out_frames, _, _ = frames_of(tmp_path / 'out' / 'labels', '/cam/image/label_map')
    assert [(f.stamp_ns, f.frame_id) for f in out_frames] == [(0, '')] * 3


def test_frames_without_ground_truth_get_label_maps_and_latency(
        modern, modern_result, tmp_path):
    first = min(stamp for topic, _, stamp, _ in modern[1] if topic == LABELS)
    kept = [m for m in modern[1] if m[0] != LABELS or m[2] == first]
    bag = write_mcap(tmp_path / 'partial.mcap', kept, 'zstd')
    report, maps = run_replay(bag, tmp_path / 'out')
    # Every frame is segmented, timed and written; only the labelled one is scored.
    assert (report['frames'], report['frames_scored'], report['frames_unlabelled']) == (3, 1, 2)
    assert report['latency_ms']['count'] == 3
    assert len(maps) == 3 and all(np.array_equal(a, b) for a, b in zip(maps, modern_result[1]))
    saved = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert (saved['frames_scored'], saved['frames_unlabelled']) == (1, 2)


def test_file_compressed_bag_reads_the_same_frames(modern, tmp_path):
    """``ros2 bag record --compression-mode file``: each storage file zstd-compressed."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Writer
    bag = tmp_path / 'zstd_file'
    store = typestore()
    writer = Writer(bag, version=9)
    writer.set_compression(CompressionMode.FILE, CompressionFormat.ZSTD)
    with writer:
        connections = {}
        for topic, msgtype, stamp, raw in modern[1]:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(connections[topic], stamp, raw)
    info = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert (info['compression_format'], info['compression_mode'].lower()) == ('zstd', 'file')
    assert all(p.endswith('.zstd') for p in info['relative_file_paths'])
    want, _, _ = frames_of(modern[0])
    frames, errors, _ = frames_of(bag)
    assert errors == [] and len(frames) == 3
    assert all(np.array_equal(a.image, b.image) and a.stamp_ns == b.stamp_ns
               for a, b in zip(frames, want))


def test_calibration_reads_a_bag_with_pre_foxy_type_names(modern, tmp_path):
    from evit_ros.runtime.calibration import CalibrationData
    bag = tmp_path / 'v2'
    shutil.copytree(modern[0], bag)
    info = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    old = metadata_for_version(info, 2, bag.name)
    for item in old['rosbag2_bagfile_information']['topics_with_message_count']:
        item['topic_metadata']['type'] = legacy_name(item['topic_metadata']['type'])
    (bag / 'metadata.yaml').write_text(yaml.safe_dump(old))
    db = sqlite3.connect(next(bag.glob('*.db3')))
    db.execute("UPDATE topics SET type = 'sensor_msgs/Image'")
    db.commit()
    db.close()
    legacy = list(CalibrationData(bag, (32, 32), max_images=3, topic=TOPIC))
    today = list(CalibrationData(modern[0], (32, 32), max_images=3, topic=TOPIC))
    assert len(legacy) == 3 and all(np.array_equal(a, b) for a, b in zip(legacy, today))
