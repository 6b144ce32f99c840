import CSQLite
import Foundation
import GRDB

extension IngestWriter {
    /// A writer of the SQLite file `database`.
    package convenience init(
        database: MeterDatabase, calendar: MonthCalendar, tariff: Tariff, unknownMeters: UnknownMeterPolicy,
        metering: MeteringRules = MeteringRules()
    ) throws {
        try self.init(
            backend: SQLiteIngestBackend(database: database), calendar: calendar, tariff: tariff, unknownMeters: unknownMeters,
            metering: metering)
    }

    /// The SQLite file this writer writes, `nil` for another store.
    package var database: MeterDatabase? { (self.backend as? SQLiteIngestBackend)?.database }
}

/// The SQLite side of the ``IngestWriter``: one `pool.write` per transaction on the writer's
/// connection, statements bound through the C API (``RawStatement``).
final class SQLiteIngestBackend: IngestBackend {
    let database: MeterDatabase

    init(database: MeterDatabase) {
        self.database = database
    }

    /// Readings past `ingest_watermark` are folded again on open, so aggregates may lag their readings.
    var supportsDeferredAggregates: Bool { true }

    func write<T>(_ body: (any IngestTransaction) throws -> T) throws -> T {
        try self.database.pool.write { db in try body(SQLiteIngestTransaction(db)) }
    }

    /// A failed SQLite transaction is rolled back whole, and nothing else writes the file.
    func invalidatesMeterCache(_ error: any Error) -> Bool { false }

    func loadMeters() throws -> [StoredMeterState] {
        try self.database.pool.read { db in
            // Columns by position: by name, GRDB lowercases and compares each name per row, more
            // than half of the load at 100,000 meters (perf).
            let rows = try Row.fetchCursor(
                db,
                sql: """
                    SELECT id, name, hwm_seq, region, COALESCE(last_reading_rowid, 0), last_ts_ms,
                           last_register_kwh, last_register_ts_ms, zero_since_ms, zero_flagged
                    FROM meter
                    """)
            var meters: [StoredMeterState] = []
            while let row = try rows.next() {
                meters.append(
                    StoredMeterState(
                        id: row[0], name: row[1], region: row[3], highWaterMark: row[2], lastReadingRowID: row[4], lastTimestampMs: row[5],
                        lastRegister: row[6], lastRegisterTimestampMs: row[7], zeroRun: MeteringRules.ZeroRun(sinceMs: row[8], flagged: row[9])))
            }
            return meters
        }
    }

    func awaitWritable() throws {
        try self.database.awaitIntegrityCheck()
    }

    func readingsPastWatermark() throws -> [RecoveredReading] {
        try self.database.pool.read { db in
            let watermark = try Int64.fetchOne(db, sql: "SELECT reading_rowid FROM ingest_watermark WHERE id = 1") ?? 0
            return try Row.fetchAll(
                db,
                sql: """
                    SELECT rowid, meter_id, seq, ts_ms, received_ms, kwh, status, fault, register_kwh, span_start_ms
                    FROM reading WHERE rowid > ? ORDER BY rowid
                    """, arguments: [watermark]
            ).map { row in
                RecoveredReading(
                    rowID: row["rowid"], meterID: row["meter_id"], seq: row["seq"], timestampMs: row["ts_ms"], receivedMs: row["received_ms"],
                    kwh: row["kwh"], status: MeterHealth(rawValue: UInt8(clamping: row["status"] as Int64)) ?? .good, fault: row["fault"],
                    registerKwh: row["register_kwh"], spanStartMs: row["span_start_ms"])
            }
        }
    }

    /// Fills `meter_day` and `meter.first_reading_day` from the readings stored before they existed
    /// (migration `v9-read-success` leaves a `read_days_backfill` setting): once, in one transaction,
    /// for the readings the aggregates already cover; the writer folds those past them.
    func backfillReadDays(calendar: inout MonthCalendar) throws {
        try self.database.pool.write { db in
            guard try String.fetchOne(db, sql: "SELECT value FROM store_setting WHERE name = 'read_days_backfill'") != nil else { return }
            let watermark = try Int64.fetchOne(db, sql: "SELECT reading_rowid FROM ingest_watermark WHERE id = 1") ?? 0
            var days: [DayKey: DayDelta] = [:]
            var previous: [Int64: Int64] = [:]
            var firstDays: [Int64: Int] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT meter_id, ts_ms FROM reading WHERE rowid <= ? ORDER BY rowid", arguments: [watermark])
            while let row = try rows.next() {
                let meterID: Int64 = row[0]
                let timestampMs: Int64 = row[1]
                let day = calendar.day(ofMillisecondsCached: timestampMs).key
                days[DayKey(day: day, meterID: meterID), default: DayDelta()].add(timestampMs: timestampMs, previousMs: previous[meterID])
                previous[meterID] = timestampMs
                firstDays[meterID] = min(firstDays[meterID] ?? day, day)
            }
            try Self.writeDays(days, db: db)
            try ReadSuccessRollups.rebuild(db)
            for (meterID, day) in firstDays {
                try db.execute(sql: "UPDATE meter SET first_reading_day = ? WHERE id = ?", arguments: [day, meterID])
            }
            try db.execute(sql: "DELETE FROM store_setting WHERE name = 'read_days_backfill'")
        }
    }

