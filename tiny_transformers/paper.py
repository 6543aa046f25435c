"""Facts about the paper this library reproduces: its four models and their numbers.

Huynh, "Vision Transformers in 2022: An Update on Tiny ImageNet", arXiv 2205.10660.
Sources for every number: ``shared/reference/paper-recipe.md`` and docs/recipes.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperModel:
    """One of the paper's four models, as the official code trains it."""

    short_name: str
    timm_name: str
    title: str
    micro_batch_size: int  # per device, as in the official code (effective batch 128 via accumulation)
    drop_path_rate: float  # 0.0 for DeiT: the official code trains it in eval mode, switching drop path off
    paper_top1: float  # official README, Tiny ImageNet validation top-1 (%)
    params_millions: float  # at 200 classes
    gmacs: float  # at 384 px


PAPER_MODELS: dict[str, PaperModel] = {
    m.short_name: m
    for m in (
        PaperModel("vit_l", "vit_large_patch16_384", "ViT-L/16", 64, 0.1, 86.43, 303.9, 191.2),
        PaperModel("cait_s36", "cait_s36_384", "CaiT-S36", 128, 0.1, 86.74, 68.1, 48.0),
        PaperModel(
            "deit_b_distilled", "deit_base_distilled_patch16_384", "DeiT-B/16 distilled", 64, 0.0, 87.29, 86.4, 55.7
        ),
        PaperModel("swin_l", "swin_large_patch4_window12_384", "Swin-L/4", 32, 0.1, 91.35, 195.5, 104.1),
    )
}

CITATION = """@article{huynh2022vision,
  title   = {Vision Transformers in 2022: An Update on Tiny ImageNet},
  author  = {Huynh, Ethan},
  journal = {arXiv preprint arXiv:2205.10660},
  year    = {2022}
}"""


def resolve_model_name(name: str) -> str:
    """The timm model name for a paper short name; any other name is returned unchanged.

    >>> resolve_model_name("swin_l")
    'swin_large_patch4_window12_384'
    """
    return PAPER_MODELS[name].timm_name if name in PAPER_MODELS else name


def paper_model_for(name: str) -> PaperModel | None:
    """The paper model for a short or timm name (``vit_l`` or ``vit_large_patch16_384``), else None."""
    return next((m for m in PAPER_MODELS.values() if name in (m.short_name, m.timm_name)), None)
