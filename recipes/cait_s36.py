"""CaiT-S36 (timm cait_s36_384) on Tiny ImageNet at 384x384: paper 86.74% top-1 (draft 86.64).

    accelerate launch recipes/cait_s36.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: sized like the official code for one 8-24 GB GPU: micro-batch 128 (the whole effective
batch in one pass). Only the classifier head trains (model.train_mode head), as in the official code.
"""

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="cait_s36", train_mode="head", drop_path_rate=0.1),
    data=DataConfig(image_size=384, normalization="imagenet"),
    optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05),
    train=TrainConfig(
        epochs=30, batch_size=128, micro_batch_size=128, mixed_precision="fp16", output_dir="outputs/cait_s36"
    ),
)

if __name__ == "__main__":
    run(config)
