"""Oracle specs of the losses (see tests/oracle.py)."""
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from miniflow import CrossEntropyWithSoftmax
from oracle import OpSpec, values


@st.composite
def logits_and_labels(draw):
    batch, classes = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch))
    return draw(values((batch, classes), -10, 10)), np.array(labels, dtype=np.int64)


SPECS = [
    OpSpec("CrossEntropyWithSoftmax", CrossEntropyWithSoftmax, F.cross_entropy,
           logits_and_labels(), arity=2),
]
