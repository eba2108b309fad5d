"""The report page in a real headless Chromium (Debian's ``chromium``).

The browser is driven over the DevTools protocol (a websocket, the
``websocket-client`` package): the page is opened from disk, text is typed
into the filter box with real input events, a broken class is clicked, and
console errors, uncaught exceptions and JavaScript dialogs are collected.
``scripts/install-test-deps.sh`` installs the browser; without
``/usr/bin/chromium`` these tests are skipped, saying so.

``python tests/test_report_browser.py docs/report.png`` writes the
screenshot the README shows (the demo database, 1280 pixels wide).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("PCLASSES_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*"]
START_TIMEOUT = 60.0

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: run scripts/install-test-deps.sh (Debian's chromium)")


class Browser:
    """One headless Chromium process and a DevTools session on its page."""

    def __init__(self) -> None:
        import websocket

        self.profile = tempfile.mkdtemp(prefix="pclasses-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages: list[dict[str, Any]] = []
        while not pages:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if not pages:
                time.sleep(0.05)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})  # type: ignore[no-any-return]
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == "Page.javascriptDialogOpening":
                    self.ws.send(json.dumps({"id": 10**9, "method": "Page.handleJavaScriptDialog",
                                             "params": {"accept": True}}))

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e["method"] == event:
                    self.events.remove(e)
                    return e
            self.call("Runtime.evaluate", expression="0")  # pumps events
            time.sleep(0.02)
        raise TimeoutError(event)

    def open(self, path: Path, width: int = 1280, height: int = 900) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def type_into(self, selector: str, text: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        for ch in text:  # one key at a time, as a person types
            self.call("Input.dispatchKeyEvent", type="keyDown", text=ch, key=ch)
            self.call("Input.dispatchKeyEvent", type="keyUp", key=ch)

    def click(self, selector: str) -> None:
        box = self.js(f"""(() => {{const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: "center"}}); const r = e.getBoundingClientRect();
            return [r.left + Math.min(20, r.width / 2), r.top + r.height / 2];}})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, dialogs and blocked loads seen so far."""
        self.call("Runtime.evaluate", expression="0")
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p.get('message')}")
        return out

    def screenshot(self, path: Path) -> None:
        height = self.js("document.documentElement.scrollHeight")
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=int(height),
                  deviceScaleFactor=1, mobile=False)
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("websocket", reason="websocket-client is not installed (test extra)")
    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory):
    """The page of the demo database, written by the real command."""
    from test_report import demo_fs

    directory = tmp_path_factory.mktemp("report")
    path = demo_fs(directory)
    out = directory / "report.html"
    done = subprocess.run([sys.executable, "-m", "pclasses.cli", "report", str(path), "-o",
                           str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


def _fresh(browser: Browser, page: Path) -> None:
    browser.events.clear()
    browser.open(page)


@needs_chromium
def test_page_loads_without_console_errors(browser, demo_page):
    """The page opens from disk with no console error, exception or blocked load."""
    page, _data = demo_page
    _fresh(browser, page)
    assert browser.js("document.readyState") == "complete"
    assert browser.js("document.querySelectorAll('#classes-table tbody tr').length") > 0
    assert browser.problems() == []


@needs_chromium
def test_summary_shows_the_counts(browser, demo_page):
    """The summary a person sees gives the records and broken classes of the data."""
    page, data = demo_page
    _fresh(browser, page)
    text = browser.js("document.getElementById('summary').innerText")
    s = data["summary"]
    assert f"{s['records']} records" in text
    assert f"{s['broken_classes']} broken classes" in text
    for name in s["broken_class_names"]:
        assert name in text
    figures = browser.js("""Object.fromEntries([...document.querySelectorAll('[data-figure]')]
        .map(d => [d.dataset.figure, d.querySelector('dd').innerText]))""")
    assert figures["records"] == str(s["records"])
    assert figures["broken classes"] == str(s["broken_classes"])


@needs_chromium
def test_typing_in_the_filter_leaves_the_matching_rows(browser, demo_page):
    """Typing part of a name leaves exactly the classes whose name holds it;
    clearing the box shows every row again."""
    page, data = demo_page
    _fresh(browser, page)
    visible = "[...document.querySelectorAll('#classes-table tbody tr')].filter(r => " \
              "!r.hidden).map(r => r.dataset.name)"
    every = sorted(f"{c['module']}.{c['name']}" for c in data["databases"][0]["classes"])
    assert sorted(browser.js(visible)) == every
    browser.type_into("#filter", "Legacy")
    assert browser.js(visible) == ["legacy_shop.Product"]
    assert browser.js("document.getElementById('shown').innerText") == \
        f"1 of {len(every)} classes shown"
    browser.js("const f = document.getElementById('filter'); f.value = '';"
               "f.dispatchEvent(new Event('input'))")
    browser.type_into("#filter", "demo_models")
    assert sorted(browser.js(visible)) == [n for n in every if "demo_models" in n]
    assert browser.problems() == []


@needs_chromium
def test_sorting_by_records(browser, demo_page):
    """Clicking the records header sorts the rows by their count, largest first."""
    page, _data = demo_page
    _fresh(browser, page)
    browser.click("#classes-table th:nth-child(2)")
    counts = browser.js("[...document.querySelectorAll('#classes-table tbody tr')]"
                        ".map(r => Number(r.cells[1].dataset.sort))")
    assert counts == sorted(counts, reverse=True)


@needs_chromium
def test_a_broken_class_expands_to_its_paths(browser, demo_page):
    """Clicking a broken class opens it: its example oids and their paths from
    the root become visible."""
    page, data = demo_page
    _fresh(browser, page)
    selector = 'details.broken-class[data-name="legacy_shop.Product"]'
    assert browser.js(f"document.querySelector('{selector}').open") is False
    browser.click(f"{selector} > summary")
    assert browser.js(f"document.querySelector('{selector}').open") is True
    shown = browser.js(f"document.querySelector('{selector} ul').innerText")
    broken = {f"{b['module']}.{b['name']}": b for b in data["databases"][0]["broken_classes"]}
    for example in broken["legacy_shop.Product"]["examples"]:
        assert example["oid"] in shown and example["path"] in shown
    assert browser.js(f"document.querySelector('{selector} ul').offsetHeight") > 0


@needs_chromium
def test_hostile_names_stay_text_in_the_browser(browser, tmp_path):
    """A class name made of HTML and script shows as text: no dialog opens,
    no element of it exists, no error is logged."""
    from test_report import HOSTILE, write_objects

    path = tmp_path / "h.fs"
    write_objects(path, {HOSTILE: 2})
    out = tmp_path / "r.html"
    done = subprocess.run([sys.executable, "-m", "pclasses.cli", "report", str(path), "-o",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _fresh(browser, out)
    browser.click("details.broken-class > summary")
    assert browser.js("document.querySelectorAll('img').length") == 0
    assert browser.js("document.scripts.length") == 1
    assert HOSTILE in browser.js("document.getElementById('summary').innerText")
    browser.type_into("#filter", "<img")
    assert browser.js("[...document.querySelectorAll('#classes-table tbody tr')]"
                      ".filter(r => !r.hidden).length") == 1
    assert browser.problems() == []


@needs_chromium
def test_multi_database_drawing(browser, tmp_path):
    """The drawing of a multi-database shows both databases and a dashed
    (dangling) edge labelled with its counts."""
    from test_report import write_multi

    conf, _ = write_multi(tmp_path / "multi")
    out = tmp_path / "r.html"
    done = subprocess.run([sys.executable, "-m", "pclasses.cli", "report", str(conf), "-o",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _fresh(browser, out)
    nodes = browser.js("[...document.querySelectorAll('#db-drawing .node')]"
                       ".map(n => n.dataset.db).sort()")
    assert nodes == ["catalog", "main"]
    label = browser.js("document.querySelector('#db-drawing .edge.dangling text').textContent")
    assert label == "3 (1 dangling)"
    dash = browser.js("getComputedStyle(document.querySelector("
                      "'#db-drawing .edge.dangling path')).strokeDasharray")
    assert dash not in ("", "none")
    assert browser.problems() == []


def _page(target: Path, tmp: str, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "pclasses.cli", "report", str(target), "-o",
                    str(out)], check=True, stdout=subprocess.DEVNULL)
    out.write_text(out.read_text(encoding="utf-8").replace(tmp, "var"), encoding="utf-8")


def main(argv: list[str]) -> int:
    """Write the screenshots: the demo database's page (1280 px wide) and,
    beside it (``-tree``), the drawing of the demo's tree of databases."""
    sys.path.insert(0, str(Path(__file__).parent))
    from pclasses.demo import _tree
    from test_report import demo_fs

    target = Path(argv[0]) if argv else Path("docs/report.png")
    with tempfile.TemporaryDirectory() as tmp:
        page, tree_page = Path(tmp) / "report.html", Path(tmp) / "tree.html"
        _page(demo_fs(Path(tmp)), tmp, page)
        _tree(Path(tmp))
        _page(Path(tmp) / "tree" / "main.fs", tmp, tree_page)
        b = Browser()
        try:
            b.open(page)
            b.click('details.broken-class[data-name="legacy_shop.Product"] > summary')
            b.screenshot(target)
            b.open(tree_page)
            b.js("document.getElementById('dangling').open = true")
            b.call("Emulation.setDeviceMetricsOverride", width=1280, deviceScaleFactor=1,
                   height=int(b.js("document.documentElement.scrollHeight")), mobile=False)
            top = b.js("document.getElementById('databases').getBoundingClientRect().top "
                       "+ scrollY")
            height = b.js("document.getElementById('databases').offsetHeight")
            shot = b.call("Page.captureScreenshot", format="png",
                          clip={"x": 0, "y": top - 8, "width": 1280, "height": height + 16,
                                "scale": 1})
            tree_png = target.with_name(target.stem + "-tree.png")
            tree_png.write_bytes(base64.b64decode(shot["data"]))
        finally:
            b.close()
    print(f"wrote {target} and {tree_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
