"""Recurrent layers with PyTorch's conventions: RNN, LSTM and GRU, and their cells.

>>> from miniflow import Input, nn
>>> lstm = nn.LSTM(64, 256, num_layers=2)
>>> output, (h_n, c_n) = lstm(Input("x"))      # x: (steps, batch, 64), time-major
>>> [name for name, _ in lstm.named_parameters()][:4]
['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0']

Parameters are named and laid out as ``torch.nn``'s (``weight_ih_l0`` is
(gates * hidden_size, input_size), gates in the order i, f, g, o for the LSTM
and r, z, n for the GRU), start uniform in +-1/sqrt(hidden_size) as there, and
a PyTorch state dict copies in unchanged.

A sequence layer is one node per layer, :class:`Recurrence`, whose forward loops
over the steps in the backend's array namespace and whose backward runs
backpropagation through time: the input projection of all the steps is one
matrix product, and so are the weight gradients, so only the (batch, gates)
product with ``weight_hh`` runs per step. The graph is the same for any
sequence length, so its plan is made once and reused. The cells are built of
ordinary nodes, one step each.
"""
from __future__ import annotations

from .. import nodes
from ..errors import ConfigError, ShapeError
from ..graph import Node
from ..nodes import sigmoid
from .layers import Layer, check_bool, check_int, register

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU", "Recurrence"]

#: Gates per mode: rows of weight_ih are gates * hidden_size.
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def _nonlinearity(value) -> str:
    if value not in ("tanh", "relu"):
        raise ConfigError(f"nonlinearity must be 'tanh' or 'relu', got {value!r}")
    return value


# -- the sequence node ---------------------------------------------------------------------

