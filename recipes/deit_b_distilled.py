"""DeiT-B/16 distilled (timm deit_base_distilled_patch16_384) on Tiny ImageNet at 384x384: paper 87.29% top-1.

    accelerate launch recipes/deit_b_distilled.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: sized like the official code for one 8-24 GB GPU: micro-batch 64, effective batch 128.
Only the two classifier heads (head, head_dist) train, both reset for 200 classes. The official code
trains DeiT in eval mode, which switches stochastic depth off: drop_path_rate 0.0 reproduces that.
"""

from tiny_transformers import DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="deit_b_distilled", train_mode="head", drop_path_rate=0.0),
    data=DataConfig(image_size=384, normalization="imagenet"),
    optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05),
    train=TrainConfig(
        epochs=30, batch_size=128, micro_batch_size=64, mixed_precision="fp16", output_dir="outputs/deit_b_distilled"
    ),
)

if __name__ == "__main__":
    run(config)
