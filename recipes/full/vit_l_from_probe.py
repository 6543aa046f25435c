"""ViT-L/16: recipes/full/vit_l.py started from the paper's head-only run (probe, then fine-tune).

    tiny-transformers train vit_l         # the probe (the paper's recipe), into outputs/vit_l
    accelerate launch recipes/full/vit_l_from_probe.py [--model.head_from outputs/vit_l]

Every value is recipes/full/vit_l.py's (imported, not copied) except these: the head comes from the probe's
best/ (model.head_from; the backbone still from the pretrained weights), so the small full fine-tuning learning
rates start from a trained head rather than a random one (LP-FT, Kumar et al. 2022); images are preprocessed and
normalised as the probe's were (its data.preprocess and data.normalization: the inputs its head was fitted to,
which model.head_from checks); the run goes to
outputs/full/vit_l_from_probe.
"""

from dataclasses import replace

from vit_l import config as full  # recipes/full/vit_l.py: a script's own folder is on sys.path

from tiny_transformers import paper_config, run

probe = paper_config("vit_l")
config = replace(
    full,
    model=replace(full.model, head_from=probe.train.output_dir),
    data=replace(full.data, preprocess=probe.data.preprocess, normalization=probe.data.normalization),
    train=replace(full.train, output_dir="outputs/full/vit_l_from_probe"),
)

if __name__ == "__main__":
    run(config)
