"""Open a page in Debian's headless Chromium and watch it through the DevTools protocol (over a pipe: no extra
package): console errors, uncaught exceptions, every network request, a value from the page, a screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _as_fds_3_and_4(read_end: int, write_end: int) -> None:
    """In the child: the DevTools pipe on fds 3 (Chromium reads) and 4 (Chromium writes), as it expects."""
    read_copy, write_copy = os.dup(read_end), os.dup(write_end)  # never clobber one with the other
    os.dup2(read_copy, 3)
    os.dup2(write_copy, 4)


class Browser:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="edgeq-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--disable-background-networking",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                "--window-size=1200,900",
                "about:blank",
            ],
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _as_fds_3_and_4(to_chrome_r, from_chrome_w),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.writer, self.reader = os.fdopen(to_chrome_w, "wb"), os.fdopen(from_chrome_r, "rb")
        self.next_id, self.events, self.buffer = 0, [], b""

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.writer.write(json.dumps(message).encode() + b"\0")
        self.writer.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found:
                return found
            self.events.append(self._read())
        raise TimeoutError(method)

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            chunk = os.read(self.reader.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str, screenshot: Path | None = None, expression: str | None = None) -> dict:
        """Load `url`; return console errors, exceptions, requests, the value of `expression` and page height."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        time.sleep(0.3)  # late console messages
        value = (
            self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)[
                "result"
            ].get("value")
            if expression
            else None
        )
        height = self.send(
            "Runtime.evaluate",
            {"expression": "document.documentElement.scrollHeight", "returnByValue": True},
            session=session,
        )["result"]["value"]
        if screenshot is not None:
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1200, "height": min(height, 12000), "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            shot = self.send("Page.captureScreenshot", {"format": "png"}, session=session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        mine = [e for e in self.events if e.get("sessionId") == session]
        errors = [
            e["params"]
            for e in mine
            if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error"
        ]
        errors += [
            e["params"]["entry"]
            for e in mine
            if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
        ]
        exceptions = [e["params"] for e in mine if e.get("method") == "Runtime.exceptionThrown"]
        requests = [e["params"]["request"]["url"] for e in mine if e.get("method") == "Network.requestWillBeSent"]
        return {
            "console_errors": errors,
            "exceptions": exceptions,
            "requests": requests,
            "value": value,
            "height": height,
        }

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
