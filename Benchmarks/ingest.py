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
  ready  start-up to READY=1, and to the first /api/kpi answer (the KPI stores' first load; none
         after 10 minutes is reported as null), with
         100,000 meters (and 24 months of their history) in the store (SQLite, or with --store
         postgresql one node on the cluster)
  pgref  (with --store postgresql) issue 13 point 8's yardstick in the same run: PostgreSQL alone (psql)
         inserting (a)'s million readings in 5,000-row UNNEST batches into a month-partitioned table
         keyed (meter, ts, seq), bare and with one aggregate upsert and high-water update per reading
  floor  scenario (b)'s load against Benchmarks/ackfloor.c, a C epoll server that only reads and
         acks (no storage): the kernel's share that any server pays at that load, for comparison
  niofloor, niofloor-batched  the same load against the same server written on SwiftNIO with
         meterd's channel options (`meter-bench ack-floor`), acking at once or, batched, from another
         thread every 5 ms as meterd's writer does: what SwiftNIO adds to the floor

Figures per scenario: readings acknowledged per second, meterd CPU-seconds per million readings
(utime+stime of the daemon process alone, from /proc), meterd peak RSS (VmHWM), the largest
queue_depth the status socket showed (sampled every 20 ms in raw100, raw1000, burst100 and
burst1000, once a second elsewhere), the commits meterd made during the run (its
meterd_commits_total), ack latency p50/p99 (meter-sim's histogram), the same for the steady fleet only (readings written from one interval after the last
connection was first established: no connection storm, no new meters) and a loss check (meter-sim's ledger against what meterd stored: must be 0).

With --store postgresql (issue 13 point 8) every scenario runs against a throw-away PostgreSQL 15
cluster (scripts/postgres-test-server.sh, a fresh database per scenario) and --nodes N starts N
meterd nodes on that database, meter-sim spreading the meters over them (--endpoints). CPU per
million then counts every meterd node and every PostgreSQL process (the postmaster, its live
children, and the backends it reaped: cutime+cstime), split in meterd_cpu_s_per_million and
postgres_cpu_s_per_million; lock waits over 100 ms (log_lock_waits), deadlocks
(pg_stat_database) and meterd's retried commits (meterd_commit_lost_races_total: another node
committed some of the batch's meters first; meterd_commit_failures_total) are reported too.

  Benchmarks/ingest.py [--scenarios a,a-tls,b,c,burst100,burst1000,conns5000,conns10000,conns19000,ready,pgref,floor,niofloor,niofloor-batched] [--json FILE] [--bin DIR] [--quick]
                       [--store sqlite|postgresql] [--nodes N]
"""
import argparse, calendar, csv, json, os, resource, signal, socket, sqlite3, subprocess, sys, tempfile, threading, time

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

    def http_port(self):
        return json.load(open(os.path.join(self.data, "ports.json")))["http"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.notify.close()
        return code


PG_BIN = "/usr/lib/postgresql/15/bin"


class PostgresCluster:
    """A throw-away PostgreSQL 15 cluster from scripts/postgres-test-server.sh, measured from outside."""

    def __init__(self, work):
        self.dir = os.path.join(work, "postgres")
        os.makedirs(self.dir, exist_ok=True)
        script = os.path.join(REPO, "scripts", "postgres-test-server.sh")
        out = subprocess.run([script, "start", self.dir, str(os.getpid())], check=True, capture_output=True, text=True).stdout
        env = dict(line.split("=", 1) for line in out.strip().splitlines() if "=" in line)
        self.port, self.user = env["PGTEST_PORT"], env["PGTEST_USER"]
        self.script = script
        # Lock waits longer than deadlock_timeout are logged: the benchmark counts them.
        self.psql("postgres", "ALTER SYSTEM SET log_lock_waits = on")
        self.psql("postgres", "ALTER SYSTEM SET deadlock_timeout = '100ms'")
        self.psql("postgres", "SELECT pg_reload_conf()")

    def psql(self, database, sql):
        """Rows of `sql` as lists of strings."""
        out = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", self.dir,
                              "-p", self.port, "-U", self.user, "-d", database, "-c", sql],
                             check=True, capture_output=True, text=True).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def create_database(self, name):
        subprocess.run([self.script, "createdb", self.dir, name], check=True, capture_output=True)
        return f"postgresql://{self.user}@/{name}?host={self.dir}&port={self.port}"

    def postmaster_pid(self):
        return int(open(os.path.join(self.dir, "data", "postmaster.pid")).readline())

    def cpu_seconds(self):
        """The postmaster's own CPU, its live children's, and that of the children it reaped."""
        pid = self.postmaster_pid()
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / HZ  # utime, stime, cutime, cstime
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                total += (int(stat[11]) + int(stat[12])) / HZ
        return total

    def lock_waits(self):
        try:
            return open(os.path.join(self.dir, "server.log"), errors="replace").read().count("still waiting for")
        except OSError:
            return 0

    def deadlocks(self, database):
        return int(self.psql(database, f"SELECT deadlocks FROM pg_stat_database WHERE datname = '{database}'")[0][0])

    def stop(self):
        subprocess.run([self.script, "stop", self.dir], capture_output=True)


def status_answer(path):
    """meterd's status answer (SPEC.md section 6) over the status socket at `path`; OSError or
    ValueError if there is none."""
    with socket.socket(socket.AF_UNIX) as status:
        status.settimeout(5)
        status.connect(path)
        status.sendall(b"status\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = status.recv(65536)
            if not chunk:
                break
            answer += chunk
    return json.loads(answer)


# Scenarios whose figure is the queue's bound (issue 14 point 1): their status socket is polled
# every 20 ms so that a short peak is seen. Each answer costs meterd about 1 ms of CPU (a
# connection, a task hop, a JSON encoding), so 50 a second added 7-8 points of a core to (b)
# (2026-12-03: 83.9 % against 76.1 % polled once a second): elsewhere it is polled once a second,
# as a monitor would, not charged to the scenario's figure.
QUEUE_BOUND_SCENARIOS = {"raw100", "raw1000", "burst100", "burst1000"}


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
                self.maximum = max(self.maximum, status_answer(self.path)["queue_depth"])
                self.samples += 1
            except (OSError, ValueError, KeyError):
                pass
            self.stopped.wait(self.interval)

    def stop(self):
        self.stopped.set()
        self.thread.join()
        return self.maximum


STORED_PER_METER = "SELECT m.name, count(r.seq), coalesce(sum(r.kwh), 0) FROM meter m LEFT JOIN reading r ON r.meter_id = m.id GROUP BY m.id"
STORED_TWICE = "SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT meter_id, seq FROM reading) AS d) FROM reading"


def loss_check(db_path, ledger_path):
    """Acknowledged readings missing from the database (must be 0), and kWh difference.

    `db_path` is a SQLite file, or (cluster, database) for PostgreSQL."""
    if isinstance(db_path, tuple):
        cluster, database = db_path
        stored = {name: (int(count), float(kwh)) for name, count, kwh in cluster.psql(database, STORED_PER_METER)}
        duplicates = int(cluster.psql(database, STORED_TWICE)[0][0])
    else:
        db = sqlite3.connect(db_path)
        stored = {name: (count, kwh) for name, count, kwh in db.execute(STORED_PER_METER)}
        duplicates = db.execute(STORED_TWICE).fetchone()[0]
    missing, kwh_diff = 0, 0.0
    for row in csv.DictReader(open(ledger_path)):
        acked = int(row["acked_readings"] or 0)
        count, kwh = stored.get(row["meter"], (0, 0.0))
        missing += max(0, acked - count)
        kwh_diff += abs(float(row["acked_kwh"] or 0) - kwh) if count == acked else 0
    return missing, duplicates, kwh_diff


class Backend:
    """Where the scenarios' meterd nodes keep their data: SQLite (one node) or a PostgreSQL cluster (N nodes)."""

    def __init__(self, store, nodes, work):
        self.nodes = nodes
        self.cluster = PostgresCluster(work) if store == "postgresql" else None
        self.databases = 0

    def prepare(self, name):
        """meterd arguments per node, and what loss_check reads."""
        if not self.cluster:
            return [[]], None
        self.databases += 1
        database = f"bench_{self.databases}_{name.replace('-', '_')}"
        url = self.cluster.create_database(database)
        return [["--store", url]] * self.nodes, (self.cluster, database)

    def stop(self):
        if self.cluster:
            self.cluster.stop()


def metric_total(daemon, *names):
    """The sum of the named counters in the node's /metrics."""
    import urllib.request
    total = 0
    for line in urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port()}/metrics", timeout=10).read().decode().splitlines():
        if line.startswith(tuple(name + " " for name in names)):
            total += int(float(line.split()[1]))
    return total


