import Foundation
import GRDB
import Testing

@testable import MeterCore

/// Collects what the writer hands back, for tests that call it directly.
final class RecordingReceiver: AckReceiver, @unchecked Sendable {
    private(set) var outcomes: [SubmissionOutcome] = []
    func deliver(_ outcome: SubmissionOutcome) { self.outcomes.append(outcome) }
}

@Suite struct IngestWriterTests {
    static let utc = TimeZone(identifier: "UTC")!

    func submission(_ readings: [Reading], receivedMs: Int64 = WallClock.nowMs()) -> IngestSubmission {
        IngestSubmission(
            readings: readings.enumerated().map { SubmittedReading(reading: $1, line: $0 + 1, receivedMs: receivedMs) },
            receiver: nil)
    }

    func makeWriter(
        _ directory: String, timeZone: TimeZone = utc, tariff: Tariff = Tariff(),
        unknownMeters: UnknownMeterPolicy = .register
    ) throws -> (MeterDatabase, IngestWriter) {
        let database = try MeterDatabase(path: directory + "/meterd.sqlite")
        let writer = try IngestWriter(database: database, calendar: MonthCalendar(timeZone: timeZone), tariff: tariff, unknownMeters: unknownMeters)
        return (database, writer)
    }

    @Test func durabilityDefaultsToSynchronousFull() async throws {
        try await withTemporaryDirectory { directory in
            #expect(try MeterDatabase(path: directory + "/a.sqlite").synchronousLevel() == 2)
            #expect(try MeterDatabase(path: directory + "/b.sqlite", durability: .normal).synchronousLevel() == 1)
            let mode = try await MeterDatabase(path: directory + "/c.sqlite").pool.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") }
            #expect(mode == "wal")
        }
    }

    // Resends, monthly aggregates, late readings and time zones: StoreIngestTests, on every store.

