"""Screenshots of the web page's two views on the shipped default, at 1280x800, both on a
held-out question whose draft the GLoRe default refines (so the strategies disagree).
`python -m tests.e2e.ui.screenshots` rewrites docs/img/ui-solve.png and docs/img/ui-compare.png;
the page's tests take the same shots into a temporary folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.support.browser import DESKTOP, chromium, open_tab
from tests.support.server import ROOT, start_server

SHIPPED = ROOT / "models" / "tiny"
# From models/tiny's test split: the ORM doubts the draft (which says 20), and both refinements
# reach the right answer, 8.
REFINED_QUESTION = (
    "Alice has 12 magnets and is given 2 magnets by Amelia. Gideon has 6 fewer magnets than "
    "Alice. How many magnets does he have left?"
)
README_QUESTION = (
    "Eli has 5 baskets, and each holds 6 bells. After that, Eli has twice as many bells as "
    "before. How many bells does he end up with?"
)
SOLVE_TIMEOUT_MS = 120_000


def ask(page: Page, question: str, **knobs: str) -> None:
    """Type a question and knobs (select or text fields, by their id) into the form."""
    page.fill("#question", question)
    for name, value in knobs.items():
        field = page.locator(f"#{name}")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def run(page: Page, button: str) -> None:
    """Click Solve or Compare, and wait until the page is done (its buttons are enabled again)."""
    page.click(f"#{button}")
    expect(page.locator("#solve")).to_be_enabled(timeout=SOLVE_TIMEOUT_MS)


def shoot(browser: Browser, url: str, out: Path) -> tuple[Path, Path]:
    """Both views at 1280x800 (the whole page, so nothing below the fold is left out)."""
    out.mkdir(parents=True, exist_ok=True)
    tab = open_tab(browser, DESKTOP)
    try:
        page = tab.page
        page.goto(f"{url}/ui")
        expect(page.locator("#strategy option")).not_to_have_count(0)
        ask(page, REFINED_QUESTION, seed="7")
        run(page, "solve")
        expect(page.locator("#solve-view")).to_be_visible()
        solve_png = out / "ui-solve.png"
        page.screenshot(path=str(solve_png), full_page=True)
        run(page, "compare")
        expect(page.locator("#compare-view")).to_be_visible()
        compare_png = out / "ui-compare.png"
        page.screenshot(path=str(compare_png), full_page=True)
    finally:
        tab.close()
    return solve_png, compare_png


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "img"
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with start_server(SHIPPED, env=env) as server, chromium() as browser:
        for path in shoot(browser, server.url, out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
