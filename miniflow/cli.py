"""The ``miniflow`` command line: train and evaluate MNIST models, draw their graph.

    miniflow train [--model cnn] [--backend numpy] [--epochs 10] [--save model.safetensors] ...
    miniflow evaluate model.safetensors
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
import traceback
import zipfile
from pathlib import Path

from . import __version__
from .backends import backend_names, get_backend
from .datasets import MNIST_TRAIN_SIZE, load_mnist, load_mnist_test, load_npz
from .distributed import cluster_client
from .errors import MiniflowError, UsageError
from .models import ACTIVATIONS, Model, cnn, describe, mlp
from .optim import OPTIMIZERS, SCHEDULES
from .files import atomic_write, check_writable
from .serialize import load_model, save_model
from .progress import Progress, diagnose, plural
from .allocator import keep_freed_memory
from .threads import THREADS_INSTALL_HINT
from .checkpoint import load_checkpoint
from .train import (DEFAULT_LR, MODEL_DEFAULTS, MODELS, TrainConfig, build_model,
                    evaluate_model, train)

PROG = "miniflow"
# The exit status of a program stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2
EXIT_FAILURE = 1
PLOT_INSTALL_HINT = "pip install 'miniflow[plot]'"
#: --plot's extensions and the formats matplotlib writes for them.
PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block before its message; we want the
    # one-line "miniflow: error: ..." every other error gets (--help still has usage).
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- option types: each names the rule a bad value broke --------------------------

# One wording for every bad number: "expected <what the option takes>, got '<text>'".

def _invalid(expected, text):
    return argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise _invalid(f"an integer >= {low}", text)
        return value
    return parse


def _number_where(test, expected):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # fails every test below
        if not test(value):
            raise _invalid(expected, text)
        return value
    return parse


_positive_float = _number_where(lambda v: 0 < v < math.inf, "a positive number")
_momentum = _number_where(lambda v: 0 <= v < 1, "a number in [0, 1)")
_non_negative_float = _number_where(lambda v: 0 <= v < math.inf, "a number >= 0")


def _threads(text):
    if text == "auto":
        return text
    try:
        return _int_at_least(1)(text)
    except argparse.ArgumentTypeError:
        raise _invalid("'auto' or an integer >= 1", text) from None


def _data_dir(text):
    """An existing folder: a typo must not start a download into a new one."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return text


def _model_spec(text):
    """'mlp', 'cnn', or 'package.module:function' (checked for form here, imported later)."""
    if text in MODELS:
        return text
    module, colon, function = text.partition(":")
    if not colon or not function.isidentifier() or not all(
            part.isidentifier() for part in module.split(".")):
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(MODELS)} or package.module:function (a function that "
            f"returns a miniflow Model), got {text!r}")
    return text


def model_from_spec(spec: str) -> Model:
    """Import ``package.module:function`` and call it; it must return a :class:`Model`."""
    import importlib

    module_name, _, function_name = spec.partition(":")
    where = f"argument --model: {spec!r}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"{where}: no module named {exc.name!r} (is it on PYTHONPATH, or "
                         "installed?)") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(f"{where}: module {module_name!r} has no function {function_name!r}")
    model = function()
    if not isinstance(model, Model):
        raise UsageError(f"{where}: {function_name}() returned {type(model).__name__}, not a "
                         "miniflow Model (see miniflow.models.from_network)")
    return model


