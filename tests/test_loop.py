"""The one training loop: any scalar loss, metrics, callbacks, checkpoints, resume."""
import numpy as np
import pytest

from miniflow import nn
from miniflow.errors import ConfigError, DataError
from miniflow.graph import Input
from miniflow.loop import EarlyStopping, StopTraining
from miniflow.models import Model, from_network, mlp
from miniflow.nodes import CrossEntropyWithSoftmax, ReLU, Sum
from miniflow.train import TrainConfig, train

from test_train import N_CLASSES, N_FEATURES, SMALL, TRAIN, VAL


def run(config, **kwargs):
    kwargs.setdefault("n_classes", N_CLASSES)
    return train(config, *TRAIN, *VAL, threads=1, **kwargs)


def regression(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    w = np.arange(1, 6, dtype=np.float32) / 5
    y = (x @ w + 0.5 * np.sin(x[:, 0]) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    return x, y[:, None]


def hand_built(l2=1e-3, smoothing=0.0, reduction="mean"):
    """The README's two-moons pattern: a graph of Inputs, a CE loss plus an L2 term."""
    rng = np.random.default_rng(0)
    x, y = Input(name="x"), Input(name="y")
    w1, b1 = Input(name="w1"), Input(name="b1")
    w2, b2 = Input(name="w2"), Input(name="b2")
    logits = ReLU(x @ w1 + b1) @ w2 + b2
    ce = CrossEntropyWithSoftmax(logits, y, label_smoothing=smoothing, reduction=reduction)
    loss = ce + l2 * (Sum(w1 ** 2) + Sum(w2 ** 2)) if l2 else ce
    params = {w1: (rng.standard_normal((N_FEATURES, 16)) * 0.3).astype(np.float32),
              b1: np.zeros(16, np.float32),
              w2: (rng.standard_normal((16, N_CLASSES)) * 0.3).astype(np.float32),
              b2: np.zeros(N_CLASSES, np.float32)}
    return Model(images=x, labels=y, logits=logits, loss=loss, params=params, architecture={},
                 input_shape=(N_FEATURES,))


# -- any loss -------------------------------------------------------------------------

def test_a_hand_built_graph_with_an_l2_term_trains_and_validates():
    model = hand_built()
    result = run(TrainConfig(**SMALL), model=model, verbose=True)
    stats = result.history[-1]
    assert stats.val_accuracy > 0.9 and stats.val_loss is not None
    # The trained model came back (no KeyError at the end), and predicts.
    assert (result.model.predict(VAL[0]) == VAL[1]).mean() == pytest.approx(stats.val_accuracy)
    assert result.n_classes == N_CLASSES
    # The validation loss holds the L2 term: the loss graph itself was run.
    from miniflow.evaluation import measure
    from miniflow.backends import get_backend
    trained = result.model
    x = (VAL[0] - trained.input_mean) / trained.input_std
    with_l2 = measure(trained, trained.params, x.astype(np.float32), VAL[1],
                      get_backend("numpy"), ())["loss"]
    assert with_l2 == pytest.approx(stats.val_loss, rel=1e-5)
    l2 = 1e-3 * sum(float((trained.params[n] ** 2).sum()) for n in trained.params
                    if n.name in ("w1", "w2"))
    assert l2 > 0


def test_a_hand_built_model_refuses_to_save_before_writing(tmp_path):
    result = run(TrainConfig(**{**SMALL, "epochs": 1}), model=hand_built())
    with pytest.raises(ConfigError, match="built by hand"):
        result.model.save(tmp_path / "own.npz")
    assert list(tmp_path.iterdir()) == []


def test_the_validation_loss_keeps_the_losses_options():
    # Label smoothing 0.5: validation on the training rows with the trained weights gives
    # the training loss's graph's value, not the plain cross-entropy's.
    model = hand_built(l2=0, smoothing=0.5)
    result = train(TrainConfig(**{**SMALL, "epochs": 1}), *TRAIN, *TRAIN, model=model,
                   n_classes=N_CLASSES, threads=1)
    from miniflow.executor import evaluate
    trained = result.model
    x = ((TRAIN[0] - trained.input_mean) / trained.input_std).astype(np.float32)
    want = float(evaluate(trained.loss, {**trained.params, trained.images: x,
                                         trained.labels: TRAIN[1]}))
    assert result.history[0].val_loss == pytest.approx(want, rel=1e-5)
    plain = CrossEntropyWithSoftmax(trained.logits, trained.labels)
    other = float(evaluate(plain, {**trained.params, trained.images: x,
                                   trained.labels: TRAIN[1]}))
    assert abs(other - want) > 1e-3


def test_a_regression_trains_with_float_targets_and_reports_rmse():
    x, y = regression(600)
    xv, yv = regression(200, seed=1)
    net = nn.Sequential({"fc1": nn.Linear(5, 32), "relu": nn.ReLU(), "fc2": nn.Linear(32, 1)})
    model = from_network(net, (5,), loss="mse", seed=0)
    config = TrainConfig(optimizer="sgd", lr=0.05, schedule="constant", epochs=20,
                         batch_size=32)
    result = train(config, x, y, xv, yv, model=model, threads=1,
                   metrics=("rmse", "mae", lambda out, t: float(np.abs(out - t).max())))
    last = result.history[-1]
    assert set(last.metrics) == {"rmse", "mae", "<lambda>"}
    assert last.val_accuracy is None and result.n_classes is None
    predictions = result.model.predict(xv)
    assert predictions.shape == (200, 1)
    rmse = float(np.sqrt(((predictions - yv) ** 2).mean()))
    assert last.metrics["rmse"] == pytest.approx(rmse, rel=1e-4)
    assert last.val_loss == pytest.approx(rmse ** 2, rel=1e-4)  # MSE's loss is the MSE
    assert rmse < 0.25 * float(yv.std())
    assert result.warning is None


def test_class_labels_must_be_integers_for_a_classification_loss():
    with pytest.raises(DataError, match=r"train_labels must be integers, got dtype float32 "
                                        r"\(the loss .* takes class labels\)"):
        train(TrainConfig(**SMALL), TRAIN[0], TRAIN[1].astype(np.float32), model=hand_built())


def test_an_unknown_metric_is_refused():
    with pytest.raises(ConfigError, match="unknown metric 'f1'"):
        run(TrainConfig(**SMALL), metrics=("f1",))


# -- shards and reductions ------------------------------------------------------------

def test_a_summed_loss_in_shards_is_the_whole_batch_sum():
    whole = run(TrainConfig(**{**SMALL, "lr": 0.0005}, optimizer="sgd", shards=1),
                model=hand_built(l2=0, reduction="sum"))
    sharded = run(TrainConfig(**{**SMALL, "lr": 0.0005}, optimizer="sgd", shards=2),
                  model=hand_built(l2=0, reduction="sum"))
    np.testing.assert_allclose([s.loss for s in sharded.history],
                               [s.loss for s in whole.history], rtol=1e-5)
    for want, got in zip(whole.model.params.values(), sharded.model.params.values()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_summed_loss_mixed_with_other_terms_cannot_be_sharded():
    with pytest.raises(ConfigError, match="cannot be split into 2 shards"):
        run(TrainConfig(**SMALL, shards=2), model=hand_built(reduction="sum"))


# -- callbacks ---------------------------------------------------------------------------

def test_on_epoch_returning_false_stops_and_keeps_the_model():
    seen = []
    result = run(TrainConfig(**{**SMALL, "epochs": 5}), on_epoch=lambda s: seen.append(s) or False)
    assert len(seen) == 1 and len(result.history) == 1 and result.stopped_early


def test_stop_training_from_on_step_ends_the_epoch_there():
    steps = []

    def on_step(loss):
        steps.append(float(loss))
        if len(steps) == 2:
            raise StopTraining

    result = run(TrainConfig(**{**SMALL, "epochs": 3}), on_step=on_step)
    assert len(steps) == 2 and len(result.history) == 1 and result.stopped_early


def test_early_stopping_watches_a_metric():
    stopper = EarlyStopping("val_loss", patience=1, min_delta=10.0)
    result = run(TrainConfig(**{**SMALL, "epochs": 6}), callbacks=[stopper])
    assert len(result.history) == 2 and stopper.stopped_epoch == 2
    with pytest.raises(ConfigError, match="monitors 'f1'"):
        run(TrainConfig(**{**SMALL, "epochs": 1}), callbacks=[EarlyStopping("f1")])


# -- checkpoints -------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["nesterov", "adam"])
def test_resume_after_an_interrupt_gives_the_uninterrupted_weights(tmp_path, optimizer):
    from miniflow.models import cnn
    from test_cnn_model import digits

    images, labels = digits(120)
    val = digits(40, seed=2)
    config = TrainConfig(model="cnn", epochs=3, batch_size=32, lr=0.01, shards=2,
                         optimizer=optimizer, weight_decay=1e-3, clip_norm=5.0)

    def model():  # with dropout: its masks must repeat on resume too
        return cnn((4,), 8, dropout=0.3, image_shape=(1, 8, 8), n_classes=2, seed=1)

    whole = train(config, images, labels, *val, model=model(), n_classes=2, threads=1)
    path = tmp_path / "run.ckpt"

    def interrupt(stats):
        if stats.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, images, labels, *val, model=model(), n_classes=2, threads=1,
              checkpoint=path, on_epoch=interrupt)
    resumed = train(config, images, labels, *val, model=model(), n_classes=2, threads=1,
                    checkpoint=path, resume=path)
    for want, got in zip(whole.model.params.values(), resumed.model.params.values()):
        np.testing.assert_array_equal(got, want)
    assert [s.loss for s in resumed.history] == [s.loss for s in whole.history]


def test_resume_restores_batchnorm_state(tmp_path):
    net = nn.Sequential({"fc1": nn.Linear(N_FEATURES, 8), "bn": nn.BatchNorm1d(8),
                         "relu": nn.ReLU(), "fc2": nn.Linear(8, N_CLASSES)})
    config = TrainConfig(**SMALL, optimizer="momentum")
    whole = run(config, model=from_network(net, (N_FEATURES,), seed=0))
    path = tmp_path / "bn.ckpt"

    def interrupt(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config, model=from_network(net, (N_FEATURES,), seed=0), checkpoint=path,
            on_epoch=interrupt)
    resumed = run(config, model=from_network(net, (N_FEATURES,), seed=0), resume=path)
    for want, got in zip([*whole.model.params.values(), *whole.model.state.values()],
                         [*resumed.model.params.values(), *resumed.model.state.values()]):
        np.testing.assert_array_equal(got, want)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint at"):
        run(TrainConfig(**SMALL), resume=tmp_path / "none.ckpt")


# -- gradient clipping ---------------------------------------------------------------------

def test_clip_norm_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    from miniflow.optim import SGD

    rng = np.random.default_rng(0)
    model = mlp((4,), n_inputs=3, n_classes=2)
    grads = [rng.standard_normal(v.shape).astype(np.float32) * 10
             for v in model.params.values()]
    opt = SGD(model.params, 0.1, clip_norm=1.0)
    opt.step(grads)
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True)
               for v in model.params.values()]
    for t, g in zip(tensors, grads):
        t.grad = torch.tensor(g, dtype=torch.float64)
    torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    with torch.no_grad():
        for t in tensors:
            t -= 0.1 * t.grad
    for t, got in zip(tensors, opt.params.values()):
        np.testing.assert_allclose(got, t.detach().numpy(), rtol=1e-5, atol=1e-6)
