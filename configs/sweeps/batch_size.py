r"""The paper's batch-size sweep (one of its Figures 7-9): batches of 16, 32, 64.

The paper's setting (configs/default.py: ResNet-50 + SPP + Keras ImageNet weights,
224 px, 25 epochs, SGD lr 1e-4, the 'paper' split) with every other field unchanged, and
a validation split (10% of train, leakage-safe) on which each run keeps its best epoch
and the sweep picks its grid point; the paper does not say what it chose on. The
learning rate stays 1e-4 for every batch size, as the paper states one rate.

Command (3 random 'paper' splits per grid point; the grid is `sweep_grid` below unless
--sweep is given):
  python -m spp_resnet.experiments.sweep --config=configs/sweeps/batch_size.py \
      --workdir=runs/sweeps/batch_size \
      --config.data.manual_dir=/path/to/kaggle/brain_tumor \
      --config.pretrained.path=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

The paper claims a batch of 32 is best. Measured only at a reduced CPU scale (48 px,
the 316-image Bohaju sample, no ImageNet weights, 2 splits a point; 25 min,
docs/results.md): test ROC AUC 0.69-0.77, not separable; the full setting (3 x 3 runs of
25 epochs) needs a GPU.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.split.val_fraction = 0.1  # choose on validation, never on test
  config.sweep_grid = 'batch_size=16,32,64'
  config.paper_best = 'batch_size=32 (best of 16, 32, 64 in the paper)'
  return config
