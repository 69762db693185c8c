"""Ready-made experiments, as plain data: layer configs plus training defaults.

A preset is a dict; ``build_model(preset)`` turns its ``layers`` (``Layer.get_config()``-style
dicts) into a :class:`~xpcnn.model.Sequential`. Define your own network the same way:

>>> from xpcnn.presets import PRESETS, build_model
>>> mine = dict(PRESETS["lenet"], layers=[{"class": "Flatten"}, {"class": "Dense", "units": 10}])
>>> build_model(mine, device="cpu").count_params()
7850

``task`` says how labels become targets: ``"classes"`` (integer digit labels) or
``"greater_than_4"`` (the tutorial's binary target: 1.0 when the digit is > 4, else 0.0).
"""

from __future__ import annotations

import copy

import numpy as np

from .errors import InputError
from .model import Sequential

_TUTORIAL_COMMON = {
    "dataset": "mnist",
    "input_shape": [1, 28, 28],
    "task": "greater_than_4",
    "loss": "squared_error",
    "optimizer": "sgd",
    "train_size": 200,
    "test_size": 1000,
    "batch_size": 200,  # full batch: plain gradient descent, as the tutorial
}

PRESETS = {
    "tutorial": {
        **_TUTORIAL_COMMON,
        "description": "The tutorial's experiment done right: true gradients, biases, Glorot initialization.",
        "layers": [
            {"class": "Conv2D", "filters": 3, "kernel_size": [5, 5], "activation": "sigmoid"},
            {"class": "Flatten"},
            {"class": "Dense", "units": 1, "activation": "sigmoid"},
        ],
        "learning_rate": 0.3,
        "epochs": 300,
    },
    "tutorial-faithful": {
        **_TUTORIAL_COMMON,
        "description": "The network the tutorial's code really computes: U[0,1) weights, no biases, the "
        "dense output standardized over the batch (with its true gradient).",
        "layers": [
            {"class": "Conv2D", "filters": 3, "kernel_size": [5, 5], "activation": "sigmoid", "use_bias": False,
             "kernel_initializer": "uniform"},
            {"class": "Flatten"},
            {"class": "Dense", "units": 1, "use_bias": False, "kernel_initializer": "uniform"},
            {"class": "BatchStandardize"},
            {"class": "Sigmoid"},
        ],
        "learning_rate": 0.3,
        "epochs": 300,
    },
    "lenet": {
        "description": "LeNet-5 style: conv 6@5x5 same, pool, conv 16@5x5, pool, 120, 84, 10; ReLU.",
        "dataset": "mnist",
        "input_shape": [1, 28, 28],
        "task": "classes",
        "layers": [
            {"class": "Conv2D", "filters": 6, "kernel_size": [5, 5], "padding": "same", "activation": "relu"},
            {"class": "MaxPool2D", "pool_size": [2, 2]},
            {"class": "Conv2D", "filters": 16, "kernel_size": [5, 5], "activation": "relu"},
            {"class": "MaxPool2D", "pool_size": [2, 2]},
            {"class": "Flatten"},
            {"class": "Dense", "units": 120, "activation": "relu"},
            {"class": "Dense", "units": 84, "activation": "relu"},
            {"class": "Dense", "units": 10},
        ],
        "loss": "softmax_cross_entropy",
        "optimizer": "adam",
        "learning_rate": 4e-3,
        "lr_decay": 0.4,  # x0.4 per epoch: 99.0% on MNIST in 4 epochs (BENCHMARKS.md, P4)
        "epochs": 5,
        "batch_size": 128,
        "train_size": None,  # all
        "test_size": None,
    },
}


def get_preset(name):
    if name not in PRESETS:
        raise InputError(f"Unknown preset {name!r}. Expected one of {', '.join(sorted(PRESETS))}.")
    return copy.deepcopy(PRESETS[name])


def build_model(preset, *, device=None, dtype="float32", seed=0):
    return Sequential.from_config({"layers": preset["layers"], "input_shape": preset["input_shape"]},
                                  device=device, dtype=dtype, seed=seed)


def targets(labels, task):
    """Labels (N,) -> what the preset's loss expects."""
    if task == "classes":
        return labels.astype(np.int64)
    if task == "greater_than_4":
        return (labels > 4).astype(np.float32)[:, None]
    raise InputError(f"Unknown task {task!r}. Expected 'classes' or 'greater_than_4'.")
