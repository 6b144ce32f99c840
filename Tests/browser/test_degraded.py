"""Without Chart.js (the file is not where meterd is told to find it) the dashboard still works:
every figure as a table, filters and drill-down by links, nothing loaded from anywhere else."""

import datetime

from selenium.webdriver.common.by import By

from conftest import lookup, open_page, same, severe_console_messages, shot, wait_ready

YEAR = datetime.datetime.now(datetime.timezone.utc).year - 1
PERIOD = "from=%d-01&to=%d-12" % (YEAR, YEAR)

COLLECT_TABLE = """
const rows = document.querySelectorAll(`[data-table="${arguments[0]}"] tbody tr`);
return Array.from(rows).map(r => Array.from(r.querySelectorAll('td')).map(td => td.dataset.value === undefined ? null : td.dataset.value));
"""


def test_without_chartjs_every_figure_is_a_table(browser, meterd_without_chartjs):
    meterd = meterd_without_chartjs
    browser.get_log("browser")
    open_page(browser, meterd, PERIOD, "window.meterd.kpi && window.meterd.kpi.period.from === '%d-01'" % YEAR)
    assert browser.execute_script("return typeof window.Chart") == "undefined"
    assert browser.execute_script("return window.meterd.hasCharts") is False
    assert "/assets/chart.js" not in browser.page_source
    notice = browser.find_element(By.ID, "no-charts")
    assert notice.is_displayed() and "shown as a table" in notice.text
    assert all(not canvas.is_displayed() for canvas in browser.find_elements(By.TAG_NAME, "canvas"))
    assert all(details.get_attribute("open") is not None for details in browser.find_elements(By.CSS_SELECTOR, "details.data"))

    document = meterd.api("/api/kpi?" + PERIOD)
    for key, raw in browser.execute_script("return Array.from(document.querySelectorAll('[data-kpi]')).map(e => [e.dataset.kpi, e.dataset.value])"):
        expected = lookup(document, key)
        assert (raw == "" and expected is None) or same(raw, expected), key
    # What the charts would show, as visible tables with the API's figures.
    for table, key, field in [("consumption_by_region", "consumption_by_region", "kwh"), ("monthly_consumption", "monthly_consumption", "kwh"),
                              ("revenue_by_region", "revenue_by_region", "revenue"), ("revenue_trend", "revenue_trend", "revenue")]:
        element = browser.find_element(By.CSS_SELECTOR, "[data-table=%s] table" % table)
        assert element.is_displayed(), table
        rows = browser.execute_script(COLLECT_TABLE, table)
        assert len(rows) == len(document[key]) and all(same(row[1], entry[field]) for row, entry in zip(rows, document[key])), table
    for table in ["meter_health", "payment_status", "satisfaction_distribution", "technicians"]:
        assert browser.find_element(By.CSS_SELECTOR, "[data-table=%s] table" % table).is_displayed(), table
    shot(browser, "dashboard-without-chartjs.png", full=True)

    # Cross-filtering without a chart: the region's link in the table.
    browser.find_element(By.CSS_SELECTOR, "[data-table=consumption_by_region] tbody tr:nth-child(2) td a").click()
    region = document["consumption_by_region"][1]["region"]
    wait_ready(browser, "window.meterd.kpi && window.meterd.kpi.region === '%s'" % region)
    assert "region=%s" % region in browser.current_url
    assert same(browser.find_element(By.CSS_SELECTOR, "[data-kpi=total_customers]").get_attribute("data-value"),
                meterd.api("/api/kpi?%s&region=%s" % (PERIOD, region))["total_customers"])
    # And drill-down still reaches a meter.
    browser.find_element(By.CSS_SELECTOR, "[data-table=top_consumers] tbody tr td:nth-child(2) a").click()
    wait_ready(browser, "window.meterd.state.view === 'customer' && !!window.meterd.customer")
    browser.find_element(By.CSS_SELECTOR, "[data-table=customer_meters] tbody a").click()
    wait_ready(browser, "window.meterd.state.view === 'meter' && !!window.meterd.meter")
    assert browser.find_element(By.CSS_SELECTOR, "[data-table=meter_months] table").is_displayed()

    # The read success trend, as a table (newest day first) with the API's rates, in the default view.
    open_page(browser, meterd, "", "window.meterd.kpi && window.meterd.kpi.read_success_daily.length > 0")
    element = browser.find_element(By.CSS_SELECTOR, "[data-table=read_success_daily] table")
    assert element.is_displayed()
    daily = browser.execute_script("return window.meterd.kpi.read_success_daily")
    assert daily == meterd.api("/api/kpi")["read_success_daily"]
    rows = browser.execute_script(COLLECT_TABLE, "read_success_daily")
    assert [row[0] for row in rows] == [d["date"] for d in reversed(daily)]
    assert all(same(row[1], d["rate"]) for row, d in zip(rows, reversed(daily)))
    assert browser.find_element(By.CSS_SELECTOR, "[data-table=read_success_regions] table").is_displayed()
    assert severe_console_messages(browser) == []
