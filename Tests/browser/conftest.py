"""Fixtures for the dashboard's browser tests: a real meterd over a generated company, a small
live fleet of meters sending to it, and headless Chromium driven by Selenium with Debian's
chromedriver (no driver download: SE_OFFLINE=true).

Run through scripts/browser-tests.sh, which builds meterd, generates and imports the company and
sets METERD_BIN, METERD_DATA and ARTIFACTS.
"""

import datetime
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

os.environ.setdefault("SE_OFFLINE", "true")

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

METERD_BIN = os.environ.get("METERD_BIN", ".build/debug/meterd")
METERD_DATA = os.environ.get("METERD_DATA", "")
ARTIFACTS = os.path.abspath(os.environ.get("ARTIFACTS", "artifacts"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
# Meters the live fleet drives: the first customers' meters, so every region has live ones.
FLEET = ["MTR-%06d" % number for number in range(1, 41)]


class Meterd:
    """One meterd process on ephemeral ports over METERD_DATA; stopped by its pid."""

    def __init__(self, extra_args):
        if not METERD_DATA:
            pytest.fail("METERD_DATA is not set: run scripts/browser-tests.sh")
        self.data = METERD_DATA
        ports = os.path.join(self.data, "ports.json")
        if os.path.exists(ports):
            os.remove(ports)
        self.log = open(os.path.join(ARTIFACTS, "meterd-browser-tests.log"), "ab")
        # setpriv --pdeathsig: meterd dies with the test process, even if a time-out kills it.
        wrapper = ["/usr/bin/setpriv", "--pdeathsig", "KILL"] if os.path.exists("/usr/bin/setpriv") else []
        self.process = subprocess.Popen(
            wrapper + [METERD_BIN, "--data-dir", self.data, "--ingest", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--status-socket", os.path.join(self.data, "status.sock"), "--snapshot-interval", "3600"] + extra_args,
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            if self.process.poll() is not None:
                pytest.fail("meterd exited with %s; see %s" % (self.process.returncode, self.log.name))
            try:
                with open(ports) as handle:
                    found = json.load(handle)
                if "http" in found and "ingest" in found:
                    break
            except (OSError, ValueError):
                pass
            if time.time() > deadline:
                self.stop()
                pytest.fail("meterd did not write ports.json within 30 s")
            time.sleep(0.05)
        self.http = found["http"]
        self.ingest = found["ingest"]
        self.url = "http://127.0.0.1:%d" % self.http

    def api(self, path):
        """The parsed JSON answer of an API path (raises on an HTTP error)."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def api_error(self, path):
        try:
            urllib.request.urlopen(self.url + path, timeout=10)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)
        raise AssertionError("%s did not fail" % path)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Fleet(threading.Thread):
    """A few dozen meters on one connection (a data concentrator), a reading each per second with a
    few seconds of latency, some fair or poor, now and then a fault. Sequence numbers come from the
    clock, so a second meterd over the same database sees them as new."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stopping = threading.Event()
        self.sent = 0
        self.random = random.Random(7)

    def run(self):
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        reader = threading.Thread(target=self.drain, args=(connection,), daemon=True)
        reader.start()
        try:
            while not self.stopping.is_set():
                now = time.time()
                seq = int(now * 10)
                lines = []
                for meter in FLEET:
                    ts = datetime.datetime.fromtimestamp(now - self.random.uniform(0.5, 4.0), datetime.timezone.utc)
                    reading = {"meter": meter, "seq": seq, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ts.microsecond // 1000),
                               "kwh": round(self.random.uniform(0.05, 0.9), 4),
                               "status": self.random.choices(["good", "fair", "poor"], [0.7, 0.2, 0.1])[0], "v": 230.0}
                    if self.random.random() < 0.03:
                        reading["fault"] = "voltage_sag"
                    lines.append(json.dumps(reading))
                connection.sendall(("\n".join(lines) + "\n").encode())
                self.sent += len(lines)
                self.stopping.wait(1.0)
        finally:
            connection.close()

    @staticmethod
    def drain(connection):
        try:
            while connection.recv(65536):
                pass
        except OSError:
            pass

    def stop(self):
        self.stopping.set()
        self.join(timeout=5)


def start_daemon(extra_args):
    os.makedirs(ARTIFACTS, exist_ok=True)
    daemon = Meterd(extra_args)
    fleet = Fleet(daemon.ingest)
    fleet.start()
    # Wait until the fleet's meters count as active, so figures are steady during the tests.
    deadline = time.time() + 30
    while daemon.api("/api/meters/%s" % FLEET[-1])["state"] != "active":
        if time.time() > deadline:
            pytest.fail("the fleet's readings did not arrive")
        time.sleep(0.1)
    return daemon, fleet


@pytest.fixture(scope="module")
def meterd():
    """meterd serving Debian's Chart.js (the default path)."""
    daemon, fleet = start_daemon([])
    yield daemon
    fleet.stop()
    daemon.stop()


@pytest.fixture(scope="module")
def meterd_without_chartjs():
    """meterd pointed at a Chart.js that is not there: the dashboard's degraded mode."""
    daemon, fleet = start_daemon(["--dashboard-chartjs", "/nonexistent/chart.min.js"])
    yield daemon
    fleet.stop()
    daemon.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
                     "--lang=en-US", "--disable-extensions", "--no-first-run", "--hide-scrollbars"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


# ---- helpers used by the tests ----------------------------------------------------------------

def wait(driver, condition, timeout=20, message=""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message)


def wait_ready(driver, check="true", timeout=20):
    """Waits until the page has rendered data and a JS condition on window.meterd holds."""
    script = "return document.body.dataset.state === 'ready' && !!window.meterd && (%s);" % check
    wait(driver, lambda d: d.execute_script(script), timeout, "page not ready: " + check)


def open_page(driver, daemon, query="", check="true"):
    separator = "&" if query else ""
    driver.get(daemon.url + "/?animations=0&refresh=2" + separator + query)
    wait_ready(driver, check)


def shot(driver, name, full=False):
    """Saves a PNG into ARTIFACTS; `full` grows the window to the whole page first."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    size = driver.get_window_size()
    if full:
        height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
        driver.set_window_size(size["width"], min(max(height + 100, size["height"]), 8000))
        time.sleep(0.3)  # charts resize on the next animation frame
    path = os.path.join(ARTIFACTS, name)
    driver.save_screenshot(path)
    if full:
        driver.set_window_size(size["width"], size["height"])
    return path


def lookup(document, dotted):
    value = document
    for key in dotted.split("."):
        value = None if value is None else value.get(key)
    return value


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def shown_number(text):
    """The number in a figure as displayed ("$1,234.50", "551.0 kWh", "2.99 / 5")."""
    match = re.search(r"-?[\d,]+(\.\d+)?", text)
    return float(match.group(0).replace(",", "")) if match else None


def severe_console_messages(driver):
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
