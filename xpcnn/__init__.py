"""xpcnn: a convolutional neural network written by hand once, on the Python Array API standard."""

__version__ = "0.1.0"
