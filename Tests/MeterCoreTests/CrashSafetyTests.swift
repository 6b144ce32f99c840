import Foundation
import GRDB
import NIOConcurrencyHelpers
import Testing

@testable import MeterCore

/// Meters behind one connection that behave like real ones: they keep every unacknowledged
/// reading and resend it with the same seq after reconnecting, until all are acknowledged.
final class ResendingConcentrator: Sendable {
    let meters: [String]
    let readingsPerMeter: Int64
    private struct State {
        var produced: [String: Int64] = [:]
        var unacked: [String: [(seq: Int64, line: String)]] = [:]
        var acked: [String: Int64] = [:]
    }
    private let state = NIOLockedValueBox(State())
    private let kwh: @Sendable (String, Int64) -> Double
    /// The line of a reading, when it is not a `kwh` reading at the current time.
    private let line: (@Sendable (String, Int64) -> String)?

    init(
        meters: [String], readingsPerMeter: Int64, kwh: @escaping @Sendable (String, Int64) -> Double,
        line: (@Sendable (String, Int64) -> String)? = nil
    ) {
        self.meters = meters
        self.readingsPerMeter = readingsPerMeter
        self.kwh = kwh
        self.line = line
    }

    var isDone: Bool {
        self.state.withLockedValue { state in self.meters.allSatisfy { state.acked[$0] == self.readingsPerMeter } }
    }

    var acked: [String: Int64] { self.state.withLockedValue { $0.acked } }

