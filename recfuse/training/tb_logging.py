"""TensorBoard event logs without the ``tensorboard`` package (it is not a recfuse dependency).

``tf.summary.scalar`` and Keras' ``TensorBoard`` callback need the ``tensorboard`` package; the core
op ``tf.summary.write`` does not. Scalars are written with the ``scalars`` plugin metadata, so
TensorBoard (wherever it is installed) shows them as ordinary scalar charts.

Example:
    >>> cb = ScalarLogger("runs/model/tensorboard")   # doctest: +SKIP
    >>> log_scalar(cb.writer, "val_recall@10", 0.2, step=3)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def log_scalar(writer: Any, tag: str, value: float, step: int) -> None:
    """Write one scalar event (``tag``, ``value`` at ``step``) and flush."""
    with writer.as_default():
        tf.summary.write(tag, tf.constant(float(value), tf.float32), step=int(step), metadata=_SCALAR_METADATA)
    writer.flush()


class ScalarLogger(tf.keras.callbacks.Callback):
    """Log every epoch's numeric ``logs`` (loss…) and, every ``every_steps`` steps, the batch loss."""

    def __init__(self, log_dir: str | Path, every_steps: int = 50) -> None:
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "train"))
        self.every_steps = int(every_steps)
        self._step = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step += 1
        if logs and self.every_steps > 0 and self._step % self.every_steps == 0 and "loss" in logs:
            log_scalar(self.writer, "batch_loss", float(logs["loss"]), self._step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float)):
                log_scalar(self.writer, f"epoch_{key}", float(value), epoch + 1)
