"""How well the head's area alone separates a dataset's classes: a check for a shortcut.

  python scripts/area_shortcut.py --dataset=brain_tumor --manual_dir=DIR [--data_dir=/tmp/tfds]

A tumor / no-tumor set built from whole scans may take its negatives from other levels of
the brain than its positives (the top and bottom slices have no tumor). A model can then
score well by telling slice levels apart, and call every normal mid-brain slice of another
source a tumor. The head's area (the share of the frame above 10% of the image's range,
the foreground of `preprocess.foreground_square`) is a one-number proxy for the slice
level: its ROC AUC for the dataset's labels says how much of the task it alone solves.
Prints the ROC AUC with a 95% stratified bootstrap interval, the median area per class,
and sensitivity / specificity at the area's Youden threshold (fitted on the same images:
optimistic). docs/results.md, "The Bohaju sample's labels follow the slice level".
"""

from absl import app, flags
import numpy as np

from spp_resnet.data import sources
from spp_resnet.evaluation import metrics as metrics_lib

flags.DEFINE_string('dataset', 'brain_tumor', 'A binary registry dataset.')
flags.DEFINE_string('manual_dir', '', 'Its folder.')
flags.DEFINE_string('data_dir', '', 'TFDS data_dir for its prepared copy.')
FLAGS = flags.FLAGS


def head_area(image: np.ndarray) -> float:
  """Share of the frame above 10% of the image's intensity range."""
  gray = np.asarray(image, np.float32).reshape(image.shape[0], image.shape[1], -1).mean(-1)
  low, high = gray.min(), gray.max()
  return float((gray > low + 0.1 * (high - low)).mean()) if high > low else 0.0


def main(argv):
  del argv
  pooled = sources.load_pooled(FLAGS.dataset, data_dir=FLAGS.data_dir,
                               manual_dir=FLAGS.manual_dir)
  if len(pooled.class_names) != 2:
    raise app.UsageError(f'{FLAGS.dataset} has classes {pooled.class_names}: a binary '
                         'dataset is needed.')
  labels = np.asarray(pooled.metadata['label'], np.int64)
  areas = np.array([head_area(pooled.source[i]['image']) for i in range(len(labels))])
  auc = metrics_lib.auc_ci(areas, labels)
  threshold = metrics_lib.choose_threshold(areas, labels, 'youden')
  called = areas >= threshold
  print(f'{FLAGS.dataset} ({FLAGS.manual_dir}): {len(labels)} images, '
        f'{dict(zip(pooled.class_names, np.bincount(labels).tolist()))}')
  print(f'ROC AUC of the head area alone for {pooled.class_names[1]}: {auc.mean:.3f} '
        f'[{auc.low:.3f}, {auc.high:.3f}]')
  for k, name in enumerate(pooled.class_names):
    print(f'median head area, {name}: {np.median(areas[labels == k]):.3f}')
  print(f'at its Youden threshold {threshold:.3f} (fitted on these images): sensitivity '
        f'{called[labels == 1].mean():.3f}, specificity {(~called[labels == 0]).mean():.3f}')


if __name__ == '__main__':
  app.run(main)
