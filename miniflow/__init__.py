"""miniflow: a small, readable differentiable-graph engine on any array backend.

Build a graph of nodes, then run it on NumPy, CuPy, PyTorch or any Array-API
library with ``value_and_grad(output, feed_dict, wrt, backend=...)``.
"""
from .errors import (BackendError, BackendUnavailableError, CompileError, FeedError,
                     GraphError, MiniflowError, NodeError, ShapeError)
from .executor import Context, Hook, RunResult, accuracy, evaluate, run, value_and_grad
from .graph import Constant, Input, Node
from .gradcheck import GradcheckError, gradcheck
from .viz import draw, to_dot
from .nodes import (Add, CrossEntropyWithSoftmax, Div, DummyGrad, Exp, Linear, Log, MatMul,
                    Mean, Mul, Neg, ReLU, Sigmoid, Sub, Sum, Tanh)
from .nodes import (MSE, BinaryCrossEntropyWithLogits, CumSum, LogSoftmax, LogSumExp, Max,
                    MeanSquaredError, Min, Outer, Softmax, Std, Tensordot, Var)
from .nodes import (ELU, GELU, Abs, Clip, Cos, Expm1, LeakyReLU, Log1p, LogSigmoid, Maximum,
                    Minimum, Pow, Sin, Softplus, Sqrt, Square, StopGradient, Where)
from .nodes import (Concat, ExpandDims, Flatten, Index, MatrixTranspose, Pad, Reshape, Split,
                    Squeeze, Stack, Take, Transpose, permute_dims)
from .nodes import AvgPool2D, BatchNorm, Conv2D, Dropout, LayerNorm, MaxPool2D
from .compile import CompiledStep, compilable, compile  # after the nodes it plans kernels for
from .threads import set_threads
from .autodiff import (NotTwiceDifferentiableError, expand, grad, hessian, hvp,  # noqa: E402
                       jacobian, jvp, vjp)
from . import nn  # layers build on the nodes above

__version__ = "0.1.0"

# `from miniflow import *` gives the lab's names and the rest of the node library.
__all__ = [
    "Input", "Add", "Mul", "Linear", "Sigmoid", "CrossEntropyWithSoftmax", "DummyGrad",
    "value_and_grad", "accuracy",
    "Node", "Constant", "Sub", "Neg", "Div", "MatMul", "ReLU", "Tanh", "Exp", "Log",
    "Sum", "Mean", "evaluate", "gradcheck", "Context", "run", "RunResult", "Hook",
    "MiniflowError", "GraphError", "FeedError", "NodeError", "ShapeError", "BackendError",
    "BackendUnavailableError", "GradcheckError", "to_dot", "draw",
    "Tensordot", "Outer", "Max", "Min", "Var", "Std", "LogSumExp", "CumSum",
    "Softmax", "LogSoftmax", "MeanSquaredError", "MSE", "BinaryCrossEntropyWithLogits",
    "Pow", "Square", "Sqrt", "Abs", "Log1p", "Expm1", "Sin", "Cos", "Maximum", "Minimum", "Clip",
    "Where", "StopGradient", "Softplus", "LogSigmoid", "LeakyReLU", "ELU", "GELU",
    "Reshape", "Flatten", "Transpose", "permute_dims", "MatrixTranspose", "ExpandDims", "Squeeze",
    "Concat", "Stack", "Split", "Pad", "Index", "Take",
    "compile", "compilable", "CompiledStep", "CompileError",
    "Conv2D", "MaxPool2D", "AvgPool2D", "Dropout", "LayerNorm", "BatchNorm",
    "set_threads", "nn",
    "grad", "vjp", "jvp", "hvp", "jacobian", "hessian", "expand", "NotTwiceDifferentiableError",
]

# The op library's later families (issue 20): math, comparisons, einsum, matrices, scans, tiling.
from .nodes import (ArcCos, ArcCosh, ArcSin, ArcSinh, ArcTan, ArcTan2, ArcTanh, ArgMax, ArgMin,  # noqa: E402
                    ArgSort, ArgTopK, BroadcastTo, Cast, Ceil, Cosh, CumProd, Diag, Diagonal,
                    Einsum, Equal, Exp2, Flip, Floor, FloorDivide, Greater, GreaterEqual, Less,
                    LessEqual, Log2, Log10, LogAddExp, NotEqual, Prod, Remainder, Repeat, Roll,
                    Round, Sign, Sinh, Sort, Tan, Tile, TopK, Trace, Tril, Triu, Trunc)

__all__ += [
    "Tan", "Sinh", "Cosh", "ArcSin", "ArcCos", "ArcTan", "ArcTan2", "ArcSinh", "ArcCosh",
    "ArcTanh", "Log2", "Log10", "Exp2", "LogAddExp", "Floor", "Ceil", "Round", "Trunc", "Sign",
    "Remainder", "FloorDivide",
    "Less", "LessEqual", "Greater", "GreaterEqual", "Equal", "NotEqual", "ArgMax", "ArgMin",
    "Cast", "Einsum", "Diagonal", "Trace", "Diag", "Tril", "Triu",
    "Prod", "CumProd", "Sort", "ArgSort", "TopK", "ArgTopK",
    "Tile", "Repeat", "BroadcastTo", "Flip", "Roll",
]
