"""tferrors.root_cause cuts an eager op's error to its cause: no "[Op:...]" and no "name:"
after it (a sensitivity scan's failed job read "... is not in [0, 50) name:"). Real TensorFlow."""

from __future__ import annotations

import pytest
import tensorflow as tf

from pruning_worker.tferrors import root_cause


@pytest.mark.parametrize(
    "call", [lambda v: tf.gather(v, [12]), lambda v: tf.nn.embedding_lookup(v, tf.constant([[12]]))]
)
def test_an_eager_op_s_error_is_its_cause_alone(call):
    table = tf.Variable(tf.zeros((10, 4)))
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        call(table)
    cause = root_cause(raised.value)
    assert cause.endswith("is not in [0, 10)"), cause
    assert "name:" not in cause and "[Op:" not in cause
