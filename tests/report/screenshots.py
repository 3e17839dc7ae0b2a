"""Screenshots of report pages for the README, taken with the tests' headless Chromium.

    python -m tests.report.screenshots demo=RUN_DIR decode=RUN_DIR online=RUN_DIR diagnose=RUN_DIR [--out docs]

Each run folder's report.html is written again from its files, opened 1400 px wide, and its top 1600 px saved as
``OUT/report_NAME.png`` (a 256-colour PNG, to stay under 300 KB).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from alignlab.report.html import write_report
from tests.report.browser import Page, find_chromium

WIDTH, HEIGHT, MAX_BYTES = 1400, 1600, 300_000


def shrink(source: Path, target: Path) -> int:
    """`source` as a 256-colour PNG at `target` (fewer colours until it fits `MAX_BYTES`); its size in bytes."""
    image = Image.open(source).convert("RGB")
    for colors in (256, 128, 64, 32):
        image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
        if target.stat().st_size <= MAX_BYTES:
            break
    return target.stat().st_size


def shoot(run_dir: Path, target: Path) -> int:
    """Write `run_dir`'s page again, screenshot its top, save it shrunk at `target`; the PNG's size."""
    page_path = write_report(run_dir)
    page = Page(find_chromium())
    try:
        page.viewport(WIDTH, HEIGHT)
        page.open(page_path)
        errors = page.console_errors()
        if errors:
            raise RuntimeError(f"{page_path}: {errors}")
        with tempfile.TemporaryDirectory() as folder:
            raw = Path(folder) / "raw.png"
            page.screenshot(raw, WIDTH, HEIGHT)
            return shrink(raw, target)
    finally:
        page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR: the page of RUN_DIR saved as report_NAME.png")
    parser.add_argument("--out", default="docs", help="folder of the PNGs (default docs)")
    args = parser.parse_args()
    for item in args.runs:
        name, _, folder = item.partition("=")
        target = Path(args.out) / f"report_{name}.png"
        print(f"{target}: {shoot(Path(folder), target) / 1000:.0f} KB")


if __name__ == "__main__":
    main()
