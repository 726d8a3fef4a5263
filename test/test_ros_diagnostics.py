"""The node's bookkeeping without DDS: latency windows, health levels, the frame slot,
and the parameter table (checks, runtime refusals, descriptors)."""

import threading

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from evit_ros.ros.diagnostics import (auto_budget_ms, FrameCounters, LatencyWindow,
                                      NodeHealth, RECENT_S, SUSTAINED_FRAMES, WINDOW)
from evit_ros.ros.latest_slot import LatestSlot
from evit_ros.ros.parameters import (check_settings, markdown_table, ParameterError,
                                     PARAMETERS, refusal, SPECS)

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
RUNNING = FrameCounters(received=10, processed=10)


def test_latency_window_percentiles_match_numpy_over_the_last_samples():
    window = LatencyWindow()
    assert window.summary() == {}
    samples = np.random.default_rng(1).gamma(2.0, 10.0, WINDOW + 50)
    for value in samples:
        window.add(value)
    kept = samples[-WINDOW:]
    summary = window.summary()
    assert len(window) == WINDOW
    for q in (50, 95, 99):
        assert summary[f'p{q}'] == pytest.approx(np.percentile(kept, q))
    assert summary['max'] == kept.max()


def frame(node_ms, **other):
    return dict(preprocess=1.0, inference=node_ms / 2, postprocess=1.0, total=node_ms / 2 + 2,
                node=node_ms, **other)


def test_waiting_then_ok_with_rate():
    health = NodeHealth(100.0, '/cam/image')
    level, message = health.judge(0.0, FrameCounters())
    assert (level, message) == (OK, 'waiting for first image on /cam/image')
    health.status(0.0, FrameCounters(), 'n', 'cpu')
    health.record_image(1.0)
    health.record_frame(1.0, frame(50.0))
    status = health.status(2.0, FrameCounters(received=20, processed=20), 'n', 'cpu')
    assert (status.level, status.message) == (OK, 'segmenting at 10.0 Hz')  # 20 in 2 s


def test_nothing_published_names_the_topic_and_the_publishers_seen():
    health = NodeHealth(100.0, '/segmentation_node/image', started=10.0)
    assert health.judge(10.0 + RECENT_S - 0.1, FrameCounters())[0] == OK
    assert health.judge(10.0 + RECENT_S + 1.0, FrameCounters()) == (
        WARN, f'nothing published on /segmentation_node/image for {RECENT_S + 1.0:.1f} s; '
              'publishers seen: none')
    health.publishers = ['/camera/driver']
    assert health.judge(20.0, FrameCounters())[1].endswith('publishers seen: /camera/driver')
    health.restart(30.0)                             # lifecycle activate: the clock restarts
    assert health.judge(31.0, FrameCounters())[0] == OK


def test_over_budget_is_judged_per_frame_not_per_second():
    health = NodeHealth(100.0)
    health.record_image(10.0)
    health.record_frame(10.0, frame(150.0))
    level, message = health.judge(10.5, RUNNING)
    assert level == WARN and message == 'over latency budget: last frame 150.0 ms > 100 ms'
    # Time alone never escalates it: still one frame over budget, much later.
    assert health.judge(14.0, RUNNING)[0] == WARN
    for index in range(SUSTAINED_FRAMES - 1):
        health.record_image(11.0 + index)
        health.record_frame(11.0 + index, frame(120.0))
    level, message = health.judge(11.0 + SUSTAINED_FRAMES, RUNNING)
    assert level == ERROR and message == (
        f'over latency budget on the last {SUSTAINED_FRAMES} frames: last frame 120.0 ms '
        '> 100 ms')
    health.record_frame(30.0, frame(80.0))          # one frame within budget resets it
    health.record_image(30.0)
    assert health.judge(30.0, RUNNING)[0] == OK
    health.budget_ms = 50.0                          # a runtime change applies to new frames
    health.record_frame(30.5, frame(80.0))
    assert health.judge(30.5, RUNNING)[0] == WARN


