"""Layers (miniflow.nn) against their torch.nn counterparts, and what layers promise.

Each layer is run in float64 on every backend with the parameter values of a
PyTorch module copied in, and its output and the gradients of every parameter
and float input are compared with PyTorch's autograd, for random sizes drawn by
hypothesis. BatchNorm is compared in both modes, its running statistics too.
"""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import torch

from miniflow import DummyGrad, Input, nn, run
from miniflow.errors import ConfigError
from miniflow.models import cnn, from_architecture, from_network, mlp
from miniflow.serialize import ModelFileError, load_model, save_model

TNN = torch.nn
LAYER = settings(max_examples=12, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow, HealthCheck.data_too_large])


def _float64(backend):
    if not backend.xp.isdtype(backend.asarray(np.zeros(1)).dtype, backend.xp.float64):
        pytest.skip(f"{backend.name} cannot hold float64 here")


def _transposed(layer):
    """Names of the Linear weights, which are the transpose of torch.nn.Linear's."""
    return {sub.weight.name for sub in layer.walk() if isinstance(sub, nn.Linear)}


def copy_into_torch(layer, module, seed=0):
    """Draw ``layer``'s parameters, as float64, and copy them into ``module``; return them."""
    values = {node: value.astype(np.float64) for node, value in layer.init(seed).items()}
    rng = np.random.default_rng(seed + 1)
    # Scale and shift away from ones and zeros, so that mistakes in them show.
    values = {node: value + rng.uniform(-0.5, 0.5, value.shape) if value.std() == 0 else value
              for node, value in values.items()}
    flip = _transposed(layer)
    named = dict(module.named_parameters())
    assert sorted(named) == sorted(node.name for node in values)
    with torch.no_grad():
        for node, value in values.items():
            named[node.name].copy_(torch.tensor(value.T if node.name in flip else value))
    return values


def compare(layer, module, inputs, backend, *, training=False, seed=0, rtol=1e-7, atol=1e-9,
            state=None):
    """Run ``layer`` and ``module`` on ``inputs`` (NumPy arrays) and compare everything.

    Returns miniflow's values of the layer's state updates (BatchNorm), with
    PyTorch's module after its forward pass, for the caller to compare.
    """
    module = module.double()
    module.train(training)
    params = copy_into_torch(layer, module, seed)
    state = {node: value.astype(np.float64) for node, value in layer.init_state().items()} \
        if state is None else state
    tensors = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in inputs]
    expected = module(*tensors)
    upstream = np.random.default_rng(seed).standard_normal(tuple(expected.shape))
    named = dict(module.named_parameters())
    wanted = [named[node.name] for node in params] + [t for t in tensors if t.requires_grad]
    torch_grads = torch.autograd.grad(expected, wanted, torch.tensor(upstream),
                                      allow_unused=True)

    nodes = [Input(name=f"x{k}") for k in range(len(inputs))]
    out = layer(*nodes)
    head = DummyGrad(out)
    feed = {node: backend.asarray(value) for node, value in (*params.items(), *state.items())}
    feed.update({node: backend.asarray(a) for node, a in zip(nodes, inputs)})
    feed[head] = backend.asarray(upstream)
    wrt = list(params) + [node for node, a in zip(nodes, inputs) if a.dtype.kind == "f"]
    updates = layer.updates()
    result = run(head, feed, wrt, backend=backend.name, training=training,
                 extras=list(updates.values()) if training else ())
    host = lambda a: np.asarray(backend.to_numpy(a), dtype=np.float64)  # noqa: E731
    np.testing.assert_allclose(host(result.value), expected.detach().numpy(), rtol=rtol,
                               atol=atol, err_msg="output")
    flip = _transposed(layer)
    for node, grad, reference in zip(wrt, result.grads, torch_grads):
        want = np.zeros(grad.shape) if reference is None else reference.numpy()
        if node.name in flip:
            want = want.T
        np.testing.assert_allclose(host(grad), want, rtol=rtol * 10, atol=atol * 10,
                                   err_msg=f"gradient of {node.name}")
    return dict(zip(updates, map(host, result.extras))), module


