"""``model.fast_attention``, applied explicitly with :func:`use_fast_attention`: a faster drop-in for timm's CaiT
talking-heads attention (:func:`swap_talking_heads`), and timm's own fused window attention for Swin.

timm's ``TalkingHeadAttn`` mixes the heads of the (B, H, N, N) attention map with an H x H ``nn.Linear`` applied to
a permuted (B, N, N, H) view, before and after the softmax (``proj_l``, ``proj_w``): each mixing is a permute copy,
a linear of inner dimension 8 and a permute back, then a softmax reading its rows with a stride of H, memory passes
that outweigh the attention's own small matmuls. Mixing heads is a left multiplication of the contiguous (B, H, N*N)
view by the H x H weight, so here each mixing is one ``baddbmm`` (weight, input and bias in one kernel) and every
(B, H, N, N) tensor stays contiguous. Same parameters under the same names, same function, same dtypes under
autocast (the softmax is the same call). Timings and the alternatives measured and dropped: docs/benchmarks.md.

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
      timm ships it off ("experimental"); it computes the same function (tests/test_attention.py). Timings:
      docs/benchmarks.md.

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
