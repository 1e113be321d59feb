"""gRPC front end of the pruning service. Never imports TensorFlow."""
