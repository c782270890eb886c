"""The node library, one module per family; each node is its forward and backward rule.

Every rule is written against ``ctx.xp``, the Array-API namespace of the run's
backend, so the same node runs on NumPy, CuPy, PyTorch or any other Array-API
library.

- ``elementwise``: arithmetic and activations (Add, Mul, Sigmoid, ReLU, ...)
- ``linalg``: MatMul, Linear, Tensordot, Outer
- ``reductions``: Sum, Mean, Max, Min, Var, Std, LogSumExp, CumSum
- ``losses``: Softmax, LogSoftmax, CrossEntropyWithSoftmax, MeanSquaredError (MSE),
  BinaryCrossEntropyWithLogits, DummyGrad
"""
from .elementwise import Add, Div, Exp, Log, Mul, Neg, ReLU, Sigmoid, Sub, Tanh, sigmoid
from .linalg import Linear, MatMul
from .losses import CrossEntropyWithSoftmax, DummyGrad, softmax
from .reductions import Mean, Sum
from .linalg import Outer, Tensordot
from .reductions import CumSum, LogSumExp, Max, Min, Std, Var
from .losses import MSE, BinaryCrossEntropyWithLogits, LogSoftmax, MeanSquaredError, Softmax

__all__ = [
    "Add", "Sub", "Neg", "Mul", "Div", "Sigmoid", "Tanh", "ReLU", "Exp", "Log",
    "MatMul", "Linear", "Sum", "Mean", "CrossEntropyWithSoftmax", "DummyGrad",
    "sigmoid", "softmax",
    "Tensordot", "Outer", "Max", "Min", "Var", "Std", "LogSumExp", "CumSum",
    "Softmax", "LogSoftmax", "MeanSquaredError", "MSE", "BinaryCrossEntropyWithLogits",
]
