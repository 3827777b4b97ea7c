"""recfuse.embeddings: stream a catalog through an encoder into Parquet shards (local loop or Ray Data)."""

from recfuse.embeddings.encoder import Encoder, EncodeResult, EncoderFactory, HashProjectionEncoder
from recfuse.embeddings.engine import EmbedReport, Engine, Progress
from recfuse.embeddings.job import run_embedding_job

__all__ = [
    "EmbedReport",
    "EncodeResult",
    "Encoder",
    "EncoderFactory",
    "Engine",
    "HashProjectionEncoder",
    "Progress",
    "run_embedding_job",
]
