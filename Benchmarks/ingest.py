#!/usr/bin/env python3
"""Reproducible ingest benchmark (issue 7): release meterd driven by meter-sim on this machine.

Scenarios
  a  10,000 connections flat out, a bounded burst per meter
  b  10,000 meters at 1 reading per second for 60 s
  c  1,000 connections flat out
  a-tls  scenario (a) over TLS with meter_auth = certificate (issue 15): each of the 10,000
         connections a full mutual ECDSA P-256 handshake, with a data concentrator's certificate
         whose concentrators.csv lists every meter; run it beside (a) to compare CPU per million
  burst100  10,000 connections, each writing its 100 readings as fast as the socket takes them
            (meter-sim --burst --half-close), then half-closing and reading acks until meterd closes
  burst1000  the same with 1,000 readings per meter: what the kernel buffers beyond what meterd
            reads must stay in the kernel, not in meterd (issue 14)
  conns5000, conns10000, conns19000  that many connections held at once, each meter sending one
            reading every 30 s for 150 s (issue 14): nothing lost, ack p99, and meterd's RSS per
            connection, fitted as a line over the conns scenarios run and projected to 50,000 and
            100,000 connections (19,000 because this machine allows a process 20,000 open files)
  raw100, raw1000  burst100 and burst1000's shape from Benchmarks/burstgen.py, a Python epoll
            generator that shares no code with meter-sim (all connections at once, the whole backlog
            in user space, half-close, read acks until closed)
  ready  start-up to READY=1 with 100,000 meters (and 24 months of their history) in the database
  floor  scenario (b)'s load against Benchmarks/ackfloor.c, a C epoll server that only reads and
         acks (no storage): the kernel's share that any server pays at that load, for comparison

Figures per scenario: readings acknowledged per second, meterd CPU-seconds per million readings
(utime+stime of the daemon process alone, from /proc), meterd peak RSS (VmHWM), the largest
queue_depth the status socket showed (sampled every 20 ms), ack latency p50/p99 (meter-sim's
histogram) and a loss check (meter-sim's ledger against what meterd stored: must be 0).

  Benchmarks/ingest.py [--scenarios a,a-tls,b,c,burst100,burst1000,conns5000,conns10000,conns19000,ready,floor] [--json FILE] [--bin DIR] [--quick]
"""
import argparse, csv, json, os, resource, signal, socket, sqlite3, subprocess, sys, tempfile, threading, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime, stime


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