def images(draw, n=None, c=None, low=1, high=6):
    shape = (draw(st.integers(1, 3)) if n is None else n,
             draw(st.integers(1, 3)) if c is None else c,
             draw(st.integers(low, high)), draw(st.integers(low, high)))
    return np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(shape)


def randn(draw, *shape):
    return np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(shape)


# -- each layer against torch.nn -------------------------------------------------------------

def test_linear(backend):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        n_in, n_out, bias = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.booleans())
        lead = draw(st.sampled_from([(), (2,)]))
        x = randn(draw, draw(st.integers(0, 4)), *lead, n_in)
        compare(nn.Linear(n_in, n_out, bias), TNN.Linear(n_in, n_out, bias), [x], backend)
    check()


def test_conv2d(backend):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        c, o = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = draw(st.sampled_from(["same", "valid", 0, 1, (1, 0)]))
        stride = 1 if padding == "same" else draw(st.integers(1, 2))
        bias = draw(st.booleans())
        x = images(draw, c=c, low=3, high=6)
        compare(nn.Conv2D(c, o, kernel, stride, padding, bias=bias),
                TNN.Conv2d(c, o, kernel, stride, padding, bias=bias), [x], backend,
                rtol=1e-6, atol=1e-8)
    check()


@pytest.mark.parametrize("ours, theirs", [(nn.MaxPool2D, TNN.MaxPool2d),
                                          (nn.AvgPool2D, TNN.AvgPool2d)])