    /// Adds days to `meter_day`. Keyed by day first: a commit's rows are today's, so they share a few
    /// neighbouring pages rather than one page per meter; an UPDATE first, an INSERT only for a
    /// meter's first reading of a day (as for `meter_month`). Returns the meter-days inserted: the
    /// ones that start reporting.
    @discardableResult
    static func writeDays(_ days: [DayKey: DayDelta], db: Database) throws -> [AggregateDelta.MeterDayKey] {
        guard !days.isEmpty else { return [] }
        let update = try RawStatement(
            db,
            sql: """
                UPDATE meter_day SET readings = readings + ?3, spacing_sum_ms = spacing_sum_ms + ?4,
                    spacing_count = spacing_count + ?5
                WHERE day = ?1 AND meter_id = ?2
                """)
        let insert = try RawStatement(
            db,
            sql: """
                INSERT INTO meter_day (day, meter_id, readings, spacing_sum_ms, spacing_count) VALUES (?, ?, ?, ?, ?)
                """)
        func bindAndRun(_ statement: RawStatement, _ key: DayKey, _ delta: DayDelta) throws {
            statement.bind(1, key.day)
            statement.bind(2, key.meterID)
            statement.bind(3, delta.readings)
            statement.bind(4, delta.spacingSumMs)
            statement.bind(5, delta.spacingCount)
            try statement.execute()
        }
        // One more meter reporting that day in its region (`v11-read-success-rollups`).
        let countReporting = try RawStatement(
            db,
            sql: """
                INSERT INTO region_day (day, region, reporting) SELECT ?1, region, 1 FROM meter WHERE id = ?2
                ON CONFLICT (day, region) DO UPDATE SET reporting = reporting + 1
                """)
        var started: [AggregateDelta.MeterDayKey] = []
        // The keys are sorted, not the (key, delta) pairs: a sort moves its elements n log n times.
        for key in days.keys.sorted(by: { ($0.day, $0.meterID) < ($1.day, $1.meterID) }) {
            let delta = days[key]!
            try bindAndRun(update, key, delta)
            if update.changes == 0 {
                try bindAndRun(insert, key, delta)
                started.append(.init(meterID: key.meterID, day: Day(key: key.day)))
                countReporting.bind(1, key.day)
                countReporting.bind(2, key.meterID)
                try countReporting.execute()
            }
        }
        return started
    }
}

/// One `pool.write` transaction of the writer: statements compiled on first use, reused for the
/// rest of the batch.
final class SQLiteIngestTransaction: IngestTransaction {
    let db: Database
    private(set) var startedDays: [AggregateDelta.MeterDayKey] = []
    private var insertReadingStatement: RawStatement?
    private var insertFlagStatement: RawStatement?
    private var insertQuarantineStatement: RawStatement?

    init(_ db: Database) {
        self.db = db
    }

    func insertReading(meterID: Int64, _ stored: Reading, receivedMs: Int64, previousRowID: Int64, spanStartMs: Int64?) throws -> Int64 {
        if self.insertReadingStatement == nil {
            self.insertReadingStatement = try RawStatement(
                self.db,
                sql: """
                    INSERT INTO reading (meter_id, seq, ts_ms, received_ms, kwh, status, fault, voltage, prev_rowid,
                                         register_kwh, span_start_ms)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """)
        }
        let insertReading = self.insertReadingStatement!
        insertReading.bind(1, meterID)
        insertReading.bind(2, stored.seq)
        insertReading.bind(3, stored.timestampMs)
        insertReading.bind(4, receivedMs)
        insertReading.bind(5, stored.kwh)
        insertReading.bind(6, Int64(stored.status.rawValue))
        insertReading.bind(7, stored.fault)
        insertReading.bind(8, stored.voltage)
        insertReading.bind(9, previousRowID)  // the meter's chain of readings
        insertReading.bind(10, stored.registerKwh)
        if let spanStartMs { insertReading.bind(11, spanStartMs) } else { insertReading.bind(11, nil as String?) }
        try insertReading.execute()
        return self.db.lastInsertedRowID
    }

