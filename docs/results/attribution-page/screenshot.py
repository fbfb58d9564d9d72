"""Screenshot an attribution page in headless Chromium (issue 30; used by run.sh beside it).

python screenshot.py PAGE OUT.png [--sample B] [--step I] [--pixel Y,X] [--view V] [--highlight]

Opens PAGE from disk, picks sample row B, step I (1 = the last, clean step), pins pixel (y, x)
(default: the pixel whose top source carries the most weight), switches the map view, optionally
clicks the first listed source (highlight its pixels), and saves a 1440 x 900 screenshot. Prints
the page size and the time it took to open.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1440,900",
        "--force-device-scale-factor=1", "--hide-scrollbars")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("page")
    ap.add_argument("out")
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--step", type=int, default=1)
    ap.add_argument("--pixel", default=None)
    ap.add_argument("--view", default="denoised")
    ap.add_argument("--highlight", action="store_true")
    a = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="patchdb-shot-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ARGS + (f"--user-data-dir={profile}",):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # a 1440 x 900 laptop viewport
                               {"width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        start = time.perf_counter()
        driver.get(Path(a.page).resolve().as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready"))
        print(f"{a.page}: {Path(a.page).stat().st_size / 1e6:.2f} MB, opened in {time.perf_counter() - start:.2f} s")
        driver.execute_script(f"return patchdbPage.selectSample({a.sample})")
        row = driver.execute_script(f"return patchdbPage.data.steps.indexOf({a.step})")
        driver.execute_script(f"patchdbPage.setStep({row})")
        if a.pixel:
            y, x = (int(v) for v in a.pixel.split(","))
            p = y * driver.execute_script("return patchdbPage.data.W") + x
        else:
            p = driver.execute_script("""
                const D = patchdbPage.data, P = D.H * D.W; let best = 0, bw = -1;
                for (let p = 0; p < P; p++) { patchdbPage.state.px = p;
                  const e = patchdbPage.sources(); if (e.length && e[0].weight > bw) { bw = e[0].weight; best = p; } }
                return best;""")
        driver.execute_script(f"patchdbPage.setPixel({p}, true)")
        if a.view != "denoised":
            driver.find_element("css selector", f"input[value={a.view}]").click()
        if a.highlight:
            driver.find_element("css selector", "#sources li button").click()
        time.sleep(0.3)
        driver.save_screenshot(a.out)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
