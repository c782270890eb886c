"""Sequence layers (recurrent, attention) against torch.nn, on every backend.

Each layer runs in float64 with a PyTorch module's parameters copied in; every
output (sequence outputs and final states) and the gradient of every parameter
and float input are compared with PyTorch's autograd, for random sizes drawn by
hypothesis. The loss is a random weighting of all the outputs, so every output's
gradient path is checked at once.
"""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import torch

from miniflow import Input, Mul, Sum, nn, run, value_and_grad
from miniflow.errors import ConfigError, NodeError
from miniflow.graph import PlanCache, topological_order
from miniflow.models import from_network
from miniflow.nn.recurrent import Recurrence
from miniflow.serialize import load_model, save_model

TNN = torch.nn
LAYER = settings(max_examples=8, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow, HealthCheck.data_too_large])


def _float64(backend):
    if not backend.xp.isdtype(backend.asarray(np.zeros(1)).dtype, backend.xp.float64):
        pytest.skip(f"{backend.name} cannot hold float64 here")


def _flat(outputs):
    """Nested tuples of outputs (``(out, (h, c))``) as a flat list."""
    if isinstance(outputs, (tuple, list)):
        return [leaf for item in outputs for leaf in _flat(item)]
    return [outputs]


def _linears(layer):
    """Names of miniflow Linear weights: the transpose of torch.nn.Linear's."""
    return {sub.weight.name for sub in layer.walk() if isinstance(sub, nn.Linear)}


def compare(layer, module, inputs, backend, *, call=None, seed=0, rtol=1e-7, atol=1e-9):
    """Run ``layer`` and ``module`` on ``inputs`` and compare every output and gradient.

    ``inputs`` are NumPy arrays, or None for an argument left out (a missing
    initial state); nested tuples (an LSTM's ``(h0, c0)``) are passed as such.
    ``call(fn, args)`` calls a layer or module on its argument list.
    """
    call = call or (lambda fn, args: fn(*args))
    module = module.double()
    values = {node: value.astype(np.float64) for node, value in layer.init(seed).items()}
    rng = np.random.default_rng(seed + 1)
    # Shift constant starts (zeros, ones) so that a mix-up between them shows.
    values = {node: value + rng.uniform(-0.5, 0.5, value.shape) if value.std() == 0 else value
              for node, value in values.items()}
    flip = _linears(layer)
    named = dict(module.named_parameters())
    assert sorted(named) == sorted(node.name for node in values)
    with torch.no_grad():
        for node, value in values.items():
            named[node.name].copy_(torch.tensor(value.T if node.name in flip else value))

    leaves = []  # (numpy array, torch tensor, miniflow Input)

    def wrap(item, k=[0]):
        if item is None:
            return None, None
        if isinstance(item, tuple):
            pairs = [wrap(part) for part in item]
            return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
        k[0] += 1
        tensor = torch.tensor(item, requires_grad=item.dtype.kind == "f")
        node = Input(name=f"in{k[0]}")
        leaves.append((item, tensor, node))
        return tensor, node

    wrapped = [wrap(item) for item in inputs]
    expected = _flat(call(module, [t for t, _ in wrapped]))
    ours = _flat(call(layer, [n for _, n in wrapped]))
    assert len(ours) == len(expected)
    weights = [rng.standard_normal(tuple(t.shape)) for t in expected]
    loss = sum((t * torch.tensor(w)).sum() for t, w in zip(expected, weights))
    floats = [(a, t, n) for a, t, n in leaves if a.dtype.kind == "f"]
    wanted = [named[node.name] for node in values] + [t for _, t, _ in floats]
    reference = torch.autograd.grad(loss, wanted, allow_unused=True)

    heads = [Input(name=f"w{k}") for k in range(len(weights))]
    total = None
    for out, head in zip(ours, heads):
        term = Sum(Mul(out, head))
        total = term if total is None else total + term
    feed = {node: backend.asarray(value) for node, value in values.items()}
    feed.update({n: backend.asarray(a) for a, _, n in leaves})
    feed.update({h: backend.asarray(w) for h, w in zip(heads, weights)})
    wrt = list(values) + [n for _, _, n in floats]
    # A cell called without a state never reads weight_hh: PyTorch's gradient is zero.
    reached = set(topological_order(total))
    for node, want in zip(list(wrt), reference):
        if node not in reached:
            assert want is None or not want.any(), node.name
    wrt, reference = zip(*[(n, r) for n, r in zip(wrt, reference) if n in reached])
    result = run(total, feed, list(wrt), backend=backend.name, extras=ours)
    host = lambda a: np.asarray(backend.to_numpy(a), dtype=np.float64)  # noqa: E731
    for k, (got, want) in enumerate(zip(result.extras, expected)):
        np.testing.assert_allclose(host(got), want.detach().numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"output {k}")
    for node, grad, want in zip(wrt, result.grads, reference):
        want = np.zeros(grad.shape) if want is None else want.numpy()
        if node.name in flip:
            want = want.T
        np.testing.assert_allclose(host(grad), want, rtol=rtol * 10, atol=atol * 10,
                                   err_msg=f"gradient of {node.name}")


