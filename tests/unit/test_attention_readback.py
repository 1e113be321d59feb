"""A tf_keras model with a MultiHeadAttention read back by Keras 3 (a structured job on a Keras 3
transformer, or a tf_keras upload asked back as Keras 3): tf_keras writes the attention's
query_shape/key_shape/value_shape into its configuration, which Keras 3's MultiHeadAttention
does not take, so the job failed after its fine-tuning with "Keras 3 cannot read this model back"."""

from __future__ import annotations

import numpy as np


def _transformer():
    import tf_keras as keras

    L = keras.layers
    i = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 8)(i)
    a = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(x, x)
    x = L.LayerNormalization()(L.Add()([x, a]))
    x = L.Dense(12, activation="relu", name="ffn")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(3, name="out")(x))


def test_a_tf_keras_model_with_attention_reads_back_as_keras3(tmp_path):
    from pruning_worker.export import keras3_twin

    model = _transformer()
    twin, diff = keras3_twin(model, None, tmp_path)
    x = np.random.default_rng(0).integers(0, 20, (4, 6)).astype("int32")
    assert diff < 1e-5
    np.testing.assert_allclose(np.asarray(twin(x)), model.predict(x, verbose=0), atol=1e-5)


def test_cross_attention_with_a_key_and_a_causal_mask_reads_back_as_keras3(tmp_path):
    import tf_keras as keras

    from pruning_worker.export import keras3_twin

    L = keras.layers
    q = keras.Input((5, 8), name="q")
    c = keras.Input((3, 6), name="c")
    a = L.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=4, output_shape=6, name="cross")(
        q, c, key=L.Dense(7, name="keys")(c)
    )
    b = L.MultiHeadAttention(num_heads=2, key_dim=4, name="causal")(q, q, use_causal_mask=True)
    out = L.Dense(2, name="out")(L.Concatenate()([L.GlobalAveragePooling1D()(a), L.GlobalAveragePooling1D()(b)]))
    model = keras.Model([q, c], out)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(4, 5, 8)).astype("float32"), rng.normal(size=(4, 3, 6)).astype("float32")]
    twin, diff = keras3_twin(model, None, tmp_path)
    np.testing.assert_allclose(np.asarray(twin(x)), model.predict(x, verbose=0), atol=1e-5)


def test_a_structured_job_on_a_keras3_transformer_succeeds_and_hands_back_keras3(tmp_path):
    """The symptom: the job fine-tuned, then failed with INVALID_ARGUMENT on
    spec.pruning.structured ("Keras 3 cannot read this model back ... query_shape")."""
    import keras
    from pipeline_reporter import PipelineReporter

    from pruning_client import job_spec, structured
    from pruning_core import recipe
    from pruning_core.validation import with_defaults
    from pruning_worker.inputs import Inputs
    from pruning_worker.pipeline import run

    L = keras.layers
    i = keras.Input((10,), dtype="int32", name="tokens")
    x = L.Embedding(30, 16, name="emb")(i)
    a = L.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(x, x)
    x = L.LayerNormalization(name="ln1")(L.Add()([x, a]))
    f = L.Dense(32, activation="relu", name="ffn1")(x)
    x = L.LayerNormalization(name="ln2")(L.Add()([x, L.Dense(16, name="ffn2")(f)]))
    model = keras.Model(i, L.Dense(4, name="out")(L.GlobalAveragePooling1D()(x)))
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 30, (160, 10)).astype("int32")
    ys = (xs[:, 0] % 4).astype("int64")
    data = (xs[:128], ys[:128], xs[128:], ys[128:])
    spec = with_defaults(
        job_spec(
            "a" * 64,
            structured=structured(0.5, latency_repeats=1),
            epochs=1,
            batch_size=32,
            validation_split=0.0,
            report=False,
        )
    )
    recipe.resolve(spec, 4)
    work = tmp_path / "work"
    work.mkdir()
    result, files = run(spec, Inputs(tmp_path / "m.keras", data, 1 << 30), PipelineReporter(), work)
    widths = {w.name: (w.channels_before, w.channels_after) for w in result.structured.layers}
    assert widths["ffn1"] == (32, 16)
    out = keras.saving.load_model(next(f for f, fmt in files if str(f).endswith(".keras")))
    assert out.get_layer("ffn1").units == 16 and type(out.get_layer("mha")).__name__ == "MultiHeadAttention"
