"""Experiments: the paper's ablation and evaluation on outside data.

- `python -m spp_resnet.experiments.ablation --config=... --workdir=...`: the four
  variants of the paper's Table 2 (basic, +SPP, +TL, +SPP+TL) under one or more split
  protocols, over folds or seeds; a results table with 95% intervals (Markdown, JSON)
  and ROC, confusion-matrix and training-curve plots (`ablation.py`).
- `python -m spp_resnet.experiments.sweep --config=... --workdir=... --sweep=FIELD=V1,V2`:
  a grid over config fields x folds or seeds, the best point chosen on validation only,
  each metric against each swept value (`sweep.py`; the paper's Figures 7-9:
  configs/sweeps/). Both runners share `runs.py` (planning, resuming, training a run)
  and `report.py` (intervals, captions, plots).
- `python -m spp_resnet.experiments.evaluate_external --workdir=RUN --dataset=image_folder
  --manual_dir=DIR`: a trained run's checkpoint on every image of another dataset, with
  the same metrics and plots (`evaluate_external.py`).
- `python -m spp_resnet.experiments.cross_dataset --runs=NAME=WORKDIR,...
  --datasets=NAME=REGISTRY_NAME:MANUAL_DIR,... --out=DIR`: every run on every dataset it
  was not trained on, as train-set x test-set matrices per metric (`cross_dataset.py`).

Results measured with these commands are in docs/results.md.
"""
