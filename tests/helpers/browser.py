"""A headless Chromium driven through its DevTools protocol, for tests of what a user sees.

Debian's `chromium` (`apt-get install -y chromium fonts-dejavu-core`, what `.ci/run` installs)
runs as root with `--headless --no-sandbox --disable-gpu`; Playwright's and Selenium's
browser downloads cannot reach their hosts here, so this speaks the protocol itself over
one WebSocket (`websockets`, a Prefect dependency).
"""
from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Browser:
    """One headless Chromium with one page; `evaluate` runs JavaScript in the page (or in a frame)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        from websockets.sync.client import connect

        binary = chromium_path()
        if binary is None:
            raise RuntimeError("no chromium: apt-get install -y chromium fonts-dejavu-core")
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a profile used before keeps its last port there
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             # keep sandboxed iframes (MLflow's artifact preview) in the page's frame tree, readable by `frames`
             "--disable-site-isolation-trials", "--disable-features=IsolateSandboxedIframes,site-per-process",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            deadline = time.time() + 30
            while not (port_file.is_file() and port_file.read_text().strip()):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"chromium did not open its DevTools port (exit code {self.proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                page = next(t for t in json.loads(response.read()) if t["type"] == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        except BaseException:
            self._stop()
            raise
        self.ids = itertools.count(1)
        self.width, self.height = width, height
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """One protocol command; events arriving meanwhile are skipped."""
        call = next(self.ids)
        self.ws.send(json.dumps({"id": call, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.time(), 0.1)))
            if message.get("id") == call:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", 30)

    def evaluate(self, expression: str, context: int | None = None) -> Any:
        params: dict[str, Any] = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context is not None:
            params["contextId"] = context
        result = self.send("Runtime.evaluate", **params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, context: int | None = None) -> Any:
        """Poll `expression` until it is truthy; returns its value (JSON: write `!!el` for an element)."""
        deadline = time.time() + timeout
        while True:
            try:
                value = self.evaluate(expression, context)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.time() > deadline:
                raise AssertionError(f"not true within {timeout}s: {expression}")
            time.sleep(0.3)

    def frames(self) -> list[dict[str, Any]]:
        """Every frame of the page (`Page.getFrameTree`), the main one first."""
        out, todo = [], [self.send("Page.getFrameTree")["frameTree"]]
        while todo:
            node = todo.pop(0)
            out.append(node["frame"])
            todo += node.get("childFrames", [])
        return out

    def frame_context(self, frame_id: str) -> int:
        """An execution context inside a frame, whatever its origin (a sandboxed iframe too)."""
        return self.send("Page.createIsolatedWorld", frameId=frame_id, worldName="kdflow-test")["executionContextId"]

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self._stop()

    def _stop(self) -> None:
        """Chromium and its helper processes (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
