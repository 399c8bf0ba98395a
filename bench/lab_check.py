"""Drive JupyterLab in headless Chromium: open and save stage notebooks, run them, screenshot a cell.

The check behind "opening a notebook in JupyterLab and saving it leaves `git status` clean" and the
recipe-cell screenshots in docs/screenshots/. Playwright and Chromium are not project dependencies:

    apt-get install chromium                      # Debian's build: /usr/bin/chromium
    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    make lab LAB_PORT=8899                        # or: jupyter lab --IdentityProvider.token=TOKEN ...
    /tmp/pw/bin/python bench/lab_check.py --token TOKEN --open-save notebooks/01_curate.ipynb && git status
    /tmp/pw/bin/python bench/lab_check.py --token TOKEN --run notebooks/01_curate.ipynb && git add notebooks
    /tmp/pw/bin/python bench/lab_check.py --token TOKEN \\
        --shot "reports/demo/notebooks/03_finetune.ipynb::the recipe as TRL and peft hold it::03.png"

Paths are relative to the lab's root folder. Set the notebook setting windowingMode to "none" so every cell is in
the page (a user settings file under --LabApp.user_settings_dir), else cells off screen are not found.
"""

from __future__ import annotations

import argparse
import time

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no connections to Google's hosts (refused on a closed network)
    "--disable-component-update",
    "--disable-sync",
]


def open_notebook(page, base: str, token: str, path: str) -> None:
    page.goto(f"{base}/lab/tree/{path}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    time.sleep(8)  # the kernel starts and the notebook settles


def run_all(page, timeout: float) -> list[str]:
    """Run > Run All Cells, then wait until no cell is busy and the last one has run; the input prompts."""
    page.click(".jp-Notebook")
    page.click("text=Run", timeout=10_000)
    page.click("text=Run All Cells", timeout=10_000)
    t0, prompts = time.time(), []
    time.sleep(5)
    while time.time() - t0 < timeout:
        prompts = page.eval_on_selector_all(".jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent)")
        if prompts and not any("*" in p for p in prompts) and prompts[-1].strip() not in ("[ ]:", ""):
            break
        time.sleep(5)
    return prompts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", default="8899")
    p.add_argument("--token", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--open-save", nargs="*", default=[], help="notebooks to open and save untouched")
    p.add_argument("--run", nargs="*", default=[], help="notebooks to run top to bottom and save")
    p.add_argument("--shot", nargs="*", default=[], help="NOTEBOOK::TEXT IN THE CELL::PNG")
    p.add_argument("--timeout", type=float, default=1800, help="seconds a --run may take")
    a = p.parse_args()
    base = f"http://127.0.0.1:{a.port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2000})
        for path in a.open_save:
            open_notebook(page, base, a.token, path)
            page.keyboard.press("Control+s")
            time.sleep(3)
            print("opened and saved", path, flush=True)
        for path in a.run:
            open_notebook(page, base, a.token, path)
            t0 = time.time()
            prompts = run_all(page, a.timeout)
            page.keyboard.press("Control+s")
            time.sleep(3)
            print(f"ran {path} in {time.time() - t0:.0f} s: prompts {prompts[:2]} ... {prompts[-2:]}", flush=True)
        for spec in a.shot:
            path, text, out = spec.split("::")
            open_notebook(page, base, a.token, path)
            cell = page.locator(".jp-Cell", has_text=text).first
            cell.scroll_into_view_if_needed()
            time.sleep(1)
            cell.screenshot(path=out)
            print("screenshot", out, flush=True)
        browser.close()


if __name__ == "__main__":
    main()
