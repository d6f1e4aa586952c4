r"""Self-supervised (BYOL) pretraining of the recipe's backbone: a stand-in for ImageNet.

Pretrains the backbone of `configs/scratch.py` (ResNet-18 v1.5, 128 px) on every MRI
slice it may see, labels ignored (`spp_resnet/training/ssl.py`), then fine-tunes with the
recipe unchanged (`configs/scratch.py:ssl`). Leakage protocol: the data section IS the
fine-tuning run's (`data.dataset`, `data.mix`, `data.split`), so the pool excludes its
validation and test images (`ssl.heldout_splits`); other unlabelled sources are added
with `ssl.extra`; datasets used for cross-dataset evaluation go in `ssl.holdout` and
stay unseen, by content (exact and near duplicates of them in any source are dropped).

Commands (Bhuvaji's set binarized downstream, figshare's tumors as extra images, the
Bohaju slices held out for the cross-dataset evaluation):
  python -m spp_resnet.training.ssl --config=configs/ssl.py --workdir=runs/ssl \
    --config.data.manual_dir=$D/sartaj \
    --config.ssl.extra="image_folder=$D/figshare_jpg" \
    --config.ssl.holdout="brain_tumor=$D/bohaju"
  python main.py --config=configs/scratch.py:ssl --workdir=runs/scratch_ssl \
    --config.data.manual_dir=$D/sartaj --config.pretrained.path=runs/ssl
`configs/ssl.py:LEVERS` pretrains for `configs/scratch.py:LEVERS` (e.g. `resnet50`).

Measured (2026-11-30, the 2-core CPU shared with other jobs, load average 7-10; reduced
scale: 64 px, SPP (1, 2), batch 64, 3 epochs of 2380 images; docs/results.md,
"Self-supervised pretraining"): 29.5 min; BYOL loss 1.12, 0.81, 0.75 per epoch,
projection spread 0.72 -> 0.60 (no collapse). Fine-tuned 5 epochs: Bhuvaji test ROC AUC
0.933 (random init 0.940), Bohaju 0.62 (random init 0.75): no gain at that scale. The
full scale below (128 px, 100 epochs, batch 128) is for a GPU and has not been run
(stage 7 of scripts/gpu_recipe.sh; expected, not measured: about 2 min on an H200).
"""

import ml_collections

from configs import scratch


def get_config(levers: str = '') -> ml_collections.ConfigDict:
  return from_downstream(scratch.get_config(levers))


def from_downstream(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The SSL run for fine-tuning `config`: its data, split and model; BYOL's own
  augmentation, optimizer, batch and length."""
  config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  config.ssl = ssl = ml_collections.ConfigDict()
  ssl.hidden_dim = 1024     # projector and predictor MLPs (BYOL: 4096 for ResNet-50)
  ssl.projection_dim = 256  # BYOL's
  # Target decay at the start, rising to 1 on a cosine (BYOL: 0.996 for 1000 epochs;
  # lower for short runs, so that the target keeps up).
  ssl.ema_decay = 0.99
  ssl.heldout_splits = ('val', 'test')  # never pretrained on ('test' is required)
  ssl.extra = ''    # more unlabelled images: 'NAME=MANUAL_DIR;...' (data.mix syntax)
  ssl.holdout = ''  # datasets that must stay unseen (cross-dataset evaluation), same syntax
  config.pretrained.source = ''

  # Two strongly augmented views: crops are the key augmentation of BYOL/SimCLR; the
  # intensity jitter stands in for their colour jitter (gray slices).
  aug = config.data.augment
  aug.crop_scale = (0.25, 1.0)
  aug.aspect_ratio = (0.75, 1.33)
  aug.rotate_degrees = 20.0
  aug.translate = 0.0
  aug.brightness = 0.2
  aug.contrast = 0.4
  aug.gamma = (0.6, 1.6)
  aug.noise_std = 0.05
  aug.blur = 1.0

  opt = config.optimizer
  opt.name = 'adam'
  opt.learning_rate = 1e-3
  opt.weight_decay = 1e-4
  opt.weight_decay_type = 'decoupled'
  opt.schedule = 'cosine'
  opt.warmup_epochs = 5.0

  config.num_epochs = 100
  config.batch_size = 128  # small data: more steps per epoch beat bigger batches
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  return config
