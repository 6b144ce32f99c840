"""The dashboard in a real browser (Chromium, headless) against a real meterd with a generated
company and a live fleet: every section with the API's figures, filters and cross-filtering,
drill-down and back, live refresh, CSV export, phone width and keyboard."""

import csv
import datetime
import glob
import os
import re
import time
import urllib.parse

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from conftest import ARTIFACTS, FLEET, lookup, open_page, same, severe_console_messages, shot, shown_number, wait, wait_ready

# Last year: the generated company has every month of it and the live fleet touches none.
YEAR = datetime.datetime.now(datetime.timezone.utc).year - 1
PERIOD = "from=%d-01&to=%d-12" % (YEAR, YEAR)

CHARTS = {
    # canvas id: (KPI list, value key) — the chart's first dataset must equal the API's series
    "chart-consumption-region": ("consumption_by_region", "kwh"),
    "chart-monthly-consumption": ("monthly_consumption", "kwh"),
    "chart-revenue-region": ("revenue_by_region", "revenue"),
    "chart-revenue-trend": ("revenue_trend", "revenue"),
    "chart-technicians": ("technicians", "installations"),
}

TABLES = {
    # data-table name: (KPI list, keys compared cell by cell in column order)
    "consumption_by_region": ("consumption_by_region", ["region", "kwh"]),
    "monthly_consumption": ("monthly_consumption", ["month", "kwh"]),
    "top_consumers": ("top_consumers", [None, "customer_id", "region", "kwh"]),
    "faulty_meters": ("faulty_meters", ["meter", "customer_id", "poor_months", "faults"]),
    "revenue_by_region": ("revenue_by_region", ["region", "revenue"]),
    "revenue_trend": ("revenue_trend", ["month", "revenue"]),
    "technicians": ("technicians", ["technician_id", "name", "installations", "maintenance_jobs", "average_resolution_days"]),
}

COLLECT_FIGURES = """
return Array.from(document.querySelectorAll('[data-kpi]')).map(e => [e.dataset.kpi, e.dataset.value, e.textContent]);
"""

COLLECT_TABLE_FUNCTION = """
(name) => Array.from(document.querySelectorAll(`[data-table="${name}"] tbody tr`))
    .map(r => Array.from(r.querySelectorAll('td')).map(td => td.dataset.value === undefined ? null : td.dataset.value))
"""

COLLECT_TABLE = "return (%s)(arguments[0]);" % COLLECT_TABLE_FUNCTION


def check_figures(driver, document):
    """Every figure on the page carries the API's value and shows it, formatted."""
    figures = driver.execute_script(COLLECT_FIGURES)
    assert len(figures) >= 20
    for key, raw, text in figures:
        expected = lookup(document, key)
        if expected is None:
            assert raw == "" and text.strip() == "—", key
            continue
        assert same(raw, expected), "%s: page %s, API %s" % (key, raw, expected)
        shown = re.search(r"[\d,]+(\.(\d+))?", text)
        decimals = len(shown.group(2)) if shown and shown.group(2) else 0
        assert abs(shown_number(text) - expected) <= 0.5 * 10 ** -decimals + 1e-9, "%s shows %r for %s" % (key, text, expected)


def check_tables(driver, document):
    for name, (key, columns) in TABLES.items():
        rows = driver.execute_script(COLLECT_TABLE, name)
        expected = document[key][:100]
        if not expected:
            assert len(rows) == 1, name  # the "No data" row
            continue
        assert len(rows) == len(expected), "%s: %d rows on the page, %d from the API" % (name, len(rows), len(expected))
        for row, entry in zip(rows, expected):
            for cell, column in zip(row, columns):
                if column is None:
                    continue
                value = entry[column]
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    assert same(cell, value), "%s.%s: %s vs %s" % (name, column, cell, value)
                else:
                    assert cell == ("" if value is None else str(value)), "%s.%s: %s vs %s" % (name, column, cell, value)
    health = driver.execute_script(COLLECT_TABLE, "meter_health")
    assert [row[0] for row in health] == ["good", "fair", "poor"]
    assert all(same(row[1], document["meter_health"][row[0]]) for row in health)
    payments = driver.execute_script(COLLECT_TABLE, "payment_status")
    for row in payments:
        assert same(row[1], document["payment_status"][row[0]]["count"]) and same(row[2], document["payment_status"][row[0]]["amount"])
    scores = driver.execute_script(COLLECT_TABLE, "satisfaction_distribution")
    assert [int(row[1]) for row in scores] == [document["satisfaction"]["distribution"][str(score)] for score in range(1, 6)]