    func insertFlag(meterID: Int64, reading: Reading, month: Int, rule: ValidationRule, detail: String) throws {
        // Compiled on the first flag only: most batches raise none.
        if self.insertFlagStatement == nil {
            self.insertFlagStatement = try RawStatement(
                self.db, sql: "INSERT INTO validation_flag (meter_id, seq, ts_ms, month, rule, detail) VALUES (?, ?, ?, ?, ?, ?)")
        }
        let statement = self.insertFlagStatement!
        statement.bind(1, meterID)
        statement.bind(2, reading.seq)
        statement.bind(3, reading.timestampMs)
        statement.bind(4, month)
        statement.bind(5, rule.rawValue)
        statement.bind(6, detail)
        try statement.execute()
    }

    func quarantine(_ line: QuarantinedLine) throws {
        if self.insertQuarantineStatement == nil {
            self.insertQuarantineStatement = try RawStatement(
                self.db,
                sql: """
                    INSERT INTO quarantine (received_ms, peer, line, code, detail, raw, peer_identity) VALUES (?, ?, ?, ?, ?, ?, ?)
                    """)
        }
        let insertQuarantine = self.insertQuarantineStatement!
        insertQuarantine.bind(1, line.receivedMs)
        insertQuarantine.bind(2, line.peer)
        insertQuarantine.bind(3, line.line)
        insertQuarantine.bind(4, line.rejection.code.rawValue)
        insertQuarantine.bind(5, line.rejection.detail)
        insertQuarantine.bind(6, bytes: line.raw)
        insertQuarantine.bind(7, line.peerIdentity)
        try insertQuarantine.execute()
    }

    func registerMeter(named name: String, region: String) throws -> Int64 {
        // Cached: a storm of new meters registers thousands in a row (3 % of the writer's time compiling it).
        try self.db.cachedStatement(sql: "INSERT INTO meter (name, region) VALUES (?, ?)").execute(arguments: [name, region])
        return self.db.lastInsertedRowID
    }

