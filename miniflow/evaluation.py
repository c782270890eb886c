"""Measuring and using a model: its loss and metrics on a split, its predictions.

The loss on a split is the model's own loss graph, run forward in inference
mode, with the model's outputs (``model.logits``) computed in the same pass as
an extra: whatever the loss holds (label smoothing, an L2 term on the weights)
is in the validation loss exactly as in the training loss, and the outputs cost
no second pass. Metrics are decided from those outputs and the targets, never
from methods of the loss node.

A metric is a name from :data:`METRICS` or any callable
``metric(outputs, targets) -> float`` on NumPy arrays of the whole split.
The named ones run on the device, batch by batch, and bring one scalar back.
"""
from __future__ import annotations

import math

import numpy as np

from .backends import get_backend
from .checks import as_rows, check_data, check_inputs, standardise
from .errors import ConfigError, DataError
from .executor import evaluate, run
from .graph import topological_order
from .threads import ThreadPolicy

__all__ = ["METRICS", "measure", "evaluate_model", "predict", "predict_proba",
           "eval_batch_size", "loss_reduction", "metric_names", "EVAL_BATCH_SIZE",
           "EVAL_BATCH_SIZE_IMAGES"]

#: Rows per forward pass when measuring: large batches amortise the per-call
#: overhead, and 10,000 rows of 784 float32 take only 31 MB.
EVAL_BATCH_SIZE = 10_000
#: The same for models of images: a convolution's columns hold kh*kw values per
#: channel and pixel, 2.3 GB for 10,000 MNIST images in the CNN's second
#: convolution, and evaluating them took 2.6x as long as in batches of 1,000;
#: batches of 500 took 15-20% less time again, and batches of 64 (a training
#: batch: every layer stays in cache) 28% less than 500, in 1/8 of the memory.
EVAL_BATCH_SIZE_IMAGES = 64


def eval_batch_size(model) -> int:
    """Rows per forward pass when measuring ``model``: fewer for models of images."""
    return EVAL_BATCH_SIZE if len(model.input_shape) <= 1 else EVAL_BATCH_SIZE_IMAGES


# -- metrics: (xp, outputs, targets) -> (sum over the batch, count) --------------------

def _predicted_classes(xp, outputs):
    if outputs.ndim == 1 or outputs.shape[-1] == 1:  # one logit: the positive class above 0
        return xp.astype(xp.reshape(outputs, (outputs.shape[0],)) > 0, xp.int64)
    return xp.argmax(outputs, axis=-1)


def _accuracy(xp, outputs, targets):
    return xp.count_nonzero(_predicted_classes(xp, outputs) == targets), targets.shape[0]


def _squared_error(xp, outputs, targets):
    diff = xp.reshape(outputs, targets.shape) - targets
    return xp.sum(diff * diff), math.prod(targets.shape)


def _absolute_error(xp, outputs, targets):
    diff = xp.reshape(outputs, targets.shape) - targets
    return xp.sum(xp.abs(diff)), math.prod(targets.shape)


#: Named metrics: name -> (batch function, how the mean becomes the metric).
METRICS = {
    "accuracy": (_accuracy, lambda mean: mean),
    "mse": (_squared_error, lambda mean: mean),
    "rmse": (_squared_error, math.sqrt),
    "mae": (_absolute_error, lambda mean: mean),
}


def metric_names(metrics) -> list[str]:
    """The names the results of ``metrics`` are reported under."""
    return [m if isinstance(m, str) else getattr(m, "__name__", "metric") for m in metrics]