def check_charts(driver, document):
    for canvas, (key, field) in CHARTS.items():
        data = driver.execute_script("const c = Chart.getChart(document.getElementById(arguments[0])); return c ? c.data.datasets[0].data : null;", canvas)
        assert data is not None, canvas + " has no chart"
        assert len(data) == len(document[key]) and all(same(a, b[field]) for a, b in zip(data, document[key])), canvas
    health = driver.execute_script("return Chart.getChart(document.getElementById('chart-meter-health')).data.datasets[0].data")
    assert all(same(a, document["meter_health"][b] or 0) for a, b in zip(health, ["good", "fair", "poor"]))
    paid = driver.execute_script("return Chart.getChart(document.getElementById('chart-payment-status')).data.datasets[0].data")
    assert paid == [document["payment_status"]["paid"]["count"], document["payment_status"]["unpaid"]["count"]]
    # Each chart is drawn: its canvas has a size and is visible.
    for canvas in ["chart-consumption-region", "chart-monthly-consumption", "chart-meter-health", "chart-revenue-region",
                   "chart-revenue-trend", "chart-payment-status", "chart-satisfaction", "chart-technicians"]:
        element = driver.find_element(By.ID, canvas)
        assert element.is_displayed() and element.size["width"] > 100 and element.size["height"] > 100, canvas


def kpi_loaded(check):
    return "window.meterd.kpi && " + check


def test_every_section_shows_the_figures_the_api_returns(browser, meterd):
    open_page(browser, meterd, PERIOD, kpi_loaded("window.meterd.kpi.period.from === '%d-01'" % YEAR))
    assert browser.execute_script("return window.meterd.hasCharts") is True
    for section in ["overview", "consumption", "meters", "reads", "revenue", "customers", "operations"]:
        assert browser.find_element(By.ID, section).is_displayed(), section
    document = meterd.api("/api/kpi?" + PERIOD)
    assert document["total_customers"] > 0 and document["total_consumption_kwh"] > 0
    check_figures(browser, document)
    check_tables(browser, document)
    check_charts(browser, document)
    inactive = meterd.api("/api/inactive?limit=100")
    assert browser.execute_script(COLLECT_TABLE, "inactive_meters")[0][0] == inactive["meters"][0]["meter"]
    assert browser.find_element(By.ID, "filter-from").get_attribute("value") == "%d-01" % YEAR
    assert "Live" in browser.find_element(By.ID, "data-time").text
    shot(browser, "dashboard-1280x800.png")
    shot(browser, "dashboard-full.png", full=True)


