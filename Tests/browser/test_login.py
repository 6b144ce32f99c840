"""Logging in to the dashboard (SPEC.md section 10): a region-scoped viewer sees only their region
in every section, drill-down and CSV export, and the server refuses them any other region's data;
a wrong password shows the form again. meterd runs with http_users made by `meterctl user add`."""

import csv
import glob
import http.cookiejar
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from conftest import ARTIFACTS, FLEET, METERD_BIN, Fleet, Meterd, open_page, severe_console_messages, shot, wait, wait_ready
from test_dashboard import COLLECT_TABLE, PERIOD, YEAR, check_charts, check_figures, check_tables, kpi_loaded

PASSWORD = "north only, please"
REGION = "North"
# Tables in the dashboard's sections with a Region column, and that column's index.
REGION_COLUMNS = {"consumption_by_region": 0, "top_consumers": 2, "revenue_by_region": 0, "inactive_meters": 2}


class Client:
    """An HTTP client with its own cookie jar, logged in as one user (urllib, not the browser)."""

    def __init__(self, daemon, user, password):
        self.daemon = daemon
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        body = urllib.parse.urlencode({"username": user, "password": password}).encode()
        with self.opener.open(daemon.url + "/login", data=body, timeout=10) as response:
            assert response.geturl() == daemon.url + "/", "login as %s did not reach the dashboard" % user

    def api(self, path):
        with self.opener.open(self.daemon.url + path, timeout=10) as response:
            return json.load(response)

    def status(self, path):
        try:
            with self.opener.open(self.daemon.url + path, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code


@pytest.fixture(scope="module")
def secured():
    """meterd with an admin and a viewer of North, and the live fleet sending to it."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    users = os.path.join(ARTIFACTS, "browser-users")
    if os.path.exists(users):
        os.remove(users)
    meterctl = os.path.join(os.path.dirname(METERD_BIN), "meterctl")
    for name, arguments, password in [("north-viewer", ["--scope", REGION], PASSWORD), ("admin", ["--role", "admin"], "admin password")]:
        subprocess.run([meterctl, "user", "add", name, "--file", users, "--cost", "4"] + arguments,
                       input=password + "\n", text=True, check=True, capture_output=True)
    daemon = Meterd(["--http-users", users])
    fleet = Fleet(daemon.ingest)
    fleet.start()
    admin = Client(daemon, "admin", "admin password")
    deadline = time.time() + 30
    while admin.api("/api/meters/%s" % FLEET[-1])["state"] != "active":
        if time.time() > deadline:
            pytest.fail("the fleet's readings did not arrive")
        time.sleep(0.1)
    daemon.admin = admin
    yield daemon
    fleet.stop()
    daemon.stop()


def log_in(browser, daemon, user, password):
    browser.delete_all_cookies()
    browser.get(daemon.url + "/")
    wait(browser, lambda d: d.current_url == daemon.url + "/login", 10, "not sent to the login form")
    browser.find_element(By.ID, "username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "login-submit").click()


def browser_status(browser, path):
    """The status the page's own fetch gets for an API path (with the browser's session cookie)."""
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => done(r.status), () => done(0));", path)


def without_time(document):
    return {key: value for key, value in document.items() if key != "generated_at"}


def test_a_region_scoped_viewer_sees_only_their_region_in_every_section_and_export(browser, secured):
    log_in(browser, secured, "north-viewer", PASSWORD)
    wait_ready(browser, "window.meterd.session && window.meterd.session.user === 'north-viewer'")
    assert browser.current_url.startswith(secured.url + "/")
    browser.get_log("browser")  # start the console check from here

    # The dashboard over last year, as this user: the document is North's, exactly what an admin
    # gets when asking for North, and every figure, table and chart on the page shows it.
    open_page(browser, secured, PERIOD, kpi_loaded("window.meterd.kpi.period.from === '%d-01'" % YEAR))
    viewer = Client(secured, "north-viewer", PASSWORD)
    document = viewer.api("/api/kpi?" + PERIOD)
    assert document["region"] == REGION
    assert without_time(document) == without_time(secured.admin.api("/api/kpi?%s&region=%s" % (PERIOD, REGION)))
    assert without_time(browser.execute_script("return window.meterd.kpi")) == without_time(document)
    assert document["total_customers"] < secured.admin.api("/api/kpi?" + PERIOD)["total_customers"]
    check_figures(browser, document)
    check_tables(browser, document)
    check_charts(browser, document)
    for canvas in ["chart-consumption-region", "chart-revenue-region"]:
        labels = browser.execute_script("return Chart.getChart(document.getElementById(arguments[0])).data.labels", canvas)
        assert labels == [REGION], canvas
    for name, column in REGION_COLUMNS.items():
        rows = browser.execute_script(COLLECT_TABLE, name)
        assert rows and all(row[column] == REGION for row in rows), name
    faulty = [row[0] for row in browser.execute_script(COLLECT_TABLE, "faulty_meters") if row[0]]
    assert all(secured.admin.api("/api/meters/" + meter)["region"] == REGION for meter in faulty[:20])

    # Who is logged in, and a region filter fixed on North; the fleet-wide live figures are not shown.
    assert "north-viewer" in browser.find_element(By.ID, "session-user").text
    assert "region North" in browser.find_element(By.ID, "session-user").text
    select = browser.find_element(By.ID, "filter-region")
    assert not select.is_enabled()
    assert [option.get_attribute("value") for option in select.find_elements(By.TAG_NAME, "option")] == [REGION]
    assert browser.find_element(By.ID, "ingest-live").text == ""
    shot(browser, "login-north-viewer.png", full=True)

    # CSV: a real download of the top consumers, and every table's export, hold North's rows only.
    downloads = os.path.join(ARTIFACTS, "downloads-north")
    os.makedirs(downloads, exist_ok=True)
    for stale in glob.glob(os.path.join(downloads, "*")):
        os.remove(stale)
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    button = browser.find_element(By.CSS_SELECTOR, "button[data-export=top_consumers]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    wait(browser, lambda d: glob.glob(os.path.join(downloads, "*.csv")), 20, "no CSV downloaded")
    path = glob.glob(os.path.join(downloads, "*.csv"))[0]
    assert os.path.basename(path) == "meterd_top_consumers_%d-01_%d-12_%s.csv" % (YEAR, YEAR, REGION)
    time.sleep(0.2)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["#", "Customer", "Region", "kWh"]
    assert [(int(r[1]), r[2]) for r in rows[1:]] == [(c["customer_id"], c["region"]) for c in document["top_consumers"]]
    assert len(rows) > 1 and all(r[2] == REGION for r in rows[1:])
    tables = browser.execute_script("return Array.from(document.querySelectorAll('#sections [data-table]')).map(e => e.dataset.table)")
    for name in tables:
        lines = list(csv.reader(browser.execute_script("return window.meterd.tableCSV(arguments[0])", name).splitlines()))
        if "Region" in lines[0]:
            column = lines[0].index("Region")
            assert all(line[column] == REGION for line in lines[1:] if line), name

    # Drill-down: North's customers, one of them, and its meter.
    browser.find_element(By.ID, "region-customers").click()
    wait_ready(browser, "window.meterd.state.view === 'customers' && !!window.meterd.regionCustomers")
    customers = viewer.api("/api/regions/%s?%s&per_page=100" % (REGION, PERIOD))["customers"]
    shown = [row[0] for row in browser.execute_script(COLLECT_TABLE, "region_customers")]
    assert shown and all(int(c) in [x["customer_id"] for x in customers] for c in shown)
    browser.find_element(By.CSS_SELECTOR, "[data-table=region_customers] tbody tr td a").click()
    wait_ready(browser, "window.meterd.state.view === 'customer' && !!window.meterd.customer")
    assert browser.execute_script("return window.meterd.customer.region") == REGION

    # Asking for South in the URL still shows North: the page keeps the user's region.
    open_page(browser, secured, PERIOD + "&region=South", kpi_loaded("window.meterd.kpi.period.from === '%d-01'" % YEAR))
    assert browser.execute_script("return window.meterd.kpi.region") == REGION
    assert severe_console_messages(browser) == []

    # And the server refuses the user anything of South, whatever the page does.
    south = secured.admin.api("/api/regions/South?%s&per_page=1" % PERIOD)["customers"][0]["customer_id"]
    for path in ["/api/kpi?region=South", "/api/regions/South", "/api/customers/%d" % south, "/api/meters/MTR-%06d" % south,
                 "/api/meters/MTR-%06d/readings" % south, "/api/inactive?region=South", "/api/status"]:
        assert browser_status(browser, path) == 403, path
        assert viewer.status(path) == 403, path
    browser.get_log("browser")  # those refusals were on purpose

    # Logging out ends the session: the API answers 401 and the page sends to the login form.
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: d.current_url == secured.url + "/login", 10, "logout did not reach the login form")
    assert browser_status(browser, "/api/kpi") == 401
    browser.get(secured.url + "/")
    assert browser.current_url == secured.url + "/login"


def test_a_wrong_password_shows_the_form_again_and_no_dashboard(browser, secured):
    log_in(browser, secured, "north-viewer", "not the password")
    error = wait(browser, lambda d: d.find_elements(By.ID, "login-error"), 10, "no error on the login form")[0]
    assert error.text == "Wrong user name or password."
    assert browser.current_url == secured.url + "/login"
    assert browser.find_element(By.ID, "username").get_attribute("value") == "north-viewer"
    assert browser.get_cookie("meterd_session") is None
    shot(browser, "login-wrong-password.png")
    # A shared link to a dashboard view goes through the login form and then opens that view.
    browser.get(secured.url + "/?" + PERIOD)
    assert browser.current_url.startswith(secured.url + "/login?next="), browser.current_url
    browser.find_element(By.ID, "username").send_keys("north-viewer")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-submit").click()
    wait(browser, lambda d: d.current_url.startswith(secured.url + "/?") and ("from=%d-01" % YEAR) in d.current_url, 10,
         "the login did not open the shared view")
    # The failure is in meterd's log, with the user and where the attempt came from.
    with open(os.path.join(ARTIFACTS, "meterd-browser-tests.log"), errors="replace") as handle:
        log = handle.read()
    assert "HTTP login failed" in log and "http.user=north-viewer" in log
