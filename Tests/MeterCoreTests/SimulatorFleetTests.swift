import Foundation
import GRDB
import NIOCore
import Synchronization
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// meter-sim's fleet against a real in-process ingest server over TCP and a real SQLite file.
@Suite(.serialized)
struct SimulatorFleetTests {
    /// What the daemon stored for one meter.
    struct Stored: Equatable {
        var maxSeq: Int64
        var kwh: Double
        var readings: Int
    }

    static func stored(_ database: MeterDatabase) async throws -> [String: Stored] {
        try await database.pool.read { db in
            var result: [String: Stored] = [:]
            for row in try Row.fetchAll(
                db,
                sql: """
                    SELECT m.name AS name, MAX(r.seq) AS max_seq, SUM(r.kwh) AS kwh, COUNT(*) AS readings
                    FROM reading r JOIN meter m ON m.id = r.meter_id GROUP BY m.name
                    """)
            {
                result[row["name"]] = Stored(maxSeq: row["max_seq"], kwh: row["kwh"], readings: row["readings"])
            }
            return result
        }
    }

    /// Every acknowledged reading is stored, once, and nothing else is: max seq, count and kWh per
    /// meter equal the ledger; the monthly aggregates hold the same kWh as the readings.
    static func expectLedgerMatches(_ ledger: [LedgerEntry], _ database: MeterDatabase) async throws {
        let stored = try await Self.stored(database)
        let acked = ledger.filter { $0.ackedReadings > 0 }
        #expect(stored.count == acked.count)
        for entry in acked {
            guard let row = stored[entry.meter] else {
                Issue.record("meter \(entry.meter) has acknowledged readings but none stored")
                continue
            }
            #expect(row.maxSeq == entry.ackedMaxSeq, "max seq of \(entry.meter)")
            #expect(row.readings == entry.ackedReadings, "readings of \(entry.meter)")
            #expect(abs(row.kwh - entry.ackedKwh) <= 1e-9 * Double(max(1, row.readings)), "kWh of \(entry.meter)")
        }
        let (readingKwh, monthKwh, distinct, total) = try await database.pool.read { db in
            (
                try Double.fetchOne(db, sql: "SELECT COALESCE(SUM(kwh), 0) FROM reading")!,
                try Double.fetchOne(db, sql: "SELECT COALESCE(SUM(kwh), 0) FROM meter_month")!,
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM (SELECT DISTINCT meter_id, seq FROM reading)")!,
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM reading")!
            )
        }
        #expect(distinct == total, "a reading was stored twice")
        #expect(abs(readingKwh - monthKwh) <= 1e-6 * max(1, readingKwh))
    }

