"""The ready-made CNN, predictions from raw images, saving it, and training a hand-built graph."""
import json

import numpy as np
import pytest

from miniflow import (Conv2D, CrossEntropyWithSoftmax, Flatten, Input, Linear, MaxPool2D, ReLU,
                      evaluate)
from miniflow.models import Model, cnn
from miniflow.serialize import ModelFileError, load_model, save_model
from miniflow.train import DataError, TrainConfig, evaluate_model, train


def digits(n, seed=0, side=8):
    """Tiny images of two classes: a bright left half or a bright right half, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.random((n, 1, side, side)) * 0.3
    half = side // 2
    images[labels == 0, :, :, :half] += 0.7
    images[labels == 1, :, :, half:] += 0.7
    return images.astype(np.float32), labels.astype(np.int64)


def test_cnn_builds_the_documented_graph():
    model = cnn()
    assert [node.name for node in model.params] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
        "fc2.weight", "fc2.bias"]
    assert model.param("conv2.w").shape == (64, 32, 3, 3)
    assert model.param("fc1.w").shape == (64 * 7 * 7, 128)
    assert model.input_shape == (1, 28, 28) and model.n_inputs == 784
    assert json.loads(json.dumps(model.architecture)) == model.architecture
    logits = evaluate(model.logits, {**model.params,
                                     model.images: np.zeros((3, 1, 28, 28), np.float32)})
    assert logits.shape == (3, 10) and logits.dtype == np.float32


@pytest.mark.parametrize("change,message", [
    ({"channels": ()}, "at least one convolution"), ({"channels": (8, 0)}, "channels"),
    ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"), ({"image_shape": (28, 28)}, "image_shape"),
    ({"channels": (4, 4, 4, 4, 4)}, "halve 28x28 images to nothing"),
])
def test_bad_cnn_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        cnn(**change)


def _trained_small_cnn():
    images, labels = digits(300)
    model = cnn((4,), 8, image_shape=(1, 8, 8), n_classes=2, seed=1)
    config = TrainConfig(model="cnn", epochs=3, batch_size=32, lr=0.01)
    val = digits(100, seed=1)
    return train(config, images, labels, *val, model=model, n_classes=2), val


def test_a_small_cnn_learns_and_predicts_raw_images():
    result, (images, labels) = _trained_small_cnn()
    model = result.model
    assert result.history[-1].val_accuracy > 0.95
    probabilities = model.predict_proba(images)
    assert probabilities.shape == (100, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(model.predict(images), probabilities.argmax(axis=1))
    # predict applies the model's standardisation: the same as evaluate_model's.
    assert (model.predict(images) == labels).mean() == evaluate_model(model, images, labels)
    # Rows of flat features are accepted too.
    np.testing.assert_array_equal(model.predict(images.reshape(100, -1)), model.predict(images))
    with pytest.raises(DataError, match=r"the model takes examples of shape \(1, 8, 8\)"):
        model.predict(np.zeros((2, 1, 9, 9), np.float32))


def test_a_saved_cnn_predicts_the_same_after_loading(tmp_path):
    result, (images, _) = _trained_small_cnn()
    path = save_model(result.model, tmp_path / "cnn.npz")
    loaded = load_model(path, architecture=result.model.architecture)
    assert loaded.input_shape == (1, 8, 8)
    assert (loaded.input_mean, loaded.input_std) == (result.model.input_mean,
                                                     result.model.input_std)
    np.testing.assert_array_equal(loaded.predict_proba(images),
                                  result.model.predict_proba(images))


@pytest.mark.parametrize("architecture", [
    {"kind": "cnn", "channels": ["8"], "hidden": 8, "dropout": 0.0, "image_shape": [1, 8, 8],
     "n_classes": 2},
    {"kind": "cnn", "channels": [8], "hidden": 8, "dropout": 0.0, "image_shape": [1, 8, 8],
     "n_classes": 2, "init": "os.system"},
    {"kind": "cnn", "channels": [8], "hidden": True, "dropout": 0.0, "image_shape": [1, 8, 8],
     "n_classes": 2},
    {"kind": "cnn", "channels": [8], "hidden": 8, "dropout": 2.0, "image_shape": [1, 8, 8],
     "n_classes": 2},
])
def test_cnn_records_that_cannot_be_rebuilt_safely_are_refused(tmp_path, architecture):
    metadata = {"format": "miniflow-model", "version": 1, "architecture": architecture,
                "input_mean": 0.0, "input_std": 1.0}
    path = tmp_path / "bad.npz"
    np.savez(path, __miniflow__=np.array(json.dumps(metadata)))
    with pytest.raises(ModelFileError, match="architecture record is unusable"):
        load_model(path)


def test_train_accepts_a_hand_built_graph():
    """Any graph trains with the same call: here a conv layer straight into a linear one."""
    images_node, labels_node = Input("images"), Input("labels")
    w, b = Input("w"), Input("b")
    v, c = Input("v"), Input("c")
    rng = np.random.default_rng(0)
    x = Flatten(MaxPool2D(ReLU(Conv2D(images_node, w, b, padding=1)), 2))
    logits = Linear(x, v, c)
    model = Model(images=images_node, labels=labels_node, logits=logits,
                  loss=CrossEntropyWithSoftmax(logits, labels_node),
                  params={w: rng.standard_normal((3, 1, 3, 3)).astype(np.float32) * 0.3,
                          b: np.zeros(3, np.float32),
                          v: rng.standard_normal((48, 2)).astype(np.float32) * 0.1,
                          c: np.zeros(2, np.float32)},
                  architecture={"n_classes": 2}, input_shape=(1, 8, 8))
    initial = {node: value.copy() for node, value in model.params.items()}
    images, labels = digits(200)
    config = TrainConfig(epochs=2, batch_size=20, optimizer="rmsprop", lr=0.01,
                         schedule="constant", weight_decay=1e-4)
    result = train(config, images, labels, *digits(100, seed=2), model=model, n_classes=2)
    assert result.history[-1].val_accuracy > 0.9
    for node, value in model.params.items():  # the caller's arrays are left as they were
        np.testing.assert_array_equal(value, initial[node])
    assert evaluate_model(result.model, *digits(100, seed=2)) == result.history[-1].val_accuracy


@pytest.mark.parametrize("shards", [1, 2])
def test_compiled_training_with_dropout_matches_uncompiled(shards):
    """`--compile` trains what it claims to: the planned NumPy step draws Dropout's masks
    from the same generators as the uncompiled step, so the runs agree step for step."""
    images, labels = digits(200)
    val = digits(60, seed=1)
    results = []
    for compiled in (False, True):
        model = cnn((4,), 8, dropout=0.5, image_shape=(1, 8, 8), n_classes=2, seed=1)
        config = TrainConfig(model="cnn", epochs=2, batch_size=32, lr=0.01, shards=shards,
                             compile=compiled)
        results.append(train(config, images, labels, *val, model=model, n_classes=2))
    plain, compiled = results
    np.testing.assert_allclose([s.loss for s in compiled.history],
                               [s.loss for s in plain.history], rtol=1e-5)
    for a, b in zip(compiled.model.params.values(), plain.model.params.values()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_traced_compiled_training_refuses_dropout_by_name():
    from miniflow.compile import compilable, untraceable_in_training

    if compilable("torch"):
        pytest.skip(compilable("torch"))
    model = cnn((4,), 8, image_shape=(1, 8, 8), n_classes=2, seed=1)
    assert untraceable_in_training(model.loss, "numpy") is None
    assert "Dropout" in untraceable_in_training(model.loss, "torch")
    images, labels = digits(64)
    config = TrainConfig(model="cnn", epochs=1, batch_size=32, backend="torch", compile=True)
    with pytest.raises(ValueError, match="Dropout"):
        train(config, images, labels, model=model, n_classes=2)
