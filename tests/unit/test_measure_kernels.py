"""What the sparsity figures count as a pruned weight: what TFMOT prunes, by the weight's name."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_worker.measure import fill_sparsity, is_kernel


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def test_gru_bias_prelu_alpha_and_depthwise_kernels_are_not_counted():
    seq = keras.Sequential(
        [keras.Input((6, 3)), keras.layers.GRU(4, name="gru"), keras.layers.PReLU(name="act"), keras.layers.Dense(2)]
    )
    gru_bias = next(w for w in seq.weights if "gru" in w.name and _short(w.name) == "bias")
    assert np.asarray(gru_bias).ndim == 2  # reset_after: a 2-D bias
    assert sorted(_short(w.name) for w in seq.weights if is_kernel(w.name, np.asarray(w))) == [
        "kernel",
        "kernel",
        "recurrent_kernel",
    ]
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.SeparableConv2D(4, 3, name="sep")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    emb = keras.Sequential([keras.Input((5,)), keras.layers.Embedding(20, 4, name="emb")])
    conv = keras.Model(inputs, x)
    assert sorted(_short(w.name) for w in conv.weights + emb.weights if is_kernel(w.name, np.asarray(w))) == [
        "embeddings",
        "pointwise_kernel",
    ]
    assert is_kernel("kernel", np.zeros((2, 2))) and not is_kernel("kernel", np.zeros(2))  # Keras 3 names


def test_a_gru_at_half_sparsity_is_reported_at_half():
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.GRU(4, name="gru"), keras.layers.Dense(2, name="out")])
    gru = model.get_layer("gru")
    values = []
    for w in gru.weights:
        value = np.ones(w.shape, np.float32)
        if is_kernel(w.name, value):
            value.reshape(-1)[: value.size // 2] = 0.0
        values.append(value)
    gru.set_weights(values)
    result = pb.PruneResult()
    fill_sparsity(result, model, {"gru"}, {"gru": 0.5})
    layer = next(layer for layer in result.layers if layer.name == "gru")
    assert layer.weights == 3 * 4 * 3 + 4 * 4 * 3  # kernel + recurrent kernel, not the (2, 12) bias
    assert layer.sparsity == pytest.approx(0.5)
    assert result.pruned_kernel_sparsity == pytest.approx(0.5)
