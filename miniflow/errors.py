"""The exceptions miniflow raises: each says which node, input, file or backend is at fault.

Every one derives from :class:`MiniflowError` (catch that to catch them all) and
also from the built-in exception a caller would expect (``ValueError``,
``TypeError``, ``FileNotFoundError``, ``AssertionError``, ...). They all live
here; the modules that raise them re-export their own (``miniflow.serialize.
ModelFileError`` is this module's ``ModelFileError``).
"""


class MiniflowError(Exception):
    """Base class of every error miniflow raises on purpose."""


# -- graphs and runs ---------------------------------------------------------------

class GraphError(MiniflowError, ValueError):
    """The graph or the call is unusable: a cycle, a missing feed, a bad ``wrt``."""


class FeedError(MiniflowError, TypeError):
    """A value in ``feed_dict`` (or ``feed_dict`` itself) cannot be used."""


class NodeError(MiniflowError, ValueError):
    """A node's forward or backward rule failed, or broke the node contract."""


class NotTwiceDifferentiableError(MiniflowError):
    """A gradient was asked through a rule that cannot be traced into nodes."""


class ShapeError(NodeError):
    """The shapes reaching a node do not fit together."""


class BackendError(MiniflowError, ValueError):
    """An unknown backend name, or arrays of two libraries in one feed."""


class BackendUnavailableError(MiniflowError, RuntimeError):
    """The backend exists but cannot run here (library not installed, no GPU)."""


class GradcheckError(MiniflowError, AssertionError):
    """The analytic gradient of some input disagrees with the numerical one."""


# -- files and data ----------------------------------------------------------------

class ModelFileError(MiniflowError, ValueError):
    """A model file is missing, corrupt, not a miniflow model, or not the model expected."""


class SafetensorsError(MiniflowError, ValueError):
    """The bytes are not a well-formed safetensors file; the message says what is wrong."""


class NotSafetensorsError(SafetensorsError):
    """The bytes do not even start as a safetensors file (no length field and JSON header)."""


class DataFileError(MiniflowError, ValueError):
    """A data file given to train on (``--data FILE.npz``) is missing or not of the documented form."""


class MnistFormatError(MiniflowError, ValueError):
    """A data file is malformed: not IDX, truncated, bad gzip, wrong shape.

    Attributes
    ----------
    filename : str
        The file (path or URL) at fault.
    fault : str
        What is wrong with it.
    """

    def __init__(self, filename, fault):
        # Both parts go to ValueError so the exception survives pickling
        # (multiprocessing, pytest-xdist), which rebuilds it from its args.
        super().__init__(filename, fault)
        self.filename = filename
        self.fault = fault

    def __str__(self):
        return f"{self.filename}: {self.fault}"


class MnistChecksumError(MnistFormatError):
    """A file parses as IDX but its content is not the canonical MNIST file."""


class MnistNotFoundError(MiniflowError, FileNotFoundError):
    """The MNIST files are neither on disk nor obtainable from any mirror."""


# -- training, drawing, the command line -------------------------------------------

class OptimizerError(MiniflowError, ValueError):
    """An optimizer or schedule was given an unusable setting or gradient."""


class ConfigError(MiniflowError, ValueError):
    """A TrainConfig value is out of range or an unknown name."""


class DataError(MiniflowError, ValueError):
    """Images or labels given to the trainer have the wrong shape, dtype or values."""


class TrainingDivergedError(MiniflowError, ArithmeticError):
    """The training loss became NaN or infinite."""


class DrawError(MiniflowError, RuntimeError):
    """A drawing cannot be rendered or saved."""


class GraphvizMissingError(DrawError):
    """The ``graphviz`` Python package or Graphviz's ``dot`` program is not installed."""


class UsageError(MiniflowError):
    """A bad command line: reported in one line, exit status 2."""


class CompileError(MiniflowError, RuntimeError):
    """A graph cannot be compiled for this backend (no compiler, or it failed)."""


class ThreadsError(MiniflowError, ValueError):
    """A thread count is not a positive integer, or cannot be applied here."""


class ClusterError(MiniflowError, RuntimeError):
    """The cluster cannot be reached, or lost its workers and cannot finish the run."""


class WorkerGoneError(MiniflowError, OSError):
    """A worker holding a shard or a replica left the cluster while the driver waited.

    A task pinned to a worker that is gone waits for it for ever, rather than
    failing: the driver looks at the workers alive while it waits, and raises
    this (an OSError, so the step is recovered as for any lost worker)."""


class StopTraining(MiniflowError):
    """Raised by a callback (``on_step`` or ``on_epoch``) to end the run there.

    The run ends normally: the model as trained so far is returned, and saved
    where it would have been at the end. (An ``on_epoch`` returning False does
    the same after its epoch.)
    """