def _data_file(text):
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _plot_path(text):
    suffix = Path(text).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"cannot tell the format of {text!r} from its extension; use one of "
            f"{', '.join(PLOT_FORMATS)}")
    return text


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
    run.add_argument("--compile", action="store_true",
                     help="compile each training step once (jax.jit, torch.compile, a planned "
                     "NumPy executor, a CUDA graph); other backends run uncompiled, with a notice")
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
    run.add_argument("--batch-size", type=_int_at_least(1), default=None,
                     help=f"(default: {_per_model('batch_size')})")
    run.add_argument("--seed", type=_int_at_least(0), default=defaults.seed,
                     help="seeds the initial weights and the shuffling (default: %(default)s)")
    _add_data_option(run)
    run.add_argument("--validation-size", type=_int_at_least(0),
                     default=defaults.validation_size,
                     help="training images held out for validation (default: %(default)s)")
    run.add_argument("--shards", type=_int_at_least(1), default=None,
                     help="split each batch into N row shards computed in parallel threads "
                     f"(default: {_per_model('shards')})")
    run.add_argument("--cluster", metavar="SPEC",
                     help="train data-parallel on Dask: local:N starts N one-thread workers, "
                     "tcp://HOST:PORT joins a running scheduler (needs miniflow[dask])")
    run.add_argument("--clip-norm", metavar="X", type=_positive_float, default=None,
                     help="clip the gradients' global L2 norm to X before each update "
                     "(default: no clipping)")
    run.add_argument("--checkpoint", metavar="PATH",
                     help="after every epoch, write the weights and the optimizer's state "
                     "here (atomically: an interrupted write keeps the previous one)")
    run.add_argument("--resume", metavar="PATH",
                     help="continue the run that wrote this checkpoint: the same options "
                     "give the weights the uninterrupted run gives")
    run.add_argument("--save", metavar="PATH", type=_save_path,
                     help="write the trained model here (a safetensors file), after training")
    run.add_argument("--plot", metavar="PATH", type=_plot_path,
                     help=f"draw the loss and accuracy per epoch; .png, .svg or .pdf "
                     f"(needs matplotlib: {PLOT_INSTALL_HINT})")
    _add_threads_option(run)
    run.add_argument("--quiet", action="store_true",
                     help="print only the final summary")
    run.set_defaults(handler=_train_command)

    score = commands.add_parser("evaluate", help="report a saved model's test accuracy",
                                description="Reload a model saved by 'miniflow train --save' "
                                "and report its accuracy on the MNIST test set.")
    score.add_argument("path", metavar="PATH", help="the saved model (.safetensors; .npz of miniflow 0.x also loads)")
    score.add_argument("--model", choices=MODELS, default=None,
                       help="refuse a file holding another kind of model (default: any)")
    _add_data_option(score)
    score.add_argument("--backend", choices=backend_names(), default="numpy",
                       help="(default: %(default)s)")
    _add_threads_option(score)
    score.set_defaults(handler=_evaluate_command)

    graph = commands.add_parser("graph", help="draw the MNIST model's graph",
                                description="Draw the graph of the model 'train' would build.")
    _add_architecture_options(graph)
    graph.add_argument("--out", metavar="PATH", default=None,
                       help="the drawing; .svg, .png, .pdf or .dot (default: MODEL.svg, "
                       "e.g. mlp.svg)")
    graph.set_defaults(handler=_graph_command)
    _add_traceback_option(parser, commands)
    return parser


def _add_traceback_option(parser, commands):
    """Accept --traceback before or after the command (``miniflow train ... --traceback``)."""
    help_text = "on an error, show the full Python traceback (for bug reports)"
    parser.add_argument("--traceback", action="store_true", help=help_text)
    for command in commands.choices.values():
        # SUPPRESS: a command that lacks the flag must not reset the one given before it.
        command.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                             help=help_text)


def _per_model(setting) -> str:
    return ", ".join(f"{MODEL_DEFAULTS[m][setting]} for the {m}" for m in MODELS)


def _save_path(text):
    # An empty path would otherwise be taken as "no --save" and the model dropped silently.
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name for the model, got an empty one")
    return text


def _channels(text):
    """'16,32' -> (16, 32)."""
    try:
        channels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected channel counts such as 32,64, got {text!r}") from None
    if any(count < 1 for count in channels):
        raise argparse.ArgumentTypeError(f"channel counts must be positive, got {text!r}")
    return channels


def _add_architecture_options(parser):
    parser.add_argument("--model", type=_model_spec, default="mlp", metavar="MODEL",
                        help="mlp: fully connected layers; cnn: two 3x3 convolutions with "
                        "max pooling, then a dense layer; or package.module:function, a "
                        "function returning a miniflow Model (default: %(default)s). "
                        "train --model charlm --text FILE trains a character-level language "
                        "model instead (see train --model charlm --help)")
    parser.add_argument("--hidden", type=_hidden, default=None,
                        help="hidden layer sizes, e.g. 256 or 512,256; 0 for softmax "
                        "regression; one size for the cnn's dense layer (default: 256 for "
                        "the mlp, 128 for the cnn)")
    parser.add_argument("--channels", type=_channels, default=None,
                        help="the cnn's convolution channels, one per conv-pool-ReLU block "
                        f"(default: {','.join(map(str, MODEL_DEFAULTS['cnn']['channels']))})")
    parser.add_argument("--activation", choices=list(ACTIVATIONS),
                        default=TrainConfig.activation,
                        help="(default: %(default)s)")


