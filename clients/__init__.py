"""tokfilter.clients"""
from tokfilter.clients.masked_shards import MaskedShards  # noqa: F401  (training reader of masked shards)
