import GRDB

/// Applies batches of submissions to the database in one transaction each: readings, per-meter
/// state, monthly aggregates and quarantined lines commit together or not at all.
///
/// Owned by the single writer thread; not thread-safe. The per-meter sequence high-water mark
/// lives in `meter.hwm_seq`, so duplicate detection survives restarts, and a cache of it here
/// spares a lookup per reading.
package final class IngestWriter {
    struct MeterState {
        var id: Int64
        var highWaterMark: Int64
        var rate: Double
    }

    /// What one commit did, for counters and acks.
    package struct CommitResult {
        /// One outcome per submission, in order.
        package var outcomes: [SubmissionOutcome] = []
        package var stored = 0
        package var duplicates = 0
        package var rejected = 0
        package var quarantined = 0
        /// Latencies (receive time − `ts`, ms, clamped at 0) of the readings stored.
        package var latenciesMs: [Int64] = []
        /// What the batch changed, when an ``observer`` is set.
        package var changes: IngestChanges?
    }

    package let database: MeterDatabase
    private var calendar: MonthCalendar
    private let tariff: Tariff
    private let unknownMeters: UnknownMeterPolicy
    private var meters: [String: MeterState] = [:]
    /// Keeps derived aggregates (KPI rollups) in step with each commit.
    package var observer: (any IngestObserver)?

    package init(database: MeterDatabase, calendar: MonthCalendar, tariff: Tariff, unknownMeters: UnknownMeterPolicy) throws {
        self.database = database
        self.calendar = calendar
        self.tariff = tariff
        self.unknownMeters = unknownMeters
        try self.reloadMeters()
    }

    /// Number of meters the writer knows.
    package var meterCount: Int { self.meters.count }

    /// Reloads the meter cache; needed after meters or customers change outside the writer.
    package func reloadMeters() throws {
        let rows = try self.database.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT id, name, hwm_seq, region FROM meter")
        }
        var meters: [String: MeterState] = [:]
        meters.reserveCapacity(rows.count)
        for row in rows {
            let region: String = row["region"]
            meters[row["name"]] = MeterState(id: row["id"], highWaterMark: row["hwm_seq"], rate: self.tariff.rate(forRegion: region))
        }
        self.meters = meters
    }

    private struct MeterDelta {
        var highWaterMark: Int64
        var firstSeenMs: Int64
        var lastReceivedMs: Int64
        var lastTimestampMs: Int64?
        var lastStatus: MeterHealth?
        var lastFault: String?
        var readings = 0
        var faults = 0
        var duplicates = 0
    }

    private struct MonthKey: Hashable {
        var meterID: Int64
        var month: Int
    }

    private struct MonthDelta {
        var kwh = 0.0
        var revenue = 0.0
        var readings = 0
        var faults = 0
        var health = (good: 0, fair: 0, poor: 0)
        var latencySumMs: Int64 = 0
        var latencyMaxMs: Int64 = 0
    }

    /// Commits a batch. On error nothing of it is applied, in the database or in the cache.
    package func commit(_ submissions: [IngestSubmission]) throws -> CommitResult {
        var original: [String: MeterState?] = [:]
        do {
            let result = try self.database.pool.write { db in
                try self.apply(submissions, db: db, original: &original)
            }
            if let changes = result.changes { self.observer?.didCommit(changes) }
            return result
        } catch {
            for (name, state) in original {
                self.meters[name] = state
            }
            throw error
        }
    }

    private func apply(_ submissions: [IngestSubmission], db: Database, original: inout [String: MeterState?]) throws -> CommitResult {
        var result = CommitResult()
        result.outcomes.reserveCapacity(submissions.count)
        var meterDeltas: [Int64: MeterDelta] = [:]
        var monthDeltas: [MonthKey: MonthDelta] = [:]
        var latencies: [IngestChanges.Latency] = []
        let observer = self.observer
        let insertReading = try RawStatement(db, sql: """
            INSERT INTO reading (meter_id, seq, ts_ms, received_ms, kwh, status, fault, voltage)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """)
        let insertQuarantine = try RawStatement(db, sql: """
            INSERT INTO quarantine (received_ms, peer, line, code, detail, raw) VALUES (?, ?, ?, ?, ?, ?)
            """)
        func quarantine(_ line: QuarantinedLine) throws {
            insertQuarantine.bind(1, line.receivedMs)
            insertQuarantine.bind(2, line.peer)
            insertQuarantine.bind(3, line.line)
            insertQuarantine.bind(4, line.rejection.code.rawValue)
            insertQuarantine.bind(5, line.rejection.detail)
            insertQuarantine.bind(6, bytes: line.raw)
            try insertQuarantine.execute()
            result.quarantined += 1
        }

        for submission in submissions {
            var outcome = SubmissionOutcome()
            var ackIndex: [String: Int] = [:]
            for item in submission.readings {
                let reading = item.reading
                var state: MeterState
                if let known = self.meters[reading.meter] {
                    state = known
                    if original[reading.meter] == nil { original[reading.meter] = .some(known) }
                } else {
                    guard self.unknownMeters == .register else {
                        let rejection = Rejection(.unknownMeter, "meter \(reading.meter) is not in the company data")
                        outcome.rejections.append((item.line, rejection))
                        try quarantine(QuarantinedLine(receivedMs: item.receivedMs, peer: submission.peer, line: item.line, rejection: rejection,
                                                       raw: Array(reading.line.utf8.dropLast())))
                        result.rejected += 1
                        continue
                    }
                    state = try self.register(reading.meter, db: db)
                    if original[reading.meter] == nil { original[reading.meter] = .some(nil) }
                }

                var meterDelta = meterDeltas[state.id] ?? MeterDelta(highWaterMark: state.highWaterMark, firstSeenMs: item.receivedMs,
                                                                     lastReceivedMs: item.receivedMs)
                meterDelta.lastReceivedMs = item.receivedMs
                if reading.seq <= state.highWaterMark {
                    meterDelta.duplicates += 1
                    result.duplicates += 1
                } else {
                    insertReading.bind(1, state.id)
                    insertReading.bind(2, reading.seq)
                    insertReading.bind(3, reading.timestampMs)
                    insertReading.bind(4, item.receivedMs)
                    insertReading.bind(5, reading.kwh)
                    insertReading.bind(6, Int64(reading.status.rawValue))
                    insertReading.bind(7, reading.fault)
                    insertReading.bind(8, reading.voltage)
                    try insertReading.execute()

                    state.highWaterMark = reading.seq
                    self.meters[reading.meter] = state
                    meterDelta.highWaterMark = reading.seq
                    meterDelta.lastTimestampMs = reading.timestampMs
                    meterDelta.lastStatus = reading.status
                    meterDelta.lastFault = reading.fault
                    meterDelta.readings += 1
                    if reading.fault != nil { meterDelta.faults += 1 }

                    let latency = max(0, item.receivedMs - reading.timestampMs)
                    let key = MonthKey(meterID: state.id, month: self.calendar.month(ofMilliseconds: reading.timestampMs).key)
                    var monthDelta = monthDeltas[key] ?? MonthDelta()
                    monthDelta.kwh += reading.kwh
                    monthDelta.revenue += reading.kwh * state.rate
                    monthDelta.readings += 1
                    if reading.fault != nil { monthDelta.faults += 1 }
                    switch reading.status {
                    case .good: monthDelta.health.good += 1
                    case .fair: monthDelta.health.fair += 1
                    case .poor: monthDelta.health.poor += 1
                    }
                    monthDelta.latencySumMs += latency
                    monthDelta.latencyMaxMs = max(monthDelta.latencyMaxMs, latency)
                    monthDeltas[key] = monthDelta
                    result.latenciesMs.append(latency)
                    if observer != nil { latencies.append(.init(meterID: state.id, receivedMs: item.receivedMs, latencyMs: latency)) }
                    result.stored += 1
                }
                meterDeltas[state.id] = meterDelta
                outcome.ack(meter: reading.meter, seq: reading.seq, index: &ackIndex)
            }
            for line in submission.quarantined {
                try quarantine(line)
            }
            result.outcomes.append(outcome)
        }

        let updateMeter = try RawStatement(db, sql: """
            UPDATE meter SET hwm_seq = ?, first_seen_ms = COALESCE(first_seen_ms, ?), last_received_ms = ?,
                last_ts_ms = COALESCE(?, last_ts_ms), last_status = COALESCE(?, last_status),
                last_fault = CASE WHEN ? THEN ? ELSE last_fault END,
                readings_total = readings_total + ?, faults_total = faults_total + ?,
                duplicates_total = duplicates_total + ?, inactive_since_ms = NULL
            WHERE id = ?
            """)
        for (id, delta) in meterDeltas {
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
            updateMeter.bind(11, id)
            try updateMeter.execute()
        }

        let upsertMonth = try RawStatement(db, sql: """
            INSERT INTO meter_month (meter_id, month, kwh, revenue, readings, faults, good, fair, poor,
                                     latency_sum_ms, latency_count, latency_max_ms)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (meter_id, month) DO UPDATE SET
                kwh = kwh + excluded.kwh, revenue = revenue + excluded.revenue,
                readings = readings + excluded.readings, faults = faults + excluded.faults,
                good = good + excluded.good, fair = fair + excluded.fair, poor = poor + excluded.poor,
                latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
                latency_count = latency_count + excluded.latency_count,
                latency_max_ms = max(latency_max_ms, excluded.latency_max_ms)
            """)
        for (key, delta) in monthDeltas {
            upsertMonth.bind(1, key.meterID)
            upsertMonth.bind(2, key.month)
            upsertMonth.bind(3, delta.kwh)
            upsertMonth.bind(4, delta.revenue)
            upsertMonth.bind(5, delta.readings)
            upsertMonth.bind(6, delta.faults)
            upsertMonth.bind(7, delta.health.good)
            upsertMonth.bind(8, delta.health.fair)
            upsertMonth.bind(9, delta.health.poor)
            upsertMonth.bind(10, delta.latencySumMs)
            upsertMonth.bind(11, delta.readings)
            upsertMonth.bind(12, delta.latencyMaxMs)
            try upsertMonth.execute()
        }
        if let observer {
            let changes = IngestChanges(months: monthDeltas.map { key, delta in
                .init(meterID: key.meterID, month: key.month, kwh: delta.kwh, revenue: delta.revenue, readings: delta.readings,
                      faults: delta.faults, good: delta.health.good, fair: delta.health.fair, poor: delta.health.poor)
            }, latencies: latencies)
            try observer.willCommit(changes, db: db)
            result.changes = changes
        }
        return result
    }

    /// Registers a meter the company data does not know, unassigned, so its readings are kept.
    private func register(_ name: String, db: Database) throws -> MeterState {
        try db.execute(sql: "INSERT INTO meter (name, region) VALUES (?, ?)", arguments: [name, Region.unassigned])
        let state = MeterState(id: db.lastInsertedRowID, highWaterMark: -1, rate: self.tariff.rate(forRegion: Region.unassigned))
        self.meters[name] = state
        return state
    }
}
