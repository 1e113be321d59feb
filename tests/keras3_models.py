"""Small Keras 3 models (``import keras``) for the Keras 3 <-> tf_keras bridge tests.

Each ``build_*`` function returns the model in memory; :func:`save` writes one as a Keras 3
``.keras`` (or ``.h5``). Nothing is trained: the weights are the random initialisation with
noise added to every variable (biases, BatchNorm statistics and scales included) so that
no translation mistake can hide behind a zero or a one. Together the builders use every
class of ``pruning_worker.bridge.SUPPORTED``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

L = keras.layers


def randomise(model: Any, seed: int = 0) -> Any:
    """Adds noise to every variable; variances get positive values (BatchNorm, Normalization)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if "variance" in v.name:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = np.asarray(v.numpy(), dtype=np.float64) + rng.normal(0.0, 0.1, shape)
        v.assign(value.astype(v.dtype))
    return model


def mnist_cnn_model() -> Any:
    """The TFMOT pruning guide's MNIST model."""
    return keras.Sequential(
        [
            L.InputLayer(shape=(28, 28)),
            L.Reshape((28, 28, 1)),
            L.Conv2D(12, 3, activation="relu"),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(10),
        ],
        name="mnist_cnn",
    )


def residual_cnn_model() -> Any:
    """A functional residual CNN: Conv-BN-ReLU twice, an identity shortcut with Add."""
    inputs = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    shortcut = L.Activation("relu", name="stem_relu")(x)
    x = L.Conv2D(8, 3, padding="same", name="res_conv1")(shortcut)
    x = L.BatchNormalization(momentum=0.9, epsilon=1e-3, name="res_bn1")(x)
    x = L.Activation("relu")(x)
    x = L.Conv2D(8, 3, padding="same", kernel_regularizer=keras.regularizers.L2(1e-4), name="res_conv2")(x)
    x = L.BatchNormalization(center=False, name="res_bn2")(x)
    x = L.Add(name="residual")([x, shortcut])
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(0.2)(x)
    outputs = L.Dense(5, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="residual_cnn")


