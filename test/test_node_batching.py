"""Several cameras, one model, without DDS: camera names, round-robin batches, the batch
inference against single images, and the consumer outputs (PNG label maps, confidence)."""

import threading

import cv2
import numpy as np
import pytest
from std_msgs.msg import Header

from evit_ros.ros.batching import BatchGate
from evit_ros.ros.cameras import camera_info_topic, camera_name, check_cameras
from evit_ros.ros.diagnostics import FrameCounters
from evit_ros.ros.messages import label_map_to_png
from evit_ros.runtime.confidence import confidence_map


def test_camera_names_and_camera_info_next_to_the_image():
    assert camera_name('/front/image_raw') == 'front'
    assert camera_name('/robot/left/image') == 'left'
    assert camera_info_topic('/front/image_raw') == '/front/camera_info'
    assert camera_info_topic('/segmentation_node/image') == '/segmentation_node/camera_info'
    assert camera_info_topic('/image') == '/camera_info'
    assert check_cameras(['/front/image_raw', '/left/image_raw']) == ['front', 'left']
    with pytest.raises(ValueError, match="both name a camera 'front'"):
        check_cameras(['/front/image_raw', '/a/front/image'])
    with pytest.raises(ValueError, match='no namespace'):
        check_cameras(['/image_raw'])
    with pytest.raises(ValueError, match='must be absolute'):
        check_cameras(['front/image_raw'])


def test_batch_takes_every_waiting_camera_up_to_max_batch():
    gate = BatchGate(3)
    for index, slot in enumerate(gate.slots):
        slot.put(f'frame{index}')
    assert gate.take(4) == [(0, 'frame0'), (1, 'frame1'), (2, 'frame2')]
    assert [slot.counters().in_flight for slot in gate.slots] == [1, 1, 1]
    assert gate.take(4, timeout=0.01) == []
    gate.close()
    assert gate.take(4) is None


def test_round_robin_serves_every_camera_under_overload():
    """Every camera always has a frame waiting; batches of 2 out of 3 cameras rotate."""
    gate = BatchGate(3)
    served = [0, 0, 0]
    for _ in range(30):
        for slot in gate.slots:
            slot.put('frame')              # overload: each camera replaces its last frame
        for index, _ in gate.take(2):
            served[index] += 1
            gate.slots[index].done(processed=True)
    assert served == [20, 20, 20]
    for slot in gate.slots:
        counters = slot.counters()
        assert counters.received == counters.processed + counters.dropped + counters.in_flight


def test_one_worker_wakes_for_any_camera():
    gate = BatchGate(3)
    got = []
    worker = threading.Thread(target=lambda: got.append(gate.take(4)))
    worker.start()
    gate.slots[2].put('late camera')
    worker.join(5.0)
    assert got == [[(2, 'late camera')]]
    assert gate.slots[2].counters() == FrameCounters(received=1, in_flight=1)


def test_a_second_worker_skips_cameras_whose_frame_is_in_a_worker():
    """Several workers: a camera has one frame in a worker at a time (outputs in order);
    its next frame waits for that one to be done, then wakes a waiting worker."""
    gate = BatchGate(2)
    gate.slots[0].put('front 1')
    assert gate.take(1) == [(0, 'front 1')]          # worker A
    gate.slots[0].put('front 2')
    assert gate.take(1, timeout=0.05) == []           # worker B: front is busy in A
    gate.slots[1].put('left 1')
    assert gate.take(4) == [(1, 'left 1')]            # B takes the free camera only
    got = []
    worker_b = threading.Thread(target=lambda: got.append(gate.take(4)))
    worker_b.start()
    worker_b.join(0.2)
    assert worker_b.is_alive() and not got             # front 2 still waits for A
    gate.slots[0].done(processed=True)                 # A is done with front 1
    worker_b.join(5.0)
    assert got == [[(0, 'front 2')]]
    gate.close()


def test_png_label_map_decodes_to_the_label_map_exactly():
    rng = np.random.default_rng(3)
    for dtype, encoding in ((np.uint8, 'mono8'), (np.uint16, 'mono16')):
        label_map = rng.integers(0, 150 if dtype == np.uint8 else 1000, (64, 96)).astype(dtype)
        msg = label_map_to_png(label_map, Header(frame_id='cam'))
        assert msg.format == f'{encoding}; png compressed '
        assert msg.header.frame_id == 'cam'
        decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.dtype == dtype
        np.testing.assert_array_equal(decoded, label_map)


def test_confidence_is_the_winning_softmax_probability():
    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 0, 0, 0] = 10.0                       # nearly certain
    logits[0, :, 1, 1] = [1.0, 1.0, 0.0]            # a tie between two classes
    confidence = confidence_map(logits, (2, 2))
    assert confidence.dtype == np.uint8 and confidence.shape == (2, 2)
    assert confidence[0, 0] == 255
    assert confidence[0, 1] == 85                    # uniform over 3 classes: 1/3
    e = np.exp(1.0)
    assert confidence[1, 1] == round(255 * e / (2 * e + 1))
    assert confidence_map(logits, (16, 16)).shape == (16, 16)


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
def test_segment_batch_equals_single_images(backend, official_weights):
    """One inference on N images gives each image the label map segment() gives it."""
    from evit_ros.runtime import Segmenter
    segmenter = Segmenter('b0-cityscapes', backend=backend, input_size=(128, 256))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96 + 16 * i, 200, 3), dtype=np.uint8) for i in range(3)]
    singles, single_logits = [], []
    for image in images:
        singles.append(segmenter.segment(image))
        single_logits.append(segmenter.logits.clone())
    batch = segmenter.segment_batch(images, ['rgb8'] * 3, [None, (64, 128), None])
    assert tuple(segmenter.logits.shape[:2]) == (3, 19)
    np.testing.assert_array_equal(batch[0], singles[0])
    np.testing.assert_array_equal(batch[2], singles[2])
    assert batch[1].shape == (64, 128)
    for index in range(3):
        np.testing.assert_allclose(segmenter.logits[index].numpy(),
                                   single_logits[index][0].numpy(), atol=1e-3)
    if backend == 'onnxruntime':
        assert segmenter.backend.batched        # one run, not a loop over images
