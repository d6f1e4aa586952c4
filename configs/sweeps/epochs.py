r"""The paper's epochs sweep (one of its Figures 7-9): 5, 10, 25, 50 epochs.

The paper's setting (configs/default.py: ResNet-50 + SPP + Keras ImageNet weights,
224 px, SGD lr 1e-4, batch 32, the 'paper' split) with every other field unchanged, and
a validation split (10% of train, leakage-safe) on which each run keeps its best epoch
and the sweep picks its grid point; the paper does not say what it chose on.

Command (3 random 'paper' splits per grid point; the grid is `sweep_grid` below unless
--sweep is given):
  python -m spp_resnet.experiments.sweep --config=configs/sweeps/epochs.py \
      --workdir=runs/sweeps/epochs \
      --config.data.manual_dir=/path/to/kaggle/brain_tumor \
      --config.pretrained.path=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

The paper claims 25 epochs is best. Measured only at a reduced CPU scale (5, 10, 25
epochs; 48 px, the 316-image Bohaju sample, no ImageNet weights, 2 splits a point; 14
min, docs/results.md): test ROC AUC 0.68-0.77, not separable; the full setting (4 x 3
runs, 90 epochs per split) needs a GPU.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.split.val_fraction = 0.1  # choose on validation, never on test
  config.sweep_grid = 'num_epochs=5,10,25,50'
  config.paper_best = 'num_epochs=25 (best of 5, 10, 25, 50 epochs in the paper)'
  return config
