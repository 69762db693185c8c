"""BatchStandardize: the tutorial's standardization over the batch, with its true gradient."""


from __future__ import annotations

from .. import functional as F
from .base import Layer


class BatchStandardize(Layer):
    """Standardize each feature over the batch: ẑ = (z - μ) / σ, σ = sqrt(var + ε).

    Batch normalization without scale and shift, backpropagated exactly (the forward and the
    gradient are in :mod:`xpcnn.functional.normalization`). The tutorial's network applies it to
    the dense output before the last sigmoid. It uses the batch's own statistics also at
    inference (there are no running averages): an output depends on the whole batch, and a batch
    of one image standardizes to 0.

    Examples
    --------
    >>> BatchStandardize().output_shape((10,))
    (10,)
    """

    couples_batch = True  # its output depends on the whole batch: a batch is never split across threads

    def __init__(self, epsilon=1e-8, name=None):
        super().__init__(name)
        self.epsilon = float(epsilon)

    def _forward(self, x, training):
        return F.batch_standardize_forward(x, epsilon=self.epsilon)

    def _backward(self, dy, cache, need_dx):
        return F.batch_standardize_backward(dy, cache), {}

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
