"""recfuse.layers."""
