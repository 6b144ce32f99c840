import Foundation

// What one commit (or a run of deferred commits) adds to the aggregates, as the backend-neutral
// ``IngestWriter`` folds it; each store's ``IngestTransaction`` writes it in its own SQL.

/// What a run of readings changes in one meter's row.
struct MeterDelta {
    /// The meter's committed high-water mark before these readings: a store several nodes share
    /// checks that it still holds when it writes ``highWaterMark`` (PostgreSQL).
    var previousHighWaterMark: Int64
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
    ///   - registerTimestampMs: the meter's register time after this reading (``IngestWriter``).
    ///   - day: the ``Day/key`` of the reading's `ts`.
    ///   - name: the meter's name, asked for with its first reading of the run only.
    mutating func record(
        _ reading: Reading, receivedMs: Int64, highWaterMark: Int64, rowID: Int64, registerTimestampMs: Int64?,
        zeroRun: MeteringRules.ZeroRun, day: Int, name: () -> String
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
        self.lastRegisterTimestampMs = registerTimestampMs
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
struct DayKey: Hashable {
    var day: Int
    var meterID: Int64
}

/// What a run of readings adds to a meter's day.
struct DayDelta {
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

struct MonthKey: Hashable {
    var meterID: Int64
    var month: Int
}

/// Live reading latencies by the month they were received in, the meter's region and a bucket.
struct LatencyKey: Hashable {
    var month: Int
    var region: Int
    var bucket: Int
}

/// The aggregates of a run of readings: one batch's, or all those pending.
struct BatchAggregates {
    private(set) var meters: [Int64: MeterDelta] = [:]
    private(set) var months: [MonthKey: AggregateDelta.Month] = [:]
    var latencies: [LatencyKey: (count: Int, sumMs: Int64)] = [:]
    private(set) var days: [DayKey: DayDelta] = [:]
    /// Highest rowid of a reading these aggregates cover.
    var highRowID: Int64?
    // The three dictionaries above change only through these (or after resetting them).
    private var meterCursor = DictionaryCursor<Int64, MeterDelta>()
    private var monthCursor = DictionaryCursor<MonthKey, AggregateDelta.Month>()
    private var dayCursor = DictionaryCursor<DayKey, DayDelta>()

    /// Updates the meter's delta, starting it with `make()` if the batch has none.
    mutating func updateMeter<Result>(_ id: Int64, default make: @autoclosure () -> MeterDelta, _ body: (inout MeterDelta) -> Result) -> Result {
        self.meterCursor.update(&self.meters, id, default: make(), body)
    }

    /// Updates the meter's month, starting it empty if the batch has none.
    mutating func updateMonth<Result>(_ key: MonthKey, _ body: (inout AggregateDelta.Month) -> Result) -> Result {
        self.monthCursor.update(&self.months, key, default: AggregateDelta.Month(meterID: key.meterID, month: key.month), body)
    }

    /// Updates the meter's day, starting it empty if the batch has none.
    mutating func updateDay<Result>(_ key: DayKey, _ body: (inout DayDelta) -> Result) -> Result {
        self.dayCursor.update(&self.days, key, default: DayDelta(), body)
    }

    /// Takes a month out of the batch (PostgreSQL writes a meter's open month with its row).
    mutating func removeMonth(_ key: MonthKey) -> AggregateDelta.Month? {
        self.monthCursor = DictionaryCursor()
        return self.months.removeValue(forKey: key)
    }

    /// Takes a day out of the batch (PostgreSQL writes a meter's open day with its row).
    mutating func removeDay(_ key: DayKey) -> DayDelta? {
        self.dayCursor = DictionaryCursor()
        return self.days.removeValue(forKey: key)
    }

    /// Adds one stored reading's latency, by the month it was received.
    mutating func addLatency(_ latencyMs: Int64, receivedMs: Int64, region: Int, calendar: inout MonthCalendar) {
        let key = LatencyKey(
            month: calendar.month(ofMilliseconds: receivedMs).key, region: region,
            bucket: LatencyBuckets.bucket(ofMilliseconds: latencyMs))
        Self.add(&self.latencies[key, default: (0, 0)], count: 1, sumMs: latencyMs)
    }

    /// One hash lookup for both fields, where `latencies[key, default:]` twice took two.
    private static func add(_ entry: inout (count: Int, sumMs: Int64), count: Int, sumMs: Int64) {
        entry.count += count
        entry.sumMs += sumMs
    }

    /// These aggregates followed by `later`, as one.
    mutating func absorb(_ later: BatchAggregates) {
        (self.meterCursor, self.monthCursor, self.dayCursor) = (DictionaryCursor(), DictionaryCursor(), DictionaryCursor())
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
            Self.add(&self.latencies[key, default: (0, 0)], count: latency.count, sumMs: latency.sumMs)
        }
        for (key, day) in later.days {
            self.days[key, default: DayDelta()].merge(day)
        }
        if let high = later.highRowID { self.highRowID = high }
    }
}

/// Where the last update of one dictionary went. A meter's readings come in runs, and every
/// reading of a run updates the same meter, day and month entries of the batch: from the run's
/// second reading on, the cursor finds the entry by its position instead of hashing its key
/// (in scenario (a)'s shape three hash lookups of every reading). The dictionary must change only
/// through the cursor, or the cursor be reset after it changed, so a position it holds is valid.
struct DictionaryCursor<Key: Hashable, Value> {
    private var key: Key?
    private var position: Dictionary<Key, Value>.Index?

    mutating func update<Result>(
        _ dictionary: inout [Key: Value], _ key: Key, default make: @autoclosure () -> Value, _ body: (inout Value) -> Result
    ) -> Result {
        guard key == self.key else {
            // A new run: the subscript's one hash lookup, and no position yet. Finding it would
            // cost a second lookup, which a run of one reading (scenario (b)) never pays back.
            self.key = key
            self.position = nil
            return body(&dictionary[key, default: make()])
        }
        // Present: the previous update, through this cursor, inserted or changed it.
        let position = self.position ?? dictionary.index(forKey: key)!
        self.position = position
        return body(&dictionary.values[position])
    }
}

/// A stored reading the writer folds again on open: one a crash left past the aggregates' watermark.
struct RecoveredReading {
    var rowID: Int64
    var meterID: Int64
    var seq: Int64
    var timestampMs: Int64
    var receivedMs: Int64
    var kwh: Double
    var status: MeterHealth
    var fault: String?
    var registerKwh: Double?
    var spanStartMs: Int64?
}

/// A meter's row as the writer caches it.
struct StoredMeterState {
    var id: Int64
    var name: String
    var region: String
    var highWaterMark: Int64
    var lastReadingRowID: Int64
    var lastTimestampMs: Int64?
    var lastRegister: Double?
    var lastRegisterTimestampMs: Int64?
    var zeroRun: MeteringRules.ZeroRun
}

/// One commit's writes in a store's dialect: the ``IngestWriter`` decides what is stored, the
/// transaction how. Every call of one transaction commits together or not at all.
protocol IngestTransaction: AnyObject {
    /// Stores a reading (its `kwh` already derived for a register reading); returns its position,
    /// which grows with every reading stored.
    func insertReading(meterID: Int64, _ reading: Reading, receivedMs: Int64, previousRowID: Int64, spanStartMs: Int64?) throws -> Int64
    func insertFlag(meterID: Int64, reading: Reading, month: Int, rule: ValidationRule, detail: String) throws
    func quarantine(_ line: QuarantinedLine) throws
    /// Adds a meter the company data does not know, in `region`; returns its id.
    func registerMeter(named name: String, region: String) throws -> Int64
    /// Adds meters the company data does not know, in `region`; returns their ids in the order of
    /// `names` (distinct names). Called where ``IngestBackend/registersMetersTogether``; the
    /// default adds them one by one with ``registerMeter(named:region:)``.
    func registerMeters(named names: [String], region: String) throws -> [Int64]
    /// Adds aggregates to `meter`, `meter_month`, `latency_month`, `meter_day` and the watermark.
    func writeAggregates(_ aggregates: BatchAggregates, regionNames: [String]) throws
    /// The meter-days whose `meter_day` row the written aggregates created (a meter's first reading
    /// of a day); complete once the transaction has committed.
    var startedDays: [AggregateDelta.MeterDayKey] { get }
    /// Told what the written aggregates change in a KPI store, before the transaction commits: a
    /// store several nodes share publishes it to the others in the same transaction.
    func publish(_ delta: AggregateDelta)
    /// The committed transaction's id, where commits carry one (``AggregateDelta/commitXid``).
    var commitXid: UInt64? { get }
}

extension IngestBackend {
    var registersMetersTogether: Bool { false }
    func checkReachable() throws {}
    func lostRace(_ error: any Error) -> Bool { false }
    func outcomeUnknown(_ error: any Error) -> Bool { false }
}

extension IngestTransaction {
    func registerMeters(named names: [String], region: String) throws -> [Int64] {
        try names.map { try self.registerMeter(named: $0, region: region) }
    }

    func publish(_ delta: AggregateDelta) {}
    var commitXid: UInt64? { nil }
}

/// The SQL side of an ``IngestWriter``: transactions, the meter rows it caches, and the writer's
/// work besides readings (liveness flags, snapshots, imports, settings, alerts).
protocol IngestBackend: AnyObject {
    /// Whether aggregates may commit after their readings (``IngestWriter/commit(_:deferAggregates:)``),
    /// because the store folds readings past its watermark again on open.
    var supportsDeferredAggregates: Bool { get }
    /// Whether a batch's new meters are worth registering in one call before its readings
    /// (``IngestTransaction/registerMeters(named:region:)``): a round trip per meter costs a server
    /// store far more than the extra pass over the batch. SQLite registers each as its reading comes.
    var registersMetersTogether: Bool { get }
    /// Runs `body` in one transaction, committed when it returns and rolled back when it throws.
    func write<T>(_ body: (any IngestTransaction) throws -> T) throws -> T
    /// Every meter row.
    func loadMeters() throws -> [StoredMeterState]
    /// The rows of these meters (those that exist).
    func loadMeters(named names: [String]) throws -> [StoredMeterState]
    /// Returns once the store may be written: SQLite's integrity check may still run beside the
    /// meter load (``MeterDatabase/IntegrityCheckTiming/alongsideStartUp``).
    func awaitWritable() throws
    /// Readings past the aggregates' watermark, in the order they were stored.
    func readingsPastWatermark() throws -> [RecoveredReading]
    /// Fills read-success facts the schema added after readings were stored (SQLite's `v9-read-success`).
    func backfillReadDays(calendar: inout MonthCalendar) throws
    /// Whether, after a commit failed with `error`, the meter rows may differ from the writer's
    /// cache: the commit's outcome is unknown (the connection dropped) or another writer moved a
    /// high-water mark. The writer then reloads its cache, so the retried batch finds what did
    /// commit as duplicates: nothing counts twice.
    func invalidatesMeterCache(_ error: any Error) -> Bool
    /// Whether `error` says another writer committed the same meters first (``MeterStoreWriter/lostRace(_:)``).
    func lostRace(_ error: any Error) -> Bool
    /// Whether the commit that failed with `error` may have committed all the same (the connection
    /// dropped after the server took it): then no delta says what it changed.
    func outcomeUnknown(_ error: any Error) -> Bool
    /// ``MeterStoreWriter/checkReachable()``.
    func checkReachable() throws

    func flagInactive(_ candidates: [StoredMeterName], cutoffMs: Int64, startMs: Int64) throws -> [InactiveFlag]
    func recordSnapshot(_ document: String, period: KPIPeriod, generatedMs: Int64, history: Int) throws
    func importCompanyFile(_ path: String, progress: (@Sendable (ImportProgress) -> Void)?) -> FileImportResult
    func recordTimeZone(_ zone: TimeZone) throws
    func recordAlerts(_ alerts: [Alert], history: Int) throws
}

extension IngestBackend {
    /// Only a server store loses races, and then its own version reads just these rows.
    func loadMeters(named names: [String]) throws -> [StoredMeterState] {
        let wanted = Set(names)
        return try self.loadMeters().filter { wanted.contains($0.name) }
    }
}
