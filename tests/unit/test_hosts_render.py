"""How `distsvc hosts` words a measurement's age."""

from __future__ import annotations

import pytest

from distsvc.commands.hosts import _age


@pytest.mark.parametrize("seconds,shown", [
    (None, "-"), (0.0, "0 s ago"), (-0.0, "0 s ago"), (-0.4, "0 s ago"), (-0.9, "0 s ago"),
    (0.4, "0 s ago"), (12.6, "13 s ago"), (-1.0, "1 s ahead (clock changed?)"),
    (-30.2, "30 s ahead (clock changed?)"),
])
def test_age_is_never_negative_zero_and_a_clock_that_went_back_is_said(seconds, shown):
    assert _age(seconds) == shown
