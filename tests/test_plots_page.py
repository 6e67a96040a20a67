"""The offline page template of `dvc plots` (pure functions; the real `dvc plots show` and
`dvc plots diff` run in test_pipeline.py)."""

import subprocess

import pytest
from dvc_render.html import HTML

from mlpipeline.plots_page import TEMPLATE_FILE, offline_template, other_hosts, template_page
from tests.conftest import REPO


def test_the_template_inlines_the_bundle_and_dvc_fills_it_without_a_cdn_tag() -> None:
    template = offline_template("window.vegaEmbed = function () {};", "vega test")
    page = HTML(template).with_scripts('<script src="https://cdn.jsdelivr.net/npm/vega">'
                                       "</script>").with_element("<div id='roc'></div>").embed()
    # DVC hands every renderer's CDN tags to a {scripts} placeholder the template lacks.
    assert other_hosts(page) == [] and "cdn.jsdelivr" not in page
    assert page.index("window.vegaEmbed") < page.index("<div id='roc'>")
    assert "{refresh_tag}" not in page


@pytest.mark.parametrize("bundle", ["var s = '</script>';", "x = '{plot_divs}';"])
def test_a_bundle_that_would_break_the_page_is_refused(bundle: str) -> None:
    with pytest.raises(ValueError, match="cannot be inlined"):
        offline_template(bundle, "vega test")


def test_other_hosts_lists_what_a_page_loads_from_elsewhere_not_its_links() -> None:
    page = ('<link rel="stylesheet" href="//fonts.example.org/a.css">'
            '<script src="/local.js"></script><img src="https://cdn.example.com/logo.svg">'
            '<a href="https://vega.github.io/editor">open in the editor</a>')
    assert other_hosts(page) == ["//fonts.example.org/a.css", "https://cdn.example.com/logo.svg"]


def test_the_template_is_in_the_repository_and_matches_the_locked_package() -> None:
    """A clone set up without `make setup` failed `dvc plots show` ("HTML template has to
    contain '{plot_divs}'"): .dvc/config named a generated, git-ignored file. It is committed
    now, and this holds it to what the locked vl-convert-python gives."""
    ignored = subprocess.run(["git", "check-ignore", "-q", TEMPLATE_FILE], cwd=REPO)
    assert ignored.returncode == 1, f"{TEMPLATE_FILE} is git-ignored"
    committed = (REPO / TEMPLATE_FILE).read_text(encoding="utf-8")
    assert committed == template_page(), (
        f"{TEMPLATE_FILE} is stale: run `python -m mlpipeline.plots_page` and commit it")
    assert other_hosts(committed) == [] and "{plot_divs}" in committed
