"""Swin-L/4 (timm swin_large_patch4_window12_384), full fine-tuning on Tiny ImageNet at 384x384: accuracy not measured
yet.

    accelerate launch recipes/full/swin_l.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: one 24 GB GPU with bf16 (RTX 3090/4090, A5000, L4): micro-batch 32 (the paper's) with gradient
checkpointing, accumulation 4 to the paper's batch 128; about 12 GiB at peak by the arithmetic of docs/recipes.md
(not yet measured on a GPU). Every weight trains, unlike the paper's head-only recipes/swin_l.py; its Tiny ImageNet
accuracy is not measured yet. Sources: Swin's ImageNet-22k -> 1k fine-tuning at 384 (microsoft/Swin-Transformer
configs/swin/swin_large_patch4_window12_384_22kto1k_finetune.yaml: base lr 2e-5, warmup lr 2e-8, min lr 2e-7, all per
512 images and scaled to batch 128 as its main.py does -> 5e-6, 5e-9, 5e-8; 5 warmup epochs of 30; weight decay 1e-8;
drop path 0.2) and its config.py defaults (gradient clipping at norm 5.0; no layer decay, no EMA). Kept from the
paper: augmentation, 30 epochs, batch 128. Library defaults: preprocessing, timm's head init, no decay on
biases/norms.
"""

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="swin_l", train_mode="full", drop_path_rate=0.2, grad_checkpointing=True),
    data=DataConfig(image_size=384, normalization="imagenet"),
    optim=OptimConfig(
        lr=5e-6, weight_decay=1e-8, layer_decay=0.0, warmup_epochs=5, warmup_lr=5e-9, min_lr=5e-8, clip_grad=5.0
    ),
    train=TrainConfig(epochs=30, batch_size=128, micro_batch_size=32, mixed_precision="bf16", ema_decay=0.0,
                      output_dir="outputs/full/swin_l"),
)  # fmt: skip

if __name__ == "__main__":
    run(config)
