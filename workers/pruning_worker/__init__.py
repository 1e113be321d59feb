"""Celery workers of the pruning service. Only this package imports TensorFlow."""

import os

# TFMOT runs on Keras 2 (tf_keras); this must hold before any module here imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# oneDNN's kernels on every x86 CPU, not only those with AVX-512: without them TensorFlow runs
# no channels_first (NCHW) convolution or pooling on a CPU, and such a model fails its job.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
