"""tokfilter.training"""
