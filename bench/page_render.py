"""Time each dashboard page's run at 1M logged requests: cold (empty st.cache_data) and rerun.

Fills a fresh database in an embedded PostgreSQL with `herd demo-traffic` data (N requests
over 14 days, rollups kept by their triggers, ANALYZE after), then runs every operator page
under Streamlit's AppTest as a logged-in admin: the page script as the dashboard runs it,
queries, figures and their serialization included, the browser's drawing left out. Each
round clears st.cache_data, times a run (cold: every query asked) and a second run of the
same session right after (warm, what a click costs); the table shows the median of
--rounds rounds. Each page's session runs once untimed first (AppTest's own start-up).

The pages count the demo's synthetic traffic ('Also count' on Monitoring and Retraining),
as an operator looking at demo data does, so the charts have data to draw.

    nice -n 10 python bench/page_render.py --requests 1000000
    nice -n 10 python bench/page_render.py --database herd_pages_1a2b3c4d   # reuse a fill

Before/after: run the same script with the code of another commit first on the path,
e.g. `git archive <commit> | tar -x -C /tmp/before` then
`PYTHONPATH=/tmp/before python bench/page_render.py --pages /tmp/before/pages --database ...`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
PAGES = (
    "overview.py",
    "models.py",
    "deployments.py",
    "routing.py",
    "rollouts.py",
    "batches.py",
    "monitoring.py",
    "feedback_review.py",
    "evaluation.py",
    "retraining.py",
    "users.py",
    "audit.py",
)
# The same pages over longer ranges than their defaults: (label, page, widget values).
WIDER = (
    ("monitoring.py, last week", "monitoring.py", {"mon_range": "Last week"}),
    ("monitoring.py, last 30 days", "monitoring.py", {"mon_range": "Last 30 days"}),
    ("retraining.py, last week", "retraining.py", {"rt_range": "Last week"}),
)
TARGET_S = 1.0
ADMIN = "bench-admin"
PASSWORD = "bench-password-1234"


def _fill(url: str, requests: int, days: float) -> None:
    from app.analytics.demo_traffic import generate_demo_traffic
    from app.db import migrate
    from app.db.engine import make_engine

    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        started = time.perf_counter()
        result = generate_demo_traffic(engine, requests, days, seed=0.42, now=datetime.now(UTC))
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
        print(
            f"filled {result.requests:,} requests, {result.feedback:,} feedback in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
    finally:
        engine.dispose()


def _add_admin(url: str) -> None:
    from app.control.accounts import AccountError, Accounts, Role
    from app.db.engine import make_engine

    engine = make_engine(url)
    try:
        with suppress(AccountError):  # a reused database has it already
            Accounts(engine).add(ADMIN, PASSWORD, Role.ADMIN)
    finally:
        engine.dispose()


def _page(pages: Path, name: str, widgets: dict[str, Any]) -> Any:
    from streamlit.testing.v1 import AppTest

    from app.analytics.traffic import TrafficClass
    from app.control.accounts import LoggedIn, Role

    app = AppTest.from_file(str(pages / name), default_timeout=300)
    app.session_state["herd_operator"] = LoggedIn(ADMIN, Role.ADMIN, time.time())
    for key in ("mon_classes", "rt_classes"):
        app.session_state[key] = [TrafficClass.SYNTHETIC]
    for key, value in widgets.items():
        app.session_state[key] = value
    return app


def _timed_run(app: Any) -> float:
    started = time.perf_counter()
    app.run()
    seconds = time.perf_counter() - started
    if app.exception:
        raise SystemExit(f"the page raised: {app.exception[0].message}")
    return seconds


def _time_pages(pages: Path, rounds: int) -> dict[str, tuple[float, float]]:
    import streamlit as st
    from streamlit import logger

    logger.set_log_level("error")  # bare mode warns on every run that it is bare

    times: dict[str, tuple[float, float]] = {}
    for name, page, widgets in [*((p, p, {}) for p in PAGES), *WIDER]:
        cold, warm = [], []
        # Untimed: a new AppTest's first run scans every installed package for Streamlit
        # components (about 0.25 s here), which a dashboard does once when it starts.
        app = _page(pages, page, widgets)
        _timed_run(app)
        for _ in range(rounds):
            # Cold: no cached query results, as after they expired; the engine and Settings
            # (cache_resource) stay, as in a dashboard process that has served a page before.
            st.cache_data.clear()
            cold.append(_timed_run(app))
            warm.append(_timed_run(app))
        times[name] = (statistics.median(cold), statistics.median(warm))
        print(f"{name}: cold {times[name][0]:.3f} s, rerun {times[name][1]:.3f} s", flush=True)
    return times


# The pages a person opens most, timed in a real browser with --browser.
BROWSER_PAGES = ("Overview", "Models", "Routing", "Monitoring", "Feedback review", "Retraining")
# Longer than the dashboard's cache keeps a result (app/ui/reads.py READ_TTL_S, 5 s).
COLD_WAIT_S = 6.0
# Counts the dashboard's script runs as the browser sees them (stApp's script state).
WATCH_RUNS_JS = """() => {
  window.benchRuns = 0;
  new MutationObserver((changes) => {
    for (const change of changes) {
      if (change.target.getAttribute("data-test-script-state") === "running") {
        window.benchRuns += 1;
      }
    }
  }).observe(document.body, {
    attributes: true, subtree: true, attributeFilter: ["data-test-script-state"],
  });
}"""
RUN_ENDED_JS = """(before) => window.benchRuns > before && document.querySelector(
  "[data-testid='stApp']").getAttribute("data-test-script-state") === "notRunning"
  && [...document.querySelectorAll("[data-testid='stPlotlyChart']")]
       .filter((chart) => chart.offsetParent !== null)
       .every((chart) => chart.querySelector(".main-svg") !== null)"""


# The page titled so is shown, its run has ended and its visible charts are drawn. (A run
# as short as the Users page's can end before the browser draws a "running" state.)
PAGE_SHOWN_JS = """(title) => [...document.querySelectorAll("h1")].some(
    (h) => h.textContent.trim() === title)
  && document.querySelector("[data-testid='stApp']").getAttribute("data-test-script-state")
     === "notRunning"
  && [...document.querySelectorAll("[data-testid='stPlotlyChart']")]
       .filter((chart) => chart.offsetParent !== null)
       .every((chart) => chart.querySelector(".main-svg") !== null)"""


def _open(page: Any, title: str) -> float:
    """Seconds from clicking a page's link to its run's end with its visible charts drawn."""
    started = time.perf_counter()
    page.get_by_role("link", name=title).click()
    page.wait_for_function(PAGE_SHOWN_JS, arg=title, timeout=120_000)
    return time.perf_counter() - started


def _pick(page: Any, label: str, option: str) -> float:
    """Seconds from picking an option of a selectbox or multiselect to the run's end."""
    before = page.evaluate("window.benchRuns")
    page.get_by_role("combobox", name=label).click()
    started = time.perf_counter()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(RUN_ENDED_JS, arg=before, timeout=120_000)
    seconds = time.perf_counter() - started
    page.keyboard.press("Escape")
    return seconds


