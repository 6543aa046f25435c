"""ViT-L/16 (timm vit_large_patch16_384), full fine-tuning on Tiny ImageNet at 384x384: accuracy not measured yet.

    accelerate launch recipes/full/vit_l.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: one 24 GB GPU with bf16 (RTX 3090/4090, A5000, L4): micro-batch 64 with gradient checkpointing,
accumulation 2 to the paper's batch 128; about 12 GiB at peak by the arithmetic of docs/recipes.md (not yet measured
on a GPU; without checkpointing only micro-batch 16 fits, ~14 GiB). Every weight trains, unlike the paper's head-only
recipes/vit_l.py; its Tiny ImageNet accuracy is not measured yet. Sources: BEiT-L fine-tuning from
ImageNet-22k-intermediate weights at 384 (microsoft/unilm beit/get_started_for_image_classification.md: lr 2e-5 per
256 images, scaled like its run_class_finetuning.py to 1e-5 at batch 128, warmup and min lr 1e-6 per 256 -> 5e-7; 5
warmup epochs of 30; layer decay 0.9; drop path 0.4; weight decay 1e-8; no gradient clipping, no EMA, as its
defaults). Kept from the paper: augmentation, 30 epochs, batch 128, ImageNet mean/std. Library defaults:
preprocessing, timm's head init, no decay on biases/norms.
"""

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="vit_l", train_mode="full", drop_path_rate=0.4, grad_checkpointing=True),
    data=DataConfig(image_size=384, normalization="imagenet"),
    optim=OptimConfig(
        lr=1e-5, weight_decay=1e-8, layer_decay=0.9, warmup_epochs=5, warmup_lr=5e-7, min_lr=5e-7, clip_grad=0.0
    ),
    train=TrainConfig(epochs=30, batch_size=128, micro_batch_size=64, mixed_precision="bf16", ema_decay=0.0,
                      output_dir="outputs/full/vit_l"),
)  # fmt: skip

if __name__ == "__main__":
    run(config)
