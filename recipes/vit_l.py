"""ViT-L/16 (timm vit_large_patch16_384) on Tiny ImageNet at 384x384: paper 86.43% top-1 (draft 86.31).

    accelerate launch recipes/vit_l.py [--data.source ./tiny-imagenet-200] [--train.epochs 1 ...]

Hardware: sized like the official code for one 8-24 GB GPU: micro-batch 64, effective batch 128 by
accumulation. As in the official code only the classifier head trains (model.train_mode head), and
ViT-L is fed ImageNet mean/std although its weights expect 0.5/0.5 (--data.normalization model changes it).
Exact mode: preprocessing, head init, weight decay, drop_last and fp32 evaluation as the official code ran
them (docs/recipes.md lists each difference and its size); --data.preprocess default uses the library's resize.
"""

from tiny_transformers import AugmentConfig, DataConfig, FinetuneConfig, ModelConfig, OptimConfig, TrainConfig, run

config = FinetuneConfig(
    model=ModelConfig(name="vit_l", train_mode="head", drop_path_rate=0.1, head_init="linear"),
    # exactly what the official code ran: uint8 resize, RandAugment(2 ops, magnitude 0), drop_last (docs/recipes.md)
    data=DataConfig(image_size=384, normalization="imagenet", preprocess="official", drop_last=True),
    augment=AugmentConfig(randaugment_ops=2, randaugment_magnitude=0),
    optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, decay_all=True),
    train=TrainConfig(
        epochs=30,
        batch_size=128,
        micro_batch_size=64,
        mixed_precision="fp16",
        eval_precision="fp32",
        output_dir="outputs/vit_l",
    ),
)

if __name__ == "__main__":
    run(config)
