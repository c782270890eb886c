"""The node library, one module per family; each node is its forward and backward rule.

Every rule is written against ``ctx.xp``, the Array-API namespace of the run's
backend, so the same node runs on NumPy, CuPy, PyTorch or any other Array-API
library.

- ``elementwise``: arithmetic, powers, selections and activations (Add, Pow, Where, GELU, ...)
- ``shape``: Reshape, Flatten, Transpose, Concat, Stack, Pad, indexing (``x[...]``) and Take
- ``linalg``: MatMul, Linear, Tensordot, Outer
- ``reductions``: Sum, Mean, Max, Min, Var, Std, LogSumExp, CumSum
- ``losses``: Softmax, LogSoftmax, CrossEntropyWithSoftmax, MeanSquaredError (MSE),
  BinaryCrossEntropyWithLogits, DummyGrad
- ``conv``: Conv2D, MaxPool2D, AvgPool2D, Dropout, LayerNorm
- ``norm``: BatchNorm (batch statistics in training runs, running ones otherwise)
- ``math``: Tan, Sinh, ..., ArcTan2, Log2, LogAddExp, Floor, Round, Sign, Remainder, FloorDivide
- ``compare``: Less, Greater, Equal, ... (booleans), ArgMax, ArgMin, Cast
- ``einsum``: Einsum
- ``matrix``: Diagonal, Trace, Diag, Tril, Triu
- ``scan``: Prod, CumProd, Sort, ArgSort, TopK, ArgTopK
- ``tiling``: Tile, Repeat, BroadcastTo, Flip, Roll
"""
from .conv import AvgPool2D, Conv2D, Dropout, LayerNorm, MaxPool2D
from .norm import BatchNorm
from .elementwise import (ELU, GELU, Abs, Add, Clip, Cos, Div, Exp, Expm1, LeakyReLU, Log, Log1p,
                          LogSigmoid, Maximum, Minimum, Mul, Neg, Pow, ReLU, Sigmoid, Sin, Softplus,
                          Sqrt, Square, StopGradient, Sub, Tanh, Where, erf, sigmoid)
from .linalg import Linear, MatMul, Outer, Tensordot
from .losses import (MSE, BinaryCrossEntropyWithLogits, CrossEntropyWithSoftmax, DummyGrad,
                     LogSoftmax, MeanSquaredError, Softmax, softmax)
from .reductions import CumSum, LogSumExp, Max, Mean, Min, Std, Sum, Var
from .shape import (Concat, ExpandDims, Flatten, Index, MatrixTranspose, Pad, Reshape, Split,
                    SplitPart, Squeeze, Stack, Take, Transpose, permute_dims)

__all__ = [
    "Add", "Sub", "Neg", "Mul", "Div", "Sigmoid", "Tanh", "ReLU", "Exp", "Log",
    "MatMul", "Linear", "Sum", "Mean", "CrossEntropyWithSoftmax", "DummyGrad",
    "sigmoid", "softmax",
    "Tensordot", "Outer", "Max", "Min", "Var", "Std", "LogSumExp", "CumSum",
    "Softmax", "LogSoftmax", "MeanSquaredError", "MSE", "BinaryCrossEntropyWithLogits",
    "Pow", "Square", "Sqrt", "Abs", "Log1p", "Expm1", "Sin", "Cos", "Maximum", "Minimum", "Clip",
    "Where", "StopGradient", "Softplus", "LogSigmoid", "LeakyReLU", "ELU", "GELU", "erf",
    "Reshape", "Flatten", "Transpose", "permute_dims", "MatrixTranspose", "ExpandDims", "Squeeze",
    "Concat", "Stack", "Split", "SplitPart", "Pad", "Index", "Take",
    "Conv2D", "MaxPool2D", "AvgPool2D", "Dropout", "LayerNorm", "BatchNorm",
]

from .compare import (ArgMax, ArgMin, Cast, Equal, Greater, GreaterEqual, Less, LessEqual,
                      NotEqual)
from .einsum import Einsum
from .math import (ArcCos, ArcCosh, ArcSin, ArcSinh, ArcTan, ArcTan2, ArcTanh, Ceil, Cosh, Exp2,
                   Floor, FloorDivide, Log2, Log10, LogAddExp, Remainder, Round, Sign, Sinh, Tan,
                   Trunc)
from .matrix import Diag, Diagonal, Trace, Tril, Triu
from .scan import ArgSort, ArgTopK, CumProd, Prod, Sort, TopK
from .tiling import BroadcastTo, Flip, Repeat, Roll, Tile

__all__ += [
    "Tan", "Sinh", "Cosh", "ArcSin", "ArcCos", "ArcTan", "ArcTan2", "ArcSinh", "ArcCosh",
    "ArcTanh", "Log2", "Log10", "Exp2", "LogAddExp", "Floor", "Ceil", "Round", "Trunc", "Sign",
    "Remainder", "FloorDivide",
    "Less", "LessEqual", "Greater", "GreaterEqual", "Equal", "NotEqual", "ArgMax", "ArgMin",
    "Cast", "Einsum", "Diagonal", "Trace", "Diag", "Tril", "Triu",
    "Prod", "CumProd", "Sort", "ArgSort", "TopK", "ArgTopK",
    "Tile", "Repeat", "BroadcastTo", "Flip", "Roll",
]
