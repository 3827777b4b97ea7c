"""recfuse.training."""
