"""Convolution without gradients (evaluation) makes its columns a few images at a
time: the same outputs as the one-product path that training takes."""
import numpy as np
import pytest

import miniflow
from miniflow import Conv2D, Input, Sum
from miniflow.nodes import conv


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("options", [{"padding": "same"}, {"stride": 2, "padding": 1},
                                     {"dilation": 2}])
def test_chunked_evaluation_matches_the_training_path(monkeypatch, options, dtype, rtol):
    rng = np.random.default_rng(0)
    x, w, b = Input("x"), Input("w"), Input("b")
    y = Conv2D(x, w, b, **options)
    feed = {x: rng.standard_normal((7, 3, 9, 8)).astype(dtype),
            w: rng.standard_normal((4, 3, 3, 3)).astype(dtype),
            b: rng.standard_normal(4).astype(dtype)}
    # Columns of 7 images (27 wide) fit in EVAL_COLUMN_BYTES: one product, as in training.
    whole = miniflow.evaluate(y, feed)
    monkeypatch.setattr(conv, "EVAL_COLUMN_BYTES", 1)  # one image at a time
    chunked = miniflow.evaluate(y, feed)
    assert chunked.shape == whole.shape and chunked.dtype == whole.dtype
    np.testing.assert_allclose(chunked, whole, rtol=rtol, atol=rtol)
    # And the value a training run computes, where w needs its gradient.
    value, _ = miniflow.value_and_grad(Sum(y), feed, [w])
    np.testing.assert_allclose(np.sum(chunked), value, rtol=rtol * 10)


def test_chunks_bound_the_columns(monkeypatch):
    """With room for 3 images' columns, 7 images are convolved in 3 products."""
    rng = np.random.default_rng(1)
    x, w = Input("x"), Input("w")
    y = Conv2D(x, w, padding="same")
    feed = {x: rng.standard_normal((7, 2, 5, 5)), w: rng.standard_normal((3, 2, 3, 3))}
    per_image = 5 * 5 * 18 * 8
    monkeypatch.setattr(conv, "EVAL_COLUMN_BYTES", 3 * per_image)
    seen = []
    real = conv._windows

    def counting(ctx, padded, *args):
        seen.append(padded.shape[0])
        return real(ctx, padded, *args)

    monkeypatch.setattr(conv, "_windows", counting)
    miniflow.evaluate(y, feed)
    assert seen == [3, 3, 1]


def test_bias_of_another_dtype_promotes_as_before():
    """The bias is added in place only where that keeps the result's dtype."""
    rng = np.random.default_rng(2)
    x, w, b = Input("x"), Input("w"), Input("b")
    y = Conv2D(x, w, b, padding=1)
    feed = {x: rng.standard_normal((2, 2, 4, 4)).astype(np.float32),
            w: rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
            b: rng.standard_normal(3)}  # float64
    out = miniflow.evaluate(y, feed)
    assert out.dtype == np.float64
    want = miniflow.evaluate(Conv2D(x, w, padding=1), feed).astype(np.float64) \
        + feed[b][None, :, None, None]
    np.testing.assert_allclose(out, want, rtol=1e-6)