    static func quarantined(_ database: MeterDatabase, code: String) async throws -> Int {
        try await database.pool.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM quarantine WHERE code = ?", arguments: [code])!
        }
    }

    static func simulate(
        port: Int, meters: Int, readings: Int, faults: String = "",
        _ configure: (inout SimulationConfiguration) -> Void = { _ in }
    ) async throws -> SimulationResult {
        var configuration = SimulationConfiguration(host: "127.0.0.1", port: port, meters: meters)
        configuration.interval = 0
        configuration.readingsPerMeter = readings
        configuration.firstSeq = 1
        configuration.window = 10
        configuration.drainTimeout = 20
        configuration.faults = try FaultPlan(parsing: faults)
        configure(&configuration)
        OpenFileLimit.raise(toAtLeast: 4 * configuration.connectionCount + 256)
        return try await MeterSimulation(configuration: configuration).run()
    }

    /// `steady_ack_latency`: a reading counts once the fleet is steady, one settle period after its
    /// last connection was first established; nothing counts before the fleet is established.
    @Test func theSteadyHistogramTakesReadingsWrittenOnceTheFleetIsSteady() {
        let counters = SimulationCounters()
        let established = NIODeadline.now()
        #expect(!counters.isSteady(writtenAt: established + .seconds(100)), "not steady before the fleet is established")
        counters.fleetEstablished(at: established, settle: .seconds(1))
        #expect(!counters.isSteady(writtenAt: established))
        #expect(!counters.isSteady(writtenAt: established + .milliseconds(999)))
        #expect(counters.isSteady(writtenAt: established + .seconds(1)))
        #expect(counters.isSteady(writtenAt: established + .seconds(30)))
        counters.recordLatencies([1_000, 2_000, 3_000], steady: [3_000])
        #expect(counters.latencyHistogram.count == 3)
        #expect(counters.steadyLatencyHistogram.count == 1)
        #expect(counters.steadyLatencyHistogram.maximum == 3_000)
    }

    @Test(.timeLimit(.minutes(1)))
    func thousandMetersAreAllAcknowledgedAndTheLedgerMatchesTheStore() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                // A reading every 0.25 s, all thousand connections open at once: the first send waits
                // until every meter is connected (on a loaded machine the first meters would otherwise
                // finish before the last connect). Default seqs (start time in µs): large numbers must
                // round-trip too.
                let result = try await Self.simulate(port: harness.port, meters: 1_000, readings: 8) {
                    $0.interval = 0.25
                    $0.firstSeq = nil
                    $0.startTogether = true
                }
                let report = result.report
                #expect(report.generated == 8_000)
                #expect(report.acked == 8_000)
                #expect(report.unacked == 0)
                #expect(report.errorsTotal == 0)
                #expect(report.peakConnections == 1_000)
                #expect(report.ackLatency.count == 8_000)
                // The steady fleet's latencies leave out what was written before every meter was
                // connected plus one interval (at least 1 s): at least each meter's first reading.
                // How many later ones count depends on how long the connects took on the machine;
                // which readings count is tested exactly in theSteadyHistogramTakesReadingsWrittenOnceTheFleetIsSteady.
                #expect(report.steadyAckLatency.count <= 7_000, "\(report.steadyAckLatency.count) steady acks")
                #expect(result.ledger.count == 1_000)
                #expect(result.ledger.allSatisfy { $0.ackedReadings == 8 && ($0.ackedMaxSeq ?? 0) > 1_000_000_000_000 })
                try await Self.expectLedgerMatches(result.ledger, harness.database)
                #expect(harness.pipeline.statistics.duplicates.load(ordering: .relaxed) == 0)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func concentratorCarriesManyMetersOnFewConnectionsAtAnInterval() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 100, readings: 6) {
                    $0.concentrator = 25
                    $0.interval = 0.1
                }
                #expect(result.report.connections == 4)
                #expect(result.report.peakConnections == 4)
                #expect(result.report.acked == 600)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
                // One reading per meter per tick: consecutive ts of a meter are about an interval apart.
                let spread = try await harness.database.pool.read { db in
                    try Int64.fetchOne(
                        db, sql: "SELECT MAX(ts_ms) - MIN(ts_ms) FROM reading r JOIN meter m ON m.id = r.meter_id WHERE m.name = 'MTR-000001'")!
                }
                #expect(spread >= 400 && spread < 5_000)
            }
        }
    }

    /// Each meter measures once per interval at a phase of its own (one metronome per event loop
    /// ticks its connections): a meter's readings an interval apart, the fleet's spread over it.
    @Test(.timeLimit(.minutes(1)))
    func metersMeasureOncePerIntervalAtPhasesSpreadOverIt() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 200, readings: 4) { $0.interval = 0.5 }
                #expect(result.report.acked == 800)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
                let rows = try harness.database.pool.read { db in
                    try Row.fetchAll(db, sql: "SELECT m.name, r.ts_ms FROM reading r JOIN meter m ON m.id = r.meter_id ORDER BY m.name, r.seq")
                }
                let timestamps = Dictionary(grouping: rows, by: { $0["name"] as String }).mapValues { $0.map { $0["ts_ms"] as Int64 } }
                #expect(timestamps.count == 200 && timestamps.values.allSatisfy { $0.count == 4 })
                let gaps = timestamps.values.flatMap { ts in zip(ts.dropFirst(), ts).map { $0 - $1 } }.sorted()
                #expect((450...550).contains(gaps[gaps.count / 2]), "median gap \(gaps[gaps.count / 2]) ms")
                let firsts = timestamps.values.map { $0[0] }
                #expect(firsts.max()! - firsts.min()! >= 300, "first readings within \(firsts.max()! - firsts.min()!) ms")
                #expect(Set(firsts.map { $0 / 10 }).count >= 20, "first readings in \(Set(firsts.map { $0 / 10 }).count) 10 ms steps")
            }
        }
    }

    /// `--source-addresses`: connections bind to the listed local addresses in turn, as the
    /// quarantine's peer column shows, and an address that is not one stops the run before it starts.
    @Test(.timeLimit(.minutes(1)))
    func connectionsComeFromTheSourceAddressesInTurn() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 8, readings: 20, faults: "malformed=0.5") {
                    $0.sourceAddresses = ["127.0.0.2", "127.0.0.3"]
                }
                #expect(result.report.acked == 160)
                #expect(result.report.malformedSent > 8)
                try await waitUntil { try await Self.quarantined(harness.database, code: "invalid_json") > 0 }
                let peers = try await harness.database.pool.read { db in
                    try String.fetchAll(db, sql: "SELECT DISTINCT peer FROM quarantine")
                }
                let addresses = Set(peers.map { $0.split(separator: "/")[1].split(separator: ":")[0] })
                #expect(addresses == ["127.0.0.2", "127.0.0.3"], "\(peers)")

                await #expect(throws: SimulationError.self) {
                    try await Self.simulate(port: harness.port, meters: 1, readings: 1) { $0.sourceAddresses = ["meterd.example"] }
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func malformedLinesAreRejectedAndQuarantinedWhileReadingsAreStored() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 20, readings: 50, faults: "malformed=0.1")
                let report = result.report
                #expect(report.malformedSent > 20)
                #expect(report.acked == 1_000)
                let codes = ["invalid_json", "missing_field", "invalid_field"]
                #expect(codes.allSatisfy { (report.errorsByCode[$0] ?? 0) > 0 })
                #expect(codes.reduce(0) { $0 + (report.errorsByCode[$1] ?? 0) } == report.malformedSent)
                let statistics = harness.pipeline.statistics
                #expect(
                    statistics.rejects(.invalidJSON) + statistics.rejects(.missingField) + statistics.rejects(.invalidField) == report.malformedSent)
                try await waitUntil {
                    var total = 0
                    for code in codes { total += try await Self.quarantined(harness.database, code: code) }
                    return total == report.malformedSent
                }
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func overlongLinesGetLineTooLong() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 10, readings: 30, faults: "overlong=0.2")
                let report = result.report
                #expect(report.overlongSent > 10)
                #expect(report.errorsByCode["line_too_long"] == report.overlongSent)
                #expect(harness.pipeline.statistics.rejects(.lineTooLong) == report.overlongSent)
                try await waitUntil { try await Self.quarantined(harness.database, code: "line_too_long") == report.overlongSent }
                #expect(report.acked == 300)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func skewedClocksAreRejectedAndDroppedNeverStored() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 20, readings: 50, faults: "skew=0.1:3600")
                let report = result.report
                #expect(report.rejected > 20)
                #expect(report.acked + report.rejected == 1_000)
                #expect(report.unacked == 0)
                #expect(report.errorsByCode["clock_skew"] == report.rejected)
                #expect(harness.pipeline.statistics.rejects(.clockSkew) == report.rejected)
                try await waitUntil { try await Self.quarantined(harness.database, code: "clock_skew") == report.rejected }
                let future = try await harness.database.pool.read { db in
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM reading WHERE ts_ms > received_ms + 300000")!
                }
                #expect(future == 0)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func deliberateDuplicatesAreCountedButNotStoredTwice() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 20, readings: 50, faults: "duplicate=0.2")
                let report = result.report
                #expect(report.duplicatesSent > 50)
                #expect(report.acked == 1_000)
                let statistics = harness.pipeline.statistics
                try await waitUntil { statistics.duplicates.load(ordering: .relaxed) == report.duplicatesSent }
                let counted = try await harness.database.pool.read { db in
                    try Int.fetchOne(db, sql: "SELECT SUM(duplicates_total) FROM meter")!
                }
                #expect(counted == report.duplicatesSent)
                #expect(statistics.stored.load(ordering: .relaxed) == 1_000)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func abruptDisconnectsResendAndStoreEachReadingOnce() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 20, readings: 100, faults: "disconnect=0.02") {
                    $0.window = 20
                }
                let report = result.report
                #expect(report.disconnectsInjected > 5)
                #expect(report.reconnects >= report.disconnectsInjected)
                #expect(report.resent > 0)
                #expect(report.acked == 2_000)
                #expect(report.unacked == 0)
                // Half lines cut off by the reset are dropped, not quarantined.
                #expect(harness.pipeline.statistics.rejectsTotal == 0)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
                let (stored, duplicates) = try await harness.database.pool.read { db in
                    (
                        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM reading")!,
                        try Int.fetchOne(db, sql: "SELECT SUM(duplicates_total) FROM meter")!
                    )
                }
                #expect(stored == 2_000)
                #expect(duplicates == harness.pipeline.statistics.duplicates.load(ordering: .relaxed))
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func byteAtATimeWritersAreStoredWhole() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 4, readings: 25, faults: "bytewise=1") {
                    $0.window = 5
                }
                #expect(result.report.acked == 100)
                #expect(result.report.errorsTotal == 0)
                #expect(harness.pipeline.statistics.rejectsTotal == 0)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func silentMetersLeaveAGapAndAreReportedInactiveThenBack() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                // meterd's liveness check watches the same database, with a one-second threshold.
                let liveness = LivenessMonitor(
                    store: harness.store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 1,
                    logger: testLogger)
                let watcher = Task {
                    var wentInactive = Set<String>(), cameBack = Set<String>()
                    while !Task.isCancelled {
                        let transitions = try await liveness.check()
                        wentInactive.formUnion(transitions.wentInactive)
                        cameBack.formUnion(transitions.cameBack)
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                    return (wentInactive, cameBack)
                }
                let result = try await Self.simulate(port: harness.port, meters: 5, readings: 1_000, faults: "silent=0.05:2") {
                    $0.interval = 0.05
                    $0.duration = 5
                }
                watcher.cancel()
                let (wentInactive, cameBack) = try await watcher.value
                // A silence of 2 s passes the 1 s threshold: the meter is flagged, then back on its next reading.
                #expect(!wentInactive.isEmpty)
                #expect(!cameBack.isEmpty)
                #expect(cameBack.isSubset(of: wentInactive))
                let report = result.report
                #expect(report.silences > 0)
                #expect(report.unacked == 0)
                // A silent meter sends nothing: meterd's receive times of that meter jump by the silence.
                let gap = try await harness.database.pool.read { db in
                    try Int64.fetchOne(
                        db,
                        sql: """
                            SELECT MAX(received_ms - previous) FROM (
                                SELECT received_ms, LAG(received_ms) OVER (PARTITION BY meter_id ORDER BY seq) AS previous FROM reading)
                            """)!
                }
                #expect(gap >= 1_900)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func startTogetherHoldsTheBurstUntilEveryConnectionIsUp() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 300, readings: 3) {
                    $0.startTogether = true
                    $0.maximumConnecting = 16
                }
                // Without the barrier the first meters finish three readings before the last connect.
                #expect(result.report.peakConnections == 300)
                #expect(result.report.acked == 900)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func busyDaemonPausesMetersAndLosesNothing() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            configuration.pipeline = PipelineConfiguration(queueCapacity: 20, commitInterval: .milliseconds(20), maximumBatch: 5_000)
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let result = try await Self.simulate(port: harness.port, meters: 50, readings: 40)
                #expect(result.report.busySignals > 0)
                #expect(harness.pipeline.statistics.busySignals.load(ordering: .relaxed) > 0)
                #expect(result.report.acked == 2_000)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func acceleratedClockRunsFromThePastUpToNowWithoutSkew() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let before = WallClock.nowMs()
                let result = try await Self.simulate(port: harness.port, meters: 10, readings: 1_000) {
                    $0.interval = 0.1
                    $0.duration = 2
                    $0.timeScale = 43_200  // two seconds are a simulated day
                }
                #expect(result.report.errorsTotal == 0)
                let (first, last, latest) = try await harness.database.pool.read { db in
                    let row = try Row.fetchOne(db, sql: "SELECT MIN(ts_ms), MAX(ts_ms), MAX(received_ms) FROM reading")!
                    return (row[0] as Int64, row[1] as Int64, row[2] as Int64)
                }
                #expect(first < before - 20 * 3_600_000)  // began most of a day back
                #expect(last <= latest)  // never ahead of the daemon's clock
                #expect(last > before - 8 * 3_600_000)  // and came close to now (a day was simulated)
                try await Self.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }
}
