"""edge_toolkit: a bone-fracture X-ray classifier from training to a cheap offline device.

The package root imports nothing heavy: `edge_toolkit.runtime` must stay importable on a
Raspberry Pi that has no TensorFlow.
"""

__version__ = "0.1.0"
