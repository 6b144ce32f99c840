import GRDB

/// How far a meter's recent readings may be looked for in the append-only `reading` table, which
/// has no per-meter index (one would dirty a page per meter per commit on the ingest path).
package struct ReadingScanLimits: Sendable {
    /// Rows read per step, newest first.
    package var chunkRows: Int64 = 65_536
    /// Most rows read for one request.
    package var maximumRows: Int64 = 1_048_576
    /// Stop starting new steps after this long.
    package var budget: Duration = .milliseconds(60)

    package init(chunkRows: Int64 = 65_536, maximumRows: Int64 = 1_048_576, budget: Duration = .milliseconds(60)) {
        self.chunkRows = chunkRows
        self.maximumRows = maximumRows
        self.budget = budget
    }
}

extension SQLiteMeterStore {
    /// `reading` is append-only with rowids in commit order, so this walks back from the meter's
    /// last reading in rowid windows (a binary search on `received_ms` finds where that is), until
    /// it has `limit` readings, reaches the meter's first reading, or has read
    /// ``ReadingScanLimits/maximumRows`` rows; `complete` says whether it saw all of them.
    package func recentReadings(meter name: String, limit: Int) async throws -> RecentReadings? {
        let limits = self.readingScan
        return try await self.database.pool.read { db -> RecentReadings? in
            guard let meter = try Row.fetchOne(db, sql: """
                SELECT id, first_seen_ms, last_received_ms, readings_total FROM meter WHERE name = ?
                """, arguments: [name]) else { return nil }
            let meterID: Int64 = meter["id"]
            let firstSeen: Int64? = meter["first_seen_ms"]
            let lastReceived: Int64? = meter["last_received_ms"]
            var readings: [StoredReading] = []
            var scanned: Int64 = 0
            var complete = true
            var oldestScannedMs: Int64?
            if let lastReceived, (meter["readings_total"] as Int64) > 0, limit > 0 {
                // Receive times grow with rowid (one writer, commit order) up to the few milliseconds
                // between event loops; the slack covers that.
                let slackMs: Int64 = 5_000
                var high = try Self.lastRowid(db, receivedAtOrBefore: lastReceived + slackMs)
                let floorMs = (firstSeen ?? 0) - slackMs
                let started = ContinuousClock.now
                let statement = try db.makeStatement(sql: """
                    SELECT seq, ts_ms, received_ms, kwh, status, fault, voltage FROM reading
                    WHERE rowid > ? AND rowid <= ? AND meter_id = ? ORDER BY rowid DESC LIMIT ?
                    """)
                complete = false
                while high > 0 {
                    if readings.count >= limit { complete = true; break }
                    if scanned >= limits.maximumRows || ContinuousClock.now - started > limits.budget { break }
                    let low = max(0, high - limits.chunkRows)
                    for row in try Row.fetchAll(statement, arguments: [low, high, meterID, limit - readings.count]) {
                        let status: Int64 = row["status"]
                        readings.append(StoredReading(seq: row["seq"], timestampMs: row["ts_ms"], receivedMs: row["received_ms"], kwh: row["kwh"],
                                                      status: MeterHealth(rawValue: UInt8(clamping: status)) ?? .good, fault: row["fault"],
                                                      voltage: row["voltage"]))
                    }
                    scanned += high - low
                    high = low
                    let oldest = try Int64.fetchOne(db, sql: "SELECT received_ms FROM reading WHERE rowid > ? ORDER BY rowid LIMIT 1",
                                                    arguments: [low])
                    oldestScannedMs = oldest
                    if high == 0 || (oldest ?? 0) < floorMs { complete = true; break }
                }
            }
            return RecentReadings(readings: readings, complete: complete, scannedRows: scanned,
                                  scannedSinceMs: complete ? nil : oldestScannedMs)
        }
    }

    /// The largest rowid whose reading was received at or before `ms` (0 if none): a binary search
    /// over rowids, a few dozen primary-key lookups.
    static func lastRowid(_ db: Database, receivedAtOrBefore ms: Int64) throws -> Int64 {
        guard let maximum = try Int64.fetchOne(db, sql: "SELECT MAX(rowid) FROM reading") else { return 0 }
        let probe = try db.makeStatement(sql: "SELECT rowid, received_ms FROM reading WHERE rowid >= ? ORDER BY rowid LIMIT 1")
        if let last = try Row.fetchOne(probe, arguments: [maximum]), (last["received_ms"] as Int64) <= ms { return maximum }
        var low: Int64 = 0  // every row up to here was received at or before ms
        var high = maximum  // the row here (or the next one after it) was received after ms
        while high - low > 1 {
            let middle = low + (high - low) / 2
            guard let row = try Row.fetchOne(probe, arguments: [middle]) else { high = middle; continue }
            let rowid: Int64 = row["rowid"]
            if rowid < high && (row["received_ms"] as Int64) <= ms { low = rowid } else { high = middle }
        }
        return low
    }
}
