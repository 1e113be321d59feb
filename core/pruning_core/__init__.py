"""What the server and the workers share: settings, the Redis and artifact stores, and the
checks and schemas of specs, models and formats. Imports no gRPC server code and no TensorFlow."""
