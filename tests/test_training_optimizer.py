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


def test_weight_decay_shrinks_weights_but_not_biases() -> None:
    opt = make_optimizer(0.1, 0.0, weight_decay=0.5)
    w = tf.Variable([2.0, -4.0], name="dense/kernel")
    b = tf.Variable([2.0], name="dense/bias")
    opt.build([w, b])
    opt.apply_gradients([(tf.zeros(2), w), (tf.zeros(1), b)])  # no gradient: only the decay acts
    # decoupled decay: w <- w - lr * wd * w = w * (1 - 0.05)
    np.testing.assert_allclose(w.numpy(), [1.9, -3.8], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [2.0])
    plain = make_optimizer(0.1, 0.0)
    v = tf.Variable([2.0], name="kernel")
    plain.build([v])
    plain.apply_gradients([(tf.zeros(1), v)])
    np.testing.assert_allclose(v.numpy(), [2.0])


def test_weight_decay_config_range() -> None:
    from recfuse.config import RecfuseConfig
    from recfuse.errors import ConfigError

    assert RecfuseConfig.from_dict({"modalities": [], "train": {"weight_decay": 0.01}}).train.weight_decay == 0.01
    with pytest.raises(ConfigError, match=r"`train.weight_decay` must be in \[0.0, 1.0\], got -0.1"):
        RecfuseConfig.from_dict({"modalities": [], "train": {"weight_decay": -0.1}})