def randn(draw, *shape):
    return np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(shape)


def sizes(draw):
    return (draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 4)),
            draw(st.integers(1, 5)))


# -- recurrent layers ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["RNN-tanh", "RNN-relu", "LSTM", "GRU"])
def test_sequence_layers_match_torch(backend, kind):
    _float64(backend)
    name, _, act = kind.partition("-")

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        steps, batch, n_in, hidden = sizes(draw)
        layers, bias = draw(st.integers(1, 3)), draw(st.booleans())
        extra = {"nonlinearity": act} if act else {}
        ours = getattr(nn, name)(n_in, hidden, num_layers=layers, bias=bias, **extra)
        theirs = getattr(TNN, name)(n_in, hidden, num_layers=layers, bias=bias, **extra)
        x = randn(draw, steps, batch, n_in)
        state = None
        if draw(st.booleans()):
            state = randn(draw, layers, batch, hidden)
            if name == "LSTM":
                state = (state, randn(draw, layers, batch, hidden))
        compare(ours, theirs, [x, state], backend)
    check()


@pytest.mark.parametrize("kind", ["RNNCell-tanh", "RNNCell-relu", "LSTMCell", "GRUCell"])
def test_cells_match_torch(backend, kind):
    _float64(backend)
    name, _, act = kind.partition("-")

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        _, batch, n_in, hidden = sizes(draw)
        bias = draw(st.booleans())
        extra = {"nonlinearity": act} if act else {}
        ours = getattr(nn, name)(n_in, hidden, bias=bias, **extra)
        theirs = getattr(TNN, name)(n_in, hidden, bias=bias, **extra)
        x = randn(draw, batch, n_in)
        state = None
        if draw(st.booleans()):
            state = randn(draw, batch, hidden)
            if name == "LSTMCell":
                state = (state, randn(draw, batch, hidden))
        compare(ours, theirs, [x, state], backend)
    check()


