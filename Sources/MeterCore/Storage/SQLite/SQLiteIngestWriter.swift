import Foundation
import GRDB
import Logging

/// Applies batches of submissions to the database in one transaction each: readings, per-meter
/// state, monthly aggregates and quarantined lines commit together or not at all.
///
/// Owned by the single writer thread; not thread-safe. The per-meter sequence high-water mark
/// lives in `meter.hwm_seq`, so duplicate detection survives restarts, and a cache of it here
/// spares a lookup per reading.
///
/// Aggregates may be deferred (``commit(_:deferAggregates:)``): the readings commit at once, while
/// the per-meter state, `meter_month` and `latency_month` wait in memory for the next
/// ``flushAggregates()`` (or the next commit that does not defer). At 10,000 meters a commit
/// otherwise dirties a page per meter and per meter-month, ~100 scattered pages every few ms.
/// Each flush records in `ingest_watermark` the highest reading rowid its aggregates cover, in the
/// same transaction; on open, readings past the watermark (those a crash left unaggregated) are
/// applied again, so the aggregates and the high-water marks always equal the stored readings.
/// The same holds for `meter_day` (readings per meter per day of `ts`, for the read success rate):
/// it is one more aggregate of the fold, written with the others.
///
/// Register readings (``MeteringRules``) get their consumption here, from the meter's cached
/// baseline, before they are stored; the row keeps the derived `kwh`, the register and the start
/// of a gap's span, so the fold that recovery repeats needs nothing but the row. Validation flags
/// are inserted with their reading, never deferred.
package final class IngestWriter: MeterStoreWriter {
    struct MeterState {
        var id: Int64
        var highWaterMark: Int64
        var rate: Double
        /// Index into `regionNames`: the latency rollup keys on it once per stored reading, and
        /// hashing an integer is several times cheaper than a string.
        var region: Int
        /// Rowid of the meter's newest reading, 0 for none: the next one's `prev_rowid`.
        var lastReadingRowID: Int64 = 0
        /// `ts` of the meter's newest reading, for the `clock_backwards` rule.
        var lastTimestampMs: Int64?
        /// The register of the meter's newest reading, `nil` when that was a `kwh` reading (or none):
        /// the baseline of its next register reading, and when it was read.
        var lastRegister: Double?
        var lastRegisterTimestampMs: Int64?
        /// The meter's current run of readings without consumption (the `zero_run` rule).
        var zeroRun = MeteringRules.ZeroRun()
        /// The commit that last saved this state for its rollback (see ``Rollback``).
        var savedBy = 0
    }

    /// What a failed commit must undo in the meter cache: states as they were before it, and
    /// meters it registered. A generation stamp on each state, rather than a dictionary keyed by
    /// meter id, spares a string hash per reading.
    private struct Rollback {
        var generation: Int
        var saved: [(slot: Int, state: MeterState)] = []
        var firstRegisteredSlot: Int
    }

    package let database: MeterDatabase
    private var calendar: MonthCalendar
    private let tariff: Tariff
    private let unknownMeters: UnknownMeterPolicy
    private let metering: MeteringRules
    /// The meter cache: a slot per meter in `meterStates`, found by name once per reading.
    private var meterSlots: [String: Int] = [:]
    private var meterStates: [MeterState] = []
    private var meterNames: [String] = []
    /// Per slot, the consumption of the meter's recent regular readings (the `spike` rule's trailing
    /// window), oldest first. Kept apart from ``MeterState`` so appending never copies it; not
    /// persisted (after a start the rule waits for ``MeteringRules/spikeMinimumWindow`` readings),
    /// and a failed commit may leave its readings in it.
    private var trailing: [[Float]] = []
    private var commitGeneration = 0
    /// Learns what each write of aggregates changed (the KPI rollups).
    package var commitListener: (any CommitListener)?
    /// Region names of the meters' `region` indexes.
    private var regionNames: [String] = []
    private var regionIndex: [String: Int] = [:]

    /// Aggregates of committed readings not yet written (see ``commit(_:deferAggregates:)``).
    private var pending = BatchAggregates()

    package init(
        database: MeterDatabase, calendar: MonthCalendar, tariff: Tariff, unknownMeters: UnknownMeterPolicy,
        metering: MeteringRules = MeteringRules()
    ) throws {
        self.database = database
        self.calendar = calendar
        self.tariff = tariff
        self.unknownMeters = unknownMeters
        self.metering = metering
        try self.reloadMeters()
        try self.backfillReadDays()
        try self.recoverAggregates()
    }

    /// Whether committed readings wait for ``flushAggregates()``.
    package var hasPendingAggregates: Bool { !self.pending.meters.isEmpty }

    /// Number of meters the writer knows.
    package var meterCount: Int { self.meterStates.count }

    /// Reloads the meter cache; needed after meters or customers change outside the writer.
    package func reloadMeters() throws {
        // The cached high-water marks are ahead of the table while aggregates are pending.
        try self.flushAggregates()
        let rows = try self.database.pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT id, name, hwm_seq, region, COALESCE(last_reading_rowid, 0) AS last_reading_rowid, last_ts_ms,
                           last_register_kwh, last_register_ts_ms, zero_since_ms, zero_flagged
                    FROM meter
                    """)
        }
        var slots: [String: Int] = [:]
        var states: [MeterState] = []
        var names: [String] = []
        slots.reserveCapacity(rows.count)
        states.reserveCapacity(rows.count)
        names.reserveCapacity(rows.count)
        for row in rows {
            let region: String = row["region"]
            let name: String = row["name"]
            slots[name] = states.count
            states.append(
                MeterState(
                    id: row["id"], highWaterMark: row["hwm_seq"], rate: self.tariff.rate(forRegion: region),
                    region: self.index(ofRegion: region), lastReadingRowID: row["last_reading_rowid"],
                    lastTimestampMs: row["last_ts_ms"], lastRegister: row["last_register_kwh"],
                    lastRegisterTimestampMs: row["last_register_ts_ms"],
                    zeroRun: MeteringRules.ZeroRun(sinceMs: row["zero_since_ms"], flagged: row["zero_flagged"])))
            names.append(name)
        }
        // Kept across a reload for the meters still known: the window is in memory only.
        var trailing = [[Float]](repeating: [], count: states.count)
        for (name, slot) in slots {
            if let old = self.meterSlots[name], old < self.trailing.count { trailing[slot] = self.trailing[old] }
        }
        self.trailing = trailing
        self.meterSlots = slots
        self.meterStates = states
        self.meterNames = names
    }

    private func index(ofRegion region: String) -> Int {
        if let index = self.regionIndex[region] { return index }
        self.regionNames.append(region)
        self.regionIndex[region] = self.regionNames.count - 1
        return self.regionNames.count - 1
    }

    private struct MeterDelta {
        var highWaterMark: Int64
        var firstSeenMs: Int64
        var lastReceivedMs: Int64
        var lastTimestampMs: Int64?
        var lastStatus: MeterHealth?
        var lastFault: String?
        var lastReadingRowID: Int64?
        var lastRegister: Double?
        var lastRegisterTimestampMs: Int64?
        var zeroRun = MeteringRules.ZeroRun()
        var readings = 0
        var faults = 0
        var duplicates = 0
        /// The earliest day (``Day/key``) a reading of this run fell on: the meter row keeps the earliest of all.
        var firstDay: Int?
        /// The meter's name, set with its first reading of the run (for ``AggregateDelta/MeterReads``).
        var name = ""

        mutating func recordDuplicate(receivedMs: Int64) {
            self.lastReceivedMs = receivedMs
            self.duplicates += 1
        }

        /// - Parameters:
        ///   - day: the ``Day/key`` of the reading's `ts`.
        ///   - name: the meter's name, asked for with its first reading of the run only.
        mutating func record(
            _ reading: Reading, receivedMs: Int64, highWaterMark: Int64, rowID: Int64, zeroRun: MeteringRules.ZeroRun, day: Int,
            name: () -> String
        ) {
            if let first = self.firstDay {
                self.firstDay = min(first, day)
            } else {
                self.firstDay = day
                self.name = name()
            }
            self.zeroRun = zeroRun
            self.lastReceivedMs = receivedMs
            self.lastReadingRowID = rowID
            self.lastRegister = reading.registerKwh
            self.lastRegisterTimestampMs = reading.registerKwh == nil ? nil : reading.timestampMs
            self.highWaterMark = highWaterMark
            self.lastTimestampMs = reading.timestampMs
            self.lastStatus = reading.status
            self.lastFault = reading.fault
            self.readings += 1
            if reading.fault != nil { self.faults += 1 }
        }

        /// This delta followed by `later`, as one.
        mutating func merge(_ later: MeterDelta) {
            self.highWaterMark = later.highWaterMark
            self.lastReceivedMs = later.lastReceivedMs
            if later.readings > 0 {
                self.lastTimestampMs = later.lastTimestampMs
                self.lastStatus = later.lastStatus
                self.lastFault = later.lastFault
                self.lastReadingRowID = later.lastReadingRowID
                self.lastRegister = later.lastRegister
                self.lastRegisterTimestampMs = later.lastRegisterTimestampMs
                self.zeroRun = later.zeroRun
            }
            self.readings += later.readings
            self.faults += later.faults
            self.duplicates += later.duplicates
            if let day = later.firstDay { self.firstDay = min(self.firstDay ?? day, day) }
            if self.name.isEmpty { self.name = later.name }
        }
    }

    /// A meter's day: the `meter_day` row of the read success rate and interval completeness.
    private struct DayKey: Hashable {
        var day: Int
        var meterID: Int64
    }

    /// What a run of readings adds to a meter's day.
    private struct DayDelta {
        var readings = 0
        /// Spacings to the meter's previous reading (positive ones only), summed, and how many:
        /// the meter's observed interval that day is their mean.
        var spacingSumMs: Int64 = 0
        var spacingCount = 0

        mutating func add(timestampMs: Int64, previousMs: Int64?) {
            self.readings += 1
            if let previousMs, timestampMs > previousMs {
                self.spacingSumMs += timestampMs - previousMs
                self.spacingCount += 1
            }
        }

        mutating func merge(_ other: DayDelta) {
            self.readings += other.readings
            self.spacingSumMs += other.spacingSumMs
            self.spacingCount += other.spacingCount
        }
    }

    private struct MonthKey: Hashable {
        var meterID: Int64
        var month: Int
    }

    /// Live reading latencies by the month they were received in, the meter's region and a bucket.
    private struct LatencyKey: Hashable {
        var month: Int
        var region: Int
        var bucket: Int
    }

    /// The aggregates of a run of readings: one batch's, or all those pending.
    private struct BatchAggregates {
        var meters: [Int64: MeterDelta] = [:]
        var months: [MonthKey: AggregateDelta.Month] = [:]
        var latencies: [LatencyKey: (count: Int, sumMs: Int64)] = [:]
        var days: [DayKey: DayDelta] = [:]
        /// Highest rowid of a reading these aggregates cover.
        var highRowID: Int64?

        /// Adds one stored reading's latency, by the month it was received.
        mutating func addLatency(_ latencyMs: Int64, receivedMs: Int64, region: Int, calendar: inout MonthCalendar) {
            let key = LatencyKey(
                month: calendar.month(ofMilliseconds: receivedMs).key, region: region,
                bucket: LatencyBuckets.bucket(ofMilliseconds: latencyMs))
            self.latencies[key, default: (0, 0)].count += 1
            self.latencies[key, default: (0, 0)].sumMs += latencyMs
        }

        /// These aggregates followed by `later`, as one.
        mutating func absorb(_ later: BatchAggregates) {
            for (id, delta) in later.meters {
                if var earlier = self.meters[id] {
                    earlier.merge(delta)
                    self.meters[id] = earlier
                } else {
                    self.meters[id] = delta
                }
            }
            for (key, delta) in later.months {
                self.months[key, default: AggregateDelta.Month(meterID: key.meterID, month: key.month)].merge(delta)
            }
            for (key, latency) in later.latencies {
                self.latencies[key, default: (0, 0)].count += latency.count
                self.latencies[key, default: (0, 0)].sumMs += latency.sumMs
            }
            for (key, day) in later.days {
                self.days[key, default: DayDelta()].merge(day)
            }
            if let high = later.highRowID { self.highRowID = high }
        }
    }

    /// Commits a batch. On error nothing of it is applied, in the database or in the cache.
    ///
    /// With `deferAggregates` the batch's readings commit now and its aggregates join the pending
    /// ones; without it the pending aggregates and the batch's are written in this transaction.
    package func commit(_ submissions: [IngestSubmission], deferAggregates: Bool = false) throws -> CommitResult {
        self.commitGeneration += 1
        let started = ContinuousClock.now
        var rollback = Rollback(generation: self.commitGeneration, firstRegisteredSlot: self.meterStates.count)
        do {
            let (result, batch, written) = try self.database.pool.write { db -> (CommitResult, BatchAggregates, AggregateDelta?) in
                var batch = BatchAggregates()
                let result = try self.apply(submissions, db: db, rollback: &rollback, into: &batch)
                guard !deferAggregates else { return (result, batch, nil) }
                // Usually nothing is pending: the batch is written as it is, not copied.
                var merged = batch
                if self.hasPendingAggregates {
                    merged = self.pending
                    merged.absorb(batch)
                }
                return (result, batch, try self.write(&merged, db: db))
            }
            self.commitListener?.didStore(result, duration: ContinuousClock.now - started)
            if let written {
                self.pending = BatchAggregates()
                self.commitListener?.didCommit(written)
            } else {
                self.pending.absorb(batch)
            }
            return result
        } catch {
            for (slot, state) in rollback.saved.reversed() where slot < rollback.firstRegisteredSlot {
                self.meterStates[slot] = state
            }
            for name in self.meterNames[rollback.firstRegisteredSlot...] { self.meterSlots[name] = nil }
            self.meterStates.removeSubrange(rollback.firstRegisteredSlot...)
            self.trailing.removeSubrange(rollback.firstRegisteredSlot...)
            self.meterNames.removeSubrange(rollback.firstRegisteredSlot...)
            throw error
        }
    }

    /// Writes the pending aggregates (and the watermark of the readings they cover) in one transaction.
    package func flushAggregates() throws {
        guard self.hasPendingAggregates else { return }
        var pending = self.pending
        let written = try self.database.pool.write { db in try self.write(&pending, db: db) }
        self.pending = BatchAggregates()
        self.commitListener?.didCommit(written)
    }

    private func apply(
        _ submissions: [IngestSubmission], db: Database, rollback: inout Rollback,
        into batch: inout BatchAggregates
    ) throws -> CommitResult {
        var result = CommitResult()
        result.outcomes.reserveCapacity(submissions.count)
        let insertReading = try RawStatement(
            db,
            sql: """
                INSERT INTO reading (meter_id, seq, ts_ms, received_ms, kwh, status, fault, voltage, prev_rowid,
                                     register_kwh, span_start_ms)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
        // Compiled on the first flag only: most batches raise none.
        var insertFlag: RawStatement?
        func flag(_ rule: ValidationRule, _ detail: String, meterID: Int64, reading: Reading) throws {
            if insertFlag == nil {
                insertFlag = try RawStatement(
                    db, sql: "INSERT INTO validation_flag (meter_id, seq, ts_ms, month, rule, detail) VALUES (?, ?, ?, ?, ?, ?)")
            }
            let statement = insertFlag!
            statement.bind(1, meterID)
            statement.bind(2, reading.seq)
            statement.bind(3, reading.timestampMs)
            statement.bind(4, self.calendar.month(ofMilliseconds: reading.timestampMs).key)
            statement.bind(5, rule.rawValue)
            statement.bind(6, detail)
            try statement.execute()
            result.flags += 1
        }
        let insertQuarantine = try RawStatement(
            db,
            sql: """
                INSERT INTO quarantine (received_ms, peer, line, code, detail, raw, peer_identity) VALUES (?, ?, ?, ?, ?, ?, ?)
                """)
        func quarantine(_ line: QuarantinedLine) throws {
            insertQuarantine.bind(1, line.receivedMs)
            insertQuarantine.bind(2, line.peer)
            insertQuarantine.bind(3, line.line)
            insertQuarantine.bind(4, line.rejection.code.rawValue)
            insertQuarantine.bind(5, line.rejection.detail)
            insertQuarantine.bind(6, bytes: line.raw)
            insertQuarantine.bind(7, line.peerIdentity)
            try insertQuarantine.execute()
            result.quarantined += 1
        }

        for submission in submissions {
            var outcome = SubmissionOutcome()
            var ackIndex: [String: Int] = [:]
            for item in submission.readings {
                let reading = item.reading
                let slot: Int
                if let known = self.meterSlots[reading.meter] {
                    slot = known
                    if self.meterStates[slot].savedBy != rollback.generation {
                        rollback.saved.append((slot, self.meterStates[slot]))
                        self.meterStates[slot].savedBy = rollback.generation
                    }
                } else {
                    guard self.unknownMeters == .register else {
                        let rejection = Rejection(.unknownMeter, "meter \(reading.meter) is not in the company data")
                        outcome.rejections.append((item.line, rejection))
                        try quarantine(
                            QuarantinedLine(
                                receivedMs: item.receivedMs, peer: submission.peer, line: item.line, rejection: rejection,
                                raw: item.bytes ?? Array(reading.line.utf8.dropLast()), peerIdentity: submission.peerIdentity))
                        result.rejected += 1
                        continue
                    }
                    slot = try self.register(reading.meter, db: db)
                }
                let state = self.meterStates[slot]
                if reading.seq <= state.highWaterMark {
                    batch.meters[
                        state.id,
                        default: MeterDelta(
                            highWaterMark: state.highWaterMark, firstSeenMs: item.receivedMs,
                            lastReceivedMs: item.receivedMs)
                    ].recordDuplicate(receivedMs: item.receivedMs)
                    result.duplicates += 1
                } else {
                    var stored = reading
                    var spanStartMs: Int64?
                    if let register = reading.registerKwh {
                        let step = self.metering.step(from: state.lastRegister, to: register)
                        stored.kwh = step.kwh
                        if case .reset(let wrapped) = step, let previous = state.lastRegister {
                            try flag(
                                .registerReset,
                                "register went down from \(previous) to \(register) kWh; a rollover would make \(wrapped) kWh, "
                                    + "more than max_kwh \(self.metering.maximumKwh): new baseline",
                                meterID: state.id, reading: reading)
                        }
                        // A gap: its consumption is spread over the months it spans (``fold``).
                        if stored.kwh > 0, let previousMs = state.lastRegisterTimestampMs,
                            reading.timestampMs - previousMs > self.metering.expectedIntervalMs
                        {
                            spanStartMs = previousMs
                        }
                    }
                    if let previousMs = state.lastTimestampMs, reading.timestampMs < previousMs {
                        try flag(
                            .clockBackwards,
                            "ts \(RFC3339.format(millisecondsSinceEpoch: reading.timestampMs)) is before the previous reading's "
                                + RFC3339.format(millisecondsSinceEpoch: previousMs),
                            meterID: state.id, reading: reading)
                    }
                    if let volts = reading.voltage, self.metering.isVoltageOutOfRange(volts) {
                        try flag(
                            .voltage, "\(volts) V is outside \(self.metering.voltageMinimum)–\(self.metering.voltageMaximum) V",
                            meterID: state.id, reading: reading)
                    }
                    let consumption = self.knownConsumption(stored, before: state)
                    if let consumption, self.isRegular(stored, after: state),
                        self.metering.isSpike(consumption, trailing: self.trailing[slot])
                    {
                        try flag(
                            .spike,
                            "\(consumption) kWh is more than \(self.metering.spikeFactor) times the meter's trailing median",
                            meterID: state.id, reading: reading)
                    }
                    var zeroRun = state.zeroRun
                    if self.metering.advance(
                        &zeroRun, consumption: consumption, previousMs: state.lastTimestampMs, timestampMs: reading.timestampMs)
                    {
                        try flag(
                            .zeroRun,
                            "no consumption since \(RFC3339.format(millisecondsSinceEpoch: zeroRun.sinceMs ?? reading.timestampMs)) "
                                + "(\(self.metering.zeroDays) days or more) while reporting",
                            meterID: state.id, reading: reading)
                    }
                    insertReading.bind(1, state.id)
                    insertReading.bind(2, stored.seq)
                    insertReading.bind(3, stored.timestampMs)
                    insertReading.bind(4, item.receivedMs)
                    insertReading.bind(5, stored.kwh)
                    insertReading.bind(6, Int64(stored.status.rawValue))
                    insertReading.bind(7, stored.fault)
                    insertReading.bind(8, stored.voltage)
                    insertReading.bind(9, state.lastReadingRowID)  // the meter's chain of readings
                    insertReading.bind(10, stored.registerKwh)
                    if let spanStartMs { insertReading.bind(11, spanStartMs) } else { insertReading.bind(11, nil as String?) }
                    try insertReading.execute()
                    batch.highRowID = db.lastInsertedRowID
                    result.latenciesMs.append(
                        self.fold(
                            stored, spanStartMs: spanStartMs, receivedMs: item.receivedMs, rowID: db.lastInsertedRowID,
                            slot: slot, into: &batch))
                    result.stored += 1
                }
                outcome.ack(meter: reading.meter, seq: reading.seq, index: &ackIndex)
            }
            for line in submission.quarantined {
                try quarantine(line)
            }
            result.outcomes.append(outcome)
        }

        return result
    }

    /// Writes aggregates into `meter`, `meter_month`, `latency_month` and the watermark; returns
    /// them as the delta the commit listener learns of once the transaction commits.
    private func write(_ aggregates: inout BatchAggregates, db: Database) throws -> AggregateDelta {
        let updateMeter = try RawStatement(
            db,
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
        for (id, delta) in aggregates.meters.sorted(by: { $0.key < $1.key }) {
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
            db,
            sql: """
                UPDATE meter_month SET
                    kwh = kwh + ?3, revenue = revenue + ?4, readings = readings + ?5, faults = faults + ?6,
                    good = good + ?7, fair = fair + ?8, poor = poor + ?9,
                    latency_sum_ms = latency_sum_ms + ?10, latency_count = latency_count + ?11,
                    latency_max_ms = max(latency_max_ms, ?12), estimated = estimated + ?13, estimated_kwh = estimated_kwh + ?14
                WHERE meter_id = ?1 AND month = ?2
                """)
        let insertMonth = try RawStatement(
            db,
            sql: """
                INSERT INTO meter_month (meter_id, month, kwh, revenue, readings, faults, good, fair, poor,
                                         latency_sum_ms, latency_count, latency_max_ms, estimated, estimated_kwh)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
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
            try statement.execute()
        }
        for (key, delta) in aggregates.months.sorted(by: { ($0.key.meterID, $0.key.month) < ($1.key.meterID, $1.key.month) }) {
            try bindAndRun(updateMonth, key, delta)
            if updateMonth.changes == 0 { try bindAndRun(insertMonth, key, delta) }
        }
        if !aggregates.latencies.isEmpty {
            let upsert = try RawStatement(
                db,
                sql: """
                    INSERT INTO latency_month (month, region, bucket, count, sum_ms) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (month, region, bucket) DO UPDATE SET
                        count = latency_month.count + excluded.count, sum_ms = latency_month.sum_ms + excluded.sum_ms
                    """)
            for (key, latency) in aggregates.latencies {
                upsert.bind(1, key.month)
                upsert.bind(2, self.regionNames[key.region])
                upsert.bind(3, key.bucket)
                upsert.bind(4, latency.count)
                upsert.bind(5, latency.sumMs)
                try upsert.execute()
            }
        }
        let startedDays = try Self.writeDays(aggregates.days, db: db)
        if let high = aggregates.highRowID {
            // A cached statement: `db.execute(sql:)` would compile it again at every commit.
            let updateWatermark = try RawStatement(db, sql: "UPDATE ingest_watermark SET reading_rowid = ? WHERE id = 1")
            updateWatermark.bind(1, high)
            try updateWatermark.execute()
        }
        var delta = Self.delta(of: aggregates)
        delta.startedDays = startedDays
        return delta
    }

    /// What the commit listener learns of written aggregates.
    private static func delta(of aggregates: BatchAggregates) -> AggregateDelta {
        var delta = AggregateDelta(months: Array(aggregates.months.values), position: aggregates.highRowID)
        delta.days.reserveCapacity(aggregates.days.count)
        for (key, day) in aggregates.days {
            delta.days.append(
                ReadDayFacts.MeterDay(
                    meterID: key.meterID, day: Day(key: key.day), readings: day.readings, spacingSumMs: day.spacingSumMs,
                    spacingCount: day.spacingCount))
        }
        for (id, meter) in aggregates.meters {
            delta.firstReceivedMs = min(delta.firstReceivedMs ?? meter.firstSeenMs, meter.firstSeenMs)
            delta.lastReceivedMs = max(delta.lastReceivedMs ?? meter.lastReceivedMs, meter.lastReceivedMs)
            if let firstDay = meter.firstDay { delta.meterReads.append(.init(meterID: id, name: meter.name, firstDay: firstDay)) }
        }
        return delta
    }

    /// Adds days to `meter_day`. Keyed by day first: a commit's rows are today's, so they share a few
    /// neighbouring pages rather than one page per meter; an UPDATE first, an INSERT only for a
    /// meter's first reading of a day (as for `meter_month`). Returns the meter-days inserted: the
    /// ones that start reporting.
    @discardableResult
    private static func writeDays(_ days: [DayKey: DayDelta], db: Database) throws -> [AggregateDelta.MeterDayKey] {
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
        var started: [AggregateDelta.MeterDayKey] = []
        for (key, delta) in days.sorted(by: { ($0.key.day, $0.key.meterID) < ($1.key.day, $1.key.meterID) }) {
            try bindAndRun(update, key, delta)
            if update.changes == 0 {
                try bindAndRun(insert, key, delta)
                started.append(.init(meterID: key.meterID, day: Day(key: key.day)))
            }
        }
        return started
    }

    /// Fills `meter_day` and `meter.first_reading_day` from the readings stored before they existed
    /// (migration `v9-read-success` leaves a `read_days_backfill` setting): once, in one transaction,
    /// for the readings the aggregates already cover; ``recoverAggregates()`` folds those past them.
    private func backfillReadDays() throws {
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
                let day = self.calendar.day(ofMillisecondsCached: timestampMs).key
                days[DayKey(day: day, meterID: meterID), default: DayDelta()].add(timestampMs: timestampMs, previousMs: previous[meterID])
                previous[meterID] = timestampMs
                firstDays[meterID] = min(firstDays[meterID] ?? day, day)
            }
            try Self.writeDays(days, db: db)
            for (meterID, day) in firstDays {
                try db.execute(sql: "UPDATE meter SET first_reading_day = ? WHERE id = ?", arguments: [day, meterID])
            }
            try db.execute(sql: "DELETE FROM store_setting WHERE name = 'read_days_backfill'")
        }
    }

    /// Folds one stored reading into the meter's cached state and the aggregates: the one step a
    /// commit and crash recovery share, from what the reading's row holds (its `kwh` already
    /// derived for a register reading). Returns the reading's latency.
    ///
    /// - Parameter spanStartMs: for a gap, the start of the interval its `kwh` is spread over; the
    ///   reading itself (its count, status, latency) still lands in the month of its `ts`.
    private func fold(
        _ reading: Reading, spanStartMs: Int64?, receivedMs: Int64, rowID: Int64, slot: Int, into batch: inout BatchAggregates
    ) -> Int64 {
        var state = self.meterStates[slot]
        let previousMs = state.lastTimestampMs
        // The rules that span readings, advanced as ``apply`` judged them, from the state before this reading.
        let consumption = self.knownConsumption(reading, before: state)
        let regular = self.isRegular(reading, after: state)
        _ = self.metering.advance(&state.zeroRun, consumption: consumption, previousMs: state.lastTimestampMs, timestampMs: reading.timestampMs)
        // The highest seq stored, whatever order recovered rows come in.
        state.highWaterMark = max(state.highWaterMark, reading.seq)
        state.lastReadingRowID = max(state.lastReadingRowID, rowID)
        state.lastTimestampMs = reading.timestampMs
        // A kwh reading ends the register's chain: the next register starts a new baseline rather
        // than count again the energy the kwh readings between them carried.
        state.lastRegister = reading.registerKwh
        state.lastRegisterTimestampMs = reading.registerKwh == nil ? nil : reading.timestampMs
        self.meterStates[slot] = state
        if let consumption, regular {
            // In place: the window's buffer is this array's alone, so nothing is copied.
            if self.trailing[slot].capacity == 0 { self.trailing[slot].reserveCapacity(MeteringRules.spikeWindow) }  // one allocation
            if self.trailing[slot].count >= MeteringRules.spikeWindow { self.trailing[slot].removeFirst() }
            self.trailing[slot].append(Float(consumption))
        }
        // The meter's day and month, by `ts`: one calendar lookup gives both.
        let day = self.calendar.day(ofMillisecondsCached: reading.timestampMs)
        batch.meters[state.id, default: MeterDelta(highWaterMark: state.highWaterMark, firstSeenMs: receivedMs, lastReceivedMs: receivedMs)]
            .record(
                reading, receivedMs: receivedMs, highWaterMark: state.highWaterMark, rowID: state.lastReadingRowID,
                zeroRun: state.zeroRun, day: day.key, name: { self.meterNames[slot] })
        // Presence and spacing for the read success rate.
        batch.days[DayKey(day: day.key, meterID: state.id), default: DayDelta()].add(timestampMs: reading.timestampMs, previousMs: previousMs)
        let latency = max(0, receivedMs - reading.timestampMs)
        let month = day.month.key
        if let spanStartMs, spanStartMs < reading.timestampMs {
            var counted = reading
            counted.kwh = 0
            batch.months[MonthKey(meterID: state.id, month: month), default: AggregateDelta.Month(meterID: state.id, month: month)]
                .add(counted, rate: state.rate, latencyMs: latency)
            let shares = self.calendar.spread(reading.kwh, fromMilliseconds: spanStartMs, to: reading.timestampMs)
            for share in shares {
                let key = MonthKey(meterID: state.id, month: share.month.key)
                batch.months[key, default: AggregateDelta.Month(meterID: state.id, month: key.month)]
                    .addEnergy(share.kwh, rate: state.rate, estimated: shares.count > 1)
            }
        } else {
            batch.months[MonthKey(meterID: state.id, month: month), default: AggregateDelta.Month(meterID: state.id, month: month)]
                .add(reading, rate: state.rate, latencyMs: latency)
        }
        batch.addLatency(latency, receivedMs: receivedMs, region: state.region, calendar: &self.calendar)
        return latency
    }

    /// The consumption a stored reading tells of, `nil` when it tells none: a register reading that
    /// set a baseline or followed a reset. `reading.kwh` is already derived; `state` is the meter's before it.
    private func knownConsumption(_ reading: Reading, before state: MeterState) -> Double? {
        guard let register = reading.registerKwh else { return reading.kwh }
        switch self.metering.step(from: state.lastRegister, to: register) {
        case .baseline, .reset: return nil
        case .advance, .rollover: return reading.kwh
        }
    }

    /// Whether a reading came at most the expected interval after the meter's previous one (and
    /// after it): only such readings are judged, and remembered, by the spike rule.
    private func isRegular(_ reading: Reading, after state: MeterState) -> Bool {
        guard let previousMs = state.lastTimestampMs else { return false }
        return reading.timestampMs > previousMs && reading.timestampMs - previousMs <= self.metering.expectedIntervalMs
    }

    /// Applies readings a crash left past the watermark to the meters' state and the aggregates.
    private func recoverAggregates() throws {
        let watermark =
            try self.database.pool.read { db in
                try Int64.fetchOne(db, sql: "SELECT reading_rowid FROM ingest_watermark WHERE id = 1")
            } ?? 0
        let rows = try self.database.pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT rowid, meter_id, seq, ts_ms, received_ms, kwh, status, fault, register_kwh, span_start_ms
                    FROM reading WHERE rowid > ? ORDER BY rowid
                    """, arguments: [watermark])
        }
        guard !rows.isEmpty else { return }
        var slots: [Int64: Int] = [:]
        slots.reserveCapacity(self.meterStates.count)
        for (slot, state) in self.meterStates.enumerated() { slots[state.id] = slot }
        var batch = BatchAggregates()
        for row in rows {
            guard let slot = slots[row["meter_id"]] else { continue }
            let reading = Reading(
                meter: self.meterNames[slot], seq: row["seq"], timestampMs: row["ts_ms"], kwh: row["kwh"],
                status: MeterHealth(rawValue: UInt8(clamping: row["status"] as Int64)) ?? .good, fault: row["fault"],
                registerKwh: row["register_kwh"])
            _ = self.fold(
                reading, spanStartMs: row["span_start_ms"], receivedMs: row["received_ms"], rowID: row["rowid"], slot: slot, into: &batch)
            batch.highRowID = row["rowid"]
        }
        _ = try self.database.pool.write { db in try self.write(&batch, db: db) }
    }

    /// Registers a meter the company data does not know, unassigned, so its readings are kept.
    /// Returns the new meter's slot in the cache.
    private func register(_ name: String, db: Database) throws -> Int {
        try db.execute(sql: "INSERT INTO meter (name, region) VALUES (?, ?)", arguments: [name, Region.unassigned])
        let slot = self.meterStates.count
        self.meterStates.append(
            MeterState(
                id: db.lastInsertedRowID, highWaterMark: -1, rate: self.tariff.rate(forRegion: Region.unassigned),
                region: self.index(ofRegion: Region.unassigned), savedBy: self.commitGeneration))
        self.meterNames.append(name)
        self.trailing.append([])
        self.meterSlots[name] = slot
        return slot
    }
}
