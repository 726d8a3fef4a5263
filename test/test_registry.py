"""The model registry: names, classes, palettes, checkpoint facts and published figures."""

import re

import pytest

from evit_ros.model import get_entry, MODELS, UnknownModelError
from evit_ros.model.classes import ADE20K_CLASSES, CITYSCAPES_CLASSES

ALL_MODELS = (
    'b0-cityscapes', 'b1-cityscapes', 'b2-cityscapes', 'b3-cityscapes', 'l1-cityscapes',
    'l2-cityscapes', 'b1-ade20k', 'b2-ade20k', 'b3-ade20k', 'l1-ade20k', 'l2-ade20k')

B0_SHA256 = '923d6fdd5e93640cc0c2f3f213764f34e80b477cd98a6b294d870ea6df5acc50'

# (mIoU, Jetson AGX Orin ms) from the release's table (docs/efficientvit.md, section 4).
PUBLISHED = {
    'b0-cityscapes': (75.653, 9.9),
    'b1-cityscapes': (80.547, 24.3),
    'b3-cityscapes': (83.016, 81.8),
    'l2-cityscapes': (83.228, 60.0),
    'b1-ade20k': (42.840, 4.0),
    'l1-ade20k': (49.191, 7.2),
    'l2-ade20k': (50.702, 9.0),
}


def test_all_eleven_released_models_in_release_order():
    assert tuple(MODELS) == ALL_MODELS
    assert 'b0-ade20k' not in MODELS   # never released


@pytest.mark.parametrize('name', ALL_MODELS)
def test_release_name_and_case_are_accepted(name):
    entry = get_entry(name)
    assert entry.name == name
    assert entry.release_name == f'efficientvit-seg-{name}'
    assert get_entry(f'efficientvit-seg-{name}') is entry
    assert get_entry(f'  EfficientViT-Seg-{name.upper()} ') is entry


@pytest.mark.parametrize('bad', ['b0-ade20k', 'b4-cityscapes', '', 'efficientvit-seg-'])
def test_unknown_name_lists_every_valid_model(bad):
    with pytest.raises(UnknownModelError) as info:
        get_entry(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert '\n' not in message
    for name in ALL_MODELS:
        assert name in message
    # Still a KeyError for callers that catch that.
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_classes_and_palette_match_the_class_count(name):
    entry = get_entry(name)
    expected = 19 if entry.dataset == 'cityscapes' else 150
    assert entry.num_classes == entry.config.num_classes == expected
    assert len(entry.class_names) == expected
    assert len(set(entry.class_names)) == expected
    assert len(entry.palette) == expected
    for color in entry.palette:
        assert len(color) == 3 and all(0 <= c <= 255 for c in color)


def test_cityscapes_classes_and_palette_are_the_data_sets():
    entry = get_entry('b0-cityscapes')
    assert entry.class_names == CITYSCAPES_CLASSES
    assert entry.class_names[0] == 'road' and entry.class_names[18] == 'bicycle'
    assert entry.palette[0] == (128, 64, 128)      # road
    assert entry.palette[10] == (70, 130, 180)     # sky
    assert entry.palette[13] == (0, 0, 142)        # car


def test_ade20k_classes_and_distinct_palette():
    entry = get_entry('l2-ade20k')
    assert entry.class_names == ADE20K_CLASSES
    assert entry.class_names[:3] == ('wall', 'building', 'sky')
    assert entry.class_names[-1] == 'flag'
    assert len(set(entry.palette)) == 150


@pytest.mark.parametrize('name', ALL_MODELS)
def test_checkpoint_file_and_url(name):
    entry = get_entry(name)
    variant, dataset = name.split('-')
    assert entry.checkpoint_file == f'efficientvit_seg_{variant}_{dataset}.pt'
    assert entry.checkpoint_url == (
        'https://huggingface.co/han-cai/efficientvit-seg/resolve/main/'
        f'efficientvit_seg_{variant}_{dataset}.pt')


def test_b0_checkpoint_hash_and_size():
    entry = get_entry('b0-cityscapes')
    assert entry.checkpoint_sha256 == B0_SHA256
    assert entry.checkpoint_bytes == 2_924_013
    # Any other recorded hash must at least look like one.
    for other in MODELS.values():
        if other.checkpoint_sha256 is not None:
            assert re.fullmatch('[0-9a-f]{64}', other.checkpoint_sha256)


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_figures_match_the_release_table(name):
    miou, orin_ms = PUBLISHED[name]
    entry = get_entry(name)
    assert entry.published_miou == pytest.approx(miou, abs=1e-9)
    assert entry.orin_latency_ms == pytest.approx(orin_ms, abs=1e-9)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_default_input_size_is_the_evaluation_size(name):
    entry = get_entry(name)
    assert entry.input_size == ((1024, 2048) if entry.dataset == 'cityscapes' else (512, 512))
    assert entry.config.series == name[0]