def test_parameters_are_named_and_shaped_as_torch():
    ours, theirs = nn.LSTM(3, 5, num_layers=2), TNN.LSTM(3, 5, num_layers=2)
    assert [(n, s) for n, s in ours.shapes().items()] == \
        [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    gru = nn.Sequential({"rnn": nn.GRU(3, 4)})
    assert [name for name, _ in gru.named_parameters()] == \
        ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"]
    values = nn.LSTM(8, 100).init(seed=0)
    for value in values.values():  # PyTorch's start: uniform in +-1/sqrt(hidden)
        assert np.abs(value).max() <= 0.1 and np.abs(value).max() > 0.09


def test_a_recurrent_layer_is_one_node_per_layer_whatever_the_length(backend):
    """The graph does not grow with the sequence: its plan is made once and reused."""
    lstm = nn.LSTM(2, 3, num_layers=2)
    x = Input("x")
    out, (h, c) = lstm(x)
    loss = Sum(out)
    values = lstm.init(0)
    graph = topological_order(loss)
    assert sum(isinstance(node, Recurrence) for node in graph) == 2
    assert len(graph) < 20
    plans = []
    for steps in (4, 64, 64):
        feed = {node: backend.asarray(v) for node, v in values.items()}
        feed[x] = backend.asarray(np.ones((steps, 2, 2), np.float32))
        value, _ = value_and_grad(loss, feed, list(values), backend=backend.name)
        plans.append(PlanCache.of(loss).lookup(loss, tuple(values), frozenset(), ())[0])
        assert np.isfinite(float(np.asarray(backend.to_numpy(value))))
    assert plans[0] is plans[1] is plans[2]


def test_bad_inputs_are_named():
    lstm = nn.LSTM(3, 4)
    x = Input("x")
    out, _ = lstm(x)
    values = lstm.init(0)
    with pytest.raises(NodeError, match=r"does not fit weight_ih"):
        value_and_grad(Sum(out), {**values, x: np.ones((2, 1, 5), np.float32)}, list(values))
    h, c = Input("h"), Input("c")
    out, _ = lstm(x, (h, c))
    with pytest.raises(NodeError, match=r"h0 has shape \(2, 4\), expected"):
        value_and_grad(Sum(out), {**values, x: np.ones((2, 1, 3), np.float32),
                                  h: np.ones((1, 2, 4), np.float32),
                                  c: np.ones((1, 1, 4), np.float32)}, list(values))
    with pytest.raises(ConfigError, match="nonlinearity must be"):
        nn.RNN(2, 2, nonlinearity="sigmoid")
    with pytest.raises(ConfigError, match="num_layers must be"):
        nn.GRU(2, 2, num_layers=0)
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        nn.MultiHeadAttention(10, 3)


# -- attention ---------------------------------------------------------------------------------

def _torch_mask(steps):
    return TNN.Transformer.generate_square_subsequent_mask(steps, dtype=torch.float64)


@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_matches_torch(backend, causal):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        heads, width = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        steps, batch, bias = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.booleans())
        dim = heads * width
        ours = nn.MultiHeadAttention(dim, heads, bias=bias, causal=causal)
        theirs = TNN.MultiheadAttention(dim, heads, bias=bias)
        x = randn(draw, steps, batch, dim)
        mask = _torch_mask(steps) if causal else None

        def call(fn, args):
            if fn is ours:
                return fn(*args)
            return fn(*args, *args, *args, attn_mask=mask)
        compare(ours, theirs, [x], backend, call=call)
    check()


def test_cross_attention_matches_torch(backend):
    _float64(backend)
    rng = np.random.default_rng(0)
    ours, theirs = nn.MultiHeadAttention(6, 2), TNN.MultiheadAttention(6, 2)
    q, k, v = rng.standard_normal((3, 2, 6)), rng.standard_normal((5, 2, 6)), \
        rng.standard_normal((5, 2, 6))
    compare(ours, theirs, [q, k, v], backend)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_transformer_block_matches_torch(backend, activation):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        heads, width = draw(st.integers(1, 2)), draw(st.integers(1, 3))
        steps, batch, ff = draw(st.integers(1, 5)), draw(st.integers(1, 3)), \
            draw(st.integers(1, 6))
        dim = heads * width
        ours = nn.TransformerBlock(dim, heads, ff, activation=activation, causal=True)
        theirs = TNN.TransformerEncoderLayer(
            dim, heads, ff, dropout=0.0, norm_first=True,
            activation=TNN.GELU(approximate="tanh") if activation == "gelu_tanh" else activation)

        def call(fn, args):
            return fn(*args) if fn is ours else fn(*args, src_mask=_torch_mask(steps),
                                                   is_causal=True)
        compare(ours, theirs, [randn(draw, steps, batch, dim)], backend, call=call,
                rtol=1e-6, atol=1e-8)
    check()


class _Positions(TNN.Module):
    def __init__(self, max_len, dim):
        super().__init__()
        self.weight = TNN.Parameter(torch.zeros(max_len, dim))

    def forward(self, x):
        return x + self.weight[:x.shape[0], None]


