"""tokfilter.clients"""
