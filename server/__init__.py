"""tokfilter.server"""