def test_positional_embedding_and_embedding(backend):
    _float64(backend)
    rng = np.random.default_rng(0)
    compare(nn.PositionalEmbedding(7, 4), _Positions(7, 4), [rng.standard_normal((5, 2, 4))],
            backend)
    compare(nn.Embedding(9, 3), TNN.Embedding(9, 3), [rng.integers(0, 9, (4, 2))], backend)
    x = Input("x")
    layer = nn.PositionalEmbedding(3, 2)
    with pytest.raises(NodeError, match=r"4 steps, but the positional table has 3 rows"):
        value_and_grad(Sum(layer(x)), {**layer.init(0), x: np.ones((4, 1, 2))}, [x])


@pytest.mark.parametrize("make", [
    lambda: nn.MultiHeadAttention(8, 2, causal=True),
    lambda: nn.TransformerBlock(8, 2, 16, causal=True),
    lambda: nn.Sequential(nn.TransformerBlock(8, 2, 16), nn.TransformerBlock(8, 4, 8))],
    ids=["attention", "block", "two-blocks"])
def test_the_causal_mask_hides_the_future(backend, make):
    """Changing token t changes no output before t (and does change t's own)."""
    _float64(backend)
    layer = make()
    x = Input("x")
    out = layer(x)
    out = out[0] if isinstance(out, tuple) else out
    rng = np.random.default_rng(0)
    values = {n: backend.asarray(v.astype(np.float64)) for n, v in layer.init(0).items()}
    seq = rng.standard_normal((6, 2, 8))
    first = np.asarray(backend.to_numpy(run(out, {**values, x: backend.asarray(seq)}).value))
    for t in (0, 3, 5):
        changed = seq.copy()
        changed[t] += rng.standard_normal((2, 8)) * 3
        again = np.asarray(backend.to_numpy(run(out, {**values,
                                                      x: backend.asarray(changed)}).value))
        np.testing.assert_allclose(again[:t], first[:t], rtol=1e-12, atol=1e-12)
        assert np.abs(again[t] - first[t]).max() > 1e-3


def test_without_the_mask_the_future_is_seen():
    layer = nn.MultiHeadAttention(4, 2, causal=False)
    x = Input("x")
    out, _ = layer(x)
    values = layer.init(0)
    seq = np.random.default_rng(0).standard_normal((4, 1, 4))
    changed = seq.copy()
    changed[3] += 1
    a, b = (run(out, {**values, x: s}).value for s in (seq, changed))
    assert np.abs(a[0] - b[0]).max() > 1e-4


# -- records, model files ----------------------------------------------------------------------

SEQ_LAYERS = [nn.RNNCell(3, 4, nonlinearity="relu"), nn.LSTMCell(3, 4, bias=False),
              nn.GRUCell(2, 5), nn.RNN(3, 4, num_layers=2, bias=False), nn.LSTM(3, 4, 3),
              nn.GRU(2, 2), nn.MultiHeadAttention(8, 2, causal=True),
              nn.PositionalEmbedding(16, 4), nn.TransformerBlock(8, 2, 32, "relu", False),
              nn.CharLM("ab\n", kind="transformer", embedding_dim=4, num_heads=2, context=8)]


@pytest.mark.parametrize("layer", SEQ_LAYERS, ids=lambda layer: type(layer).__name__)
def test_records_rebuild_the_same_layer(layer):
    record = layer.record()
    assert json.loads(json.dumps(record)) == record
    again = nn.from_record(json.loads(json.dumps(record)))
    assert type(again) is type(layer) and again.record() == record
    assert again.shapes() == layer.shapes()


def test_a_model_of_sequence_layers_saves_and_loads(tmp_path):
    CharLM = nn.CharLM
    chars = "abcdefghij\n"
    for net in (CharLM(chars, embedding_dim=6, hidden_size=8, num_layers=2),
                CharLM(chars, kind="transformer", embedding_dim=8, num_layers=2, num_heads=2,
                       context=12)):
        model = from_network(net, (12,), n_classes=11)
        path = save_model(model, tmp_path / "lm.npz")
        loaded = load_model(path)
        assert loaded.architecture == model.architecture
        assert loaded.network.vocabulary == chars
        tokens = np.random.default_rng(0).integers(0, 11, (3, 12))
        logits = [run(m.logits, {**m.params, m.images: tokens}).value for m in (model, loaded)]
        assert logits[0].shape == (3, 11, 12)
        np.testing.assert_array_equal(logits[0], logits[1])


