"""estimate_soundness takes numpy rows as well as lists (it crashed on ``not row``)."""

from __future__ import annotations

import numpy as np
import pytest

from ttscale.errors import ConfigError
from ttscale.verifiers.soundness import estimate_soundness


def test_numpy_rows_give_the_counts_of_lists() -> None:
    weak = [[True, True, False, True], [True, False]]
    strong = [[True, False, False, False], [False, False]]
    from_lists = estimate_soundness(weak, strong)
    from_arrays = estimate_soundness(
        [np.array(row) for row in weak], [np.array(row) for row in strong]
    )
    assert from_arrays == from_lists
    # By hand: 6 candidates, weak passes 4, strong 1, both 1, weak only 3, strong only 0.
    assert (from_lists.true_positives, from_lists.false_positives) == (1, 3)
    assert from_lists.ceiling == pytest.approx(1 / 4)
    assert from_lists.false_positive_rate == pytest.approx(3 / 5)
    assert from_lists.per_problem_correct == (0.25, 0.0)
    assert from_lists.per_problem_false_positive == (0.5, 0.5)


def test_an_empty_numpy_row_is_named() -> None:
    with pytest.raises(ConfigError, match="problem 1 has no candidates"):
        estimate_soundness([np.array([True]), np.array([], dtype=bool)], [[True], []])
