#!/usr/bin/env python3
"""Times every API call the dashboard page makes against a running meterd (issue 6, point 8).

    python3 Benchmarks/dashboard_bench.py --url http://127.0.0.1:PORT [--requests 60] [--json FILE]

Each case runs a few warm-up requests, then --requests timed ones over one keep-alive connection,
with varying ids and pages so caches do not flatter it. Prints p50/p95/max in milliseconds per case
and exits 1 if any p95 is above --target (default 100 ms).
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import time
import urllib.parse


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--target", type=float, default=100.0)
    parser.add_argument("--year", type=int, default=2023, help="first year of the generated months")
    parser.add_argument("--customers", type=int, default=100000)
    parser.add_argument("--json")
    args = parser.parse_args()
    url = urllib.parse.urlparse(args.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    rng = random.Random(1)

    def get(path):
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise SystemExit("%s answered %d: %s" % (path, response.status, body[:200]))
        return elapsed, body

    # First call loads the KPI engine's in-memory store: reported, not counted.
    first, _ = get("/api/kpi")
    y0, y1 = args.year, args.year + 1
    regions = ["North", "South", "East", "West"]
    customer = lambda: rng.randint(1, args.customers)
    meter = lambda: "MTR-%06d" % customer()
    # dashboard.sh gives the first half of the meters live readings; the rest never reported.
    reporting = lambda: "MTR-%06d" % rng.randint(1, args.customers // 2)
    cases = [
        ("kpi, default period (last 12 months)", lambda: "/api/kpi"),
        ("kpi, 12 months", lambda: "/api/kpi?from=%d-01&to=%d-12" % (y1, y1)),
        ("kpi, 24 months", lambda: "/api/kpi?from=%d-01&to=%d-12" % (y0, y1)),
        ("kpi, 12 months, one region", lambda: "/api/kpi?from=%d-01&to=%d-12&region=%s" % (y1, y1, rng.choice(regions))),
        ("regions", lambda: "/api/regions"),
        ("inactive, first 100", lambda: "/api/inactive?limit=100"),
        ("inactive, one region", lambda: "/api/inactive?limit=100&region=%s" % rng.choice(regions)),
        ("status", lambda: "/api/status"),
        ("region customers, by kWh, page 1", lambda: "/api/regions/%s?from=%d-01&to=%d-12&sort=kwh&order=desc&page=1&per_page=25" % (rng.choice(regions), y1, y1)),
        ("region customers, by id, random page", lambda: "/api/regions/%s?from=%d-01&to=%d-12&sort=customer_id&order=asc&page=%d&per_page=25" % (rng.choice(regions), y1, y1, rng.randint(1, 900))),
        ("region customers, by revenue, 24 months", lambda: "/api/regions/%s?from=%d-01&to=%d-12&sort=revenue&order=asc&page=%d&per_page=25" % (rng.choice(regions), y0, y1, rng.randint(1, 50))),
        ("customer", lambda: "/api/customers/%d" % customer()),
        ("meter", lambda: "/api/meters/%s" % meter()),
        ("meter readings (60), reporting meter", lambda: "/api/meters/%s/readings?limit=60" % reporting()),
        ("meter readings, never reported", lambda: "/api/meters/MTR-%06d/readings?limit=60" % rng.randint(args.customers // 2 + 1, args.customers)),
    ]
    results = []
    print("first KPI request (loads the meter-month store): %.0f ms" % first)
    print("%-42s %8s %8s %8s" % ("API call", "p50 ms", "p95 ms", "max ms"))
    failed = False
    for name, path in cases:
        for _ in range(args.warmup):
            get(path())
        times = sorted(get(path())[0] for _ in range(args.requests))
        p50 = statistics.median(times)
        p95 = times[max(0, int(len(times) * 0.95 + 0.5) - 1)]
        results.append({"call": name, "example": path(), "requests": len(times), "p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "max_ms": round(times[-1], 2)})
        flag = "" if p95 <= args.target else "  > %g ms" % args.target
        failed = failed or bool(flag)
        print("%-42s %8.1f %8.1f %8.1f%s" % (name, p50, p95, times[-1], flag))
    sample = json.loads(get("/api/meters/%s/readings?limit=60" % reporting())[1])
    print("readings sample: %d readings, complete=%s, %d rows scanned" % (sample["count"], sample["complete"], sample["scanned_rows"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"first_kpi_ms": round(first, 1), "target_p95_ms": args.target, "results": results}, handle, indent=2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
