"""The training optimizer's moving average of the weights warms up instead of starting at the full momentum."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recfuse.training.optimizer import WarmupEMAAdam, make_optimizer


def _run(opt: tf.keras.optimizers.Optimizer, steps: int) -> tuple[list[float], float]:
    w = tf.Variable([3.0], name="w")
    opt.build([w])
    seen = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((w - 1.0) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
        seen.append(float(w.numpy()[0]))
    opt.finalize_variable_values([w])  # assigns the average
    return seen, float(w.numpy()[0])


@pytest.mark.parametrize("steps", [1, 5, 40])
def test_average_follows_the_warmup_recursion(steps: int) -> None:
    seen, average = _run(make_optimizer(0.1, 0.99), steps)
    expected = 3.0  # the average starts at the initial value
    for t, w in enumerate(seen):
        m = min(0.99, (1 + t) / (10 + t))
        expected = m * expected + (1 - m) * w
    assert average == pytest.approx(expected, abs=1e-5)
    # Keras' own average (fixed 0.99 from step one) would still be mostly the initial 3.0
    plain = 3.0
    for w in seen:
        plain = 0.99 * plain + 0.01 * w
    assert abs(average - seen[-1]) < abs(plain - seen[-1]) / 2


def test_no_average_when_off() -> None:
    opt = make_optimizer(0.1, 0.0)
    assert isinstance(opt, WarmupEMAAdam) and not opt.use_ema
    seen, final = _run(opt, 3)
    assert final == pytest.approx(seen[-1])
    np.testing.assert_array_less(seen[-1], 3.0)  # it trained
