#!/usr/bin/env python3
"""meterd's ingest guarantees, checked from outside with senders that are not meter-sim.

Python standard library only: plain sockets and one thread per connection, written from SPEC.md
section 2 (line-delimited JSON readings; `{"meter":M,"ack":N}` after the commit is durable;
`{"busy":true,"retry_after_ms":N}`; `{"error":CODE,"line":N,...}`), so that a misreading of the
protocol shared by meterd and meter-sim cannot hide a defect. Each check starts meterd afresh
(Benchmarks/ingest.py's Daemon: port 0, ports.json, READY=1) on a fresh store, drives it, then
reads the store itself: every acknowledged (meter, seq) must be stored exactly once.

Checks
  burst        --meters connections, each writing its --readings readings with one sendall of the
               whole block (all connections at once), then reading acks until every seq is acked
  half-close   the same, but each client shuts its write side right after the block and reads acks
               until meterd closes: meterd must answer what was in its receive buffer at EOF
  reset        each client writes part of its block (cut at a random byte), closes with SO_LINGER 0
               (an RST) mid-stream, reconnects and resends everything from seq 1: the resends are
               duplicates, acked again, and every reading is stored exactly once
  non-reader   concentrator connections that write readings and never read their acks (their
               receive buffers fill); meanwhile a normal meter must get each ack within
               --ack-bound-s, and meterd's VmRSS (sampled from /proc) must stay within
               --rss-growth-limit-mb of its figure once their meters are registered (each meter's
               seq 1 goes first over a normal connection); at the end the non-readers read their
               acks: every whole line they wrote must be acknowledged
  two-nodes    (--store postgresql only) two meterd nodes on one database, meters spread over both,
               each moving to the other node mid-stream (resending what is unacked there), and a
               PostgreSQL stop + start in the middle; clients treat busy and closed connections by
               reconnecting with backoff and resending what is unacknowledged

  Benchmarks/outside_check.py --bin DIR [--store sqlite|postgresql] [--quick] [--checks LIST]
                              [--meters N] [--readings R] [--timeout S] [--seed S] [--keep] [--json FILE]

Prints PASS or FAIL per check with its figures and exits 1 if any check failed. Traffic goes to
127.0.0.1 only; meterd binds port 0 and writes the port to ports.json. Everything the script starts
(meterd nodes, the PostgreSQL cluster of scripts/postgres-test-server.sh) it stops by pid or by
that script, and its temporary directory is removed unless --keep is given.
"""
import argparse, array, bisect, json, os, random, resource, signal, socket, sqlite3, struct, subprocess, sys, tempfile, threading, time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import Daemon, PostgresCluster, peak_rss_mb, rss_mb, status_answer  # noqa: E402  (the benchmarks' way to start meterd and PostgreSQL)

LOOPBACK = "127.0.0.1"
CHECKS = ("burst", "half-close", "reset", "non-reader", "two-nodes")
# A reply line longer than this is not something SPEC.md section 2 describes.
LONGEST_REPLY = 8192
# A roaming meter whose node neither acks nor answers busy for this long reconnects elsewhere.
ACK_SILENCE_S = 10.0


# ---------------------------------------------------------------------------------------------
# Readings


class MeasurementTimes:
    """RFC 3339 times for seq 1..count, one second apart and ending a minute ago: a resent reading
    keeps its ts (the PostgreSQL store keys readings by (meter, ts, seq)), and none is ahead of
    meterd's clock by more than its clock_skew allowance."""

    def __init__(self, count):
        newest = int(time.time()) - 60
        self.texts = [""] + [time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(newest - count + seq)) for seq in range(1, count + 1)]

    def __getitem__(self, seq):
        return self.texts[seq]


def reading_line(meter, seq, times, salt=0):
    kwh = 0.001 * (1 + (seq * 37 + salt) % 500)
    return f'{{"meter":"{meter}","seq":{seq},"ts":"{times[seq]}","kwh":{kwh:.3f},"status":"good","v":230.1}}\n'.encode()


class MeterReadings:
    """One meter's readings seq 1..count as one block of bytes, with each line's end offset, so that
    any run of seqs is a slice and the bytes a socket took translate into whole lines."""

    def __init__(self, meter, count, times, salt=0):
        self.meter, self.count = meter, count
        lines = [reading_line(meter, seq, times, salt) for seq in range(1, count + 1)]
        self.data = b"".join(lines)
        self.ends = array.array("Q")
        offset = 0
        for line in lines:
            offset += len(line)
            self.ends.append(offset)

    def start_of(self, seq):
        return 0 if seq == 1 else self.ends[seq - 2]

    def block(self, first, last):
        """The lines of seqs first..last."""
        return self.data[self.start_of(first):self.ends[last - 1]]

    def whole_lines_in(self, written):
        """How many whole lines (so the highest whole seq) the first `written` bytes of the block hold."""
        return bisect.bisect_right(self.ends, written)


# ---------------------------------------------------------------------------------------------
# What the clients saw


@dataclass
class MeterRecord:
    """One meter as its client saw it, across all its connections."""
    name: str
    readings: int          # readings it must deliver
    written_high: int = 0  # highest seq handed to a socket, possibly in part (a stored seq above it is a phantom)
    acked_high: int = 0    # highest seq meterd acknowledged on any connection
    connections: int = 0