def test_pooling(backend, ours, theirs):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        kernel = draw(st.integers(1, 3))
        stride = draw(st.sampled_from([None, 1, 2]))
        padding = draw(st.integers(0, kernel // 2))
        x = images(draw, low=3, high=6)
        # Distinct values: the largest of a window is unique (ties are conventions).
        x = np.argsort(x.ravel()).reshape(x.shape) / x.size
        compare(ours(kernel, stride, padding), theirs(kernel, stride, padding), [x], backend)
    check()


def test_flatten(backend):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        start = draw(st.integers(0, 3))
        compare(nn.Flatten(start), TNN.Flatten(start), [images(draw)], backend)
    check()


def test_layer_norm(backend):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        x = images(draw)
        k = draw(st.integers(1, 3))
        compare(nn.LayerNorm(x.shape[4 - k:]), TNN.LayerNorm(x.shape[4 - k:]), [x], backend,
                rtol=1e-6, atol=1e-8)
    check()


@pytest.mark.parametrize("ours, theirs", [
    (nn.ReLU, TNN.ReLU), (nn.Sigmoid, TNN.Sigmoid), (nn.Tanh, TNN.Tanh), (nn.GELU, TNN.GELU),
    (lambda: nn.GELU("tanh"), lambda: TNN.GELU("tanh")),
    (lambda: nn.LeakyReLU(0.2), lambda: TNN.LeakyReLU(0.2)),
    (lambda: nn.ELU(0.5), lambda: TNN.ELU(0.5)), (nn.Identity, TNN.Identity)])
def test_activations(backend, ours, theirs):
    _float64(backend)
    x = np.random.default_rng(0).standard_normal((4, 5))
    compare(ours(), theirs(), [x], backend, rtol=1e-6, atol=1e-8)


def test_embedding(backend):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        rows, dim = draw(st.integers(1, 6)), draw(st.integers(1, 4))
        shape = draw(st.sampled_from([(3,), (2, 4), (0,)]))
        indices = np.random.default_rng(draw(st.integers(0, 99))).integers(0, rows, shape)
        compare(nn.Embedding(rows, dim), TNN.Embedding(rows, dim), [indices], backend)
    check()


def test_dropout_passes_through_outside_training_and_drops_in_training(backend):
    _float64(backend)
    x = np.random.default_rng(0).standard_normal((50, 40)) + 5  # no zeros of its own
    compare(nn.Dropout(0.3), TNN.Dropout(0.3), [x], backend)
    node = Input()
    y = nn.Dropout(0.3)(node)
    head = DummyGrad(y)
    result = run(head, {node: backend.asarray(x), head: backend.asarray(np.ones_like(x))},
                 [node], backend=backend.name, training=True, rng=backend.make_rng(1))
    out, grad = (np.asarray(backend.to_numpy(a)) for a in (result.value, result.grads[0]))
    kept = out != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(out[kept], x[kept] / 0.7)
    np.testing.assert_allclose(grad, kept / 0.7)


@pytest.mark.parametrize("ours, theirs, shape", [
    (nn.BatchNorm1d, TNN.BatchNorm1d, lambda draw, c: randn(draw, draw(st.integers(2, 6)), c)),
    (nn.BatchNorm2d, TNN.BatchNorm2d, lambda draw, c: images(draw, n=draw(st.integers(1, 3)),
                                                             c=c, low=2))])
def test_batch_norm_in_training_and_its_running_statistics(backend, ours, theirs, shape):
    _float64(backend)

    @LAYER
    @given(st.data())
    def check(data):
        draw = data.draw
        c = draw(st.integers(1, 4))
        momentum = draw(st.sampled_from([0.1, 0.5, 1.0]))
        layer, module = ours(c, momentum=momentum), theirs(c, momentum=momentum)
        x = shape(draw, c)
        updates, module = compare(layer, module, [x], backend, training=True, rtol=1e-6,
                                  atol=1e-8)
        np.testing.assert_allclose(updates[layer.running_mean],
                                   module.running_mean.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(updates[layer.running_var],
                                   module.running_var.numpy(), rtol=1e-9, atol=1e-12)
    check()


@pytest.mark.parametrize("ours, theirs, shape", [(nn.BatchNorm1d, TNN.BatchNorm1d, (5, 3)),
                                                 (nn.BatchNorm2d, TNN.BatchNorm2d, (2, 3, 4, 4))])
def test_batch_norm_in_inference_uses_the_running_statistics(backend, ours, theirs, shape):
    _float64(backend)
    rng = np.random.default_rng(0)
    layer, module = ours(3), theirs(3).double()
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    module.running_mean.copy_(torch.tensor(mean))
    module.running_var.copy_(torch.tensor(var))
    compare(layer, module, [rng.standard_normal(shape)], backend,
            state={layer.running_mean: mean, layer.running_var: var})


class _Residual(TNN.Module):
    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def _block_pair():
    ours = nn.Sequential(
        nn.Conv2D(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Conv2D(4, 4, 3, padding="same"), nn.ReLU())),
        nn.Residual(nn.Sequential(nn.Conv2D(4, 6, 3, padding=1)), nn.Conv2D(4, 6, 1)),
        nn.AvgPool2D(2), nn.Flatten(), nn.LayerNorm(24), nn.Linear(24, 3))
    theirs = TNN.Sequential(
        TNN.Conv2d(2, 4, 3, padding=1), TNN.BatchNorm2d(4), TNN.ReLU(),
        _Residual(TNN.Sequential(TNN.Conv2d(4, 4, 3, padding="same"), TNN.ReLU())),
        _Residual(TNN.Sequential(TNN.Conv2d(4, 6, 3, padding=1)), TNN.Conv2d(4, 6, 1)),
        TNN.AvgPool2d(2), TNN.Flatten(), TNN.LayerNorm(24), TNN.Linear(24, 3))
    return ours, theirs


@pytest.mark.parametrize("training", [True, False])
def test_sequential_and_residual_blocks(backend, training):
    _float64(backend)
    ours, theirs = _block_pair()
    x = np.random.default_rng(3).standard_normal((5, 2, 4, 4))
    compare(ours, theirs, [x], backend, training=training, rtol=1e-6, atol=1e-8)
    names = [name for name, _ in ours.named_parameters()]
    assert names == [name for name, _ in theirs.named_parameters()]
    assert "3.body.0.weight" in names and "4.shortcut.weight" in names


# -- names, order, records ---------------------------------------------------------------

def test_names_follow_the_tree_and_the_order_is_stable():
    net = nn.Sequential({"conv": nn.Conv2D(1, 2, 3), "bn": nn.BatchNorm2d(2),
                         "head": nn.Sequential(nn.Flatten(), nn.Linear(8, 2, bias=False))})
    assert [name for name, _ in net.named_parameters()] == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.1.weight"]
    assert [name for name, _ in net.named_states()] == ["bn.running_mean", "bn.running_var"]
    assert net.parameters() == [node for _, node in net.named_parameters()]
    assert net.shapes() == {"conv.weight": (2, 1, 3, 3), "conv.bias": (2,), "bn.weight": (2,),
                            "bn.bias": (2,), "bn.running_mean": (2,), "bn.running_var": (2,),
                            "head.1.weight": (8, 2)}
    assert list(net.init(0)) == net.parameters()
    assert net["head"][1].weight.name == "head.1.weight"
    out = net(Input("x"))
    assert out.name == "head.1"


def test_a_layer_has_one_place_in_a_tree():
    shared = nn.Linear(2, 2)
    nn.Sequential(shared)
    with pytest.raises(ConfigError, match="already belongs to a model"):
        nn.Sequential(shared)
    with pytest.raises(ConfigError, match="names two layers alike"):
        nn.Sequential.from_config({"layers": [["a", {"layer": "ReLU"}],
                                              ["a", {"layer": "ReLU"}]]})


ALL_LAYERS = [
    nn.Linear(3, 4, bias=False, weight_init="glorot_uniform"), nn.Conv2D(2, 3, (3, 1), 2, (1, 0)),
    nn.Conv2D(1, 1, 3, padding="same", dilation=2), nn.MaxPool2D(3, 2, 1), nn.AvgPool2D(2),
    nn.Flatten(2), nn.Dropout(0.25), nn.LayerNorm((3, 4), eps=1e-3),
    nn.BatchNorm1d(3, momentum=0.5), nn.BatchNorm2d(4), nn.Embedding(10, 3), nn.ReLU(),
    nn.Sigmoid(), nn.Tanh(), nn.GELU("tanh"), nn.LeakyReLU(0.1), nn.ELU(2.0), nn.Identity(),
    nn.Sequential({"a": nn.Linear(2, 2), "b": nn.Residual(nn.Linear(2, 2), nn.Identity())}),
    nn.Residual(nn.Sequential(nn.Linear(2, 2), nn.ReLU())),
]


@pytest.mark.parametrize("layer", ALL_LAYERS, ids=lambda layer: type(layer).__name__)
def test_records_are_json_and_rebuild_the_same_layer(layer):
    record = layer.record()
    assert json.loads(json.dumps(record)) == record
    again = nn.from_record(json.loads(json.dumps(record)))
    assert type(again) is type(layer) and again.record() == record
    assert again.shapes() == layer.shapes()


def test_every_registered_layer_has_a_record_test():
    from test_seq import SEQ_LAYERS  # the sequence layers' records are tested there

    tested = {type(layer).__name__ for layer in (*ALL_LAYERS, *SEQ_LAYERS)}
    assert tested >= set(nn.LAYERS)


@pytest.mark.parametrize("record, message", [
    ({"layer": "Transformer"}, "unknown layer 'Transformer'"),
    ({"layer": "Linear", "in_features": "4", "out_features": 2}, "in_features must be"),
    ({"layer": "Linear", "in_features": True, "out_features": 2}, "in_features must be"),
    ({"layer": "Linear", "in_features": 4.0, "out_features": 2}, "in_features must be"),
    ({"layer": "Linear", "in_features": 4, "out_features": 2, "weight_init": "os.system"},
     "unknown weight_init"),
    ({"layer": "Dropout", "p": 2}, r"p must be a number in \[0, 1\]"),
    ({"layer": "Sequential", "layers": {"a": 1}}, "list of \\[name, record\\] pairs"),
    ([1, 2], "a layer record is a mapping"),
])
def test_bad_records_are_refused_by_name(record, message):
    with pytest.raises(ConfigError, match=message):
        nn.from_record(record)


def test_a_record_of_huge_layers_allocates_nothing():
    import tracemalloc

    tracemalloc.start()
    net = nn.from_record({"layer": "Sequential", "layers": [
        ["0", {"layer": "Linear", "in_features": 10**9, "out_features": 10**9}],
        ["1", {"layer": "Embedding", "num_embeddings": 10**12, "embedding_dim": 10**6}]]})
    shapes = net.shapes()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert shapes["0.weight"] == (10**9, 10**9) and peak < 2**20


# -- initialisers ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, std", [
    ("he_normal", np.sqrt(2 / 400)), ("he_uniform", np.sqrt(2 / 400)),
    ("kaiming_normal", np.sqrt(2 / 400)), ("glorot_normal", np.sqrt(2 / 700)),
    ("glorot_uniform", np.sqrt(2 / 700)), ("xavier_uniform", np.sqrt(2 / 700))])
