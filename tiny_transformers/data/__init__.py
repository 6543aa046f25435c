"""Tiny ImageNet from any of its usual homes, as two ``datasets.Dataset`` splits of undecoded images.

:mod:`.sources` (with :mod:`.stanford` and :mod:`.builders`) recognises and normalises ``data.source`` once, in
the main process; :mod:`.images` decodes in every ``DataLoader`` worker
(``load_data(cfg).train.with_transform(DecodeTransform(64))``, ``collate_fn=collate``).
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
