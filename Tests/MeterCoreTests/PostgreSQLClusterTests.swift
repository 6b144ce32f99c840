#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// Two real meterd nodes on one throw-away PostgreSQL database under a 2,000-meter
/// `meter-sim run --endpoints A,B` fleet (issue 13 point 7): SIGKILL twice mid-stream (B, then A)
/// and PostgreSQL restarted once; afterwards meter-sim's ledger must match the database exactly.
@Suite(.serialized)
struct PostgreSQLClusterTests {
    /// One node: its data directory (status socket, log) and the ports it keeps across restarts.
    struct Node {
        let name: String
        let directory: String
        let store: String
        var daemon: MeterdUnderTest
        var ingest = 0
        var http = 0
        /// Starts so far: the log (appended to on each start) then holds as many "meterd ready".
        var starts = 1

        static func start(_ name: String, directory: String, store: String) async throws -> Node {
            let daemon = try MeterdUnderTest.start(dataDirectory: directory, arguments: ["--store", store])
            var node = Node(name: name, directory: directory, store: store, daemon: daemon)
            (node.ingest, node.http) = try await daemon.ports()
            try await node.waitUntilReady()
            return node
        }

        /// SIGKILL: no shutdown, no last commit, no acks for what it held.
        func kill() async throws {
            self.daemon.process.signal(SIGKILL)
            #expect(try await self.daemon.process.waitForExit() == 128 + SIGKILL)
        }

        /// Starts it again on the same ports, so meters that move round the endpoints find it.
        mutating func restart() async throws {
            self.daemon = try MeterdUnderTest.start(
                dataDirectory: self.directory, arguments: ["--store", self.store],
                ingest: "127.0.0.1:\(self.ingest)", http: "127.0.0.1:\(self.http)")
            self.starts += 1
            try await self.waitUntilReady()
        }

        /// `/readyz` answers 200 and start-up is over ("meterd ready" logged this start). A
        /// database crash while a node still starts up is not this test's case: a node caught so
        /// (its KPI snapshot failed, "meterd ready" never logged, /readyz 200) ignored SIGTERM
        /// for a minute in two of about ten runs, 2026-11-30; a finding for issue 13 point 5.
        func waitUntilReady(timeout: Duration = .seconds(30)) async throws {
            var last = "no answer"
            let deadline = ContinuousClock.now + timeout
            while true {
                if let exit = self.daemon.process.exitStatus {
                    Issue.record("meterd \(self.name) exited with \(exit):\n\(self.daemon.process.output.suffix(3_000))")
                    throw CancellationError()
                }
                if let answer = try? await httpGet(port: self.http, path: "/readyz") {
                    let started = self.daemon.process.output.components(separatedBy: "meterd ready").count - 1 >= self.starts
                    if answer.status == 200, started { return }
                    last = "\(answer.status) \(answer.body)"
                }
                guard ContinuousClock.now < deadline else {
                    Issue.record("node \(self.name) not ready within \(timeout): /readyz \(last)\n\(self.daemon.process.output.suffix(3_000))")
                    throw CancellationError()
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }

        /// Meter connections open on it now (status socket).
        func connections() async throws -> Int {
            let answer = try await ask(self.daemon.statusSocket, "status")
            let object = try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any]
            return object?["connections"] as? Int ?? -1
        }

        /// `/api/kpi` (the default period) without its `generated_at`, which differs by the moment asked.
        func kpiDocument() async throws -> KPIDocument {
            let answer = try await httpGet(port: self.http, path: "/api/kpi")
            try #require(answer.status == 200, "\(answer.body)")
            var document = try JSONDecoder().decode(KPIDocument.self, from: Data(answer.body.utf8))
            document.generatedAt = ""
            return document
        }
    }