def test_initialiser_statistics(name, std):
    weight = nn.Linear(400, 300, weight_init=name).init(seed=1)
    value = next(iter(weight.values()))
    assert value.dtype == np.float32 and value.shape == (400, 300)
    assert abs(value.mean()) < 0.05 * std
    assert value.std() == pytest.approx(std, rel=0.02)
    if name.endswith("uniform"):
        assert np.abs(value).max() <= std * np.sqrt(3) * (1 + 1e-6)


def test_conv_fans_count_the_kernel_and_zeros_ones_draw_nothing():
    conv = nn.Conv2D(8, 16, 5)
    weight = conv.init(seed=0)[conv.weight]
    assert weight.std() == pytest.approx(np.sqrt(2 / (8 * 25)), rel=0.03)
    norm = nn.LayerNorm(6)
    values = norm.init(seed=0)
    assert (values[norm.weight] == 1).all() and (values[norm.bias] == 0).all()
    table = nn.Embedding(300, 300).init(seed=0)
    assert next(iter(table.values())).std() == pytest.approx(1, rel=0.02)


def test_the_same_seed_gives_the_same_parameters():
    net = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    first, again, other = net.init(seed=3), net.init(seed=3), net.init(seed=4)
    for node in net.parameters():
        np.testing.assert_array_equal(first[node], again[node])
    assert not np.array_equal(first[net[0].weight], other[net[0].weight])


