r"""A classifier trained from scratch (no ImageNet weights) that holds up on unseen MRI.

The recipe; each part is a lever of the ablation in docs/results.md ("A from-scratch
recipe"), measured on a validation split carved from the training data (never on a test
set), where none of them differs from the others beyond noise:
  * leakage-safe grouped split, 15% of the training groups as validation; the kept
    checkpoint is the best validation ROC AUC after the first quarter of training, the
    decision threshold is fitted on validation (Youden's J) and saved with the run;
  * strong on-device augmentation: random resized crop, small rotations and shifts,
    brightness / contrast / gamma jitter and noise, on top of the paper's rot90/flips;
  * classes weighted by inverse frequency (the Bhuvaji set is 85% tumor);
  * AdamW with warmup and cosine decay, label smoothing 0.1;
  * ResNet-18 (v1.5) + SPP (1, 2, 4) + one hidden layer, gray slices at 128 px;
  * each slice cropped to the square around the head before resizing
    (`data.crop_foreground`): the one lever that moved transfer to another source (CPU,
    64 px: Bohaju ROC AUC 0.82-0.89 in three runs with it, 0.33-0.75 in four without;
    docs/results.md, "Cropping to the head"). Bohaju informed this choice, so Bohaju
    numbers of this recipe are no longer an untouched test.

The model to use: `plain,ema,ensemble,mixup` (the crop and the paper's augmentation only,
mixup, the moving average of the weights, the mean of 3 seeds; see below and the README),
trained 8 epochs on the Bhuvaji set (the length chosen on Bohaju as external validation:
longer training kept improving Bhuvaji validation and lost transfer; docs/results.md,
"How long to train"):
  python main.py --config=configs/scratch.py:plain,ema,ensemble,mixup --workdir=runs/scratch \
    --config.data.manual_dir=/path/to/brain_tumor_classification_mri --config.num_epochs=8
The full recipe alone (Bhuvaji's "Brain Tumor Classification (MRI)", binarized):
  python main.py --config=configs/scratch.py --workdir=runs/scratch \
    --config.data.manual_dir=/path/to/brain_tumor_classification_mri
Levers off, one at a time (the recipe ablation): --config=configs/scratch.py:LEVER with
LEVER one of `paper_augment`, `no_label_smoothing`, `no_class_weights`, `sgd`, `gap`,
`size224`, `resnet50`, `no_crop`; several joined by commas. Lever `ssl` starts instead from a
backbone pretrained self-supervised on the unlabelled images (configs/ssl.py; with
--config.pretrained.path=SSL_WORKDIR): the `+SSL` row. `plain` keeps the head crop and
turns off all the rest the recipe adds (the paper's D4 augmentation only, no label
smoothing, no class weights, no weight decay, head (128, 128)).

Measured before the head crop was part of it (one H200, bf16, 2026-11-30, 45 s a run;
docs/results.md, "A from-scratch recipe"): validation ROC AUC 0.978; held-out Bhuvaji test
ROC AUC 0.982, sensitivity 0.96, specificity 0.88 at the fitted threshold; on the Bohaju
BraTS slices ROC AUC 0.58; all 222 figshare tumors found. With the crop, at 64 px on the
CPU, 8 epochs: test ROC AUC 0.940, Bohaju 0.858 (its threshold, fitted on Bhuvaji
validation, still calls nearly every Bohaju slice "no tumor"). The GPU run of the
recipe with the crop is stage 2 of scripts/gpu_recipe.sh, not run yet.

`plain` against the recipe, both with the crop, 3 seeds each at that CPU scale (64 px, 8
epochs; docs/results.md, "The paper's setting against the recipe"): `plain` was better on
validation in every seed (ROC AUC 0.954-0.956 against 0.922-0.940), on the test split
(0.968-0.973 against 0.931-0.954) and on Bohaju (0.815-0.885 against 0.508-0.858). At
this scale it is the better choice; at full scale it is unmeasured (stage 2 of
scripts/gpu_recipe.sh runs both).

`ema` and `ensemble` on top of `plain`, same CPU scale (docs/results.md, "`plain`, a
moving average of the weights, 3 seeds"), trained on Bhuvaji and evaluated on the Bohaju
slices: single runs 0.815-0.885 ROC AUC, with `ema` 0.880-0.947 (same seeds: the average
does not change training), the 3-seed ensemble with `ema` 0.919 [0.882, 0.950] against
the paper setting's 0.836 (paired difference +0.083 [+0.044, +0.124]); but a second
ensemble (seeds 3-5) 0.832, a tie (-0.004 [-0.060, +0.048]). Validation 0.962 and 0.967,
test 0.972 and 0.977. Each member costs a full run: about 5-9 min on 2 CPU cores at 64
px, about 45 s on an H200 at 128 px.

`mixup` on top (alpha 0.2; docs/results.md, "The recommended model"), same CPU scale and
seeds: the first lever that moved both directions. Bhuvaji -> Bohaju: 0.938 and 0.916
for the two ensembles (seeds 0-2 and 3-5; +0.019 and +0.083 over the same seeds without
it, +0.07 to +0.10 over both seeds of the paper setting); the Bohaju sample -> Bhuvaji:
0.805 and 0.814 against 0.630 without (+0.176 [+0.153, +0.199] for seeds 0-2) and the
paper setting's 0.459 (one member, whose 38 validation slices kept its epoch-2
checkpoint, ranks Bhuvaji at 0.469: use the ensemble). In distribution it costs a little
(validation 0.953 against 0.962, test 0.966 against 0.972 on Bhuvaji), so validation
alone would not have chosen it: it was adopted on the two sources we use as outside
sets, which are therefore no longer untouched tests. The saved threshold still does not
transfer. Those runs drew mixup's coefficients from the dropout key (fixed since);
seeds 0-2 retrained with the fix: 0.925 on Bohaju, 0.809 on Bhuvaji. At this config's
own 128 px (seeds 0-2): 0.924 on Bohaju (8 epochs), validation 0.962; but 0.755 on
Bhuvaji from the Bohaju sample, where 64 px did better. Mixup alpha 1.0: worse in both
directions.

`ibn_a` / `ibn_b` (instance normalization as IBN-Net, model.ibn) on top of the
recommended model, same CPU scale (docs/results.md, "Instance normalization"): worse on
the other source both ways (layout 'a': -0.043 [-0.070, -0.020] on Bohaju, -0.073 on
Bhuvaji; 'b': Bhuvaji at chance) though better on Bhuvaji's own validation (0.967
against 0.950). Not adopted. `gap` (global average pooling instead of SPP) on the same
model: the same in distribution, worse on the other source both ways (-0.064 and
-0.075; docs/results.md, "SPP against global pooling").
"""

