import GRDB

extension SQLiteMeterStore {
    /// A meter's most recent readings through its chain in `reading` (migration
    /// `v5-reading-by-meter`): each reading stores the rowid of its meter's previous one
    /// (`prev_rowid`, 0 for its first) and `meter.last_reading_rowid` points at the newest.
    ///
    /// `reading` stays append-only with no per-meter index: the writer already knows each meter's
    /// last rowid, so the chain costs one more integer per reading and one more column in the
    /// `meter` row it updates anyway, not a page per meter per commit as an index would (README,
    /// Performance). A request reads one row per reading returned, by rowid. `complete` is false
    /// only when the chain breaks off before `limit` readings or the meter's first one: a row the
    /// writer did not write (no `prev_rowid`), or a link that does not lead to an older row of the
    /// same meter.
    package func recentReadings(meter name: String, limit: Int) async throws -> RecentReadings? {
        try await self.database.pool.read { db -> RecentReadings? in
            guard
                let meter = try Row.fetchOne(
                    db, sql: "SELECT id, COALESCE(last_reading_rowid, 0) AS newest FROM meter WHERE name = ?",
                    arguments: [name])
            else { return nil }
            let meterID: Int64 = meter["id"]
            var recent = RecentReadings(readings: [], complete: true, scannedRows: 0, scannedSinceMs: nil)
            guard limit > 0 else { return recent }
            var next: Int64 = meter["newest"]
            // With deferred aggregates (aggregate_interval_ms) the meter row lags: readings past the
            // watermark are not in it yet, so its newest reading may be among them. Without deferral
            // the range is empty.
            if let newer = try Int64.fetchOne(
                db,
                sql: """
                    SELECT max(rowid) FROM reading
                    WHERE rowid > (SELECT reading_rowid FROM ingest_watermark WHERE id = 1) AND meter_id = ?
                    """, arguments: [meterID]), newer > next
            {
                next = newer
            }
            let statement = try db.cachedStatement(
                sql: """
                    SELECT meter_id, seq, ts_ms, received_ms, kwh, status, fault, voltage, prev_rowid, register_kwh FROM reading WHERE rowid = ?
                    """)
            recent.readings.reserveCapacity(min(limit, 1_000))
            while next > 0 && recent.readings.count < limit {
                guard let row = try Row.fetchOne(statement, arguments: [next]), row["meter_id"] as Int64 == meterID else {
                    recent.complete = false
                    break
                }
                recent.scannedRows += 1
                let status: Int64 = row["status"]
                recent.readings.append(
                    StoredReading(
                        seq: row["seq"], timestampMs: row["ts_ms"], receivedMs: row["received_ms"], kwh: row["kwh"],
                        status: MeterHealth(rawValue: UInt8(clamping: status)) ?? .good, fault: row["fault"],
                        voltage: row["voltage"], registerKwh: row["register_kwh"]))
                guard let previous: Int64 = row["prev_rowid"], previous < next else {
                    recent.complete = recent.readings.count >= limit
                    break
                }
                next = previous
            }
            if !recent.complete { recent.scannedSinceMs = recent.readings.last?.receivedMs }
            return recent
        }
    }
}
