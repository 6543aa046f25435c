"""FastTalkingHeadAttn computes timm's CaiT talking-heads attention; swap_talking_heads changes nothing else."""

import copy

import pytest
import timm
import torch
from timm.models.cait import Cait, ClassAttn, TalkingHeadAttn

from tiny_transformers.attention import FastTalkingHeadAttn, swap_talking_heads, use_fast_attention

# fp32: the rewrite sums the same 8 products per element in a different kernel (baddbmm against addmm on a permuted
# copy), so the two differ by float32 rounding (eps 1.2e-7) carried through the softmax and attn @ v. Tolerance:
# rtol 1.3e-6 (assert_close's float32 default) and atol 1e-6 x the output's largest value. Measured with the
# weights below: max abs diff 4.6e-5 on outputs up to 192 (2.4e-7 relative) at 576 tokens, where timm's own error
# against float64 is 2.5e-4. Gradients: atol 4e-6 x each gradient's largest value; measured differences up to
# 1.5e-6 relative (proj_w.weight), which is timm's own error against float64 there (4.5e-2 of 3.0e4).
# bf16: each side rounds its (B, H, N, N) intermediates to bf16 (8 bits of mantissa, 2^-8 = 0.4% relative) in
# different places, so the two differ by a few bf16 ulps; instead of a tolerance picked to pass, both are compared
# with a float64 reference: the rewrite's error must be no larger than timm's own (x1.5; measured 0.98-1.03x).
# The two also agree within 2^-6 of the output's scale (measured 0.5-0.6%: a couple of bf16 ulps).


def _pair(dim: int = 64, heads: int = 8, seed: int = 0) -> tuple[TalkingHeadAttn, FastTalkingHeadAttn]:
    torch.manual_seed(seed)
    ref = TalkingHeadAttn(dim, num_heads=heads, qkv_bias=True)
    with torch.no_grad():  # larger than the default init so the head mixing (and both biases) really matter
        for p in ref.parameters():
            p.normal_(0, 0.3)
    return ref, FastTalkingHeadAttn.from_timm(ref)


@pytest.mark.parametrize("batch,tokens", [(1, 1), (2, 17), (3, 64), (1, 576)])
def test_equals_timm_in_fp32(batch, tokens):
    ref, fast = _pair()
    x = torch.randn(batch, tokens, 64)
    with torch.no_grad():
        y_ref = ref(x)
        torch.testing.assert_close(fast(x), y_ref, rtol=1.3e-6, atol=1e-6 * y_ref.abs().max().item())


@pytest.mark.parametrize("batch,tokens", [(2, 50), (1, 576)])
def test_bf16_autocast_error_is_timms_own(batch, tokens):
    ref, fast = _pair()
    x = torch.randn(batch, tokens, 64)
    with torch.no_grad():
        exact = copy.deepcopy(ref).double()(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_ref, y_fast = ref(x), fast(x)
    assert y_fast.dtype == y_ref.dtype == torch.bfloat16
    err_ref = (y_ref.double() - exact).abs()
    err_fast = (y_fast.double() - exact).abs()
    assert err_fast.max() <= 1.5 * err_ref.max()
    assert err_fast.mean() <= 1.5 * err_ref.mean()
    # and the two agree to bf16 precision relative to the output's scale
    torch.testing.assert_close(y_fast.float(), y_ref.float(), rtol=2**-6, atol=2**-6 * exact.abs().max().item())


def _assert_same_gradients(fast: torch.nn.Module, ref: torch.nn.Module) -> None:
    grads = dict(ref.named_parameters())
    largest = max(p.grad.abs().max().item() for p in grads.values())
    for name, p_fast in fast.named_parameters():
        g_ref, g_fast = grads[name].grad, p_fast.grad
        if name.endswith(("proj_l.bias", "attn.k.bias")):
            # constants along the softmax's rows (proj_l's per-head bias; ClassAttn's key bias adds q . b_k to every
            # logit of a row): their true gradient is 0 and both sides are rounding noise (measured up to 4e-12 in
            # the tiny CaiT, 6e-4 next to gradients up to 7e5 in the module test)
            assert max(g_ref.abs().max().item(), g_fast.abs().max().item()) <= 1e-6 * largest, name
        else:
            torch.testing.assert_close(g_fast, g_ref, rtol=1.3e-6, atol=4e-6 * g_ref.abs().max().item(), msg=name)


def test_same_gradients_as_timm():
    ref, _ = _pair()
    fast = FastTalkingHeadAttn.from_timm(copy.deepcopy(ref))
    x = torch.randn(2, 33, 64)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(x_ref).square().sum().backward()
    fast(x_fast).square().sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1.3e-6, atol=4e-6 * x_ref.grad.abs().max().item())
    _assert_same_gradients(fast, ref)


def test_same_parameters_names_and_checkpoints():
    ref, fast = _pair()
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert all(a is b for a, b in zip(fast.parameters(), ref.parameters()))  # shared, not copied
    built = FastTalkingHeadAttn(64, num_heads=8, qkv_bias=True)  # the constructor makes the same shapes
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    built.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        torch.testing.assert_close(built(x), ref(x))


def _tiny_cait() -> Cait:
    # init_values=1: with timm's 1e-4 layer scale the blocks barely touch the residual stream and a wrong
    # attention would still give the same logits to 1e-4.
    torch.manual_seed(0)
    return Cait(
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=3,
        num_heads=8,
        num_classes=7,
        init_values=1.0,
        depth_token_only=1,
    )


