"""``evit-ros make-bag``: image folders (and labels) into real rosbag2 bags."""

import cv2
import numpy as np
import pytest

from conftest import require_shared
from evit_ros.cli import main
from evit_ros.eval.bags import BagReader, COMPRESSED, IMAGE
from evit_ros.eval.make_bag import label_stems, label_topic, make_bag, pair_labels


def frames_of(bag, topic):
    with BagReader(bag) as reader:
        return [frame for _, frame in reader.frames(topic)], reader.topics, reader.custom_data


def write_png(path, pixels):
    assert cv2.imwrite(str(path), pixels)
    return path


def test_camvid_folder_with_labels(tmp_path, capsys):
    images = require_shared('data', 'camvid', 'val')
    labels = require_shared('data', 'camvid', 'valannot')
    bag = tmp_path / 'camvid'
    assert main(['make-bag', '--images', str(images), '--labels', str(labels),
                 '--label-format', 'camvid', '--topic', '/camvid/image', '--rate', '15',
                 '--max-frames', '5', '--storage', 'sqlite3', '-o', str(bag)]) == 0
    assert capsys.readouterr().out.startswith(
        f'wrote {bag}: 5 frames on /camvid/image, 5 labels on /camvid/image/label_gt')
    frames, topics, custom = frames_of(bag, '/camvid/image')
    labels_read, _, _ = frames_of(bag, '/camvid/image/label_gt')
    assert topics == {'/camvid/image': (IMAGE, 5), '/camvid/image/label_gt': (IMAGE, 5)}
    assert custom == {'evit_ros.label_format': 'camvid'}
    names = sorted(p.name for p in images.iterdir())[:5]
    for i, (frame, label, name) in enumerate(zip(frames, labels_read, names)):
        rgb = cv2.cvtColor(cv2.imread(str(images / name)), cv2.COLOR_BGR2RGB)
        assert frame.encoding == 'rgb8' and np.array_equal(frame.image, rgb)
        truth = cv2.imread(str(labels / name), cv2.IMREAD_UNCHANGED)
        assert label.encoding == 'mono8' and np.array_equal(label.image, truth)
        # Stamps 1/15 s apart; header stamp == bag time; label stamped like its image.
        assert frame.stamp_ns - frames[0].stamp_ns == round(i * 1e9 / 15)
        assert frame.bag_time_ns == frame.stamp_ns == label.stamp_ns == label.bag_time_ns
        assert frame.frame_id == label.frame_id == 'camera'


def test_cityscapes_names_pair_by_label_format(tmp_path):
    images, labels = tmp_path / 'img', tmp_path / 'gt'
    images.mkdir()
    labels.mkdir()
    write_png(images / 'aachen_000000_000019_leftImg8bit.png', np.zeros((4, 8, 3), np.uint8))
    ids = write_png(labels / 'aachen_000000_000019_gtFine_labelIds.png',
                    np.full((4, 8), 7, np.uint8))
    train = write_png(labels / 'aachen_000000_000019_gtFine_labelTrainIds.png',
                      np.zeros((4, 8), np.uint8))
    image_list = sorted(images.iterdir())
    assert list(pair_labels(image_list, labels, 'cityscapes').values()) == [ids]
    assert list(pair_labels(image_list, labels, 'trainid').values()) == [train]
    assert label_stems('0016E5_07959', 'camvid') == ['0016E5_07959']
    bag = make_bag(images, tmp_path / 'bag', '/cs', labels_dir=labels,
                   label_format='cityscapes', frame_id='cam_front', start_ns=5)
    assert (bag.frames, bag.labelled) == (1, 1)
    (label,), _, custom = frames_of(tmp_path / 'bag', '/cs/label_gt')
    assert label.image.tolist() == np.full((4, 8), 7).tolist()
    assert (label.stamp_ns, label.frame_id) == (5, 'cam_front')
    assert custom == {'evit_ros.label_format': 'cityscapes'}


@pytest.mark.parametrize('encoding', ['png', 'jpeg', 'bgr8'])
def test_encodings(tmp_path, encoding):
    images = tmp_path / 'img'
    images.mkdir()
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), (9, 9), 3)
    write_png(images / 'a.png', smooth)
    write_png(images / 'b.png', smooth[::-1].copy())
    labels = tmp_path / 'gt'
    labels.mkdir()
    write_png(labels / 'a.png', np.full((32, 48), 3, np.uint8))
    topic = '/cam/image/compressed' if encoding != 'bgr8' else '/cam/image'
    make_bag(images, tmp_path / 'bag', topic, labels_dir=labels, label_format='trainid',
             encoding=encoding, rate=4)
    frames, topics, _ = frames_of(tmp_path / 'bag', topic)
    assert topics[topic][0] == (COMPRESSED if encoding != 'bgr8' else IMAGE)
    # Labels lie beside the base topic, never compressed; b.png had no label.
    assert label_topic(topic) == '/cam/image/label_gt'
    assert topics['/cam/image/label_gt'] == (IMAGE, 1)
    assert [f.encoding for f in frames] == ['bgr8', 'bgr8']
    assert frames[1].stamp_ns - frames[0].stamp_ns == 250_000_000
    error = np.abs(frames[0].image.astype(int) - smooth).mean()
    assert error == 0 if encoding != 'jpeg' else error < 3


def cli_error(capsys, args):
    code = main(['make-bag'] + args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and '\n' not in err and 'Traceback' not in err
    return err


def test_errors_are_one_line(tmp_path, capsys):
    images = tmp_path / 'img'
    images.mkdir()
    write_png(images / 'a.png', np.zeros((4, 4, 3), np.uint8))
    out = str(tmp_path / 'bag')
    assert 'needs --label-format' in cli_error(
        capsys, ['--images', str(images), '--labels', str(images), '--topic', '/t', '-o', out])
    assert 'image folder' in cli_error(
        capsys, ['--images', str(tmp_path / 'none'), '--topic', '/t', '-o', out])
    assert 'rate must be positive' in cli_error(
        capsys, ['--images', str(images), '--topic', '/t', '--rate', '0', '-o', out])
    # A colour label image is refused and the half-written bag removed.
    colour = tmp_path / 'colour'
    colour.mkdir()
    write_png(colour / 'a.png', np.dstack([np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8),
                                           np.zeros((4, 4), np.uint8)]))
    assert 'is a colour image' in cli_error(
        capsys, ['--images', str(images), '--labels', str(colour), '--label-format', 'camvid',
                 '--topic', '/t', '-o', out])
    assert not (tmp_path / 'bag').exists()
    # A label that does not fit its image.
    small = tmp_path / 'small'
    small.mkdir()
    write_png(small / 'a.png', np.zeros((2, 2), np.uint8))
    assert 'label is 2x2 but the image is 4x4' in cli_error(
        capsys, ['--images', str(images), '--labels', str(small), '--label-format', 'trainid',
                 '--topic', '/t', '-o', out])
    other = tmp_path / 'other'
    other.mkdir()
    write_png(other / 'z.png', np.zeros((4, 4), np.uint8))
    assert 'none of the 1 images' in cli_error(
        capsys, ['--images', str(images), '--labels', str(other), '--label-format',
                 'trainid', '--topic', '/t', '-o', out])
    (tmp_path / 'bag').mkdir()
    assert 'exists; choose another -o' in cli_error(
        capsys, ['--images', str(images), '--topic', '/t', '-o', out])