def test_the_region_filter_and_month_range_update_the_figures_and_the_url(browser, meterd):
    open_page(browser, meterd, PERIOD, kpi_loaded("true"))
    Select(browser.find_element(By.ID, "filter-region")).select_by_value("North")
    wait_ready(browser, kpi_loaded("window.meterd.kpi.region === 'North'"))
    query = urllib.parse.parse_qs(urllib.parse.urlparse(browser.current_url).query)
    assert query["region"] == ["North"] and query["from"] == ["%d-01" % YEAR]
    document = meterd.api("/api/kpi?%s&region=North" % PERIOD)
    check_figures(browser, document)
    check_tables(browser, document)
    assert [row[0] for row in browser.execute_script(COLLECT_TABLE, "consumption_by_region")] == ["North"]

    # A new month range through the month inputs.
    browser.execute_script("const e = document.getElementById('filter-from'); e.value = arguments[0]; e.dispatchEvent(new Event('change'));",
                           "%d-04" % YEAR)
    wait_ready(browser, kpi_loaded("window.meterd.kpi.period.from === '%d-04'" % YEAR))
    assert "from=%d-04" % YEAR in browser.current_url and "region=North" in browser.current_url
    document = meterd.api("/api/kpi?from=%d-04&to=%d-12&region=North" % (YEAR, YEAR))
    check_figures(browser, document)
    assert len(browser.execute_script(COLLECT_TABLE, "monthly_consumption")) == 9

    # The URL alone reproduces the view: shared with someone else, it shows the same figures.
    shared = browser.current_url
    browser.get("about:blank")
    browser.get(shared)
    wait_ready(browser, kpi_loaded("window.meterd.kpi.period.from === '%d-04'" % YEAR))
    assert Select(browser.find_element(By.ID, "filter-region")).first_selected_option.get_attribute("value") == "North"
    check_figures(browser, document)


def test_clicking_a_region_in_a_chart_filters_the_page(browser, meterd):
    open_page(browser, meterd, PERIOD, kpi_loaded("window.meterd.kpi.region === null"))
    for canvas_id, region in [("chart-consumption-region", "South"), ("chart-revenue-region", "East")]:
        if region == "East":
            open_page(browser, meterd, PERIOD, kpi_loaded("window.meterd.kpi.region === null"))
        canvas = browser.find_element(By.ID, canvas_id)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        point = browser.execute_script("""
            const chart = Chart.getChart(arguments[0]);
            const index = chart.data.labels.indexOf(arguments[1]);
            const bar = chart.getDatasetMeta(0).data[index];
            return {x: bar.x, y: (bar.y + bar.base) / 2, width: chart.width, height: chart.height};
        """, canvas, region)
        # Selenium offsets from the element's centre.
        ActionChains(browser).move_to_element_with_offset(canvas, int(point["x"] - point["width"] / 2),
                                                          int(point["y"] - point["height"] / 2)).click().perform()
        wait_ready(browser, kpi_loaded("window.meterd.kpi.region === '%s'" % region))
        assert "region=%s" % region in browser.current_url
        assert Select(browser.find_element(By.ID, "filter-region")).first_selected_option.get_attribute("value") == region
        check_figures(browser, meterd.api("/api/kpi?%s&region=%s" % (PERIOD, region)))