    @Test func aFailedCommitAppliesNothingAndCanBeRetried() async throws {
        try await withTemporaryDirectory { directory in
            let (database, writer) = try self.makeWriter(directory)
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 1, timestampMs: WallClock.nowMs(), kwh: 1)])])
            // Given a database that refuses one particular reading
            try await database.pool.write { db in
                try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON reading WHEN NEW.kwh = 13 BEGIN SELECT RAISE(ABORT, 'refused'); END")
            }
            // (A twice: the rollback must restore A as it was before the batch, not between its readings.)
            let batch = [
                self.submission([
                    Reading(meter: "A", seq: 2, timestampMs: WallClock.nowMs(), kwh: 2),
                    Reading(meter: "A", seq: 3, timestampMs: WallClock.nowMs(), kwh: 3),
                    Reading(meter: "B", seq: 1, timestampMs: WallClock.nowMs(), kwh: 13),
                ])
            ]
            #expect(throws: DatabaseError.self) { try writer.commit(batch) }
            let countAfterFailure = try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")! }
            #expect(countAfterFailure == 1)
            // When the cause goes away, the same batch commits in full: the cache forgot the failed attempt.
            try await database.pool.write { db in try db.execute(sql: "DROP TRIGGER refuse") }
            let result = try writer.commit(batch)
            #expect(result.stored == 3)
            #expect(result.duplicates == 0)
            let meters = try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM meter")! }
            #expect(meters == 2)
        }
    }

    @Test func unknownMetersAreRejectedWhenConfigured() async throws {
        try await withTemporaryDirectory { directory in
            let (database, writer) = try self.makeWriter(directory, unknownMeters: .reject)
            let result = try writer.commit([self.submission([Reading(meter: "STRANGER", seq: 1, timestampMs: WallClock.nowMs(), kwh: 1)])])
            #expect(result.stored == 0)
            #expect(result.outcomes[0].acks.isEmpty)
            #expect(result.outcomes[0].rejections.map(\.rejection.code) == [.unknownMeter])
            let (readings, quarantined) = try await database.pool.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")!,
                    try String.fetchAll(db, sql: "SELECT code FROM quarantine")
                )
            }
            #expect(readings == 0)
            #expect(quarantined == ["unknown_meter"])
        }
    }

    /// Meter state and month aggregates of a meter, and what its stored readings say they must be.
    func aggregatesAndReadings(_ database: MeterDatabase, meter: String) async throws -> (stored: [Double], expected: [Double]) {
        try await database.pool.read { db in
            let row = try #require(
                try Row.fetchOne(
                    db,
                    sql: """
                        SELECT m.hwm_seq, m.readings_total, m.faults_total, m.last_ts_ms,
                               (SELECT sum(kwh) FROM meter_month WHERE meter_id = m.id) AS month_kwh,
                               (SELECT sum(readings) FROM meter_month WHERE meter_id = m.id) AS month_readings,
                               (SELECT sum(latency_count) FROM meter_month WHERE meter_id = m.id) AS month_latencies,
                               (SELECT max(seq) FROM reading WHERE meter_id = m.id) AS max_seq,
                               (SELECT count(*) FROM reading WHERE meter_id = m.id) AS count,
                               (SELECT count(fault) FROM reading WHERE meter_id = m.id) AS faults,
                               (SELECT sum(kwh) FROM reading WHERE meter_id = m.id) AS kwh,
                               (SELECT ts_ms FROM reading WHERE meter_id = m.id ORDER BY rowid DESC LIMIT 1) AS last_ts
                        FROM meter m WHERE m.name = ?
                        """, arguments: [meter]))
            let stored: [Double] = [
                Double(row["hwm_seq"] as Int64), Double(row["readings_total"] as Int), Double(row["faults_total"] as Int),
                Double(row["last_ts_ms"] as Int64? ?? -1), row["month_kwh"] as Double? ?? 0,
                Double(row["month_readings"] as Int? ?? 0), Double(row["month_latencies"] as Int? ?? 0),
            ]
            let count = Double(row["count"] as Int)
            let expected: [Double] = [
                Double(row["max_seq"] as Int64? ?? -1), count, Double(row["faults"] as Int),
                Double(row["last_ts"] as Int64? ?? -1), row["kwh"] as Double? ?? 0, count, count,
            ]
            return (stored, expected)
        }
    }

    @Test func aMeterWhoseAggregatesAreDeferredIsNotFlaggedInactive() async throws {
        try await withTemporaryDirectory { directory in
            let (_, writer) = try self.makeWriter(directory)
            let start = WallClock.nowMs() - 600_000
            _ = try writer.commit([
                self.submission([Reading(meter: "A", seq: 1, timestampMs: start, kwh: 1)], receivedMs: start)
            ])
            let store = SQLiteMeterStore(database: try #require(writer.database))
            let cutoff = start + 300_000
            let candidates = try await store.livenessCandidates(cutoffMs: cutoff, startMs: start)
            #expect(candidates.silent.map(\.name) == ["A"])

            // The meter reports after the candidates were read; its aggregates wait for a flush.
            _ = try writer.commit(
                [self.submission([Reading(meter: "A", seq: 2, timestampMs: start + 400_000, kwh: 1)], receivedMs: start + 400_000)],
                deferAggregates: true)
            #expect(try writer.flagInactive(candidates.silent, cutoffMs: cutoff, startMs: start).isEmpty)
            #expect(try await store.inactiveMeters(region: nil, limit: 10).isEmpty)
        }
    }

    @Test func deferredAggregatesWaitForAFlushAndARestartRecoversThem() async throws {
        try await withTemporaryDirectory { directory in
            let (database, writer) = try self.makeWriter(directory)
            let ts = WallClock.nowMs() - 60_000
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 1, timestampMs: ts, kwh: 1)])])

            // Deferred: the readings are stored and deduplicated at once, the aggregates wait.
            var result = try writer.commit(
                [
                    self.submission([
                        Reading(meter: "A", seq: 2, timestampMs: ts + 1000, kwh: 2, status: .poor, fault: "tamper"),
                        Reading(meter: "B", seq: 7, timestampMs: ts + 1000, kwh: 4),
                    ])
                ], deferAggregates: true)
            #expect(result.stored == 2)
            #expect(writer.hasPendingAggregates)
            result = try writer.commit(
                [
                    self.submission([
                        Reading(meter: "A", seq: 2, timestampMs: ts + 1000, kwh: 2),
                        Reading(meter: "A", seq: 3, timestampMs: ts + 2000, kwh: 3),
                    ])
                ],
                deferAggregates: true)
            #expect(result.stored == 1)
            #expect(result.duplicates == 1)
            let lagging = try await self.aggregatesAndReadings(database, meter: "A")
            #expect(lagging.stored[1] == 1)  // readings_total still at the first, flushed, commit
            #expect(lagging.expected[1] == 3)

            // A crash here (the writer dropped without a flush): the next writer recovers from the readings.
            let recovered = try IngestWriter(
                database: database, calendar: MonthCalendar(timeZone: Self.utc), tariff: Tariff(), unknownMeters: .register)
            #expect(!recovered.hasPendingAggregates)
            for meter in ["A", "B"] {
                let (stored, expected) = try await self.aggregatesAndReadings(database, meter: meter)
                #expect(stored == expected, "meter \(meter)")
            }
            // Dedup is exact after the recovery: seq 3 is known, seq 4 is new.
            result = try recovered.commit(
                [
                    self.submission([
                        Reading(meter: "A", seq: 3, timestampMs: ts + 2000, kwh: 3),
                        Reading(meter: "A", seq: 4, timestampMs: ts + 3000, kwh: 4),
                        Reading(meter: "B", seq: 7, timestampMs: ts + 1000, kwh: 4),
                    ])
                ],
                deferAggregates: true)
            #expect(result.stored == 1)
            #expect(result.duplicates == 2)
            try recovered.flushAggregates()
            let (stored, expected) = try await self.aggregatesAndReadings(database, meter: "A")
            #expect(stored == expected)
            #expect(stored[0] == 4)
            // Nothing is applied twice by a later start.
            _ = try IngestWriter(database: database, calendar: MonthCalendar(timeZone: Self.utc), tariff: Tariff(), unknownMeters: .register)
            let again = try await self.aggregatesAndReadings(database, meter: "A")
            #expect(again.stored == expected)
        }
    }
}
