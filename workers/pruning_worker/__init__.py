"""Celery workers of the pruning service. Only this package imports TensorFlow."""

import os

# TFMOT runs on Keras 2 (tf_keras); this must hold before any module here imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
