"""The backend matrix: every test that takes ``backend`` runs once per usable backend.

numpy and array_api_strict always run (the strict namespace stands in for CuPy:
it rejects anything outside the Array API standard); torch, dask.array and
jax.numpy run when installed; cupy only where a GPU is usable. ``MINIFLOW_TEST_BACKENDS=cupy,numpy`` restricts
the matrix (the GPU check script uses it).

Rule: no test compares a duration with a bound. A busy machine stretches any time,
so a test asserts what the code does (what it imports, which nodes ran, how much it
allocates) and bench/ reports how long it took (bench/claims.py holds the claims
tests used to assert). A timeout that only stops a hang is not a claim: make it
generous, many times what the work takes on a quiet machine.
"""
import os

import numpy as np
import pytest

from miniflow.backends import get_backend
from miniflow.errors import BackendUnavailableError

ALL_BACKENDS = ["numpy", "array_api_strict", "torch", "dask.array", "jax.numpy", "cupy"]
REQUIRED = {"numpy", "array_api_strict"}


def _selected():
    chosen = os.environ.get("MINIFLOW_TEST_BACKENDS")
    return [name.strip() for name in chosen.split(",")] if chosen else ALL_BACKENDS


@pytest.fixture(params=_selected())
def backend(request):
    """A ready backend; optional ones are skipped, with the reason, where unusable."""
    name = request.param
    if name == "jax.numpy":
        try:
            import jax

            jax.config.update("jax_enable_x64", True)  # gradcheck's float64 needs it
        except ImportError:
            pass
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        if name in REQUIRED or os.environ.get("MINIFLOW_TEST_BACKENDS"):
            raise  # a backend the suite promises (or was asked for) must work
        pytest.skip(str(exc))


@pytest.fixture
def to_numpy(backend):
    """Bring a backend array (or a NumPy scalar) to the host as float64/int NumPy."""
    return lambda array: np.asarray(backend.to_numpy(array))