class Recurrence(Node):
    """One recurrent layer over a whole sequence: ``Recurrence(x, w_ih, w_hh[, b_ih, b_hh]
    [, h0[, c0]], mode=...)``.

    x is (steps, batch, input); the weights are PyTorch's. The value is the
    hidden state of every step, (steps, batch, hidden); for the LSTM one more
    row follows, the last cell state: (steps + 1, batch, hidden). Without an
    initial state the layer starts from zeros.
    """

    arity = (3, 7)

    def __init__(self, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, mode,
                 name=None):
        if mode not in GATES:
            raise ConfigError(f"Recurrence mode must be one of {', '.join(GATES)}, got {mode!r}")
        if (b_ih is None) != (b_hh is None):
            raise ConfigError("Recurrence takes both biases or neither")
        if c0 is not None and (mode != "lstm" or h0 is None):
            raise ConfigError("only an LSTM with an initial h0 takes an initial c0")
        self.mode, self.has_bias = mode, b_ih is not None
        self.has_h0, self.has_c0 = h0 is not None, c0 is not None
        super().__init__(*(n for n in (x, w_ih, w_hh, b_ih, b_hh, h0, c0) if n is not None),
                         name=name)

    def _unpack(self, values):
        values = list(values)
        x, w_ih, w_hh = values[:3]
        rest = values[3:]
        b_ih, b_hh = (rest.pop(0), rest.pop(0)) if self.has_bias else (None, None)
        h0 = rest.pop(0) if self.has_h0 else None
        c0 = rest.pop(0) if self.has_c0 else None
        return x, w_ih, w_hh, b_ih, b_hh, h0, c0

    def forward(self, ctx, *values):
        xp = ctx.xp
        values = ctx.backend.promote(*values)
        x, w_ih, w_hh, b_ih, b_hh, h0, c0 = self._unpack(values)
        if x.ndim != 3 or w_ih.ndim != 2 or x.shape[2] != w_ih.shape[1]:
            raise ShapeError(f"input of shape {tuple(x.shape)} does not fit weight_ih "
                                    f"of shape {tuple(w_ih.shape)}: (steps, batch, "
                                    f"{w_ih.shape[1]}) expected")
        steps, batch = x.shape[0], x.shape[1]
        hidden = w_hh.shape[1]
        if steps == 0:
            raise ShapeError("the input has no steps: (steps >= 1, batch, input) expected")
        for name, state in (("h0", h0), ("c0", c0)):
            if state is not None and tuple(state.shape) != (batch, hidden):
                raise ShapeError(f"{name} has shape {tuple(state.shape)}, expected "
                                        f"(batch, hidden) = {(batch, hidden)}")
        # All the steps' input projections at once: one matrix product.
        flat = xp.reshape(x, (steps * batch, x.shape[2]))
        projected = flat @ xp.matrix_transpose(w_ih)
        if b_ih is not None:
            projected = projected + b_ih
        projected = xp.reshape(projected, (steps, batch, w_ih.shape[0]))
        # W_hh^T copied to row-major once (a flat copy, then a view): a product with the
        # transposed view costs about twice as much, 64 times a sequence.
        w_hh_t = xp.reshape(xp.reshape(xp.matrix_transpose(w_hh), (-1,)),
                            (w_hh.shape[1], w_hh.shape[0]))
        h = h0 if h0 is not None else xp.zeros((batch, hidden), dtype=x.dtype)
        c = None
        if self.mode == "lstm":
            c = c0 if c0 is not None else xp.zeros((batch, hidden), dtype=x.dtype)
        hs, saved = [], []
        for t in range(steps):
            recurrent = h @ w_hh_t
            if b_hh is not None:
                recurrent = recurrent + b_hh
            h_prev, c_prev = h, c
            if self.mode == "lstm":
                gates = projected[t, ...] + recurrent
                act = sigmoid(xp, gates)
                i, f, o = act[:, :hidden], act[:, hidden:2 * hidden], act[:, 3 * hidden:]
                g = xp.tanh(gates[:, 2 * hidden:3 * hidden])
                c = f * c_prev + i * g
                tc = xp.tanh(c)
                h = o * tc
                saved.append((h_prev, c_prev, i, f, g, o, tc))
            elif self.mode == "gru":
                xt = projected[t, ...]
                rz = sigmoid(xp, xt[:, :2 * hidden] + recurrent[:, :2 * hidden])
                r, z = rz[:, :hidden], rz[:, hidden:]
                hn = recurrent[:, 2 * hidden:]
                n = xp.tanh(xt[:, 2 * hidden:] + r * hn)
                h = (1 - z) * n + z * h_prev
                saved.append((h_prev, r, z, n, hn))
            else:
                pre = projected[t, ...] + recurrent
                h = xp.tanh(pre) if self.mode == "rnn_tanh" else \
                    xp.where(pre > 0, pre, xp.zeros_like(pre))
                saved.append((h_prev, h))
            hs.append(h)
        ctx.save(saved, hidden)
        if self.mode == "lstm":
            hs.append(c)
        return xp.stack(hs, axis=0)

    def backward(self, ctx, grad):
        xp = ctx.xp
        saved, hidden = ctx.saved
        x, w_ih, w_hh, b_ih, b_hh, h0, c0 = self._unpack(ctx.inputs)
        steps, batch = x.shape[0], x.shape[1]
        dh_next = xp.zeros((batch, hidden), dtype=grad.dtype)
        dc_next = grad[steps, ...] if self.mode == "lstm" else None
        d_inputs, d_recurrents = [None] * steps, [None] * steps
        for t in range(steps - 1, -1, -1):
            dh = grad[t, ...] + dh_next
            if self.mode == "lstm":
                h_prev, c_prev, i, f, g, o, tc = saved[t]
                dc = dc_next + dh * o * (1 - tc * tc)
                d_gates = xp.concat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                                     dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=1)
                dc_next = dc * f
                d_input = d_recurrent = d_gates
                dh_next = d_gates @ w_hh
            elif self.mode == "gru":
                h_prev, r, z, n, hn = saved[t]
                dn = dh * (1 - z) * (1 - n * n)
                dr = dn * hn * r * (1 - r)
                dz = dh * (h_prev - n) * z * (1 - z)
                d_input = xp.concat([dr, dz, dn], axis=1)
                d_recurrent = xp.concat([dr, dz, dn * r], axis=1)
                dh_next = dh * z + d_recurrent @ w_hh
            else:
                h_prev, h = saved[t]
                d_pre = dh * (1 - h * h) if self.mode == "rnn_tanh" else \
                    xp.where(h > 0, dh, xp.zeros_like(dh))
                d_input = d_recurrent = d_pre
                dh_next = d_pre @ w_hh
            d_inputs[t], d_recurrents[t] = d_input, d_recurrent
        gates = w_ih.shape[0]
        d_in = xp.reshape(xp.stack(d_inputs, axis=0), (steps * batch, gates))
        # The LSTM's and the RNN's two gradients are the same arrays: stacked once.
        d_rec = d_in if d_recurrents[0] is d_inputs[0] else \
            xp.reshape(xp.stack(d_recurrents, axis=0), (steps * batch, gates))
        h_prevs = xp.reshape(xp.stack([s[0] for s in saved], axis=0), (steps * batch, hidden))
        flat_x = xp.reshape(x, (steps * batch, x.shape[2]))
        need = list(ctx.needs_input_grad)
        out = [xp.reshape(d_in @ w_ih, x.shape) if need[0] else None,
               xp.matrix_transpose(d_in) @ flat_x if need[1] else None,
               xp.matrix_transpose(d_rec) @ h_prevs if need[2] else None]
        if self.has_bias:
            out += [xp.sum(d_in, axis=0), xp.sum(d_rec, axis=0)]
        if self.has_h0:
            out.append(dh_next)
        if self.has_c0:
            out.append(dc_next)
        return tuple(out)