def test_newer_silence_or_rejection_wins_over_a_stale_over_budget_error():
    health = NodeHealth(100.0, '/cam/image')
    for index in range(SUSTAINED_FRAMES):
        health.record_image(float(index))
        health.record_frame(float(index), frame(500.0))
    last = SUSTAINED_FRAMES - 1.0
    assert health.judge(last, RUNNING)[0] == ERROR
    health.record_rejection(last + 1.0, "unsupported encoding 'bayer_rggb8'")
    assert health.judge(last + 1.0, RUNNING) == (
        WARN, "rejected frame: unsupported encoding 'bayer_rggb8'")
    # No image since: after RECENT_S the silence is the newest news.
    assert health.judge(last + RECENT_S + 2.0, RUNNING) == (
        WARN, f'no image for {RECENT_S + 2.0:.1f} s on /cam/image; publishers seen: none')


def test_rejections_warn_while_recent_and_failures_error_until_a_good_frame():
    health = NodeHealth(100.0)
    health.record_image(0.0)
    health.record_rejection(1.0, "unsupported encoding 'bayer_rggb8'")
    assert health.judge(1.0, RUNNING) == (WARN, "rejected frame: unsupported encoding "
                                                "'bayer_rggb8'")
    health.record_image(1.0 + RECENT_S + 0.1)
    assert health.judge(1.0 + RECENT_S + 0.1, RUNNING)[0] == OK
    assert health.last_rejection == "unsupported encoding 'bayer_rggb8'"
    health.record_failure(8.0, 'RuntimeError: CUDA error: out of memory')
    assert health.judge(8.0, RUNNING) == (ERROR, 'backend failed: RuntimeError: CUDA error: '
                                                 'out of memory')
    health.record_frame(9.0, frame(10.0))
    assert health.judge(9.0, RUNNING)[0] != ERROR


def test_silence_after_images_warns():
    health = NodeHealth(100.0, '/cam/image')
    health.record_image(1.0)
    health.record_frame(1.0, frame(10.0))
    assert health.judge(1.0 + RECENT_S + 1.0, RUNNING) == (
        WARN, f'no image for {RECENT_S + 1.0:.1f} s on /cam/image; publishers seen: none')


def test_auto_budget_follows_the_device_and_the_warm_up():
    assert auto_budget_ms('cpu', 50.0) == 1000.0       # CPU floor
    assert auto_budget_ms('cpu', 900.0) == 2700.0      # 3x a slow warm-up frame
    assert auto_budget_ms('cuda:0', 10.0) == 100.0     # GPU floor
    assert auto_budget_ms('cuda', 60.0) == 180.0


def test_status_key_values():
    health = NodeHealth(100.0)
    health.record_image(0.0)
    for ms in (10.0, 20.0, 30.0):
        health.record_frame(0.0, frame(ms, pipeline=ms + 5))
    health.record_output('overlay')
    counters = FrameCounters(received=6, processed=3, dropped=2, rejected=1, in_flight=0)
    status = health.status(1.0, counters, '/seg: segmentation', 'cpu@host',
                           [('model', 'b0-cityscapes')])
    values = {kv.key: kv.value for kv in status.values}
    assert (status.name, status.hardware_id) == ('/seg: segmentation', 'cpu@host')
    assert values['model'] == 'b0-cityscapes'
    assert [values[f'frames_{k}'] for k in ('received', 'processed', 'dropped', 'rejected',
                                            'in_flight')] == ['6', '3', '2', '1', '0']
    assert values['node_ms_p50'] == '20.000' and values['node_ms_max'] == '30.000'
    assert values['pipeline_ms_p50'] == '25.000'
    assert values['overlay_published'] == '1'
    assert values['latency_budget_ms'] == '100'


def test_latest_slot_keeps_the_newest_and_counts_the_rest():
    slot = LatestSlot()
    assert slot.put('a') is False
    assert slot.put('b') is True                 # 'a' overwritten before being taken
    slot.reject()
    assert slot.counters() == FrameCounters(received=3, dropped=1, rejected=1, in_flight=1)
    assert slot.take() == 'b'
    assert slot.counters().in_flight == 1
    slot.done(processed=True)
    assert slot.take(timeout=0.01) is None
    slot.close()
    assert slot.take() is None and slot.closed


