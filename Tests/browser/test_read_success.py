"""The read success panel (issue 16 point 4) and the month-to-date marking (point 7) in a real
browser, against the API: the default view (the 12 months ending now), where the live fleet has
reported today and the current month is still running."""

import datetime

from selenium.webdriver.common.by import By

from conftest import FLEET, open_page, same, shot

COLLECT_TABLE = """
const rows = document.querySelectorAll(`[data-table="${arguments[0]}"] tbody tr`);
return Array.from(rows).map(r => Array.from(r.querySelectorAll('td')).map(td => td.dataset.value === undefined ? null : td.dataset.value));
"""

READY = "window.meterd.kpi && window.meterd.kpi.read_success_daily.length > 0"


def test_read_success_panel_shows_the_api_figures(browser, meterd):
    open_page(browser, meterd, "", READY)
    assert browser.find_element(By.ID, "reads").is_displayed()
    # The page's document, read in one go with what it drew: live readings keep completeness moving.
    drawn = browser.execute_script("return window.meterd.kpi")
    document = meterd.api("/api/kpi")
    # Who reported today does not move while the fleet sends: the rates equal the API's.
    assert document["read_success_by_region"] == drawn["read_success_by_region"]
    assert [d["date"] for d in document["read_success_daily"]] == [d["date"] for d in drawn["read_success_daily"]]
    assert same(document["read_success_rate"], drawn["read_success_rate"])
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert drawn["read_success_daily"][-1]["date"] == today
    # Every installed customer's meter counts; the fleet's reported today.
    installed = document["total_customers"]
    assert same(drawn["read_success_daily"][-1]["rate"], len(FLEET) / installed)

    # The cards: raw share in data-value, shown in percent.
    for key in ["read_success_rate", "interval_completeness"]:
        element = browser.find_element(By.CSS_SELECTOR, "[data-share='%s']" % key)
        assert same(element.get_attribute("data-value"), drawn[key]), key
        assert element.text.endswith(" %") and abs(float(element.text[:-2].replace(",", "")) - 100 * drawn[key]) <= 0.05, key
    assert browser.find_element(By.ID, "read-days").text == str(len(drawn["read_success_daily"]))

    # The trend line: the API's daily rates, today (still running) drawn hollow and dashed.
    chart = browser.execute_script("""
        const c = Chart.getChart(document.getElementById('chart-read-success'));
        const d = c.data.datasets[0];
        return {data: d.data, labels: c.data.labels, styles: d.pointStyle};
    """)
    assert chart["data"] == [d["rate"] for d in drawn["read_success_daily"]]
    assert chart["labels"][-1].endswith("(so far)") and chart["styles"][-1] == "rectRot"
    assert all(style == "circle" for style in chart["styles"][:-1])

    # Worst regions first, with the API's rates; each region links to its filter.
    regions = browser.execute_script(COLLECT_TABLE, "read_success_regions")
    expected = sorted(drawn["read_success_by_region"], key=lambda r: (float("inf") if r["rate"] is None else r["rate"], r["region"]))
    assert [row[0] for row in regions] == [r["region"] for r in expected]
    assert all(same(row[1], r["rate"]) for row, r in zip(regions, expected))
    # The meters with the lowest completeness, in the document's order and figures.
    meters = browser.execute_script(COLLECT_TABLE, "lowest_completeness")
    assert len(meters) == len(drawn["lowest_completeness_meters"]) > 0
    for row, entry in zip(meters, drawn["lowest_completeness_meters"]):
        assert row[0] == entry["meter"] and row[1] == entry["region"]
        assert same(row[2], entry["completeness"]) and same(row[3], entry["readings"]) and same(row[4], entry["expected_readings"])
    completeness = [float(row[2]) for row in meters]
    assert completeness == sorted(completeness)
    # Exported like every table.
    csv = browser.execute_script("return window.meterd.tableCSV('lowest_completeness')").strip().split("\r\n")
    assert csv[0] == "Meter,Region,Completeness (%),Readings,Expected,Interval (s)" and len(csv) == 1 + len(meters)
    daily = browser.execute_script("return window.meterd.tableCSV('read_success_daily')").strip().split("\r\n")
    assert daily[0] == "Date,Read success (%),Today so far" and daily[1].startswith(today + ",") and daily[1].endswith(",true")
    shot(browser, "read-success.png")


def test_the_running_month_is_marked_month_to_date(browser, meterd):
    open_page(browser, meterd, "", READY)
    drawn = browser.execute_script("return window.meterd.kpi")
    current = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m")
    assert drawn["current_month"] == current and drawn["period"]["to"] == current
    for canvas, key in [("chart-monthly-consumption", "monthly_consumption"), ("chart-revenue-trend", "revenue_trend")]:
        chart = browser.execute_script("""
            const c = Chart.getChart(document.getElementById(arguments[0]));
            return {labels: c.data.labels, styles: c.data.datasets[0].pointStyle};
        """, canvas)
        assert chart["labels"][-1] == current + " (to date)", canvas
        assert chart["styles"][-1] == "rectRot" and set(chart["styles"][:-1]) == {"circle"}, canvas
        rows = browser.execute_script(COLLECT_TABLE, key)
        assert [row[-1] for row in rows] == ["false"] * (len(rows) - 1) + ["true"], key
    # Complaints and installations follow the period: the figures of the whole period.
    document = meterd.api("/api/kpi")
    for key in ["complaints_in_period.received", "complaints_in_period.resolved", "installations_in_period"]:
        value = document
        for part in key.split("."):
            value = value[part]
        assert same(browser.find_element(By.CSS_SELECTOR, "[data-kpi='%s']" % key).get_attribute("data-value"), value), key
    # A period that is over has no month to date.
    year = datetime.datetime.now(datetime.timezone.utc).year - 1
    open_page(browser, meterd, "from=%d-01&to=%d-12" % (year, year), "window.meterd.kpi && window.meterd.kpi.period.from === '%d-01'" % year)
    assert browser.execute_script("return window.meterd.kpi.current_month") is None
    labels = browser.execute_script("return Chart.getChart(document.getElementById('chart-monthly-consumption')).data.labels")
    assert not any("to date" in label for label in labels)
