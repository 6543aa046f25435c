"""``model.fast_attention`` (:func:`use_fast_attention`): CaiT's talking-heads attention with each head mixing as one
``baddbmm`` on the contiguous (B, H, N*N) map instead of timm's permute copies and strided softmax (why and timings:
docs/benchmarks.md), and timm's own fused window attention for Swin. Same parameters, names and function; with
``attn_drop > 0`` (CaiT's default is 0) dropout's masks differ from timm's (same distribution).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FastTalkingHeadAttn", "swap_talking_heads", "use_fast_attention"]


class FastTalkingHeadAttn(nn.Module):
    """timm's CaiT ``TalkingHeadAttn`` with the head mixings as batched matmuls: timm's arguments and parameter names
    (a timm CaiT ``state_dict`` loads unchanged); :meth:`from_timm` wraps an existing module, sharing its parameters.

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
        # timm's order, so state_dict keys come out in the same order
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_l = nn.Linear(num_heads, num_heads, **dd)
        self.proj_w = nn.Linear(num_heads, num_heads, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    @classmethod
    def from_timm(cls, module: nn.Module) -> FastTalkingHeadAttn:
        """A ``FastTalkingHeadAttn`` holding ``module``'s own submodules (its parameter tensors, not copies)."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.num_heads = module.num_heads
        fast.scale = module.scale
        for name in ("qkv", "attn_drop", "proj", "proj_l", "proj_w", "proj_drop"):
            setattr(fast, name, getattr(module, name))
        fast.train(module.training)
        return fast

    def _mix_heads(self, attn: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        # timm's linear(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) as one (H, H) @ (H, N*N) product per image
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
    """Replace every module of exactly timm's ``TalkingHeadAttn`` type (a subclass may compute something else) by a
    :class:`FastTalkingHeadAttn` holding the same parameter tensors, in place; returns how many.

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
    """What ``model.fast_attention`` does to a built model, in place; returns how many attention modules changed:
    CaiT's swapped (:func:`swap_talking_heads`), Swin's switched to timm's fused path (``fused_attn``, which timm ships
    off as experimental; the same function: tests/test_attention.py). The state_dict is untouched.

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