# -- the layers ----------------------------------------------------------------------------

def _torch_uniform(layer, name, shape, hidden_size):
    # PyTorch draws every recurrent parameter uniform in +-1/sqrt(hidden_size).
    return layer.add_parameter(name, shape, "torch_uniform", hidden_size, hidden_size)


class _Cell(Layer):
    mode = None

    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.input_size = check_int(input_size, "input_size")
        self.hidden_size = check_int(hidden_size, "hidden_size")
        self.has_bias = check_bool(bias, "bias")
        gates = GATES[self.mode] * self.hidden_size
        self.weight_ih = _torch_uniform(self, "weight_ih", (gates, self.input_size),
                                        self.hidden_size)
        self.weight_hh = _torch_uniform(self, "weight_hh", (gates, self.hidden_size),
                                        self.hidden_size)
        self.bias_ih = _torch_uniform(self, "bias_ih", (gates,), self.hidden_size) \
            if self.has_bias else None
        self.bias_hh = _torch_uniform(self, "bias_hh", (gates,), self.hidden_size) \
            if self.has_bias else None

    def _project(self, x, weight, bias):
        y = nodes.MatMul(x, nodes.MatrixTranspose(weight))
        return y if bias is None else y + bias

    def _parts(self, x, h):
        """(x @ W_ih^T + b_ih, h @ W_hh^T + b_hh); the second is b_hh (or None) for h None."""
        gi = self._project(x, self.weight_ih, self.bias_ih)
        gh = self.bias_hh if h is None else self._project(h, self.weight_hh, self.bias_hh)
        return gi, gh

    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "bias": self.has_bias}


