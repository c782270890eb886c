"""Double backprop on MNIST: a penalty on the input gradient, trained (issue 19).

    loss = CE + lam * mean over the batch of ||d CE_i / d x_i||^2

The penalty is built from ``miniflow.grad`` (a gradient that is a node), so
its gradient with respect to the weights is a second derivative. The
784-256-10 ReLU MLP (``miniflow.models.mlp``, He init, seed 0) is trained
with Nesterov momentum 0.9 and cosine decay, batch 128, on pixels in [0, 1]
(no standardisation, so that perturbation sizes are in pixel units), once per
``lam``, from the same weights and the same batch order. Reported per ``lam``:
test accuracy, the mean input-gradient norm on the test set, test accuracy
under the fast gradient sign attack (x + eps * sign(d CE / d x), clipped to
[0, 1]) and seconds per epoch (the penalised step against the plain one).

  python bench/double_backprop.py                       # lam 0, 0.1, 1, 3, 10; 5 epochs; ~1 min
  python bench/double_backprop.py --lam 0 1 --epochs 10
  python bench/double_backprop.py --quick               # seconds; numbers mean little
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's miniflow

import _common as c  # noqa: E402
import miniflow as mf  # noqa: E402
from miniflow.datasets import load_mnist  # noqa: E402
from miniflow.models import mlp  # noqa: E402
from miniflow.optim import CosineDecay, Momentum  # noqa: E402


def penalised(model, lam, batch):
    """The model's loss plus lam times the mean squared norm of each example's input gradient.

    The loss is the batch's mean, so d loss / d x_i is (1 / batch) d CE_i / d x_i:
    ``batch * Sum(dx * dx)`` is the mean over examples of ||d CE_i / d x_i||^2.
    """
    if not lam:
        return model.loss
    (dx,) = mf.grad(model.loss, [model.images])
    return model.loss + (lam * batch) * mf.Sum(dx * dx)


def train_one(data, lam, *, epochs, lr, batch, seed=0, limit=None):
    model = mlp(256, "relu", seed=seed)
    loss = penalised(model, lam, batch)
    x, y = data.train_images[:limit], data.train_labels[:limit]
    steps_per_epoch = len(y) // batch  # whole batches only: the penalty's scale is fixed
    opt = Momentum(model.params, CosineDecay(lr, epochs * steps_per_epoch), 0.9, nesterov=True)
    rng = np.random.default_rng(seed)
    seconds = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        start = time.perf_counter()
        for k in range(steps_per_epoch):
            rows = order[k * batch:(k + 1) * batch]
            feed = {model.images: x[rows], model.labels: y[rows], **opt.params}
            _, grads = mf.value_and_grad(loss, feed, opt.nodes)
            opt.step(grads)
        seconds.append(time.perf_counter() - start)
    return model, opt.params, seconds


def assess(model, params, images, labels, eps_list, chunk=1000):
    """Test accuracy, mean ||d CE_i / d x_i|| and accuracy under FGSM for each eps."""
    (dx,) = mf.grad(model.loss, [model.images])
    correct, norms = 0, []
    attacked = {eps: 0 for eps in eps_list}
    for start in range(0, len(labels), chunk):
        xb, yb = images[start:start + chunk], labels[start:start + chunk]
        feed = {model.images: xb, model.labels: yb, **params}
        result = mf.run(model.logits, feed, extras=[dx])
        logits, g = np.asarray(result.value), np.asarray(result.extras[0]) * len(yb)
        correct += int((logits.argmax(1) == yb).sum())
        norms.append(np.linalg.norm(g, axis=1))
        for eps in eps_list:
            adv = np.clip(xb + eps * np.sign(g), 0, 1).astype(np.float32)
            out = mf.evaluate(model.logits, {model.images: adv, **params})
            attacked[eps] += int((np.asarray(out).argmax(1) == yb).sum())
    n = len(labels)
    return correct / n, float(np.concatenate(norms).mean()), {e: a / n for e, a in attacked.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lam", type=float, nargs="+", default=[0.0, 0.1, 1.0, 3.0, 10.0],
                        help="penalty weights, one training run each (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1],
                        help="FGSM perturbation sizes, in pixel units of [0, 1]")
    parser.add_argument("--data-dir", default=os.environ.get("MINIFLOW_DATA"))
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch on 2,560 images, 1,000 test images: a smoke run")
    parser.add_argument("--json", type=Path, default=c.RESULTS_DIR / "double_backprop.json",
                        metavar="PATH")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (1: steady on a shared machine; 0: the library's)")
    args = parser.parse_args(argv)
    malloc = c.set_malloc_policy("heap")
    if args.blas_threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.blas_threads)
    data = load_mnist(args.data_dir, validation_size=0, download=False)
    limit, test_n = (2560, 1000) if args.quick else (None, None)
    epochs = 1 if args.quick else args.epochs
    machine = c.machine_info(malloc, args.blas_threads)
    print(c.describe(machine))
    print(f"784-256-10 ReLU MLP, Nesterov 0.9, lr {args.lr} cosine, batch {args.batch_size}, "
          f"{epochs} epochs on {len(data.train_labels[:limit])} images")
    rows = []
    for lam in args.lam:
        model, params, seconds = train_one(data, lam, epochs=epochs, lr=args.lr,
                                           batch=args.batch_size, limit=limit)
        acc, norm, fgsm = assess(model, params, data.test_images[:test_n],
                                 data.test_labels[:test_n], args.eps)
        rows.append({"lam": lam, "test_accuracy": acc, "input_grad_norm": norm,
                     "fgsm_accuracy": {str(e): a for e, a in fgsm.items()},
                     "seconds_per_epoch": float(np.median(seconds))})
        print(f"lam {lam:<6g} test {acc:7.2%}  mean |dCE/dx| {norm:7.3f}  " + "  ".join(
            f"FGSM eps {e:g}: {a:6.2%}" for e, a in fgsm.items())
            + f"  {np.median(seconds):6.2f} s/epoch", flush=True)
    c.write_json(args.json, {"machine": machine, "epochs": epochs, "lr": args.lr,
                             "batch_size": args.batch_size, "results": rows})
    return rows


if __name__ == "__main__":
    main()
