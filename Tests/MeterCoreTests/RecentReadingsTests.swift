import Foundation
import GRDB
import Testing

@testable import MeterCore

/// A meter's recent readings through the per-meter chain in `reading` (issue 12, point 6).
@Suite struct RecentReadingsTests {
    static let utc = TimeZone(identifier: "UTC")!

    func makeWriter(_ database: MeterDatabase) throws -> IngestWriter {
        try IngestWriter(database: database, calendar: MonthCalendar(timeZone: Self.utc), tariff: Tariff(), unknownMeters: .register)
    }

    func submission(_ readings: [Reading], receivedMs: Int64) -> IngestSubmission {
        IngestSubmission(
            readings: readings.enumerated().map { SubmittedReading(reading: $1, line: $0 + 1, receivedMs: receivedMs) },
            receiver: nil)
    }

    func fetch(_ database: MeterDatabase, _ meter: String, limit: Int) async throws -> RecentReadings {
        try #require(try await SQLiteMeterStore(database: database).recentReadings(meter: meter, limit: limit))
    }

    @Test(.timeLimit(.minutes(1)))
    func aMetersReadingsAmongManyOthersComeCompleteAndNewestFirst() async throws {
        try await withTemporaryDirectory { directory in
            // Given 2,000 meters reporting 48 times, one commit per round, the watched meter anywhere in it
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database)
            let base = WallClock.nowMs() - 48 * 900_000
            for round in 1...48 {
                let ts = base + Int64(round) * 900_000
                var readings = (0..<2_000).map { Reading(meter: "MTR-\($0)", seq: Int64(round), timestampMs: ts, kwh: 0.1) }
                readings.swapAt(1_234, (round * 37) % 2_000)
                readings[(round * 37) % 2_000] = Reading(
                    meter: "MTR-1234", seq: Int64(round), timestampMs: ts, kwh: Double(round),
                    status: round % 10 == 0 ? .poor : .good, fault: round == 35 ? "tamper" : nil,
                    voltage: 230)
                #expect(try writer.commit([self.submission(readings, receivedMs: ts + 1_500)]).stored == 2_000)
            }

            // When its 60 most recent are asked for
            let page = try await self.fetch(database, "MTR-1234", limit: 60)

            // Then all 48 come back, newest first, each with its own values, from 48 rows read
            #expect(page.complete)
            #expect(page.readings.map(\.seq) == Array((1...48).reversed()))
            #expect(page.scannedRows == 48)
            #expect(page.readings.map(\.kwh) == (1...48).reversed().map(Double.init))
            #expect(page.readings.allSatisfy { $0.receivedMs - $0.timestampMs == 1_500 && $0.voltage == 230 })
            #expect(page.readings.first { $0.seq == 35 }?.fault == "tamper")
            #expect(page.readings.first { $0.seq == 40 }?.status == .poor)
            // A limit below the count: the newest ones, and complete.
            let ten = try await self.fetch(database, "MTR-1234", limit: 10)
            #expect(ten.readings.map(\.seq) == Array((39...48).reversed()) && ten.complete && ten.scannedRows == 10)

            // And the dashboard's answer says so
            let store = SQLiteMeterStore(database: database)
            let engine = KPIEngine(store: store, settings: KPISettings())
            let queries = DashboardQueries(
                store: store, kpi: engine,
                operatorQueries: makeOfflineOperatorQueries(
                    store: store, engine: engine, writer: try .direct(store),
                    directory: directory))
            let json = try #require(try await queries.readings("MTR-1234", limit: 60)?.serialized)
            let answer = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            #expect(answer["count"] as? Int == 48 && answer["complete"] as? Bool == true && answer["scanned_since"] is NSNull)
            #expect((answer["readings"] as? [[String: Any]])?.first?["seq"] as? Int == 48)
        }
    }

    @Test func deferredAggregatesACrashAndAFailedCommitKeepTheChain() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database)
            let ts = WallClock.nowMs() - 60_000
            func reading(_ meter: String, _ seq: Int64, kwh: Double = 1) -> Reading {
                Reading(meter: meter, seq: seq, timestampMs: ts + seq * 1000, kwh: kwh)
            }
            _ = try writer.commit([self.submission([reading("A", 1)], receivedMs: ts + 1_500)])

            // Deferred: the meter row lags, the readings past the watermark are found all the same.
            _ = try writer.commit(
                [self.submission([reading("A", 2), reading("B", 1), reading("A", 3)], receivedMs: ts + 3_500)],
                deferAggregates: true)
            #expect(writer.hasPendingAggregates)
            #expect(try await self.fetch(database, "A", limit: 60).readings.map(\.seq) == [3, 2, 1])

            // A crash (no flush): the next writer recovers the meter row's newest reading and links on from it.
            let recovered = try self.makeWriter(database)
            let (newest, last) = try await database.pool.read { db in
                (
                    try Int64.fetchOne(db, sql: "SELECT max(r.rowid) FROM reading r JOIN meter m ON m.id = r.meter_id WHERE m.name = 'A'"),
                    try Int64.fetchOne(db, sql: "SELECT last_reading_rowid FROM meter WHERE name = 'A'")
                )
            }
            #expect(newest != nil && newest == last)

            // A failed commit leaves nothing linked to its rolled-back rows (their rowids are reused).
            try await database.pool.write { db in
                try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON reading WHEN NEW.kwh = 13 BEGIN SELECT RAISE(ABORT, 'refused'); END")
            }
            let batch = [self.submission([reading("A", 4), reading("B", 2), reading("C", 1, kwh: 13)], receivedMs: ts + 5_000)]
            #expect(throws: DatabaseError.self) { try recovered.commit(batch) }
            try await database.pool.write { db in try db.execute(sql: "DROP TRIGGER refuse") }
            _ = try recovered.commit([self.submission([reading("B", 2), reading("A", 4)], receivedMs: ts + 5_000)])
            _ = try recovered.commit(batch)

            let a = try await self.fetch(database, "A", limit: 60)
            #expect(a.readings.map(\.seq) == [4, 3, 2, 1] && a.complete)
            let b = try await self.fetch(database, "B", limit: 60)
            #expect(b.readings.map(\.seq) == [2, 1] && b.complete)
            #expect(try await self.fetch(database, "C", limit: 60).readings.map(\.kwh) == [13])
        }
    }

    @Test func aRowWrittenOutsideTheWriterEndsTheChainAsIncomplete() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database)
            let ts = WallClock.nowMs() - 60_000
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 1, timestampMs: ts, kwh: 1)], receivedMs: ts)])
            // A row inserted by hand has no link to the meter's earlier readings.
            try await database.pool.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO reading (meter_id, seq, ts_ms, received_ms, kwh, status) VALUES (1, 2, ?, ?, 2, 0);
                        UPDATE meter SET last_reading_rowid = last_insert_rowid() WHERE id = 1;
                        UPDATE ingest_watermark SET reading_rowid = last_insert_rowid();
                        """, arguments: [ts, ts])
            }
            let page = try await self.fetch(database, "A", limit: 60)
            #expect(page.readings.map(\.seq) == [2])
            #expect(!page.complete)
            #expect(try await self.fetch(database, "A", limit: 1).complete)
        }
    }

    @Test func migratingADatabaseWithReadingsLinksThem() async throws {
        try await withTemporaryDirectory { directory in
            // Given a database as the migrations before v5 left it, with readings of three meters interleaved
            let path = directory + "/meterd.sqlite"
            do {
                let pool = try DatabasePool(path: path)
                try MeterDatabase.migrator.migrate(pool, upTo: "v4-store-settings")
                try await pool.write { db in
                    #expect(try !db.columns(in: "reading").contains { $0.name == "prev_rowid" })
                    try db.execute(
                        sql: "INSERT INTO meter (id, name, hwm_seq, readings_total) VALUES (1, 'A', 30, 30), (2, 'B', 30, 30), (3, 'C', -1, 0)")
                    for seq in 1...30 {
                        for meter in [1, 2] {
                            try db.execute(
                                sql: """
                                    INSERT INTO reading (meter_id, seq, ts_ms, received_ms, kwh, status) VALUES (?, ?, ?, ?, ?, 0)
                                    """, arguments: [meter, seq, seq * 1000, seq * 1000 + 20, Double(meter * 100 + seq)])
                        }
                    }
                    try db.execute(sql: "UPDATE ingest_watermark SET reading_rowid = (SELECT max(rowid) FROM reading)")
                }
                try pool.close()
            }

            // When meterd opens it (migrating) and writes on
            let database = try MeterDatabase(path: path)
            let before = try await self.fetch(database, "A", limit: 60)
            let writer = try self.makeWriter(database)
            _ = try writer.commit([
                self.submission(
                    [
                        Reading(meter: "A", seq: 31, timestampMs: 31_000, kwh: 131),
                        Reading(meter: "C", seq: 1, timestampMs: 31_000, kwh: 301),
                    ], receivedMs: 31_020)
            ])

            // Then every old reading is linked, and the new ones continue the chain
            #expect(before.readings.map(\.seq) == Array((1...30).reversed()) && before.complete)
            #expect(before.readings.map(\.kwh) == (1...30).reversed().map { Double(100 + $0) })
            let a = try await self.fetch(database, "A", limit: 60)
            #expect(a.readings.map(\.seq) == Array((1...31).reversed()) && a.complete && a.scannedRows == 31)
            let b = try await self.fetch(database, "B", limit: 5)
            #expect(b.readings.map(\.seq) == [30, 29, 28, 27, 26] && b.complete)
            #expect(try await self.fetch(database, "C", limit: 60).readings.map(\.seq) == [1])
            let unlinked = try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM reading WHERE prev_rowid IS NULL") }
            #expect(unlinked == 0)
        }
    }
}
