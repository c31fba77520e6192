"""The README's pictures, from the running demo (`make demo` first): the catalog page and one
model card in the marketplace's MLflow UI, in headless Chromium.

    python -m harness.screenshots [--model dev01.iris_classifier]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.browser import browser_page
from marketplace.config import load_config
from marketplace.external import ExternalStorage
from marketplace.layout import CATALOG_PAGE

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.screenshots", description=__doc__)
    parser.add_argument("--model", default="dev01.iris_classifier")
    args = parser.parse_args(argv)
    config = load_config()
    IMAGES.mkdir(parents=True, exist_ok=True)
    page_path = Path(ExternalStorage.of(config).storage.root) / CATALOG_PAGE
    with browser_page(1280, 540) as page:
        page.goto(page_path.as_uri())
        page.wait_for_selector("article.card")
        page.screenshot(path=str(IMAGES / "catalog-page.png"))
        page.fill("#q", "species")
        page.screenshot(path=str(IMAGES / "catalog-search.png"))
    with browser_page(1280, 1500) as page:
        page.goto(f"{config.marketplace.tracking_uri.rstrip('/')}/#/models/{args.model}")
        page.wait_for_selector("text=How to load it", timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(IMAGES / "model-card.png"))
    for name in ("catalog-page.png", "catalog-search.png", "model-card.png"):
        print(IMAGES / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
