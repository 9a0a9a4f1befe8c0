"""Training: model registry, data pipeline, two-phase transfer learning, evaluation."""
