"""DeiT-B/16 distilled (timm deit_base_distilled_patch16_384), full fine-tuning on Tiny ImageNet at 384x384 with hard
distillation from a Swin-L already fine-tuned on the same data: accuracy not measured yet.

    python recipes/swin_l.py                      # or recipes/full/swin_l.py: the teacher, 200 classes at 384
    accelerate launch recipes/deit_b_from_swin.py --distill.teacher outputs/swin_l/best [--data.source ...]

As recipes/full/deit_b_distilled.py (the same values, and the same differences from DeiT, stated there), plus
DeiT's hard distillation (main.py --distillation-type hard, --distillation-alpha 0.5, --distillation-tau 1.0): the
class head learns the labels, the distillation head the teacher's top-1 class on the same augmented images, the loss
(1 - 0.5) x the first + 0.5 x the second. DeiT's main.py refuses distillation while fine-tuning, so distilling from a
Swin-L during fine-tuning is this library's own combination. Hardware: one 24 GB GPU with bf16: micro-batch 64 with
gradient checkpointing, accumulation 2 to batch 128; the frozen teacher adds its fp32 weights (0.8 GB) and an
inference forward: at most about 13 GiB at peak by the arithmetic of docs/recipes.md (up to ~22 GiB without
checkpointing, too close to 24 GB; not measured on a GPU). The teacher must predict the same 200 classes at 384 px
(refused otherwise) and sees the images normalised with its own recorded mean/std; without --distill.teacher this
recipe refuses to start.
"""

import sys

from tiny_transformers import (
    AugmentConfig,
    DataConfig,
    DistillConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    run,
)
from tiny_transformers.cli import parse_config

config = FinetuneConfig(
    model=ModelConfig(name="deit_b_distilled", train_mode="full", drop_path_rate=0.1, grad_checkpointing=True),
    data=DataConfig(image_size=384, normalization="model"),
    augment=AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0, switch_prob=0.5, label_smoothing=0.1,
                          random_erasing=0.25, timm_randaugment="rand-m9-mstd0.5-inc1"),
    # the teacher is given on the command line: --distill.teacher outputs/swin_l/best
    distill=DistillConfig(teacher=None, type="hard", temperature=1.0, alpha=0.5),
    optim=OptimConfig(
        lr=1.25e-6, weight_decay=1e-8, layer_decay=0.0, warmup_epochs=5, warmup_lr=2.5e-7, min_lr=1.25e-6, clip_grad=0.0
    ),
    train=TrainConfig(epochs=30, batch_size=128, micro_batch_size=64, mixed_precision="bf16", ema_decay=0.999872,
                      ema_warmup=False, output_dir="outputs/full/deit_b_from_swin"),
)  # fmt: skip

if __name__ == "__main__":
    parsed, show = parse_config(config, sys.argv[1:], prog=sys.argv[0])
    if not show and not parsed.distill.teacher:
        print(
            "error: recipes/deit_b_from_swin.py distils from a teacher and none was given; add --distill.teacher "
            "outputs/swin_l/best (a Swin-L fine-tuned on this data at 384 px by recipes/swin_l.py or "
            "recipes/full/swin_l.py).",
            file=sys.stderr,
        )
        sys.exit(2)
    run(config)
