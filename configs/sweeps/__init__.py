"""Configs of the paper's hyperparameter figures, for `spp_resnet.experiments.sweep`."""