def check_metrics(metrics) -> tuple:
    """``metrics`` as a tuple, each a known name or a callable, else a ConfigError."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    metrics = tuple(metrics)
    for metric in metrics:
        if not callable(metric) and metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; choose one of "
                              f"{', '.join(METRICS)}, or pass a callable "
                              f"metric(outputs, targets) -> float")
    return metrics


def default_metrics(labels) -> tuple:
    """Accuracy for class labels, RMSE for float targets."""
    return ("accuracy",) if np.asarray(labels).dtype.kind in "iu" else ("rmse",)


def loss_reduction(loss) -> str:
    """How ``loss`` combines the rows of a batch: "mean" or "sum".

    Read from the loss nodes in the graph (their ``reduction``): "sum" only
    where the output itself is a summing loss, so that parts of a batch add up
    to the batch's loss. A graph mixing a summed loss with other terms cannot
    be split into parts of rows at all: a ConfigError says so (see the callers).
    """
    reduction = getattr(loss, "reduction", None)
    if reduction == "none":
        raise ConfigError(f"{loss.label} has reduction='none': training needs a scalar loss "
                          f"(use 'mean' or 'sum')")
    if reduction in ("mean", "sum"):
        return reduction
    inner = {getattr(node, "reduction", None) for node in topological_order(loss)} - {None}
    if inner - {"mean"}:
        return "mixed"
    return "mean"


def measure(model, params, x, y, backend, metrics=(), *, batch_size=None, map=map,
            with_loss=True) -> dict:
    """The loss and ``metrics`` of ``model`` on device arrays ``x``, ``y``.

    ``params`` feeds the parameters and state. Returns ``{"loss": float or None,
    name: float, ...}``: the loss as the training loop reports it (the mean over
    the rows for a mean loss, the sum over the split divided by its rows for a
    summed one). ``map`` may run the batches in parallel (a thread pool's).
    """
    xp = backend.xp
    n = x.shape[0]
    batch_size = batch_size or eval_batch_size(model)
    reduction = loss_reduction(model.loss) if with_loss else "mean"
    named = [m for m in metrics if isinstance(m, str)]
    custom = [m for m in metrics if not isinstance(m, str)]

    def score(start):
        # Slices must stop inside the array: the standard leaves longer ones unspecified.
        stop = min(start + batch_size, n)
        feed = {**params, model.images: x[start:stop, ...]}
        if with_loss:
            feed[model.labels] = y[start:stop]
            result = run(model.loss, feed, (), backend=backend, extras=[model.logits])
            outputs = result.extras[0]
            loss = result.value if reduction == "sum" else result.value * (stop - start)
        else:
            outputs, loss = evaluate(model.logits, feed, backend=backend), 0
        sums = [METRICS[name][0](xp, outputs, y[start:stop]) for name in named]
        kept = np.asarray(backend.to_numpy(outputs)) if custom else None
        return loss, sums, kept

    total, sums, kept = 0, [(0, 0)] * len(named), []
    for loss, batch_sums, outputs in map(score, range(0, n, batch_size)):
        total = total + loss
        sums = [(a + s, c + k) for (a, c), (s, k) in zip(sums, batch_sums)]
        if outputs is not None:
            kept.append(outputs)
    report = {"loss": float(total) / n if with_loss else None}
    for name, (value, count) in zip(named, sums):
        report[name] = METRICS[name][1](float(value) / max(count, 1))
    if custom:
        outputs, targets = np.concatenate(kept), np.asarray(backend.to_numpy(y))
        for name, metric in zip(metric_names(custom), custom):
            report[name] = float(metric(outputs, targets))
    return report


def _device_params(model, backend):
    return {node: backend.asarray(value)
            for node, value in (*model.params.items(), *model.state.items())}


def evaluate_model(model, images, labels, *, backend="numpy", batch_size: int | None = None,
                   threads="auto", metrics=None):
    """The fraction of ``images`` that ``model`` classifies as ``labels``; with
    ``metrics`` (names or callables), a dict ``{"loss": ..., name: value}``.

    Applies the model's own standardisation, so a trained or loaded model
    sees its inputs exactly as during training. ``threads`` is as for
    :func:`miniflow.train.train`; ``batch_size`` None takes :func:`eval_batch_size`.
    """
    images, labels = check_data(as_rows(images, model.input_shape, "test"), labels,
                                what="test", n_inputs=model.n_inputs,
                                n_classes=model.architecture.get("n_classes"))
    if len(labels) == 0:
        raise DataError("test_images is empty: there is nothing to evaluate")
    backend = get_backend(backend)
    with ThreadPolicy(threads) as policy:
        x, y = standardise(backend, images, labels, model.input_mean, model.input_std,
                           model.input_shape)
        params = _device_params(model, backend)
        policy.ready()
        if metrics is None:
            return measure(model, params, x, y, backend, ("accuracy",), batch_size=batch_size,
                           with_loss=False)["accuracy"]
        return measure(model, params, x, y, backend, check_metrics(metrics),
                       batch_size=batch_size)


def predict(model, images, *, backend="numpy", batch_size: int | None = None) -> np.ndarray:
    """The model's outputs (``model.logits``) for raw ``images``, NumPy float32.

    ``images``: (N, features) or (N, *model.input_shape), floating point as
    in training; the model's standardisation is applied. For a regression
    these are the predictions; for a classifier, the scores of each class.
    """
    images = check_inputs(as_rows(images, model.input_shape, "predict"), what="predict",
                          n_inputs=model.n_inputs)
    backend = get_backend(backend)
    x, _ = standardise(backend, images, np.zeros(0, np.int64), model.input_mean,
                       model.input_std, model.input_shape)
    params = _device_params(model, backend)
    batch_size = batch_size or eval_batch_size(model)
    chunks = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        outputs = evaluate(model.logits, {**params, model.images: x[start:stop, ...]},
                           backend=backend)
        chunks.append(np.asarray(backend.to_numpy(outputs)))
    if not chunks:
        return np.zeros((0, *_output_shape(model)), np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _output_shape(model):
    n_classes = model.architecture.get("n_classes")
    return (n_classes,) if n_classes else ()


def predict_proba(model, images, *, backend="numpy", batch_size: int | None = None):
    """Class probabilities (N, n_classes), NumPy float32, for raw ``images``
    (the softmax of :func:`predict`'s scores)."""
    scores = predict(model, images, backend=backend, batch_size=batch_size)
    if scores.ndim != 2:
        raise DataError(f"predict_proba needs class scores (N, classes); this model "
                        f"outputs shape {scores.shape}: use predict")
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)
