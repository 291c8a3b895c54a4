"""Sample images to PNG files: `python sample/images.py [--job.FIELD=...] [--maskgit.FIELD=...]
[--sampler.FIELD=...]` (the same as `remdm-images`).

Defaults to the shipped MNIST model in `checkpoints/`, MaskGIT's decoder, 16 steps, 20 images
(two of each digit), written to `images/` as `grid.png` and one PNG per image.

  python sample/images.py --job.decoder=sampler --sampler.strategy=cap --sampler.eta=0.05
  python sample/images.py --job.model=maskgit_imagenet256/ --job.labels=1,7,980 --job.scale=1
"""

import sys

from remdm_jax.cli import images_main

if __name__ == "__main__":
  sys.exit(images_main())
