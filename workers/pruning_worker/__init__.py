"""Celery workers of the pruning service. Only this package imports TensorFlow."""
