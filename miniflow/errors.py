"""The exceptions miniflow raises: each says which node, input or backend is at fault."""


class MiniflowError(Exception):
    """Base class of every error miniflow raises on purpose."""


class GraphError(MiniflowError, ValueError):
    """The graph itself is unusable: a cycle, a missing feed, a bad ``wrt``."""


class FeedError(MiniflowError, TypeError):
    """A value in ``feed_dict`` cannot be used as an array for its Input."""


class NodeError(MiniflowError, ValueError):
    """A node's forward or backward rule failed on the values it was given."""


class ShapeError(NodeError):
    """The shapes reaching a node do not fit together."""


class BackendError(MiniflowError, ValueError):
    """An unknown backend name, or arrays of two libraries in one feed."""


class BackendUnavailableError(MiniflowError, RuntimeError):
    """The backend exists but cannot run here (library not installed, no GPU)."""


class CompileError(MiniflowError, RuntimeError):
    """A graph cannot be compiled for this backend (no compiler, or it failed)."""
