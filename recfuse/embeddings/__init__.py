"""recfuse.embeddings."""
