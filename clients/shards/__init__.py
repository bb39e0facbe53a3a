"""tokfilter.clients.shards: the shard format (writer) and the training-side reader of masked shards (masked)."""