from configs import default

LEVERS = ('paper_augment', 'no_label_smoothing', 'no_class_weights', 'sgd', 'gap',
          'size224', 'resnet50', 'no_crop')
# Not levers of the recipe ablation: `ssl` needs an SSL run (--config.pretrained.path);
# `plain` turns off everything the recipe adds but the crop; `ema` evaluates a moving
# average of the weights; `ensemble` trains 3 seeds and averages them (see the docstring);
# `mixup` blends training images and their labels (loss.mixup_alpha); `ibn_a` / `ibn_b`
# add instance normalization to the ResNet as IBN-Net's two layouts (model.ibn).
OPTIONS = (*LEVERS, 'ssl', 'plain', 'ema', 'ensemble', 'mixup', 'strip', 'ibn_a', 'ibn_b')
PLAIN = ('paper_augment', 'no_label_smoothing', 'no_class_weights')  # turned off by `plain`


def get_config(levers: str = ''):
  config = default.get_config()
  data = config.data
  data.dataset = 'brain_tumor_mri/binary'
  data.image_size = 128
  data.crop_foreground = True
  data.split.protocol = 'grouped'
  data.split.test_fraction = 0.2
  data.split.val_fraction = 0.15

  aug = data.augment
  aug.crop_scale = (0.6, 1.0)
  aug.aspect_ratio = (0.8, 1.25)
  aug.rotate_degrees = 15.0
  aug.translate = 0.05
  aug.brightness = 0.1
  aug.contrast = 0.2
  aug.gamma = (0.7, 1.4)
  aug.noise_std = 0.02

  model = config.model
  model.backbone = 'resnet18'
  model.variant = 'v1.5'
  model.spp_levels = (1, 2, 4)  # the 4x4 map of a 128 px input: no empty/overlapping bins
  model.head_hidden = (256,)
  model.dropout = 0.3
  config.pretrained.source = ''

  opt = config.optimizer
  opt.name = 'adam'
  opt.learning_rate = 1e-3
  opt.weight_decay = 0.05
  opt.weight_decay_type = 'decoupled'
  opt.schedule = 'cosine'
  opt.warmup_epochs = 2.0

  config.loss.label_smoothing = 0.1
  config.loss.class_weights = 'balanced'
  config.selection.metric = 'roc_auc'
  config.selection.threshold = 'youden'
  # Not the first quarter: on the 38 validation slices of the Bohaju sample one member
  # kept its epoch-2 checkpoint (of 40), close to the random start, and ranked another
  # source at chance (docs/results.md, "The recommended model").
  config.selection.min_epoch_fraction = 0.25

  # The recipe's own length (its GPU runs). For the recommended model on the Bhuvaji set
  # pass --config.num_epochs=8: trained 40, its ROC AUC on Bohaju (used as external
  # validation) peaked within 8 epochs and ended 0.06 lower, while Bhuvaji validation
  # kept rising (docs/results.md, "How long to train"). For the small Bohaju sample (3
  # steps an epoch), 20 did a little better on Bhuvaji than 40 and 10.
  config.num_epochs = 40
  config.batch_size = 64
  config.eval_batch_size = 256
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000

  names = [x.strip() for x in levers.split(',') if x.strip()]
  for lever in [n for name in names for n in ((*PLAIN, name) if name == 'plain' else (name,))]:
    if lever not in OPTIONS:
      raise ValueError(f'configs/scratch.py: unknown lever {lever!r}; one of {OPTIONS}')
    if lever == 'paper_augment':
      aug.crop_scale = aug.aspect_ratio = aug.gamma = (1.0, 1.0)
      aug.rotate_degrees = aug.translate = aug.brightness = aug.contrast = 0.0
      aug.noise_std = 0.0
    elif lever == 'no_label_smoothing':
      config.loss.label_smoothing = 0.0
    elif lever == 'no_class_weights':
      config.loss.class_weights = 'none'
    elif lever == 'sgd':
      opt.name, opt.learning_rate, opt.weight_decay = 'sgd', 0.05, 5e-4
      opt.weight_decay_type = 'coupled'
    elif lever == 'gap':
      model.pooling = 'gap'
    elif lever == 'size224':
      data.image_size = 224
      model.spp_levels = (1, 3, 7)  # the 7x7 map of a 224 px input
    elif lever == 'ssl':  # the backbone of an SSL run (path on the command line)
      config.pretrained.source = 'ssl'
    elif lever == 'no_crop':
      data.crop_foreground = False
    elif lever == 'plain':  # after the PLAIN levers
      opt.weight_decay = 0.0
      model.head_hidden = (128, 128)
    elif lever == 'ema':
      # About 50 steps of memory: 1.5 epochs of the Bhuvaji set at batch 64.
      opt.ema_decay = 0.98
    elif lever == 'ensemble':
      config.ensemble_size = 3
    elif lever == 'mixup':
      config.loss.mixup_alpha = 0.2  # Zhang et al.'s ImageNet value
    elif lever == 'strip':
      data.strip_rim = 0.1  # removes the scalp and skull ring of Bhuvaji's T1 heads
    elif lever in ('ibn_a', 'ibn_b'):
      model.ibn = lever[-1]
    elif lever == 'resnet50':
      model.backbone = 'resnet50'
      model.head_hidden = (512,)
  return config