def mobilenet_block_model() -> Any:
    """A depthwise-separable MobileNet-like block."""
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU(max_value=6.0)(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.SeparableConv2D(16, 3, padding="same", activation="relu")(x)
    x = L.BatchNormalization()(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Flatten()(x)
    outputs = L.Dense(4)(x)
    return keras.Model(inputs, outputs, name="mobilenet_block")


def text_cnn_model() -> Any:
    """Token ids -> Embedding -> Conv1D stack with 1-D pooling of every kind."""
    inputs = keras.Input((20,), dtype="int32", name="tokens")
    x = L.Embedding(50, 8, name="embed")(inputs)
    x = L.ZeroPadding1D(1)(x)
    x = L.Conv1D(16, 3, activation="relu")(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(16, 3, padding="same", activation="tanh")(x)
    x = L.AveragePooling1D(2)(x)
    a = L.GlobalMaxPooling1D()(x)
    b = L.GlobalAveragePooling1D()(x)
    x = L.Concatenate()([a, b])
    outputs = L.Dense(3, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="text_cnn")


def rnn_model() -> Any:
    """Embedding (with a padding mask) -> Bidirectional LSTM -> GRU -> SimpleRNN -> Dense.

    The GRU is the older variant (reset_after=False: one bias row, not two), which also spares
    tf_keras the cuDNN function it registers for each default LSTM or GRU (seconds each)."""
    inputs = keras.Input((7,), dtype="int32", name="tokens")
    x = L.Embedding(30, 6, mask_zero=True)(inputs)
    x = L.Bidirectional(L.LSTM(5, return_sequences=True), name="bilstm")(x)
    x = L.GRU(4, return_sequences=True, reset_after=False)(x)
    x = L.SimpleRNN(3)(x)
    outputs = L.Dense(2)(x)
    return keras.Model(inputs, outputs, name="rnn")


def masked_sequence_model() -> Any:
    """Float sequences padded with zeros: Masking -> LSTM -> Dense (the mask must reach the
    LSTM, before and after pruning)."""
    inputs = keras.Input((6, 3), name="steps")
    x = L.Masking(mask_value=0.0)(inputs)
    x = L.LSTM(5)(x)
    outputs = L.Dense(2)(x)
    return keras.Model(inputs, outputs, name="masked_sequence")


def masked_residual_model() -> Any:
    """Padded token ids: Embedding(mask_zero) -> a residual LSTM block (Add, LayerNormalization)
    -> a masked average: one padding mask on both inputs of the Add."""
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    x = L.Embedding(30, 6, mask_zero=True)(tokens)
    x = L.LayerNormalization()(L.Add()([x, L.LSTM(6, return_sequences=True)(x)]))
    x = L.GlobalAveragePooling1D()(L.Dense(8, activation="relu")(x))
    return keras.Model(tokens, L.Dense(2)(x), name="masked_residual")


def two_in_two_out_model() -> Any:
    """Two inputs concatenated, then two heads."""
    a = keras.Input((6,), name="numbers")
    b = keras.Input((4,), name="flags")
    x = L.Concatenate(name="joined")([L.Dense(8, activation="relu", name="numbers_dense")(a), b])
    x = L.Dense(16, activation="gelu", name="trunk")(x)
    label = L.Dense(3, activation="softmax", name="label")(x)
    score = L.Dense(1, name="score")(x)
    return keras.Model([a, b], [label, score], name="two_in_two_out")


def dict_outputs_model() -> Any:
    """Outputs as a dict whose keys are not the layers' names: labels go by the keys."""
    inputs = keras.Input((6,), name="features")
    x = L.Dense(16, activation="relu", name="trunk")(inputs)
    return keras.Model(
        inputs, {"main": L.Dense(3, name="main_head")(x), "extra": L.Dense(2, name="extra_head")(x)}, name="dict_out"
    )


def nested_model() -> Any:
    """A Sequential and a functional model used as layers inside a functional model, and one
    Dense called twice (a shared layer)."""
    encoder = keras.Sequential(
        [L.InputLayer(shape=(10,)), L.Dense(12, activation="relu", name="enc_dense1"), L.Dense(6, name="enc_dense2")],
        name="encoder",
    )
    head_in = keras.Input((12,), name="head_in")
    head_out = L.Dense(1, activation="sigmoid", name="similarity")(
        L.Dense(4, activation="relu", name="head_dense")(head_in)
    )
    head = keras.Model(head_in, head_out, name="head")
    a = keras.Input((10,), name="left")
    b = keras.Input((10,), name="right")
    shared = L.Dense(6, activation="tanh", name="shared")
    ea, eb = shared(encoder(a)), shared(encoder(b))
    outputs = head(L.Concatenate()([ea, eb]))
    return keras.Model([a, b], outputs, name="nested")


def preprocessing_model() -> Any:
    """Rescaling and an adapted Normalization in front of a small MLP."""
    rng = np.random.default_rng(3)
    norm = L.Normalization(name="norm")
    norm.adapt(rng.normal(2.0, 3.0, (64, 5)).astype("float32"))
    inputs = keras.Input((5,))
    x = L.Rescaling(0.5, offset=-0.25)(inputs)
    x = norm(x)
    x = L.Dense(8, activation="elu")(x)
    outputs = L.Dense(2)(x)
    return keras.Model(inputs, outputs, name="preprocessing")


def recurrent_attention_model() -> Any:
    """Luong- and Bahdanau-style attention over an LSTM's padded sequence (causal, over its
    padding mask, with the scores as a second output), and ConvLSTM1D/2D/3D over clips."""
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    h = L.LSTM(4, return_sequences=True)(L.Embedding(12, 4, mask_zero=True)(tokens))
    a = L.Attention(use_scale=True, name="luong")([h, h], use_causal_mask=True)
    context = keras.Input((3, 4), name="context")
    b, scores = L.AdditiveAttention(name="bahdanau")([h, context], return_attention_scores=True)
    pooled = L.Concatenate()([L.GlobalAveragePooling1D()(a), L.GlobalMaxPooling1D()(b)])
    clip = keras.Input((3, 6, 6, 2), name="clip")
    c = L.GlobalAveragePooling2D()(L.ConvLSTM2D(3, 3, padding="same", name="conv_lstm2d")(clip))
    strips = keras.Input((3, 6, 2), name="strips")
    d = L.GlobalMaxPooling1D()(L.ConvLSTM1D(3, 3, name="conv_lstm1d")(strips))
    volumes = keras.Input((2, 3, 4, 4, 1), name="volumes")
    e = L.GlobalAveragePooling3D()(L.ConvLSTM3D(2, 2, name="conv_lstm3d")(volumes))
    outputs = L.Dense(2, name="head")(L.Concatenate()([pooled, c, d, e]))
    return keras.Model([tokens, context, clip, strips, volumes], [outputs, scores], name="recurrent_attention")


def augmented_image_model() -> Any:
    """An image model with its preprocessing and augmentation inside, as Keras 3's tutorials
    write them: Resizing, CenterCrop, Rescaling and the random layers (active in training,
    the identity in inference), an ActivityRegularization on the features."""
    inputs = keras.Input((12, 12, 3), name="image")
    x = L.Resizing(10, 10, name="resize")(inputs)
    x = L.CenterCrop(9, 9, name="crop")(x)
    x = L.Rescaling(1 / 255.0)(x)
    x = L.RandomFlip("horizontal", name="flip")(x)
    x = L.RandomRotation(0.1, fill_mode="nearest", name="rotate")(x)
    x = L.RandomZoom(0.1, name="zoom")(x)
    x = L.RandomTranslation(0.1, 0.1, name="shift")(x)
    x = L.RandomContrast(0.2, name="contrast")(x)
    x = L.RandomBrightness(0.1, value_range=(0, 1), name="brightness")(x)
    x = L.Conv2D(4, 3, activation="relu")(x)
    x = L.ActivityRegularization(l2=1e-4, name="activity")(L.GlobalAveragePooling2D()(x))
    outputs = L.Dense(3)(x)
    return keras.Model(inputs, outputs, name="augmented_image")


def misc2d_model() -> Any:
    """Conv2DTranspose, ZeroPadding2D, Permute, LayerNormalization, LeakyReLU, Softmax,
    Multiply, Average and 2-D pooling variants."""
    inputs = keras.Input((6, 6, 2))
    x = L.ZeroPadding2D(((1, 0), (0, 1)))(inputs)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
    x = L.LeakyReLU(negative_slope=0.2)(x)
    x = L.AveragePooling2D(2)(x)
    x = L.Permute((2, 1, 3))(x)
    x = L.LayerNormalization()(x)
    a = L.Conv2D(4, 1, activation="sigmoid")(x)
    b = L.Conv2D(4, 1)(x)
    x = L.Multiply()([x, a])
    x = L.Average()([x, b])
    x = L.MaxPooling2D(2, padding="same")(x)
    m = L.GlobalMaxPooling2D()(x)
    x = L.Dense(6)(m)
    outputs = L.Softmax()(x)
    return keras.Model(inputs, outputs, name="misc2d")


def misc3d_model() -> Any:
    """Conv3D with 3-D padding and pooling, and a Reshape into 1-D."""
    inputs = keras.Input((4, 6, 6, 1))
    x = L.ZeroPadding3D(1)(inputs)
    x = L.Conv3D(4, 3, activation="relu")(x)
    x = L.MaxPooling3D((1, 2, 2))(x)
    y = L.AveragePooling3D((2, 1, 1), padding="same")(x)
    a = L.GlobalMaxPooling3D()(y)
    b = L.GlobalAveragePooling3D()(y)
    x = L.Add()([a, b])
    x = L.Reshape((2, 2))(x)
    x = L.Flatten()(x)
    outputs = L.Dense(3, activation="softplus")(x)
    return keras.Model(inputs, outputs, name="misc3d")


def autoencoder_model() -> Any:
    """Convolutional autoencoders' resizing layers: UpSampling and Cropping in 1, 2 and 3
    dimensions (nearest and bilinear), spatial dropout, Conv1D and Conv2DTranspose decoders."""
    image = keras.Input((8, 8, 2), name="image")
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="relu")(image)
    x = L.SpatialDropout2D(0.1)(x)
    x = L.UpSampling2D(2)(x)
    x = L.Conv2DTranspose(4, 3, padding="same")(x)
    x = L.UpSampling2D(2, interpolation="bilinear")(x)
    x = L.Cropping2D(((1, 2), (3, 0)))(x)
    a = L.GlobalAveragePooling2D()(x)
    signal = keras.Input((10, 3), name="signal")
    y = L.Conv1D(4, 3, padding="same", activation="relu")(signal)
    y = L.SpatialDropout1D(0.1)(y)
    y = L.UpSampling1D(3)(y)
    y = L.Cropping1D((2, 1))(y)
    b = L.GlobalMaxPooling1D()(L.Conv1D(4, 3)(y))
    volume = keras.Input((2, 4, 4, 1), name="volume")
    z = L.UpSampling3D((1, 2, 2))(L.Conv3D(2, 1)(volume))
    z = L.SpatialDropout3D(0.1)(z)
    z = L.Cropping3D(((0, 1), (1, 1), (2, 0)))(z)
    c = L.GlobalAveragePooling3D()(z)
    outputs = L.Dense(3)(L.Concatenate()([a, b, c]))
    return keras.Model([image, signal, volume], outputs, name="autoencoder")


def more_layers_model() -> Any:
    """Subtract, Maximum, Minimum, Dot, RepeatVector, Identity, ELU, PReLU, noise and dropout
    variants, GroupNormalization, UnitNormalization, Conv1DTranspose, Conv3DTranspose,
    SeparableConv1D, DepthwiseConv1D."""
    seq = keras.Input((8, 3), name="seq")
    x = L.SeparableConv1D(4, 3, padding="same")(L.Identity()(seq))
    x = L.DepthwiseConv1D(3, depth_multiplier=2, padding="same")(x)
    x = L.Conv1DTranspose(4, 3, strides=2, padding="same")(x)
    x = L.GroupNormalization(groups=2)(x)
    x = L.ELU(alpha=0.5)(x)
    x = L.GaussianNoise(0.1)(x)
    x = L.GaussianDropout(0.1)(x)
    x = L.AlphaDropout(0.1)(x)
    p = L.GlobalAveragePooling1D()(x)
    vol = keras.Input((2, 4, 4, 1), name="vol")
    v = L.Conv3DTranspose(2, 2, strides=(1, 2, 2), padding="same")(vol)
    q = L.GlobalMaxPooling3D()(v)
    a = L.Dense(2)(L.Concatenate()([p, q]))
    b = L.Dense(2)(p)
    h = L.Concatenate()([L.Subtract()([a, b]), L.Maximum()([a, b]), L.Minimum()([a, b]), L.Dot(axes=1)([a, b])])
    h = L.PReLU()(L.Dense(4)(h))
    h = L.UnitNormalization()(h)
    r = L.RepeatVector(3)(h)
    outputs = L.Dense(3)(L.Flatten()(r))
    return keras.Model([seq, vol], outputs, name="more_layers")


def arithmetic_model() -> Any:
    """Arithmetic on tensors, which Keras 3 saves as operations, not layers: pixels / 255 and
    a shift, a residual h + r, a gate a * b, a difference and a scaled branch."""
    inputs = keras.Input((8, 8, 1), dtype="uint8")
    x = inputs / 255.0
    x = x - 0.5
    h = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    r = L.Conv2D(4, 3, padding="same")(h)
    h = h + r
    g = L.Conv2D(4, 1, activation="sigmoid")(h)
    h = h * g
    h = 2.0 * h - L.Conv2D(4, 1)(h)
    outputs = L.Dense(3)(L.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, outputs, name="arithmetic")


def time_distributed_model() -> Any:
    """A clip of frames: TimeDistributed Conv2D, pooling and Dense per frame, an LSTM over the
    frames, Dense. TFMOT prunes inside no wrapper: the LSTM and the last Dense are pruned."""
    inputs = keras.Input((4, 6, 6, 2), name="frames")
    x = L.TimeDistributed(L.Conv2D(3, 3, activation="relu"), name="per_frame_conv")(inputs)
    x = L.TimeDistributed(L.GlobalAveragePooling2D(), name="per_frame_pool")(x)
    x = L.TimeDistributed(L.Dense(5, activation="tanh"), name="per_frame_dense")(x)
    x = L.LSTM(4)(x)
    outputs = L.Dense(2)(x)
    return keras.Model(inputs, outputs, name="time_distributed")


def attention_model() -> Any:
    """Tokens -> Embedding -> causal self-attention with a residual and LayerNormalization ->
    a feed-forward Dense -> cross-attention to a second input (its own key) -> pooled Dense."""
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    context = keras.Input((3, 8), name="context")
    x = L.Embedding(20, 8)(tokens)
    a = L.MultiHeadAttention(num_heads=2, key_dim=4, name="self_attention")(x, x, use_causal_mask=True)
    x = L.LayerNormalization()(L.Add()([x, a]))
    x = L.Dense(8, activation="gelu", name="feed_forward")(x)
    c = L.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=5, output_shape=6, name="cross_attention")(
        x, context, key=L.Dense(8, name="context_keys")(context)
    )
    outputs = L.Dense(2)(L.GlobalAveragePooling1D()(c))
    return keras.Model([tokens, context], outputs, name="attention")


def hard_activations_model() -> Any:
    """MobileNetV3's activations, which tf_keras lacks: hard_silu after a convolution, a
    squeeze-excite gate of hard_sigmoid, and hard_swish (the older name) in a Sequential head."""
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.Activation("hard_silu", name="hs1")(x)
    gate = L.GlobalAveragePooling2D(keepdims=True)(x)
    gate = L.Conv2D(4, 1, activation="relu")(gate)
    gate = L.Conv2D(8, 1)(gate)
    gate = L.Activation("hard_sigmoid", name="se_gate")(gate)
    x = L.Multiply(name="excite")([x, gate])
    head = keras.Sequential([L.Dense(16), L.Activation("hard_swish"), L.Dense(4)], name="head")
    return keras.Model(inputs, head(L.GlobalAveragePooling2D()(x)), name="hard_activations")


BUILDERS: dict[str, Callable[[], Any]] = {
    "mnist_cnn": mnist_cnn_model,
    "residual_cnn": residual_cnn_model,
    "mobilenet_block": mobilenet_block_model,
    "text_cnn": text_cnn_model,
    "rnn": rnn_model,
    "masked_sequence": masked_sequence_model,
    "masked_residual": masked_residual_model,
    "two_in_two_out": two_in_two_out_model,
    "dict_outputs": dict_outputs_model,
    "nested": nested_model,
    "preprocessing": preprocessing_model,
    "augmented_image": augmented_image_model,
    "recurrent_attention": recurrent_attention_model,
    "misc2d": misc2d_model,
    "misc3d": misc3d_model,
    "autoencoder": autoencoder_model,
    "more_layers": more_layers_model,
    "arithmetic": arithmetic_model,
    "time_distributed": time_distributed_model,
    "attention": attention_model,
    "hard_activations": hard_activations_model,
}


def build(name: str, seed: int = 0) -> Any:
    """The model ``name`` in memory, with its random (noisy) weights."""
    keras.utils.set_random_seed(seed)
    return randomise(BUILDERS[name](), seed)


def save(name: str, path: pathlib.Path, seed: int = 0) -> tuple[pathlib.Path, Any]:
    """Builds ``name`` and saves it with Keras 3 (format from the suffix); returns (path, model)."""
    model = build(name, seed)
    keras.saving.save_model(model, path)
    return path, model


def _file_builder(name: str) -> Callable[[pathlib.Path], pathlib.Path]:
    def write(path: pathlib.Path) -> pathlib.Path:
        return save(name, path)[0]

    write.__name__ = write.__qualname__ = name
    write.__doc__ = f"Saves the {name} model (Keras 3) at ``path``; returns ``path``."
    return write


# The builders that take a path: mnist_cnn(path), residual_cnn(path), ...
mnist_cnn = _file_builder("mnist_cnn")
residual_cnn = _file_builder("residual_cnn")
mobilenet_block = _file_builder("mobilenet_block")
text_cnn = _file_builder("text_cnn")
rnn = _file_builder("rnn")
two_in_two_out = _file_builder("two_in_two_out")
nested = _file_builder("nested")
preprocessing = _file_builder("preprocessing")
misc2d = _file_builder("misc2d")
misc3d = _file_builder("misc3d")
autoencoder = _file_builder("autoencoder")