    /// Writes aggregates into `meter`, `meter_month`, `latency_month`, `meter_day` and the watermark.
    func writeAggregates(_ aggregates: BatchAggregates, regionNames: [String]) throws {
        let updateMeter = try RawStatement(
            self.db,
            sql: """
                UPDATE meter SET hwm_seq = ?, first_seen_ms = COALESCE(first_seen_ms, ?), last_received_ms = ?,
                    last_ts_ms = COALESCE(?, last_ts_ms), last_status = COALESCE(?, last_status),
                    last_fault = CASE WHEN ? THEN ? ELSE last_fault END,
                    readings_total = readings_total + ?, faults_total = faults_total + ?,
                    duplicates_total = duplicates_total + ?, inactive_since_ms = NULL,
                    last_reading_rowid = COALESCE(?, last_reading_rowid),
                    last_register_kwh = CASE WHEN ?6 THEN ?13 ELSE last_register_kwh END,
                    last_register_ts_ms = CASE WHEN ?6 THEN ?14 ELSE last_register_ts_ms END,
                    zero_since_ms = CASE WHEN ?6 THEN ?15 ELSE zero_since_ms END,
                    zero_flagged = CASE WHEN ?6 THEN ?16 ELSE zero_flagged END,
                    first_reading_day = CASE WHEN ?17 IS NULL THEN first_reading_day ELSE min(COALESCE(first_reading_day, ?17), ?17) END
                WHERE id = ?12
                """)
        // In id order: neighbouring rows share pages, and the B-tree is walked forwards.
        // The ids are sorted, not the (id, delta) pairs: a MeterDelta is ~180 bytes, and a sort moves
        // its elements n log n times (4.6 % of the writer's instructions per reading at 10,000 meters).
        for id in aggregates.meters.keys.sorted() {
            let delta = aggregates.meters[id]!
            updateMeter.bind(1, delta.highWaterMark)
            updateMeter.bind(2, delta.firstSeenMs)
            updateMeter.bind(3, delta.lastReceivedMs)
            if let ts = delta.lastTimestampMs { updateMeter.bind(4, ts) } else { updateMeter.bind(4, nil as String?) }
            if let status = delta.lastStatus { updateMeter.bind(5, Int64(status.rawValue)) } else { updateMeter.bind(5, nil as String?) }
            updateMeter.bind(6, delta.readings > 0 ? 1 : 0)
            updateMeter.bind(7, delta.lastFault)
            updateMeter.bind(8, delta.readings)
            updateMeter.bind(9, delta.faults)
            updateMeter.bind(10, delta.duplicates)
            if let rowID = delta.lastReadingRowID { updateMeter.bind(11, rowID) } else { updateMeter.bind(11, nil as String?) }
            updateMeter.bind(12, id)
            updateMeter.bind(13, delta.lastRegister)
            if let ts = delta.lastRegisterTimestampMs { updateMeter.bind(14, ts) } else { updateMeter.bind(14, nil as String?) }
            if let since = delta.zeroRun.sinceMs { updateMeter.bind(15, since) } else { updateMeter.bind(15, nil as String?) }
            updateMeter.bind(16, delta.zeroRun.flagged ? 1 : 0)
            if let day = delta.firstDay { updateMeter.bind(17, day) } else { updateMeter.bind(17, nil as String?) }
            try updateMeter.execute()
        }

        // An UPDATE first, and an INSERT only for a meter's first reading of a month: in steady
        // state the row exists, and an UPDATE finds it in one B-tree seek where an upsert
        // (INSERT … ON CONFLICT DO UPDATE) costs more (callgrind on meter-bench).
        let updateMonth = try RawStatement(
            self.db,
            sql: """
                UPDATE meter_month SET
                    kwh = kwh + ?3, revenue = revenue + ?4, readings = readings + ?5, faults = faults + ?6,
                    good = good + ?7, fair = fair + ?8, poor = poor + ?9,
                    latency_sum_ms = latency_sum_ms + ?10, latency_count = latency_count + ?11,
                    latency_max_ms = max(latency_max_ms, ?12), estimated = estimated + ?13, estimated_kwh = estimated_kwh + ?14,
                    spacing_sum_ms = spacing_sum_ms + ?15, spacing_count = spacing_count + ?16
                WHERE meter_id = ?1 AND month = ?2
                """)
        let insertMonth = try RawStatement(
            self.db,
            sql: """
                INSERT INTO meter_month (meter_id, month, kwh, revenue, readings, faults, good, fair, poor,
                                         latency_sum_ms, latency_count, latency_max_ms, estimated, estimated_kwh,
                                         spacing_sum_ms, spacing_count)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
        // The days' spacings summed per meter-month: a reading's day and month come from the same
        // `ts`, so each day's month has its `meter_month` delta in the batch.
        var spacings: [MonthKey: (sumMs: Int64, count: Int)] = [:]
        for (key, day) in aggregates.days where day.spacingCount > 0 {
            let month = MonthKey(meterID: key.meterID, month: key.day / 100)
            spacings[month, default: (0, 0)].sumMs += day.spacingSumMs
            spacings[month, default: (0, 0)].count += day.spacingCount
        }
        func bindAndRun(_ statement: RawStatement, _ key: MonthKey, _ delta: AggregateDelta.Month) throws {
            statement.bind(1, key.meterID)
            statement.bind(2, key.month)
            statement.bind(3, delta.kwh)
            statement.bind(4, delta.revenue)
            statement.bind(5, delta.readings)
            statement.bind(6, delta.faults)
            statement.bind(7, delta.good)
            statement.bind(8, delta.fair)
            statement.bind(9, delta.poor)
            statement.bind(10, delta.latencySumMs)
            statement.bind(11, delta.readings)
            statement.bind(12, delta.latencyMaxMs)
            statement.bind(13, delta.estimated)
            statement.bind(14, delta.estimatedKwh)
            let spacing = spacings[key] ?? (0, 0)
            statement.bind(15, spacing.sumMs)
            statement.bind(16, spacing.count)
            try statement.execute()
        }
        for key in aggregates.months.keys.sorted(by: { ($0.meterID, $0.month) < ($1.meterID, $1.month) }) {
            let delta = aggregates.months[key]!
            try bindAndRun(updateMonth, key, delta)
            if updateMonth.changes == 0 { try bindAndRun(insertMonth, key, delta) }
        }
        if !aggregates.latencies.isEmpty {
            let upsert = try RawStatement(
                self.db,
                sql: """
                    INSERT INTO latency_month (month, region, bucket, count, sum_ms) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (month, region, bucket) DO UPDATE SET
                        count = latency_month.count + excluded.count, sum_ms = latency_month.sum_ms + excluded.sum_ms
                    """)
            for (key, latency) in aggregates.latencies {
                upsert.bind(1, key.month)
                upsert.bind(2, regionNames[key.region])
                upsert.bind(3, key.bucket)
                upsert.bind(4, latency.count)
                upsert.bind(5, latency.sumMs)
                try upsert.execute()
            }
        }
        self.startedDays = try SQLiteIngestBackend.writeDays(aggregates.days, db: self.db)
        if let high = aggregates.highRowID {
            // A cached statement: `db.execute(sql:)` would compile it again at every commit.
            let updateWatermark = try RawStatement(self.db, sql: "UPDATE ingest_watermark SET reading_rowid = ? WHERE id = 1")
            updateWatermark.bind(1, high)
            try updateWatermark.execute()
        }
    }
}
