"""``model.fast_attention``, applied explicitly with :func:`use_fast_attention`: a faster drop-in for timm's CaiT
talking-heads attention (:func:`swap_talking_heads`), and timm's own fused window attention for Swin.

timm's ``TalkingHeadAttn`` mixes the heads of the (B, H, N, N) attention map with an H x H ``nn.Linear`` applied to
a permuted (B, N, N, H) view, before and after the softmax (``proj_l``, ``proj_w``). Each mixing is a permute copy,
a linear whose inner dimension is 8, and a permute back, after which the softmax reads its rows with a stride of H:
memory passes over B x 8 x 576 x 576 elements (10.6 MB per image in fp32) twice per block, 36 blocks in CaiT-S36 at
384 px, where the attention itself is a few small matmuls. Mixing heads is a left multiplication of the contiguous
(B, H, N*N) view by the H x H weight, so here each mixing is one ``baddbmm`` (weight, input and bias in one kernel)
and every (B, H, N, N) tensor stays contiguous. Same parameters under the same names, same function, same dtypes
under autocast (the softmax is the same call, so it runs in whatever dtype autocast gives timm's).

Measured on 2 shared CPU cores at the CaiT-S36-384 shape (batch 2, 576 tokens, dim 384, 8 heads), median ms per
call, timm vs this module (``python benchmarks/attention.py``, runs under varying load from other processes):
fp32 61 vs 30 ms (1.6-2.3x over runs), bf16 autocast 70 vs 28 ms (1.7-2.7x); with ``torch.compile`` of each,
fp32 68 vs 35 ms (1.6-2.0x), bf16 41 vs 21 ms (1.9x).

Alternatives measured and dropped:

* ``torch.matmul(W, attn.view(B, H, N * N)) + bias``: the bias add is one more pass over the map; 1.2x (bf16) to
  2.7x (fp32) slower than ``baddbmm`` on CPU.
* folding ``proj_w``'s bias past ``attn @ v`` (bias x column sums of v, exact since the bias is one constant over a
  head's whole map): removes the bias from the big tensor but was no faster on CPU (within noise, slightly slower).
* folding ``proj_l`` into ``q @ k^T`` (contraction over all C = 384 channels of k instead of 48, bias as an extra
  column) and, further, ``proj_w`` into ``attn @ v`` (one (N, H*N) @ (H*N, C) product that lands in (B, N, C)
  directly): no permute at all, but 8x the attention FLOPs; 1.1-1.2x slower than timm in fp32 on CPU and only
  1.2-1.4x faster in bf16, against 1.9x and 2.9x for ``baddbmm`` in the same run.
* folding the 1/sqrt(48) scale into ``baddbmm``'s alpha: not exact (not a power of two) and no faster; timm's
  ``q * scale`` is kept, so q@k^T is bitwise timm's.

Not bitwise timm's: with ``attn_drop > 0`` in training (CaiT's default is 0), dropout draws its mask over a
contiguous (B, H, N, N) tensor where timm's is laid out (B, N, N, H), so the masks differ (same distribution).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FastTalkingHeadAttn", "swap_talking_heads", "use_fast_attention"]


class FastTalkingHeadAttn(nn.Module):
    """timm's CaiT ``TalkingHeadAttn`` with the head mixings as batched matmuls on contiguous tensors.

    The constructor takes timm's arguments and creates the same parameters under the same names (``qkv``,
    ``proj``, ``proj_l``, ``proj_w``), so a timm CaiT ``state_dict`` loads unchanged; :meth:`from_timm` wraps an
    existing module, sharing its parameters.

    >>> import torch
    >>> from timm.models.cait import TalkingHeadAttn
    >>> ref = TalkingHeadAttn(32, num_heads=4).eval()
    >>> fast = FastTalkingHeadAttn.from_timm(ref)
    >>> x = torch.randn(2, 10, 32)
    >>> torch.testing.assert_close(fast(x), ref(x))
    >>> fast.qkv.weight is ref.qkv.weight
    True
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        # Registered in timm's order, so state_dict keys come out in the same order too.
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_l = nn.Linear(num_heads, num_heads, **dd)
        self.proj_w = nn.Linear(num_heads, num_heads, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    @classmethod
    def from_timm(cls, module: nn.Module) -> FastTalkingHeadAttn:
        """A ``FastTalkingHeadAttn`` holding ``module``'s own submodules (its parameter tensors, not copies).

        >>> from timm.models.cait import TalkingHeadAttn
        >>> ref = TalkingHeadAttn(16, num_heads=2)
        >>> FastTalkingHeadAttn.from_timm(ref).proj_l is ref.proj_l
        True
        """
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.num_heads = module.num_heads
        fast.scale = module.scale
        for name in ("qkv", "attn_drop", "proj", "proj_l", "proj_w", "proj_drop"):
            setattr(fast, name, getattr(module, name))
        fast.train(module.training)
        return fast

    def _mix_heads(self, attn: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        # timm: linear(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), i.e. out[b, h] = sum_g W[h, g] attn[b, g] + b[h]
        # for every (i, j): a (H, H) @ (H, N*N) product per image on the contiguous view, bias fused in baddbmm.
        B, H, N, M = attn.shape
        weight = linear.weight.expand(B, H, H)
        return torch.baddbmm(linear.bias.view(1, H, 1), weight, attn.reshape(B, H, N * M)).view(B, H, N, M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # as timm: q @ k^T below is bitwise timm's
        attn = q @ k.transpose(-2, -1)
        attn = self._mix_heads(attn, self.proj_l)
        attn = attn.softmax(dim=-1)  # same call as timm, so autocast picks the same dtype (fp32 on CUDA)
        attn = self._mix_heads(attn, self.proj_w)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


def swap_talking_heads(model: nn.Module) -> int:
    """Replace every timm ``TalkingHeadAttn`` inside ``model`` by a :class:`FastTalkingHeadAttn`, in place.

    The new modules hold the old ones' parameters (the same tensors), so optimizers built before or after, the
    ``state_dict`` keys and checkpoints are unchanged. Only modules whose type is exactly timm's are swapped (a
    subclass may compute something else). Returns how many were swapped: 0 for a model without any (a ViT, or a
    CaiT already swapped).

    >>> import timm
    >>> cait = timm.models.cait.Cait(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=4, num_classes=3)
    >>> swap_talking_heads(cait), swap_talking_heads(cait)
    (2, 0)
    """
    from timm.models.cait import TalkingHeadAttn

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is TalkingHeadAttn:
                setattr(parent, name, FastTalkingHeadAttn.from_timm(child))
                swapped += 1
    return swapped


def use_fast_attention(model: nn.Module) -> int:
    """What ``model.fast_attention`` does to a built model, in place; returns how many attention modules changed.

    - CaiT: every talking-heads attention swapped for :class:`FastTalkingHeadAttn` (:func:`swap_talking_heads`).
    - Swin: every window attention switched to timm's own fused path (``fused_attn``: one
      ``scaled_dot_product_attention`` with the relative-position bias and the shifted-window mask as its additive
      mask, instead of q@k^T, two adds, softmax and @v as separate passes over the (windows, heads, 144, 144) map).
      timm ships it off ("experimental"); it computes the same function (tests/test_attention.py). Measured on 2
      CPU cores, Swin-L at 384 px, batch 1: 1.04x (fp32) and 1.21x (bf16) over timm's default; the GPU figure is
      owed (docs/benchmarks.md).

    Parameters, their names and the state_dict are untouched, so checkpoints and exports load in plain timm.

    >>> import timm
    >>> swin = timm.models.swin_transformer.SwinTransformer(
    ...     img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2,), num_heads=(2,), num_classes=3)
    >>> use_fast_attention(swin), use_fast_attention(swin)
    (2, 0)
    """
    from timm.models.swin_transformer import WindowAttention

    changed = swap_talking_heads(model)
    for module in model.modules():
        if type(module) is WindowAttention and not module.fused_attn:
            module.fused_attn = True
            changed += 1
    return changed