def test_latest_slot_accounting_holds_under_threads():
    slot = LatestSlot()
    taken = []

    def worker():
        while True:
            item = slot.take()
            if item is None:
                return
            taken.append(item)
            slot.done(processed=item % 7 != 0)   # every seventh is "rejected" by the worker
    thread = threading.Thread(target=worker)
    thread.start()
    for index in range(1, 5001):
        slot.put(index)
        if index % 1000 == 0:
            slot.reject()
    while slot.counters().in_flight:
        pass
    slot.close()
    thread.join(5)
    counters = slot.counters()
    assert counters.received == 5005
    assert counters.received == (counters.processed + counters.dropped + counters.rejected
                                 + counters.in_flight)
    assert taken == sorted(taken) and taken[-1] == 5000   # newest always wins, in order
    assert counters.processed + counters.rejected - 5 == len(taken)


def test_parameter_table_checks_values():
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    settings = check_settings(defaults)
    assert settings.network_size is None and settings.backend == 'auto'
    assert check_settings({**defaults, 'network_height': 256,
                           'network_width': 512}).network_size == (256, 512)
    assert check_settings({**defaults, 'model': 'efficientvit-seg-l1-ade20k'})
    cases = {
        'network_height': (100, 'network_height must be 0 (model default) or a multiple of 32 '
                                'up to 8192, got 100'),
        'backend': ('tensorrtx', "backend must be one of auto, tensorrt, onnxruntime, torch, "
                                 "got 'tensorrtx'"),
        'model': ('b9-mars', "unknown model 'b9-mars'; valid models: b0-cityscapes"),
        'device': ('gpu', "device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        'overlay_alpha': (1.5, 'overlay_alpha must be a number from 0 to 1, got 1.5'),
        'qos_depth': (0, 'qos_depth must be an integer from 1 to 100, got 0'),
        'weights': ('/no/such.pt', "weights file '/no/such.pt' does not exist"),
        'latency_budget_ms': ('fast', "latency_budget_ms must be a double, got 'fast'"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ParameterError) as error:
            check_settings({**defaults, name: value})
        assert str(error.value).startswith(message), name
    with pytest.raises(ParameterError, match='set both'):
        check_settings({**defaults, 'network_width': 512})


def test_runtime_changes_refused_for_start_up_parameters():
    assert refusal('model', 'b0-cityscapes', 'b1-cityscapes') == (
        'model is read at start-up only; restart the node with -p model:=b1-cityscapes (or '
        'change it in the launch/params file)')
    assert refusal('model', 'b0-cityscapes', 'b0-cityscapes') is None
    assert refusal('overlay_alpha', 0.5, 0.25) is None
    assert refusal('output_resolution', 'input', 'camera').startswith(
        'output_resolution must be one of input, network')
    assert refusal('use_sim_time', False, True) is None      # ROS's own, not ours
    runtime = {spec.name for spec in PARAMETERS if spec.runtime}
    for spec in PARAMETERS:
        assert spec.descriptor().read_only == (not spec.runtime), spec.name
    assert runtime == {'output_resolution', 'overlay_alpha', 'latency_budget_ms',
                       'diagnostics_period'}


def test_descriptors_carry_ranges_and_descriptions():
    height = SPECS['network_height'].descriptor()
    assert (height.integer_range[0].from_value, height.integer_range[0].to_value,
            height.integer_range[0].step) == (0, 8192, 32)
    alpha = SPECS['overlay_alpha'].descriptor()
    assert (alpha.floating_point_range[0].from_value,
            alpha.floating_point_range[0].to_value) == (0.0, 1.0)
    for spec in PARAMETERS:
        descriptor = spec.descriptor()
        assert descriptor.description and descriptor.additional_constraints, spec.name
    table = markdown_table()
    assert all(f'| `{spec.name}` |' in table for spec in PARAMETERS)