def test_drill_down_from_a_region_to_its_customers_a_customer_and_a_meter_and_back(browser, meterd):
    open_page(browser, meterd, PERIOD + "&region=North", kpi_loaded("window.meterd.kpi.region === 'North'"))
    browser.find_element(By.ID, "region-customers").click()
    wait_ready(browser, "window.meterd.state.view === 'customers' && !!window.meterd.regionCustomers")
    api_page = meterd.api("/api/regions/North?%s" % PERIOD)
    ids = lambda: [row[0] for row in browser.execute_script(COLLECT_TABLE, "region_customers")]
    assert ids() == [str(c["customer_id"]) for c in api_page["customers"]]
    assert browser.find_element(By.ID, "page-info").text == "Page 1 of %d" % api_page["pages"]
    kwh = [float(row[3]) for row in browser.execute_script(COLLECT_TABLE, "region_customers")]
    assert kwh == sorted(kwh, reverse=True)

    # Sort by customer id, then page forward and back.
    browser.find_element(By.CSS_SELECTOR, "[data-table=region_customers] button[data-sort=customer_id]").click()
    wait_ready(browser, "window.meterd.regionCustomers.sort === 'customer_id'")
    by_id = meterd.api("/api/regions/North?%s&sort=customer_id&order=asc" % PERIOD)
    assert ids() == [str(c["customer_id"]) for c in by_id["customers"]]
    assert "sort=customer_id" in browser.current_url
    assert browser.find_element(By.CSS_SELECTOR, "th[aria-sort]").get_attribute("aria-sort") == "ascending"
    browser.find_element(By.ID, "page-next").click()
    wait_ready(browser, "window.meterd.regionCustomers.page === 2")
    page2 = meterd.api("/api/regions/North?%s&sort=customer_id&order=asc&page=2" % PERIOD)
    assert ids() == [str(c["customer_id"]) for c in page2["customers"]]
    browser.find_element(By.ID, "page-prev").click()
    wait_ready(browser, "window.meterd.regionCustomers.page === 1")
    shot(browser, "drilldown-region-customers.png")

    # The first customer (the smallest id in North, one of the live fleet's).
    customer_id = by_id["customers"][0]["customer_id"]
    assert "MTR-%06d" % customer_id in FLEET
    browser.find_element(By.CSS_SELECTOR, "[data-table=region_customers] tbody tr td a").click()
    wait_ready(browser, "window.meterd.state.view === 'customer' && window.meterd.customer && window.meterd.customer.customer_id === %d" % customer_id)
    customer = meterd.api("/api/customers/%d" % customer_id)
    # The table and the answer it was drawn from, read in one go (the live month grows meanwhile).
    rows, shown = browser.execute_script("return [(%s)(arguments[0]), window.meterd.customer.monthly]" % COLLECT_TABLE_FUNCTION, "customer_monthly")
    assert [row[0] for row in rows] == [m["month"] for m in shown] == [m["month"] for m in customer["monthly"]]
    assert all(same(row[1], m["kwh"]) for row, m in zip(rows, shown))
    for page_month, api_month in zip(shown, customer["monthly"]):
        if page_month["month"].startswith(str(YEAR)):
            assert same(page_month["kwh"], api_month["kwh"]), page_month["month"]
        else:  # a month the live fleet is still adding to: the page read it earlier
            assert (page_month["kwh"] or 0) <= (api_month["kwh"] or 0) + 1e-9, page_month["month"]
    for table, key in [("customer_bills", "bills"), ("customer_maintenance", "maintenance"), ("customer_feedback", "feedback")]:
        rows = browser.execute_script(COLLECT_TABLE, table)
        assert len(rows) == max(1, len(customer[key])), table
    assert browser.find_element(By.ID, "h-drill").text == "Customer %d" % customer_id
    # Every table of the drill-down exports too.
    tables = browser.execute_script("return Array.from(document.querySelectorAll('#drill [data-table]')).map(e => e.dataset.table)")
    exports = browser.execute_script("return Array.from(document.querySelectorAll('#drill button[data-export]')).map(e => e.dataset.export)")
    assert len(tables) == 7 and sorted(tables) == sorted(exports)
    monthly_csv = browser.execute_script("return window.meterd.tableCSV('customer_monthly')").strip().split("\r\n")
    assert monthly_csv[0] == "Month,kWh,Revenue ($),Status,Live readings,Faults,Estimated" and len(monthly_csv) == 1 + len(customer["monthly"])
    shot(browser, "drilldown-customer.png", full=True)

    # Its meter: state, recent readings with latency, and the figures follow the live stream.
    browser.find_element(By.CSS_SELECTOR, "[data-table=customer_meters] tbody a").click()
    wait_ready(browser, "window.meterd.state.view === 'meter' && window.meterd.readings && window.meterd.readings.count > 0")
    meter = "MTR-%06d" % customer_id
    assert browser.find_element(By.ID, "h-drill").text == "Meter " + meter
    # The view refreshes itself every 2 s: read what belongs together in one go.
    view = browser.execute_script("""
        const rows = Array.from(document.querySelectorAll('[data-table=meter_readings] tbody tr'))
            .map(r => Array.from(r.querySelectorAll('td')).map(td => td.dataset.value));
        return {state: document.querySelector('[data-meter=state]').textContent, rows,
                timeline: document.querySelectorAll('#meter-timeline span').length};
    """)
    assert view["state"].startswith("active")
    assert len(view["rows"]) > 0 and all(int(row[3]) >= 0 for row in view["rows"])
    assert view["timeline"] == len(view["rows"])
    browser.execute_script("window.__sameDocument = true")
    last_seq = "return document.querySelector('[data-meter=last_seq]').textContent"
    first_seq = browser.execute_script(last_seq)
    wait(browser, lambda d: d.execute_script(last_seq) != first_seq, 20, "meter figures did not refresh")
    assert browser.execute_script("return window.__sameDocument === true")
    shot(browser, "drilldown-meter.png", full=True)

    # Back: the page's button, then the browser's.
    browser.find_element(By.ID, "back").click()
    wait_ready(browser, "window.meterd.state.view === 'customer'")
    browser.back()
    wait_ready(browser, "window.meterd.state.view === 'meter'")
    browser.find_element(By.ID, "back").click()
    wait_ready(browser, "window.meterd.state.view === 'customer'")
    browser.find_element(By.ID, "back").click()
    wait_ready(browser, "window.meterd.state.view === 'customers'")
    browser.find_element(By.ID, "back").click()
    wait_ready(browser, kpi_loaded("window.meterd.state.view === 'dashboard'"))
    assert browser.find_element(By.ID, "overview").is_displayed()
    assert browser.execute_script("return window.__sameDocument === true")


