r"""The ablation at the paper's full setting, for a GPU: results NOT RUN YET.

Exactly configs/default.py (ResNet-50 v1, 224 x 224, SPP levels (1, 4, 8), two FC
layers of 512 with dropout 0.5, SGD momentum 0.9, constant lr 1e-4, weight decay 5e-4,
batch 32, 25 epochs; the paper's protocol = 1500 + 1500 images with 60 random test
slices), plus, for the leakage-safe protocol, the same subset size drawn as whole
duplicate groups (`data.split.max_per_class = 1500`) and split 3-fold. The TL rows need
the official Keras ImageNet file (docs/weights.md): the runner first looks for a cached
copy (`pretrained.cache_dir`, `~/.keras/models`, `~/.cache/torch/hub/checkpoints`), then
downloads it; offline and uncached, the TL rows are reported as not run.

Commands (the full Bohaju set, 3762 images, as the paper; then the 4-class set
binarized, where no_tumor has only 500 images, so `per_class` caps there):
  python -m spp_resnet.experiments.ablation --config=configs/ablation_gpu.py \
      --workdir=runs/ablation_gpu/bohaju --title='Bohaju (binary), paper setting' \
      --config.data.manual_dir=/path/to/kaggle/brain_tumor \
      --config.pretrained.path=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
  python -m spp_resnet.experiments.ablation --config=configs/ablation_gpu.py \
      --workdir=runs/ablation_gpu/bhuvaji_binary \
      --title='Bhuvaji 4-class set binarized, paper setting' \
      --config.data.dataset=brain_tumor_mri/binary \
      --config.data.manual_dir=/path/to/brain_tumor_classification_mri \
      --config.pretrained.path=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
Each is 4 variants x 2 protocols x 3 repeats = 24 runs of 25 epochs over ~3000 images
at 224 px. Results: not run yet (no GPU was available when docs/results.md was written).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.split.max_per_class = 1500  # 'grouped': the paper subset's size
  config.keep_checkpoints = 1
  return config
