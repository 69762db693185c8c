"""xpcnn: a convolutional neural network written by hand once, on the Python Array API standard.

The same kernels run on NumPy (CPU) and CuPy (CUDA GPU).

>>> import xpcnn
>>> model = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(10)], input_shape=(1, 28, 28))
>>> model.count_params()
7850
"""

from . import functional, initializers, layers, optimizers
from ._version import __version__
from .backend import get_backend, to_numpy
from .errors import CheckpointError, DataError, DeviceError, InputError, ShapeError, XpcnnError
from .interop import keras as keras_bridge
from .model import NonFiniteLossError, Sequential
from .optimizers import SGD, Adam


def load(path, device=None):
    """Load a model saved with ``model.save(path)`` onto ``device`` (see :meth:`Sequential.load`)."""
    return Sequential.load(path, device=device)


def from_keras(model, **kw):
    """An xpcnn ``Sequential`` from a Keras 3 ``Sequential`` or ``.keras`` file; needs the ``keras``
    extra. See :func:`xpcnn.interop.keras.from_keras`."""
    return keras_bridge.from_keras(model, **kw)


__all__ = [
    "SGD", "Adam", "CheckpointError", "DataError", "DeviceError", "InputError", "NonFiniteLossError", "Sequential",
    "ShapeError", "XpcnnError", "__version__", "from_keras", "functional", "get_backend", "initializers", "layers",
    "load", "optimizers", "to_numpy",
]
