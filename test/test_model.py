"""The model zoo against the release: state dicts, sizes, strides, precision and folding."""

import copy

from conftest import require_shared
import cv2
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from evit_ros.model import (
    blocks, check_input_size, create_model, fold_batchnorm, get_entry, MODELS)
from evit_ros.model.blocks import (
    ATTENTION_EPS, LiteMLA, relu_linear_attention, relu_quadratic_attention)
from evit_ros.runtime.preprocess import preprocess

B0_WEIGHTS = ('weights', 'efficientvit_seg_b0_cityscapes.pt')
FRAME = ('data', 'frames', 'city_2048x1024.png')
FP16_MAX = 65504.0

# Parameter counts of the official models (docs/efficientvit.md): b0 exact, others in
# millions rounded to two decimals.
PARAMS_M = {
    'b1-cityscapes': 4.80, 'b1-ade20k': 4.79,
    'b2-cityscapes': 15.32, 'b2-ade20k': 15.29,
    'b3-cityscapes': 39.60, 'b3-ade20k': 39.55,
    'l1-cityscapes': 40.24, 'l1-ade20k': 40.41,
    'l2-cityscapes': 52.61, 'l2-ade20k': 51.46,
}


def read_reference(name):
    """Return ``[(key, shape, dtype)]`` of the official model, or skip."""
    path = require_shared('reference', 'state_dicts',
                          f'efficientvit-seg-{name}.state_dict.txt')
    rows = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split('\t')
        rows.append((key, tuple(int(n) for n in shape.strip('()').split(',') if n.strip()),
                     dtype))
    return rows


def b0_official():
    """Return the official B0 Cityscapes model, or skip without the checkpoint."""
    return create_model('b0-cityscapes', weights=require_shared(*B0_WEIGHTS))


def frame_input(size):
    """Return the real full-resolution street frame as a network input tensor."""
    bgr = cv2.imread(str(require_shared(*FRAME)), cv2.IMREAD_COLOR)
    return torch.from_numpy(preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# --- architecture against the release ---------------------------------------------------


@pytest.mark.parametrize('name', list(MODELS))
def test_state_dict_matches_the_release_key_for_key(name):
    reference = read_reference(name)
    ours = [(key, tuple(t.shape), str(t.dtype).replace('torch.', ''))
            for key, t in create_model(name).state_dict().items()]
    assert len(ours) == len(reference)
    for got, want in zip(ours, reference):
        assert got == want
    assert ours == reference      # same order too


def test_b0_parameter_count_is_exact():
    assert count_params(create_model('b0-cityscapes')) == 706_691


@pytest.mark.parametrize('name', sorted(PARAMS_M))
def test_parameter_counts_match_the_release(name):
    assert round(count_params(create_model(name)) / 1e6, 2) == PARAMS_M[name]


@pytest.mark.parametrize('name', list(MODELS))
def test_batchnorm_eps_is_1e5_for_b_and_1e7_for_l(name):
    norms = [m for m in create_model(name).modules() if isinstance(m, nn.BatchNorm2d)]
    expected = 1e-5 if name.startswith('b') else 1e-7
    assert norms
    assert all(m.eps == expected for m in norms)


class _MatmulMACs(TorchFunctionMode):
    """Count the multiply-accumulates of every matmul (the attention's)."""

    macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__):
            self.macs += out.numel() * args[0].shape[-1]
        return out


def count_macs(model, size):
    """Conv plus matmul multiply-accumulates of one forward pass, as the release counts."""
    conv = []
    handles = [m.register_forward_hook(
        lambda m, args, out: conv.append(
            out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]))
        for m in model.modules() if isinstance(m, nn.Conv2d)]
    counter = _MatmulMACs()
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, *size))
    for handle in handles:
        handle.remove()
    return sum(conv) + counter.macs


