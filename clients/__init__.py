"""tokfilter.clients"""

from tokfilter.clients.filter_client import FilterClient
from tokfilter.clients.shards.masked import MaskedShards  # training reader of masked shards

__all__ = ["FilterClient", "MaskedShards"]
