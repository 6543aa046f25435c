"""CaiT-S36 (timm cait_s36_384), full fine-tuning on Tiny ImageNet at 384x384: accuracy not measured yet.

    accelerate launch recipes/full/cait_s36.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: one 24 GB GPU with bf16 (RTX 3090/4090, A5000, L4): micro-batch 64 with gradient checkpointing,
accumulation 2 to batch 128; about 8 GiB at peak by the arithmetic of docs/recipes.md (not yet measured on a GPU).
Every weight trains, unlike the paper's head-only recipes/cait_s36.py.

Source: CaiT was trained with the DeiT code, and its README_cait.md gives no fine-tuning command, so this recipe is
recipes/full/deit_b_distilled.py's: DeiT's 384 fine-tuning command (facebookresearch/deit README_deit.md) and its
main.py defaults; docs/recipes.md's table gives each value with its source line. Where it differs, and why (as
there):
- batch 128 (the paper's, one card): lr 5e-6 x 128/512 = 1.25e-6 (DeiT's main.py scaling); min lr 5e-6 x 128/512 =
  1.25e-6 and warmup lr 1e-6 x 128/512 = 2.5e-7 (DeiT leaves them unscaled; scaled so the min lr stays at the lr).
- EMA: DeiT's 0.99996 without warmup at 2,502 updates per epoch is a horizon of 25,000 updates = 9.99 epochs; at
  this run's 782 updates per epoch the same horizon is 7,814 updates: decay 1 - 1/7,814 = 0.999872.
- RandAugment rand-m9-mstd0.5-inc1 through timm's own transform, at 64 px before upscaling; no RandomResizedCrop or
  flip; no repeated augmentation; bf16 autocast, not fp16.
The same as DeiT: 5 warmup epochs of 30, weight decay 1e-8, drop path 0.1, no clipping, no layer decay, Mixup 0.8 /
CutMix 1.0, label smoothing 0.1, random erasing 0.25, the model's own (ImageNet) mean/std.
"""

from tiny_transformers import AugmentConfig, DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="cait_s36", train_mode="full", drop_path_rate=0.1, grad_checkpointing=True),
    data=DataConfig(image_size=384, normalization="model"),
    augment=AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0, switch_prob=0.5, label_smoothing=0.1,
                          random_erasing=0.25, timm_randaugment="rand-m9-mstd0.5-inc1"),
    optim=OptimConfig(
        lr=1.25e-6, weight_decay=1e-8, layer_decay=0.0, warmup_epochs=5, warmup_lr=2.5e-7, min_lr=1.25e-6, clip_grad=0.0
    ),
    train=TrainConfig(epochs=30, batch_size=128, micro_batch_size=64, mixed_precision="bf16", ema_decay=0.999872,
                      ema_warmup=False, output_dir="outputs/full/cait_s36"),
)  # fmt: skip

if __name__ == "__main__":
    run(config)
