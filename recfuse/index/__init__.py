"""recfuse.index."""
