"""tokfilter.training.corpus: the seeded demo corpus from offline sources (sources), its weak labels (weak_labels), splits and manifest (build)."""