def _add_threads_option(parser):
    parser.add_argument("--threads", type=_threads, default="auto", metavar="N",
                        help="BLAS and PyTorch threads: a number, or 'auto' for the cores "
                        "other processes leave free, checked after every epoch "
                        f"(default: %(default)s; needs threadpoolctl: {THREADS_INSTALL_HINT})")


def _add_data_option(parser):
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-dir", metavar="DIR", type=_data_dir,
                        help="folder with the four IDX files under MNIST's names: MNIST, or "
                        "any set of its form, e.g. Fashion-MNIST (default: $MINIFLOW_DATA, "
                        "else ~/.cache/miniflow/mnist, verified as the canonical MNIST)")
    source.add_argument("--data", metavar="FILE.npz", type=_data_file,
                        help="an .npz of arrays named x_train, y_train and optionally "
                        "x_val, y_val, x_test, y_test")


# -- the commands ----------------------------------------------------------------

def _compilable_or_notice(backend: str) -> bool:
    """True when ``--compile`` works on ``backend``; else print why, once, and go on."""
    from .compile import compilable

    reason = compilable(backend)
    if reason:
        print(f"note: --compile: {reason}; training uncompiled", file=sys.stderr)
    return reason is None


def _load_data(args, validation_size):
    """The data to train on: --data's .npz, --data-dir's IDX set, or the verified MNIST."""
    if args.data is not None:
        return load_npz(args.data, validation_size=validation_size)
    if validation_size >= MNIST_TRAIN_SIZE and args.data_dir is None:
        raise UsageError(f"argument --validation-size: must lie in [0, {MNIST_TRAIN_SIZE}) "
                         f"(the MNIST training set has {MNIST_TRAIN_SIZE} images), got "
                         f"{validation_size} (see '{PROG} train --help')")
    # A folder given by hand may hold another set of MNIST's form (Fashion-MNIST):
    # only the default folder, where MNIST is downloaded, must hold MNIST itself.
    options = {} if args.data_dir is None else {"verify": False}
    return load_mnist(args.data_dir, validation_size=validation_size,
                      progress=False if args.quiet else None, **options)


def _read_resume(path):
    try:
        return load_checkpoint(path)
    except MiniflowError as exc:
        raise UsageError(f"argument --resume: {exc}") from None
    # What load_checkpoint lets through from a damaged file: a broken zip, a record
    # of the wrong form.
    except (zipfile.BadZipFile, EOFError, KeyError, TypeError, AttributeError,
            ValueError) as exc:
        raise UsageError(f"argument --resume: {path} is not a miniflow checkpoint "
                         f"({type(exc).__name__}: {exc})") from None


def _check_resume_fits(path, saved, custom, config, data, n_classes) -> None:
    """Refuse a checkpoint of another model before training, naming the flag: the
    optimizer would otherwise load arrays of the wrong shapes into this model."""
    model = custom if custom is not None else build_model(
        config, data.train_images.shape[1], n_classes if n_classes is not None else 1)
    expected = [tuple(value.shape) for value in model.params.values()]
    found = [tuple(value.shape) for value in saved["optimizer"].get("params", [])]
    if found != expected:
        raise UsageError(f"argument --resume: {path} is a checkpoint of another model "
                         f"(parameter shapes {found}, this model's {expected})")


