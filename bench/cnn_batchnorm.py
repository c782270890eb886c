"""A CNN with BatchNorm written from miniflow.nn layers, trained on MNIST with the one loop:
prints its test accuracy and the training time.

    MINIFLOW_DATA=/path/to/mnist python bench/cnn_batchnorm.py [--epochs 2] [--limit N]

``--limit`` trains on the first N training images only (a quicker, rougher number).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miniflow import nn  # noqa: E402
from miniflow.datasets import load_mnist  # noqa: E402
from miniflow.models import from_network  # noqa: E402
from miniflow.train import TrainConfig, evaluate_model, train  # noqa: E402


def network():
    return nn.Sequential({
        "conv1": nn.Conv2D(1, 16, 3, padding="same"), "bn1": nn.BatchNorm2d(16),
        "relu1": nn.ReLU(), "pool1": nn.MaxPool2D(2),
        "conv2": nn.Conv2D(16, 32, 3, padding="same"), "bn2": nn.BatchNorm2d(32),
        "relu2": nn.ReLU(), "pool2": nn.MaxPool2D(2),
        "flatten": nn.Flatten(), "fc1": nn.Linear(32 * 7 * 7, 10)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    mnist = load_mnist()
    images, labels = mnist.train_images, mnist.train_labels
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    model = from_network(network(), (1, 28, 28), seed=0, kind="cnn-bn")
    config = TrainConfig(model="cnn", optimizer="adam", lr=0.003, schedule="onecycle",
                         epochs=args.epochs, batch_size=64, shards=2)
    load = os.getloadavg()
    started = time.perf_counter()
    result = train(config, images, labels, mnist.val_images, mnist.val_labels, model=model,
                   verbose=True)
    seconds = time.perf_counter() - started
    accuracy = evaluate_model(result.model, mnist.test_images, mnist.test_labels)
    print(f"test accuracy {accuracy:.2%}, trained on {len(labels)} images for "
          f"{args.epochs} epochs in {seconds:.0f} s (load average before {load[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
