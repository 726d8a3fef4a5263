"""Outputs for consumers and the node's ROS conventions, over real DDS between processes:
confidence and PNG label maps, QoS overrides seen in the ROS graph, the silent-input
warning, diagnostics where the newest event speaks, and the Humble fallback for
``add_post_set_parameters_callback``."""

import sys

import cv2
import numpy as np
import pytest
from conftest import require_shared
from ros_harness import NODE, Session, stamp_ns, TIMEOUT, TOPIC

NETWORK = (128, 256)


@pytest.fixture(scope='module')
def weights_dir():
    return require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt').parent


@pytest.fixture(scope='module')
def frame():
    path = sorted(require_shared('data', 'frames').glob('*_leftImg8bit.png'))[0]
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def by_stamp(messages, stamp):
    return next((m for m in messages if stamp_ns(m.header) == stamp), None)


def test_confidence_and_png_label_map_match_the_label_map(weights_dir, frame, tmp_path):
    from sensor_msgs.msg import CompressedImage, Image
    from evit_ros.runtime import Segmenter
    from evit_ros.runtime.confidence import confidence_map
    params = {'backend': 'torch', 'network_height': NETWORK[0], 'network_width': NETWORK[1],
              'diagnostics_period': 0.2, 'latency_budget_ms': 100000.0}
    session = Session(params, tmp_path, weights_dir)
    client = session.client
    try:
        session.wait_ready()
        session.warm_up(frame)
        # Lazy: nothing is computed for nobody.
        status = session.settled()
        assert 'confidence_published' not in status
        assert 'label_map/compressed_published' not in status
        confidences = client.subscribe(Image, TOPIC + 'confidence')
        pngs = client.subscribe(CompressedImage, TOPIC + 'label_map/compressed')
        client.wait_for(lambda: session.image_pub.get_subscription_count(), TIMEOUT, 'node')
        for _ in range(10):
            stamp = session.send(frame, frame_id='cam', wait=False)
            try:
                client.wait_for(lambda: by_stamp(confidences, stamp) and by_stamp(pngs, stamp),
                                TIMEOUT / 3, 'confidence and png')
                break
            except AssertionError:
                continue
        label_msg = session.label_map(stamp)
        label_map = np.frombuffer(label_msg.data, np.uint8).reshape(label_msg.height,
                                                                    label_msg.width)
        confidence = by_stamp(confidences, stamp)
        assert confidence.header == label_msg.header
        assert (confidence.encoding, confidence.height, confidence.width) == (
            'mono8', label_msg.height, label_msg.width)
        png = by_stamp(pngs, stamp)
        assert png.header == label_msg.header and png.format == 'mono8; png compressed '
        decoded = cv2.imdecode(np.frombuffer(bytes(png.data), np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decoded, label_map)     # lossless
        # The confidence is the offline model's winning softmax probability.
        segmenter = Segmenter('b0-cityscapes', backend='torch', input_size=NETWORK,
                              weights=str(weights_dir / 'efficientvit_seg_b0_cityscapes.pt'))
        segmenter.segment(frame)
        expected = confidence_map(segmenter.logits, label_map.shape)
        got = np.frombuffer(confidence.data, np.uint8).reshape(label_map.shape)
        assert np.abs(got.astype(int) - expected).max() <= 1
        assert 100 < got.mean() < 255
    finally:
        session.close()


def test_confidence_separates_right_from_wrong_on_camvid(official_weights):
    """On a few CamVid val frames, low-confidence pixels are wrong far more often."""
    from evit_ros.eval.confidence import confidence_errors
    from evit_ros.eval.labels import MAPPINGS
    from evit_ros.runtime import Segmenter
    camvid = require_shared('data', 'camvid')
    segmenter = Segmenter('b0-cityscapes', backend='torch', input_size=(384, 480))
    images = sorted((camvid / 'val').glob('*.png'))[::40]
    result = confidence_errors(segmenter, images, camvid / 'valannot', MAPPINGS['camvid'])
    assert result.frames == 3 and result.low_pixels > 1000 and result.high_pixels > 100000
    assert result.low_error_rate > 0.3
    assert result.high_error_rate < 0.05
    assert result.low_error_rate > 10 * result.high_error_rate


def test_qos_overrides_silence_and_newest_diagnostics_with_the_humble_fallback(
        weights_dir, frame, tmp_path):
    """The node runs with rclpy's ``add_post_set_parameters_callback`` deleted (as on
    Humble), input and output QoS overridden through ``qos_overrides.*``, and a budget
    every frame misses."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    image = '/cam/image_raw'
    params = {'backend': 'torch', 'network_height': 64, 'network_width': 128,
              'diagnostics_period': 0.2, 'latency_budget_ms': 0.001,
              f'qos_overrides.{image}.subscription.reliability': 'reliable',
              f'qos_overrides.{image}.subscription.depth': 7,
              f'qos_overrides.{NODE}/label_map.publisher.reliability': 'best_effort'}
    hide = ('import sys, rclpy.node; del rclpy.node.Node.add_post_set_parameters_callback; '
            'from evit_ros.ros.segmentation_node import main; sys.exit(main())')
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    session = Session(params, tmp_path, weights_dir, remaps=[f'~/image:={image}'],
                      image_topic=image, image_qos=reliable,
                      command=[sys.executable, '-c', hide])
    client = session.client
    try:
        # Nobody publishes yet... only the client's publisher exists: the node names both.
        silent = session.status(lambda s: s['level'] == 1, 'the silent-input warning')
        assert silent['message'].startswith(f'nothing published on {image} for ')
        assert silent['message'].endswith('publishers seen: /evit_ros_test_client')
        session.wait_ready()
        assert f'nothing published on {image}' in session.node.log()

        # The overrides as the ROS graph sees them (DDS discovery, not the node's word).
        subscription = client.node.get_subscriptions_info_by_topic(image)[0]
        assert subscription.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        publisher = client.node.get_publishers_info_by_topic(TOPIC + 'label_map')[0]
        assert publisher.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        # ...and as parameters, read-only like every start-up parameter.
        assert client.get_parameters([f'qos_overrides.{image}.subscription.depth']) == [7]
        refused = client.set_parameters(
            {f'qos_overrides.{image}.subscription.depth': 3})[0]
        assert not refused.successful and 'read-only' in refused.reason

        # Every frame misses the budget: WARN, then ERROR after ten in a row.
        best_effort = client.subscribe(Image, TOPIC + 'label_map', QoSProfile(
            depth=50, reliability=ReliabilityPolicy.BEST_EFFORT))
        for _ in range(12):
            stamp = session.send(frame[:64, :128].copy(), wait=False)
            client.wait_for(lambda: by_stamp(best_effort, stamp), TIMEOUT, 'a label map')
        error = session.status(lambda s: s['level'] == 2, 'the over-budget error')
        assert error['message'].startswith('over latency budget on the last 1')
        # A newer, more specific message wins over the stale error...
        bad = Image(height=2, width=2, encoding='bayer_rggb8', step=2, data=bytes(4))
        session.image_pub.publish(bad)
        rejected = session.status(lambda s: s['message'].startswith('rejected frame'),
                                  'the rejection')
        assert rejected['level'] == 1 and "'bayer_rggb8'" in rejected['message']
        # ...and so does the silence that follows.
        quiet = session.status(lambda s: s['message'].startswith('no image for'), 'silence')
        assert quiet['level'] == 1 and image in quiet['message']

        # A runtime change still applies through the fallback path.
        assert client.set_parameters({'latency_budget_ms': 100000.0})[0].successful
        session.status(lambda s: s['latency_budget_ms'] == '100000', 'the new budget')
    finally:
        session.close()