@register
class RNNCell(_Cell):
    """One step of an Elman RNN, as ``torch.nn.RNNCell``: ``cell(x, h=None) -> h'``,
    ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``; x (batch, input_size); h None is zeros."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh"):
        self.nonlinearity = _nonlinearity(nonlinearity)
        self.mode = f"rnn_{self.nonlinearity}"
        super().__init__(input_size, hidden_size, bias)

    def build(self, x, h=None):
        gi, gh = self._parts(x, h)
        pre = gi if gh is None else gi + gh
        act = nodes.Tanh if self.nonlinearity == "tanh" else nodes.ReLU
        return act(pre, name=self._name())

    def config(self):
        return {**super().config(), "nonlinearity": self.nonlinearity}


@register
class LSTMCell(_Cell):
    """One LSTM step, as ``torch.nn.LSTMCell``: ``cell(x, (h, c) or None) -> (h', c')``.

    Gates i, f, g, o (rows of the weights in that order); ``c' = f c + i g``,
    ``h' = o tanh(c')``.
    """

    mode = "lstm"

    def build(self, x, state=None):
        h, c = (None, None) if state is None else state
        gi, gh = self._parts(x, h)
        gates = gi if gh is None else gi + gh
        H = self.hidden_size
        act = nodes.Sigmoid(gates)
        i, f, o = act[:, :H], act[:, H:2 * H], act[:, 3 * H:]
        g = nodes.Tanh(gates[:, 2 * H:3 * H])
        c_new = i * g if c is None else f * c + i * g
        return nodes.Mul(o, nodes.Tanh(c_new), name=self._name()), c_new


@register
class GRUCell(_Cell):
    """One GRU step, as ``torch.nn.GRUCell``: ``cell(x, h=None) -> h'``.

    Gates r, z, n: ``n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))``,
    ``h' = (1 - z) n + z h``.
    """

    mode = "gru"

    def build(self, x, h=None):
        gi, gh = self._parts(x, h)
        H = self.hidden_size
        if gh is None:
            r_pre, z_pre, n_hidden = gi[:, :H], gi[:, H:2 * H], None
        elif h is None:  # the bias alone, (3H,)
            r_pre, z_pre = gi[:, :H] + gh[:H], gi[:, H:2 * H] + gh[H:2 * H]
            n_hidden = gh[2 * H:]
        else:
            r_pre, z_pre = gi[:, :H] + gh[:, :H], gi[:, H:2 * H] + gh[:, H:2 * H]
            n_hidden = gh[:, 2 * H:]
        r, z = nodes.Sigmoid(r_pre), nodes.Sigmoid(z_pre)
        n_pre = gi[:, 2 * H:] if n_hidden is None else gi[:, 2 * H:] + r * n_hidden
        n = nodes.Tanh(n_pre)
        if h is None:
            return nodes.Mul(1.0 - z, n, name=self._name())
        return nodes.Add((1.0 - z) * n, z * h, name=self._name())


class _Sequence(Layer):
    mode = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True):
        super().__init__()
        self.input_size = check_int(input_size, "input_size")
        self.hidden_size = check_int(hidden_size, "hidden_size")
        self.num_layers = check_int(num_layers, "num_layers")
        self.has_bias = check_bool(bias, "bias")
        gates = GATES[self.mode] * self.hidden_size
        self.weights = []
        for k in range(self.num_layers):
            width = self.input_size if k == 0 else self.hidden_size
            names = [f"weight_ih_l{k}", f"weight_hh_l{k}"] + \
                ([f"bias_ih_l{k}", f"bias_hh_l{k}"] if self.has_bias else [])
            shapes = [(gates, width), (gates, self.hidden_size), (gates,), (gates,)]
            self.weights.append([_torch_uniform(self, name, shape, self.hidden_size)
                                 for name, shape in zip(names, shapes)])

    def _layer_name(self, suffix):
        return f"{self.path}.{suffix}" if self.path else None

    def _run(self, x, h0, c0):
        """(output, [h_n per layer], [c_n per layer])."""
        hs, cs = [], []
        for k, params in enumerate(self.weights):
            h_k = None if h0 is None else h0[k]
            c_k = None if c0 is None else c0[k]
            w_ih, w_hh, *biases = params
            b_ih, b_hh = biases or (None, None)
            y = Recurrence(x, w_ih, w_hh, b_ih, b_hh, h_k, c_k, mode=self.mode,
                           name=self._layer_name(f"l{k}"))
            if self.mode == "lstm":
                x = y[:-1]
                cs.append(y[-1])
            else:
                x = y
            hs.append(x[-1])
        return x, hs, cs

    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.has_bias}


@register
class RNN(_Sequence):
    """A stack of Elman RNN layers, as ``torch.nn.RNN``: ``rnn(x, h0=None) -> (output, h_n)``.

    x (steps, batch, input_size), time-major; h0 and h_n (num_layers, batch,
    hidden_size); output (steps, batch, hidden_size), the last layer's states.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True):
        self.nonlinearity = _nonlinearity(nonlinearity)
        self.mode = f"rnn_{self.nonlinearity}"
        super().__init__(input_size, hidden_size, num_layers, bias)

    def build(self, x, h0=None):
        output, hs, _ = self._run(x, h0, None)
        return output, nodes.Stack(hs, axis=0)

    def config(self):
        return {**super().config(), "nonlinearity": self.nonlinearity}


@register
class LSTM(_Sequence):
    """A stack of LSTM layers, as ``torch.nn.LSTM``:
    ``lstm(x, (h0, c0) or None) -> (output, (h_n, c_n))``.

    x (steps, batch, input_size), time-major; states (num_layers, batch,
    hidden_size); output (steps, batch, hidden_size). Gates i, f, g, o.
    """

    mode = "lstm"

    def build(self, x, state=None):
        h0, c0 = (None, None) if state is None else state
        output, hs, cs = self._run(x, h0, c0)
        return output, (nodes.Stack(hs, axis=0), nodes.Stack(cs, axis=0))


@register
class GRU(_Sequence):
    """A stack of GRU layers, as ``torch.nn.GRU``: ``gru(x, h0=None) -> (output, h_n)``.

    Shapes as :class:`RNN`; gates r, z, n.
    """

    mode = "gru"

    def build(self, x, h0=None):
        output, hs, _ = self._run(x, h0, None)
        return output, nodes.Stack(hs, axis=0)