def commit_failures(daemon):
    """Commits the node retried."""
    return metric_total(daemon, "meterd_commit_failures_total", "meterd_commit_lost_races_total")


def measured(name, bindir, work, meterd_args, drive, prepare=None, backend=None):
    """Starts meterd (one node per backend node), runs drive(daemons) as their load, and measures
    the nodes, and the PostgreSQL cluster if there is one, around it."""
    node_args, database = backend.prepare(name) if backend else ([[]], None)
    daemons = []
    for index, store_args in enumerate(node_args):
        data = os.path.join(work, f"data-{name}" + (f"-node{index + 1}" if len(node_args) > 1 else ""))
        if prepare and index == 0:
            os.makedirs(data, exist_ok=True)
            prepare(data)
        daemons.append(Daemon(bindir, data, [*meterd_args, *store_args]))
    for daemon in daemons:
        daemon.wait_ready()
    cluster = backend.cluster if backend else None
    idle_rss = sum(rss_mb(daemon.proc.pid) for daemon in daemons)
    cpu_before = [cpu_seconds(daemon.proc.pid) for daemon in daemons]
    # Group commit sizes itself to the writer's pace: a faster commit can mean more, smaller ones.
    commits_before = sum(metric_total(daemon, "meterd_commits_total") for daemon in daemons)
    pg_before, waits_before = (cluster.cpu_seconds(), cluster.lock_waits()) if cluster else (0, 0)
    interval = 0.02 if name in QUEUE_BOUND_SCENARIOS else 1.0
    samplers = [QueueDepthSampler(os.path.join(daemon.data, "status.sock"), interval) for daemon in daemons]
    exit_code = drive(daemons[0] if len(daemons) == 1 else daemons)
    meterd_cpu = sum(cpu_seconds(daemon.proc.pid) - before for daemon, before in zip(daemons, cpu_before))
    taken = {"cpu": meterd_cpu, "rss": max(peak_rss_mb(daemon.proc.pid) for daemon in daemons),
             "idle_rss_mb": round(idle_rss, 1), "max_queue_depth": max(sampler.stop() for sampler in samplers),
             "commits": sum(metric_total(daemon, "meterd_commits_total") for daemon in daemons) - commits_before}
    if cluster:
        taken["postgres_cpu"] = cluster.cpu_seconds() - pg_before
        taken["lock_waits"] = cluster.lock_waits() - waits_before
        taken["deadlocks"] = cluster.deadlocks(database[1])
        taken["retried_commits"] = sum(commit_failures(daemon) for daemon in daemons)
        taken["nodes"] = len(daemons)
    exits = [daemon.stop() for daemon in daemons]
    taken["daemon_exit"] = max(exits, key=abs)
    taken["sim_exit"] = exit_code
    return database or os.path.join(daemons[0].data, "meterd.sqlite"), taken


