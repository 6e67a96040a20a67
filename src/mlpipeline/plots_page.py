"""The page `dvc plots show` and `dvc plots diff` write, drawn offline.

DVC's own page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net, so the ROC,
calibration and confusion-matrix plots are blank offline. `.dvc/config` names this template
instead (`plots.html_template`): the three libraries inlined from the vl-convert-python
package (locked in uv.lock), and no `{scripts}` placeholder, so DVC adds no CDN tag.
It is committed, so `dvc plots show` draws in any clone, however its environment was made
(a generated, git-ignored copy failed with DVC's "HTML template has to contain
'{plot_divs}'" where `make setup` had not run); a test holds it equal to what the locked
package gives. After an update of vl-convert-python in uv.lock, write it again:

    python -m mlpipeline.plots_page            # writes .dvc/plots-offline.html
"""

import argparse
import re
from html.parser import HTMLParser
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

from mlpipeline.config import find_root

TEMPLATE_FILE = ".dvc/plots-offline.html"
# DVC's plot templates declare vega-lite v5 specs; the newest v5 that vl-convert bundles.
VEGA_LITE_VERSION = "5.21"


def offline_template(bundle: str, versions: str) -> str:
    """A DVC HTML template holding `bundle` (JavaScript that sets window.vegaEmbed)."""
    if re.search(r"</script|\{(plot_divs|scripts|refresh_tag)\}", bundle, re.IGNORECASE):
        raise ValueError("the vega bundle holds text that would end its <script> element "
                         "or a DVC placeholder; it cannot be inlined")
    # The bundle runs in a function of its own: its top-level names stay out of the page's
    # global scope, where DVC's plot scripts declare theirs.
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n{refresh_tag}\n"
        "<title>DVC plots</title>\n"
        f"<script>/* {versions}, inlined: this page loads nothing from another host */\n"
        f"(function () {{\n{bundle}\n}})();\n</script>\n"
        "<style>table { border-spacing: 15px; }</style>\n"
        "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n"
    )


class _Loads(HTMLParser):
    """Every URL that a page makes the browser load (scripts, styles, images, frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        loading = {"script": "src", "img": "src", "iframe": "src", "source": "src",
                   "embed": "src", "link": "href"}.get(tag)
        self.urls += [value for name, value in attrs if name == loading and value]


def other_hosts(page: str) -> list[str]:
    """The URLs on another host that an HTML page loads (empty: it draws offline)."""
    parser = _Loads()
    parser.feed(page)
    return [url for url in parser.urls if urlsplit(url).netloc]


def write_template(root: Path) -> Path:
    """Write the template into the project at `root` from the installed vl-convert-python."""
    path = root / TEMPLATE_FILE
    path.write_text(template_page(), encoding="utf-8")
    return path


def template_page() -> str:
    """The template, from the installed vl-convert-python (the same bytes every time)."""
    import vl_convert

    versions = (f"vega {vl_convert.get_vega_version()}, vega-lite {VEGA_LITE_VERSION}, "
                f"vega-embed {vl_convert.get_vega_embed_version()} "
                f"(vl-convert-python {version('vl-convert-python')})")
    # The globals DVC's plot scripts call (vegaEmbed), as vl-convert's default snippet sets.
    globals_snippet = ("window.vegaEmbed = vegaEmbed; window.vegaLite = vegaLite; "
                       "window.vega = vega;")
    bundle = vl_convert.javascript_bundle(globals_snippet, vl_version=VEGA_LITE_VERSION)
    return offline_template(bundle, versions)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    path = write_template(find_root())
    print(f"plots: wrote {path.relative_to(find_root())} (vega inlined; "
          "`dvc plots show` draws offline)")


if __name__ == "__main__":
    main()