    /// The top-level keys of two KPI documents whose values differ, for a readable failure.
    static func differingKeys(_ first: KPIDocument, _ second: KPIDocument) throws -> [String] {
        func object(_ document: KPIDocument) throws -> [String: Any] {
            try JSONSerialization.jsonObject(with: try JSONEncoder().encode(document)) as? [String: Any] ?? [:]
        }
        let (a, b) = (try object(first), try object(second))
        func text(_ value: Any?) -> Data? {
            value.flatMap { try? JSONSerialization.data(withJSONObject: ["v": $0], options: [.sortedKeys]) }
        }
        return Set(a.keys).union(b.keys).sorted().filter { text(a[$0]) != text(b[$0]) }
    }

    @Test(.timeLimit(.minutes(4)))
    func twoNodesSurviveTwoKillsAndADatabaseRestartWithTheLedgerExactlyInTheDatabase() async throws {
        let meterSim = try BuiltProduct.path("meter-sim")
        // Two SIGKILLs, one per node in turn (B, then A once it carries every meter), so each
        // kill cuts a full share of the fleet off; a second kill of B alone would find it empty,
        // as meters stay where they moved.
        // Where the time goes, on the test's output: a failure says which step it stopped at.
        let start = ContinuousClock.now
        func step(_ text: String) {
            let elapsed = start.duration(to: .now)
            print("[PostgreSQLClusterTests +\(elapsed.components.seconds) s] \(text)")
        }
        try await PostgresTestServer.with { server in
            let address = try await server.createDatabase()
            try await withTemporaryDirectory { directory in
                // Given two meterd nodes on one database (over its Unix socket)
                let store = server.socketURL(address)
                step("PostgreSQL up")
                var a = try await Node.start("A", directory: directory + "/a", store: store)
                defer { a.daemon.process.stop() }
                var b = try await Node.start("B", directory: directory + "/b", store: store)
                defer { b.daemon.process.stop() }

                // and 2,000 meters spread over both, a reading every 2 s each, now and then repeating
                // an acknowledged one. At most 5 unacknowledged readings per meter: when meters move
                // between two live nodes while both queue (a database outage), copies of their
                // readings wait in both queues and the node that commits second retries whole
                // batches (duplicate key, then a reload) until the other has drained; with the
                // default window of 100 and dropped links moving meters, that took 75 s here.
                // The fleet runs until SIGTERM (--duration only bounds a stray run).
                let ledgerPath = directory + "/ledger.csv"
                let reportPath = directory + "/report.json"
                let fleet = try ChildProcess(
                    [
                        meterSim, "run", "--endpoints", "127.0.0.1:\(a.ingest),127.0.0.1:\(b.ingest)", "--meters", "2000",
                        "--interval", "2", "--window", "5", "--duration", "200", "--drain-timeout", "60", "--connect-timeout", "20", "--seed", "13",
                        "--faults", "duplicate=0.01", "--ledger", ledgerPath, "--report", reportPath,
                    ],
                    environment: ["PATH": "/usr/bin:/bin"], outputPath: directory + "/meter-sim.log")
                defer { fleet.stop() }
                try await poll(timeout: .seconds(40), "the fleet connected to both nodes") {
                    let (onA, onB) = (try await a.connections(), try await b.connections())
                    return onA >= 900 && onB >= 900
                }
                try await Task.sleep(for: .seconds(2))

                // When node B is SIGKILLed mid-stream: its meters go on at A; B comes back on its ports
                let onBFirst = try await b.connections()
                step("both nodes hold meters; SIGKILL B (\(onBFirst) connections)")
                try await b.kill()
                try await poll(timeout: .seconds(30), "B's meters moved to A") { try await a.connections() >= 1_900 }
                step("B's meters are on A; restarting B")
                try await b.restart()

                // and PostgreSQL restarts (an immediate stop, then crash recovery) under both nodes
                try await Task.sleep(for: .seconds(2))
                step("B is back; crashing PostgreSQL")
                try await server.crash()
                var lastReadyz = "no answer"
                try await poll(
                    timeout: .seconds(30), "A notices the outage",
                    detail: {
                        let exit = a.daemon.process.exitStatus.map { "exited with \($0)" } ?? "running"
                        return "last /readyz: \(lastReadyz); A \(exit):\n\(a.daemon.process.output.suffix(3_000))"
                    }
                ) {
                    do {
                        let answer = try await httpGet(port: a.http, path: "/readyz")
                        lastReadyz = "\(answer.status) \(answer.body)"
                        return answer.status == 503
                    } catch {
                        lastReadyz = "\(error)"
                        return false
                    }
                }
                try await Task.sleep(for: .seconds(2))
                step("A saw the outage; starting PostgreSQL")
                try await server.restart()
                try await a.waitUntilReady(timeout: .seconds(120))
                try await b.waitUntilReady(timeout: .seconds(120))
                step("both nodes commit again")

                // and then A, which by now carries the whole fleet, is SIGKILLed: every meter moves
                // back to B (restarted on its ports), and A comes back on its own
                try await poll(timeout: .seconds(30), "B's meters came back") { try await a.connections() >= 1_900 }
                let onA = try await a.connections()
                step("SIGKILL A (\(onA) connections)")
                try await a.kill()
                try await poll(timeout: .seconds(30), "A's meters moved to B") { try await b.connections() >= 1_900 }
                step("A's meters are on B; restarting A")
                try await a.restart()
                try await Task.sleep(for: .seconds(3))

                // and then the fleet stops (SIGTERM: stop measuring, deliver what is unacknowledged)
                step("stopping the fleet")
                fleet.signal(SIGTERM)
                let fleetExit = try await fleet.waitForExit(timeout: .seconds(90))
                let report = try JSONDecoder.snakeCase.decode(SimulationReport.self, from: Data(contentsOf: URL(fileURLWithPath: reportPath)))
                let ledger = try #require(LedgerEntry.parse(csv: try String(contentsOfFile: ledgerPath, encoding: .utf8)))

                // Then every reading is acknowledged in the end, both kills moved meters, and ...
                #expect(fleetExit == 0, "\(fleet.output.suffix(2_000))")
                #expect(report.unacked == 0)
                #expect(report.acked == report.generated - report.rejected)
                #expect(report.acked >= 2_000 * 4)
                #expect(report.errorsTotal == 0, "\(report.errorsByCode)")
                #expect(report.endpoints.map(\.homeMeters) == [1_000, 1_000])
                // (lost: the kills' connections, less a margin for a
                // status answer that still counted a connection being closed)
                #expect(report.endpoints[1].lostConnections >= onBFirst * 9 / 10, "the kill of B cut \(onBFirst) meters off: \(report.endpoints)")
                #expect(report.endpoints[0].lostConnections >= onA * 9 / 10, "the kill of A cut \(onA) meters off: \(report.endpoints)")
                // two endpoints: every move away from one is a move onto the other
                #expect(report.endpoints[0].movedIn == report.endpoints[1].movedAway)
                #expect(report.endpoints[1].movedIn == report.endpoints[0].movedAway)
                #expect(report.resent > 0)
                #expect(ledger.count == 2_000)

                // ... every acknowledged reading is stored exactly once, nothing else is, and the
                // aggregates equal the readings
                step("fleet done (exit \(fleetExit)):\n\(report.summary)\nchecking the database")
                let database = ClusterDatabase(server: server, database: address.database)
                try await database.expectExactly(ledger)

                // ... and both nodes answer the same KPI document (a few seconds' staleness allowed)
                step("comparing the KPI documents")
                // (each node sums the same deltas in its own order: figures agree to 1e-9 relative)
                func same(_ documents: (KPIDocument, KPIDocument)) throws -> Bool {
                    try sameFigures(try AnswerEncoder.json(documents.0), try AnswerEncoder.json(documents.1))
                }
                var documents = (try await a.kpiDocument(), try await b.kpiDocument())
                let deadline = ContinuousClock.now + .seconds(10)
                while try !same(documents), ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(500))
                    documents = (try await a.kpiDocument(), try await b.kpiDocument())
                }
                #expect(documents.0.totalConsumptionKwh > 0)
                let differing = try Self.differingKeys(documents.0, documents.1)
                #expect(try same(documents), "the KPI documents of node A and node B differ in \(differing)")

                // Both stop cleanly on SIGTERM.
                step("SIGTERM to both nodes")
                a.daemon.process.signal(SIGTERM)
                b.daemon.process.signal(SIGTERM)
                let stopDeadline = ContinuousClock.now + .seconds(30)
                while [a, b].contains(where: { $0.daemon.process.exitStatus == nil }), ContinuousClock.now < stopDeadline {
                    try await Task.sleep(for: .milliseconds(100))
                }
                for node in [a, b] {
                    let status = node.daemon.process.exitStatus
                    #expect(
                        status == 0,
                        "node \(node.name) exited with \(status.map(String.init) ?? "nothing yet"):\n\(node.daemon.process.output.suffix(4_000))")
                }
                step("done")
            }
        }
    }
}