# -- models of layers: building, saving, loading, training ---------------------------------

def _bn_cnn():
    return nn.Sequential({
        "conv1": nn.Conv2D(1, 4, 3, padding="same"), "bn1": nn.BatchNorm2d(4), "relu1": nn.ReLU(),
        "pool1": nn.MaxPool2D(2), "flatten": nn.Flatten(), "fc1": nn.Linear(4 * 4 * 4, 2)})


def test_a_model_of_layers_round_trips_through_a_file(tmp_path):
    model = from_network(_bn_cnn(), (1, 8, 8), seed=2)
    assert model.architecture["n_classes"] == 2  # inferred from the output
    model.state = {node: value + 0.5 for node, value in model.state.items()}
    model.input_mean, model.input_std = 0.1, 0.3
    path = save_model(model, tmp_path / "model.npz")
    loaded = load_model(path, architecture=model.architecture)
    assert loaded.architecture == model.architecture
    assert [n.name for n in loaded.params] == [n.name for n in model.params]
    assert [n.name for n in loaded.state] == ["bn1.running_mean", "bn1.running_var"]
    for saved, restored in zip((*model.params.values(), *model.state.values()),
                               (*loaded.params.values(), *loaded.state.values())):
        np.testing.assert_array_equal(saved, restored)
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


