"""recfuse.bundle."""
