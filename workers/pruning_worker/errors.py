"""Outcomes of the pipeline other than success."""


class JobInputError(ValueError):
    """The job's inputs are unusable (model, dataset or spec): the job fails, no retry."""


class Cancelled(Exception):
    """The job was cancelled while it ran."""


class JobDeadlineExceeded(Exception):
    """The job ran past the configured time limit."""


class ConversionError(RuntimeError):
    """A Keras 3 model and its tf_keras translation disagree: the service's fault, not the input's."""