def with_postgres_cpu(result, taken):
    """Adds what measured() took to a result, and the PostgreSQL share if there is one:
    cpu_s_per_million then counts meterd and PostgreSQL together."""
    if "postgres_cpu" not in taken:
        return {**result, **taken}
    acked = max(result["acked"], 1)
    meterd = result["cpu_s_per_million"]
    postgres = round(taken.pop("postgres_cpu") / acked * 1e6, 2)
    return {**result, "cpu_s_per_million": round(meterd + postgres, 2), "meterd_cpu_s_per_million": meterd,
            "postgres_cpu_s_per_million": postgres, **taken}


def run_scenario(name, bindir, meters, sim_args, work, meterd_args=(), prepare=None, backend=None):
    report, ledger = os.path.join(work, f"report-{name}.json"), os.path.join(work, f"ledger-{name}.csv")

    def drive(daemons):
        if isinstance(daemons, list):
            target = ["--endpoints", ",".join(f"127.0.0.1:{daemon.ingest_port()}" for daemon in daemons)]
        else:
            target = ["--host", "127.0.0.1", "--port", str(daemons.ingest_port())]
        return subprocess.run(
            [os.path.join(bindir, "meter-sim"), "run", *target,
             "--meters", str(meters), "--report", report, "--ledger", ledger, "--seed", "7", *sim_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).returncode

    database, m = measured(name, bindir, work, meterd_args, drive, prepare, backend)
    missing, duplicates, _ = loss_check(database, ledger)
    result = figures(name, meters, json.load(open(report)), m.pop("cpu"), m.pop("rss"))
    return {**with_postgres_cpu(result, m), "lost": missing, "stored_twice": duplicates}


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
    steady = summary.get("steady_ack_latency", {})
    return {
        "scenario": name, "meters": meters, "connections": summary.get("peak_connections"),
        "acked": acked, "acked_per_s": round(summary["acked_per_second"]),
        "cpu_s_per_million": round(cpu / max(acked, 1) * 1e6, 2),
        "cpu_percent_of_core": round(cpu / max(elapsed, 1e-9) * 100, 1),
        "peak_rss_mb": round(rss, 1) if rss else None,
        "ack_p50_ms": summary["ack_latency"].get("p50_ms"), "ack_p99_ms": summary["ack_latency"].get("p99_ms"),
        # Readings written once the fleet was steady (meter-sim: one interval after the last connection
        # was first established): without the connection storm and new meters' registration.
        "steady_p50_ms": steady.get("p50_ms") if steady.get("count") else None,
        "steady_p99_ms": steady.get("p99_ms") if steady.get("count") else None,
        "unacked": summary["unacked"],
    }


def postgres_reference(work, backend, meters=10_000, per_meter=100, batch=5_000):
    """Issue 13 point 8's yardstick, measured in the same run: PostgreSQL alone (psql, no meterd)
    inserting scenario (a)'s million readings into a month-partitioned table keyed (meter, ts, seq)
    in 5,000-row UNNEST batches, synchronous_commit on ("bare"), and the same when each batch also
    upserts one aggregate row and updates one high-water mark per reading ("with_aggregates"). The
    issue measured 2.25 and 7.95 CPU-s per million here; scenario (a)'s target of 8 is judged
    against what this gives on the day."""
    cluster = backend.cluster
    if cluster is None:
        raise SystemExit("pgref needs --store postgresql")
    batch = min(batch, meters)  # a batch's meters are distinct: an upsert may touch a row once
    now_ms = int(time.time() * 1000)
    month = time.gmtime(now_ms / 1000)
    start = int(calendar.timegm((month.tm_year, month.tm_mon, 1, 0, 0, 0)) * 1000)
    following = (month.tm_year + (month.tm_mon == 12), month.tm_mon % 12 + 1)
    end = int(calendar.timegm((*following, 1, 0, 0, 0)) * 1000)
    schema = f"""
        CREATE TABLE reading (meter bigint NOT NULL, ts bigint NOT NULL, seq bigint NOT NULL, received bigint NOT NULL,
                              kwh double precision NOT NULL, PRIMARY KEY (meter, ts, seq)) PARTITION BY RANGE (ts);
        CREATE TABLE reading_this PARTITION OF reading FOR VALUES FROM ({start}) TO ({end});
        CREATE TABLE reading_default PARTITION OF reading DEFAULT;
        CREATE TABLE aggregate (meter bigint NOT NULL, month integer NOT NULL, kwh double precision NOT NULL,
                                readings bigint NOT NULL, PRIMARY KEY (meter, month));
        CREATE TABLE high_water (meter bigint PRIMARY KEY, seq bigint NOT NULL);
        INSERT INTO high_water SELECT g, -1 FROM generate_series(0, {meters - 1}) g;
        """
    # Batch b holds 5,000 distinct meters (so an upsert touches each row once), a reading each.
    readings = meters * per_meter
    lines = ["SET synchronous_commit = on;"]
    for b in range(readings // batch):
        first = b * batch
        ids = [(first + j) % meters for j in range(batch)]
        seqs = [(first + j) // meters for j in range(batch)]
        ts = [now_ms - 3_600_000 + seq * 1000 for seq in seqs]
        arrays = {name: "'{" + ",".join(map(str, values)) + "}'" for name, values in
                  (("meter", ids), ("ts", ts), ("seq", seqs), ("received", ts), ("kwh", [0.25] * batch))}
        # Lines marked --AGG run only in the with_aggregates variant, where a batch is one transaction.
        lines.append("--AGG BEGIN;")
        lines.append(
            f"INSERT INTO reading SELECT * FROM unnest({arrays['meter']}::bigint[], {arrays['ts']}::bigint[], {arrays['seq']}::bigint[], "
            f"{arrays['received']}::bigint[], {arrays['kwh']}::float8[]);")
        lines.append(
            f"--AGG INSERT INTO aggregate AS a SELECT m, {month.tm_year * 100 + month.tm_mon}, k, 1 "
            f"FROM unnest({arrays['meter']}::bigint[], {arrays['kwh']}::float8[]) AS u(m, k) "
            "ON CONFLICT (meter, month) DO UPDATE SET kwh = a.kwh + excluded.kwh, readings = a.readings + 1;")
        lines.append(
            f"--AGG UPDATE high_water h SET seq = u.s FROM unnest({arrays['meter']}::bigint[], {arrays['seq']}::bigint[]) AS u(m, s) "
            "WHERE h.meter = u.m;")
        lines.append("--AGG COMMIT;")
    result = {"scenario": "pgref", "readings": readings, "batch": batch}
    for variant in ("bare", "with_aggregates"):
        backend.databases += 1
        database = f"pgref_{backend.databases}_{variant}"
        cluster.create_database(database)
        cluster.psql(database, schema)
        script = os.path.join(work, f"pgref-{variant}.sql")
        with open(script, "w") as out:
            for line in lines:
                if line.startswith("--AGG "):
                    if variant == "with_aggregates":
                        out.write(line[6:] + "\n")
                else:
                    out.write(line + "\n")
        before = cluster.cpu_seconds()
        subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", cluster.dir, "-p", cluster.port,
                        "-U", cluster.user, "-d", database, "-f", script], check=True, stdout=subprocess.DEVNULL)
        # psql's backend exits after psql does: until the postmaster has reaped it, its CPU may be
        # in neither count. Wait for the total to settle.
        after, deadline = cluster.cpu_seconds(), time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.5)
            settled, after = after, cluster.cpu_seconds()
            if after == settled and after > before:
                break
        print(f"pgref {variant}: {after - before:.2f} CPU-s ({before:.2f} -> {after:.2f})", file=sys.stderr)
        result[f"{variant}_cpu_s_per_million"] = round((after - before) / readings * 1e6, 2)
        stored = int(cluster.psql(database, "SELECT count(*) FROM reading")[0][0])
        if stored != readings:
            raise SystemExit(f"pgref: {stored} readings stored of {readings}")
    return result


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


