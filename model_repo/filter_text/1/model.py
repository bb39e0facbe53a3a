"""Triton python-backend entry point; the implementation lives in tokfilter.server.triton_models."""
from tokfilter.server.triton_models import TritonPythonModel  # noqa: F401
