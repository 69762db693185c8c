"""xpcnn: a convolutional neural network written by hand once, on the Python Array API standard.

The same kernels run on NumPy (CPU) and CuPy (CUDA GPU).

>>> import xpcnn
>>> model = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(10)], input_shape=(1, 28, 28))
>>> model.count_params()
7850
"""

__version__ = "0.3.0"

from . import functional, initializers, layers, optimizers  # noqa: E402
from .backend import get_backend, to_numpy  # noqa: E402
from .errors import CheckpointError, DataError, DeviceError, InputError, ShapeError, XpcnnError  # noqa: E402
from .model import NonFiniteLossError, Sequential  # noqa: E402
from .optimizers import SGD, Adam  # noqa: E402


def load(path, device=None):
    """Load a model saved with ``model.save(path)`` onto ``device`` (see :mod:`xpcnn.io`)."""
    from .io import load_model

    return load_model(path, device=device)


def from_keras(model, **kw):
    """An xpcnn ``Sequential`` from a Keras 3 ``Sequential`` or ``.keras`` file; needs the ``keras``
    extra. See :func:`xpcnn.interop.keras.from_keras`."""
    from .interop.keras import from_keras as convert

    return convert(model, **kw)


__all__ = [
    "SGD", "Adam", "CheckpointError", "DataError", "DeviceError", "InputError", "NonFiniteLossError", "Sequential",
    "ShapeError", "XpcnnError", "from_keras", "functional", "get_backend", "initializers", "layers", "load",
    "optimizers", "to_numpy",
]
