r"""The paper's Table 3: ResNet-50, VGG-16, GoogLeNet, AlexNet and LeNet-5, each with SPP,
from random initialization and with ImageNet weights (LeNet has none), under the paper's
random slice-level split and the leakage-safe grouped k-fold, with 95% intervals.

`get_config()` ('gpu', the default) is the paper's setting of configs/ablation_gpu.py
(224 px, 25 epochs, SGD lr 1e-4, batch 32, 1500 + 1500 images, 60 test slices; grouped:
the same subset size as whole duplicate groups) for every backbone. The ImageNet files
are the paper's Keras ones where Keras has them (ResNet-50, VGG-16; Caffe BGR input),
torchvision's for GoogLeNet and AlexNet (ImageNet mean/std input; the runner picks the
source that has each backbone, `spp_resnet.weights.sources.sources_for_backbone`). Put
them into `pretrained.cache_dir` (or `~/.keras/models`, `~/.cache/torch/hub/checkpoints`):
  python -m spp_resnet.weights.convert --source imagenet_keras --backbone vgg16
  python -m spp_resnet.weights.convert --source imagenet_torchvision --backbone googlenet
(downloads them; offline, the rows are reported "not run" with each file's address).

  python -m spp_resnet.experiments.ablation --config=configs/table3.py \
      --workdir=runs/table3/bohaju --title='Table 3: Bohaju (binary), paper setting' \
      --config.data.manual_dir=/path/to/kaggle/brain_tumor
5 backbones x 2 variants x 2 protocols x 3 repeats = 60 runs of 25 epochs at 224 px.
Not run yet; not timed: a ResNet-50 run takes 92 s on one H200 (configs/default.py),
VGG-16 has about 4x its FLOPs, GoogLeNet, AlexNet and LeNet far fewer.
`--config.ablation_backbones="('resnet50','vgg16_bn')"` picks other rows (any of
`spp_resnet.models.BACKBONES`).

`get_config('cpu')` (`--config=configs/table3.py:cpu`) is the reduced CPU scale of
configs/ablation_cpu.py (Adam lr 1e-3 with cosine decay, 3 epochs, batch 16, hidden FC
layers of 128, torchvision weights and ResNet v1.5) at 64 px instead of 48, where the
last maps are 2x2 (ResNet-50, GoogLeNet), 4x4 (VGG-16), 3x3 (AlexNet), 9x9 (LeNet):
  nice -n 10 python -m spp_resnet.experiments.ablation --config=configs/table3.py:cpu \
      --workdir=runs/table3_cpu/bohaju --title='Table 3: Bohaju sample, CPU' \
      --config.data.dataset=brain_tumor --config.data.data_dir=/tmp/tfds \
      --config.data.manual_dir=../shared/data/bohaju_brain_tumor_sample \
      --config.data.split.per_class=1500 --config.data.split.max_per_class=0 \
      --protocols=paper,grouped --folds=1
one repeat per protocol: 10 runs (the TL rows not run without the files). Measured
(docs/results.md, 2026-11-30, 2-core CPU at load 7-12): the 'paper' protocol's five
runs took 18 min (ResNet-50 6.3, VGG-16 5.6, GoogLeNet 4.5, AlexNet 1.2, LeNet 0.6);
the grouped protocol takes as long again.
"""

from configs import ablation_cpu
from configs import ablation_gpu

BACKBONES = ('resnet50', 'vgg16', 'googlenet', 'alexnet', 'lenet')


def get_config(scale: str = 'gpu'):
  if scale not in ('gpu', 'cpu'):
    raise ValueError(f"configs/table3.py: scale must be 'gpu' or 'cpu', got {scale!r}")
  if scale == 'cpu':
    config = ablation_cpu.get_config()
    config.data.image_size = 64
  else:
    config = ablation_gpu.get_config()
  config.ablation_backbones = BACKBONES
  config.ablation_variants = ('spp', 'spp_tl')
  return config