def _time_range_changes(page: Any, title: str, rounds: int) -> tuple[float, float]:
    """Monitoring and Retraining over the demo's traffic ('Also count' synthetic): a change
    of range, cold (after COLD_WAIT_S) and warm (the same range again within seconds)."""
    _open(page, "Users")
    _open(page, title)
    _pick(page, "Also count", "synthetic traffic")
    cold, warm = [], []
    for _ in range(rounds):
        # Each pick changes the range (picking the range shown runs nothing).
        _pick(page, "Time range", "Last hour")
        time.sleep(COLD_WAIT_S)
        cold.append(_pick(page, "Time range", "Last week"))
        _pick(page, "Time range", "Last hour")
        warm.append(_pick(page, "Time range", "Last week"))
    return statistics.median(cold), statistics.median(warm)


def _time_browser(pages: Path, rounds: int) -> dict[str, tuple[float, float]]:
    import httpx
    from playwright.sync_api import sync_playwright

    port = 8600 + os.getpid() % 300
    tree = pages.parent
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(tree))}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(tree / "dashboard.py"),
         "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    times: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(240):
            with suppress(httpx.HTTPError):
                if httpx.get(f"{base}/_stcore/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base)
            page.get_by_role("textbox", name="Operator name").fill(ADMIN)
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=120_000)
            page.evaluate(WATCH_RUNS_JS)
            for title in BROWSER_PAGES:
                # Untimed: the first visit imports the page's modules. Every visit comes
                # from another page (a click on the page shown runs nothing).
                _open(page, "Users")
                _open(page, title)
                cold, warm = [], []
                for _ in range(rounds):
                    time.sleep(COLD_WAIT_S)
                    _open(page, "Users")
                    cold.append(_open(page, title))
                    _open(page, "Users")
                    warm.append(_open(page, title))
                times[title] = (statistics.median(cold), statistics.median(warm))
            for title in ("Monitoring", "Retraining"):
                label = f"{title}, range changed to last week (synthetic counted)"
                times[label] = _time_range_changes(page, title, rounds)
            for label, (cold_s, warm_s) in times.items():
                print(f"{label}: cold {cold_s:.3f} s, again {warm_s:.3f} s", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return times


def _report(times: dict[str, tuple[float, float]], rounds: int, rows: str) -> None:
    import app

    load = os.getloadavg()
    print(f"\nmachine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {rows}; "
          f"code: {Path(app.__file__).parent}")  # fmt: skip
    print(f"| page | first run, cold (s) | rerun, warm (s) | under {TARGET_S:g} s |")
    print("|---|---:|---:|---|")
    for name, (cold, warm) in times.items():
        verdict = "yes" if max(cold, warm) < TARGET_S else "missed"
        print(f"| {name} | {cold:.3f} | {warm:.3f} | {verdict} |")
    print(f"(median of {rounds} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--home", default="/tmp/h5-bench")
    parser.add_argument("--database", metavar="NAME", help="time a database filled before")
    parser.add_argument("--keep", action="store_true", help="keep the filled database")
    parser.add_argument("--pages", default=str(REPO / "pages"), help="the pages to run")
    parser.add_argument(
        "--browser",
        action="store_true",
        help="time BROWSER_PAGES in headless Chromium against a dashboard started from the "
        "folder above --pages, instead of every page under AppTest",
    )
    args = parser.parse_args()
    # The pages import app/ from the path: the checkout this script is in unless PYTHONPATH
    # names another (the before/after comparison).
    sys.path.append(str(REPO))
    from app.db.embedded import EmbeddedPostgres
    from app.db.engine import sqlalchemy_url

    home = Path(args.home)
    embedded = EmbeddedPostgres(home / "pgdata")
    server_url = embedded.start()
    admin = create_engine(sqlalchemy_url(server_url), isolation_level="AUTOCOMMIT")
    name = args.database or f"herd_pages_{uuid.uuid4().hex[:8]}"
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    drop = not (args.database or args.keep)
    try:
        if not args.database:
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            print(f"database: {name}", flush=True)
            _fill(url, args.requests, args.days)
        _add_admin(url)
        engine = create_engine(sqlalchemy_url(url))
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM requests")).scalar_one()
        engine.dispose()
        os.environ["HERD_DATABASE_URL"] = url
        os.environ["HERD_HOME"] = str(home / "herd-home")
        os.environ["HERD_MODELS_DIR"] = tempfile.mkdtemp(prefix="models-", dir=home)
        # Nothing listens there: pages that ask the gateway find none, at once.
        os.environ["HERD_GATEWAY_URL"] = "http://127.0.0.1:9"
        if args.browser:
            times = _time_browser(Path(args.pages), args.rounds)
        else:
            times = _time_pages(Path(args.pages), args.rounds)
        _report(times, args.rounds, f"{rows:,} requests")
    finally:
        if drop:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
        embedded.release()


if __name__ == "__main__":
    main()
