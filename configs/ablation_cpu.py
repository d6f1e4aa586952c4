r"""The paper's Table 2 ablation at a REDUCED scale that fits a 2-core CPU.

Derived from default.py; the ablation runner lists every field that differs in each
table caption. The reductions: 48 px inputs (ResNet-50's last map is 2 x 2, so SPP keeps
little spatial layout), 3 epochs of batch 16, Adam lr 1e-3 with half an epoch of warm-up
and cosine decay (SGD at the paper's lr 1e-4 does not move a randomly initialized
ResNet-50 in ~50 steps), ResNet-50 v1.5 (torchvision's BatchNorm momentum 0.9 settles
within the run; Keras' 0.99 does not), hidden FC layers of 128, 100 images per class
(`data.split.per_class` / `max_per_class`), one checkpoint at the end. The four variants
differ only in pooling and initialization, and all use the ImageNet input normalization.

Commands, as run for docs/results.md (2026-11-27, 2-core CPU VM, commit 47d11c6; wall
time measured):
  # Bohaju sample, used whole (per_class caps at its 198 / 118 images): 5.9 min
  python -m spp_resnet.experiments.ablation --config=configs/ablation_cpu.py \
      --workdir=runs/ablation_cpu/bohaju --title='Bohaju sample (binary), CPU' \
      --config.data.dataset=brain_tumor --config.data.data_dir=/tmp/tfds \
      --config.data.manual_dir=../shared/data/bohaju_brain_tumor_sample \
      --config.data.split.per_class=1500 --config.data.split.max_per_class=0
  # Bhuvaji 4-class set binarized, 250 + 250 images, 4 epochs: 11.0 min
  # (with 100 + 100 images and 3 epochs, i.e. 24 steps, every model predicted one class)
  python -m spp_resnet.experiments.ablation --config=configs/ablation_cpu.py \
      --workdir=runs/ablation_cpu/bhuvaji_binary \
      --title='Bhuvaji 4-class set binarized, CPU' \
      --config.data.dataset=brain_tumor_mri/binary --config.data.data_dir=/tmp/tfds \
      --config.data.manual_dir=../shared/data/brain_tumor_classification_mri \
      --config.data.split.per_class=250 --config.data.split.max_per_class=250 \
      --config.num_epochs=4 --config.eval_every_epochs=4
  # figshare subset, 3 classes, 30 patients ('grouped' = by patient), 8 epochs: 9.2 min
  python -m spp_resnet.experiments.ablation --config=configs/ablation_cpu.py \
      --workdir=runs/ablation_cpu/figshare \
      --title='figshare subset (3 classes, 30 patients), CPU' \
      --config.data.dataset=figshare_brain_tumor --config.data.data_dir=/tmp/tfds \
      --config.data.manual_dir=../shared/data/figshare_brain_tumor_subset \
      --config.data.split.max_per_class=0 --config.num_epochs=8 --config.eval_every_epochs=8

Expected results: see docs/results.md (accuracies far below the paper's: a randomly
initialized ResNet-50 after ~50 Adam steps on 48 px images). The TL rows need the
official ImageNet weights (docs/weights.md); without them they are reported as
"not run (no ImageNet weights available)".
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 48
  config.data.split.per_class = 100
  config.data.split.max_per_class = 100
  config.model.variant = 'v1.5'
  config.model.head_hidden = (128, 128)
  config.pretrained.source = 'imagenet_torchvision'
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 0.5
  config.num_epochs = 3
  config.eval_every_epochs = 3
  config.batch_size = 16
  config.eval_batch_size = 64
  config.log_every_steps = 5
  config.checkpoint_every_steps = 1_000_000  # only the final checkpoint
  config.keep_checkpoints = 1
  return config
