"""ViT-L/16 (timm vit_large_patch16_384), full fine-tuning on Tiny ImageNet at 384x384: accuracy not measured yet.

    accelerate launch recipes/full/vit_l.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: one 24 GB GPU with bf16 (RTX 3090/4090, A5000, L4): micro-batch 64 with gradient checkpointing,
accumulation 2 to batch 128; about 12 GiB at peak by the arithmetic of docs/recipes.md (not yet measured on a GPU;
without checkpointing only micro-batch 16 fits, ~14 GiB). Every weight trains, unlike the paper's head-only
recipes/vit_l.py.

Source: BEiT-L's fine-tuning of ImageNet-22k-intermediate weights (microsoft/unilm
beit/get_started_for_image_classification.md, run_class_finetuning.py, utils.py); docs/recipes.md's table gives each
value with its source line. Where this recipe differs, and why:
- batch 128 (the paper's, one card) instead of BEiT's 8 GPUs x 32 x update_freq 2 = 512. BEiT never rescales its
  lr, so its values are those at 512, scaled here linearly: lr 2e-5 at batch 512 x 128/512 = 5e-6; min lr 1e-6 x
  128/512 = 2.5e-7. The warmup starts from 0, as BEiT's cosine_scheduler (start_warmup_value 0; --warmup_lr unused).
- mean/std: the weights' own (data.normalization model: 0.5/0.5 for timm's augreg ViT-L, as BEiT's default
  inception mean/std), not the paper's ImageNet values.
- RandAugment rand-m9-mstd0.5-inc1 through timm's own transform, at 64 px before upscaling; there is no
  RandomResizedCrop or flip (the library has none, as the paper's code).
- timm's layer grouping puts the final norm with the last block (BEiT: with the head); bf16 autocast, not fp16.
The same as BEiT: layer decay 0.9, drop path 0.4, weight decay 1e-8, 5 warmup epochs of 30, Mixup and CutMix off,
label smoothing 0.1, random erasing 0.25, no gradient clipping, no EMA.
"""

from tiny_transformers import AugmentConfig, DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="vit_l", train_mode="full", drop_path_rate=0.4, grad_checkpointing=True),
    data=DataConfig(image_size=384, normalization="model"),
    augment=AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1, random_erasing=0.25,
                          timm_randaugment="rand-m9-mstd0.5-inc1"),
    optim=OptimConfig(
        lr=5e-6, weight_decay=1e-8, layer_decay=0.9, warmup_epochs=5, warmup_lr=0.0, min_lr=2.5e-7, clip_grad=0.0
    ),
    train=TrainConfig(epochs=30, batch_size=128, micro_batch_size=64, mixed_precision="bf16", ema_decay=0.0,
                      output_dir="outputs/full/vit_l"),
)  # fmt: skip

if __name__ == "__main__":
    run(config)
