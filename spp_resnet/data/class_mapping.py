"""One dataset's class names onto another's: equal names, or tumor / no tumor.

Used where images of one dataset are labelled with another's classes: a trained model
evaluated on outside data (`experiments/evaluate_external.py`) and several datasets
pooled into one training set (`data/mix.py`).

Rules (`map_classes`): names are compared after `canonical` ('Glioma_Tumor',
'glioma tumor' and 'glioma' are one class; 'notumor' is 'no_tumor'); for a binary tumor
target (['no_tumor', 'tumor']) 'no', 'normal', 'healthy', ... -> no_tumor and 'yes',
'glioma', 'meningioma', 'pituitary', ... -> tumor. Anything else is an error naming the
classes, unless mapped explicitly or ignored.
"""

from __future__ import annotations

import re

import numpy as np

# Class names (after `canonical`) that mean "no tumor" / "tumor" to a binary model.
NEGATIVE_NAMES = frozenset({'no_tumor', 'no', 'normal', 'healthy', 'negative', 'non_tumor',
                            'nontumor', 'without_tumor', 'notumour', 'no_tumour', '0'})
TUMOR_NAMES = frozenset({'tumor', 'tumour', 'yes', 'positive', 'abnormal', '1', 'glioma',
                         'meningioma', 'pituitary', 'pituitary_adenoma', 'glioblastoma',
                         'astrocytoma', 'metastasis', 'metastases', 'schwannoma',
                         'neurocytoma', 'ependymoma', 'oligodendroglioma', 'carcinoma',
                         'lymphoma', 'lesion'})


class MappingError(ValueError):
  """The other dataset's classes cannot be mapped onto the model's."""


def canonical(name: str) -> str:
  """'Glioma_Tumor' -> 'glioma', 'notumor' -> 'no_tumor', 'No Tumor' -> 'no_tumor'."""
  n = re.sub(r'[^a-z0-9]+', '_', str(name).lower()).strip('_')
  if n in ('notumor', 'no_tumor', 'notumour', 'no_tumour'):
    return 'no_tumor'
  for suffix in ('_tumor', '_tumour'):
    if n.endswith(suffix) and n != suffix[1:]:
      n = n[:-len(suffix)]
  return n


def map_classes(external: list[str], model: list[str], explicit: dict[str, str] | None = None,
                ignore: list[str] | None = None) -> np.ndarray:
  """Model class index for each external class (-1 = its images are left out).

  Raises MappingError naming every external class that maps to nothing.
  """
  explicit = dict(explicit or {})
  ignore = {canonical(c) for c in (ignore or [])}
  model_canon = [canonical(c) for c in model]
  binary_tumor = sorted(model_canon) == ['no_tumor', 'tumor']
  out = np.full(len(external), -1, np.int64)
  unmapped = []
  explicit_canon = {canonical(k): v for k, v in explicit.items()}
  for i, name in enumerate(external):
    c = canonical(name)
    if c in ignore:
      continue
    target = explicit.get(name, explicit_canon.get(c))
    if target is not None:
      if canonical(target) not in model_canon:
        raise MappingError(f'--class_map: {name}={target}, but the model\'s classes are '
                           f'{model}.')
      out[i] = model_canon.index(canonical(target))
    elif c in model_canon:
      out[i] = model_canon.index(c)
    elif binary_tumor and c in NEGATIVE_NAMES:
      out[i] = model_canon.index('no_tumor')
    elif binary_tumor and c in TUMOR_NAMES:
      out[i] = model_canon.index('tumor')
    else:
      unmapped.append(name)
  if unmapped:
    raise MappingError(
        f'Cannot map the dataset\'s classes {unmapped} onto the model\'s classes {model} '
        f'(the dataset has {external}). Map them with --class_map=theirs=ours,... (e.g. '
        f'--class_map={unmapped[0]}={model[-1]}) or leave their images out with '
        f'--ignore_classes={",".join(unmapped)}.')
  if not np.any(out >= 0):
    raise MappingError(f'No class of {external} is left to evaluate.')
  return out
