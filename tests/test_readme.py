"""The README's Python examples run as written (the GPU one on every backend), and all
of them in order in one namespace, as a notebook runs them."""
import html
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from miniflow import gradcheck

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def block(containing):
    (found,) = [b for b in BLOCKS if containing in b]
    return found


def test_lab_example_runs():
    exec(block("from miniflow import *"), {})


def test_two_moons_example_reaches_full_training_accuracy():
    namespace = {}
    exec(block("max-margin hinge"), namespace)  # the block asserts 100% itself
    assert namespace["accuracy"] == 1.0
    assert float(namespace["value"]) < 0.05


def test_custom_node_example_runs_and_passes_gradcheck_on_every_backend(backend):
    namespace = {}
    exec(block("class Softplus"), namespace)
    softplus = namespace["Softplus"]
    assert np.allclose(namespace["grad"], [0, 0.5, 1])
    assert gradcheck(softplus, np.linspace(-3, 3, 7), backend=backend.name)


def test_gpu_example_runs_on_every_backend(backend, to_numpy):
    code = block('backend="cupy"').replace('backend="cupy"', f'backend="{backend.name}"')
    namespace = {}
    exec(code, namespace)
    assert all(backend.owns(g) for g in namespace["grads"])
    assert np.isfinite(to_numpy(namespace["value"]))


def test_gpu_example_runs_as_written_without_a_gpu(capsys):
    from miniflow.backends import get_backend
    from miniflow.errors import BackendUnavailableError

    try:
        get_backend("cupy")
    except BackendUnavailableError as exc:
        reason = str(exc)
    else:
        pytest.skip("CuPy and a GPU are here: the example takes its CUDA path")
    namespace = {}
    exec(block('backend="cupy"'), namespace)  # unchanged: backend="cupy"
    assert capsys.readouterr().out == reason + "\n"  # the clear error, printed
    assert all(isinstance(g, np.ndarray) for g in namespace["grads"])  # NumPy's result