def test_whole_cait_same_logits_gradients_and_state_dict():
    ref = _tiny_cait()
    fast = copy.deepcopy(ref)
    params_before = [id(p) for p in fast.parameters()]
    keys_before = list(fast.state_dict())
    assert swap_talking_heads(fast) == 3
    assert swap_talking_heads(fast) == 0  # already swapped
    assert [id(p) for p in fast.parameters()] == params_before  # an optimizer built before the swap still works
    assert list(fast.state_dict()) == keys_before
    assert sum(isinstance(m, FastTalkingHeadAttn) for m in fast.modules()) == 3
    assert not any(isinstance(m, TalkingHeadAttn) for m in fast.modules())
    assert sum(isinstance(m, ClassAttn) for m in fast.modules()) == 1  # class attention left alone

    images = torch.randn(2, 3, 32, 32)
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(images), ref(images))  # float32 defaults: logits are O(1) here

    # a full fine-tuning step: same loss, same gradient for every parameter
    ref.train(), fast.train()
    labels = torch.tensor([1, 4])
    losses = [torch.nn.functional.cross_entropy(m(images), labels) for m in (ref, fast)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0])
    _assert_same_gradients(fast, ref)

    # a timm checkpoint loads strictly into the swapped model
    other = _tiny_cait()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    fast.load_state_dict(other.state_dict())
    other.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(images), other(images))


def test_vit_is_left_unchanged():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=5)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    types = [type(m) for m in vit.modules()]
    assert swap_talking_heads(vit) == 0
    assert [type(m) for m in vit.modules()] == types
    after = vit.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_model_fast_attention_trains_a_cait_to_the_same_weights_and_refuses_other_models(stanford_dir, tmp_path):
    """The config switch end to end: one epoch of full fine-tuning of a tiny CaiT with and without the rewrite."""
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).parent))
    from test_finetune import tiny_config

    from tiny_transformers import finetune
    from tiny_transformers.errors import ConfigError

    finals = []
    for fast in (False, True):
        config = tiny_config(stanford_dir, tmp_path / f"fast-{fast}", epochs=1)
        config.model.name, config.model.fast_attention = "cait_xxs24_224", fast
        finetune(config)
        finals.append(load_file(tmp_path / f"fast-{fast}" / "last" / "model.safetensors"))
    assert finals[0].keys() == finals[1].keys()
    for key, value in finals[0].items():
        torch.testing.assert_close(finals[1][key], value, rtol=1e-4, atol=1e-5 * max(value.abs().max().item(), 1.0))
    config = tiny_config(stanford_dir, tmp_path / "vit")
    config.model.fast_attention = True
    with pytest.raises(ConfigError, match="attention and Swin's window attention, and test_vit has neither; use --"):
        finetune(config)


def _tiny_swin(seed: int = 0) -> torch.nn.Module:
    """Two stages at 32 px (8x8 then 4x4 tokens), windows of 4: the second block of stage 1 is shifted, so the
    shift mask is used; relative-position biases drawn large enough to matter."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(seed)
    swin = SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=5
    )
    with torch.no_grad():
        for name, p in swin.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 1.0)
    return swin


def test_swin_fused_window_attention_same_logits_gradients_and_state_dict():
    """model.fast_attention on Swin is timm's own fused path: the same function, parameters and keys (fp32: the same
    products in another kernel, so float rounding; assert_close's float32 defaults, logits O(1))."""
    from timm.models.swin_transformer import WindowAttention

    ref = _tiny_swin()
    fast = copy.deepcopy(ref)
    keys = list(fast.state_dict())
    assert use_fast_attention(fast) == 4 and use_fast_attention(fast) == 0
    assert all(m.fused_attn for m in fast.modules() if isinstance(m, WindowAttention))
    assert not any(m.fused_attn for m in ref.modules() if isinstance(m, WindowAttention))  # timm's default: off
    assert list(fast.state_dict()) == keys
    assert any(getattr(m, "attn_mask", None) is not None for m in fast.modules())  # a shifted block really masks

    images = torch.randn(2, 3, 32, 32)
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(images), ref(images))
    ref.train(), fast.train()  # with timm's drop path (0.1): the same draws for both from the same seed
    labels, losses = torch.tensor([1, 4]), []
    for model in (ref, fast):
        torch.manual_seed(2)
        losses.append(torch.nn.functional.cross_entropy(model(images), labels))
        losses[-1].backward()
    torch.testing.assert_close(losses[1], losses[0])
    _assert_same_gradients(fast, ref)  # the bias tables' gradients too: they flow through SDPA's attn_mask


def test_swin_fused_window_attention_in_bf16_is_as_close_to_float64_as_timms():
    """bf16 autocast: both round their intermediates to bf16 in different places; the fused path's error against
    a float64 run must be no larger than timm's default path's (x1.5, as for CaiT above)."""
    ref = _tiny_swin(seed=1).eval()
    fast = copy.deepcopy(ref)
    use_fast_attention(fast)
    exact = copy.deepcopy(ref).double()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        truth = exact(images.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            errors = [(m(images).double() - truth).abs().max().item() for m in (ref, fast)]
    assert errors[1] <= 1.5 * errors[0], errors