@pytest.mark.parametrize("build", [lambda: mlp((8, 4), "tanh", n_inputs=6, n_classes=3),
                                   lambda: cnn((2,), 4, image_shape=(1, 4, 4), n_classes=2)])
def test_from_architecture_rebuilds_the_ready_made_models(build):
    model = build()
    again = from_architecture(json.loads(json.dumps(model.architecture)))
    assert again.architecture == model.architecture
    for a, b in zip(model.params.values(), again.params.values()):
        np.testing.assert_array_equal(a, b)


def test_a_hand_built_graph_cannot_be_saved(tmp_path):
    base = mlp(0)
    from miniflow.models import Model

    model = Model(images=base.images, labels=base.labels, logits=base.logits, loss=base.loss,
                  params=base.params, architecture={"n_classes": 10, "n_inputs": 784})
    with pytest.raises(ConfigError, match="only models built from miniflow.nn layers"):
        model.save(tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()


@pytest.mark.parametrize("change, message", [
    ({"network": {"layer": "Linear", "in_features": 4, "out_features": 2, "bias": "yes"}},
     "bias must be true or false"),
    ({"network": {"layer": "Conv3D"}}, "unknown layer 'Conv3D'"),
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
    ({"input_shape": [4, -1]}, "input_shape must be a positive integer"),
    ({"extra": 1}, "an architecture record holds"),
])
@pytest.mark.parametrize("version", [2, 3])
def test_records_that_cannot_be_rebuilt_are_refused(tmp_path, change, message, version):
    from miniflow.safetensors_format import read_header, read_tensor, write_safetensors

    model = mlp(0, n_inputs=4, n_classes=2)
    path = save_model(model, tmp_path / "model.safetensors")
    with open(path, "rb") as file:
        tensors, strings, _ = read_header(file)
        arrays = {name: read_tensor(file, entry) for name, entry in tensors.items()}
    metadata = json.loads(strings["miniflow"])
    metadata["architecture"] = {**metadata["architecture"], **change}
    if version == 2:  # an .npz, as miniflow 0.x wrote it
        metadata["version"] = 2
        with open(path, "wb") as file:  # a file, so that savez appends no ".npz"
            np.savez(file, __miniflow__=np.array(json.dumps(metadata)), **arrays)
    else:
        with open(path, "wb") as file:
            write_safetensors(file, arrays, {"miniflow": json.dumps(metadata)})
    with pytest.raises(ModelFileError, match=f"architecture record is unusable.*{message}"):
        load_model(path)


def test_training_stores_the_running_statistics(tmp_path):
    from miniflow.train import TrainConfig, train

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    images = (rng.random((200, 1, 8, 8)) * 0.3).astype(np.float32)
    images[labels == 0, :, :, :4] += 0.7
    images[labels == 1, :, :, 4:] += 0.7
    model = from_network(_bn_cnn(), (1, 8, 8), seed=0)
    before = {node.name: value.copy() for node, value in model.state.items()}
    config = TrainConfig(epochs=2, batch_size=20, lr=0.05, schedule="constant", shards=2)
    result = train(config, images[:150], labels[:150], images[150:], labels[150:],
                   model=model, n_classes=2, threads=1)
    trained = result.model
    assert result.history[-1].val_accuracy > 0.9
    for node, value in trained.state.items():
        assert value.dtype == np.float32 and not np.array_equal(value, before[node.name])
    assert {node.name: value for node, value in model.state.items()}.keys() == before.keys()
    assert (trained.param("bn1.running_var") > 0).all()
    loaded = load_model(save_model(trained, tmp_path / "bn.npz"))
    np.testing.assert_array_equal(loaded.param("bn1.running_mean"),
                                  trained.param("bn1.running_mean"))
    np.testing.assert_array_equal(loaded.predict(images), trained.predict(images))
    with pytest.raises(ConfigError, match="--compile cannot train a graph with BatchNorm"):
        train(TrainConfig(epochs=1, compile=True), images, labels, model=model, n_classes=2)
