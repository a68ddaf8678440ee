"""report.html in a real browser: Debian's headless Chromium (installed by scripts/system-deps.sh) opens the page
a mixed-precision build wrote; it must render with no console error, no exception and no network request, with
its plots; a screenshot is kept in test-artifacts/."""

from __future__ import annotations

import json

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


def test_compare_page_of_three_builds_in_the_browser(tiny_bert, write_recipe, tmp_path, browser, run_cli):
    """`edgeq compare` of three builds (dynamic, static, mixed precision), each validated on this host and on the
    other x86 profile (emulated): Pareto plots and table, no console error, no request."""
    from conftest import base_recipe, host_device

    other = "x86-avx2" if host_device() != "x86-avx2" else "x86-avx512-vnni"
    targets = [host_device(), other]
    recipes = {
        "dynamic": base_recipe(str(tiny_bert), targets=targets),
        "static": base_recipe(
            str(tiny_bert),
            targets=targets,
            quantization={"mode": "static", "calibration": {"data": {"path": "data/calibration.txt"}, "samples": 16}},
        ),
        "mixed": {**mixed_recipe(tiny_bert, budget={"min_cosine_mean": 0.999}), "targets": targets},
    }
    builds = []
    for name, recipe in recipes.items():
        api.build(write_recipe(recipe, f"{name}.yaml"), output=tmp_path / name)
        builds.append(tmp_path / name)
    page = tmp_path / "compare.html"
    assert run_cli("compare", *builds, "--output", page).exit_code == 0
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "compare-pareto.png"
    seen = browser.open(
        page.as_uri(),
        screenshot=shot,
        expression="[document.querySelectorAll('svg.plot').length, document.querySelectorAll('svg.plot g.point').length,"
        " document.querySelectorAll('svg.plot text.front-label').length,"
        " document.querySelectorAll('svg.plot g.point[data-mode=emulated]').length,"
        " document.querySelectorAll('table tr').length]",
    )
    assert seen["console_errors"] == [] and seen["exceptions"] == []
    assert seen["requests"] == [page.as_uri()]
    plots, marks, front_labels, emulated, rows = seen["value"]
    # each target's front is labelled in every plot (a front of one point, the smallest being the most faithful,
    # draws no line: how many lines there are depends on the timings)
    assert plots >= 4 and marks >= plots * 6 and front_labels >= plots * 2 and emulated >= plots * 3
    assert rows - 1 == sum(len(json.loads((b / "report.json").read_text())["validations"]) for b in builds)
    assert shot.stat().st_size > 10_000
