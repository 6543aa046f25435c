"""Swin-L/4 (timm swin_large_patch4_window12_384) on Tiny ImageNet at 384x384: paper 91.35% top-1.

    accelerate launch recipes/swin_l.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: sized like the official code for one 8-24 GB GPU: micro-batch 32, effective batch 128 by
4 accumulation steps. Only the classifier head trains (model.train_mode head), as in the official code.
"""

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="swin_l", train_mode="head", drop_path_rate=0.1),
    data=DataConfig(image_size=384, normalization="imagenet"),
    optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05),
    train=TrainConfig(
        epochs=30, batch_size=128, micro_batch_size=32, mixed_precision="fp16", output_dir="outputs/swin_l"
    ),
)

if __name__ == "__main__":
    run(config)
