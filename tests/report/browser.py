"""A headless Chromium driven over the DevTools protocol on a pipe (no extra package): open a page, collect its
console messages, exceptions and network requests, evaluate JavaScript, take a screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


class Page:
    """One page in a fresh headless browser (its own profile, no background networking)."""

    def __init__(self, binary: str) -> None:
        commands_read, self.commands = os.pipe()
        self.replies, replies_write = os.pipe()

        def on_pipes() -> None:  # the browser reads commands on fd 3 and answers on fd 4
            os.dup2(commands_read, 3)
            os.dup2(replies_write, 4)

        self.profile = tempfile.mkdtemp(prefix="alignlab-chromium-")
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             "--disable-extensions", "--disable-sync", f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=on_pipes, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(commands_read)
        os.close(replies_write)
        self.buffer, self.last_id, self.events = b"", 0, []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Network", "Log", "Page"):
            self.send(f"{domain}.enable", session=True)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            for reply in self._read():
                if reply.get("id") == self.last_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                self.events.append(reply)
        raise TimeoutError(method)

    def _read(self) -> list[dict]:
        chunk = os.read(self.replies, 1 << 20)
        if not chunk:
            raise RuntimeError("the browser exited: " + self.process.stderr.read().decode(errors="replace")[-2000:])
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]

    def open(self, path: Path, settle: float = 1.0) -> None:
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
        deadline = time.time() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events) and time.time() < deadline:
            self.evaluate("1")
        time.sleep(settle)
        self.evaluate("1")  # collect what arrived meanwhile

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def viewport(self, width: int = 1400, height: int = 2200) -> None:
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                          "mobile": False}, session=True)

    def screenshot(self, path: Path, width: int = 1400, height: int = 2200) -> None:
        """A PNG of the page's top `height` pixels at `width` wide."""
        self.viewport(width, height)
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(str(params["entry"].get("text")))
        return errors

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.commands)
        os.close(self.replies)
        shutil.rmtree(self.profile, ignore_errors=True)


def check_report(path: Path, screenshot: Path) -> dict:
    """Open a report in headless Chromium; what a test asserts on: console errors, requests other than the page
    itself, the frontier's points, the samples table's rows and pager, a screenshot (written to `screenshot`)."""
    binary = find_chromium()
    page = Page(binary)
    try:
        page.open(path)
        facts = {
            "errors": page.console_errors(),
            "other_requests": [url for url in page.requests()  # data: pictures are inline, not requests
                               if url != path.resolve().as_uri() and not url.startswith("data:")],
            "frontier_points": page.evaluate("document.querySelectorAll('#frontier .point').length"),
            "table_rows": page.evaluate("document.querySelectorAll('#sample-body tr').length"),
            "page_info": page.evaluate("(document.getElementById('page-info')||{}).textContent || ''"),
            "curves": page.evaluate("document.querySelectorAll('#curves svg').length"),
            "markup_in_table": page.evaluate("document.querySelectorAll('#sample-body b').length"),
        }
        if facts["table_rows"]:
            facts["after_search"] = page.evaluate(
                "(function(){var s=document.getElementById('search'); s.value='zzz-no-such-text';"
                "s.dispatchEvent(new Event('input')); return document.querySelectorAll('#sample-body tr').length;})()")
            page.evaluate("(function(){var s=document.getElementById('search'); s.value='';"
                          "s.dispatchEvent(new Event('input'));})()")
        page.screenshot(screenshot)
        facts["errors"] = page.console_errors()
    finally:
        page.close()
    return facts


LABEL_BOXES = """JSON.stringify((function(){
  var svg=document.getElementById('frontier'), r=svg.getBoundingClientRect();
  return {svg:[r.left,r.top,r.right,r.bottom], labels:Array.prototype.map.call(svg.querySelectorAll('text.label'),
    function(t){var b=t.getBoundingClientRect();return {text:t.textContent,box:[b.left,b.top,b.right,b.bottom]};})};
})())"""


def frontier_label_boxes(path: Path, width: int = 1400) -> dict:
    """The frontier's SVG box and each of its labels' text and box ([left, top, right, bottom], from
    getBoundingClientRect) in a page `width` pixels wide; with any console errors."""
    page = Page(find_chromium())
    try:
        page.viewport(width, 1200)
        page.open(path, settle=0.3)
        facts = json.loads(page.evaluate(LABEL_BOXES))
        facts["errors"] = page.console_errors()
    finally:
        page.close()
    return facts