    /// Sends until every reading is acknowledged, reconnecting to whatever port the daemon has now.
    func run(port: @escaping @Sendable () -> Int?) async throws {
        while !self.isDone {
            guard let port = port(), let connection = try? await LineClient(port: port) else {
                try await Task.sleep(for: .milliseconds(20))
                continue
            }
            let sender = Task {
                let backlog = self.state.withLockedValue { state in
                    self.meters.flatMap { state.unacked[$0] ?? [] }.map(\.line).joined()
                }
                if !backlog.isEmpty { try await connection.send(backlog) }
                while !Task.isCancelled {
                    let round = self.state.withLockedValue { state -> String in
                        var text = ""
                        for meter in self.meters where state.produced[meter, default: 0] < self.readingsPerMeter {
                            let seq = state.produced[meter, default: 0] + 1
                            state.produced[meter] = seq
                            let line = self.line?(meter, seq) ?? readingLine(meter: meter, seq: seq, kwh: self.kwh(meter, seq))
                            state.unacked[meter, default: []].append((seq, line))
                            text += line
                        }
                        return text
                    }
                    if !round.isEmpty { try await connection.send(round) }
                    try await Task.sleep(for: .milliseconds(15))
                }
            }
            while let text = try? await connection.readLine(timeout: .seconds(10)) {
                if case .ack(let meter, let seq) = DaemonLine(text) {
                    self.state.withLockedValue { state in
                        state.acked[meter] = max(state.acked[meter] ?? 0, seq)
                        state.unacked[meter]?.removeAll { $0.seq <= seq }
                    }
                }
                if self.isDone { break }
            }
            sender.cancel()
            _ = await sender.result
            await connection.close()
        }
    }
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct CrashSafetyTests {
    /// Both ways of writing aggregates: with their readings (the default), and deferred up to a
    /// second, where start-up recovers what the kill left unwritten.
    @Test(arguments: [[String](), ["--aggregate-interval-ms", "1000"]])
    func killedFiveTimesWhileAThousandMetersSendNothingAckedIsLostOrDoubled(arguments: [String]) async throws {
        try await withTemporaryDirectory { directory in
            let readingsPerMeter: Int64 = 250
            let kwh: @Sendable (String, Int64) -> Double = { meter, seq in Double((meter.hashValue & 0xFF) + Int(seq % 7)) / 64 }
            let fleet = (0..<100).map { connection in
                ResendingConcentrator(meters: (0..<10).map { "K\(connection)-\($0)" }, readingsPerMeter: readingsPerMeter, kwh: kwh)
            }
            let daemon = NIOLockedValueBox<DaemonProcess?>(try DaemonProcess(dataDirectory: directory, arguments: arguments))
            let portBox = PortBox(try await daemon.withLockedValue { $0! }.ingestPort())

            try await withThrowingTaskGroup(of: Void.self) { group in
                for concentrator in fleet {
                    group.addTask { try await concentrator.run(port: { portBox.port }) }
                }
                // Five SIGKILLs and one SIGTERM, each after the fleet made progress, each followed by a restart.
                for signal in [SIGKILL, SIGKILL, SIGTERM, SIGKILL, SIGKILL, SIGKILL] {
                    let before = fleet.reduce(0) { $0 + $1.acked.values.reduce(0, +) }
                    try await waitUntil(timeout: .seconds(60)) {
                        fleet.reduce(0) { $0 + $1.acked.values.reduce(0, +) } >= before + 2_000
                    }
                    let process = try #require(daemon.withLockedValue { $0 })
                    process.signal(signal)
                    let status = try await process.exitStatus()
                    if signal == SIGTERM { #expect(status == 0, "\(process.log)") }
                    portBox.port = nil
                    let restarted = try DaemonProcess(dataDirectory: directory, arguments: arguments)
                    daemon.withLockedValue { $0 = restarted }
                    do {
                        portBox.port = try await restarted.ingestPort()
                    } catch {
                        Issue.record("meterd did not come back after signal \(signal): \(restarted.log)")
                        throw error
                    }
                }
                try await group.waitForAll()
            }
            let last = try #require(daemon.withLockedValue { $0 })
            last.terminate()
            #expect(try await last.exitStatus() == 0)

            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let rows = try await database.pool.read { db in
                try Row.fetchAll(
                    db,
                    sql: """
                        SELECT meter.name AS name, meter.readings_total AS total, meter.hwm_seq AS hwm,
                               (SELECT count(*) FROM reading WHERE meter_id = meter.id) AS stored,
                               (SELECT count(DISTINCT seq) FROM reading WHERE meter_id = meter.id) AS distinctSeqs,
                               (SELECT sum(kwh) FROM reading WHERE meter_id = meter.id) AS readingKwh,
                               (SELECT sum(kwh) FROM meter_month WHERE meter_id = meter.id) AS monthKwh,
                               (SELECT sum(readings) FROM meter_month WHERE meter_id = meter.id) AS monthReadings
                        FROM meter
                        """
                ).map { row in
                    (
                        name: row["name"] as String, total: row["total"] as Int64, hwm: row["hwm"] as Int64, stored: row["stored"] as Int64,
                        distinct: row["distinctSeqs"] as Int64, readingKwh: row["readingKwh"] as Double,
                        monthKwh: row["monthKwh"] as Double, monthReadings: row["monthReadings"] as Int64
                    )
                }
            }
            #expect(rows.count == 1000)
            for row in rows {
                #expect(row.stored == readingsPerMeter && row.distinct == readingsPerMeter && row.hwm == readingsPerMeter, "\(row)")
                #expect(row.total == readingsPerMeter && row.monthReadings == readingsPerMeter, "\(row)")
                let expected = (1...readingsPerMeter).reduce(0.0) { $0 + kwh(row.name, $1) }
                #expect(abs(row.readingKwh - expected) < 1e-6, "\(row)")
                #expect(abs(row.monthKwh - row.readingKwh) < 1e-6, "\(row)")
            }
        }
    }
}

/// Register readings through kills and restarts: what meterd derives (rollovers, gaps spread over
/// New York's months) must come out as if every reading had been applied once, in one pass.
@Suite(.serialized, .timeLimit(.minutes(3))) struct RegisterCrashSafetyTests {
    static let readingsPerMeter: Int64 = 120
    static let start = RFC3339.parseMilliseconds("2026-10-30T12:00:00Z")!

    /// Every 40th reading comes two days late (a gap; the one at seq 40 spans the end of October in
    /// New York) and carries 100 times the energy.
    static func timestamp(_ seq: Int64) -> Int64 { Self.start + seq * 300_000 + (seq / 40) * 172_800_000 }
    static func energy(_ meter: String, _ seq: Int64) -> Double {
        Double((meter.utf8.reduce(0) { $0 &+ Int($1) } & 0xF) + Int(seq % 5)) / 8 * (seq % 40 == 0 ? 100 : 1)
    }
    /// Every third meter starts 100 kWh below a 6-digit register's capacity, so it rolls over.
    static func register(_ meter: String, _ seq: Int64) -> Double {
        let first = meter.utf8.last.map { Int($0) % 3 == 0 } == true ? 999_900.0 : 1_000.0
        let total = (1...seq).reduce(first) { $0 + Self.energy(meter, $1) }
        return total.truncatingRemainder(dividingBy: 1_000_000)
    }
    static func reading(_ meter: String, _ seq: Int64) -> Reading {
        Reading(meter: meter, seq: seq, timestampMs: Self.timestamp(seq), registerKwh: Self.register(meter, seq))
    }

    static func months(_ database: MeterDatabase) async throws -> [String: [Double]] {
        try await database.pool.read { db in
            var result: [String: [Double]] = [:]
            for row in try Row.fetchAll(
                db,
                sql: """
                    SELECT m.name, mm.month, mm.kwh, mm.readings, mm.estimated, mm.estimated_kwh, m.hwm_seq, m.last_register_kwh
                    FROM meter_month mm JOIN meter m ON m.id = mm.meter_id ORDER BY m.name, mm.month
                    """)
            {
                result["\(row["name"] as String) \(row["month"] as Int)"] = [
                    row["kwh"], Double(row["readings"] as Int), Double(row["estimated"] as Int), row["estimated_kwh"],
                    Double(row["hwm_seq"] as Int64), row["last_register_kwh"],
                ]
            }
            return result
        }
    }

    @Test(arguments: [[String](), ["--aggregate-interval-ms", "1000"]])
    func registersRolloversAndGapsSurviveKillsExactly(arguments: [String]) async throws {
        try await withTemporaryDirectory { directory in
            let fleet = (0..<20).map { connection in
                ResendingConcentrator(
                    meters: (0..<10).map { "R\(connection)-\($0)" }, readingsPerMeter: Self.readingsPerMeter, kwh: { _, _ in 0 },
                    line: { meter, seq in Self.reading(meter, seq).line })
            }
            let arguments = ["--timezone", "America/New_York"] + arguments
            let daemon = NIOLockedValueBox<DaemonProcess?>(try DaemonProcess(dataDirectory: directory, arguments: arguments))
            let portBox = PortBox(try await daemon.withLockedValue { $0! }.ingestPort())
            try await withThrowingTaskGroup(of: Void.self) { group in
                for concentrator in fleet {
                    group.addTask { try await concentrator.run(port: { portBox.port }) }
                }
                for signal in [SIGKILL, SIGKILL, SIGKILL] {
                    let before = fleet.reduce(0) { $0 + $1.acked.values.reduce(0, +) }
                    try await waitUntil(timeout: .seconds(60)) {
                        fleet.reduce(0) { $0 + $1.acked.values.reduce(0, +) } >= before + 1_500
                    }
                    let process = try #require(daemon.withLockedValue { $0 })
                    process.signal(signal)
                    _ = try await process.exitStatus()
                    portBox.port = nil
                    let restarted = try DaemonProcess(dataDirectory: directory, arguments: arguments)
                    daemon.withLockedValue { $0 = restarted }
                    portBox.port = try await restarted.ingestPort()
                }
                try await group.waitForAll()
            }
            let last = try #require(daemon.withLockedValue { $0 })
            last.terminate()
            #expect(try await last.exitStatus() == 0)

            // The reference: every reading once, in one pass, straight through a writer.
            let reference = try MeterDatabase(path: directory + "/reference.sqlite")
            let writer = try IngestWriter(
                database: reference, calendar: MonthCalendar(timeZone: TimeZone(identifier: "America/New_York")!), tariff: Tariff(),
                unknownMeters: .register)
            for concentrator in fleet {
                let readings = concentrator.meters.flatMap { meter in (1...Self.readingsPerMeter).map { Self.reading(meter, $0) } }
                _ = try writer.commit([
                    IngestSubmission(
                        readings: readings.enumerated().map { SubmittedReading(reading: $1, line: $0 + 1, receivedMs: WallClock.nowMs()) },
                        receiver: nil)
                ])
            }
            let expected = try await Self.months(reference)
            let actual = try await Self.months(try MeterDatabase(path: directory + "/meterd.sqlite"))
            #expect(expected.count >= 400)  // 200 meters in October and November
            // Both months of every meter whose reading at seq 40 (the gap over the month's end) has energy.
            let spreading = fleet.flatMap(\.meters).filter { Self.energy($0, 40) > 0 }.count
            #expect(spreading > 150)
            #expect(expected.values.filter { $0[2] > 0 }.count == 2 * spreading, "the gaps were not spread over both months")
            #expect(Set(actual.keys) == Set(expected.keys))
            for (key, values) in expected {
                let got = actual[key] ?? []
                #expect(got.count == values.count && zip(got, values).allSatisfy { close($0, $1) }, "\(key): \(got) vs \(values)")
            }
            // Rollovers happened, and their energy counts: each meter's total is its register's climb.
            let totals = try await MeterDatabase(path: directory + "/meterd.sqlite").pool.read { db in
                try Row.fetchAll(db, sql: "SELECT m.name, sum(r.kwh) AS kwh FROM reading r JOIN meter m ON m.id = r.meter_id GROUP BY m.name")
                    .map { ($0["name"] as String, $0["kwh"] as Double) }
            }
            #expect(totals.count == 200)
            let wrapped = try await MeterDatabase(path: directory + "/meterd.sqlite").pool.read { db in
                try Int.fetchOne(
                    db,
                    sql: """
                        SELECT count(*) FROM reading r JOIN reading p ON p.rowid = r.prev_rowid
                        WHERE r.register_kwh < p.register_kwh AND r.kwh > 0
                        """)!
            }
            #expect(wrapped > 0, "no register rolled over")
            for (name, kwh) in totals {
                let climb = (2...Self.readingsPerMeter).reduce(0.0) { $0 + Self.energy(name, $1) }
                #expect(close(kwh, climb), "\(name)")
            }
        }
    }
}

/// The port of whichever daemon runs now; `nil` while it restarts.
final class PortBox: Sendable {
    private let value: NIOLockedValueBox<Int?>
    init(_ port: Int?) { self.value = NIOLockedValueBox(port) }
    var port: Int? {
        get { self.value.withLockedValue { $0 } }
        set { self.value.withLockedValue { $0 = newValue } }
    }
}