class CheckRun:
    """The figures and problems of one check, filled by its client threads."""

    def __init__(self, name):
        self.name = name
        self.records = {}
        self.problems = []
        self.counts = {"busy": 0, "error_replies": 0, "reconnects": 0, "acks_probed": 0, "acked_not_yet_stored": 0}
        self.lock = threading.Lock()
        # Acks of these meters are checked against the store the moment they arrive: an ack comes
        # only after the commit, so a new reader must already see every seq it covers.
        self.probe_meters = set()
        self.probe_view = None

    def add_meter(self, name, readings):
        record = MeterRecord(name, readings)
        self.records[name] = record
        return record

    def problem(self, text):
        with self.lock:
            self.problems.append(text)

    def count(self, key, amount=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + amount

    def absorb(self, connection, replies):
        """Applies meterd's replies on `connection`; returns whether one of them was busy."""
        busy = False
        for reply in replies:
            if "ack" in reply and "meter" in reply:
                meter, seq = reply["meter"], reply["ack"]
                record = self.records.get(meter)
                if record is None:
                    self.problem(f"ack for meter {meter!r}, which this connection never sent: {reply}")
                    continue
                sent = connection.sent_high.get(meter, 0)
                if not isinstance(seq, int) or seq > sent:
                    # SPEC: an ack covers readings "that this connection sent": never one it did not.
                    self.problem(f"{meter}: ack {seq} on a connection that had sent whole lines only through seq {sent}")
                    continue
                record.acked_high = max(record.acked_high, seq)
                if meter in self.probe_meters and self.probe_view is not None:
                    self.probe(meter, seq)
            elif reply.get("busy") is True:
                busy = True
                self.count("busy")
            elif "error" in reply and connection.cut_line is not None and reply.get("line") == connection.cut_line:
                # The line this client cut short before its half-close: SPEC.md section 2 answers a
                # last line ended by end of input like any other, and a cut reading is invalid.
                self.count("cut_line_errors")
                connection.cut_line_answered += 1
            elif "error" in reply:
                # Every line these clients send is a valid reading: any error is meterd's.
                self.count("error_replies")
                self.problem(f"error reply to a valid reading: {reply}")
            else:
                self.problem(f"reply SPEC.md section 2 does not describe: {reply}")
        return busy

    def probe(self, meter, seq):
        """Counts the distinct stored seqs 1..seq of `meter` right after meterd acked seq."""
        stored = self.probe_view.rows(
            f"SELECT count(DISTINCT r.seq) FROM reading r JOIN meter m ON m.id = r.meter_id WHERE m.name = '{meter}' AND r.seq BETWEEN 1 AND {seq}")
        self.count("acks_probed")
        if stored[0][0] != seq:
            self.count("acked_not_yet_stored")
            self.problem(f"{meter}: ack {seq} arrived while the store held only {stored[0][0]} of seqs 1..{seq}")

    def totals(self):
        records = self.records.values()
        return {"meters": len(self.records), "written": sum(r.written_high for r in records), "acked": sum(r.acked_high for r in records)}


class MeterConnection:
    """One TCP connection to meterd: writes reading lines, splits and decodes the reply lines."""

    def __init__(self, port, timeout, receive_buffer=None, send_buffer=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if receive_buffer:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            if send_buffer:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
            self.sock.settimeout(timeout)
            self.sock.connect((LOOPBACK, port))
        except OSError:
            self.sock.close()
            raise
        self.partial = b""
        self.sent_high = {}      # meter -> highest seq whose whole line this connection wrote
        self.closed_by_peer = False
        self.cut_line = None     # the number of a line this connection left unfinished at its half-close
        self.cut_line_answered = 0

    def write(self, data, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        self.sock.sendall(data)

    def read_replies(self, timeout):
        """Reply lines that arrive within `timeout` (at least one recv); [] on timeout or at the end."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return []
        except ConnectionResetError:
            self.closed_by_peer = True
            return []
        if not data:
            self.closed_by_peer = True
            return []
        buffered = self.partial + data
        cut = buffered.rfind(b"\n") + 1
        self.partial = buffered[cut:]
        if len(self.partial) > LONGEST_REPLY:
            raise ValueError(f"reply line longer than {LONGEST_REPLY} bytes: {self.partial[:200]!r}")
        replies = []
        for line in buffered[:cut].splitlines():
            if not line.strip():
                continue
            try:
                replies.append(json.loads(line))
            except ValueError:
                replies.append({"unparseable": line[:200].decode(errors="replace")})
        return replies

    def half_close(self):
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self):
        """Closes with an RST: SO_LINGER on with a zero timeout discards what is unsent and resets."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        self.sock.close()


def read_acks(run, connection, record, deadline, until_closed=False):
    """Reads replies until `record` is fully acked (or, with until_closed, until meterd closes) or the deadline."""
    while time.monotonic() < deadline and not connection.closed_by_peer:
        if not until_closed and record.acked_high >= record.readings:
            return
        run.absorb(connection, connection.read_replies(min(1.0, deadline - time.monotonic())))


def run_threads(targets, limit):
    """Runs one thread per target and waits for all, at most `limit` seconds (the targets watch
    their own deadlines; this is the backstop). Returns how many were still running."""
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    end = time.monotonic() + limit
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return sum(thread.is_alive() for thread in threads)


def guarded(run, name, body):
    """A client thread's body: an exception in one client is reported, not lost in the thread."""
    def target():
        try:
            body()
        except Exception as error:  # noqa: BLE001 - any client failure is a finding to report
            run.problem(f"{name}: client stopped on {type(error).__name__}: {error}")
    return target


class RssSampler:
    """Samples the VmRSS of meterd processes every 50 ms and keeps the largest (one node's)."""

    def __init__(self, pids):
        self.pids, self.peak_mb, self.stopped = pids, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.is_set():
            for pid in self.pids:
                try:
                    self.peak_mb = max(self.peak_mb, rss_mb(pid) or 0)
                except OSError:
                    pass  # a node that exited: its end is checked elsewhere
            self.stopped.wait(0.05)

    def stop(self):
        self.stopped.set()
        self.thread.join()
        return round(self.peak_mb, 1)


# ---------------------------------------------------------------------------------------------
# Stores and daemons


class Stores:
    """A fresh store per check: a SQLite file in the check's data directory, or a fresh database on
    one throw-away PostgreSQL cluster started for the whole run."""

    def __init__(self, kind, work):
        self.kind, self.work = kind, work
        self.cluster = PostgresCluster(work) if kind == "postgresql" else None

    def prepare(self, check):
        """meterd's store arguments for the check, and how to read what it stored."""
        if self.cluster is None:
            return [], SqliteView(os.path.join(self.work, check, "meterd.sqlite"))
        database = "oc_" + check.replace("-", "_")
        url = self.cluster.create_database(database)
        return ["--store", url], PostgresView(self.cluster, database)

    def restart_database(self, outage_s, mode="stop"):
        """PostgreSQL down for outage_s, then up again on the same port: `stop` is a fast shutdown
        (sessions ended cleanly), `crash` an immediate one (as near a power cut as a test gets)."""
        subprocess.run([self.cluster.script, mode, self.cluster.dir], check=True, capture_output=True, timeout=60)
        time.sleep(outage_s)
        subprocess.run([self.cluster.script, "start", self.cluster.dir], check=True, capture_output=True, timeout=60)

    def stop(self):
        if self.cluster:
            self.cluster.stop()


# Every stored copy of every reading, by meter and seq: exactly once is counted from these rows.
STORED_COPIES = "SELECT m.name, r.seq, count(*) FROM reading r JOIN meter m ON m.id = r.meter_id GROUP BY m.name, r.seq"
# meterd's own per-meter count of stored readings (duplicates excluded).
METER_COUNTERS = "SELECT name, readings_total, duplicates_total FROM meter"


class SqliteView:
    def __init__(self, path):
        self.path = path

    def rows(self, sql):
        # Read-only beside the running daemon (WAL): an ack must already be visible to a new reader.
        database = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return database.execute(sql).fetchall()
        finally:
            database.close()


class PostgresView:
    def __init__(self, cluster, database):
        self.cluster, self.database = cluster, database

    def rows(self, sql):
        return [tuple(int(v) if v.lstrip("-").isdigit() else v for v in row) for row in self.cluster.psql(self.database, sql)]


def verify_store(run, view, label=""):
    """Reads the store: every acked (meter, seq) stored exactly once, nothing stored that was never
    written, and meterd's readings_total per meter equal to its stored rows. Returns the figures."""
    copies = {}
    for meter, seq, count in view.rows(STORED_COPIES):
        copies.setdefault(meter, {})[seq] = count
    counters = {name: (total, duplicates) for name, total, duplicates in view.rows(METER_COUNTERS)}
    lost = stored_twice = phantom = stored_once_acked = counter_mismatches = duplicates_counted = 0
    stored_rows = sum(n for stored in copies.values() for n in stored.values())
    examples = []
    for name, record in run.records.items():
        stored = copies.pop(name, {})
        missing = [seq for seq in range(1, record.acked_high + 1) if stored.get(seq, 0) == 0]
        twice = {seq: n for seq, n in stored.items() if n > 1}
        never_written = [seq for seq in stored if not 1 <= seq <= record.written_high]
        lost += len(missing)
        stored_twice += sum(n - 1 for n in twice.values())
        phantom += len(never_written)
        stored_once_acked += sum(1 for seq in range(1, record.acked_high + 1) if stored.get(seq) == 1)
        total, duplicates = counters.get(name, (0, 0))
        duplicates_counted += duplicates
        if total != sum(stored.values()):
            counter_mismatches += 1
            examples.append(f"{name}: meter.readings_total {total}, but {sum(stored.values())} rows stored")
        if missing:
            examples.append(f"{name}: acked through seq {record.acked_high}, {len(missing)} of those not stored (first {missing[:5]})")
        if twice:
            examples.append(f"{name}: stored more than once: {dict(list(sorted(twice.items()))[:5])}")
        if never_written:
            examples.append(f"{name}: stored seqs never written (written through {record.written_high}): {sorted(never_written)[:5]}")
    for name, stored in copies.items():
        phantom += len(stored)
        examples.append(f"{name}: {len(stored)} readings stored for a meter no client of this check sent")
    for example in examples[:12]:
        run.problem(f"store{label}: {example}")
    if len(examples) > 12:
        run.problem(f"store{label}: ... and {len(examples) - 12} more meters with store problems")
    return {"stored_rows": stored_rows, "stored_once": stored_once_acked, "lost": lost, "stored_twice": stored_twice, "never_written_stored": phantom,
            "counter_mismatches": counter_mismatches, "duplicates_counted": duplicates_counted}


class Nodes:
    """meterd nodes for one check, started as Benchmarks/ingest.py starts them, stopped by pid."""

    def __init__(self):
        self.daemons = []

    def start(self, options, check, count, store_args):
        for index in range(count):
            data = os.path.join(options.work, check + (f"-node{index + 1}" if count > 1 else ""))
            self.daemons.append(Daemon(options.bin, data, [*store_args, *options.meterd_arg]))
        for daemon in self.daemons:
            daemon.wait_ready(timeout=60)

    @property
    def ports(self):
        return [daemon.ingest_port() for daemon in self.daemons]

    @property
    def pids(self):
        return [daemon.proc.pid for daemon in self.daemons]

    def peak_rss_mb(self):
        return round(max(peak_rss_mb(pid) or 0 for pid in self.pids), 1)

    def stop(self, run):
        """SIGTERM, as systemd stops meterd: it must commit and ack what it holds and exit 0."""
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            try:
                code = daemon.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()
                code = "killed after 60 s"
            daemon.notify.close()
            daemon.log.close()
            if code != 0:
                run.problem(f"meterd (pid {daemon.proc.pid}) ended with {code} on SIGTERM; log {daemon.data}/meterd.log: "
                            + " | ".join(log_tail(daemon.data)))

    def alive_problems(self, run):
        for daemon in self.daemons:
            if daemon.proc.poll() is not None:
                run.problem(f"meterd (pid {daemon.proc.pid}) exited with {daemon.proc.returncode} during the check: "
                            + " | ".join(log_tail(daemon.data)))


def log_tail(data, lines=4):
    try:
        with open(os.path.join(data, "meterd.log"), errors="replace") as log:
            return [line.strip()[:300] for line in log.readlines()[-lines:]]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# The checks


def burst_clients(run, port, books, deadline, half_close):
    """Checks 1 and 2: every client connects, all start together, each sendalls its whole block,
    then (half-closing first if asked) reads acks until all are acked, or until meterd closes."""
    start = threading.Barrier(len(books), timeout=60)

    def client(book):
        record = run.records[book.meter]
        connection = None
        try:
            connection = MeterConnection(port, timeout=30)
            record.connections += 1
        finally:
            try:
                start.wait()  # every client waits, connected or not, so the others are not held up
            except threading.BrokenBarrierError:
                pass
        if connection is None:
            return
        try:
            record.written_high = book.count
            connection.write(book.data, deadline - time.monotonic())
            connection.sent_high[book.meter] = book.count
            if half_close:
                connection.half_close()
            read_acks(run, connection, record, deadline, until_closed=half_close)
            if half_close and not connection.closed_by_peer:
                run.problem(f"{book.meter}: meterd did not close the half-closed connection before the deadline "
                            f"(acked {record.acked_high} of {book.count})")
        finally:
            connection.close()

    return [guarded(run, book.meter, lambda book=book: client(book)) for book in books]


def reset_clients(run, port, books, deadline, seed):
    """Check 3: part of the block, an RST mid-stream, then everything again from seq 1 on a new connection."""
    def client(book, rng):
        record = run.records[book.meter]
        first = MeterConnection(port, timeout=30)
        record.connections += 1
        # A cut anywhere in the block, mid-line most of the time: meterd must drop the partial line.
        cut = rng.randrange(len(book.data) // 5, len(book.data) * 4 // 5)
        record.written_high = book.whole_lines_in(cut) + 1  # with the cut line, which must not be stored
        first.write(book.data[:cut], deadline - time.monotonic())
        # Some of it committed before the reset, some not: both kinds must come out stored once.
        time.sleep(rng.uniform(0, 0.3))
        first.reset()
        second = MeterConnection(port, timeout=30)
        record.connections += 1
        run.count("reconnects")
        try:
            record.written_high = book.count
            second.write(book.data, deadline - time.monotonic())
            second.sent_high[book.meter] = book.count
            read_acks(run, second, record, deadline)
        finally:
            second.close()

    return [guarded(run, book.meter, lambda book=book, n=n: client(book, random.Random(seed * 1_000_003 + n)))
            for n, book in enumerate(books)]


def run_with_meters(name, prefix, options):
    """A check's run over --meters meters of --readings readings each, the first one probed."""
    run = CheckRun(name)
    times = MeasurementTimes(options.readings)
    books = [MeterReadings(f"{prefix}-{n:05d}", options.readings, times, n) for n in range(options.meters)]
    for book in books:
        run.add_meter(book.meter, book.count)
    run.probe_meters = {books[0].meter}
    return run, books


def check_burst(options, stores, name, half_close=False):
    run, books = run_with_meters(name, "OC-" + ("HALF" if half_close else "BURST"), options)

    def drive(nodes):
        deadline = time.monotonic() + options.timeout
        return burst_clients(run, nodes.ports[0], books, deadline, half_close)

    def judge(figures):
        figures["block_kb_per_connection"] = round(len(books[0].data) / 1024)

    return execute(options, stores, run, drive, require_all_acked=True, judge=judge)


def check_reset(options, stores):
    run, books = run_with_meters("reset", "OC-RESET", options)

    def drive(nodes):
        deadline = time.monotonic() + options.timeout
        return reset_clients(run, nodes.ports[0], books, deadline, options.seed)

    return execute(options, stores, run, drive, require_all_acked=True)


@dataclass
class Concentrator:
    """A non-reading connection carrying `meters` meters' readings, interleaved one line per meter.
    Seq 1 of each meter goes first over a normal connection (warm_up): the non-reading starts at seq 2."""
    index: int
    meters: list
    readings_per_meter: int
    times: MeasurementTimes
    first_seq = 2                                 # class constant: seq 1 is the warm-up reading
    written: int = 0                              # bytes the socket took
    ends: array.array = field(default_factory=lambda: array.array("Q"))
    stalled_at: float | None = None               # when its writes stopped making progress
    drained_at: float | None = None               # when meterd closed it after acking everything

    def warm_up(self, run, port, deadline):
        """Seq 1 of every meter over a normal connection that reads its acks: meterd registers the
        meters now, so the memory they take is in the idle figure and not charged to non-reading."""
        connection = MeterConnection(port, timeout=30)
        try:
            connection.write(b"".join(reading_line(meter, 1, self.times, index) for index, meter in enumerate(self.meters)), 30)
            for meter in self.meters:
                connection.sent_high[meter] = run.records[meter].written_high = 1
            while time.monotonic() < deadline and any(run.records[meter].acked_high < 1 for meter in self.meters):
                run.absorb(connection, connection.read_replies(min(1.0, deadline - time.monotonic())))
        finally:
            connection.close()

    def chunks(self, lines_per_chunk=2000):
        """Generated as the socket takes them: a stalled connection never needs most of them."""
        total, offset, chunk = len(self.meters) * (self.readings_per_meter - 1), 0, []
        for line_number in range(total):
            meter_index, seq = line_number % len(self.meters), line_number // len(self.meters) + self.first_seq
            line = reading_line(self.meters[meter_index], seq, self.times, meter_index)
            offset += len(line)
            self.ends.append(offset)
            chunk.append(line)
            if len(chunk) == lines_per_chunk:
                yield b"".join(chunk)
                chunk = []
        if chunk:
            yield b"".join(chunk)

    def whole_lines_written(self):
        return bisect.bisect_right(self.ends, self.written)

    def seq_high(self, meter_index, lines):
        """The highest seq of meter `meter_index` once the first `lines` lines of chunks() are written."""
        lines_of_meter = (lines - meter_index + len(self.meters) - 1) // len(self.meters) if lines > meter_index else 0
        return self.first_seq - 1 + lines_of_meter


def check_non_reader(options, stores):
    run = CheckRun("non-reader")
    per_meter = options.non_reader_readings
    times = MeasurementTimes(max(per_meter, 10_000))
    concentrators = [Concentrator(c, [f"OC-NR{c:02d}-{m:04d}" for m in range(options.non_reader_meters)], per_meter, times)
                     for c in range(options.non_readers)]
    for concentrator in concentrators:
        for meter in concentrator.meters:
            run.add_meter(meter, per_meter)
    side = run.add_meter("OC-NR-SIDE", 10_000)
    run.probe_meters = {side.name}
    side_latencies = []
    stop_writing = threading.Event()
    phase = {}

    def non_reader(concentrator, port, deadline):
        # A small receive buffer fills with the first tens of kilobytes of acks; a small send buffer
        # makes the stall show in what the socket took rather than in this process's kernel memory.
        # Not smaller: at 4 KB the window this end reopens stays under Linux's silly-window threshold
        # on loopback (MSS 64 KB), and meterd's kernel waits for zero-window probes backing off to
        # 12.8 s (ss -ti: timer:(persist...) backoff:5) before it sends the acks: a client artefact.
        connection = MeterConnection(port, timeout=30, receive_buffer=32768, send_buffer=65536)
        for meter in concentrator.meters:
            run.records[meter].connections += 1
        last_progress = time.monotonic()
        try:
            for chunk in concentrator.chunks():
                view = memoryview(chunk)
                while view and not stop_writing.is_set():
                    try:
                        connection.sock.settimeout(0.2)
                        taken = connection.sock.send(view[:65536])
                    except socket.timeout:
                        if concentrator.stalled_at is None and time.monotonic() - last_progress > 0.5:
                            concentrator.stalled_at = last_progress
                        continue
                    view = view[taken:]
                    concentrator.written += taken
                    last_progress = time.monotonic()
                    concentrator.stalled_at = None
                if stop_writing.is_set():
                    break
            lines = concentrator.whole_lines_written()
            cut = concentrator.written > (concentrator.ends[lines - 1] if lines else 0)
            if cut:
                connection.cut_line = lines + 1  # meterd numbers a connection's lines from 1
            for meter_index, meter in enumerate(concentrator.meters):
                run.records[meter].written_high = concentrator.seq_high(meter_index, lines + 1)  # + the partial one
                connection.sent_high[meter] = concentrator.seq_high(meter_index, lines)
            # Now read: meterd must drain what it held and acknowledge every whole line, then close.
            connection.half_close()
            while time.monotonic() < deadline and not connection.closed_by_peer:
                run.absorb(connection, connection.read_replies(min(1.0, deadline - time.monotonic())))
            if connection.closed_by_peer:
                concentrator.drained_at = time.monotonic()
                if cut and connection.cut_line_answered != 1:
                    run.problem(f"non-reader {concentrator.index}: its cut line {connection.cut_line} was answered "
                                f"{connection.cut_line_answered} times before meterd closed (expected once)")
            for meter_index, meter in enumerate(concentrator.meters):
                if run.records[meter].acked_high < connection.sent_high[meter]:
                    run.problem(f"{meter}: wrote whole lines through seq {connection.sent_high[meter]} on non-reader "
                                f"{concentrator.index}, acked only through {run.records[meter].acked_high} "
                                f"({'meterd closed' if connection.closed_by_peer else 'deadline'})")
                    break  # one example per connection
        finally:
            connection.close()

    def side_meter(port, until):
        """A normal meter: one reading, wait for its ack, 100 ms, the next."""
        connection = MeterConnection(port, timeout=30)
        side.connections += 1
        try:
            seq = 0
            while time.monotonic() < until and seq < side.readings:
                seq += 1
                side.written_high = seq
                sent_at = time.monotonic()
                connection.write(reading_line(side.name, seq, times), 10)
                connection.sent_high[side.name] = seq
                give_up = sent_at + max(10.0, options.ack_bound_s * 5)
                while side.acked_high < seq and time.monotonic() < give_up and not connection.closed_by_peer:
                    replies = connection.read_replies(give_up - time.monotonic())
                    arrived = time.monotonic()  # before absorb: its store probe is not meterd's time
                    run.absorb(connection, replies)
                if side.acked_high < seq:
                    run.problem(f"side meter: no ack for seq {seq} within {give_up - sent_at:.0f} s while the non-readers stalled")
                    return
                side_latencies.append(arrived - sent_at)
                time.sleep(0.1)
        finally:
            connection.close()

    def drive(nodes):
        port, pid = nodes.ports[0], nodes.pids[0]
        deadline = time.monotonic() + options.timeout
        warm_up_began = time.monotonic()
        run_threads([guarded(run, f"warm-up {c.index}", lambda c=c: c.warm_up(run, port, deadline)) for c in concentrators], options.timeout)
        phase["warm_up_s"] = round(time.monotonic() - warm_up_began, 1)
        time.sleep(1.0)  # settle before the idle figure
        phase["rss_after_warm_up_mb"] = round(rss_mb(pid), 1)
        clients = [threading.Thread(target=guarded(run, f"non-reader {c.index}", lambda c=c: non_reader(c, port, deadline)), daemon=True)
                   for c in concentrators]
        for thread in clients:
            thread.start()
        # The side meter starts once the non-readers are stuck (or after 5 s): that is when it matters.
        settle_until = time.monotonic() + 5
        while time.monotonic() < settle_until and not all(c.stalled_at for c in concentrators):
            time.sleep(0.1)
        phase["stalled_before_side"] = sum(1 for c in concentrators if c.stalled_at)
        phase["rss_when_stalled_mb"] = round(rss_mb(pid), 1)
        side_thread = threading.Thread(target=guarded(run, "side meter", lambda: side_meter(port, time.monotonic() + options.side_seconds)),
                                       daemon=True)
        side_thread.start()
        side_thread.join(options.side_seconds + max(10.0, options.ack_bound_s * 5) + 5)
        phase["status_during_stall"] = status_figures(nodes.daemons[0])
        phase["written_before_reading_mb"] = round(sum(c.written for c in concentrators) / 1e6, 2)
        phase["stalled_at_end"] = sum(1 for c in concentrators if c.stalled_at)
        phase["phase_peak_rss_mb"] = round(phase["sampler"].peak_mb, 1)
        stop_writing.set()
        phase["reading_from"] = time.monotonic()
        # The non-readers now read their acks until meterd closes them.
        return [lambda thread=thread: thread.join(max(0.0, deadline - time.monotonic())) for thread in clients]

    def judge(figures):
        latencies = sorted(side_latencies)
        figures["side_acks"] = len(latencies)
        figures["side_ack_max_ms"] = round(latencies[-1] * 1000, 1) if latencies else None
        figures["side_ack_p50_ms"] = round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None
        figures["non_readers"] = len(concentrators)
        figures["non_readers_stalled"] = phase.get("stalled_at_end")
        drained = [c.drained_at for c in concentrators if c.drained_at]
        figures["non_readers_drained_s"] = round(max(drained) - phase["reading_from"], 1) if drained and "reading_from" in phase else None
        line_bytes = len(reading_line(concentrators[0].meters[0], 1, times))
        figures["non_reader_mb_attempted"] = round(len(concentrators) * options.non_reader_meters * (per_meter - 1) * line_bytes / 1e6, 1)
        figures["non_reader_mb_written_before_reading"] = phase.get("written_before_reading_mb")
        figures["warm_up_s"] = phase.get("warm_up_s")
        figures["rss_after_warm_up_mb"] = phase.get("rss_after_warm_up_mb")
        figures["rss_when_stalled_mb"] = phase.get("rss_when_stalled_mb")
        figures["peak_vmrss_during_stall_mb"] = phase.get("phase_peak_rss_mb")
        status = phase.get("status_during_stall") or {}
        figures["queue_depth_during_stall"] = status.get("queue_depth")
        if not latencies:
            run.problem("side meter got no ack at all")
        elif latencies[-1] > options.ack_bound_s:
            run.problem(f"side meter: slowest ack {latencies[-1]:.2f} s > bound {options.ack_bound_s} s while non-readers were stalled")
        idle, peak = phase.get("rss_after_warm_up_mb"), phase.get("phase_peak_rss_mb")
        if idle is not None and peak is not None and peak - idle > options.rss_growth_limit_mb:
            run.problem(f"meterd VmRSS grew from {idle} MB to {peak} MB (> {options.rss_growth_limit_mb} MB) while non-readers did not read")

    return execute(options, stores, run, drive, require_all_acked=False, phase=phase, judge=judge)


def connections_left_open(run, nodes, settle_s=5.0):
    """Meter connections meterd still counts once every client has closed (after up to settle_s):
    a connection ended by an RST or a half-close must not stay behind."""
    deadline = time.monotonic() + settle_s
    while True:
        answers = [status_figures(daemon) for daemon in nodes.daemons]
        open_now = sum((answer or {}).get("connections", 0) for answer in answers)
        if open_now == 0 or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if open_now:
        run.problem(f"meterd still counts {open_now} meter connections {settle_s:.0f} s after every client closed")
    if None in answers:
        run.problem("the status socket did not answer after the clients finished")
    return open_now


def status_figures(daemon):
    """meterd's status answer (SPEC section 6) over its status socket, or None."""
    try:
        return status_answer(os.path.join(daemon.data, "status.sock"))
    except (OSError, ValueError):
        return None


def roaming_clients(run, ports, books, deadline, options, rng_seed):
    """Check 5's meters: paced chunks to one node, a move to the other node mid-stream (an RST to the
    old one), and on busy, a closed connection or a stuck write: close, back off, reconnect to the
    other node and resend what is unacknowledged."""
    def client(book, index, rng):
        record = run.records[book.meter]
        node = index % len(ports)
        move_after = rng.randrange(book.count // 4, book.count * 3 // 4)
        moved, failures = False, 0
        run.count("moves", 0)
        while record.acked_high < book.count and time.monotonic() < deadline:
            try:
                connection = MeterConnection(ports[node], timeout=5)
            except OSError:
                failures += 1
                node = (node + 1) % len(ports)
                time.sleep(backoff(failures, 500, rng))
                continue
            record.connections += 1
            if record.connections > 1:
                run.count("reconnects")
            next_seq, next_send, why = record.acked_high + 1, time.monotonic(), None
            retry_after_ms, last_reply = 500, time.monotonic()
            try:
                while why is None:
                    now = time.monotonic()
                    if now >= deadline:
                        why = "deadline"
                    elif record.acked_high >= book.count:
                        why = "done"
                    elif not moved and next_seq > move_after:
                        why = "move"
                    elif connection.sent_high.get(book.meter, 0) > record.acked_high and now - last_reply > ACK_SILENCE_S:
                        # What a real meter does when its node neither acks nor says busy; counted, as
                        # SPEC says meterd answers busy while it cannot commit.
                        why = "silent"
                        run.count("ack_silence_reconnects")
                    elif next_seq <= book.count and now >= next_send:
                        last = min(book.count, next_seq + options.roam_chunk - 1)
                        record.written_high = max(record.written_high, last)
                        try:
                            connection.write(book.block(next_seq, last), 2.0)
                        except (socket.timeout, OSError):
                            why = "write failed"  # meterd stopped reading (or went away): start over elsewhere
                            continue
                        connection.sent_high[book.meter] = last
                        next_seq, next_send = last + 1, now + options.roam_pace_s
                    else:
                        wait = max(0.01, min(0.25, next_send - now if next_seq <= book.count else 0.25))
                        replies = connection.read_replies(wait)
                        if replies:
                            last_reply = time.monotonic()
                        if run.absorb(connection, replies):
                            retry_after_ms = next((r.get("retry_after_ms", 500) for r in replies if r.get("busy")), 500)
                            why = "busy"
                        elif connection.closed_by_peer:
                            why = "closed"
                        elif replies:
                            failures = 0
            finally:
                # A meter moves because its link broke: the old node sees an RST, not a goodbye.
                connection.reset() if why == "move" else connection.close()
            if why == "move":
                moved = True
                run.count("moves")
                node = (node + 1) % len(ports)
            elif why in ("busy", "closed", "write failed", "silent"):
                # Back off, then try the other node: what it resends may still sit unacked in this
                # node's queue, so both nodes can end up committing the same readings.
                failures += 1
                node = (node + 1) % len(ports)
                time.sleep(backoff(failures, retry_after_ms, rng))

    return [guarded(run, book.meter, lambda book=book, n=n: client(book, n, random.Random(rng_seed * 7919 + n)))
            for n, book in enumerate(books)]


def backoff(failures, base_ms, rng):
    """Exponential from meterd's retry_after_ms, capped at 4 s, with jitter so meters do not return together."""
    return min(4.0, base_ms / 1000 * 2 ** min(failures - 1, 4)) * rng.uniform(0.5, 1.0)


def check_two_nodes(options, stores):
    run = CheckRun("two-nodes")
    run.counts["ack_silence_reconnects"] = 0
    times = MeasurementTimes(options.roam_readings)
    books = [MeterReadings(f"OC-ROAM-{n:05d}", options.roam_readings, times, n) for n in range(options.meters)]
    for book in books:
        run.add_meter(book.meter, book.count)
    run.probe_meters = {book.meter for book in books[:2]}  # one starting on each node
    phase = {}

    def drive(nodes):
        deadline = time.monotonic() + options.timeout
        clients = roaming_clients(run, nodes.ports, books, deadline, options, options.seed)
        threads = [threading.Thread(target=target, daemon=True) for target in clients]
        for thread in threads:
            thread.start()
        # The outage lands mid-stream: after a share of the sending time has passed.
        sending_s = options.roam_readings / options.roam_chunk * options.roam_pace_s
        time.sleep(sending_s * 0.35)
        phase["acked_before_outage"] = run.totals()["acked"]
        began = time.monotonic()
        try:
            stores.restart_database(options.outage_s, options.outage_mode)
        except subprocess.SubprocessError as error:
            run.problem(f"PostgreSQL restart failed: {error}")
        phase["database_down_s"] = round(time.monotonic() - began, 1)
        phase["acked_when_database_back"] = run.totals()["acked"]
        return [lambda thread=thread: thread.join(max(0.0, deadline - time.monotonic())) for thread in threads]

    def judge(figures):
        # Acks may stop while the database is down; what is judged is the end: all acked, stored once.
        figures.update({key: value for key, value in phase.items() if key != "sampler"})

    return execute(options, stores, run, drive, require_all_acked=True, nodes=2, phase=phase, judge=judge)


def execute(options, stores, run, drive, require_all_acked, nodes=1, phase=None, judge=None):
    """Runs one check: fresh store and meterd node(s), the clients from drive(nodes) (client bodies,
    or waiters for clients drive started itself), then the store verified while meterd runs and
    again after its SIGTERM. Prints PASS or FAIL and returns the check's result."""
    phase = phase if phase is not None else {}
    store_args, view = stores.prepare(run.name)
    started = time.monotonic()
    daemons, figures = Nodes(), {}
    try:
        daemons.start(options, run.name, nodes, store_args)
    except (OSError, subprocess.SubprocessError) as error:
        run.problem(f"meterd did not become ready: {error!r}: " + " | ".join(log_tail(os.path.join(options.work, run.name))))
        daemons.stop(run)
        return report(run, figures, started)
    sampler = RssSampler(daemons.pids)
    phase["sampler"] = sampler
    run.probe_view = view
    try:
        began = time.monotonic()
        bodies = drive(daemons)
        stuck = run_threads(bodies, options.timeout + 30)
        figures["client_s"] = round(time.monotonic() - began, 1)
        if stuck:
            run.problem(f"{stuck} client threads still running after the deadline")
        figures["connections_left_open"] = connections_left_open(run, daemons)
        figures["peak_vmrss_mb"] = sampler.stop()
        figures["peak_vmhwm_mb"] = daemons.peak_rss_mb()
        daemons.alive_problems(run)
        figures.update(run.totals())
        figures.update(run.counts)
        figures.update(verify_store(run, view))
    except Exception as error:  # noqa: BLE001 - reported as the check's failure; the next check still runs
        run.problem(f"check stopped on {type(error).__name__}: {error}")
    finally:
        sampler.stop()
        daemons.stop(run)
    # Shutdown commits what the nodes still held: that must not store anything twice either.
    try:
        after = verify_store(run, view, label=" after SIGTERM")
        figures["stored_twice"] = max(figures.get("stored_twice", 0), after["stored_twice"])
    except Exception as error:  # noqa: BLE001
        run.problem(f"store unreadable after SIGTERM: {type(error).__name__}: {error}")
    if require_all_acked:
        short = [r for r in run.records.values() if r.acked_high < r.readings]
        figures["fully_acked_meters"] = len(run.records) - len(short)
        if short:
            run.problem(f"{len(short)} of {len(run.records)} meters not fully acked before the deadline "
                        f"({options.timeout:.0f} s), e.g. " + ", ".join(f"{r.name} acked {r.acked_high}/{r.readings}" for r in short[:3]))
    if judge:
        judge(figures)
    return report(run, figures, started)


def report(run, figures, started):
    figures["check_s"] = round(time.monotonic() - started, 1)
    passed = not run.problems
    shown = ", ".join(f"{key} {value}" for key, value in figures.items())
    print(f"{'PASS' if passed else 'FAIL'} {run.name}: {shown}", flush=True)
    for problem in run.problems[:25]:
        print(f"    - {problem}", flush=True)
    if len(run.problems) > 25:
        print(f"    - ... {len(run.problems) - 25} more", flush=True)
    return {"check": run.name, "passed": passed, "figures": figures, "problems": run.problems[:100]}


# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="directory holding meterd (release build)")
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole run in under a minute")
    parser.add_argument("--checks", default=None, help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--meters", type=int, help="connections (meters) per check (default 200; quick 50)")
    parser.add_argument("--readings", type=int, help="readings per meter in burst, half-close and reset (default 1000; quick 200)")
    parser.add_argument("--timeout", type=float, help="seconds a check's clients may take (default 90; quick 25)")
    parser.add_argument("--non-readers", type=int, help="non-reading connections (default 20; quick 5)")
    parser.add_argument("--side-seconds", type=float, help="how long the side meter sends while they stall (default 8; quick 3)")
    parser.add_argument("--ack-bound-s", type=float, default=2.0, help="slowest ack the side meter may see (default 2)")
    parser.add_argument("--rss-growth-limit-mb", type=float, default=64, help="meterd VmRSS growth allowed during the stall (default 64)")
    parser.add_argument("--roam-readings", type=int, help="readings per meter in two-nodes (default 300; quick 100)")
    parser.add_argument("--outage-s", type=float, default=3.0, help="seconds PostgreSQL stays down in two-nodes (default 3)")
    parser.add_argument("--outage-mode", choices=["stop", "crash"], default="stop",
                        help="how two-nodes takes PostgreSQL down: fast shutdown (default) or immediate (crash)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--meterd-arg", action="append", default=[], help="extra meterd argument (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (data dirs, logs) for inspection")
    parser.add_argument("--json", help="also write the results to this file")
    options = parser.parse_args()
    quick = options.quick

    def default(name, full, small):
        if getattr(options, name) is None:
            setattr(options, name, small if quick else full)

    default("meters", 200, 50)
    default("readings", 1000, 200)
    default("timeout", 90.0, 25.0)
    default("non_readers", 20, 5)
    default("side_seconds", 8.0, 3.0)
    default("roam_readings", 300, 100)
    # Non-readers: 500 meters each, one line per meter in turn, so each commit acks up to 500 meters on
    # every such connection (acks are coalesced per meter per commit: a single-meter connection
    # would get one short ack line per commit and its receive buffer would take minutes to fill).
    options.non_reader_meters = 500
    options.non_reader_readings = 200
    # Two-nodes pacing: a chunk per meter per pace, so the stream spans the database restart.
    options.roam_chunk = 10
    options.roam_pace_s = 0.25
    options.bin = os.path.abspath(options.bin)
    if not os.access(os.path.join(options.bin, "meterd"), os.X_OK):
        parser.error(f"no executable meterd in {options.bin}")
    checks = options.checks.split(",") if options.checks else [c for c in CHECKS if c != "two-nodes" or options.store == "postgresql"]
    unknown = set(checks) - set(CHECKS)
    if unknown:
        parser.error(f"unknown checks: {', '.join(sorted(unknown))}")
    if "two-nodes" in checks and options.store != "postgresql":
        parser.error("two-nodes needs --store postgresql: SQLite is one node")
    threading.stack_size(512 * 1024)  # hundreds of client threads; each needs little stack
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    results, began = [], time.monotonic()
    work = tempfile.mkdtemp(prefix="meterd-outside-")
    options.work = work
    if os.geteuid() == 0:
        os.chmod(work, 0o755)  # the PostgreSQL cluster runs as an unprivileged user below it
    print(f"outside_check: store {options.store}, {options.meters} meters, work dir {work}", flush=True)
    stores = None
    try:
        stores = Stores(options.store, work)
        for check in checks:
            if check in ("burst", "half-close"):
                results.append(check_burst(options, stores, check, half_close=check == "half-close"))
            elif check == "reset":
                results.append(check_reset(options, stores))
            elif check == "non-reader":
                results.append(check_non_reader(options, stores))
            elif check == "two-nodes":
                results.append(check_two_nodes(options, stores))
    finally:
        if stores:
            stores.stop()
        if options.keep:
            print(f"work dir kept: {work}")
        else:
            subprocess.run(["rm", "-rf", work], check=False)
    failed = [r["check"] for r in results if not r["passed"]]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed in {time.monotonic() - began:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    if options.json:
        with open(options.json, "w") as out:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "store": options.store, "quick": quick, "results": results}, out, indent=2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
