"""recfuse.evaluation."""
