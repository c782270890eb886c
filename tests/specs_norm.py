"""Oracle spec of BatchNorm in inference runs (see tests/oracle.py).

The oracle runs ``value_and_grad``, which is never a training run, so this is
the running-statistics form; the batch-statistics form, and the running
statistics a training run computes, are checked against ``torch.nn.BatchNorm1d``
and ``BatchNorm2d`` in tests/test_nn.py. The running statistics are data in
both libraries (PyTorch refuses a gradient for them), so they are drawn as
keyword arguments and enter the graph as constants.
"""
import torch
from hypothesis import strategies as st

from miniflow import BatchNorm, Constant
from oracle import Case, OpSpec, values

F = torch.nn.functional


@st.composite
def batch_norm_case(draw):
    channels = draw(st.integers(1, 3))
    shape = (draw(st.integers(0, 3)), channels) + tuple(
        draw(st.lists(st.integers(1, 3), max_size=2)))
    per_channel = (channels,)
    return Case((draw(values(shape)), draw(values(per_channel)), draw(values(per_channel))),
                {"running_mean": draw(values(per_channel)),
                 "running_var": draw(values(per_channel, 0.1, 3.0))})


def build(x, weight, bias, *, running_mean, running_var):
    return BatchNorm(x, weight, bias, Constant(running_mean), Constant(running_var))


def torch_batch_norm(x, weight, bias, *, running_mean, running_var):
    return F.batch_norm(x, torch.tensor(running_mean), torch.tensor(running_var), weight, bias,
                        training=False, eps=1e-5)


SPECS = [
    OpSpec("BatchNorm (inference)", build, torch_batch_norm, batch_norm_case(),
           rtol=1e-6, atol=1e-8),
]
