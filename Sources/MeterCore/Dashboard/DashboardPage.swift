/// The dashboard's HTML: the six sections of the use case, the filters and the drill-down view.
/// `dashboard.js` fills it from the JSON API; `<!--CHART_JS-->` becomes Chart.js's script tag when
/// the file is installed.
enum DashboardPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meterd dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/dashboard.css">
<!--CHART_JS-->
<script src="/assets/dashboard.js" defer></script>
</head>
<body data-state="loading">
<a class="skip" href="#content">Skip to content</a>
<header class="top">
  <h1><a href="?" data-nav>meterd</a> <span class="sub">smart metering dashboard</span></h1>
  <form id="filters" class="filters" aria-label="Filters">
    <label>From <input type="month" id="filter-from" name="from" required></label>
    <label>To <input type="month" id="filter-to" name="to" required></label>
    <label>Region
      <select id="filter-region" name="region"><option value="">All regions</option></select>
    </label>
    <button type="button" id="filter-reset">Reset</button>
    <a id="region-customers" class="button" href="?" data-nav hidden>Customers of region</a>
  </form>
  <p class="live" aria-live="polite"><span class="dot" aria-hidden="true"></span>
    <span id="data-time">Loading…</span> <span id="ingest-live"></span></p>
</header>
<p id="error" class="error" role="alert" hidden></p>
<p id="no-charts" class="notice" hidden>Charts are unavailable (Chart.js is not installed on the server): every figure is shown as a table.</p>
<main id="content">
<nav id="crumbs" class="crumbs" aria-label="Breadcrumb" hidden>
  <button type="button" id="back">← Back</button>
  <ol id="crumb-list"></ol>
</nav>
<div id="drill" hidden></div>
<div id="sections">
<section id="overview" aria-labelledby="h-overview">
  <h2 id="h-overview">Overview</h2>
  <div class="cards">
    <div class="card"><span class="label">Total customers</span><span class="value" data-kpi="total_customers"></span></div>
    <div class="card"><span class="label">Total consumption</span><span class="value" data-kpi="total_consumption_kwh" data-unit="kWh"></span></div>
    <div class="card"><span class="label">Total revenue</span><span class="value" data-kpi="total_revenue" data-format="money"></span></div>
    <div class="card"><span class="label">Average consumption per customer-month</span><span class="value" data-kpi="average_consumption_kwh" data-unit="kWh" data-digits="1"></span></div>
    <div class="card ok"><span class="label">Active meters</span><span class="value" data-kpi="meters.active"></span></div>
    <div class="card warn"><span class="label">Inactive meters</span><span class="value" data-kpi="meters.inactive"></span></div>
    <div class="card bad"><span class="label">Faulty meters</span><span class="value" data-kpi="meters.faulty"></span></div>
    <div class="card"><span class="label">Average satisfaction</span><span class="value" data-kpi="satisfaction.average" data-digits="2" data-unit="/ 5"></span></div>
  </div>
</section>

<section id="consumption" aria-labelledby="h-consumption">
  <h2 id="h-consumption">Consumption analysis</h2>
  <div class="grid">
    <figure class="panel">
      <figcaption>Consumption by region <small class="chart-hint">(click a bar to filter)</small></figcaption>
      <div class="chart"><canvas id="chart-consumption-region" role="img" aria-label="Bar chart: consumption by region"></canvas></div>
      <details class="data"><summary>Data table</summary><div data-table="consumption_by_region"></div></details>
    </figure>
    <figure class="panel">
      <figcaption>Monthly consumption</figcaption>
      <div class="chart"><canvas id="chart-monthly-consumption" role="img" aria-label="Line chart: consumption by month"></canvas></div>
      <details class="data"><summary>Data table</summary><div data-table="monthly_consumption"></div></details>
    </figure>
    <figure class="panel">
      <figcaption>Top 10 consumers</figcaption>
      <div data-table="top_consumers"></div>
    </figure>
  </div>
</section>

<section id="meters" aria-labelledby="h-meters">
  <h2 id="h-meters">Meter performance</h2>
  <div class="grid">
    <figure class="panel">
      <figcaption>Meter health (share of customer-months)</figcaption>
      <div class="chart"><canvas id="chart-meter-health" role="img" aria-label="Doughnut chart: meter health"></canvas></div>
      <details class="data"><summary>Data table</summary><div data-table="meter_health"></div></details>
    </figure>
    <figure class="panel">
      <figcaption>Reading latency (receive time − meter time)</figcaption>
      <div class="cards small">
        <div class="card"><span class="label">Average</span><span class="value" data-kpi="reading_latency_ms.avg" data-unit="ms"></span></div>
        <div class="card"><span class="label">p50</span><span class="value" data-kpi="reading_latency_ms.p50" data-unit="ms"></span></div>
        <div class="card"><span class="label">p95</span><span class="value" data-kpi="reading_latency_ms.p95" data-unit="ms"></span></div>
        <div class="card"><span class="label">p99</span><span class="value" data-kpi="reading_latency_ms.p99" data-unit="ms"></span></div>
        <div class="card"><span class="label">Live readings</span><span class="value" data-kpi="reading_latency_ms.count"></span></div>
      </div>
    </figure>
    <figure class="panel">
      <figcaption>Faulty meters <small>(worst first)</small></figcaption>
      <div data-table="faulty_meters" class="scroll"></div>
    </figure>
    <figure class="panel">
      <figcaption>Inactive meters <small id="inactive-count"></small></figcaption>
      <div data-table="inactive_meters" class="scroll"></div>
    </figure>
  </div>
