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

    @Test func storesAReadingOnceHoweverOftenItIsResent() async throws {
        try await withTemporaryDirectory { directory in
            // Given a stored reading
            let (database, initialWriter) = try self.makeWriter(directory)
            var writer = initialWriter
            let first = Reading(meter: "MTR-1", seq: 1, timestampMs: 1_795_947_300_000, kwh: 0.5)
            let second = Reading(meter: "MTR-1", seq: 2, timestampMs: 1_795_947_360_000, kwh: 0.25)
            var result = try writer.commit([self.submission([first, second])])
            #expect(result.stored == 2)
            #expect(result.outcomes[0].acks.map(\.seq) == [2])

            // When it is resent in the same batch, a later batch, and after a restart
            result = try writer.commit([self.submission([first]), self.submission([second, second])])
            #expect(result.stored == 0)
            #expect(result.duplicates == 3)
            #expect(result.outcomes.map { $0.acks.map(\.seq) } == [[1], [2]])
            writer = try IngestWriter(database: database, calendar: MonthCalendar(timeZone: Self.utc), tariff: Tariff(), unknownMeters: .register)
            result = try writer.commit([self.submission([first, second])])
            #expect(result.duplicates == 2)

            // Then it is stored, aggregated and counted once
            let (readings, kwh, monthKwh, duplicates) = try await database.pool.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")!,
                    try Double.fetchOne(db, sql: "SELECT sum(kwh) FROM reading")!,
                    try Double.fetchOne(db, sql: "SELECT sum(kwh) FROM meter_month")!,
                    try Int.fetchOne(db, sql: "SELECT duplicates_total FROM meter WHERE name = 'MTR-1'")!
                )
            }
            #expect(readings == 2)
            #expect(kwh == 0.75)
            #expect(monthKwh == 0.75)
            #expect(duplicates == 5)
        }
    }

    @Test func keepsMonthlyAggregatesWithTariffStatusFaultsAndLatency() async throws {
        try await withTemporaryDirectory { directory in
            let tariff = Tariff(defaultRate: 0.2, regionRates: ["North": 0.1])
            let (database, writer) = try self.makeWriter(directory, tariff: tariff)
            let ts = RFC3339.parseMilliseconds("2026-11-10T12:00:00Z")!
            _ = try writer.commit([
                self.submission(
                    [
                        Reading(meter: "A", seq: 1, timestampMs: ts, kwh: 1.0, status: .good),
                        Reading(meter: "A", seq: 2, timestampMs: ts + 1000, kwh: 2.0, status: .poor, fault: "tamper"),
                        Reading(meter: "A", seq: 3, timestampMs: ts + 2000, kwh: 3.0, status: .poor),
                        Reading(meter: "A", seq: 4, timestampMs: ts + 3000, kwh: 4.0, status: .fair, fault: "voltage_sag"),
                    ], receivedMs: ts + 5000)
            ])
            let fetched = try database.pool.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM meter_month JOIN meter ON meter.id = meter_id WHERE name = 'A'")
            }
            let row = try #require(fetched)
            #expect(row["month"] as Int == 202611)
            #expect(row["kwh"] as Double == 10.0)
            #expect(abs((row["revenue"] as Double) - 2.0) < 1e-9)  // unassigned meters pay the default rate
            #expect(row["readings"] as Int == 4)
            #expect(row["faults"] as Int == 2)
            #expect([row["good"], row["fair"], row["poor"]] as [Int] == [1, 1, 2])
            #expect(row["latency_sum_ms"] as Int64 == 5000 + 4000 + 3000 + 2000)
            #expect(row["latency_count"] as Int == 4)
            #expect(row["latency_max_ms"] as Int64 == 5000)
            #expect(row["hwm_seq"] as Int64 == 4)
            #expect(row["last_status"] as Int == Int(MeterHealth.fair.rawValue))
            #expect(row["last_fault"] as String? == "voltage_sag")
            #expect(row["faults_total"] as Int == 2)
            #expect(row["region"] as String == "Unassigned")
        }
    }

    @Test func aLateReadingLandsInTheMonthOfItsTimestamp() async throws {
        try await withTemporaryDirectory { directory in
            let (database, writer) = try self.makeWriter(directory)
            let november = RFC3339.parseMilliseconds("2026-11-29T10:00:00Z")!
            let october = RFC3339.parseMilliseconds("2026-10-31T23:59:59.999Z")!
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 1, timestampMs: november, kwh: 1)], receivedMs: november)])
            // Received in November, measured in October: October's aggregate takes it.
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 2, timestampMs: october, kwh: 2)], receivedMs: november + 60_000)])
            let months = try await database.pool.read { db in
                try Row.fetchAll(db, sql: "SELECT month, kwh FROM meter_month ORDER BY month").map { [$0["month"] as Int: $0["kwh"] as Double] }
            }
            #expect(months == [[202610: 2.0], [202611: 1.0]])
        }
    }

    @Test func monthsFollowTheConfiguredTimeZone() async throws {
        try await withTemporaryDirectory { directory in
            // 23:30 on 30 November in New York is already 1 December in UTC.
            let zone = try #require(TimeZone(identifier: "America/New_York"))
            let (database, writer) = try self.makeWriter(directory, timeZone: zone)
            let lateEvening = try #require(RFC3339.parseMilliseconds("2026-11-30T23:30:00-05:00"))
            let nextMorning = try #require(RFC3339.parseMilliseconds("2026-12-01T00:30:00-05:00"))
            _ = try writer.commit([
                self.submission(
                    [
                        Reading(meter: "A", seq: 1, timestampMs: lateEvening, kwh: 1),
                        Reading(meter: "A", seq: 2, timestampMs: nextMorning, kwh: 2),
                    ], receivedMs: nextMorning + 1000)
            ])
            let months = try await database.pool.read { db in
                try Row.fetchAll(db, sql: "SELECT month, kwh FROM meter_month ORDER BY month").map { [$0["month"] as Int: $0["kwh"] as Double] }
            }
            #expect(months == [[202611: 1.0], [202612: 2.0]])

            var berlin = MonthCalendar(timeZone: try #require(TimeZone(identifier: "Europe/Berlin")))
            #expect(berlin.month(ofMilliseconds: RFC3339.parseMilliseconds("2026-03-31T23:30:00+02:00")!) == Month(year: 2026, month: 3))
            #expect(berlin.month(ofMilliseconds: RFC3339.parseMilliseconds("2026-03-31T22:00:00Z")!) == Month(year: 2026, month: 4))
        }
    }

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
            let store = SQLiteMeterStore(database: writer.database)
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
