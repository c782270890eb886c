"""The ``miniflow`` command line: train and evaluate MNIST models, draw their graph.

    miniflow train [--model cnn] [--backend numpy] [--epochs 10] [--save model.npz] ...
    miniflow evaluate model.npz
    miniflow graph [--model cnn] --out mlp.svg

Every user error ends the program with one ``miniflow: error: ...`` message on
stderr and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time
from contextlib import contextmanager
from functools import partial

from . import __version__
from .backends import backend_names, get_backend
from .datasets import MnistFormatError, MnistNotFoundError, load_mnist
from .errors import MiniflowError
from .models import ACTIVATIONS, cnn, describe, mlp
from .optim import OPTIMIZERS, SCHEDULES
from .serialize import atomic_write, check_writable, load_model, save_model
from .train import DEFAULT_LR, MODEL_DEFAULTS, MODELS, TrainConfig, evaluate_model, train

PROG = "miniflow"
# The exit status of a program stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2
PLOT_INSTALL_HINT = "pip install 'miniflow[plot]'"


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block before its message; we want the
    # one-line "miniflow: error: ..." every other error gets (--help still has usage).
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- option types: each names the rule a bad value broke --------------------------

def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _number(text) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text):
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _momentum(text):
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _hidden(text):
    """'512,256' -> (512, 256); '0' -> () (no hidden layer)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected layer sizes such as 256 or 512,256 (0 for none), got {text!r}") from None
    if sizes == (0,):
        return ()
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(
            f"layer sizes must be positive (or a single 0 for none), got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The ``miniflow`` argument parser, with its ``train``, ``evaluate`` and ``graph`` commands."""
    parser = _Parser(prog=PROG, description="Train, evaluate and draw MNIST classifiers "
                     "with miniflow, on any array backend.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    defaults = TrainConfig()

    run = commands.add_parser("train", help="train an MLP or a CNN on MNIST and report its "
                              "test accuracy",
                              description="Train an MLP or a CNN on MNIST; report validation "
                              "accuracy per epoch and test accuracy at the end. Settings not "
                              "given take the model's defaults.")
    _add_architecture_options(run)
    run.add_argument("--backend", choices=backend_names(), default=defaults.backend,
                     help="array library to compute with (default: %(default)s)")
    run.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                     help=f"(default: {_per_model('optimizer')})")
    run.add_argument("--lr", type=_positive_float, default=None,
                     help="initial (for onecycle: peak) learning rate (default: "
                     f"{MODEL_DEFAULTS['cnn']['lr']:g} for the cnn's adam, else "
                     + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + ")")
    run.add_argument("--schedule", choices=SCHEDULES, default=None,
                     help=f"learning-rate schedule (default: {_per_model('schedule')})")
    run.add_argument("--weight-decay", type=_non_negative_float, default=defaults.weight_decay,
                     help="L2 penalty added to the gradients (default: %(default)s)")
    run.add_argument("--momentum", type=_momentum, default=defaults.momentum,
                     help="momentum, or Adam's first beta (default: %(default)s)")
    run.add_argument("--epochs", type=_int_at_least(0), default=None,
                     help=f"(default: {_per_model('epochs')})")
    run.add_argument("--batch-size", type=_int_at_least(1), default=defaults.batch_size,
                     help="(default: %(default)s)")
    run.add_argument("--seed", type=int, default=defaults.seed,
                     help="seeds the initial weights and the shuffling (default: %(default)s)")
    _add_data_option(run)
    run.add_argument("--validation-size", type=_int_at_least(0),
                     default=defaults.validation_size,
                     help="training images held out for validation (default: %(default)s)")
    run.add_argument("--save", metavar="PATH",
                     help="write the trained model here (.npz), after training")
    run.add_argument("--plot", metavar="PATH",
                     help=f"write a PNG of loss and validation accuracy per epoch "
                     f"(needs matplotlib: {PLOT_INSTALL_HINT})")
    run.add_argument("--quiet", action="store_true",
                     help="print only the final summary")
    run.set_defaults(handler=_train_command)

    score = commands.add_parser("evaluate", help="report a saved model's test accuracy",
                                description="Reload a model saved by 'miniflow train --save' "
                                "and report its accuracy on the MNIST test set.")
    score.add_argument("path", metavar="PATH", help="the saved model (.npz)")
    score.add_argument("--model", choices=MODELS, default=None,
                       help="refuse a file holding another kind of model (default: any)")
    _add_data_option(score)
    score.add_argument("--backend", choices=backend_names(), default="numpy",
                       help="(default: %(default)s)")
    score.set_defaults(handler=_evaluate_command)

    graph = commands.add_parser("graph", help="draw the MNIST model's graph",
                                description="Draw the graph of the model 'train' would build.")
    _add_architecture_options(graph)
    graph.add_argument("--out", metavar="PATH", default=None,
                       help="the drawing; .svg, .png, .pdf or .dot (default: MODEL.svg, "
                       "e.g. mlp.svg)")
    graph.set_defaults(handler=_graph_command)
    return parser


def _per_model(setting) -> str:
    return ", ".join(f"{MODEL_DEFAULTS[m][setting]} for the {m}" for m in MODELS)


def _non_negative_float(text):
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _add_architecture_options(parser):
    parser.add_argument("--model", choices=MODELS, default="mlp",
                        help="mlp: fully connected layers; cnn: two 3x3 convolutions with "
                        "max pooling, then a dense layer (default: %(default)s)")
    parser.add_argument("--hidden", type=_hidden, default=None,
                        help="hidden layer sizes, e.g. 256 or 512,256; 0 for softmax "
                        "regression; one size for the cnn's dense layer (default: 256 for "
                        "the mlp, 128 for the cnn)")
    parser.add_argument("--activation", choices=list(ACTIVATIONS),
                        default=TrainConfig.activation,
                        help="(default: %(default)s)")


def _add_data_option(parser):
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with the MNIST files (default: $MINIFLOW_DATA, "
                        "else ~/.cache/miniflow/mnist)")


# -- the commands ----------------------------------------------------------------

def _train_command(args) -> None:
    started = time.perf_counter()
    config = TrainConfig(model=args.model, hidden=args.hidden, activation=args.activation,
                         optimizer=args.optimizer, lr=args.lr, schedule=args.schedule,
                         momentum=args.momentum, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed, backend=args.backend,
                         validation_size=args.validation_size,
                         weight_decay=args.weight_decay)
    # Everything that can fail fast does, before any time goes into training.
    if args.save:
        check_writable(args.save, "model")
    if args.plot:
        _require_matplotlib()
        check_writable(args.plot, "plot")
    backend = get_backend(config.backend)
    try:
        mnist = load_mnist(args.data_dir, validation_size=config.validation_size,
                           progress=False if args.quiet else None)
    except MnistFormatError:
        raise
    except ValueError as exc:  # the one other: a validation size larger than the data
        raise UsageError(f"argument --validation-size: {exc} (see '{PROG} train --help')"
                         ) from None

    steps = config.epochs * math.ceil(len(mnist.train_labels) / config.batch_size)
    with _progress_bar(steps, show=not args.quiet and sys.stderr.isatty()) as bar:
        result = train(config, mnist.train_images, mnist.train_labels,
                       mnist.val_images, mnist.val_labels,
                       on_epoch=None if args.quiet else partial(_print_epoch, bar=bar),
                       on_step=None if bar is None else bar.update)
    test_accuracy = evaluate_model(result.model, mnist.test_images, mnist.test_labels,
                                   backend=backend)
    if args.save:
        save_model(result.model, args.save)
    if args.plot:
        _plot_history(result.history, args.plot)

    print(f"test accuracy: {test_accuracy:.2%}")
    print(f"wall time: {time.perf_counter() - started:.2f} s "
          f"(training {result.seconds:.2f} s, {config.epochs} epochs on {backend.name})")
    if args.save:
        print(f"saved the model to {args.save}")
    if args.plot:
        print(f"saved the plot to {args.plot}")


def _evaluate_command(args) -> None:
    model = load_model(args.path)
    kind = model.architecture.get("kind", "mlp")
    if args.model is not None and kind != args.model:
        raise MiniflowError(f"{args.path} holds a {kind} ({describe(model.architecture)}), "
                            f"not a {args.model}")
    backend = get_backend(args.backend)
    mnist = load_mnist(args.data_dir)
    accuracy = evaluate_model(model, mnist.test_images, mnist.test_labels, backend=backend)
    print(f"test accuracy: {accuracy:.2%}")


def _graph_command(args) -> None:
    from .viz import draw  # graphviz, if at all, is needed only here

    config = TrainConfig(model=args.model, hidden=args.hidden, activation=args.activation)
    out = args.out or f"{args.model}.svg"
    if args.model == "cnn":
        model = cnn(hidden=config.hidden[0])
        what = f"CNN ({describe(model.architecture)})"
    else:
        model = mlp(config.hidden, config.activation)
        what = f"{len(config.hidden) + 1}-layer MLP"
    draw(model.loss, out)
    print(f"wrote the graph of the {what} to {out}")


# -- progress and plots -----------------------------------------------------------

@contextmanager
def _progress_bar(total: int, show: bool):
    """Yield a tqdm bar of ``total`` steps on stderr, or None when not shown or not installed."""
    if show:
        try:
            from tqdm import tqdm
        except ImportError:  # optional: plain lines do without it
            show = False
    if not show:
        yield None
        return
    with tqdm(total=total, unit="step", desc="training", leave=False, file=sys.stderr,
              dynamic_ncols=True) as bar:
        yield bar


def _print_epoch(stats, bar) -> None:
    """One line per epoch, written above the progress bar when there is one."""
    accuracy = "" if stats.val_accuracy is None else f"  val acc {stats.val_accuracy:.2%}"
    line = (f"epoch {stats.epoch}/{stats.epochs}  loss {stats.loss:.4f}{accuracy}  "
            f"{stats.seconds:.2f} s")
    if bar is None:
        print(line, flush=True)
    else:
        bar.write(line, file=sys.stdout)


def _require_matplotlib() -> None:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise MiniflowError(f"--plot needs matplotlib, which is not installed; "
                            f"install it with: {PLOT_INSTALL_HINT}") from None


def _plot_history(history, path) -> None:
    """Write a PNG of the training loss and validation accuracy per epoch, atomically."""
    # A bare Figure renders with Agg and touches no global pyplot state.
    from matplotlib.figure import Figure

    epochs = [stats.epoch for stats in history]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [stats.loss for stats in history], marker="o")
    loss_axes.set(title="training loss", xlabel="epoch", yscale="log")
    validated = [stats for stats in history if stats.val_accuracy is not None]
    accuracy_axes.plot([s.epoch for s in validated], [100 * s.val_accuracy for s in validated],
                       marker="o", color="tab:green")
    accuracy_axes.set(title="validation accuracy", xlabel="epoch", ylabel="%")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    with atomic_write(path) as file:
        file.write(image.getvalue())


# -- entry point -----------------------------------------------------------------

def main(argv=None) -> int:
    """Run the ``miniflow`` command line; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.handler(args)
    except UsageError as exc:
        return _fail(exc, EXIT_USAGE)
    except KeyboardInterrupt:
        # Saving happens only after training, atomically: an existing model file is intact.
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # The errors a user can cause and fix: bad values, missing or corrupt files,
    # an unusable backend, a diverging run. Anything else is a bug: let it show.
    except (MiniflowError, MnistNotFoundError, MnistFormatError, OSError) as exc:
        return _fail(exc, 1)
    return 0


def _fail(exc, status) -> int:
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return status
