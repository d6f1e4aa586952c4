r"""The paper's learning-rate sweep (one of its Figures 7-9): 1e-5 to 1 in decades.

The paper's setting (configs/default.py: ResNet-50 + SPP + Keras ImageNet weights,
224 px, 25 epochs, SGD, batch 32, the 'paper' split) with every other field unchanged,
and a validation split (10% of train, leakage-safe) on which each run keeps its best
epoch and the sweep picks its grid point; the paper does not say what it chose on. The
plots put the learning rate on a log axis.

Command (3 random 'paper' splits per grid point; the grid is `sweep_grid` below unless
--sweep is given):
  python -m spp_resnet.experiments.sweep --config=configs/sweeps/learning_rate.py \
      --workdir=runs/sweeps/learning_rate \
      --config.data.manual_dir=/path/to/kaggle/brain_tumor \
      --config.pretrained.path=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

The paper claims a learning rate of 1e-4 is best. Measured only at a reduced CPU scale
(48 px, the 316-image Bohaju sample, no ImageNet weights, 2 splits a point; 64 min,
docs/results.md): test ROC AUC 0.76-0.80 from 1e-5 to 1e-2, no point separable from
another, divergence at 1e-1 and 1; the full setting (6 x 3 runs) needs a GPU. At 1e-1 and 1 SGD may diverge: such a run is not
stopped (`halt_on_nan` off) but reported as what it is, NaN outputs with ROC AUC n/a.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.split.val_fraction = 0.1  # choose on validation, never on test
  config.sweep_grid = 'optimizer.learning_rate=1e-5,1e-4,1e-3,1e-2,1e-1,1.0'
  config.halt_on_nan = False  # a diverged grid point is a result, not an error
  config.paper_best = 'optimizer.learning_rate=1e-4 (best of 1e-5 ... 1 in the paper)'
  return config