def _train_command(args) -> None:
    started = time.perf_counter()
    custom = None if args.model in MODELS else model_from_spec(args.model)
    config = TrainConfig(model=args.model if custom is None else "mlp", hidden=args.hidden, channels=args.channels,
                         activation=args.activation, optimizer=args.optimizer, lr=args.lr, schedule=args.schedule,
                         momentum=args.momentum, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed, backend=args.backend,
                         validation_size=args.validation_size,
                         compile=args.compile and _compilable_or_notice(args.backend),
                         weight_decay=args.weight_decay, shards=args.shards,
                         clip_norm=args.clip_norm)
    # Everything that can fail fast does, before any time goes into training.
    if args.save:
        check_writable(args.save, "model")
    if args.checkpoint:
        check_writable(args.checkpoint, "checkpoint")
    saved = _read_resume(args.resume) if args.resume else None
    if args.plot:
        _require_matplotlib()
        check_writable(args.plot, "plot")
    backend = get_backend(config.backend)
    data = _load_data(args, config.validation_size)
    n_classes = getattr(data, "n_classes", 10)
    if saved is not None:
        _check_resume_fits(args.resume, saved, custom, config, data, n_classes)

    steps = config.epochs * math.ceil(len(data.train_labels) / config.batch_size)
    with Progress(steps, bar=False if args.quiet else None, lines=not args.quiet) as progress, \
            cluster_client(args.cluster) as client:
        result = train(config, data.train_images, data.train_labels,
                       data.val_images, data.val_labels,
                       on_epoch=progress.epoch, on_step=progress.step, threads=args.threads,
                       client=client, model=custom, checkpoint=args.checkpoint,
                       resume=args.resume,
                       **({} if n_classes is None else {"n_classes": n_classes}))
    test_accuracy = None
    if data.test_images is not None and data.test_labels.dtype.kind == "i":
        test_accuracy = evaluate_model(result.model, data.test_images, data.test_labels,
                                       backend=backend, threads=args.threads)
    if args.save:
        save_model(result.model, args.save)
    if args.plot:
        _plot_history(result.history, args.plot)

    if test_accuracy is not None:
        print(f"test accuracy: {test_accuracy:.2%}")
    else:
        print("test accuracy: none (the data file has no x_test and y_test of class labels)")
    where = backend.name if client is None else f"{args.cluster} ({backend.name} per worker)"
    print(f"wall time: {time.perf_counter() - started:.2f} s "
          f"(training {result.seconds:.2f} s, {plural(config.epochs, 'epoch')} on "
          f"{where}{_threads_used(result.history, config.shards)})")
    warning = diagnose(result.history, 10, accuracy=test_accuracy)
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if args.save:
        print(f"saved the model to {args.save}")
    if args.plot:
        print(f"saved the plot to {args.plot}")


def _threads_used(history, shards: int = 1) -> str:
    """", 2 BLAS threads" (or "1-2", when "auto" changed the count), or "" if not limited.

    With batch shards: ", 2 threads (2 shards a batch)", the threads shared by
    the shards and their BLAS calls.
    """
    counts = sorted({stats.threads for stats in history if stats.threads is not None})
    if not counts:
        return ""
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if shards > 1:
        return f", {span} thread{'' if span == '1' else 's'} ({shards} shards a batch)"
    return f", {span} BLAS thread{'' if span == '1' else 's'}"


def _evaluate_command(args) -> None:
    model = load_model(args.path)
    kind = model.architecture.get("kind", "model")
    if args.model is not None and kind != args.model:
        raise MiniflowError(f"{args.path} holds a {kind} ({describe(model.architecture)}), "
                            f"not a {args.model}")
    backend = get_backend(args.backend)
    if args.data is not None:
        data = load_npz(args.data)
        if data.test_images is None:
            raise UsageError(f"argument --data: {args.data} has no x_test and y_test to "
                             "evaluate on")
        images, labels = data.test_images, data.test_labels
    else:
        options = {} if args.data_dir is None else {"verify": False}
        images, labels = load_mnist_test(args.data_dir, **options)
    accuracy = evaluate_model(model, images, labels, backend=backend, threads=args.threads)
    print(f"test accuracy: {accuracy:.2%}")


def _graph_command(args) -> None:
    from .viz import draw  # graphviz, if at all, is needed only here

    if args.model not in MODELS:
        model = model_from_spec(args.model)
        out = args.out or f"{args.model.partition(':')[2]}.svg"
        draw(model.loss, out)
        print(f"wrote the graph of {args.model} ({describe(model.architecture)}) to {out}")
        return
    config = TrainConfig(model=args.model, hidden=args.hidden, channels=args.channels,
                         activation=args.activation)
    out = args.out or f"{args.model}.svg"
    if args.model == "cnn":
        model = cnn(config.channels, config.hidden[0])
        what = f"CNN ({describe(model.architecture)})"
    else:
        model = mlp(config.hidden, config.activation)
        what = f"{len(config.hidden) + 1}-layer MLP"
    draw(model.loss, out)
    print(f"wrote the graph of the {what} to {out}")


# -- plots -----------------------------------------------------------------------

def _require_matplotlib() -> None:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise MiniflowError(f"--plot needs matplotlib, which is not installed; "
                            f"install it with: {PLOT_INSTALL_HINT}") from None