/// The test cluster's database read with `psql`, for checks across every meter at once.
struct ClusterDatabase {
    let server: PostgresTestServer
    let database: String

    /// Rows of a query, fields split on `|`.
    func rows(_ sql: String) async throws -> [[String]] {
        let run = try await offPool { [server, database] in
            try runProgram([
                "/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", server.directory, "-p",
                String(server.port), "-U", server.user, "-d", database, "-c", sql,
            ])
        }
        guard run.status == 0 else { throw PostgresTestServerError(message: "psql failed: \(run.stderr)") }
        return run.stdout.split(separator: "\n").map { $0.split(separator: "|", omittingEmptySubsequences: false).map(String.init) }
    }

    /// Per meter, the readings stored (count, distinct seqs, max seq, kWh) equal the ledger; no
    /// meter without acknowledged readings has any; the meter row's high-water mark and total, and
    /// the sums of its monthly and daily aggregates, equal its readings.
    func expectExactly(_ ledger: [LedgerEntry], sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let rows = try await self.rows(
            """
            WITH r AS (SELECT meter_id, count(*) AS n, count(DISTINCT seq) AS seqs, max(seq) AS max_seq, sum(kwh) AS kwh
                       FROM reading GROUP BY meter_id),
                 mm AS (SELECT meter_id, sum(readings) AS n, sum(kwh) AS kwh FROM meter_month_all GROUP BY meter_id),
                 md AS (SELECT meter_id, sum(readings) AS n FROM meter_day_all GROUP BY meter_id)
            SELECT m.name, COALESCE(r.n, 0), COALESCE(r.seqs, 0), COALESCE(r.max_seq, -1), COALESCE(r.kwh, 0),
                   m.hwm_seq, m.readings_total, COALESCE(mm.n, 0), COALESCE(mm.kwh, 0), COALESCE(md.n, 0)
            FROM meter m LEFT JOIN r ON r.meter_id = m.id LEFT JOIN mm ON mm.meter_id = m.id LEFT JOIN md ON md.meter_id = m.id
            """)
        struct Stored {
            var readings: Int, seqs: Int, maxSeq: Int64, kwh: Double, hwm: Int64, total: Int, monthReadings: Int, monthKwh: Double, dayReadings: Int
        }
        var stored: [String: Stored] = [:]
        for row in rows where row.count == 10 {
            stored[row[0]] = Stored(
                readings: Int(row[1]) ?? -1, seqs: Int(row[2]) ?? -1, maxSeq: Int64(row[3]) ?? -2, kwh: Double(row[4]) ?? .nan,
                hwm: Int64(row[5]) ?? -2, total: Int(row[6]) ?? -1, monthReadings: Int(row[7]) ?? -1, monthKwh: Double(row[8]) ?? .nan,
                dayReadings: Int(row[9]) ?? -1)
        }
        let acked = ledger.filter { $0.ackedReadings > 0 }
        #expect(acked.count == ledger.count, "every meter had readings acknowledged", sourceLocation: sourceLocation)
        var mismatches: [String] = []
        for entry in ledger {
            let row = stored[entry.meter]
            guard entry.ackedReadings > 0 else {
                if let row, row.readings > 0 { mismatches.append("\(entry.meter): \(row.readings) stored, none acknowledged") }
                continue
            }
            guard let row else {
                mismatches.append("\(entry.meter): acknowledged, not stored")
                continue
            }
            let tolerance = 1e-9 * Double(max(1, row.readings)) * max(1, abs(row.kwh))
            var problems: [String] = []
            if row.readings != entry.ackedReadings { problems.append("readings \(row.readings) ≠ acked \(entry.ackedReadings)") }
            if row.seqs != row.readings { problems.append("\(row.readings - row.seqs) seqs stored twice") }
            if row.maxSeq != entry.ackedMaxSeq { problems.append("max seq \(row.maxSeq) ≠ acked \(entry.ackedMaxSeq ?? -1)") }
            if abs(row.kwh - entry.ackedKwh) > tolerance { problems.append("kWh \(row.kwh) ≠ acked \(entry.ackedKwh)") }
            if row.hwm != row.maxSeq { problems.append("high-water mark \(row.hwm) ≠ max seq \(row.maxSeq)") }
            if row.total != row.readings { problems.append("readings_total \(row.total) ≠ \(row.readings)") }
            if row.monthReadings != row.readings { problems.append("meter_month readings \(row.monthReadings) ≠ \(row.readings)") }
            if abs(row.monthKwh - row.kwh) > tolerance { problems.append("meter_month kWh \(row.monthKwh) ≠ \(row.kwh)") }
            if row.dayReadings != row.readings { problems.append("meter_day readings \(row.dayReadings) ≠ \(row.readings)") }
            if !problems.isEmpty { mismatches.append("\(entry.meter): " + problems.joined(separator: ", ")) }
        }
        let unknown = Set(stored.keys).subtracting(ledger.map(\.meter))
        #expect(unknown.isEmpty, "meters in the database that the fleet does not have: \(unknown.sorted().prefix(5))", sourceLocation: sourceLocation)
        #expect(mismatches.isEmpty, "\(mismatches.count) meters differ from the ledger: \(mismatches.prefix(5))", sourceLocation: sourceLocation)

        // Fleet-wide: readings counted once in the per-month latency histogram, too.
        let totals = try await self.rows("SELECT (SELECT count(*) FROM reading), (SELECT COALESCE(sum(count), 0) FROM latency_month)")
        let (readings, inHistogram) = (totals.first?.first.flatMap { Int($0) }, totals.first?.last.flatMap { Int($0) })
        #expect(readings == ledger.map(\.ackedReadings).reduce(0, +), sourceLocation: sourceLocation)
        #expect(inHistogram == readings, "latency_month counts \(inHistogram ?? -1) readings", sourceLocation: sourceLocation)
    }
}

/// ``waitUntil(timeout:interval:sourceLocation:detail:_:)`` every 200 ms (each condition here asks
/// a node or the database), its failure naming `what` and then `detail()`.
func poll(
    timeout: Duration, _ what: String, sourceLocation: SourceLocation = #_sourceLocation, detail: () -> String = { "" },
    _ condition: () async throws -> Bool
) async throws {
    try await waitUntil(
        timeout: timeout, interval: .milliseconds(200), sourceLocation: sourceLocation,
        detail: {
            let seen = detail()
            return seen.isEmpty ? what : "\(what)\n\(seen)"
        }, condition)
}

extension JSONDecoder {
    /// For meter-sim's report and meterd's answers: snake_case keys.
    static var snakeCase: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }
}
