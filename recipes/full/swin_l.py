"""Swin-L/4 (timm swin_large_patch4_window12_384), full fine-tuning on Tiny ImageNet at 384x384: accuracy not measured
yet.

    accelerate launch recipes/full/swin_l.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: one 24 GB GPU with bf16 (RTX 3090/4090, A5000, L4): micro-batch 32 (the paper's) with gradient
checkpointing, accumulation 4 to batch 128; about 12 GiB at peak by the arithmetic of docs/recipes.md (not yet
measured on a GPU). Every weight trains, unlike the paper's head-only recipes/swin_l.py.

Source: Swin's ImageNet-22k -> 1k fine-tuning at 384 (microsoft/Swin-Transformer
configs/swin/swin_large_patch4_window12_384_22kto1k_finetune.yaml, config.py's defaults, main.py's lr scaling);
docs/recipes.md's table gives each value with its source line. Where this recipe differs, and why:
- batch 128 (the paper's, one card): Swin's main.py scales its three lrs by batch / 512 itself, so these are the
  values it computes at 128: lr 2e-5 x 128/512 = 5e-6, warmup lr 2e-8 x 128/512 = 5e-9, min lr 2e-7 x 128/512 = 5e-8.
- RandAugment rand-m9-mstd0.5-inc1 through timm's own transform, at 64 px before upscaling; there is no
  RandomResizedCrop or flip (the library has none, as the paper's code); bf16 autocast, not fp16.
The same as Swin: 5 warmup epochs of 30, weight decay 1e-8, drop path 0.2, gradient clipping at norm 5.0, no layer
decay, no EMA, Mixup 0.8 / CutMix 1.0 (prob 1.0, switch 0.5), label smoothing 0.1, random erasing 0.25, the model's
own (ImageNet) mean/std.
"""

from tiny_transformers import AugmentConfig, DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="swin_l", train_mode="full", drop_path_rate=0.2, grad_checkpointing=True),
    data=DataConfig(image_size=384, normalization="model"),
    augment=AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0, switch_prob=0.5, label_smoothing=0.1,
                          random_erasing=0.25, timm_randaugment="rand-m9-mstd0.5-inc1"),
    optim=OptimConfig(
        lr=5e-6, weight_decay=1e-8, layer_decay=0.0, warmup_epochs=5, warmup_lr=5e-9, min_lr=5e-8, clip_grad=5.0
    ),
    train=TrainConfig(epochs=30, batch_size=128, micro_batch_size=32, mixed_precision="bf16", ema_decay=0.0,
                      output_dir="outputs/full/swin_l"),
)  # fmt: skip

if __name__ == "__main__":
    run(config)
