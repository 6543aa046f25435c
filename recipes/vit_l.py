"""ViT-L/16 (timm vit_large_patch16_384) on Tiny ImageNet at 384x384: paper 86.43% top-1 (draft 86.31).

    accelerate launch recipes/vit_l.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: sized like the official code for one 8-24 GB GPU: micro-batch 64, effective batch 128 by
accumulation. As in the official code only the classifier head trains (model.train_mode head), and
ViT-L is fed ImageNet mean/std although its weights expect 0.5/0.5 (--data.normalization model changes it).
"""

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="vit_l", train_mode="head", drop_path_rate=0.1),
    data=DataConfig(image_size=384, normalization="imagenet"),
    optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05),
    train=TrainConfig(
        epochs=30, batch_size=128, micro_batch_size=64, mixed_precision="fp16", output_dir="outputs/vit_l"
    ),
)

if __name__ == "__main__":
    run(config)
