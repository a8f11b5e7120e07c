"""The suite runs with jaxtyping's runtime checks on (tests/conftest.py): shapes are enforced."""

import pytest
import torch
from jaxtyping import TypeCheckError

from dualform.core.equations import linear_attention


def test_annotations_are_checked_at_run_time():
    # einsum alone would accept a 3×4 "weight" on a 4-vector; the annotation says
    # ``d_head d_head`` (square), so the runtime check must refuse it.
    weights, query = torch.zeros(3, 4), torch.zeros(4)
    with pytest.raises(TypeCheckError):
        linear_attention(weights, query)
    assert linear_attention(torch.eye(4), query).shape == (4,)