# -- the character-level language model --------------------------------------------------------

def test_clip_grad_norm_matches_torch():
    from miniflow.charlm import clip_grad_norm

    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    for max_norm in (0.5, 100.0):
        tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        norm = TNN.utils.clip_grad_norm_(tensors, max_norm)
        clipped, ours = clip_grad_norm(grads, max_norm)
        assert ours == pytest.approx(float(norm), rel=1e-12)
        for got, t in zip(clipped, tensors):
            np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12)
    with pytest.raises(ConfigError, match="max_norm must be positive"):
        clip_grad_norm(grads, 0)


def test_stream_batches_continue_each_stream():
    from miniflow.charlm import stream_batches

    ids = np.arange(103)
    windows = list(stream_batches(ids, batch_size=4, seq_len=5))
    assert len(windows) == 5  # 102 // 4 = 25 per stream, 5 windows of 5
    for k, (inputs, targets) in enumerate(windows):
        assert inputs.shape == targets.shape == (4, 5)
        np.testing.assert_array_equal(targets, inputs + 1)
        np.testing.assert_array_equal(inputs[:, 0], np.arange(4) * 25 + 5 * k)
    with pytest.raises(ConfigError, match="too few"):
        next(stream_batches(ids, batch_size=50, seq_len=5))


def _tiny_lm(kind="lstm"):
    return nn.CharLM("abcdefg", kind=kind, embedding_dim=4, hidden_size=5, num_layers=2,
                     num_heads=2, context=6)


def test_truncated_bptt_carries_the_state_but_not_its_gradient():
    """Window 2's loss and gradients, the state fed from window 1 as values, equal
    PyTorch's with window 1's final state detached."""
    from miniflow.charlm import torch_twin, training_graph

    net = _tiny_lm()
    model = from_network(net, (6,), n_classes=7)
    params = {node: value.astype(np.float64) for node, value in model.params.items()}
    model.params = params
    twin = torch_twin(model).double()
    rng = np.random.default_rng(0)
    first, second, targets = (rng.integers(0, 7, (3, 6)) for _ in range(3))
    with torch.no_grad():
        _, state = twin(torch.tensor(first))
    logits, _ = twin(torch.tensor(second), tuple(s.detach() for s in state))
    loss = TNN.functional.cross_entropy(logits, torch.tensor(targets))
    named = dict(twin.named_parameters())
    reference = torch.autograd.grad(loss, [named[node.name] for node in params])

    graph = training_graph(net)
    zero = graph.zero_state(3, np, np.float64)
    carried = run(graph.logits, graph.feed(params, first, first, zero), extras=graph.final)
    state = list(carried.extras)
    for ours, theirs in zip(state, (s.numpy() for s in state_of(twin, first))):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    result = run(graph.loss, graph.feed(params, second, targets, state), list(params))
    assert float(result.value) == pytest.approx(loss.item(), rel=1e-10)
    flip = {"head.weight"}
    for node, grad, want in zip(params, result.grads, reference):
        want = want.numpy().T if node.name in flip else want.numpy()
        np.testing.assert_allclose(grad, want, rtol=1e-8, atol=1e-12, err_msg=node.name)


def state_of(twin, tokens):
    with torch.no_grad():
        return twin(torch.tensor(tokens))[1]


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_the_model_matches_its_torch_twin(kind):
    from miniflow.charlm import torch_twin

    net = _tiny_lm(kind)
    model = from_network(net, (6,), n_classes=7)
    model.params = {node: value.astype(np.float64) for node, value in model.params.items()}
    tokens = np.random.default_rng(1).integers(0, 7, (2, 6))
    ours = run(model.logits, {**model.params, model.images: tokens}).value
    with torch.no_grad():
        theirs, _ = torch_twin(model).double()(torch.tensor(tokens))
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-9, atol=1e-12)