FLOORS = {"floor", "niofloor", "niofloor-batched"}


def floor_scenario(name, bindir, meters, sim_args, work):
    """Scenario (b)'s load against a server that only reads and acks, storing nothing.

    floor: Benchmarks/ackfloor.c (epoll, a read and an ack write per reading), what any server must
    spend in the kernel at this load. niofloor: the same server on SwiftNIO with meterd's channel
    options and event loops (`meter-bench ack-floor`), what SwiftNIO adds to that. niofloor-batched:
    the SwiftNIO server with acks handed back from another thread every 5 ms, as meterd's writer
    hands a commit's acks over. meterd's own figure, less these, is what decoding, the queue and
    the commits cost."""
    if name == "floor":
        command = [os.path.join(work, "ackfloor")]
        subprocess.run(["cc", "-O2", "-o", command[0], os.path.join(os.path.dirname(os.path.abspath(__file__)), "ackfloor.c")], check=True)
    else:
        command = [os.path.join(bindir, "meter-bench"), "ack-floor", *(["--batched"] if name == "niofloor-batched" else [])]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        cpu_before = cpu_seconds(server.pid)
        report = os.path.join(work, f"report-{name}.json")
        sim = subprocess.run(
            [os.path.join(bindir, "meter-sim"), "run", "--host", "127.0.0.1", "--port", str(port), "--meters", str(meters),
             "--report", report, "--seed", "7", *sim_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cpu = cpu_seconds(server.pid) - cpu_before
        rss = peak_rss_mb(server.pid)
    finally:
        server.kill()
        server.wait()
    return {**figures(name, meters, json.load(open(report)), cpu, rss), "sim_exit": sim.returncode}


KPI_LOAD_LIMIT_S = 600


def startup_to_ready(bindir, work, customers, backend=None):
    """Start-up to READY=1, and to the first /api/kpi answer (the KPI stores' first load), over a
    fleet of `customers` meters with 24 months of company history; on PostgreSQL when `backend` has a cluster."""
    import urllib.request
    csv_dir, data = os.path.join(work, "company"), os.path.join(work, "data-ready")
    subprocess.run([os.path.join(bindir, "meter-sim"), "generate", "--customers", str(customers), "--months", "24",
                    "--year", "2024", "--out", csv_dir], check=True, stdout=subprocess.DEVNULL)
    os.makedirs(data, exist_ok=True)
    cluster = backend.cluster if backend else None
    store_args = ["--store", cluster.create_database("bench_ready")] if cluster else []
    target = store_args or ["--db", os.path.join(data, "meterd.sqlite")]
    subprocess.run([os.path.join(bindir, "meterctl"), "import", csv_dir, *target],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times, answers = [], []
    for _ in range(3):
        daemon = Daemon(bindir, data, store_args)
        times.append(daemon.wait_ready())
        # Bounded: a first load that never finishes is the finding, reported as no figure.
        deadline, answered = time.monotonic() + KPI_LOAD_LIMIT_S, None
        while answered is None and time.monotonic() < deadline:
            try:
                remaining = max(0.1, deadline - time.monotonic())
                with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port()}/api/kpi", timeout=remaining) as answer:
                    if answer.status == 200:
                        answered = time.monotonic() - daemon.started
            except OSError:
                time.sleep(0.05)
        answers.append(answered)
        daemon.stop()
        if answered is None:
            break  # the next starts would wait as long
    if cluster:
        size = int(cluster.psql("bench_ready", "SELECT pg_database_size('bench_ready')")[0][0]) / 1e6
    else:
        size = os.path.getsize(os.path.join(data, "meterd.sqlite")) / 1e6
    return {"scenario": "ready", "meters": customers, "ready_s": round(sorted(times)[len(times) // 2], 3),
            "first_kpi_s": round(sorted(answers)[len(answers) // 2], 3) if None not in answers else None, "db_mb": round(size)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="a,b,c,ready,floor")
    parser.add_argument("--json", default="benchmark-ingest.json")
    parser.add_argument("--bin", help="directory of release binaries (default: build them)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, to try the script")
    parser.add_argument("--meterd-arg", action="append", default=[], help="extra meterd argument (repeatable), e.g. --meterd-arg=--queue-capacity=5000")
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite",
                        help="where the nodes keep their data: a SQLite file each run, or a throw-away PostgreSQL 15 cluster")
    parser.add_argument("--nodes", type=int, default=1, help="meterd nodes on one PostgreSQL database (meter-sim --endpoints)")
    args = parser.parse_args()
    if args.nodes > 1 and args.store != "postgresql":
        parser.error("--nodes above 1 needs --store postgresql: SQLite is one node")
    only_sqlite = (FLOORS | {"raw100", "raw1000", "a-tls"}) & set(args.scenarios.split(","))
    if args.store == "postgresql" and only_sqlite:
        parser.error(f"scenarios {', '.join(sorted(only_sqlite))} run on SQLite only")
    # 10,000 connections need 10,000 descriptors on each side; meterd and meter-sim raise their
    # soft limit themselves, but only up to the hard limit (ulimit -Hn, 20000 here).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bindir = args.bin
    if not bindir:
        subprocess.run(["swift", "build", "-c", "release", "--product", "meterd"], check=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "meter-sim"], check=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "meterctl"], check=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "meter-bench"], check=True)
        bindir = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], check=True, capture_output=True, text=True).stdout.strip()
    q = args.quick
    scenarios = {
        "a": (10_000 if not q else 2_000, ["--interval", "0", "--readings-per-meter", "100" if not q else "20", "--start-together",
                                           "--connect-timeout", "60"]),
        "b": (10_000 if not q else 2_000, ["--interval", "1", "--duration", "60" if not q else "10"]),
        "c": (1_000, ["--interval", "0", "--readings-per-meter", "1000" if not q else "100"]),
        "burst100": (10_000 if not q else 2_000, ["--burst", "--half-close", "--interval", "0", "--readings-per-meter", "100",
                                                  "--start-together", "--connect-timeout", "60", "--drain-timeout", "300"]),
        # Four loopback source addresses: from one, 19,000 connections use two thirds of its ephemeral
        # ports and the kernel's search for a free one takes meter-sim a core while it connects.
        **{f"conns{n}": (n if not q else n // 10, ["--interval", "30", "--duration", "150" if not q else "40",
                                                    "--drain-timeout", "60", "--connect-timeout", "60",
                                                    "--source-addresses", "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"])
           for n in (5_000, 10_000, 19_000)},
        "burst1000": (10_000 if not q else 2_000, ["--burst", "--half-close", "--interval", "0", "--readings-per-meter",
                                                   "1000" if not q else "200", "--start-together", "--connect-timeout", "60",
                                                   "--drain-timeout", "300"]),
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="meterd-bench-") as work:
        if os.geteuid() == 0:
            os.chmod(work, 0o755)  # the cluster runs as an unprivileged user under it
        backend = Backend(args.store, args.nodes, work)
        for name in args.scenarios.split(","):
            if name == "ready":
                results.append(startup_to_ready(bindir, work, 100_000 if not q else 10_000, backend))
            elif name in ("raw100", "raw1000"):
                results.append(raw_burst_scenario(name, bindir, 10_000 if not q else 2_000, int(name[3:]) if not q else 20, work,
                                                  args.meterd_arg))
            elif name in FLOORS:
                meters, sim_args = scenarios["b"]
                results.append(floor_scenario(name, bindir, meters, sim_args, work))
            elif name == "pgref":
                results.append(postgres_reference(work, backend, *((10_000, 100) if not q else (2_000, 50))))
            elif name == "a-tls":
                meters, sim_args = scenarios["a"]
                results.append(tls_scenario(name, bindir, meters, sim_args, work, args.meterd_arg))
            else:
                meters, sim_args = scenarios[name]
                results.append(run_scenario(name, bindir, meters, sim_args, work, args.meterd_arg, backend=backend))
            print(json.dumps(results[-1]), file=sys.stderr)
        backend.stop()
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
               "max_queue_depth", "commits", "ack_p50_ms", "ack_p99_ms", "steady_p50_ms", "steady_p99_ms", "lost", "stored_twice", "ready_s", "first_kpi_s"]
    if args.store == "postgresql":
        columns += ["bare_cpu_s_per_million", "with_aggregates_cpu_s_per_million", "nodes", "meterd_cpu_s_per_million", "postgres_cpu_s_per_million", "lock_waits", "deadlocks", "retried_commits"]
    print(" | ".join(columns))
    for result in results:
        print(" | ".join(str(result.get(column, "")) for column in columns))
    json.dump({"date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename, "cores": os.cpu_count(), "store": args.store,
               "nodes": args.nodes, "results": results},
              open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