# Published MACs (G) at 1024x2048 (Cityscapes) and 512x512 (ADE20K). Conv and linear
# attention MACs both grow exactly with the pixel count, so they are counted at a smaller
# size (with more tokens than dim at stride 32, so the linear form runs). This checks
# what the state dict cannot: where the strides sit.
@pytest.mark.parametrize('name, size, scale, gmacs', [
    ('b0-cityscapes', (128, 256), 64, 4.39),
    ('b1-cityscapes', (128, 256), 64, 25.1),
    ('b1-ade20k', (128, 256), 8, 3.09),
    ('l1-ade20k', (256, 256), 4, 36.3),
])
def test_macs_match_the_release(name, size, scale, gmacs):
    macs = count_macs(create_model(name), size) * scale / 1e9
    digits = 2 if gmacs < 10 else 1
    assert round(macs, digits) == gmacs


@pytest.mark.parametrize('name', list(MODELS))
def test_logits_come_out_at_stride_8(name):
    model = create_model(name)
    with torch.inference_mode():
        logits = model(torch.zeros(1, 3, 64, 96))
    assert tuple(logits.shape) == (1, get_entry(name).num_classes, 8, 12)


def test_b0_output_shape_and_batch():
    with torch.inference_mode():
        logits = create_model('b0-cityscapes')(torch.zeros(2, 3, 64, 128))
    assert tuple(logits.shape) == (2, 19, 8, 16)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize('height, width, suggestion', [
    (500, 1000, '512x1024'), (64, 100, '64x128'), (33, 64, '64x64'), (0, 64, '32x64')])
def test_input_size_not_a_multiple_of_32_is_refused(height, width, suggestion):
    with pytest.raises(ValueError) as info:
        check_input_size(height, width)
    message = str(info.value)
    assert f'{height}x{width}' in message and 'multiple of 32' in message
    assert suggestion in message


def test_model_refuses_an_input_it_cannot_downsample():
    with pytest.raises(ValueError, match='multiple of 32'):
        create_model('b0-cityscapes')(torch.zeros(1, 3, 64, 100))


def test_num_classes_override_replaces_the_classifier():
    model = create_model('b0-cityscapes', num_classes=5)
    classifier = model.head.output_ops[0].op_list[-1].conv
    assert (classifier.out_channels, classifier.bias.shape) == (5, (5,))
    assert model.cfg.num_classes == 5
    with torch.inference_mode():
        assert tuple(model(torch.zeros(1, 3, 64, 64)).shape) == (1, 5, 8, 8)
    # Everything but the classifier is still the release's.
    base = create_model('b0-cityscapes').state_dict()
    changed = {k for k, v in model.state_dict().items() if v.shape != base[k].shape}
    assert changed == {'head.output_ops.0.op_list.1.conv.weight',
                       'head.output_ops.0.op_list.1.conv.bias'}
    with pytest.raises(ValueError, match='num_classes'):
        create_model('b0-cityscapes', num_classes=0)


# --- attention precision -----------------------------------------------------------------


