"""`figshare_brain_tumor`: Jun Cheng's brain tumor dataset (figshare article 1512427).

3064 T1-weighted contrast-enhanced slices from 233 patients (708 meningioma, 1426
glioma, 930 pituitary), CC BY 4.0, https://doi.org/10.6084/m9.figshare.1512427.
Each slice is a MATLAB v7.3 (HDF5) file `N.mat` read with h5py: `cjdata/image`
(512x512 int16, stored transposed), `cjdata/label` (1 meningioma, 2 glioma,
3 pituitary), `cjdata/PID` (patient ID as uint16 chars), `cjdata/tumorMask`.

Examples: `image` uint16 (H, W, 1), the original intensities (never rescaled);
`tumor_mask` uint8 (H, W, 1) with values 0/1 (multiply by 255 to view); `patient_id`;
`label` in the canonical order ['glioma', 'meningioma', 'pituitary'] (figshare's
1/2/3 = meningioma/glioma/pituitary are remapped). One TFDS split, `train`: split by
patient yourself (a patient's slices must stay on one side).

Files: the builder first looks in the manual dir for the .mat files (extracted, or
inside the published zip archives, or inside figshare's "Download all" zip, at any
depth); without any, it downloads the four archives from figshare (about 860 MB, no
login) into the TFDS download dir. Offline, it fails saying where to get the files
and where to put them. A subset (like tests' 222 slices) builds as well.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import tensorflow_datasets as tfds

from spp_resnet.data import image_io
from spp_resnet.data.builders import _common

CLASS_NAMES = ['glioma', 'meningioma', 'pituitary']
FIGSHARE_LABEL_TO_CLASS = {1: 'meningioma', 2: 'glioma', 3: 'pituitary'}
ARTICLE_URL = 'https://figshare.com/articles/dataset/brain_tumor_dataset/1512427'
DOI = 'https://doi.org/10.6084/m9.figshare.1512427'
# The article's files (figshare file ids 3381290/3381296/3381293/3381302) and their
# SHA-256; "Download all" (the article as one zip) is
# https://ndownloader.figshare.com/articles/1512427/versions/5.
_DOWNLOAD_URLS = {
    'brainTumorDataPublic_1-766.zip':
        'https://ndownloader.figshare.com/files/3381290',
    'brainTumorDataPublic_767-1532.zip':
        'https://ndownloader.figshare.com/files/3381296',
    'brainTumorDataPublic_1533-2298.zip':
        'https://ndownloader.figshare.com/files/3381293',
    'brainTumorDataPublic_2299-3064.zip':
        'https://ndownloader.figshare.com/files/3381302',
}
_SHA256 = {
    'brainTumorDataPublic_1-766.zip':
        'cdac0a7f4152cb34dd79b13543da96c37a6928ad8cb823e2662150b1a73ade54',
    'brainTumorDataPublic_767-1532.zip':
        'd18e896d14f7af791cdd3d9b9342f9f974742a06132effde5a5219209862b4ce',
    'brainTumorDataPublic_1533-2298.zip':
        '612d9f506c55c54db5f2f38b6d50741ef97a6d7c32b3e1be76e789674a97aefb',
    'brainTumorDataPublic_2299-3064.zip':
        '9a673c55d139133cfbc57097bf155b5ac9f33684ee97f40bf2afba332d416a3a',
}
_NOT_SLICES = frozenset({'cvind.mat'})  # the article's cross-validation indices
_TIMEOUT_S = 30


class FigshareBrainTumor(_common.ReportingBuilder):
  """Jun Cheng's figshare brain tumor slices, with patient IDs and tumor masks.

  Extra keyword argument: download (default True): fetch the archives from figshare
  when the manual dir has no .mat files; False fails right away instead.
  """

  name = 'figshare_brain_tumor'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download Jun Cheng's "brain tumor dataset" from figshare, {ARTICLE_URL}
  (no login): the four archives
  {chr(10).join(f'    {name}: {url}' for name, url in _DOWNLOAD_URLS.items())}
  or the whole article as one zip ("Download all"). The .mat files may stay zipped.
  """

  def __init__(self, *, download: bool = True, **kwargs):
    self._download = bool(download)
    super().__init__(**kwargs)
    self._original_state.update(download=self._download)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=_common.common_features(
            CLASS_NAMES, np.uint16, tumor_mask=_common.image_feature(np.uint8)),
        supervised_keys=('image', 'label'),
        homepage=ARTICLE_URL,
        citation="""@article{cheng2015enhanced,
  title={Enhanced Performance of Brain Tumor Classification via Tumor Region
         Augmentation and Partition},
  author={Cheng, Jun and Huang, Wei and Cao, Shuangliang and Yang, Ru and Yang, Wei
          and Yun, Zhaoqiang and Wang, Zhijian and Feng, Qianjin},
  journal={PLoS ONE}, volume={10}, number={10}, pages={e0140381}, year={2015},
  doi={10.1371/journal.pone.0140381}}""",
    )

  def _find_slices(self, root: str) -> list[_common.Entry]:
    if not os.path.isdir(root):
      return []
    entries = [e for e in self._find_files(root)
               if e.suffix == '.mat' and e.basename.lower() not in _NOT_SLICES]
    return _common.dedupe(entries, key=lambda e: e.basename.lower())

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    entries = self._find_slices(manual_dir)
    if not entries:
      download_dir = os.path.join(os.fspath(dl_manager.download_dir), self.name)
      if self._download:
        self._fetch(download_dir, manual_dir)
      entries = self._find_slices(download_dir)
      self._report['downloaded_to'] = download_dir
    if not entries:
      raise self._missing(manual_dir, 'no .mat files found')
    self._report['source_files'] = len(entries)
    return {'train': self._generate_examples(
        'train', entries,
        lambda _, result: CLASS_NAMES.index(FIGSHARE_LABEL_TO_CLASS[result['label']]),
        task=image_io.figshare_task,
        extra=lambda result: {'tumor_mask': result['mask_png']})}

  def _fetch(self, download_dir: str, manual_dir: str):
    """Downloads the four archives (verified by SHA-256) into download_dir."""
    os.makedirs(download_dir, exist_ok=True)
    for filename, url in _DOWNLOAD_URLS.items():
      path = os.path.join(download_dir, filename)
      if os.path.exists(path):
        continue
      _common.log.info('Downloading %s from %s', filename, url)
      partial = path + '.incomplete'
      digest = hashlib.sha256()
      try:
        request = urllib.request.Request(url, headers={'User-Agent': 'spp_resnet'})
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, open(
            partial, 'wb') as out:
          while block := response.read(1 << 20):
            digest.update(block)
            out.write(block)
      except (urllib.error.URLError, OSError) as e:
        if os.path.exists(partial):
          os.remove(partial)
        raise self._missing(
            manual_dir, f'no .mat files found, and downloading {url} failed ({e})'
        ) from e
      if digest.hexdigest() != _SHA256[filename]:
        os.remove(partial)
        raise _common.MissingDataError(
            f'{self.name}: {url} downloaded with SHA-256 {digest.hexdigest()}, '
            f'expected {_SHA256[filename]} (for {filename}). Download it by hand from '
            f'{ARTICLE_URL} and put it in the manual dir {manual_dir!r}.')
      shutil.move(partial, path)
