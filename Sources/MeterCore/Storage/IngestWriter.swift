import Foundation
import Logging

/// Applies batches of submissions to the store in one transaction each: readings, per-meter
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
///
/// The writer decides what is stored and what the aggregates become, for every store alike; its
/// ``IngestBackend`` (SQLite, PostgreSQL) says it in SQL. Deferred aggregates and recovery are
/// SQLite's: PostgreSQL commits every batch's aggregates with it
/// (``IngestBackend/supportsDeferredAggregates``).
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

    /// The store's SQL side.
    let backend: any IngestBackend
    // `@exclusivity(unchecked)` on the three properties every reading updates: one thread at a time
    // uses the writer (``IngestPipeline`` holds it under a lock), no access to them lends them to
    // code that could reach them again, and the runtime's checks of them were 3.9 % of the writer's
    // instructions in `meter-bench`'s writer cases. Debug builds do not check them either.
    @exclusivity(unchecked) private var calendar: MonthCalendar
    private let tariff: Tariff
    private let unknownMeters: UnknownMeterPolicy
    private let metering: MeteringRules
    /// The meter cache: a slot per meter in `meterStates`, found by name once per reading.
    private var meterSlots: [String: Int] = [:]
    @exclusivity(unchecked) private var meterStates: [MeterState] = []
    private var meterNames: [String] = []
    /// Per slot, the consumption of the meter's recent regular readings (the `spike` rule's trailing
    /// window), oldest first. Kept apart from ``MeterState`` so appending never copies it; not
    /// persisted (after a start the rule waits for ``MeteringRules/spikeMinimumWindow`` readings),
    /// and a failed commit may leave its readings in it.
    @exclusivity(unchecked) private var trailing: [[Float]] = []
    private var commitGeneration = 0
    /// See ``takeContestedMeters()``.
    private var contestedMeters: Set<String> = []
    /// Commits left that first read their meters' rows again: set by a lost race, while another
    /// node stores some of the same meters (see ``commit(_:deferAggregates:)``).
    private var refreshingCommits = 0
    /// How many commits after a lost race read their meters first.
    static let commitsRefreshedAfterALostRace = 256
    /// Learns what each write of aggregates changed (the KPI rollups).
    package var commitListener: (any CommitListener)?
    /// Region names of the meters' `region` indexes.
    private var regionNames: [String] = []
    private var regionIndex: [String: Int] = [:]

    /// Aggregates of committed readings not yet written (see ``commit(_:deferAggregates:)``).
    private var pending = BatchAggregates()

    init(
        backend: any IngestBackend, calendar: MonthCalendar, tariff: Tariff, unknownMeters: UnknownMeterPolicy,
        metering: MeteringRules = MeteringRules()
    ) throws {
        self.backend = backend
        self.calendar = calendar
        self.tariff = tariff
        self.unknownMeters = unknownMeters
        self.metering = metering
        try self.reloadMeters()
        try backend.awaitWritable()
        try backend.backfillReadDays(calendar: &self.calendar)
        try self.recoverAggregates()
    }

    /// Whether committed readings wait for ``flushAggregates()``.
    package var hasPendingAggregates: Bool { !self.pending.meters.isEmpty }

    /// Number of meters the writer knows.
    package var meterCount: Int { self.meterStates.count }

    package func lostRace(_ error: any Error) -> Bool { self.backend.lostRace(error) }

    /// Reloads the meter cache; needed after meters or customers change outside the writer.
    package func reloadMeters() throws {
        // The cached high-water marks are ahead of the table while aggregates are pending.
        try self.flushAggregates()
        let rows = try self.backend.loadMeters()
        var slots: [String: Int] = [:]
        var states: [MeterState] = []
        var names: [String] = []
        slots.reserveCapacity(rows.count)
        states.reserveCapacity(rows.count)
        names.reserveCapacity(rows.count)
        for row in rows {
            slots[row.name] = states.count
            states.append(self.meterState(row))
            names.append(row.name)
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

    private func meterState(_ row: StoredMeterState) -> MeterState {
        MeterState(
            id: row.id, highWaterMark: row.highWaterMark, rate: self.tariff.rate(forRegion: row.region),
            region: self.index(ofRegion: row.region), lastReadingRowID: row.lastReadingRowID,
            lastTimestampMs: row.lastTimestampMs, lastRegister: row.lastRegister,
            lastRegisterTimestampMs: row.lastRegisterTimestampMs, zeroRun: row.zeroRun)
    }

    /// After a lost race: reloads only the batch's meters (a whole-fleet reload made the window for
    /// the next race longer the larger the fleet) and returns those another writer moved on, whose
    /// high-water marks differ from what the cache held, or that it did not hold.
    private func reloadMeters(of submissions: [IngestSubmission]) throws -> Set<String> {
        var names = Set<String>()
        for submission in submissions {
            for item in submission.readings { names.insert(item.reading.meter) }
        }
        return try self.reloadMeters(named: names).moved
    }

    /// Reads the contested meters' rows again between commits and returns their high-water marks:
    /// whatever the other node committed of their readings is a duplicate here from now on, acked
    /// without a race. Empty while aggregates are pending (the cached marks are then ahead of the
    /// table, and a reload would move them back).
    package func refreshMeters(named names: Set<String>) throws -> [String: Int64] {
        guard !names.isEmpty, !self.hasPendingAggregates else { return [:] }
        return try self.reloadMeters(named: names).marks
    }

    private func reloadMeters(named names: Set<String>) throws -> (moved: Set<String>, marks: [String: Int64]) {
        var moved = Set<String>()
        var marks: [String: Int64] = [:]
        for row in try self.backend.loadMeters(named: Array(names)) {
            marks[row.name] = row.highWaterMark
            if let slot = self.meterSlots[row.name] {
                if self.meterStates[slot].highWaterMark != row.highWaterMark { moved.insert(row.name) }
                self.meterStates[slot] = self.meterState(row)
            } else {
                if row.highWaterMark >= 0 { moved.insert(row.name) }
                self.meterSlots[row.name] = self.meterStates.count
                self.meterStates.append(self.meterState(row))
                self.meterNames.append(row.name)
                self.trailing.append([])
            }
        }
        return (moved, marks)
    }

    /// The meters another writer moved on in the last lost race, once; the pipeline holds their
    /// submissions back for a commit so that the rest of the batch is not held hostage by them.
    package func takeContestedMeters() -> Set<String> {
        defer { self.contestedMeters = [] }
        return self.contestedMeters
    }

    private func index(ofRegion region: String) -> Int {
        if let index = self.regionIndex[region] { return index }
        self.regionNames.append(region)
        self.regionIndex[region] = self.regionNames.count - 1
        return self.regionNames.count - 1
    }

    /// Commits a batch. On error nothing of it is applied, in the database or in the cache.
    ///
    /// With `deferAggregates` the batch's readings commit now and its aggregates join the pending
    /// ones; without it the pending aggregates and the batch's are written in this transaction.
    package func commit(_ submissions: [IngestSubmission], deferAggregates: Bool = false) throws -> CommitResult {
        if self.refreshingCommits > 0 {
            // Another node stores some of these meters too (they moved between nodes): a cached
            // high-water mark it moved on loses the race for the whole batch. A node behind the
            // other lost every attempt, its batches ever larger and more of their meters moved,
            // until the other node went quiet (30 s in a probe). One round trip reads the batch's
            // meters first; their readings the other node stored pass here as duplicates.
            self.refreshingCommits -= 1
            if !self.hasPendingAggregates { _ = try self.reloadMeters(of: submissions) }
        }
        self.commitGeneration += 1
        let started = ContinuousClock.now
        var rollback = Rollback(generation: self.commitGeneration, firstRegisteredSlot: self.meterStates.count)
        // A store that cannot fold readings again on open writes every batch's aggregates with it.
        let deferAggregates = deferAggregates && self.backend.supportsDeferredAggregates
        do {
            var committed: (any IngestTransaction)?
            let (result, batch, writtenAggregates) = try self.backend.write { transaction -> (CommitResult, BatchAggregates, AggregateDelta?) in
                committed = transaction
                if self.unknownMeters == .register, self.backend.registersMetersTogether {
                    try self.registerNewMeters(in: submissions, transaction: transaction)
                }
                var batch = BatchAggregates()
                let result = try self.apply(submissions, transaction: transaction, rollback: &rollback, into: &batch)
                guard !deferAggregates else { return (result, batch, nil) }
                // Usually nothing is pending: the batch is written as it is, not copied.
                var merged = batch
                if self.hasPendingAggregates {
                    merged = self.pending
                    merged.absorb(batch)
                }
                return (result, batch, try self.write(merged, transaction: transaction))
            }
            self.commitListener?.didStore(result, duration: ContinuousClock.now - started)
            if var written = writtenAggregates {
                written.startedDays = committed?.startedDays ?? []
                written.commitXid = committed?.commitXid
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
            self.contestedMeters = []
            if self.backend.lostRace(error), !self.hasPendingAggregates, let moved = try? self.reloadMeters(of: submissions) {
                // The server rolled the batch back: only its meters' rows may differ from the cache.
                self.contestedMeters = moved
                self.refreshingCommits = Self.commitsRefreshedAfterALostRace
            } else if self.backend.invalidatesMeterCache(error) {
                // If this fails too (the store is still down), the next failed attempt tries again.
                try? self.reloadMeters()
                // The batch may have committed before the connection dropped, and no delta said
                // so: the KPI stores load afresh rather than miss it.
                if self.backend.outcomeUnknown(error) { self.commitListener?.companyDataChanged() }
            }
            throw error
        }
    }

    package func checkReachable() throws { try self.backend.checkReachable() }

    /// Writes the pending aggregates (and the watermark of the readings they cover) in one transaction.
    package func flushAggregates() throws {
        guard self.hasPendingAggregates else { return }
        let pending = self.pending
        var committed: (any IngestTransaction)?
        var written = try self.backend.write { transaction in
            committed = transaction
            return try self.write(pending, transaction: transaction)
        }
        if let committed {
            written.startedDays = committed.startedDays
            written.commitXid = committed.commitXid
        }
        self.pending = BatchAggregates()
        self.commitListener?.didCommit(written)
    }

    private func apply(
        _ submissions: [IngestSubmission], transaction: any IngestTransaction, rollback: inout Rollback,
        into batch: inout BatchAggregates
    ) throws -> CommitResult {
        var result = CommitResult()
        result.outcomes.reserveCapacity(submissions.count)
        func flag(_ rule: ValidationRule, _ detail: String, meterID: Int64, reading: Reading) throws {
            try transaction.insertFlag(
                meterID: meterID, reading: reading, month: self.calendar.month(ofMilliseconds: reading.timestampMs).key, rule: rule,
                detail: detail)
            result.flags += 1
        }
        func quarantine(_ line: QuarantinedLine) throws {
            try transaction.quarantine(line)
            result.quarantined += 1
        }

        for submission in submissions {
            var outcome = SubmissionOutcome()
            var ackIndex: [String: Int] = [:]
            // A meter's readings come in runs (a connection usually speaks for one meter): comparing
            // the name with the last one's is cheaper than hashing it for every reading.
            var lastMeter: (name: String, slot: Int)?
            for item in submission.readings {
                let reading = item.reading
                let slot: Int
                let sameAsLast = lastMeter?.name == reading.meter ? lastMeter?.slot : nil
                if let known = sameAsLast ?? self.meterSlots[reading.meter] {
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
                    slot = try self.register(reading.meter, transaction: transaction)
                }
                lastMeter = (reading.meter, slot)
                let state = self.meterStates[slot]
                if reading.seq <= state.highWaterMark {
                    batch.updateMeter(
                        state.id,
                        default: MeterDelta(
                            previousHighWaterMark: state.highWaterMark, highWaterMark: state.highWaterMark, firstSeenMs: item.receivedMs,
                            lastReceivedMs: item.receivedMs)
                    ) { $0.recordDuplicate(receivedMs: item.receivedMs) }
                    result.duplicates += 1
                } else {
                    var stored = reading
                    var spanStartMs: Int64?
                    if let register = reading.registerKwh {
                        let step = self.registerStep(to: register, at: reading.timestampMs, after: state)
                        stored.kwh = step.kwh
                        switch (step, state.lastRegister) {
                        case (.reset(let wrapped), let previous?):
                            try flag(
                                .registerReset,
                                "register went down from \(previous) to \(register) kWh; a rollover would make \(wrapped) kWh, "
                                    + "more than max_kwh \(self.metering.maximumKwh): new baseline",
                                meterID: state.id, reading: reading)
                        case (.jump(let kwh), let previous?):
                            let elapsedMs = Self.registerElapsedMs(at: reading.timestampMs, after: state)
                            try flag(
                                .registerReset,
                                "register went up from \(previous) to \(register) kWh: \(kwh) kWh in \(max(0, elapsedMs) / 1000) s is more than "
                                    + "max_kwh \(self.metering.maximumKwh) per expected_interval: new baseline",
                                meterID: state.id, reading: reading)
                        default:
                            break
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
                    let rowID = try transaction.insertReading(
                        meterID: state.id, stored, receivedMs: item.receivedMs, previousRowID: state.lastReadingRowID, spanStartMs: spanStartMs)
                    batch.highRowID = rowID
                    result.latenciesMs.append(
                        self.fold(stored, spanStartMs: spanStartMs, receivedMs: item.receivedMs, rowID: rowID, slot: slot, into: &batch))
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

    /// Writes aggregates (and the watermark of the readings they cover) in the transaction;
    /// returns them as the delta the commit listener learns of once it commits.
    private func write(_ aggregates: BatchAggregates, transaction: any IngestTransaction) throws -> AggregateDelta {
        try transaction.writeAggregates(aggregates, regionNames: self.regionNames)
        let delta = Self.delta(of: aggregates)
        transaction.publish(delta)
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
        let previousHighWaterMark = state.highWaterMark
        // The rules that span readings, advanced as ``apply`` judged them, from the state before this reading.
        let consumption = self.knownConsumption(reading, before: state)
        let regular = self.isRegular(reading, after: state)
        _ = self.metering.advance(&state.zeroRun, consumption: consumption, previousMs: state.lastTimestampMs, timestampMs: reading.timestampMs)
        // The highest seq stored, whatever order recovered rows come in.
        state.highWaterMark = max(state.highWaterMark, reading.seq)
        state.lastReadingRowID = max(state.lastReadingRowID, rowID)
        // From the state before this reading, as ``apply`` judged it.
        state.lastRegisterTimestampMs = self.registerTimestamp(of: reading, after: state)
        state.lastTimestampMs = reading.timestampMs
        // A kwh reading ends the register's chain: the next register starts a new baseline rather
        // than count again the energy the kwh readings between them carried.
        state.lastRegister = reading.registerKwh
        self.meterStates[slot] = state
        if let consumption, regular {
            // In place: the window's buffer is this array's alone, so nothing is copied.
            if self.trailing[slot].capacity == 0 { self.trailing[slot].reserveCapacity(MeteringRules.spikeWindow) }  // one allocation
            if self.trailing[slot].count >= MeteringRules.spikeWindow { self.trailing[slot].removeFirst() }
            self.trailing[slot].append(Float(consumption))
        }
        // The meter's day and month, by `ts`: one calendar lookup gives both.
        let day = self.calendar.day(ofMillisecondsCached: reading.timestampMs)
        batch.updateMeter(
            state.id,
            default: MeterDelta(
                previousHighWaterMark: previousHighWaterMark, highWaterMark: state.highWaterMark, firstSeenMs: receivedMs,
                lastReceivedMs: receivedMs)
        ) {
            $0.record(
                reading, receivedMs: receivedMs, highWaterMark: state.highWaterMark, rowID: state.lastReadingRowID,
                registerTimestampMs: state.lastRegisterTimestampMs, zeroRun: state.zeroRun, day: day.key, name: { self.meterNames[slot] })
        }
        // Presence and spacing for the read success rate.
        batch.updateDay(DayKey(day: day.key, meterID: state.id)) { $0.add(timestampMs: reading.timestampMs, previousMs: previousMs) }
        let latency = min(max(0, receivedMs - reading.timestampMs), MeteringRules.maximumLatencyMs)
        let monthKey = MonthKey(meterID: state.id, month: day.month.key)
        if let spanStartMs, spanStartMs < reading.timestampMs {
            var counted = reading
            counted.kwh = 0
            batch.updateMonth(monthKey) { $0.add(counted, rate: state.rate, latencyMs: latency) }
            let shares = self.calendar.spread(reading.kwh, fromMilliseconds: spanStartMs, to: reading.timestampMs)
            for share in shares {
                batch.updateMonth(MonthKey(meterID: state.id, month: share.month.key)) {
                    $0.addEnergy(share.kwh, rate: state.rate, estimated: shares.count > 1)
                }
            }
        } else {
            batch.updateMonth(monthKey) { $0.add(reading, rate: state.rate, latencyMs: latency) }
        }
        batch.addLatency(latency, receivedMs: receivedMs, region: state.region, calendar: &self.calendar)
        return latency
    }

    /// The consumption a stored reading tells of, `nil` when it tells none: a register reading that
    /// set a baseline or followed a reset. `reading.kwh` is already derived; `state` is the meter's before it.
    private func knownConsumption(_ reading: Reading, before state: MeterState) -> Double? {
        guard let register = reading.registerKwh else { return reading.kwh }
        switch self.registerStep(to: register, at: reading.timestampMs, after: state) {
        case .baseline, .reset, .jump: return nil
        case .advance, .rollover: return reading.kwh
        }
    }

    /// What a register reading at `timestampMs` means after the meter's previous register.
    private func registerStep(to register: Double, at timestampMs: Int64, after state: MeterState) -> MeteringRules.RegisterStep {
        self.metering.step(from: state.lastRegister, to: register, elapsedMs: Self.registerElapsedMs(at: timestampMs, after: state))
    }

    /// The time since the meter's previous register reading (``registerTimestamp(of:after:)``).
    private static func registerElapsedMs(at timestampMs: Int64, after state: MeterState) -> Int64 {
        timestampMs - (state.lastRegisterTimestampMs ?? timestampMs)
    }

    /// The time a register reading's successor measures its gap and its rise from: the latest
    /// `ts` the meter has shown (its previous reading's, and the register chain's), so a reading
    /// whose clock went back (a `clock_backwards` flag), a chain's baseline included, does not
    /// stretch its successor's gap back to its own `ts`, decades perhaps, spreading its
    /// consumption over every month between and allowing it a rise as large.
    private func registerTimestamp(of reading: Reading, after state: MeterState) -> Int64? {
        guard reading.registerKwh != nil else { return nil }
        var latest = max(reading.timestampMs, state.lastTimestampMs ?? reading.timestampMs)
        if state.lastRegister != nil, let chainMs = state.lastRegisterTimestampMs { latest = max(latest, chainMs) }
        return latest
    }

    /// Whether a reading came at most the expected interval after the meter's previous one (and
    /// after it): only such readings are judged, and remembered, by the spike rule.
    private func isRegular(_ reading: Reading, after state: MeterState) -> Bool {
        guard let previousMs = state.lastTimestampMs else { return false }
        return reading.timestampMs > previousMs && reading.timestampMs - previousMs <= self.metering.expectedIntervalMs
    }

    /// Applies readings a crash left past the watermark to the meters' state and the aggregates.
    private func recoverAggregates() throws {
        let rows = try self.backend.readingsPastWatermark()
        guard !rows.isEmpty else { return }
        var slots: [Int64: Int] = [:]
        slots.reserveCapacity(self.meterStates.count)
        for (slot, state) in self.meterStates.enumerated() { slots[state.id] = slot }
        var batch = BatchAggregates()
        for row in rows {
            guard let slot = slots[row.meterID] else { continue }
            let reading = Reading(
                meter: self.meterNames[slot], seq: row.seq, timestampMs: row.timestampMs, kwh: row.kwh, status: row.status, fault: row.fault,
                registerKwh: row.registerKwh)
            _ = self.fold(reading, spanStartMs: row.spanStartMs, receivedMs: row.receivedMs, rowID: row.rowID, slot: slot, into: &batch)
            batch.highRowID = row.rowID
        }
        let recovered = batch
        _ = try self.backend.write { transaction in try self.write(recovered, transaction: transaction) }
    }

    /// Registers, in one call of the store, every meter of `submissions` the company data does not
    /// know, unassigned, so their readings are kept. On PostgreSQL that is one round trip (and one
    /// server transaction) for all of them: one per meter, as ``apply`` registered them before, made
    /// the first batches of 10,000 new meters wait for 10,000 round trips.
    private func registerNewMeters(in submissions: [IngestSubmission], transaction: any IngestTransaction) throws {
        var names: [String] = []
        var seen = Set<String>()
        for submission in submissions {
            for item in submission.readings where self.meterSlots[item.reading.meter] == nil && seen.insert(item.reading.meter).inserted {
                names.append(item.reading.meter)
            }
        }
        guard !names.isEmpty else { return }
        let ids = try transaction.registerMeters(named: names, region: Region.unassigned)
        for (name, id) in zip(names, ids) { _ = self.addRegistered(name, id: id) }
    }

    /// Registers a meter the company data does not know, unassigned, so its readings are kept.
    /// Returns the new meter's slot in the cache.
    private func register(_ name: String, transaction: any IngestTransaction) throws -> Int {
        self.addRegistered(name, id: try transaction.registerMeter(named: name, region: Region.unassigned))
    }

    /// Adds a meter just registered in the store to the cache; returns its slot.
    private func addRegistered(_ name: String, id: Int64) -> Int {
        let slot = self.meterStates.count
        self.meterStates.append(
            MeterState(
                id: id, highWaterMark: -1, rate: self.tariff.rate(forRegion: Region.unassigned),
                region: self.index(ofRegion: Region.unassigned), savedBy: self.commitGeneration))
        self.meterNames.append(name)
        self.trailing.append([])
        self.meterSlots[name] = slot
        return slot
    }
}

/// The writer's work besides readings: liveness flags, KPI snapshots, company imports, settings and
/// alerts, each one transaction of the store.
extension IngestWriter {
    package func flagInactive(_ candidates: [StoredMeterName], cutoffMs: Int64, startMs: Int64) throws -> [InactiveFlag] {
        // Deferred aggregates hold the newest `last_received_ms`: the store's check must see it, or a
        // meter that has just reported would be flagged and unflagged again by the next flush.
        if self.hasPendingAggregates { try self.flushAggregates() }
        return try self.backend.flagInactive(candidates, cutoffMs: cutoffMs, startMs: startMs)
    }

    package func recordSnapshot(_ document: String, period: KPIPeriod, generatedMs: Int64, history: Int) throws {
        try self.backend.recordSnapshot(document, period: period, generatedMs: generatedMs, history: history)
    }

    package func importCompanyFile(_ path: String, progress: (@Sendable (ImportProgress) -> Void)?) -> FileImportResult {
        // Aggregates of readings still pending must not interleave with the import's rows.
        do { try self.flushAggregates() } catch {
            return FileImportResult(
                file: (path as NSString).lastPathComponent, rows: 0,
                errors: [CompanyDataError(file: (path as NSString).lastPathComponent, line: 0, "\(error)")], seconds: 0)
        }
        return self.backend.importCompanyFile(path, progress: progress)
    }

    package func recordTimeZone(_ zone: TimeZone) throws {
        try self.backend.recordTimeZone(zone)
    }

    package func recordAlerts(_ alerts: [Alert], history: Int) throws {
        guard !alerts.isEmpty else { return }
        try self.backend.recordAlerts(alerts, history: history)
    }
}