def _plot_history(history, path) -> None:
    """Draw the training loss and the accuracy per epoch; write it atomically.

    The accuracy is the validation accuracy, or, without validation data, the
    training accuracy: the panel is never left empty.
    """
    # A bare Figure renders with its own canvas and touches no global pyplot state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [stats.epoch for stats in history]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [stats.loss for stats in history], marker="o", label="training")
    validated = [stats for stats in history if stats.val_accuracy is not None]
    if validated:
        val_losses = [(s.epoch, s.val_loss) for s in validated if s.val_loss is not None]
        if val_losses:
            loss_axes.plot(*zip(*val_losses), marker="o", color="tab:green", label="validation")
            loss_axes.legend()
        accuracy_axes.plot([s.epoch for s in validated],
                           [100 * s.val_accuracy for s in validated],
                           marker="o", color="tab:green")
        accuracy_title = "validation accuracy"
    else:
        trained = [s for s in history if s.train_accuracy is not None]
        accuracy_axes.plot([s.epoch for s in trained], [100 * s.train_accuracy for s in trained],
                           marker="o")
        accuracy_title = "training accuracy (no validation data)"
    loss_axes.set(title="loss", xlabel="epoch", yscale="log")
    accuracy_axes.set(title=accuracy_title, xlabel="epoch", ylabel="%")
    for axes in (loss_axes, accuracy_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        axes.grid(alpha=0.3)
    image = io.BytesIO()
    figure.savefig(image, format=PLOT_FORMATS[Path(path).suffix.lower()], dpi=100)
    with atomic_write(path) as file:
        file.write(image.getvalue())


# -- entry point -----------------------------------------------------------------

def main(argv=None) -> int:
    """Run the ``miniflow`` command line; return the exit status.

    Every failure ends in one ``miniflow: error: ...`` line on stderr (``--traceback``
    adds the Python traceback above it): exit status 2 for a bad command line, 1 for
    anything else, 130 for Ctrl-C.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    # Every command runs steps that allocate and free the same large arrays: reusing
    # freed memory saved a third of the CNN's first epoch (see miniflow.allocator).
    keep_freed_memory()
    try:
        language_model = _language_model_argv(argv)
        if language_model is not None:
            # A language model trains on a text, in windows carried from batch to batch
            # (truncated BPTT), not on labelled rows: its options and runner are its own.
            from .charlm import main as charlm_main

            return charlm_main(language_model, prog=f"{PROG} train --model charlm")
        args = build_parser().parse_args(argv)
        args.handler(args)
    except UsageError as exc:
        return _fail(exc, EXIT_USAGE)
    except KeyboardInterrupt:
        # Saving happens only after training, atomically: an existing model file is intact.
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    # The errors a user can cause and fix: bad values, missing or corrupt files,
    # an unusable backend, a diverging run.
    except (MiniflowError, OSError) as exc:
        return _fail(exc, EXIT_FAILURE, _wants_traceback(args, argv))
    except MemoryError as exc:
        return _fail(f"out of memory ({exc or 'no details'}); try a smaller model or batch",
                     EXIT_FAILURE, _wants_traceback(args, argv))
    except Exception as exc:  # a bug: still one line, and the way to see more
        show = _wants_traceback(args, argv)
        hint = "" if show else "; rerun with --traceback to see where it happened"
        message = " ".join(str(exc).split())  # one line, whatever the exception says
        return _fail(f"unexpected {type(exc).__name__}{': ' if message else ''}{message} "
                     f"(a bug in miniflow{hint})", EXIT_FAILURE, show)
    return 0


def _language_model_argv(argv):
    """The arguments after ``train --model charlm`` (either spelling), or None."""
    if argv[:1] != ["train"]:
        return None
    rest = argv[1:]
    for i, word in enumerate(rest):
        if word == "--model=charlm":
            return rest[:i] + rest[i + 1:]
        if word == "--model" and rest[i + 1:i + 2] == ["charlm"]:
            return rest[:i] + rest[i + 2:]
    return None


def _wants_traceback(args, argv) -> bool:
    # Without parsed arguments (the parser itself failed), look for the flag by hand.
    return getattr(args, "traceback", False) if args is not None else "--traceback" in argv


def _fail(error, status, show_traceback=False) -> int:
    if show_traceback:
        traceback.print_exc()
    # An error with a long story (MNIST's reason per mirror) offers a one-line summary;
    # --traceback shows the whole story.
    summary = None if show_traceback else getattr(error, "summary", None)
    print(f"{PROG}: error: {summary or error}", file=sys.stderr)
    return status