</section>

<section id="revenue" aria-labelledby="h-revenue">
  <h2 id="h-revenue">Revenue insights</h2>
  <div class="grid">
    <figure class="panel">
      <figcaption>Revenue by region <small class="chart-hint">(click a bar to filter)</small></figcaption>
      <div class="chart"><canvas id="chart-revenue-region" role="img" aria-label="Bar chart: revenue by region"></canvas></div>
      <details class="data"><summary>Data table</summary><div data-table="revenue_by_region"></div></details>
    </figure>
    <figure class="panel">
      <figcaption>Revenue trend (12 months to the end of the period)</figcaption>
      <div class="chart"><canvas id="chart-revenue-trend" role="img" aria-label="Line chart: revenue over the last 12 months"></canvas></div>
      <details class="data"><summary>Data table</summary><div data-table="revenue_trend"></div></details>
    </figure>
    <figure class="panel">
      <figcaption>Bills: paid vs unpaid</figcaption>
      <div class="chart"><canvas id="chart-payment-status" role="img" aria-label="Pie chart: paid and unpaid bills"></canvas></div>
      <details class="data"><summary>Data table</summary><div data-table="payment_status"></div></details>
    </figure>
  </div>
</section>

<section id="customers" aria-labelledby="h-customers">
  <h2 id="h-customers">Customer insights</h2>
  <div class="grid">
    <figure class="panel">
      <figcaption>Satisfaction</figcaption>
      <div class="cards small">
        <div class="card"><span class="label">Average score</span><span class="value" data-kpi="satisfaction.average" data-digits="2" data-unit="/ 5"></span></div>
        <div class="card"><span class="label">Responses</span><span class="value" data-kpi="satisfaction.count"></span></div>
      </div>
      <div class="chart short"><canvas id="chart-satisfaction" role="img" aria-label="Bar chart: satisfaction scores"></canvas></div>
      <details class="data"><summary>Data table</summary><div data-table="satisfaction_distribution"></div></details>
    </figure>
    <figure class="panel">
      <figcaption>New vs returning customers</figcaption>
      <div class="cards small">
        <div class="card"><span class="label">New (installed in the period)</span><span class="value" data-kpi="new_vs_returning.new"></span></div>
        <div class="card"><span class="label">Returning</span><span class="value" data-kpi="new_vs_returning.returning"></span></div>
      </div>
    </figure>
    <figure class="panel">
      <figcaption>Complaints in <span id="complaints-month">the last month</span></figcaption>
      <div class="cards small">
        <div class="card"><span class="label">Received</span><span class="value" data-kpi="complaints.received"></span></div>
        <div class="card"><span class="label">Resolved</span><span class="value" data-kpi="complaints.resolved"></span></div>
      </div>
    </figure>
  </div>
</section>

<section id="operations" aria-labelledby="h-operations">
  <h2 id="h-operations">Operational efficiency</h2>
  <div class="grid">
    <figure class="panel">
      <figcaption>Installations and maintenance</figcaption>
      <div class="cards small">
        <div class="card"><span class="label">Average installation time</span><span class="value" data-kpi="installation_time_days" data-digits="1" data-unit="days"></span></div>
        <div class="card"><span class="label">Maintenance received</span><span class="value" data-kpi="maintenance.received"></span></div>
        <div class="card"><span class="label">Maintenance processed</span><span class="value" data-kpi="maintenance.processed"></span></div>
        <div class="card"><span class="label">Open requests</span><span class="value" data-kpi="maintenance.open"></span></div>
        <div class="card"><span class="label">Average resolution</span><span class="value" data-kpi="maintenance.average_resolution_days" data-digits="1" data-unit="days"></span></div>
      </div>
    </figure>
    <figure class="panel wide">
      <figcaption>Technician performance</figcaption>
      <div class="chart"><canvas id="chart-technicians" role="img" aria-label="Bar chart: installations and maintenance jobs per technician"></canvas></div>
      <div data-table="technicians" class="scroll"></div>
    </figure>
  </div>
</section>
</div>
</main>
<footer class="foot">meterd · <a href="/metrics">metrics</a> · <a href="/api/kpi">KPI JSON</a></footer>
</body>
</html>
"""#
}
