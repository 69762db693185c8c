"""Pure kernels: arrays in, arrays out, forward and backward side by side (see each module)."""

from .activations import ACTIVATIONS, sigmoid, softmax
from .conv import conv2d_backward, conv2d_forward
from .core import dropout_backward, dropout_forward, flatten_backward, flatten_forward
from .dense import dense_backward, dense_forward
from .losses import LOSSES, Loss, accuracy, one_hot
from .normalization import batch_standardize_backward, batch_standardize_forward
from .pooling import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward

__all__ = [
    "ACTIVATIONS", "LOSSES", "Loss", "accuracy", "avg_pool2d_backward", "avg_pool2d_forward",
    "batch_standardize_backward", "batch_standardize_forward",
    "conv2d_backward", "conv2d_forward", "dense_backward", "dense_forward", "dropout_backward",
    "dropout_forward", "flatten_backward", "flatten_forward", "max_pool2d_backward",
    "max_pool2d_forward", "one_hot", "sigmoid", "softmax",
]
