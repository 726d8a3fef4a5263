"""Bicubic weights and the label map of bicubic logits, against PyTorch's dense computation."""

from conftest import require_shared
import cv2
from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evit_ros.model import create_model
from evit_ros.runtime.bicubic import bicubic_argmax, bicubic_matrix
from evit_ros.runtime.preprocess import labels_from_logits, preprocess


def dense(logits, size):
    """The release's post-processing: interpolate every class, then argmax."""
    return F.interpolate(torch.as_tensor(logits), size=size, mode='bicubic',
                         align_corners=False).argmax(1)[0].numpy()


@pytest.mark.parametrize('n_in, n_out', [(7, 30), (16, 64), (11, 5), (1, 4), (5, 5)])
def test_matrix_is_torch_bicubic_along_one_axis(n_in, n_out):
    x = torch.randn(1, 1, n_in, 3, dtype=torch.float64)
    expected = F.interpolate(x, size=(n_out, 3), mode='bicubic', align_corners=False)
    got = torch.from_numpy(bicubic_matrix(n_in, n_out)) @ x
    assert torch.allclose(got, expected, atol=1e-12)
    assert np.allclose(bicubic_matrix(n_in, n_out).sum(1), 1.0)


@pytest.fixture(scope='module')
def real_logits():
    """Official B0 logits of the real Cityscapes val frame at 512x1024 (64x128 logits)."""
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt')
    frame = require_shared('data', 'cityscapes_val_sample',
                           'frankfurt_000000_000294_leftImg8bit.png')
    rgb = cv2.cvtColor(cv2.imread(str(frame), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    model = create_model('b0-cityscapes', weights=str(weights))
    with torch.inference_mode():
        return model(torch.from_numpy(preprocess(rgb, (512, 1024))))


@pytest.mark.parametrize('size', [(1024, 2048), (512, 1024), (360, 480), (128, 256),
                                  (64, 128), (37, 1000), (1000, 37)])
def test_real_logits_give_the_dense_label_map(real_logits, size):
    got = bicubic_argmax(real_logits, size)
    assert got.shape == size and got.dtype == np.uint8
    # Identical but for exact float ties (none occur on this frame).
    assert (got == labels_from_logits(real_logits, size)).mean() >= 0.9999


@settings(max_examples=25, deadline=None)
@given(classes=st.sampled_from([2, 19, 150, 300]), h=st.integers(1, 12),
       w=st.integers(1, 12), out_h=st.integers(1, 60), out_w=st.integers(1, 60),
       scale=st.sampled_from([0.1, 1.0, 10.0]), seed=st.integers(0, 2 ** 16))
def test_random_logits_any_size(classes, h, w, out_h, out_w, scale, seed):
    logits = torch.from_numpy(np.random.default_rng(seed).standard_normal(
        (1, classes, h, w)).astype(np.float32) * scale)
    got = bicubic_argmax(logits, (out_h, out_w))
    assert got.shape == (out_h, out_w)
    assert got.dtype == (np.uint8 if classes <= 256 else np.uint16)
    assert (got == dense(logits, (out_h, out_w))).mean() >= 0.999


def test_smooth_logits_with_large_overshoot_risk():
    # One class far above another at a single tap is where the kernel's negative lobes
    # bite; the bound must send such blocks to exact interpolation.
    logits = np.zeros((1, 3, 6, 6), np.float32)
    logits[0, 0] = 1.0
    logits[0, 1, 2, 2] = 0.99
    logits[0, 1, 2, 3] = -40.0
    logits[0, 2] = -5.0
    assert np.array_equal(bicubic_argmax(logits, (48, 48)), dense(logits, (48, 48)))


def test_numpy_input_and_same_size_and_bad_batch():
    logits = np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)
    assert np.array_equal(bicubic_argmax(logits[0], (5, 6)), logits[0].argmax(0))
    assert np.array_equal(bicubic_argmax(logits, (20, 24)), dense(logits, (20, 24)))
    with pytest.raises(ValueError, match='one image'):
        bicubic_argmax(np.zeros((2, 4, 5, 6), np.float32), (10, 12))
