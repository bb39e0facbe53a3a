"""tokfilter.clients.engines: the filter pipeline run in one process (local) or on Ray Data (ray)."""
