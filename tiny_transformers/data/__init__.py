"""Tiny ImageNet from any of its usual homes, as two ``datasets.Dataset`` splits of undecoded images.

:func:`load_data` recognises the source named by ``data.source`` (a Hub id, the Stanford folder or its
zip, an imagefolder tree, a ``save_to_disk`` folder, parquet files) and normalises every one of them to
the same shape: an ``image`` column of ``Image(decode=False)`` dicts, a ``label`` column whose
``ClassLabel`` names are sorted (the wnids, as ``zh-plus/tiny-imagenet`` orders them), and a train and
an eval split. Images stay compressed until a loader worker calls :func:`decode_image`, so nothing is
copied or decoded up front.

The package has two halves: :mod:`.sources` (recognising and loading each layout, label normalisation,
the skip-corrupt scan and :func:`verify_images`; the Stanford folder and its zip in :mod:`.stanford`, the
layouts ``datasets`` reads and the Hub in :mod:`.builders`) runs once in the main
process; :mod:`.images` (decoding to RGB uint8, the batch transforms, :func:`collate`) runs in every
``DataLoader`` worker.

>>> bundle = load_data(DataConfig(source="./tiny-imagenet-200"))  # doctest: +SKIP
>>> loader = DataLoader(bundle.train.with_transform(DecodeTransform(64)), batch_size=64,
...                     collate_fn=collate)  # doctest: +SKIP
"""

from .images import IMAGE_EXTENSIONS, DecodeTransform, collate, decode_image, worker_options
from .sources import SOURCE_KINDS, DataBundle, load_data, verify_images

__all__ = [
    "DataBundle",
    "load_data",
    "verify_images",
    "decode_image",
    "DecodeTransform",
    "collate",
    "worker_options",
    "IMAGE_EXTENSIONS",
    "SOURCE_KINDS",
]