def test_carrying_the_state_reads_a_stream_as_one_sequence():
    from miniflow.charlm import bits_per_character

    net = _tiny_lm()
    model = from_network(net, (6,), n_classes=7)
    ids = np.random.default_rng(2).integers(0, 7, 25)
    # Two windows of 12 with the state carried == one window of 24.
    assert bits_per_character(model, ids, batch_size=1, seq_len=12) == \
        pytest.approx(bits_per_character(model, ids, batch_size=1, seq_len=24), rel=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_training_on_python_help_text_lowers_bits_per_character(kind, tmp_path):
    from miniflow.charlm import python_help_text, sample, train_charlm

    text = python_help_text()[:12000]
    result = train_charlm(text, kind=kind, steps=40, batch_size=8, seq_len=24,
                          embedding_dim=16, hidden_size=32, num_layers=1, num_heads=2,
                          lr=1e-2, seed=0)
    uniform = np.log2(len(result.network.vocabulary))
    assert result.steps == 40 and len(result.train_bpc) == 40
    assert result.bpc < uniform - 1.0  # well below guessing: it learned the letters' counts
    assert np.mean(result.train_bpc[-5:]) < result.train_bpc[0] - 1.0
    text_out = sample(result, "The ", 30, seed=3)
    assert text_out.startswith("The ") and len(text_out) == 34
    assert set(text_out) <= set(result.network.vocabulary)
    assert sample(result, "The ", 30, seed=3) == text_out
    loaded = load_model(save_model(result.model, tmp_path / "lm.npz"))
    assert sample(loaded, "The ", 30, seed=3) == text_out


def test_charlm_refuses_bad_settings():
    from miniflow.charlm import sample, train_charlm

    with pytest.raises(ConfigError, match="vocabulary must be"):
        nn.CharLM("aab")
    with pytest.raises(ConfigError, match="kind must be"):
        nn.CharLM("ab", kind="gru")
    with pytest.raises(ConfigError, match="too few"):
        train_charlm("abc" * 10, steps=1, batch_size=32, seq_len=64)
    model = from_network(_tiny_lm(), (6,), n_classes=7)
    with pytest.raises(ConfigError, match="outside the vocabulary: 'z'"):
        sample(model, "abz", 3)


# -- the benchmarks run (their numbers are not asserted: CI machines are noisy) --------------

@pytest.mark.parametrize("script", ["seq.py", "seq_quality.py"])
def test_the_sequence_benchmarks_run(script, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(root / "bench" / script), "--quick", "--json",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=root,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["machine"]["load_average"] is not None
    if script == "seq.py":
        names = {r["contender"] for r in result["results"]}
        assert names == {"miniflow:lstm", "torch:lstm", "miniflow:transformer",
                         "torch:transformer"}
        for r in result["results"]:  # same weights, same batch: the same first loss
            twin = next(s for s in result["results"] if s["contender"].split(":")[1] ==
                        r["contender"].split(":")[1] and s is not r)
            assert r["first_loss"] == pytest.approx(twin["first_loss"], rel=1e-4)
            assert r["ratio_paired"] > 0
    else:
        assert result["settings"]["steps"] == 20
        assert result["miniflow"]["bpc"] == pytest.approx(result["torch"]["bpc"], rel=0.02)
        assert len(result["miniflow"]["train_bpc"]) == len(result["torch"]["train_bpc"]) == 20


def test_the_charlm_command_trains_samples_and_saves(tmp_path, capsys):
    from miniflow.charlm import main, python_help_text

    text = tmp_path / "text.txt"
    text.write_text(python_help_text()[:6000], encoding="utf-8")
    saved = tmp_path / "lm.npz"
    assert main(["--text", str(text), "--steps", "4", "--batch-size", "4", "--seq-len", "16",
                 "--embedding", "8", "--hidden", "8", "--layers", "1", "--sample", "20",
                 "--prompt", "Th", "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "held-out: " in out and "bits per character after 4 steps" in out
    assert "\nTh" in out and saved.exists()
    assert load_model(saved).network.vocabulary == "".join(sorted(set(text.read_text())))
