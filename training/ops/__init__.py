"""tokfilter.training.ops"""