def test_overview_and_meter_figures_refresh_live_without_a_reload(browser, meterd):
    open_page(browser, meterd, "", kpi_loaded("true"))
    browser.execute_script("window.__sameDocument = true")
    element = browser.find_element(By.ID, "data-time")
    generated = element.get_attribute("data-generated-at")
    loads = int(browser.execute_script("return window.meterd.loads"))
    wait(browser, lambda d: d.find_element(By.ID, "data-time").get_attribute("data-generated-at") != generated, 20, "no refresh")
    assert int(browser.execute_script("return window.meterd.loads")) > loads
    assert browser.execute_script("return window.__sameDocument === true")
    assert "data as of" in element.text
    # Live readings in the current month show in the latency figures, and the ingest rate is shown.
    wait(browser, lambda d: float(d.find_element(By.CSS_SELECTOR, "[data-kpi='reading_latency_ms.count']").get_attribute("data-value") or 0) > 0)
    wait(browser, lambda d: "readings/s" in d.find_element(By.ID, "ingest-live").text)
    count = float(browser.find_element(By.CSS_SELECTOR, "[data-kpi='reading_latency_ms.count']").get_attribute("data-value"))
    wait(browser, lambda d: float(d.find_element(By.CSS_SELECTOR, "[data-kpi='reading_latency_ms.count']").get_attribute("data-value")) > count,
         20, "live reading count did not grow")


