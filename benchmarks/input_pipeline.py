r"""Input pipeline throughput: decode + preprocess (uncached) vs the in-memory cache.

For every dataset it builds the project's real pipeline (`create_input_pipeline`, split
protocol 'original' when the dataset has train/test, else 'stratified') and measures
  * uncached: the train iterator with data.cache=False: every batch is read from the
    TFDS ArrayRecord source, PNG-decoded, min-max normalized, contrast stretched, resized
    and quantized (threads, or `--num_workers` grain processes);
  * cache build: preprocessing the whole train split once into uint8 [N,S,S,1]
    (threads / the same worker processes);
  * cached: the train iterator with data.cache=True (a memory gather per batch).
Images/s after `--warmup` untimed batches, over `--batches` batches, on this process
(process_count=1), at `--image_size` with global batch `--batch_size`. The TFDS
preparation of a dataset (first use) is not timed.

  python benchmarks/input_pipeline.py \
      --dataset=brain_tumor_mri=../shared/data/brain_tumor_classification_mri \
      --dataset=brain_tumor=../shared/data/bohaju_brain_tumor_sample \
      --data_dir=/tmp/tfds --num_workers=0,4

'phantom' (SYNTHETIC) is always included; there "decode" is generating the image
(~6 ms at the native 128 px), done once per process: the source keeps what it
generated, so in-process rows after the first pass read memoized images.
Worker processes pay a spawn + import start-up (~5 s on 2 cores), visible on the small
datasets' cache builds.
"""

import datetime
import os
import platform
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from spp_resnet.data import batching, pipeline, preprocess, sources  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATASETS = flags.DEFINE_multi_string(
    'dataset', [], 'NAME=MANUAL_DIR of a real dataset (repeatable).')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'TFDS data_dir for the prepared datasets.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square image size.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Global batch size.')
_BATCHES = flags.DEFINE_integer('batches', 40, 'Timed batches per measurement.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed batches before timing.')
_WORKERS = flags.DEFINE_list('num_workers', ['0'], 'data.num_workers values to measure.')
_PHANTOM = flags.DEFINE_string('phantom', 'phantom', 'Phantom registry name ("" = skip).')


def _config(name, manual_dir, cache, workers):
  config = default.get_config().data
  config.dataset = name
  config.manual_dir = manual_dir
  config.data_dir = _DATA_DIR.value
  config.image_size = _IMAGE_SIZE.value
  config.cache = cache
  config.num_workers = workers
  config.normalization = 'none'
  return config


def _throughput(it, batches, warmup, batch_size):
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  assert batch['image'].shape[0] == batch_size
  return batches * batch_size / (time.perf_counter() - start)


def _measure(name, manual_dir, workers):
  pooled = sources.load_pooled(name, data_dir=_DATA_DIR.value, manual_dir=manual_dir)
  protocol = 'original' if {'train', 'test'} <= set(pooled.metadata['origin']) else 'stratified'
  rows = []
  config = _config(name, manual_dir, cache=False, workers=workers)
  config.split.protocol = protocol
  p = pipeline.create_input_pipeline(config, global_batch_size=_BATCH.value,
                                     eval_batch_size=_BATCH.value, seed=0)
  rate = _throughput(p.train_iter, _BATCHES.value, _WARMUP.value, _BATCH.value)
  p.close()
  rows.append((name, p.num_train, 'uncached: decode + preprocess', workers, rate))

  start = time.perf_counter()  # the cache build alone, as create_input_pipeline runs it
  prep = preprocess.Preprocessor(_IMAGE_SIZE.value, tuple(config.contrast_percentiles))
  batching.preprocess_split(pooled.source, p.split_indices['train'], prep,
                            num_workers=workers)
  build = p.num_train / (time.perf_counter() - start)
  rows.append((name, p.num_train, 'cache build (whole train split)', workers, build))

  config = _config(name, manual_dir, cache=True, workers=workers)
  config.split.protocol = protocol
  p = pipeline.create_input_pipeline(config, global_batch_size=_BATCH.value,
                                     eval_batch_size=_BATCH.value, seed=0)
  batches = max(_BATCHES.value, 10 * p.steps_per_epoch)  # cached: long enough to time
  rate = _throughput(p.train_iter, batches, _WARMUP.value, _BATCH.value)
  p.close()
  rows.append((name, p.num_train, 'cached: memory gather', workers, rate))
  return rows


def main(argv):
  del argv
  datasets = [tuple(d.split('=', 1)) for d in _DATASETS.value]
  if _PHANTOM.value:
    datasets.append((_PHANTOM.value, ''))
  rows = []
  for name, manual_dir in datasets:
    sources.load_pooled(name, data_dir=_DATA_DIR.value, manual_dir=manual_dir)  # prepare
    for workers in _WORKERS.value:
      rows += _measure(name, manual_dir, int(workers))
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count()
  print(f'# Input pipeline, image_size={_IMAGE_SIZE.value}, global batch {_BATCH.value}; '
        f'{platform.node()} ({platform.processor() or platform.machine()}, {cpus} CPUs '
        f'available, load average {os.getloadavg()[0]:.1f}), '
        f'{datetime.date.today().isoformat()}')
  print('| dataset | train images | path | workers | images/s |')
  print('|---|---:|---|---:|---:|')
  for name, n, path, workers, rate in rows:
    print(f'| {name} | {n} | {path} | {workers} | {rate:,.0f} |')


if __name__ == '__main__':
  app.run(main)
