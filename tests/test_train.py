"""The trainer, on small synthetic data across backends."""
import numpy as np
import pytest

from miniflow import evaluate

from miniflow.train import (MODEL_DEFAULTS, ConfigError, DataError, TrainConfig,
                            TrainingDivergedError, check_data, evaluate_model, train)

N_FEATURES, N_CLASSES = 20, 3


def blobs(n, seed=0):
    """Three Gaussian clusters in 20 dimensions, with a constant offset to standardise away."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((N_CLASSES, N_FEATURES)) * 1.5
    labels = rng.integers(0, N_CLASSES, size=n)
    images = centers[labels] + rng.standard_normal((n, N_FEATURES)) + 5.0
    return images.astype(np.float32), labels.astype(np.int64)


TRAIN, VAL = blobs(610), blobs(200, seed=1)
SMALL = dict(hidden=(16,), epochs=3, batch_size=100, lr=0.05)


def run(config, **kwargs):
    return train(config, *TRAIN, *VAL, n_classes=N_CLASSES, **kwargs)


def test_training_learns_the_blobs(backend):
    result = run(TrainConfig(**SMALL, backend=backend.name))
    assert [stats.epoch for stats in result.history] == [1, 2, 3]
    assert result.history[-1].loss < result.history[0].loss
    assert result.history[-1].val_accuracy > 0.95
    assert all(value.dtype == np.float32 and isinstance(value, np.ndarray)
               for value in result.model.params.values())
    assert evaluate_model(result.model, *VAL, backend=backend) == result.history[-1].val_accuracy


def test_the_same_seed_gives_the_same_run():
    first, again = run(TrainConfig(**SMALL)), run(TrainConfig(**SMALL))
    assert [s.loss for s in first.history] == [s.loss for s in again.history]
    for a, b in zip(first.model.params.values(), again.model.params.values()):
        np.testing.assert_array_equal(a, b)
    other = run(TrainConfig(**SMALL, seed=1))
    assert other.history[0].loss != first.history[0].loss


@pytest.mark.parametrize("other", ["array_api_strict", "torch"])
def test_other_backends_agree_with_numpy(other):
    pytest.importorskip(other)
    reference = run(TrainConfig(**SMALL))
    result = run(TrainConfig(**SMALL, backend=other))
    np.testing.assert_allclose([s.loss for s in result.history],
                               [s.loss for s in reference.history], rtol=1e-4)
    for a, b in zip(result.model.params.values(), reference.model.params.values()):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert [s.val_accuracy for s in result.history] == [s.val_accuracy for s in reference.history]


def test_every_example_is_visited_including_the_last_partial_batch():
    steps = []
    run(TrainConfig(**SMALL), on_step=lambda loss: steps.append(float(loss)))
    assert len(steps) == 3 * 7  # 610 examples in batches of 100: 6 full, 1 of 10


def test_on_epoch_sees_each_epochs_stats_and_the_schedule():
    seen = []
    run(TrainConfig(**SMALL, schedule="cosine"), on_epoch=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3] and all(s.epochs == 3 for s in seen)
    assert seen[0].lr == 0.05 and seen[0].lr > seen[1].lr > seen[2].lr > 0
    assert all(s.seconds > 0 for s in seen)


def test_inputs_are_standardised_with_training_statistics():
    result = run(TrainConfig(**SMALL))
    assert result.model.input_mean == pytest.approx(TRAIN[0].mean(), rel=1e-5)
    assert result.model.input_std == pytest.approx(TRAIN[0].std(), rel=1e-5)


def test_without_validation_data_there_is_no_validation_accuracy():
    result = train(TrainConfig(**SMALL), *TRAIN, n_classes=N_CLASSES)
    assert [s.val_accuracy for s in result.history] == [None] * 3
    assert [s.val_loss for s in result.history] == [None] * 3
    # Instead, the accuracy on the training data, as evaluate_model measures it.
    assert result.history[-1].train_accuracy == evaluate_model(result.model, *TRAIN)


def test_the_validation_loss_is_the_models_mean_loss_on_the_validation_data(backend):
    result = run(TrainConfig(**SMALL, backend=backend.name))
    model, (images, labels) = result.model, VAL
    standardised = (images - model.input_mean) / model.input_std
    expected = evaluate(model.loss, {**model.params, model.images: standardised,
                                     model.labels: labels})
    assert result.history[-1].val_loss == pytest.approx(float(expected), rel=1e-4)
    assert all(s.train_accuracy is None for s in result.history)  # validation was measured


def test_zero_epochs_returns_the_initial_model():
    result = run(TrainConfig(**{**SMALL, "epochs": 0}))
    assert result.history == []
    assert not result.model.param("fc1.b").any()


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("nesterov", 0.05), ("adam", 0.01)])
def test_every_optimizer_and_schedule_trains(optimizer, lr):
    for schedule in ("constant", "step"):
        config = TrainConfig(**{**SMALL, "lr": lr, "epochs": 10}, optimizer=optimizer,
                             schedule=schedule)
        assert run(config).history[-1].val_accuracy > 0.9


@pytest.mark.filterwarnings("error")  # the error says it all; no NumPy warnings before it
def test_a_diverging_run_stops_with_advice():
    config = TrainConfig(hidden=(16,), epochs=3, optimizer="sgd", lr=1e20, schedule="constant")
    with pytest.raises(TrainingDivergedError, match=r"loss became (nan|inf) in epoch 1.*"
                                                    r"learning rate 1e\+20 is probably too high"):
        run(config)


# -- checking the data ----------------------------------------------------------------

def test_check_data_returns_float32_and_int64():
    images, labels = check_data(np.zeros((2, 3)), np.array([0, 1], np.int32))
    assert images.dtype == np.float32 and labels.dtype == np.int64


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 2, 2), np.float32), np.zeros(4, int),
     r"train_images must be a 2-D array \(examples, features\), got shape \(4, 2, 2\) "
     r"\(flatten each image first"),
    (np.zeros(4, np.float32), np.zeros(4, int), r"train_images must be a 2-D.*shape \(4,\)"),
    (np.zeros((4, 3), np.uint8), np.zeros(4, int),
     r"train_images must be floating point .*got dtype uint8 \(divide by 255\)"),
    (np.zeros((4, 3), np.float32), np.zeros((4, 1), int),
     r"train_labels must be a 1-D array of class indices, got shape \(4, 1\)"),
    (np.zeros((4, 3), np.float32), np.zeros(4, np.float32),
     r"train_labels must be integers, got dtype float32"),
    (np.zeros((4, 3), np.float32), np.zeros(5, int),
     r"train_images has 4 examples \(shape \(4, 3\)\) but train_labels has 5 \(shape \(5,\)\)"),
    (np.zeros((4, 3), np.float32), np.array([0, 1, 2, 3]),
     r"train_labels must lie in \[0, 3\), got values from 0 to 3"),
    (np.zeros((4, 3), np.float32), np.array([0, -1, 2, 1]),
     r"train_labels must lie in \[0, 3\), got values from -1 to 2"),
    (np.full((4, 3), np.nan, np.float32), np.zeros(4, int),
     r"train_images contains NaN or infinite values"),
])
def test_bad_training_data_is_named_with_its_shape(images, labels, message):
    with pytest.raises(DataError, match=message):
        train(TrainConfig(**SMALL), images, labels, n_classes=3)


def test_validation_data_must_match_the_training_features():
    with pytest.raises(DataError, match=r"val_images has shape \(200, 5\): 5 features per "
                                        r"example, but the model takes 20"):
        train(TrainConfig(**SMALL), *TRAIN, VAL[0][:, :5], VAL[1], n_classes=N_CLASSES)


def test_empty_training_data_is_refused():
    with pytest.raises(DataError, match="nothing to train on"):
        train(TrainConfig(**SMALL), np.zeros((0, 3), np.float32), np.zeros(0, int))


# -- checking the config ----------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"epochs": -1}, r"epochs must be an integer >= 0, got -1"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
    ({"batch_size": 2.5}, r"batch_size must be an integer >= 1, got 2.5"),
    ({"activation": "gelu"}, r"unknown activation 'gelu'; choose one of relu, sigmoid, tanh"),
    ({"optimizer": "adagrad"}, r"unknown optimizer 'adagrad'; choose one of sgd, momentum"),
    ({"backend": "tensorflow"}, r"unknown backend 'tensorflow'; choose one of numpy, cupy"),
    ({"schedule": "linear"}, r"unknown schedule 'linear'"),
    ({"lr": 0}, r"lr must be a positive number, got 0"),
    ({"momentum": 1.0}, r"momentum must lie in \[0, 1\), got 1.0"),
    ({"validation_size": -5}, r"validation_size must be an integer >= 0"),
    ({"hidden": (256, -1)}, r"hidden layer sizes must be positive"),
    ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
    ({"seed": 1.0}, r"seed must be an integer >= 0, got 1.0"),
    ({"model": "cnn", "channels": (16, 0)}, r"channels must be one or more integers >= 1"),
    ({"model": "cnn", "channels": ()}, r"channels must be one or more integers >= 1"),
    ({"model": "cnn", "channels": "16"}, r"channels must be one or more integers >= 1"),
    ({"channels": (16,)}, r"channels apply to the cnn only, not the mlp"),
    ({"shards": 0}, r"shards must be an integer >= 1, got 0"),
])
def test_bad_config_values_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**change)
    assert issubclass(ConfigError, ValueError)


def test_config_defaults_and_normalisation():
    assert TrainConfig(model="cnn").channels == MODEL_DEFAULTS["cnn"]["channels"]
    assert TrainConfig(model="cnn", channels=8).channels == (8,)
    assert TrainConfig(model="cnn", channels=[8, np.int64(16)]).channels == (8, 16)
    assert TrainConfig().channels == ()
    config = TrainConfig(hidden=0)
    assert config.hidden == () and config.lr == 0.1
    assert TrainConfig(optimizer="adam").lr == 0.001
    assert TrainConfig(hidden=[512, 256]).hidden == (512, 256)


def test_evaluate_model_checks_the_data_against_the_model():
    result = run(TrainConfig(**SMALL))
    with pytest.raises(DataError, match=r"test_images has shape \(200, 4\): 4 features per "
                                        r"example, but the model takes 20"):
        evaluate_model(result.model, VAL[0][:, :4], VAL[1])


# -- batch shards -------------------------------------------------------------------------

def test_shards_give_the_whole_batch_gradient(backend):
    # Without dropout a sharded step is the whole batch's, up to float32 rounding:
    # shard losses weighted by their rows (610 rows: uneven last batches included).
    whole = run(TrainConfig(**SMALL, backend=backend.name, shards=1))
    for shards in (2, 3):
        sharded = run(TrainConfig(**SMALL, backend=backend.name, shards=shards))
        for (node, value), got in zip(whole.model.params.items(),
                                      sharded.model.params.values()):
            np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{shards} shards, {node.name}")
        np.testing.assert_allclose([s.loss for s in sharded.history],
                                   [s.loss for s in whole.history], rtol=1e-5)


def test_shards_repeat_exactly_whatever_the_thread_count():
    pytest.importorskip("threadpoolctl")
    from miniflow.models import cnn
    from test_cnn_model import digits

    images, labels = digits(200)
    config = TrainConfig(model="cnn", epochs=2, batch_size=40, lr=0.01, shards=2)
    runs = [train(config, images, labels, model=cnn((4,), 8, image_shape=(1, 8, 8),
                                                   n_classes=2, seed=1),
                  n_classes=2, threads=threads) for threads in (1, 2, 2)]
    for other in runs[1:]:  # dropout on: each shard draws its own masks, reproducibly
        for value, got in zip(runs[0].model.params.values(), other.model.params.values()):
            np.testing.assert_array_equal(got, value)
    assert [s.threads for s in runs[1].history] == [2, 2]


def test_one_row_batches_leave_extra_shards_empty():
    result = run(TrainConfig(hidden=(4,), epochs=1, batch_size=1, shards=3))
    assert np.isfinite(result.history[0].loss)


def test_evaluation_batches_and_threads_do_not_change_the_counts():
    from concurrent.futures import ThreadPoolExecutor

    from miniflow.backends import get_backend
    from miniflow.models import cnn, mlp
    from miniflow.evaluation import (EVAL_BATCH_SIZE, EVAL_BATCH_SIZE_IMAGES, eval_batch_size,
                                     measure)

    # Rows of features go in large batches; images, whose columns are large, in small ones.
    assert EVAL_BATCH_SIZE_IMAGES < EVAL_BATCH_SIZE
    assert eval_batch_size(mlp((8,), n_inputs=20)) == EVAL_BATCH_SIZE
    assert eval_batch_size(cnn((4,), 8, image_shape=(1, 8, 8))) == EVAL_BATCH_SIZE_IMAGES
    rng = np.random.default_rng(3)
    model = cnn((4,), 8, image_shape=(1, 8, 8), n_classes=3, seed=2)
    x = rng.standard_normal((53, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 53)
    backend = get_backend("numpy")
    whole = measure(model, model.params, x, y, backend, ("accuracy",))
    with ThreadPoolExecutor(2) as pool:
        for batch_size, map_ in [(7, map), (7, pool.map), (None, pool.map)]:
            report = measure(model, model.params, x, y, backend, ("accuracy",),
                             batch_size=batch_size, map=map_)
            assert report["accuracy"] == whole["accuracy"]
            assert report["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_compiled_shards_each_get_a_program_of_their_own():
    # A compiled NumPy step returns buffers it fills again on its next call: shards
    # sharing one program would overwrite each other's gradients.
    plain = run(TrainConfig(**SMALL, shards=2))
    for threads in (1, 2):
        compiled = run(TrainConfig(**SMALL, shards=2, compile=True), threads=threads)
        for want, got in zip(plain.model.params.values(), compiled.model.params.values()):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
