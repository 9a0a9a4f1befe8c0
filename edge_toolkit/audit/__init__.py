"""Dataset audit: duplicates, split leakage and shortcut features. No TensorFlow."""