def test_every_table_exports_as_csv(browser, meterd):
    downloads = os.path.join(ARTIFACTS, "downloads")
    os.makedirs(downloads, exist_ok=True)
    for stale in glob.glob(os.path.join(downloads, "*")):
        os.remove(stale)
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    open_page(browser, meterd, PERIOD, kpi_loaded("window.meterd.kpi.period.from === '%d-01'" % YEAR))
    tables = browser.execute_script("return Array.from(document.querySelectorAll('#sections [data-table]')).map(e => e.dataset.table)")
    buttons = browser.execute_script("return Array.from(document.querySelectorAll('#sections button[data-export]')).map(e => e.dataset.export)")
    assert sorted(tables) == sorted(buttons) and len(tables) == 15

    # A real download of the top consumers.
    button = browser.find_element(By.CSS_SELECTOR, "button[data-export=top_consumers]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    wait(browser, lambda d: [f for f in glob.glob(os.path.join(downloads, "*.csv"))], 20, "no CSV downloaded")
    path = glob.glob(os.path.join(downloads, "*.csv"))[0]
    assert os.path.basename(path) == "meterd_top_consumers_%d-01_%d-12.csv" % (YEAR, YEAR)
    time.sleep(0.2)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    document = meterd.api("/api/kpi?" + PERIOD)
    assert rows[0] == ["#", "Customer", "Region", "kWh"]
    assert [(int(r[1]), r[2]) for r in rows[1:]] == [(c["customer_id"], c["region"]) for c in document["top_consumers"]]
    assert all(same(r[3], c["kwh"]) for r, c in zip(rows[1:], document["top_consumers"]))

    # Texts a spreadsheet would run as formulas are defused; numbers, negative ones too, are not.
    cells = browser.execute_script(
        "return arguments[0].map(v => window.meterd.csvCell(v))",
        ['=HYPERLINK("http://x")', "+cmd", "@SUM(1)", "-1+2", "-5.25", -3, "North", "\tTab"])
    assert cells == ['"\'=HYPERLINK(""http://x"")"', "'+cmd", "'@SUM(1)", "'-1+2", "-5.25", "-3", "North", "'\tTab"]

    # Every other table's CSV holds its rows (checked through the same function the button uses).
    for name in tables:
        text = browser.execute_script("return window.meterd.tableCSV(arguments[0])", name)
        lines = [line for line in text.split("\r\n") if line]
        rows = browser.execute_script(COLLECT_TABLE, name)
        data_rows = [r for r in rows if any(cell is not None for cell in r)]  # the "No data" row has no values
        assert len(lines) == 1 + len(data_rows), name


def test_usable_at_phone_width_and_by_keyboard(browser, meterd):
    open_page(browser, meterd, PERIOD, kpi_loaded("true"))
    # Every control has a label or an accessible name.
    unlabelled = browser.execute_script("""
        return Array.from(document.querySelectorAll('input, select, button')).filter(e => {
            const label = e.labels && e.labels.length ? e.labels[0].textContent.trim() : '';
            return !(label || e.getAttribute('aria-label') || e.textContent.trim());
        }).map(e => e.outerHTML);
    """)
    assert unlabelled == []
    assert browser.execute_script("return Array.from(document.querySelectorAll('canvas')).every(c => c.getAttribute('aria-label'))")
    # Tab reaches the filters, and a region link in a table filters the page from the keyboard.
    browser.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    reached = []
    for _ in range(12):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.append(browser.execute_script("return document.activeElement.id || document.activeElement.tagName"))
    assert "filter-from" in reached and "filter-to" in reached and "filter-region" in reached, reached
    link = browser.find_element(By.CSS_SELECTOR, "[data-table=top_consumers] tbody tr td:nth-child(3) a")
    region = link.text
    browser.execute_script("arguments[0].focus()", link)
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_ready(browser, kpi_loaded("window.meterd.kpi.region === '%s'" % region))

    browser.set_window_size(390, 844)
    try:
        open_page(browser, meterd, PERIOD, kpi_loaded("true"))
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, "page is %d px wider than a phone screen" % overflow
        width = browser.find_element(By.ID, "chart-consumption-region").size["width"]
        assert 200 <= width <= 390
        shot(browser, "dashboard-phone.png")
    finally:
        browser.set_window_size(1280, 800)


def test_bad_input_shows_the_api_message(browser, meterd):
    browser.get(meterd.url + "/?animations=0&from=%d-13" % YEAR)
    wait(browser, lambda d: d.execute_script("return document.body.dataset.state") == "error")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "from: expected YYYY-MM" in error.text
    status, body = meterd.api_error("/api/kpi?from=%d-13" % YEAR)
    assert status == 400 and body["message"] in error.text
    browser.get(meterd.url + "/?animations=0&view=customer&customer=99999999")
    wait(browser, lambda d: d.execute_script("return document.body.dataset.state") == "error")
    assert "No customer 99999999" in browser.find_element(By.ID, "error").text


def test_no_errors_in_the_browser_console(browser, meterd):
    browser.get_log("browser")  # drop what earlier tests (bad input on purpose) left
    open_page(browser, meterd, PERIOD, kpi_loaded("true"))
    browser.find_element(By.ID, "region-customers")
    assert severe_console_messages(browser) == []
