"""recfuse.inference."""
