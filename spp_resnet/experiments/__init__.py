"""Experiments: the paper's ablation and evaluation on outside data.

- `python -m spp_resnet.experiments.ablation --config=... --workdir=...`: the four
  variants of the paper's Table 2 (basic, +SPP, +TL, +SPP+TL) under one or more split
  protocols, over folds or seeds; a results table with 95% intervals (Markdown, JSON)
  and ROC, confusion-matrix and training-curve plots (`ablation.py`).
- `python -m spp_resnet.experiments.evaluate_external --workdir=RUN --dataset=image_folder
  --manual_dir=DIR`: a trained run's checkpoint on every image of another dataset, with
  the same metrics and plots (`evaluate_external.py`).

Results measured with these commands are in docs/results.md.
"""
