'use strict';
(function () {
  const initial = new URLSearchParams(location.search);
  const ANIMATIONS = initial.get('animations') !== '0';
  const REFRESH_MS = Math.max(1, Number(initial.get('refresh')) || 5) * 1000;
  const HAS_CHARTS = typeof window.Chart === 'function';
  const COLORS = ['#2563eb', '#16a34a', '#f59e0b', '#dc2626', '#7c3aed', '#0891b2', '#db2777', '#65a30d'];
  const STATUS_COLORS = { good: '#22c55e', fair: '#f59e0b', poor: '#ef4444' };
  if (HAS_CHARTS) {
    Chart.defaults.maintainAspectRatio = false;
    Chart.defaults.responsive = true;
    if (!ANIMATIONS) { Chart.defaults.animation = false; }
  }

  // ---- formatting -------------------------------------------------------------------------
  const numberFormats = {};
  function fmtNumber(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) { return '—'; }
    const key = String(digits);
    if (!numberFormats[key]) {
      numberFormats[key] = new Intl.NumberFormat('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
    }
    return numberFormats[key].format(value);
  }
  // A 0–1 share as a percentage.
  function fmtShare(value, digits) { return value === null || value === undefined ? '—' : fmtNumber(100 * value, digits === undefined ? 1 : digits) + ' %'; }
  function fmtMoney(value) { return value === null || value === undefined ? '—' : '$' + fmtNumber(value, 2); }
  function fmtTime(iso) {
    if (!iso) { return '—'; }
    return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }
  function esc(text) {
    return String(text).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  }
  function path(object, dotted) {
    return dotted.split('.').reduce((value, key) => (value === null || value === undefined ? undefined : value[key]), object);
  }

  // ---- state in the URL -------------------------------------------------------------------
  const KEYS = ['from', 'to', 'region', 'view', 'customer', 'meter', 'sort', 'order', 'page'];
  let state = {};
  // Who is logged in (/api/session); a region-scoped user's region is fixed: the server answers
  // 403 for any other, so the filter never offers one.
  let session = null;
  const scopeRegion = () => (session && session.scope && session.scope !== '*' ? session.scope : '');
  function readURL() {
    const query = new URLSearchParams(location.search);
    state = {};
    for (const key of KEYS) { state[key] = query.get(key) || ''; }
    if (!state.view) { state.view = 'dashboard'; }
    if (scopeRegion()) { state.region = scopeRegion(); }
  }
  function urlFor(next) {
    const query = new URLSearchParams();
    for (const key of KEYS) {
      const value = next[key];
      if (value && !(key === 'view' && value === 'dashboard')) { query.set(key, value); }
    }
    for (const key of ['animations', 'refresh']) { if (initial.has(key)) { query.set(key, initial.get(key)); } }
    const text = query.toString();
    return text ? '?' + text : location.pathname;
  }
  function navigate(changes, options) {
    const next = Object.assign({}, state, changes);
    const url = urlFor(next);
    if (options && options.replace) { history.replaceState(null, '', url); } else { history.pushState(null, '', url); }
    readURL();
    render();
  }
  function periodQuery(extra) {
    const query = new URLSearchParams();
    if (state.from) { query.set('from', state.from); }
    if (state.to) { query.set('to', state.to); }
    if (state.region) { query.set('region', state.region); }
    for (const [key, value] of Object.entries(extra || {})) { query.set(key, value); }
    return query.toString();
  }
  function link(changes, text, className) {
    const next = Object.assign({}, state, changes);
    return `<a href="${esc(urlFor(next))}" data-nav${className ? ` class="${className}"` : ''}>${esc(text)}</a>`;
  }

  // ---- API --------------------------------------------------------------------------------
  async function api(url) {
    const response = await fetch(url, { headers: { Accept: 'application/json' } });
    if (response.status === 401 && session && session.authentication) {
      location.assign('/login');  // the session expired or the user was removed
    }
    let body = null;
    try { body = await response.json(); } catch (error) { body = null; }
    if (!response.ok) {
      const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }
  const errorBox = document.getElementById('error');
  function showError(error) {
    errorBox.textContent = error ? String(error.message || error) : '';
    errorBox.hidden = !error;
    if (error) { document.body.dataset.state = 'error'; }
  }

  // ---- tables and CSV ---------------------------------------------------------------------
  // A column: {key, label, num, format(value,row) -> html|text, csv(value,row) -> raw value}.
  function renderTable(name, columns, rows, options) {
    const holder = document.querySelector(`[data-table="${name}"]`);
    if (!holder) { return; }
    options = options || {};
    holder._export = { name, columns, rows };
    // A live refresh with the same rows leaves the table alone, so keyboard focus stays where it was.
    const signature = JSON.stringify([location.search, columns.map(column => column.label), rows, options.count, options.sort, options.order]);
    if (holder._signature === signature) { return; }
    holder._signature = signature;
    const head = columns.map(column => {
      const cls = column.num ? ' class="num"' : '';
      if (options.sortable && column.sort) {
        const active = options.sort === column.sort;
        const aria = active ? ` aria-sort="${options.order === 'asc' ? 'ascending' : 'descending'}"` : '';
        return `<th scope="col"${cls}${aria}><button type="button" class="sort" data-sort="${column.sort}">${esc(column.label)}</button></th>`;
      }
      return `<th scope="col"${cls}>${esc(column.label)}</th>`;
    }).join('');
    const body = rows.length === 0
      ? `<tr><td colspan="${columns.length}" class="muted">No data</td></tr>`
      : rows.map(row => '<tr>' + columns.map(column => {
        const value = path(row, column.key);
        const raw = column.csv ? column.csv(value, row) : value;
        const shown = column.format ? column.format(value, row) : esc(value === null || value === undefined ? '—' : value);
        const cls = column.num ? ' class="num"' : '';
        return `<td${cls} data-value="${esc(raw === null || raw === undefined ? '' : raw)}">${shown}</td>`;
      }).join('') + '</tr>').join('');
    const count = options.count !== undefined ? options.count : `${rows.length} row${rows.length === 1 ? '' : 's'}`;
    holder.innerHTML = `<div class="table-head"><span class="count">${esc(count)}</span>` +
      `<button type="button" class="csv" data-export="${name}" aria-label="Export ${esc(options.caption || name)} as CSV">CSV</button></div>` +
      `<div class="table-wrap"><table data-name="${name}"><caption class="visually-hidden">${esc(options.caption || name.replace(/_/g, ' '))}</caption>` +
      `<thead><tr>${head}</tr></thead><tbody>${body}</tbody></table></div>`;
  }
  // A text a spreadsheet would run as a formula (=, +, -, @, tab or CR first: a region or name
  // from the company's files) gets a leading apostrophe; numbers, negative ones too, stay numbers.
  function csvCell(value) {
    if (value === null || value === undefined) { return ''; }
    let text = String(value);
    if (typeof value !== 'number' && /^[=+\-@\t\r]/.test(text) && !/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text)) {
      text = "'" + text;
    }
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  function tableCSV(name) {
    const holder = document.querySelector(`[data-table="${name}"]`);
    if (!holder || !holder._export) { return ''; }
    const columns = holder._export.columns.filter(column => !column.noCSV);
    const rows = holder._export.rows;
    const lines = [columns.map(column => csvCell(column.label)).join(',')];
    for (const row of rows) {
      lines.push(columns.map(column => {
        const value = path(row, column.key);
        return csvCell(column.csv ? column.csv(value, row) : value);
      }).join(','));
    }
    return lines.join('\r\n') + '\r\n';
  }
  function exportCSV(name) {
    const parts = ['meterd', name, state.from, state.to, state.region, state.customer && state.view === 'customer' ? 'customer-' + state.customer : '',
      state.meter && state.view === 'meter' ? state.meter : ''].filter(Boolean);
    const blob = new Blob([tableCSV(name)], { type: 'text/csv;charset=utf-8' });
    const anchor = document.createElement('a');
    anchor.href = URL.createObjectURL(blob);
    anchor.download = parts.join('_').replace(/[^A-Za-z0-9._-]+/g, '-') + '.csv';
    document.body.appendChild(anchor);
    anchor.click();
    setTimeout(() => { URL.revokeObjectURL(anchor.href); anchor.remove(); }, 1000);
  }

  const num = (digits) => (value) => fmtNumber(value, digits);
  const money = (value) => fmtMoney(value);
  const statusCell = (value) => value ? `<span class="status-${esc(value)}">${esc(value)}</span>` : '—';
  // A month whose kWh was partly spread from a gap in a meter's register readings.
  const estimatedCell = (value) => value ? '<span class="estimated" title="part of this month\'s kWh is estimated from a gap">estimated</span>' : '';
  const customerCell = (value) => value === null || value === undefined ? '—' : link({ view: 'customer', customer: String(value), meter: '' }, String(value));
  const meterCell = (value, row) => value ? link({ view: 'meter', meter: value, customer: row && row.customer_id ? String(row.customer_id) : state.customer }, value) : '—';
  const regionCell = (value) => value ? link({ region: value, view: state.view === 'customers' ? 'customers' : 'dashboard', page: '' }, value) : '—';
  const regionCustomersCell = (value, row) => link({ region: row.region, view: 'customers', page: '', sort: '', order: '' }, 'customers ›');

  // ---- charts -----------------------------------------------------------------------------
  const charts = {};
  function chart(id, type, labels, datasets, options) {
    if (!HAS_CHARTS) { return null; }
    const existing = charts[id];
    if (existing && existing.config.type === type) {
      existing.data.labels = labels;
      existing.data.datasets.forEach((dataset, index) => { Object.assign(dataset, datasets[index]); });
      if (existing.data.datasets.length !== datasets.length) { existing.data.datasets = datasets; }
      existing.update(ANIMATIONS ? undefined : 'none');
      return existing;
    }
    if (existing) { existing.destroy(); }
    const canvas = document.getElementById(id);
    if (!canvas) { return null; }
    const config = { type, data: { labels, datasets }, options: Object.assign({ plugins: { legend: { display: datasets.length > 1 || type === 'doughnut' || type === 'pie' } } }, options || {}) };
    charts[id] = new Chart(canvas, config);
    return charts[id];
  }
  function regionChartOptions(axisLabel) {
    return {
      scales: { y: { beginAtZero: true, title: { display: true, text: axisLabel } } },
      onClick: (event, elements, instance) => {
        if (!elements.length) { return; }
        const region = instance.data.labels[elements[0].index];
        navigate({ region, view: 'dashboard', page: '' });
      },
      onHover: (event, elements) => { event.native.target.style.cursor = elements.length ? 'pointer' : 'default'; },
    };
  }

  // ---- dashboard --------------------------------------------------------------------------
  let lastKPI = null;
  let regionsLoaded = false;
  function setKPI(kpi) {
    for (const element of document.querySelectorAll('[data-kpi]')) {
      const value = path(kpi, element.dataset.kpi);
      const digits = element.dataset.digits ? Number(element.dataset.digits) : 0;
      let text = element.dataset.format === 'money' ? fmtMoney(value) : fmtNumber(value, digits);
      if (element.dataset.unit && value !== null && value !== undefined) { text += ' ' + element.dataset.unit; }
      element.textContent = text;
      element.dataset.value = value === null || value === undefined ? '' : String(value);
    }
    for (const element of document.querySelectorAll('[data-share]')) {
      const value = path(kpi, element.dataset.share);
      element.textContent = fmtShare(value);
      element.dataset.value = value === null || value === undefined ? '' : String(value);
    }
  }

  // A line whose last point is still running (the current month, today): drawn dashed into it,
  // with a hollow marker, so a partial figure does not read as a collapse.
  function partialLine(color, values, partialIndex) {
    const partial = (index) => index === partialIndex;
    return {
      borderColor: color, backgroundColor: color, tension: 0.2,
      pointStyle: values.map((v, i) => partial(i) ? 'rectRot' : 'circle'),
      pointRadius: values.map((v, i) => partial(i) ? 6 : 3),
      pointBackgroundColor: values.map((v, i) => partial(i) ? '#fff' : color),
      segment: { borderDash: (context) => partial(context.p1DataIndex) ? [6, 4] : undefined },
    };
  }
  const toDateCell = (value) => value ? '<span class="to-date" title="still running: the figure so far">to date</span>' : '';

  function renderKPI(kpi) {
    lastKPI = kpi;
    setKPI(kpi);
    const syncFilters = () => {
      document.getElementById('filter-from').value = kpi.period.from;
      document.getElementById('filter-to').value = kpi.period.to;
    };
    syncFilters();
    document.getElementById('complaints-month').textContent = kpi.period.to;
    document.getElementById('complaints-period').textContent = `(${kpi.period.from} to ${kpi.period.to})`;
    // The month still running, if the period holds it: its figures are month-to-date.
    const toDate = (month) => month === kpi.current_month;

    // Consumption
    const byRegion = kpi.consumption_by_region;
    chart('chart-consumption-region', 'bar', byRegion.map(r => r.region),
      [{ label: 'kWh', data: byRegion.map(r => r.kwh), backgroundColor: byRegion.map((r, i) => r.region === state.region || !state.region ? COLORS[i % COLORS.length] : '#cbd5e1') }],
      regionChartOptions('kWh'));
    renderTable('consumption_by_region', [
      { key: 'region', label: 'Region', format: regionCell },
      { key: 'kwh', label: 'kWh', num: true, format: num(0) },
      { key: 'region', label: 'Drill down', format: regionCustomersCell, noCSV: true },
    ], byRegion, { caption: 'Consumption by region' });
    const monthlyKwh = kpi.monthly_consumption.map(m => m.kwh);
    chart('chart-monthly-consumption', 'line', kpi.monthly_consumption.map(m => m.month + (toDate(m.month) ? ' (to date)' : '')),
      [Object.assign({ label: 'kWh', data: monthlyKwh }, partialLine(COLORS[0], monthlyKwh, kpi.monthly_consumption.findIndex(m => toDate(m.month))))],
      { scales: { y: { beginAtZero: true, title: { display: true, text: 'kWh' } } } });
    renderTable('monthly_consumption', [
      { key: 'month', label: 'Month' }, { key: 'kwh', label: 'kWh', num: true, format: num(0) },
      { key: 'estimated', label: 'Estimated', format: estimatedCell },
      { key: 'to_date', label: 'Month to date', format: toDateCell },
    ], kpi.monthly_consumption.map(m => Object.assign({ to_date: toDate(m.month) }, m)), { caption: 'Monthly consumption' });
    renderTable('top_consumers', [
      { key: 'rank', label: '#', num: true },
      { key: 'customer_id', label: 'Customer', format: customerCell },
      { key: 'region', label: 'Region', format: regionCell },
      { key: 'kwh', label: 'kWh', num: true, format: num(0) },
    ], kpi.top_consumers.map((row, index) => Object.assign({ rank: index + 1 }, row)), { caption: 'Top 10 consumers' });

    // Meters
    const health = kpi.meter_health;
    const healthRows = ['good', 'fair', 'poor'].map(status => ({ status, percent: health[status] }));
    chart('chart-meter-health', 'doughnut', ['Good', 'Fair', 'Poor'],
      [{ label: '% of customer-months', data: healthRows.map(r => r.percent === null ? 0 : r.percent), backgroundColor: healthRows.map(r => STATUS_COLORS[r.status]) }]);
    renderTable('meter_health', [
      { key: 'status', label: 'Health', format: statusCell }, { key: 'percent', label: '% of customer-months', num: true, format: num(1) },
    ], healthRows, { caption: 'Meter health' });
    renderTable('faulty_meters', [
      { key: 'meter', label: 'Meter', format: meterCell },
      { key: 'customer_id', label: 'Customer', format: customerCell },
      { key: 'poor_months', label: 'Poor months', num: true },
      { key: 'faults', label: 'Faults', num: true },
    ], kpi.faulty_meters, { caption: 'Faulty meters', count: `${fmtNumber(kpi.meters.faulty, 0)} faulty, ${kpi.faulty_meters.length} worst shown` });

    // Revenue
    const revenueByRegion = kpi.revenue_by_region;
    chart('chart-revenue-region', 'bar', revenueByRegion.map(r => r.region),
      [{ label: 'Revenue', data: revenueByRegion.map(r => r.revenue), backgroundColor: revenueByRegion.map((r, i) => r.region === state.region || !state.region ? COLORS[(i + 1) % COLORS.length] : '#cbd5e1') }],
      regionChartOptions('Revenue ($)'));
    renderTable('revenue_by_region', [
      { key: 'region', label: 'Region', format: regionCell },
      { key: 'revenue', label: 'Revenue ($)', num: true, format: money },
      { key: 'region', label: 'Drill down', format: regionCustomersCell, noCSV: true },
    ], revenueByRegion, { caption: 'Revenue by region' });
    const trendRevenue = kpi.revenue_trend.map(m => m.revenue);
    chart('chart-revenue-trend', 'line', kpi.revenue_trend.map(m => m.month + (toDate(m.month) ? ' (to date)' : '')),
      [Object.assign({ label: 'Revenue', data: trendRevenue }, partialLine(COLORS[1], trendRevenue, kpi.revenue_trend.findIndex(m => toDate(m.month))))],
      { scales: { y: { beginAtZero: true, title: { display: true, text: 'Revenue ($)' } } } });
    renderTable('revenue_trend', [
      { key: 'month', label: 'Month' }, { key: 'revenue', label: 'Revenue ($)', num: true, format: money },
      { key: 'to_date', label: 'Month to date', format: toDateCell },
    ], kpi.revenue_trend.map(m => Object.assign({ to_date: toDate(m.month) }, m)), { caption: 'Revenue trend' });
    const payments = kpi.payment_status;
    const billCount = payments.paid.count + payments.unpaid.count;
    const paymentRows = ['paid', 'unpaid'].map(status => ({
      status, count: payments[status].count, amount: payments[status].amount,
      share: billCount > 0 ? 100 * payments[status].count / billCount : null,
    }));
    chart('chart-payment-status', 'pie', ['Paid', 'Unpaid'],
      [{ label: 'Bills', data: paymentRows.map(r => r.count), backgroundColor: ['#22c55e', '#ef4444'] }]);
    renderTable('payment_status', [
      { key: 'status', label: 'Status' }, { key: 'count', label: 'Bills', num: true, format: num(0) },
      { key: 'amount', label: 'Amount ($)', num: true, format: money }, { key: 'share', label: '% of bills', num: true, format: num(1) },
    ], paymentRows, { caption: 'Paid and unpaid bills' });

    // Read success: today (the last judged day while the period runs) is so far.
    const daily = kpi.read_success_daily;
    const today = kpi.current_month !== null && daily.length > 0 ? daily.length - 1 : -1;
    const dailyRates = daily.map(d => d.rate);
    document.getElementById('read-days').textContent = fmtNumber(daily.length, 0);
    chart('chart-read-success', 'line', daily.map((d, i) => d.date + (i === today ? ' (so far)' : '')),
      [Object.assign({ label: 'Read success', data: dailyRates }, partialLine(COLORS[5], dailyRates, today))],
      {
        scales: { y: { beginAtZero: true, suggestedMax: 1, ticks: { callback: (value) => fmtShare(value, 0) }, title: { display: true, text: 'meters with a reading' } } },
        plugins: { legend: { display: false }, tooltip: { callbacks: { label: (context) => fmtShare(context.parsed.y) } } },
      });
    const share = (value) => esc(fmtShare(value));
    renderTable('read_success_daily', [
      { key: 'date', label: 'Date' }, { key: 'rate', label: 'Read success (%)', num: true, format: share },
      { key: 'so_far', label: 'Today so far', format: toDateCell },
    ], daily.map((d, i) => Object.assign({ so_far: i === today }, d)).reverse(), { caption: 'Read success per day' });
    const worstRegions = kpi.read_success_by_region.slice().sort((a, b) => {
      const left = a.rate === null ? Infinity : a.rate, right = b.rate === null ? Infinity : b.rate;
      return left !== right ? left - right : (a.region < b.region ? -1 : 1);
    });
    renderTable('read_success_regions', [
      { key: 'region', label: 'Region', format: regionCell }, { key: 'rate', label: 'Read success (%)', num: true, format: share },
    ], worstRegions, { caption: 'Regions by read success' });
    renderTable('lowest_completeness', [
      { key: 'meter', label: 'Meter', format: meterCell }, { key: 'region', label: 'Region', format: regionCell },
      { key: 'completeness', label: 'Completeness (%)', num: true, format: share },
      { key: 'readings', label: 'Readings', num: true, format: num(0) },
      { key: 'expected_readings', label: 'Expected', num: true, format: num(0) },
      { key: 'interval_s', label: 'Interval (s)', num: true, format: num(0) },
    ], kpi.lowest_completeness_meters, { caption: 'Meters with the lowest interval completeness' });

    // Customers
    const distribution = ['1', '2', '3', '4', '5'].map(score => ({ score, count: kpi.satisfaction.distribution[score] }));
    chart('chart-satisfaction', 'bar', distribution.map(r => 'Score ' + r.score),
      [{ label: 'Responses', data: distribution.map(r => r.count), backgroundColor: ['#ef4444', '#f97316', '#f59e0b', '#84cc16', '#22c55e'] }],
      { scales: { y: { beginAtZero: true } } });
    renderTable('satisfaction_distribution', [
      { key: 'score', label: 'Score', num: true }, { key: 'count', label: 'Responses', num: true, format: num(0) },
    ], distribution, { caption: 'Satisfaction scores' });

    // Operations
    const technicians = kpi.technicians;
    chart('chart-technicians', 'bar', technicians.map(t => t.name || ('#' + t.technician_id)), [
      { label: 'Installations', data: technicians.map(t => t.installations), backgroundColor: COLORS[0] },
      { label: 'Maintenance jobs', data: technicians.map(t => t.maintenance_jobs), backgroundColor: COLORS[2] },
    ], { scales: { y: { beginAtZero: true } } });
    renderTable('technicians', [
      { key: 'technician_id', label: 'ID', num: true },
      { key: 'name', label: 'Technician' },
      { key: 'installations', label: 'Installations', num: true },
      { key: 'maintenance_jobs', label: 'Maintenance jobs', num: true },
      { key: 'average_resolution_days', label: 'Avg resolution (days)', num: true, format: num(1) },
    ], technicians, { caption: 'Technician performance' });
  }

  function renderInactive(answer) {
    document.getElementById('inactive-count').textContent = `(${fmtNumber(answer.count, 0)})`;
    renderTable('inactive_meters', [
      { key: 'meter', label: 'Meter', format: meterCell },
      { key: 'customer_id', label: 'Customer', format: customerCell },
      { key: 'region', label: 'Region', format: regionCell },
      { key: 'silent_since', label: 'Silent since', format: (value) => value ? esc(fmtTime(value)) : 'never reported' },
    ], answer.meters, { caption: 'Inactive meters', count: `${fmtNumber(answer.count, 0)} inactive, ${answer.meters.length} shown` });
  }

  function renderStatus(status) {
    const element = document.getElementById('ingest-live');
    element.textContent = status
      ? `· ${fmtNumber(status.readings_per_s, 1)} readings/s · ${fmtNumber(status.connections, 0)} connections`
      : '';
    if (status) {
      element.dataset.readingsPerS = String(status.readings_per_s);
      element.dataset.readingsTotal = String(status.readings_total);
    }
  }

  // ---- alerts (SPEC.md section 11): firing first, then the most recently resolved -------------
  const alertSubjectCell = (value, row) => {
    if (row.rule === 'inactive' || row.rule === 'faulty') { return meterCell(value, {}); }
    if (row.rule === 'read_success') { return regionCell(value); }
    return esc(value);
  };
  function renderAlerts(answer) {
    document.getElementById('alerts-count').textContent = `(${fmtNumber(answer.firing, 0)} firing)`;
    renderTable('alerts', [
      { key: 'state', label: 'State', format: (value) => `<span class="alert-${esc(value)}">${esc(value)}</span>` },
      { key: 'rule', label: 'Rule' },
      { key: 'subject', label: 'Subject', format: alertSubjectCell },
      { key: 'since', label: 'Since', format: (value) => esc(fmtTime(value)) },
      { key: 'fired_at', label: 'Fired', format: (value) => esc(fmtTime(value)) },
      { key: 'detail', label: 'Detail' },
      { key: 'id', label: 'Alert ID' },
    ], answer.alerts, { caption: 'Alerts', count: `${fmtNumber(answer.firing, 0)} firing, ${answer.alerts.length} shown` });
  }
  async function loadAlerts() {
    // A daemon without the alert API (or a failing one) leaves the rest of the dashboard alone.
    const answer = await api('/api/alerts?limit=100').catch(() => null);
    if (answer) {
      renderAlerts(answer);
      window.meterd.alerts = answer;
    }
  }

  let loads = 0;
  function markLoaded(generatedAt) {
    loads += 1;
    document.body.dataset.loads = String(loads);
    document.body.dataset.state = 'ready';
    const element = document.getElementById('data-time');
    const time = generatedAt ? new Date(generatedAt) : new Date();
    element.innerHTML = `Live · data as of <time datetime="${esc(generatedAt || time.toISOString())}">${esc(time.toLocaleTimeString('en-GB'))}</time>`;
    element.dataset.generatedAt = generatedAt || '';
  }

  async function loadRegions() {
    const answer = await api('/api/regions');
    const select = document.getElementById('filter-region');
    const current = state.region;
    select.innerHTML = '<option value="">All regions</option>' + answer.regions.map(r =>
      `<option value="${esc(r.region)}">${esc(r.region)} (${fmtNumber(r.customers, 0)} customers)</option>`).join('');
    if (current && !answer.regions.some(r => r.region === current)) {
      select.insertAdjacentHTML('beforeend', `<option value="${esc(current)}">${esc(current)}</option>`);
    }
    select.value = current;
    if (scopeRegion()) {
      select.querySelector('option[value=""]').remove();
      select.disabled = true;
    }
    regionsLoaded = true;
  }

  async function loadSession() {
    session = await api('/api/session').catch(() => null);
    window.meterd.session = session;
    if (!session || !session.user) { return; }
    const scope = scopeRegion();
    document.getElementById('session-user').textContent =
      `${session.user} · ${session.role}${scope ? ' · region ' + scope : ' · all regions'}`;
    document.getElementById('session').hidden = false;
    readURL();
  }

  async function loadDashboard() {
    const query = periodQuery();
    const inactiveQuery = new URLSearchParams({ limit: '100' });
    if (state.region) { inactiveQuery.set('region', state.region); }
    const [kpi, inactive, status] = await Promise.all([
      api('/api/kpi' + (query ? '?' + query : '')),
      api('/api/inactive?' + inactiveQuery.toString()),
      // Live ingest figures are the whole fleet's: a region-scoped user is not shown them.
      scopeRegion() ? Promise.resolve(null) : api('/api/status').catch(() => null),
    ]);
    renderKPI(kpi);
    renderInactive(inactive);
    renderStatus(status);
    await loadAlerts();
    window.meterd.kpi = kpi;
    window.meterd.inactive = inactive;
    markLoaded(kpi.generated_at);
  }

  // ---- drill-down views -------------------------------------------------------------------
  const drill = document.getElementById('drill');
  function crumbs(items) {
    const list = document.getElementById('crumb-list');
    list.innerHTML = items.map((item, index) => index === items.length - 1
      ? `<li aria-current="page">${esc(item.text)}</li>`
      : `<li>${link(item.changes, item.text)}</li>`).join('');
  }
  function parentOf() {
    if (state.view === 'meter') {
      return state.customer ? { view: 'customer', meter: '' } : { view: 'dashboard', meter: '' };
    }
    if (state.view === 'customer') {
      return state.region ? { view: 'customers', customer: '' } : { view: 'dashboard', customer: '' };
    }
    return { view: 'dashboard', customer: '', meter: '', page: '', sort: '', order: '' };
  }

  async function loadRegionCustomers() {
    const sort = state.sort || 'kwh';
    const order = state.order || (sort === 'customer_id' ? 'asc' : 'desc');
    const query = new URLSearchParams({ sort, order, page: state.page || '1', per_page: '25' });
    if (state.from) { query.set('from', state.from); }
    if (state.to) { query.set('to', state.to); }
    const answer = await api(`/api/regions/${encodeURIComponent(state.region)}?${query.toString()}`);
    crumbs([{ text: 'Dashboard', changes: parentOf() }, { text: `Customers of ${answer.region}` }]);
    drill.innerHTML = `<section aria-labelledby="h-drill"><h2 id="h-drill" tabindex="-1">Customers of ${esc(answer.region)}</h2>` +
      `<p class="muted">${fmtNumber(answer.total, 0)} customers, ${fmtNumber(answer.meters, 0)} meters; figures for ` +
      `${esc(answer.period.from)} to ${esc(answer.period.to)}. Sort by a column heading.</p>` +
      `<div data-table="region_customers"></div>` +
      `<div class="pager"><button type="button" id="page-prev"${answer.page <= 1 ? ' disabled' : ''}>‹ Previous</button>` +
      `<span id="page-info">Page ${answer.page} of ${answer.pages}</span>` +
      `<button type="button" id="page-next"${answer.page >= answer.pages ? ' disabled' : ''}>Next ›</button></div></section>`;
    renderTable('region_customers', [
      { key: 'customer_id', label: 'Customer', sort: 'customer_id', format: customerCell },
      { key: 'installed_on', label: 'Installed', sort: 'installed' },
      { key: 'meters', label: 'Meters', format: (value, row) => (value || []).map(name => meterCell(name, row)).join(' '), csv: (value) => (value || []).join(' ') },
      { key: 'kwh', label: 'kWh', num: true, sort: 'kwh', format: num(0) },
      { key: 'revenue', label: 'Revenue ($)', num: true, sort: 'revenue', format: money },
      { key: 'records', label: 'Months', num: true, sort: 'records' },
      { key: 'poor_months', label: 'Poor months', num: true, sort: 'poor_months' },
      { key: 'faults', label: 'Faults', num: true, sort: 'faults' },
      { key: 'last_status', label: 'Last status', format: statusCell },
    ], answer.customers, { sortable: true, sort: answer.sort, order: answer.order, caption: `Customers of ${answer.region}`,
      count: `${answer.customers.length} of ${fmtNumber(answer.total, 0)} (page ${answer.page})` });
    document.getElementById('page-prev').addEventListener('click', () => navigate({ page: String(answer.page - 1) }));
    document.getElementById('page-next').addEventListener('click', () => navigate({ page: String(answer.page + 1) }));
    window.meterd.regionCustomers = answer;
    markLoaded(null);
  }

  async function loadCustomer() {
    const answer = await api(`/api/customers/${encodeURIComponent(state.customer)}`);
    const items = [{ text: 'Dashboard', changes: { view: 'dashboard', customer: '', meter: '' } }];
    if (state.region) { items.push({ text: `Customers of ${state.region}`, changes: { view: 'customers', customer: '', meter: '' } }); }
    items.push({ text: `Customer ${answer.customer_id}` });
    crumbs(items);
    drill.innerHTML = `<section aria-labelledby="h-drill"><h2 id="h-drill" tabindex="-1">Customer ${esc(answer.customer_id)}</h2>` +
      `<p class="muted">Region ${link({ region: answer.region, view: 'customers', customer: '', page: '' }, answer.region)} · installed ${esc(answer.installed_on || 'unknown')}</p>` +
      `<div class="grid">` +
      `<figure class="panel"><figcaption>Meters</figcaption><div data-table="customer_meters"></div></figure>` +
      `<figure class="panel"><figcaption>Monthly consumption</figcaption><div class="chart"><canvas id="chart-customer-monthly" role="img" aria-label="Line chart: this customer's consumption by month"></canvas></div></figure>` +
      `<figure class="panel wide"><figcaption>Monthly history</figcaption><div data-table="customer_monthly" class="scroll"></div></figure>` +
      `<figure class="panel"><figcaption>Bills</figcaption><div data-table="customer_bills" class="scroll"></div></figure>` +
      `<figure class="panel"><figcaption>Maintenance</figcaption><div data-table="customer_maintenance"></div></figure>` +
      `<figure class="panel"><figcaption>Feedback</figcaption><div data-table="customer_feedback"></div></figure>` +
      `<figure class="panel"><figcaption>Complaints</figcaption><div data-table="customer_complaints"></div></figure>` +
      `<figure class="panel"><figcaption>Installation</figcaption><div data-table="customer_installations"></div></figure>` +
      `</div></section>`;
    const withCustomer = answer.meters.map(m => Object.assign({ customer_id: answer.customer_id }, m));
    renderTable('customer_meters', [
      { key: 'meter', label: 'Meter', format: meterCell }, { key: 'state', label: 'State' },
      { key: 'last_reading', label: 'Last reading', format: (value) => esc(fmtTime(value)) },
      { key: 'last_status', label: 'Last status', format: statusCell },
      { key: 'readings_total', label: 'Readings', num: true }, { key: 'faults_total', label: 'Faults', num: true },
    ], withCustomer, { caption: 'Meters' });
    chart('chart-customer-monthly', 'line', answer.monthly.map(m => m.month),
      [{ label: 'kWh', data: answer.monthly.map(m => m.kwh), borderColor: COLORS[0], backgroundColor: COLORS[0], tension: 0.2 }],
      { scales: { y: { beginAtZero: true, title: { display: true, text: 'kWh' } } } });
    renderTable('customer_monthly', [
      { key: 'month', label: 'Month' }, { key: 'kwh', label: 'kWh', num: true, format: num(1) },
      { key: 'revenue', label: 'Revenue ($)', num: true, format: money }, { key: 'status', label: 'Status', format: statusCell },
      { key: 'readings', label: 'Live readings', num: true }, { key: 'faults', label: 'Faults', num: true },
      { key: 'estimated', label: 'Estimated', format: estimatedCell },
    ], answer.monthly, { caption: 'Monthly history' });
    renderTable('customer_bills', [
      { key: 'month', label: 'Month' }, { key: 'amount', label: 'Amount ($)', num: true, format: money }, { key: 'status', label: 'Status' },
    ], answer.bills, { caption: 'Bills' });
    renderTable('customer_maintenance', [
      { key: 'request_date', label: 'Requested' }, { key: 'resolution_date', label: 'Resolved' },
      { key: 'resolution_days', label: 'Days', num: true, format: num(0) },
      { key: 'technician', label: 'Technician', format: (value, row) => esc(value || ('#' + row.technician_id)) },
    ], answer.maintenance, { caption: 'Maintenance' });
    renderTable('customer_feedback', [{ key: 'date', label: 'Date' }, { key: 'score', label: 'Score', num: true }], answer.feedback, { caption: 'Feedback' });
    renderTable('customer_complaints', [
      { key: 'complaint_id', label: 'ID', num: true }, { key: 'date', label: 'Date' }, { key: 'category', label: 'Category' },
      { key: 'resolved_date', label: 'Resolved', format: (value) => esc(value || 'open') },
    ], answer.complaints, { caption: 'Complaints' });
    renderTable('customer_installations', [
      { key: 'request_date', label: 'Requested' }, { key: 'installed_date', label: 'Installed' },
      { key: 'days', label: 'Days', num: true, format: num(0) }, { key: 'technician', label: 'Technician' },
    ], answer.installations, { caption: 'Installations' });
    window.meterd.customer = answer;
    markLoaded(answer.generated_at);
  }

  let meterRendered = '';
  async function loadMeter(quiet) {
    const name = encodeURIComponent(state.meter);
    const [meter, recent] = await Promise.all([api(`/api/meters/${name}`), api(`/api/meters/${name}/readings?limit=60`)]);
    const items = [{ text: 'Dashboard', changes: { view: 'dashboard', customer: '', meter: '' } }];
    if (state.customer) { items.push({ text: `Customer ${state.customer}`, changes: { view: 'customer', meter: '' } }); }
    items.push({ text: `Meter ${meter.meter}` });
    crumbs(items);
    if (!quiet || meterRendered !== meter.meter) {
      meterRendered = meter.meter;
      drill.innerHTML = `<section aria-labelledby="h-drill"><h2 id="h-drill" tabindex="-1">Meter ${esc(meter.meter)}</h2>` +
        `<p class="muted" id="meter-owner"></p>` +
        `<div class="cards small" id="meter-cards"></div>` +
        `<div class="grid">` +
        `<figure class="panel wide"><figcaption>Status timeline <small>(recent readings, oldest left; outlined: fault; chart: latency by receive time)</small></figcaption><div class="timeline" id="meter-timeline" role="img" aria-label="Status of recent readings"></div>` +
        `<div class="chart short"><canvas id="chart-meter-latency" role="img" aria-label="Line chart: latency of recent readings"></canvas></div></figure>` +
        `<figure class="panel wide"><figcaption>Recent readings <small id="meter-scan"></small></figcaption><div data-table="meter_readings" class="scroll"></div></figure>` +
        `<figure class="panel wide"><figcaption>Months</figcaption><div data-table="meter_months" class="scroll"></div></figure>` +
        `<figure class="panel wide"><figcaption>Validation flags</figcaption><div data-table="meter_flags" class="scroll"></div></figure>` +
        `</div></section>`;
    }
    document.getElementById('meter-owner').innerHTML = (meter.customer_id !== null
      ? `Customer ${link({ view: 'customer', customer: String(meter.customer_id), meter: '' }, String(meter.customer_id))} · `
      : 'No customer · ') + `region ${esc(meter.region)} · first seen ${esc(fmtTime(meter.first_seen))}`;
    const cards = [
      ['State', meter.state + (meter.faulty ? ', faulty' : ''), 'state'],
      ['Last reading', fmtTime(meter.last_reading), 'last_reading'],
      ['Last status', meter.last_status || '—', 'last_status'],
      ['Last seq', meter.last_seq === null ? '—' : String(meter.last_seq), 'last_seq'],
      ['Readings', fmtNumber(meter.readings_total, 0), 'readings_total'],
      ['Faults', fmtNumber(meter.faults_total, 0), 'faults_total'],
      ['Duplicates', fmtNumber(meter.duplicates_total, 0), 'duplicates_total'],
      ['Latency (recent avg)', recent.latency_ms.avg === null ? '—' : fmtNumber(recent.latency_ms.avg, 0) + ' ms', 'latency_avg'],
      ['Latency (recent max)', recent.latency_ms.max === null ? '—' : fmtNumber(recent.latency_ms.max, 0) + ' ms', 'latency_max'],
    ];
    document.getElementById('meter-cards').innerHTML = cards.map(([label, value, key]) =>
      `<div class="card"><span class="label">${esc(label)}</span><span class="value" data-meter="${key}">${esc(value)}</span></div>`).join('');
    const oldestFirst = recent.readings.slice().reverse();
    document.getElementById('meter-timeline').innerHTML = oldestFirst.map(r =>
      `<span class="${esc(r.status)}${r.fault ? ' fault' : ''}" title="${esc(fmtTime(r.ts))}: ${esc(r.status)}${r.fault ? ', ' + esc(r.fault) : ''}"></span>`).join('') ||
      '<span class="muted" style="width:auto;background:none">no live readings</span>';
    document.getElementById('meter-scan').textContent = recent.complete ? `(${recent.count})`
      : `(${recent.count}, searched back to ${fmtTime(recent.scanned_since)})`;
    chart('chart-meter-latency', 'line', oldestFirst.map(r => fmtTime(r.received).slice(11, 19)),
      [{ label: 'Latency (ms)', data: oldestFirst.map(r => r.latency_ms), borderColor: COLORS[4], backgroundColor: COLORS[4], tension: 0.1 }],
      { scales: { y: { beginAtZero: true, title: { display: true, text: 'ms' } } } });
    renderTable('meter_readings', [
      { key: 'seq', label: 'Seq', num: true }, { key: 'ts', label: 'Meter time', format: (value) => esc(fmtTime(value)) },
      { key: 'received', label: 'Received', format: (value) => esc(fmtTime(value)) },
      { key: 'latency_ms', label: 'Latency (ms)', num: true, format: num(0) }, { key: 'kwh', label: 'kWh', num: true, format: num(4) },
      { key: 'status', label: 'Status', format: statusCell }, { key: 'fault', label: 'Fault' },
      { key: 'voltage', label: 'Voltage', num: true, format: num(1) },
    ], recent.readings, { caption: 'Recent readings' });
    renderTable('meter_months', [
      { key: 'month', label: 'Month' }, { key: 'kwh', label: 'kWh', num: true, format: num(1) },
      { key: 'readings', label: 'Readings', num: true }, { key: 'faults', label: 'Faults', num: true },
      { key: 'status', label: 'Status', format: statusCell },
      { key: 'latency_avg_ms', label: 'Avg latency (ms)', num: true, format: num(0) },
      { key: 'latency_max_ms', label: 'Max latency (ms)', num: true, format: num(0) },
      { key: 'estimated', label: 'Estimated', format: estimatedCell },
    ], meter.monthly.slice().reverse(), { caption: 'Months' });
    renderTable('meter_flags', [
      { key: 'ts', label: 'Meter time', format: (value) => esc(fmtTime(value)) }, { key: 'seq', label: 'Seq', num: true },
      { key: 'rule', label: 'Rule' }, { key: 'detail', label: 'Detail' },
    ], meter.validation_flags || [], { caption: 'Validation flags' });
    window.meterd.meter = meter;
    window.meterd.readings = recent;
    markLoaded(meter.generated_at);
  }

  // ---- rendering and navigation -----------------------------------------------------------
  let generation = 0;
  async function render() {
    const mine = ++generation;
    showError(null);
    document.body.dataset.view = state.view;
    document.body.dataset.state = 'loading';
    const drilling = state.view !== 'dashboard';
    document.getElementById('sections').hidden = drilling;
    drill.hidden = !drilling;
    document.getElementById('crumbs').hidden = !drilling;
    if (!drilling) { meterRendered = ''; }
    const select = document.getElementById('filter-region');
    if (regionsLoaded) {
      if (state.region && !Array.from(select.options).some(o => o.value === state.region)) {
        select.insertAdjacentHTML('beforeend', `<option value="${esc(state.region)}">${esc(state.region)}</option>`);
      }
      select.value = state.region;
    }
    if (state.from) { document.getElementById('filter-from').value = state.from; }
    if (state.to) { document.getElementById('filter-to').value = state.to; }
    const customers = document.getElementById('region-customers');
    customers.hidden = !state.region;
    if (state.region) {
      customers.textContent = `Customers of ${state.region}`;
      customers.href = urlFor(Object.assign({}, state, { view: 'customers', customer: '', meter: '', page: '' }));
    }
    try {
      if (state.view === 'customers' && state.region) { await loadRegionCustomers(); }
      else if (state.view === 'customer' && state.customer) { await loadCustomer(); }
      else if (state.view === 'meter' && state.meter) { await loadMeter(false); }
      else {
        if (drilling) { state.view = 'dashboard'; document.getElementById('sections').hidden = false; drill.hidden = true; }
        await loadDashboard();
      }
    } catch (error) {
      if (mine === generation) { showError(error); }
    }
    if (mine === generation && drilling) { document.getElementById('h-drill')?.focus?.(); }
  }

  let refreshing = false;
  async function refresh() {
    if (refreshing || document.body.dataset.state === 'loading') { return; }
    refreshing = true;
    const mine = generation;
    try {
      if (state.view === 'dashboard') { await loadDashboard(); }
      else if (state.view === 'meter' && state.meter) { await loadMeter(true); }
      if (mine === generation) { showError(null); }
    } catch (error) {
      if (mine === generation) { showError(error); }
    } finally {
      refreshing = false;
    }
  }

  function setFilter(changes) {
    const next = Object.assign({ page: '' }, changes);
    if (state.view === 'customer' || state.view === 'meter') { next.view = 'dashboard'; next.customer = ''; next.meter = ''; }
    if (state.view === 'customers' && !(changes.region !== undefined ? changes.region : state.region)) { next.view = 'dashboard'; }
    navigate(next);
  }

  document.addEventListener('click', (event) => {
    const anchor = event.target.closest('a[data-nav]');
    if (anchor && !event.ctrlKey && !event.metaKey && !event.shiftKey && event.button === 0) {
      event.preventDefault();
      const url = new URL(anchor.href, location.href);
      history.pushState(null, '', urlFor(Object.fromEntries(KEYS.map(key => [key, url.searchParams.get(key) || '']))));
      readURL();
      render();
      return;
    }
    const exporter = event.target.closest('button[data-export]');
    if (exporter) { exportCSV(exporter.dataset.export); return; }
    const sorter = event.target.closest('button[data-sort]');
    if (sorter) {
      const key = sorter.dataset.sort;
      const currentSort = state.sort || 'kwh';
      const currentOrder = state.order || (currentSort === 'customer_id' ? 'asc' : 'desc');
      const order = key === currentSort ? (currentOrder === 'asc' ? 'desc' : 'asc') : (key === 'customer_id' || key === 'installed' ? 'asc' : 'desc');
      navigate({ sort: key, order, page: '' });
    }
  });
  // Month inputs give YYYY-MM, which compares as text; a range turned around follows the month just set.
  document.getElementById('filter-from').addEventListener('change', (event) => {
    const from = event.target.value;
    let to = document.getElementById('filter-to').value;
    if (!from) { return; }
    if (!to || to < from) { to = from; }
    setFilter({ from, to });
  });
  document.getElementById('filter-to').addEventListener('change', (event) => {
    const to = event.target.value;
    let from = document.getElementById('filter-from').value;
    if (!to) { return; }
    if (!from || from > to) { from = to; }
    setFilter({ from, to });
  });
  document.getElementById('filter-region').addEventListener('change', (event) => setFilter({ region: event.target.value }));
  document.getElementById('filter-reset').addEventListener('click', () => navigate({ from: '', to: '', region: '', view: 'dashboard', customer: '', meter: '', page: '', sort: '', order: '' }));
  document.getElementById('back').addEventListener('click', () => navigate(parentOf()));
  window.addEventListener('popstate', () => { readURL(); render(); });

  window.meterd = { hasCharts: HAS_CHARTS, charts, tableCSV, csvCell, get state() { return Object.assign({}, state); }, get loads() { return loads; } };
  if (!HAS_CHARTS) {
    document.body.classList.add('no-charts');
    document.getElementById('no-charts').hidden = false;
    for (const details of document.querySelectorAll('details.data')) { details.open = true; }
  }
  readURL();
  loadSession().then(loadRegions).catch(showError).finally(() => render());
  setInterval(refresh, REFRESH_MS);
})();