def test_drawing_example_runs_after_the_gpu_example(tmp_path, monkeypatch):
    pytest.importorskip("graphviz")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed (apt-get install graphviz)")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(block('backend="cupy"').replace(', backend="cupy"', ""), namespace)
    exec(block("from miniflow.viz import trace"), namespace)
    assert (tmp_path / "mlp.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert (tmp_path / "hot.svg").exists()
    assert "Linear" in str(namespace["prof"])


def test_run_example_runs_after_the_gpu_example(backend, to_numpy):
    namespace = {}
    exec(block('backend="cupy"').replace('backend="cupy"', f'backend="{backend.name}"'), namespace)
    exec(block("class Shapes(Hook)"), namespace)
    result = namespace["result"]
    assert len(result.grads) == 4 and tuple(result.extras[0].shape) == (128, 256)
    assert set(result.gradients) >= {namespace[n] for n in ("W1", "b1", "W2", "b2")}
    # The run infers NumPy from the feed; the example before ran on the fixture backend.
    np.testing.assert_allclose(np.asarray(result.value), to_numpy(namespace["value"]), rtol=1e-5)


def test_threads_example_runs_and_leaves_no_policy_behind():
    pytest.importorskip("threadpoolctl")
    import miniflow.threads

    namespace = {}
    exec(block("miniflow.set_threads("), namespace)
    assert namespace["grad"].shape == (784, 256)
    assert miniflow.threads._process_policy is None


def test_ci_runs_the_readmes_set_up_and_test_commands():
    set_up, _train, test = re.search(r"```bash\n(.*?)```", README, re.DOTALL)[1].splitlines()
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text().splitlines()
    assert set_up.replace("pip install", "pip install -q") in ci
    assert ci[-1] == test  # the last thing CI does, so its exit status is the suite's


def test_gradients_as_graphs_example_runs():
    exec(block("expand(grad(f, x), feed)"), {})


def _drawn_labels(svg_text):
    """The node labels of a drawing, without the ids that depend on the run (Mul#12 -> Mul)."""
    return sorted(re.sub(r"#\d+$", "", html.unescape(label))
                  for label in re.findall(r'font-weight="bold"[^>]*>(.*?)</text>', svg_text))


def test_gradient_graph_drawing_runs_and_is_the_one_shown(tmp_path, monkeypatch):
    pytest.importorskip("graphviz")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed (apt-get install graphviz)")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(block("expand(grad(f, x), feed)"), namespace)
    exec(block('"lab_gradient.svg"'), namespace)
    drawn = (tmp_path / "lab_gradient.svg").read_text()
    shown = (Path(__file__).parent.parent / "docs" / "lab_gradient.svg").read_text()
    assert "docs/lab_gradient.svg" in README
    labels = _drawn_labels(drawn)
    assert labels == ["Add", "Constant", "Input 'y'", "Input 'z'", "Mul", "Mul"]
    assert labels == _drawn_labels(shown)
    # d f / d x = y + z = -1 at the feed (Graphviz writes the minus as &#45;)
    assert "scalar = &#45;1<" in drawn and "scalar = &#45;1<" in shown


def test_double_backprop_example_trains():
    namespace = {}
    exec(block("lam * batch * mf.Sum(dx * dx)"), namespace)
    values = namespace["values"]
    assert all(np.isfinite(values)) and values[-1] < values[0]
    # The penalty is in the loss: its value exceeds the plain loss at the same weights.
    mf, model, x, y = (namespace[k] for k in ("mf", "model", "x", "y"))
    feed = {model.images: x, model.labels: y, **namespace["opt"].params}
    assert float(mf.evaluate(namespace["penalized"], feed)) > float(mf.evaluate(model.loss, feed))


def test_newton_cg_example_fits_to_rounding():
    namespace = {}
    exec(block("def newton_cg"), namespace)
    assert float(np.linalg.norm(namespace["newton"].grads)) < 1e-8


def test_models_built_from_layers_example_trains_saves_and_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block writes layers.safetensors
    namespace = {}
    exec(block("nn.BatchNorm2d(8)"), namespace)
    assert namespace["result"].history[-1].val_accuracy == 1.0
    assert (tmp_path / "layers.safetensors").exists()


def test_sequence_models_example_trains_samples_and_saves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block writes charlm.safetensors
    namespace = {}
    exec(block("train_charlm(text[:40000]"), namespace)
    result = namespace["result"]
    assert result.bpc < 5.0 and (tmp_path / "charlm.safetensors").exists()
    assert [name for name, _ in namespace["lstm"].named_parameters()][:4] == [
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


def test_diabetes_regression_example_runs_and_is_near_least_squares(capsys):
    pytest.importorskip("sklearn")
    exec(block("load_diabetes"), {})
    out = capsys.readouterr().out
    found = re.search(r"miniflow MLP ([\d.]+), scikit-learn LinearRegression ([\d.]+)", out)
    mlp, linear = float(found.group(1)), float(found.group(2))
    assert mlp < 1.1 * linear


# -- the README as a notebook -----------------------------------------------------------

# A block preceded by this comment is left out of the notebook run; the comment must
# say why (e.g. "<!-- notebook: skip (needs a TPU pod) -->"). The README has none now:
# each one added hides an example from this test, so keep them for what cannot run here.
SKIP_MARKER = re.compile(r"^<!-- notebook: skip \((?P<why>[^)]+)\) -->\s*\n```python\n", re.M)


def _module_missing(name):
    import importlib.util

    return None if importlib.util.find_spec(name) else f"needs {name}, not installed"


def _graphviz_missing():
    return _module_missing("graphviz") or (
        None if shutil.which("dot") else "needs Graphviz's dot program (apt-get install graphviz)")


def _mnist_missing():
    from miniflow.datasets import load_mnist
    from miniflow.errors import MiniflowError

    try:
        load_mnist(progress=False)
    except (MiniflowError, OSError) as exc:
        return f"needs MNIST ({exc})"
    return None


# What a block needs that a machine may lack, found by a string the block holds.
NEEDS = {"draw(": _graphviz_missing, "load_diabetes": lambda: _module_missing("sklearn"),
         "set_threads(": lambda: _module_missing("threadpoolctl"),
         "from distributed import": lambda: _module_missing("distributed") or _mnist_missing()}


def _small_mnist(load_mnist, rows):
    """load_mnist, cut to ``rows`` training images: the README's Dask block trains one
    epoch of full MNIST on two workers; here the same code runs on a slice of it."""
    from miniflow.datasets import MNIST

    def load(*args, **kwargs):
        full = load_mnist(*args, **{"progress": False, **kwargs})
        return MNIST(full.train_images[:rows], full.train_labels[:rows], full.val_images[:500],
                     full.val_labels[:500], full.test_images[:1000], full.test_labels[:1000])

    return load


def test_every_python_block_runs_in_order_in_one_namespace(tmp_path, monkeypatch, capsys):
    import miniflow.datasets

    # Every marker that opens a line has its reason and stands right before a block.
    assert len(SKIP_MARKER.findall(README)) == len(re.findall(r"^<!-- notebook:", README, re.M))
    marked = {m.end() for m in SKIP_MARKER.finditer(README)}
    starts = [m.end() for m in re.finditer(r"```python\n", README)]
    assert len(starts) == len(BLOCKS)
    monkeypatch.chdir(tmp_path)  # blocks write their files (models, drawings) here
    monkeypatch.setattr(miniflow.datasets, "load_mnist",
                        _small_mnist(miniflow.datasets.load_mnist, 2000))
    namespace = {"__name__": "__main__"}  # as in a notebook: the Dask block's guard runs
    ran, skipped = [], []
    for number, (start, code) in enumerate(zip(starts, BLOCKS), 1):
        first = code.splitlines()[0]
        reasons = [need() for text, need in NEEDS.items() if text in code]
        reason = next((r for r in reasons if r), None)
        if start in marked:  # left out on purpose, with its reason in the README
            continue
        if reason:
            skipped.append(f"block {number} ({first}): {reason}")
            continue
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"README python block {number}, after the {number - 1} "
                                 f"before it, failed: {type(exc).__name__}: {exc}\n{code}") \
                from exc
        ran.append(number)
    capsys.readouterr()
    assert len(ran) + len(skipped) + len(marked) == len(BLOCKS)
    if skipped:
        pytest.skip("ran %d blocks in order; skipped: %s" % (len(ran), "; ".join(skipped)))
    # The last block trained on the Dask workers and kept the trained model.
    assert namespace["result"].history and namespace["client"].status == "closed"


def test_the_readme_lists_every_option_of_miniflow_train(capsys):
    from miniflow.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    # The options are the words that open the help's lines ("  --lr LR  initial ...").
    options = set(re.findall(r"^  (--[a-z][a-z-]*)", capsys.readouterr().out, re.M)) - {"--help"}
    assert {"--checkpoint", "--resume", "--clip-norm", "--save"} <= options
    section = README[README.index("`miniflow train`'s options"):README.index(
        "### Your own data and models")]
    listed = set(re.findall(r"`(--[a-z-]+)", section))
    assert options - listed == set(), "options missing from the README's table"
    assert listed - options == set(), "options the README lists that miniflow train lacks"
