"""The node library, one module per family; each node is its forward and backward rule.

Every rule is written against ``ctx.xp``, the Array-API namespace of the run's
backend, so the same node runs on NumPy, CuPy, PyTorch or any other Array-API
library.

- ``elementwise``: arithmetic and activations (Add, Mul, Sigmoid, ReLU, ...)
- ``linalg``: MatMul, Linear
- ``reductions``: Sum, Mean
- ``losses``: CrossEntropyWithSoftmax, DummyGrad
- ``conv``: Conv2D, MaxPool2D, AvgPool2D, Dropout, LayerNorm
- ``shape``: Flatten
"""
from .conv import AvgPool2D, Conv2D, Dropout, LayerNorm, MaxPool2D
from .elementwise import Add, Div, Exp, Log, Mul, Neg, ReLU, Sigmoid, Sub, Tanh, sigmoid
from .linalg import Linear, MatMul
from .losses import CrossEntropyWithSoftmax, DummyGrad, softmax
from .reductions import Mean, Sum
from .shape import Flatten

__all__ = [
    "Add", "Sub", "Neg", "Mul", "Div", "Sigmoid", "Tanh", "ReLU", "Exp", "Log",
    "MatMul", "Linear", "Sum", "Mean", "CrossEntropyWithSoftmax", "DummyGrad",
    "sigmoid", "softmax",
    "Conv2D", "MaxPool2D", "AvgPool2D", "Dropout", "LayerNorm", "Flatten",
]
