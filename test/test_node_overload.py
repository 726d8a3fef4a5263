"""Overload: frames published at >= 4x the node's rate for 20 s.

With a depth-1 latest-wins slot, a frame waits at most for the frame being processed, so
the pipeline latency (image stamp to label map) stays below ~2 processing times however
fast frames come: p99 must stay below 3x the median inference time, and every frame the
node could not process is counted as dropped. This is about queueing, not speed: all
times are the node's own, taken from /diagnostics.

The network runs at 512x1024 on 128x256 frames (the shared frames, halved) so that inference
dominates the processing time: upsampling the logits to the frame and the argmax cost the
same at any network size, and at 256x512 they take half as long as B0's inference on a CPU.
"""

import time

import cv2
import pytest
from conftest import require_shared
from ros_harness import counts, image_msg, Session

OVERLOAD_S = 20.0
# One inference thread: on a 2-core machine shared with the publisher (and, here, other
# jobs) two threads make inference times swing by 5x, which is noise, not queueing.
PARAMS = {'backend': 'torch', 'network_height': 512, 'network_width': 1024, 'cpu_threads': 1,
          'diagnostics_period': 0.5, 'latency_budget_ms': 1.0}


@pytest.fixture
def frames():
    paths = sorted(require_shared('data', 'frames').glob('*_leftImg8bit.png'))
    return [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (256, 128),
                       interpolation=cv2.INTER_AREA) for p in paths]


def test_overload_drops_stale_frames_instead_of_queueing(frames, tmp_path):
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt').parent
    session = Session(PARAMS, tmp_path, weights)
    try:
        session.wait_ready()
        session.warm_up(frames[0])
        for frame in frames[1:3]:
            session.send(frame)
        warm = session.settled()
        # Sequential frames: node latency is one processing time. Warm-up frames are the
        # slowest, so publish well above 4x their rate; the check below uses the real rate.
        rate_hz = 1000.0 / float(warm['node_ms_p50'])
        publish_hz = min(max(60.0, 8.0 * rate_hz), 200.0)
        messages = [image_msg(frame, 0, 'camera') for frame in frames]
        base = counts(warm)
        first_map = len(session.label_maps)

        published = 0
        start = time.monotonic()
        while time.monotonic() - start < OVERLOAD_S:
            msg = messages[published % len(messages)]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(session.next_stamp(), 10**9)
            session.image_pub.publish(msg)
            published += 1
            time.sleep(max(0.0, start + published / publish_hz - time.monotonic()))
        elapsed = time.monotonic() - start

        end = session.settled()
        now = counts(end)
        delta = {k: now[k] - base[k] for k in now}
        # Every frame is accounted for; nothing waits in a queue.
        assert now['received'] == now['processed'] + now['dropped'] + now['rejected']
        assert delta['rejected'] == 0 and delta['in_flight'] == 0
        assert delta['received'] <= published
        assert delta['processed'] >= 3, delta
        # Published at >= 4x the rate the node kept up during the overload.
        assert published / elapsed >= 4 * delta['processed'] / elapsed, (published, delta)
        assert delta['dropped'] >= delta['received'] // 2, delta
        assert len(session.label_maps) - first_map == delta['processed']

        inference_p50 = float(end['inference_ms_p50'])
        pipeline_p99 = float(end['pipeline_ms_p99'])
        print(f'overload: p99 pipeline {pipeline_p99:.0f} ms = '
              f'{pipeline_p99 / inference_p50:.1f}x the median inference {inference_p50:.0f} ms')
        assert pipeline_p99 < 3.0 * inference_p50, (pipeline_p99, inference_p50, end)

        # Every frame over the (tiny) budget: ERROR, saying over how many frames.
        assert end['level'] == 2
        assert end['message'].startswith('over latency budget on the last '), end['message']
    finally:
        session.close()
