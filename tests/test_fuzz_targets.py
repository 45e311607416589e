"""The fuzz targets of ``make fuzz`` (``fuzz/targets.py``), driven by Hypothesis in every test run.

atheris explores them for longer, guided by coverage; here each gets a bounded campaign of text
and of raw bytes read the way the atheris runner reads them (UTF-8 with surrogate escapes, so lone
surrogates and control characters come in too), plus the inputs atheris found once.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS

TEXT = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(alphabet=st.characters(categories=["Nd", "Zs", "Cc", "Cf", "Pd"]), max_size=30),
    st.from_regex(r"[ 0-9\-]{0,30}", fullmatch=True),
    st.emails().map(str),
)
CAMPAIGN = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(TARGETS))
@CAMPAIGN
@given(text=TEXT)
@example(text="\udcf0")  # atheris, on the token target: a lone surrogate in a link
@example(text="8025000002 123 456 789 01")
@example(text="١٢٣٤")
def test_target(name: str, text: str) -> None:
    check: Callable[[str], None] = TARGETS[name]
    check(text)
