"""The training optimizer: Adam, optionally keeping a moving average of the weights with a warm-up.

Keras' ``use_ema`` averages with a fixed momentum from the first step, so after ``n`` steps the
average still holds ``momentum ** n`` of the initial (random) weights: 82% after 20 steps at 0.99,
which makes a short run's averaged model mostly its initialisation. Here the momentum of step ``t``
is ``min(momentum, (1 + t) / (10 + t))`` (the warm-up of ``tf.train.ExponentialMovingAverage`` with
``num_updates``): the average follows the weights closely at first and settles to ``momentum``
after about ``10 / (1 - momentum)`` steps (1,000 at 0.99).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


class WarmupEMAAdam(tf.keras.optimizers.Adam):  # type: ignore[misc]
    """Adam whose ``use_ema`` average warms up: step ``t`` uses ``min(ema_momentum, (1 + t) / (10 + t))``."""

    def _update_model_variables_moving_average(self, var_list: Any) -> None:
        if not self.use_ema:
            return
        t = tf.cast(self.iterations, tf.float32)
        momentum = tf.minimum(tf.constant(self.ema_momentum, tf.float32), (1.0 + t) / (10.0 + t))

        def update_average(average: tf.Variable, var: tf.Variable) -> None:
            m = tf.cast(momentum, average.dtype)
            average.assign(m * average + (1 - m) * var)

        for var in var_list:
            average = self._model_variables_moving_average[self._index_dict[self._var_key(var)]]
            self._distribution_strategy.extended.update(average, update_average, args=(var,), group=False)


#: variables never decayed: biases and normalisation scales/offsets (decaying them only shrinks
#: activations, it does not regularise what the model has memorised)
NO_DECAY = ("bias", "gamma", "beta")


def make_optimizer(
    learning_rate: float, ema_momentum: float, weight_decay: float = 0.0
) -> tf.keras.optimizers.Optimizer:
    """Adam at ``learning_rate``; with ``ema_momentum > 0`` it also keeps the warmed-up average.

    ``weight_decay > 0`` makes it AdamW: each step every weight except biases and normalisation
    parameters is shrunk by ``learning_rate * weight_decay`` of itself, decoupled from the gradient
    (Loshchilov & Hutter), which also bounds the id embeddings of rarely seen users and items.
    """
    opt = WarmupEMAAdam(
        learning_rate,
        use_ema=ema_momentum > 0,
        ema_momentum=ema_momentum or 0.99,
        weight_decay=weight_decay if weight_decay > 0 else None,
    )
    if weight_decay > 0:
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return opt
