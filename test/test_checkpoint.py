"""Loading checkpoints: strictly, safely, and with one clear line when it cannot be done."""

import shutil

from conftest import require_shared
import pytest
import torch

from evit_ros.model import CheckpointError, create_model, load_checkpoint
from evit_ros.weights import WeightsNotFound

B0_FILE = 'efficientvit_seg_b0_cityscapes.pt'


@pytest.fixture
def b0_file():
    """The official B0 Cityscapes checkpoint; skips when the shared folder is absent."""
    return require_shared('weights', B0_FILE)


@pytest.fixture
def b0_tensors(b0_file):
    """The tensors stored in the official B0 checkpoint."""
    return torch.load(b0_file, map_location='cpu', weights_only=True)['state_dict']


def assert_one_clear_line(message, path):
    assert '\n' not in message
    assert 'Traceback' not in message
    assert '\x1b' not in message                       # no terminal colour codes
    assert 'weights_only' not in message               # never advise turning safety off
    assert str(path) in message


def assert_holds(model, tensors):
    state = model.state_dict()
    assert list(state) == list(tensors)
    for key, value in tensors.items():
        assert torch.equal(state[key], value), key


def test_official_b0_loads_strictly_from_a_path(b0_file, b0_tensors):
    assert len(b0_tensors) == 230
    model = create_model('b0-cityscapes', weights=b0_file)
    assert not model.training
    assert_holds(model, b0_tensors)


def test_official_b0_loads_by_name(official_weights, b0_tensors):
    model = create_model('efficientvit-seg-b0-cityscapes', weights='official')
    assert_holds(model, b0_tensors)


def test_a_bare_state_dict_file_loads(tmp_path, b0_tensors):
    path = tmp_path / 'bare.pt'
    torch.save(b0_tensors, path)
    assert_holds(create_model('b0-cityscapes', weights=path), b0_tensors)
    assert_holds(create_model('b0-cityscapes', weights=str(path)), b0_tensors)


def test_a_round_trip_of_a_random_model_is_exact(tmp_path):
    torch.manual_seed(0)
    source = create_model('b1-ade20k')
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'b1.pt')
    assert_holds(create_model('b1-ade20k', weights=tmp_path / 'b1.pt'), source.state_dict())


def test_another_models_checkpoint_names_unexpected_and_misshaped_keys(tmp_path):
    path = tmp_path / 'b1.pt'
    torch.save({'state_dict': create_model('b1-cityscapes').state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        create_model('b0-cityscapes', weights=path)
    message = str(info.value)
    assert_one_clear_line(message, path)
    assert 'b0-cityscapes' in message
    # b1 has 341 tensors, b0 230: 111 extra; 197 of the shared keys differ in shape.
    assert '111 unexpected' in message and '197 mis-shaped' in message
    assert 'missing' not in message
    assert 'backbone.input_stem.op_list.0.conv.weight (16, 3, 3, 3) != (8, 3, 3, 3)' in message
    assert 'backbone.stages.1.op_list.2.main.inverted_conv.conv.weight' in message


def test_a_smaller_models_checkpoint_names_missing_keys(tmp_path, b0_file):
    with pytest.raises(CheckpointError) as info:
        create_model('b1-cityscapes', weights=b0_file)
    message = str(info.value)
    assert_one_clear_line(message, b0_file)
    assert 'b1-cityscapes' in message
    assert '111 missing' in message and '197 mis-shaped' in message
    assert 'unexpected' not in message


def test_a_single_extra_key_is_refused_and_the_model_is_left_unchanged(tmp_path):
    torch.manual_seed(1)
    model = create_model('b0-cityscapes')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {k: torch.zeros_like(v) for k, v in before.items()}
    tensors['head.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'extra.pt'
    torch.save({'state_dict': tensors}, path)
    with pytest.raises(CheckpointError, match=r'1 unexpected: head\.extra\.weight'):
        load_checkpoint(model, path, 'b0-cityscapes')
    assert_holds(model, before)


def test_classifier_of_another_class_count_is_misshaped(b0_file):
    with pytest.raises(CheckpointError) as info:
        create_model('b0-cityscapes', weights=b0_file, num_classes=5)
    assert '2 mis-shaped: head.output_ops.0.op_list.1.conv.weight (19, 128, 1, 1) != ' \
           '(5, 128, 1, 1)' in str(info.value)


def test_a_truncated_checkpoint_is_one_clear_line(tmp_path, b0_file):
    data = b0_file.read_bytes()
    for keep in (len(data) // 2, len(data) - 100, 10):
        path = tmp_path / f'truncated_{keep}.pt'
        path.write_bytes(data[:keep])
        with pytest.raises(CheckpointError) as info:
            create_model('b0-cityscapes', weights=path)
        message = str(info.value)
        assert_one_clear_line(message, path)
        assert 'truncated' in message or 'corrupt' in message
        assert 'download it again' in message


@pytest.mark.parametrize('content, expected', [
    (bytes(range(256)) * 4, 'is not a torch weights file'),
    (b'', 'is empty'),
    (b'<html>404 Not Found</html>', 'is not a torch weights file'),
])
def test_a_garbage_file_is_one_clear_line(tmp_path, content, expected):
    path = tmp_path / 'garbage.pt'
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        create_model('b0-cityscapes', weights=path)
    assert_one_clear_line(str(info.value), path)
    assert expected in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / 'nothing_here.pt'
    with pytest.raises(CheckpointError, match='does not exist') as info:
        create_model('b0-cityscapes', weights=path)
    assert_one_clear_line(str(info.value), path)


def test_a_file_without_tensors_is_refused(tmp_path):
    path = tmp_path / 'numbers.pt'
    torch.save({'state_dict': {'a': 1, 'b': 2.0}}, path)
    with pytest.raises(CheckpointError, match='holds no state dict of tensors'):
        create_model('b0-cityscapes', weights=path)


class _WritesMarker:
    """Unpickling this object opens (creates) a file: code a checkpoint must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'PWNED'
    path = tmp_path / 'hostile.pt'
    torch.save({'state_dict': {'backbone.x': _WritesMarker(marker)}}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        create_model('b0-cityscapes', weights=path)
    message = str(info.value)
    assert_one_clear_line(message, path)
    assert 'refused' in message and 'run code' in message
    assert not marker.exists()
    # The file really is hostile: an unsafe load runs the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_official_weights_are_checked_by_sha256(tmp_path, monkeypatch, b0_file):
    # A checkpoint that still loads but is not the published file.
    folder = tmp_path / 'weights'
    folder.mkdir()
    tampered = folder / B0_FILE
    shutil.copyfile(b0_file, tampered)
    tensors = torch.load(tampered, weights_only=True)
    tensors['state_dict']['head.output_ops.0.op_list.1.conv.bias'] += 1.0
    torch.save(tensors, tampered)
    monkeypatch.setenv('EVIT_ROS_WEIGHTS_DIR', str(folder))
    assert_holds(create_model('b0-cityscapes', weights=tampered), tensors['state_dict'])
    with pytest.raises(CheckpointError) as info:
        create_model('b0-cityscapes', weights='official')
    message = str(info.value)
    assert 'sha256' in message and '923d6fdd5e93640c' in message and '\n' not in message


def test_official_weights_missing_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv('EVIT_ROS_WEIGHTS_DIR', str(tmp_path))
    with pytest.raises(WeightsNotFound) as info:
        create_model('b0-cityscapes', weights='official')
    message = str(info.value)
    assert 'evit-ros weights fetch b0-cityscapes' in message
    assert B0_FILE in message and '\n' not in message