def naive_linear_attention(qkv, dim, eps=ATTENTION_EPS):
    """The same attention sums computed in the input's own dtype (what fp16 engines do)."""
    batch, _, height, width = qkv.shape
    qkv = qkv.reshape(batch, -1, 3 * dim, height * width)
    q, k, v = F.relu(qkv[:, :, :dim]), F.relu(qkv[:, :, dim:2 * dim]), qkv[:, :, 2 * dim:]
    v = F.pad(v, (0, 0, 0, 1), value=1.0)
    out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)
    out = out[:, :, :-1] / (out[:, :, -1:] + eps)
    return out.reshape(batch, -1, height, width)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_attention_runs_in_fp32_for_half_inputs(dtype):
    qkv = torch.randn(1, 2 * 3 * 16, 16, 16, generator=torch.Generator().manual_seed(0))
    low = qkv.to(dtype)
    out = relu_linear_attention(low, 16)
    assert out.dtype == torch.float32
    # Exactly the fp32 computation of the rounded input.
    torch.testing.assert_close(out, relu_linear_attention(low.float(), 16),
                               rtol=0, atol=0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        autocast_out = relu_linear_attention(low, 16)
    assert autocast_out.dtype == torch.float32
    torch.testing.assert_close(autocast_out, out, rtol=1e-6, atol=1e-6)


def test_fp16_sums_overflow_where_the_fp32_attention_stays_exact():
    # 64x64 tokens with k = v = 4 and q = 1: sum over tokens of v k^T is 4096 * 16 = 65536,
    # just over fp16's 65504.
    dim, tokens = 16, 64
    q = torch.ones(1, dim, tokens, tokens)
    k = torch.full((1, dim, tokens, tokens), 4.0)
    v = torch.full((1, dim, tokens, tokens), 4.0)
    qkv = torch.cat([q, k, v], dim=1).half()
    assert float(v[0, 0, 0, 0] * k[0, 0, 0, 0] * tokens * tokens) > FP16_MAX
    naive = naive_linear_attention(qkv, dim)
    assert not torch.isfinite(naive).any()
    out = relu_linear_attention(qkv, dim)
    assert torch.isfinite(out).all()
    # Every token attends uniformly to identical values: the output is v itself.
    torch.testing.assert_close(out, torch.full_like(out, 4.0), rtol=1e-6, atol=0)


def test_eps_vanishes_in_fp16_but_not_in_the_fp32_attention():
    # A token whose queries are all negative has ReLU(q) = 0: numerator and denominator are
    # 0, and only eps (1e-15, which is 0 in fp16) keeps 0 / eps from being NaN.
    assert torch.tensor(ATTENTION_EPS, dtype=torch.float16).item() == 0.0
    qkv = torch.rand(1, 3 * 16, 8, 8, generator=torch.Generator().manual_seed(1))
    qkv[:, :16, 3, 5] = -1.0
    naive = naive_linear_attention(qkv.half(), 16)
    assert torch.isnan(naive[..., 3, 5]).all()
    assert torch.isfinite(naive).sum() == naive.numel() - 16
    out = relu_linear_attention(qkv.half(), 16)
    assert torch.isfinite(out).all()
    assert torch.equal(out[..., 3, 5], torch.zeros_like(out[..., 3, 5]))


def test_real_b0_attention_would_give_nan_in_fp16_at_full_resolution():
    # The release's trap on real data: at 1024x2048 the first attention of the official B0
    # has tokens with no positive query on this frame; naive fp16 gives NaN there.
    model = b0_official()
    attention = model.backbone.stages[2].op_list[1].context_module.main
    captured = {}
    handle = attention.register_forward_hook(
        lambda module, args, out: captured.setdefault('x', args[0]))
    with torch.inference_mode():
        features = model.backbone(frame_input((1024, 2048)))
    handle.remove()
    assert tuple(features['stage4'].shape) == (1, 128, 32, 64)
    attention = attention.half()
    with torch.inference_mode():
        qkv = attention.qkv(captured['x'].half())
        qkv = torch.cat([qkv] + [op(qkv) for op in attention.aggreg], dim=1)
        assert not torch.isfinite(naive_linear_attention(qkv, attention.dim)).all()
        assert torch.isfinite(relu_linear_attention(qkv, attention.dim)).all()
        assert torch.isfinite(attention(captured['x'].half())).all()


def half_conv_supported():
    try:
        F.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float16),
                 torch.ones(1, 1, 3, 3, dtype=torch.float16))
    except RuntimeError:
        return False
    return True


def agreement(logits, reference):
    """Return (argmax agreement, agreement where fp32 is confident, relative L2 error)."""
    logits = logits.float()
    same = logits.argmax(1) == reference.argmax(1)
    top2 = reference.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 1.0
    relative = (logits - reference).norm() / reference.norm()
    return same.float().mean().item(), same[confident].float().mean().item(), relative.item()


