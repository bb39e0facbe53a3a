"""tokfilter.training.experiments: a grid of pretraining runs (grid), the claims judged on it (claims), plots and report (report); configs in configs/."""