class Daemon:
    def __init__(self, bindir, data, extra=()):
        self.data = data
        os.makedirs(data, exist_ok=True)
        self.notify_path = os.path.join(data, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if os.path.exists(self.notify_path):
            os.unlink(self.notify_path)
        self.notify.bind(self.notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        self.log = open(os.path.join(data, "meterd.log"), "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [os.path.join(bindir, "meterd"), "--data-dir", data, "--ingest", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--status-socket", os.path.join(data, "status.sock"), "--max-connections", "50000", *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_ready(self, timeout=120):
        self.notify.settimeout(timeout)
        while True:
            message = self.notify.recv(4096).decode()
            if "READY=1" in message.split("\n"):
                ready = time.monotonic() - self.started
                # Keep reading like systemd does: an unread datagram socket holds only ~10 messages,
                # after which sd_notify (STATUS= every 5 s, STOPPING=1) would block.
                threading.Thread(target=self._drain_notifications, daemon=True).start()
                return ready

    def _drain_notifications(self):
        self.notify.settimeout(None)
        try:
            while self.notify.recv(4096):
                pass
        except OSError:
            pass

    def ingest_port(self):
        return json.load(open(os.path.join(self.data, "ports.json")))["ingest"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.notify.close()
        return code


class QueueDepthSampler:
    """Polls the status socket's queue_depth in the background and keeps the largest value seen."""

    def __init__(self, path, interval=0.02):
        self.path, self.interval, self.maximum, self.samples = path, interval, 0, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.is_set():
            try:
                with socket.socket(socket.AF_UNIX) as status:
                    status.settimeout(5)
                    status.connect(self.path)
                    status.sendall(b"status\n")
                    answer = b""
                    while not answer.endswith(b"\n"):
                        chunk = status.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                self.maximum = max(self.maximum, json.loads(answer)["queue_depth"])
                self.samples += 1
            except (OSError, ValueError, KeyError):
                pass
            self.stopped.wait(self.interval)

    def stop(self):
        self.stopped.set()
        self.thread.join()
        return self.maximum


def loss_check(db_path, ledger_path):
    """Acknowledged readings missing from the database (must be 0), and kWh difference."""
    db = sqlite3.connect(db_path)
    stored = {name: (count, kwh) for name, count, kwh in db.execute(
        "SELECT m.name, count(r.seq), coalesce(sum(r.kwh), 0) FROM meter m LEFT JOIN reading r ON r.meter_id = m.id GROUP BY m.id")}
    missing, kwh_diff = 0, 0.0
    for row in csv.DictReader(open(ledger_path)):
        acked = int(row["acked_readings"] or 0)
        count, kwh = stored.get(row["meter"], (0, 0.0))
        missing += max(0, acked - count)
        kwh_diff += abs(float(row["acked_kwh"] or 0) - kwh) if count == acked else 0
    duplicates = db.execute("SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT meter_id, seq FROM reading)) FROM reading").fetchone()[0]
    return missing, duplicates, kwh_diff


def measured(name, bindir, work, meterd_args, drive, prepare=None):
    """Starts meterd, runs drive(daemon) as its load, and measures meterd around it."""
    data = os.path.join(work, f"data-{name}")
    if prepare:
        os.makedirs(data, exist_ok=True)
        prepare(data)
    daemon = Daemon(bindir, data, meterd_args)
    daemon.wait_ready()
    idle_rss = rss_mb(daemon.proc.pid)
    cpu_before = cpu_seconds(daemon.proc.pid)
    sampler = QueueDepthSampler(os.path.join(data, "status.sock"))
    exit_code = drive(daemon)
    taken = {"cpu": cpu_seconds(daemon.proc.pid) - cpu_before, "rss": peak_rss_mb(daemon.proc.pid),
             "idle_rss_mb": round(idle_rss, 1), "max_queue_depth": sampler.stop()}
    taken["daemon_exit"] = daemon.stop()
    taken["sim_exit"] = exit_code
    return os.path.join(data, "meterd.sqlite"), taken


def run_scenario(name, bindir, meters, sim_args, work, meterd_args=(), prepare=None):
    report, ledger = os.path.join(work, f"report-{name}.json"), os.path.join(work, f"ledger-{name}.csv")

    def drive(daemon):
        return subprocess.run(
            [os.path.join(bindir, "meter-sim"), "run", "--host", "127.0.0.1", "--port", str(daemon.ingest_port()),
             "--meters", str(meters), "--report", report, "--ledger", ledger, "--seed", "7", *sim_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).returncode

    database, m = measured(name, bindir, work, meterd_args, drive, prepare)
    missing, duplicates, _ = loss_check(database, ledger)
    return {**figures(name, meters, json.load(open(report)), m.pop("cpu"), m.pop("rss")), **m, "lost": missing, "stored_twice": duplicates}


def raw_burst_scenario(name, bindir, connections, readings, work, meterd_args=()):
    """burstgen.py against meterd: peak RSS and queue depth under a sender meter-sim is not."""
    output = {}

    def drive(daemon):
        generator = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "burstgen.py"), "--port",
             str(daemon.ingest_port()), "--connections", str(connections), "--readings", str(readings), "--pid", str(daemon.proc.pid)],
            capture_output=True, text=True)
        output["summary"] = json.loads(generator.stdout.strip().splitlines()[-1])
        return generator.returncode

    database, m = measured(name, bindir, work, meterd_args, drive)
    summary = output["summary"]
    stored, distinct = sqlite3.connect(database).execute(
        "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT meter_id, seq FROM reading)) FROM reading").fetchone()
    cpu, rss = m.pop("cpu"), m.pop("rss")
    return {"scenario": name, "meters": connections, "connections": connections, "acked": summary["acked"],
            "acked_per_s": round(summary["acked"] / max(summary["elapsed_s"], 1e-9)),
            "cpu_s_per_million": round(cpu / max(summary["acked"], 1) * 1e6, 2), "peak_rss_mb": round(rss, 1), **m,
            "lost": max(0, summary["acked"] - stored), "stored_twice": stored - distinct}


def figures(name, meters, summary, cpu, rss):
    """The table's figures from meter-sim's report and the server's CPU seconds and peak RSS."""
    acked, elapsed = summary["acked"], summary["elapsed_seconds"]
    return {
        "scenario": name, "meters": meters, "connections": summary.get("peak_connections"),
        "acked": acked, "acked_per_s": round(summary["acked_per_second"]),
        "cpu_s_per_million": round(cpu / max(acked, 1) * 1e6, 2),
        "cpu_percent_of_core": round(cpu / max(elapsed, 1e-9) * 100, 1),
        "peak_rss_mb": round(rss, 1) if rss else None,
        "ack_p50_ms": summary["ack_latency"].get("p50_ms"), "ack_p99_ms": summary["ack_latency"].get("p99_ms"),
        "unacked": summary["unacked"],
    }


def tls_scenario(name, bindir, meters, sim_args, work, meterd_args=()):
    """Scenario (a) over TLS with meter_auth = certificate: every connection a full mutual handshake
    (ECDSA P-256, scripts/make-certs.sh) with one data concentrator's certificate, whose
    concentrators.csv lists every meter, so each reading is checked against the certificate."""
    certs = os.path.join(work, "certs")
    if not os.path.exists(os.path.join(certs, "concentrator.pem")):
        subprocess.run([os.path.join(REPO, "scripts", "make-certs.sh"), "--out", certs, "--meters", str(meters), "--concentrator-only"],
                       check=True, stdout=subprocess.DEVNULL)

    def prepare(data):
        subprocess.run([os.path.join(bindir, "meterctl"), "import", certs, "--db", os.path.join(data, "meterd.sqlite")],
                       check=True, stdout=subprocess.DEVNULL)

    tls_meterd = ["--ingest-tls-cert", os.path.join(certs, "server.pem"), "--ingest-tls-key", os.path.join(certs, "server.key"),
                  "--ingest-tls-client-ca", os.path.join(certs, "ca.pem"), "--meter-auth", "certificate"]
    tls_sim = ["--tls-ca", os.path.join(certs, "ca.pem"), "--tls-cert", os.path.join(certs, "concentrator.pem"),
               "--tls-key", os.path.join(certs, "concentrator.key")]
    return run_scenario(name, bindir, meters, [*sim_args, *tls_sim], work, [*meterd_args, *tls_meterd], prepare)


def floor_scenario(bindir, meters, sim_args, work):
    """Scenario (b)'s load against Benchmarks/ackfloor.c: epoll, a read and an ack write per reading, no storage.

    What any server must spend in the kernel at this load, for comparison with meterd's figure."""
    binary = os.path.join(work, "ackfloor")
    subprocess.run(["cc", "-O2", "-o", binary, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ackfloor.c")], check=True)
    server = subprocess.Popen([binary], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        cpu_before = cpu_seconds(server.pid)
        report = os.path.join(work, "report-floor.json")
        sim = subprocess.run(
            [os.path.join(bindir, "meter-sim"), "run", "--host", "127.0.0.1", "--port", str(port), "--meters", str(meters),
             "--report", report, "--seed", "7", *sim_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cpu = cpu_seconds(server.pid) - cpu_before
        rss = peak_rss_mb(server.pid)
    finally:
        server.kill()
        server.wait()
    return {**figures("floor", meters, json.load(open(report)), cpu, rss), "sim_exit": sim.returncode}


def startup_to_ready(bindir, work, customers):
    csv_dir, data = os.path.join(work, "company"), os.path.join(work, "data-ready")
    subprocess.run([os.path.join(bindir, "meter-sim"), "generate", "--customers", str(customers), "--months", "24",
                    "--year", "2024", "--out", csv_dir], check=True, stdout=subprocess.DEVNULL)
    os.makedirs(data, exist_ok=True)
    subprocess.run([os.path.join(bindir, "meterctl"), "import", csv_dir, "--db", os.path.join(data, "meterd.sqlite")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = []
    for _ in range(3):
        daemon = Daemon(bindir, data)
        times.append(daemon.wait_ready())
        daemon.stop()
    size = os.path.getsize(os.path.join(data, "meterd.sqlite")) / 1e6
    return {"scenario": "ready", "meters": customers, "ready_s": round(sorted(times)[1], 3), "db_mb": round(size)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="a,b,c,ready,floor")
    parser.add_argument("--json", default="benchmark-ingest.json")
    parser.add_argument("--bin", help="directory of release binaries (default: build them)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, to try the script")
    parser.add_argument("--meterd-arg", action="append", default=[], help="extra meterd argument (repeatable), e.g. --meterd-arg=--queue-capacity=5000")
    args = parser.parse_args()
    # 10,000 connections need 10,000 descriptors on each side; meterd and meter-sim raise their
    # soft limit themselves, but only up to the hard limit (ulimit -Hn, 20000 here).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bindir = args.bin
    if not bindir:
        subprocess.run(["swift", "build", "-c", "release", "--product", "meterd"], check=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "meter-sim"], check=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "meterctl"], check=True)
        bindir = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], check=True, capture_output=True, text=True).stdout.strip()
    q = args.quick
    scenarios = {
        "a": (10_000 if not q else 2_000, ["--interval", "0", "--readings-per-meter", "100" if not q else "20", "--start-together",
                                           "--connect-timeout", "60"]),
        "b": (10_000 if not q else 2_000, ["--interval", "1", "--duration", "60" if not q else "10"]),
        "c": (1_000, ["--interval", "0", "--readings-per-meter", "1000" if not q else "100"]),
        "burst100": (10_000 if not q else 2_000, ["--burst", "--half-close", "--interval", "0", "--readings-per-meter", "100",
                                                  "--start-together", "--connect-timeout", "60", "--drain-timeout", "300"]),
        **{f"conns{n}": (n if not q else n // 10, ["--interval", "30", "--duration", "150" if not q else "40",
                                                    "--drain-timeout", "60", "--connect-timeout", "60"])
           for n in (5_000, 10_000, 19_000)},
        "burst1000": (10_000 if not q else 2_000, ["--burst", "--half-close", "--interval", "0", "--readings-per-meter",
                                                   "1000" if not q else "200", "--start-together", "--connect-timeout", "60",
                                                   "--drain-timeout", "300"]),
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="meterd-bench-") as work:
        for name in args.scenarios.split(","):
            if name == "ready":
                results.append(startup_to_ready(bindir, work, 100_000 if not q else 10_000))
            elif name in ("raw100", "raw1000"):
                results.append(raw_burst_scenario(name, bindir, 10_000 if not q else 2_000, int(name[3:]) if not q else 20, work,
                                                  args.meterd_arg))
            elif name == "floor":
                meters, sim_args = scenarios["b"]
                results.append(floor_scenario(bindir, meters, sim_args, work))
            elif name == "a-tls":
                meters, sim_args = scenarios["a"]
                results.append(tls_scenario(name, bindir, meters, sim_args, work, args.meterd_arg))
            else:
                meters, sim_args = scenarios[name]
                results.append(run_scenario(name, bindir, meters, sim_args, work, args.meterd_arg))
            print(json.dumps(results[-1]), file=sys.stderr)
    held = [r for r in results if r["scenario"].startswith("conns") and r.get("peak_rss_mb")]
    if len(held) >= 2:
        # Least squares over (connections held, peak RSS): the slope is what one more connection costs.
        xs, ys = [r["connections"] or r["meters"] for r in held], [r["peak_rss_mb"] for r in held]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        intercept = my - slope * mx
        line = {"scenario": "conns-line", "kb_per_connection": round(slope * 1024, 2), "intercept_mb": round(intercept, 1),
                "projected_rss_mb_50000": round(intercept + slope * 50_000), "projected_rss_mb_100000": round(intercept + slope * 100_000)}
        print(json.dumps(line), file=sys.stderr)
        results.append(line)
    columns = ["scenario", "meters", "acked", "acked_per_s", "cpu_s_per_million", "cpu_percent_of_core", "idle_rss_mb", "peak_rss_mb",
               "max_queue_depth", "ack_p50_ms", "ack_p99_ms", "lost", "stored_twice", "ready_s"]
    print(" | ".join(columns))
    for result in results:
        print(" | ".join(str(result.get(column, "")) for column in columns))
    json.dump({"date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename, "cores": os.cpu_count(), "results": results},
              open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