# Measured on the official B0 at 256x512 on the city frame (torch 2.13 CPU): argmax
# agreement bf16 0.988, autocast 0.992, fp16 0.999; relative L2 error 0.059, 0.055, 0.0077;
# every pixel with an fp32 top-2 margin above 1 agrees. bf16 keeps only 8 mantissa bits.
@pytest.mark.parametrize('mode, min_agree, max_relative', [
    ('bf16', 0.98, 0.10),
    ('autocast-bf16', 0.98, 0.10),
    ('fp16', 0.995, 0.02),
])
def test_low_precision_b0_matches_fp32(mode, min_agree, max_relative):
    model = b0_official()
    x = frame_input((256, 512))
    with torch.inference_mode():
        reference = model(x)
        if mode == 'autocast-bf16':
            with torch.autocast('cpu', dtype=torch.bfloat16):
                logits = model(x)
        else:
            dtype = torch.bfloat16 if mode == 'bf16' else torch.float16
            if dtype == torch.float16 and not half_conv_supported():
                pytest.skip('this torch build has no fp16 convolution on the CPU')
            logits = copy.deepcopy(model).to(dtype)(x.to(dtype))
    assert logits.dtype != torch.float32
    assert torch.isfinite(logits).all()
    agree, agree_confident, relative = agreement(logits, reference)
    assert agree >= min_agree
    assert agree_confident >= 0.998
    assert relative <= max_relative


# --- BatchNorm folding -------------------------------------------------------------------


def randomise_batchnorm(model, seed):
    """Give every BatchNorm non-trivial statistics so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def assert_folded(folded, original):
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in original.modules())
    assert not folded.training
    assert count_params(folded) < count_params(original)


def test_folding_b0_official_keeps_its_outputs():
    model = b0_official()
    folded = fold_batchnorm(model)
    assert_folded(folded, model)
    x = frame_input((128, 256))
    with torch.inference_mode():
        # In float64 the fold is exact algebra: any mistake would show far above 1e-9.
        exact = (fold_batchnorm(copy.deepcopy(model).double())(x.double())
                 - copy.deepcopy(model).double()(x.double())).abs().max().item()
        reference, logits = model(x), folded(x)
    assert exact <= 1e-9
    # In fp32 both forms round differently: measured 1.3e-4 with logits up to 14 (the
    # unfolded fp32 model is itself 8e-5 from float64).
    assert (logits - reference).abs().max().item() <= 3e-4
    assert (logits.argmax(1) == reference.argmax(1)).float().mean().item() >= 0.999


def test_folding_l1_with_random_statistics_keeps_its_outputs():
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model('l1-ade20k'), seed=1)
    folded = fold_batchnorm(model)
    assert_folded(folded, model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference, logits = model(x), folded(x)
    assert reference.abs().max().item() > 1.0     # not a trivially flat output
    assert (logits - reference).abs().max().item() <= 1e-4


def test_folding_leaves_the_original_and_keeps_dtype():
    model = randomise_batchnorm(create_model('b0-cityscapes'), seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorm(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # A half-precision model stays in half precision (folded in fp32 underneath).
    folded = fold_batchnorm(copy.deepcopy(model).to(torch.bfloat16))
    assert {p.dtype for p in folded.parameters()} == {torch.bfloat16}


# --- quadratic form ------------------------------------------------------------------------


def test_quadratic_attention_equals_linear_attention():
    qkv = torch.randn(2, 2 * 3 * 16, 4, 4, generator=torch.Generator().manual_seed(4))
    linear = relu_linear_attention(qkv, 16)
    quadratic = relu_quadratic_attention(qkv, 16)
    assert quadratic.shape == linear.shape == (2, 2 * 16, 4, 4)
    torch.testing.assert_close(quadratic, linear, rtol=1e-5, atol=1e-6)


def test_litemla_on_a_tiny_map_agrees_with_the_linear_form(monkeypatch):
    torch.manual_seed(5)
    attention = LiteMLA(32, 32, dim=16).eval()
    x = torch.randn(1, 32, 4, 4)            # 16 tokens <= dim: the quadratic form
    with torch.inference_mode():
        quadratic = attention(x)
        # Force the linear form through the same module.
        monkeypatch.setattr(blocks, 'relu_quadratic_attention', relu_linear_attention)
        linear = attention(x)
    assert np.isfinite(quadratic.numpy()).all()
    torch.testing.assert_close(quadratic, linear, rtol=1e-5, atol=1e-6)
