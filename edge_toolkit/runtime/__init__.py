"""The device runtime: TFLite inference with no TensorFlow or Keras (tested)."""
