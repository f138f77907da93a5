"""homec.driver: the tolerance a whole compile is held to."""

from __future__ import annotations

import math

import homec.passes  # noqa: F401 - registers the built-in passes
from homec.driver import combined_tolerance
from homec.pipeline import PassRecord


def _rec(name: str, modified: bool = True) -> PassRecord:
    return PassRecord(0, name, {}, None, 0.0, {}, modified, 0, 0)


def test_exact_passes_sum_their_bounds():
    t = combined_tolerance([_rec("cleanup"), _rec("eliminate_dead")])
    assert not t.lossy and t.atol < 1e-5 and t.min_cosine is None


def test_a_lossy_pass_lifts_the_elementwise_bound_of_refolds():
    """cleanup's 1e-6 must not bound an int8 model's outputs: quantize bounds the cosine."""
    t = combined_tolerance([_rec("cleanup"), _rec("quantize"), _rec("fold_qdq")])
    assert t.lossy and math.isinf(t.atol) and t.min_cosine is not None and t.min_cosine < 0.99


def test_unmodified_passes_do_not_count():
    t = combined_tolerance([_rec("cleanup"), _rec("quantize", modified=False)])
    assert not t.lossy
