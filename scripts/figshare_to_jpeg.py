"""Figshare .mat slices -> 224 px gray JPEGs in class folders (an `image_folder` dataset).

  python scripts/figshare_to_jpeg.py ../shared/data/figshare_brain_tumor_subset .gpu/data/figshare_jpg

For carrying the figshare set to a machine with a size limit (the GPU bundle): each slice
is min-max scaled to 8 bits (the pipeline's own first step) and resized; the labels
become the folder names meningioma/, glioma/, pituitary/.
"""

import os
import sys

import numpy as np
from PIL import Image

from spp_resnet.data import image_io

CLASS_NAMES = {1: 'meningioma', 2: 'glioma', 3: 'pituitary'}


def main(src: str, dst: str, size: int = 224) -> None:
  count = 0
  for name in sorted(os.listdir(src)):
    if not name.endswith('.mat'):
      continue
    with open(os.path.join(src, name), 'rb') as f:
      record = image_io.read_figshare_mat(f.read(), name)
    x = record['image'][..., 0].astype(np.float64)
    x = (x - x.min()) / max(x.max() - x.min(), 1.0) * 255.0
    folder = os.path.join(dst, CLASS_NAMES[record['label']])
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(x.round().astype(np.uint8)).resize((size, size), Image.BILINEAR).save(
        os.path.join(folder, name[:-4] + '.jpg'), quality=85)
    count += 1
  print(f'{dst}: {count} images')


if __name__ == '__main__':
  main(*sys.argv[1:3])
