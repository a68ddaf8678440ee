"""report.html in a real browser: Debian's headless Chromium (installed by scripts/system-deps.sh) opens the page
a mixed-precision build wrote; it must render with no console error, no exception and no network request, with
its plots; a screenshot is kept in test-artifacts/."""

from __future__ import annotations

import pytest
from browser import CHROMIUM, Browser
from conftest import ROOT
from test_mixed_precision import mixed_recipe

from edgeq import api

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it as root)")
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    opened = Browser()
    yield opened
    opened.close()


def test_report_renders_with_plots_and_no_network(tiny_bert, write_recipe, tmp_path, browser):
    out = tmp_path / "out"
    api.build(write_recipe(mixed_recipe(tiny_bert, budget={"min_cosine_mean": 0.999})), output=out)
    page = out / "report.html"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-mixed-precision.png"
    seen = browser.open(
        page.as_uri(),
        screenshot=shot,
        expression="[...document.querySelectorAll('h2')].map(h => h.textContent)"
        ".concat([String(document.querySelectorAll('svg.plot circle, svg.plot rect').length)])",
    )
    assert seen["console_errors"] == [] and seen["exceptions"] == []
    assert seen["requests"] == [page.as_uri()]  # the page itself, nothing else
    *headings, marks = seen["value"]
    for heading in (
        "Verdict per target",
        "Trade-off: size against fidelity",
        "Islands: sensitivity and the precision chosen",
        "Fidelity per shape",
        "Latency per device",
        "Placement and fallbacks",
        "Environment and mode",
    ):
        assert heading in headings
    assert int(marks) >= 10  # points and bars drawn
    assert shot.stat().st_size > 10_000


def test_the_browser_check_catches_errors_and_requests(tmp_path, browser):
    """The harness can fail: a page with a console error and two fetches is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><script>console.error('boom'); fetch('http://127.0.0.1:9/x')</script>"
        "<img src='http://127.0.0.1:9/a.png'></body></html>"
    )
    seen = browser.open(page.as_uri())
    assert any(e.get("args", [{}])[0].get("value") == "boom" for e in seen["console_errors"])
    assert len(seen["requests"]) == 3
