"""The dashboard's alerts panel (SPEC.md section 11) against a real meterd: the generated company's
imported poor months make meters faulty, so the faulty rule fires at meterd's first evaluation; the
panel lists what /api/alerts answers, links meters to their page and exports as CSV."""

import time

from selenium.webdriver.common.by import By

from conftest import open_page, shot, wait, wait_ready

COLLECT_TABLE = """
return Array.from(document.querySelectorAll('[data-table="alerts"] tbody tr'))
    .map(r => Array.from(r.querySelectorAll('td')).map(td => td.dataset.value === undefined ? null : td.dataset.value));
"""


def firing_alerts(meterd, timeout=30):
    deadline = time.time() + timeout
    while True:
        answer = meterd.api("/api/alerts?state=firing&limit=10000")
        if answer["firing"] > 0:
            return answer
        if time.time() > deadline:
            raise AssertionError("no alert fired within %d s" % timeout)
        time.sleep(0.2)


def test_the_alerts_panel_lists_the_apis_alerts_links_meters_and_exports_csv(browser, meterd):
    api = firing_alerts(meterd)
    assert api["firing"] == len(api["alerts"])
    assert all(alert["state"] == "firing" and alert["resolved_at"] is None for alert in api["alerts"])
    assert any(alert["rule"] == "faulty" for alert in api["alerts"])
    assert meterd.api_error("/api/alerts?state=loud")[0] == 400

    open_page(browser, meterd, "", "!!window.meterd.alerts && window.meterd.alerts.firing > 0")
    answer = browser.execute_script("return window.meterd.alerts")
    # What the panel shows is what it fetched, cell by cell, firing ones first.
    rows = browser.execute_script(COLLECT_TABLE)
    expected = [[a["state"], a["rule"], a["subject"], a["since"], a["fired_at"], a["detail"], a["id"]] for a in answer["alerts"]]
    assert rows == expected
    assert len(rows) == min(100, answer["firing"] + len([a for a in answer["alerts"] if a["state"] == "resolved"]))
    states = [row[0] for row in rows]
    assert states == sorted(states, key=lambda state: state != "firing")
    assert browser.find_element(By.ID, "alerts-count").text == "(%s firing)" % format(answer["firing"], ",")
    # The firing alerts shown are the ones the API lists as firing (oldest first).
    firing_ids = [a["id"] for a in api["alerts"]]
    shown_firing = [row[6] for row in rows if row[0] == "firing"]
    assert shown_firing == [i for i in firing_ids if i in set(shown_firing)]
    shot(browser, "alerts-panel.png")

    # CSV: a header and one line per row, as every other table.
    text = browser.execute_script("return window.meterd.tableCSV('alerts')")
    lines = [line for line in text.split("\r\n") if line]
    assert lines[0] == "State,Rule,Subject,Since,Fired,Detail,Alert ID"
    assert len(lines) == 1 + len(rows)
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-export=alerts]")

    # A faulty meter's subject links to the meter's page.
    faulty = next(a for a in answer["alerts"] if a["rule"] == "faulty")
    link = browser.find_element(By.XPATH, "//div[@data-table='alerts']//a[text()='%s']" % faulty["subject"])
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()
    wait_ready(browser, "window.meterd.state.view === 'meter' && window.meterd.meter && window.meterd.meter.meter === '%s'" % faulty["subject"])
    assert browser.find_element(By.CSS_SELECTOR, "[data-meter=state]").text.endswith("faulty")
    wait(browser, lambda d: "meter=" in d.current_url)
