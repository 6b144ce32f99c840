/// The dashboard's stylesheet: a card and panel grid that folds to one column on a phone.
enum DashboardStyle {
    static let source = #"""
:root { --bg: #f4f6f9; --panel: #fff; --ink: #1f2933; --muted: #5f6b7a; --line: #d9dee5; --accent: #1d4ed8;
        --ok: #15803d; --warn: #b45309; --bad: #b91c1c; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--ink); font-size: 15px; line-height: 1.4; }
a { color: var(--accent); }
:focus-visible { outline: 3px solid #f59e0b; outline-offset: 2px; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
.skip { position: absolute; left: -999px; top: 0; background: #fff; padding: .5em; z-index: 10; }
.skip:focus { left: .5em; }
.top { background: #0f172a; color: #fff; padding: .6rem 1rem; display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: center; }
.top h1 { margin: 0; font-size: 1.25rem; }
.top h1 a { color: #fff; text-decoration: none; }
.top .sub { font-weight: normal; color: #94a3b8; font-size: .85rem; }
.filters { display: flex; flex-wrap: wrap; gap: .5rem .8rem; align-items: end; }
.filters label { display: flex; flex-direction: column; font-size: .75rem; color: #cbd5e1; }
.filters input, .filters select, .filters button, .button { font: inherit; font-size: .9rem; padding: .3rem .5rem; border-radius: 4px;
        border: 1px solid #475569; background: #fff; color: var(--ink); min-height: 2rem; }
.button { text-decoration: none; display: inline-block; background: #dbeafe; }
.button[hidden] { display: none; }
.live { margin: 0 0 0 auto; font-size: .85rem; color: #cbd5e1; }
.live .dot { display: inline-block; width: .6em; height: .6em; border-radius: 50%; background: #22c55e; margin-right: .3em; }
body[data-state="error"] .live .dot { background: #ef4444; }
.error { background: #fee2e2; color: var(--bad); border: 1px solid #fca5a5; margin: .8rem 1rem 0; padding: .6rem .8rem; border-radius: 6px; }
.notice { background: #fef9c3; border: 1px solid #fde047; margin: .8rem 1rem 0; padding: .6rem .8rem; border-radius: 6px; }
main { padding: 0 1rem 1rem; }
section { margin-top: 1.2rem; }
h2 { font-size: 1.1rem; margin: 0 0 .5rem; }
h3 { font-size: 1rem; margin: .2rem 0 .5rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: .6rem; }
.cards.small { grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); margin-bottom: .6rem; }
.card { background: var(--panel); border: 1px solid var(--line); border-left: 4px solid var(--accent); border-radius: 6px;
        padding: .5rem .7rem; display: flex; flex-direction: column; min-width: 0; }
.card.ok { border-left-color: var(--ok); } .card.warn { border-left-color: var(--warn); } .card.bad { border-left-color: var(--bad); }
.card .label { font-size: .78rem; color: var(--muted); }
.card .value { font-size: clamp(1rem, 1.6vw, 1.2rem); font-weight: 600; overflow-wrap: break-word; }
.cards.small .value { font-size: 1.05rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: .8rem; }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; margin: 0; padding: .6rem .8rem; min-width: 0; }
.panel.wide { grid-column: 1 / -1; }
figcaption { font-weight: 600; margin-bottom: .4rem; }
figcaption small { font-weight: normal; color: var(--muted); }
.chart { position: relative; height: 240px; }
.chart.short { height: 170px; }
body.no-charts .chart, body.no-charts .chart-hint { display: none; }
details.data summary { cursor: pointer; color: var(--muted); font-size: .85rem; margin-top: .3rem; }
.table-head { display: flex; justify-content: space-between; align-items: center; gap: .5rem; margin: .3rem 0; }
.table-head .count { font-size: .8rem; color: var(--muted); }
.csv { font: inherit; font-size: .78rem; padding: .15rem .5rem; border: 1px solid var(--line); border-radius: 4px; background: #f8fafc; cursor: pointer; }
.table-wrap { overflow-x: auto; }
.scroll .table-wrap { max-height: 320px; overflow-y: auto; }
table { border-collapse: collapse; width: 100%; font-size: .85rem; }
caption { text-align: left; font-size: .8rem; color: var(--muted); }
th, td { padding: .25rem .45rem; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: #f1f5f9; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th button.sort { font: inherit; font-weight: 600; border: 0; background: none; cursor: pointer; padding: 0; color: var(--ink); }
th[aria-sort="ascending"] button.sort::after { content: " ▲"; }
th[aria-sort="descending"] button.sort::after { content: " ▼"; }
.status-good { color: var(--ok); } .status-fair { color: var(--warn); } .status-poor { color: var(--bad); }
.pager { display: flex; gap: .5rem; align-items: center; margin-top: .5rem; flex-wrap: wrap; }
.pager button { font: inherit; padding: .2rem .6rem; }
.crumbs { display: flex; gap: .8rem; align-items: center; margin-top: 1rem; flex-wrap: wrap; }
.crumbs ol { list-style: none; display: flex; flex-wrap: wrap; gap: .3rem; margin: 0; padding: 0; }
.crumbs li + li::before { content: "›"; margin-right: .3rem; color: var(--muted); }
.crumbs button { font: inherit; padding: .25rem .6rem; }
.timeline { display: flex; gap: 2px; flex-wrap: wrap; margin: .3rem 0 .6rem; }
.timeline span { width: 12px; height: 18px; border-radius: 2px; background: #cbd5e1; }
.timeline .good { background: #22c55e; } .timeline .fair { background: #f59e0b; } .timeline .poor { background: #ef4444; }
.timeline .fault { outline: 2px solid #7c3aed; }
.muted { color: var(--muted); }
.foot { padding: 1rem; color: var(--muted); font-size: .8rem; }
@media (max-width: 640px) {
  .top { padding: .5rem; }
  .live { margin: 0; }
  main { padding: 0 .5rem .5rem; }
  .grid { grid-template-columns: minmax(0, 1fr); }
  .cards { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  .filters label { flex: 1 1 40%; }
  .chart { height: 210px; }
}
"""#
}
