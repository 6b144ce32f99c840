import Foundation
import Logging

/// Where meterd keeps its data: the one boundary between the daemon and its database.
///
/// Everything outside `Storage/` asks a `MeterStore` for facts by intent and applies the rules
/// (``MeterRules``) itself; only implementations know a query language. Reads are `async`, so a
/// network store (PostgreSQL) fits behind the same calls; writes go through the single
/// ``MeterStoreWriter`` the ingest pipeline owns.
///
/// ```swift
/// let store = try SQLiteMeterStore(path: "meterd-data/meterd.sqlite")
/// let writer = try store.makeWriter(WriterSettings(timeZone: zone, tariff: tariff, unknownMeters: .register))
/// let silent = try await store.inactiveMeters(region: "North", limit: 100)
/// ```
package protocol MeterStore: Sendable {
    /// Where the data lives, for logs and errors (a path or a URL without its password).
    var location: String { get }

    /// Bytes the data takes on disk, for `status` and `/metrics`.
    func sizeInBytes() async -> Int64

    /// The store's single writer. Call once per process: two writers would race for high-water marks.
    func makeWriter(_ settings: WriterSettings) throws -> any MeterStoreWriter

    // MARK: Several nodes

    /// The other nodes' commits, for a store several nodes may share; `nil` for a store of one node.
    func makeCommitFeed() -> (any CommitFeedSource)?
    /// The lock that elects the one node doing singleton work; `nil` for a store of one node (always the leader).
    func makeSingletonLock() -> (any SingletonLock)?
    /// Where dashboard sessions live so that every node honours them; `nil` for a store of one
    /// node, whose sessions stay in its memory.
    func makeSessionStore() -> (any HTTPSessionStore)?

    // MARK: Settings the store remembers

    /// The time zone the daemon last ran with, so offline tools pick the same calendar months.
    func recordedTimeZone() async throws -> TimeZone?

    // MARK: KPIs

    /// Every customer, meter and meter-month aggregate, read in one consistent view, as the
    /// in-memory KPI store, with the commit position it covers (``MonthlyStore/coveredThrough``).
    func loadMonthlyStore() async throws -> sending MonthlyStore
    /// The in-memory read success counts and sums (``ReadDayStore``): every meter, the reporting
    /// meters per region and day, and the per meter-month sums of `meter_day`, with the commit
    /// position they cover (``ReadDayStore/coveredThrough``), from one snapshot.
    ///
    /// - Parameter months: the months whose meter sums to load; `nil` for the daemon's store, which
    ///   holds the ``ReadDayStore/defaultHeldMonths`` up to the latest receipt.
    func loadReadDayStore(months: ClosedRange<Month>?) async throws -> sending ReadDayStore
    /// Sums of dated company events (bills, feedback, maintenance, installations, complaints) per
    /// kind, month and item, for months up to `month`, of one region or all.
    func companyEventTotals(through month: Month, region: String?) async throws -> [CompanyEventTotal]
    /// Live reading latency in histogram buckets over the months received in `from...to`.
    func latencyBuckets(from: Month, to: Month, region: String?) async throws -> [LatencyBucketTotal]
    /// Technicians' names by id.
    func technicianNames() async throws -> [Int: String]
    /// Validation flags raised by readings whose `ts` falls in `from...to`, per rule, of one region or all.
    func validationFlagCounts(from: Month, to: Month, region: String?) async throws -> [ValidationRule: Int]
    /// What the read success rate and interval completeness of the days `from...through` are
    /// judged from (``ReadSuccess``): the meters installed by `through` and their readings per day,
    /// of one region or all.
    func readDays(from: Day, through: Day, region: String?) async throws -> ReadDayFacts

    // MARK: Meters

    /// How many meters are inactive (``MeterRules/isInactive(inactiveSinceMs:lastReceivedMs:)``), of one
    /// region or all. Asked by every KPI document: answered from indexes, not by visiting meter rows.
    func inactiveMeterCount(region: String?) async throws -> Int
    /// Inactive meters, longest silent first, then those never heard from (by meter row).
    func inactiveMeters(region: String?, limit: Int) async throws -> [InactiveMeter]
    /// One meter's stored state, `nil` when the store does not know it.
    func meterRecord(named name: String) async throws -> MeterRecord?
    /// One meter's monthly aggregates, oldest first.
    func meterMonths(named name: String) async throws -> [MeterMonthRecord]
    /// A meter's most recent validation flags, newest first (by the reading's `ts`).
    func validationFlags(meter name: String, limit: Int) async throws -> [ValidationFlag]
    /// A meter's most recent readings, newest first; `nil` for an unknown meter.
    func recentReadings(meter name: String, limit: Int) async throws -> RecentReadings?
    /// Meters the liveness sweep must look at: unflagged ones silent since before `cutoffMs`
    /// (never-reported ones count from `startMs`), and every flagged one.
    func livenessCandidates(cutoffMs: Int64, startMs: Int64) async throws -> LivenessCandidates

    // MARK: Customers

    /// One customer with everything the company data and the meters say about it.
    func customerHistory(id: Int64) async throws -> CustomerHistory?
    /// Installation dates and meters of the given customers, for a page of a region's list.
    func customerSummaries(ids: [Int64]) async throws -> [Int64: CustomerSummary]

    // MARK: Security

    /// Which meters each data concentrator may send for (`concentrators.csv`), by concentrator id.
    func concentratorAssignments() async throws -> [String: Set<String>]
    /// ``concentratorAssignments()`` before the daemon starts, blocking the caller.
    func loadConcentratorAssignments() throws -> [String: Set<String>]

    // MARK: Alerts

    /// Alerts in one state (all when `nil`): firing ones oldest first, then resolved ones newest
    /// first, at most `limit`; and how many fire in all.
    func alerts(state: AlertState?, limit: Int) async throws -> (alerts: [Alert], firing: Int)

    // MARK: Operations

    /// A consistent copy of the store into a new file, while meters keep sending.
    func backup(to path: String) async throws -> BackupReport
}

/// An error that may mean the database cannot be reached at all (refused, dropped, restarting),
/// rather than one it answered. meterd waits such an outage out, answering meters `busy`, instead
/// of asking systemd for a restart that could not bring the database back.
package protocol StoreReachabilityError: Error {
    var meansStoreUnreachable: Bool { get }
}

/// The write side of a ``MeterStore``: owned by the ingest pipeline's one writer thread, so its
/// methods are synchronous and may block; nothing else calls them concurrently.
package protocol MeterStoreWriter: AnyObject {
    /// Learns of every commit (KPI rollups); set before the pipeline starts.
    var commitListener: (any CommitListener)? { get set }
    /// Number of meters the writer knows.
    var meterCount: Int { get }
    /// Whether committed readings still wait for ``flushAggregates()``.
    var hasPendingAggregates: Bool { get }

    /// Commits a batch: readings, quarantined lines and (unless deferred) aggregates in one transaction.
    /// On error nothing of it is applied.
    func commit(_ submissions: [IngestSubmission], deferAggregates: Bool) throws -> CommitResult
    /// Writes aggregates of committed readings that were deferred.
    func flushAggregates() throws
    /// Reloads the writer's meter cache after meters or customers changed outside it.
    func reloadMeters() throws
    /// Whether a failed commit lost a race with another node's writer on the same meters (its
    /// high-water mark moved, or the same readings committed first): nothing of it committed, the
    /// cache is reloaded, and the batch may go again at once. Not a fault of the store.
    func lostRace(_ error: any Error) -> Bool
    /// After a lost race, the meters whose rows another writer had moved on (each reported once).
    func takeContestedMeters() -> Set<String>
    /// Reads these meters' rows again between commits; returns their high-water marks (empty when
    /// the store has no other writers, or the cache cannot be refreshed now).
    func refreshMeters(named names: Set<String>) throws -> [String: Int64]

    /// Flags meters silent since before `cutoffMs` (never-reported ones since `startMs`) as
    /// inactive; returns those it flagged with their last receive time.
    func flagInactive(_ candidates: [StoredMeterName], cutoffMs: Int64, startMs: Int64) throws -> [InactiveFlag]
    /// Stores a KPI snapshot and keeps the newest `history` of them.
    func recordSnapshot(_ document: String, period: KPIPeriod, generatedMs: Int64, history: Int) throws
    /// Loads one company CSV file in one transaction; a bad row leaves the store as it was.
    func importCompanyFile(_ path: String, progress: (@Sendable (ImportProgress) -> Void)?) -> FileImportResult
    /// Remembers the daemon's time zone for offline tools.
    func recordTimeZone(_ zone: TimeZone) throws
    /// Inserts or updates alerts by id, then keeps the newest `history` resolved ones.
    func recordAlerts(_ alerts: [Alert], history: Int) throws
    /// Asks a database server whether it still answers (reconnecting if the connection closed):
    /// an idle writer has no commit to find out by, and `/readyz` must show an outage all the same.
    /// An embedded store has nothing to ask.
    func checkReachable() throws
}

extension MeterStore {
    /// The daemon's read success store: the held months up to the latest receipt.
    package func loadReadDayStore() async throws -> sending ReadDayStore {
        try await self.loadReadDayStore(months: nil)
    }

    package func makeCommitFeed() -> (any CommitFeedSource)? { nil }
    package func makeSingletonLock() -> (any SingletonLock)? { nil }
    package func makeSessionStore() -> (any HTTPSessionStore)? { nil }
}

extension MeterStoreWriter {
    package func checkReachable() throws {}

    package func lostRace(_ error: any Error) -> Bool { false }

    package func takeContestedMeters() -> Set<String> { [] }

    package func refreshMeters(named names: Set<String>) throws -> [String: Int64] { [:] }

    /// Commits a batch with its aggregates.
    package func commit(_ submissions: [IngestSubmission]) throws -> CommitResult {
        try self.commit(submissions, deferAggregates: false)
    }

    /// ``flushAggregates()``, logging a failure (the aggregates then stay pending and are retried).
    /// Returns whether nothing is pending any more.
    package func flushAggregates(logger: Logger) -> Bool {
        guard self.hasPendingAggregates else { return true }
        do {
            try self.flushAggregates()
            return true
        } catch {
            logger.error("Writing aggregates failed; they stay in memory and are retried", metadata: ["error": "\(error)"])
            return false
        }
    }
}

/// What the writer needs to know besides the data.
package struct WriterSettings: Sendable {
    package var timeZone: TimeZone
    package var tariff: Tariff
    package var unknownMeters: UnknownMeterPolicy
    /// How register readings become consumption, and which readings are flagged.
    package var metering: MeteringRules

    package init(
        timeZone: TimeZone = TimeZone(identifier: "UTC")!, tariff: Tariff = Tariff(),
        unknownMeters: UnknownMeterPolicy = .register, metering: MeteringRules = MeteringRules()
    ) {
        self.timeZone = timeZone
        self.tariff = tariff
        self.unknownMeters = unknownMeters
        self.metering = metering
    }
}

/// The only observer of the write side: learns what each commit changed, after it committed and
/// before its acks go out. Called on the writer thread, so it must be quick.
package protocol CommitListener: AnyObject, Sendable {
    /// A batch of readings committed (`duration`: from its first write to its durable commit).
    func didStore(_ result: CommitResult, duration: Duration)
    /// Meter-month aggregates were written: with the batch's readings, or by a deferred flush.
    func didCommit(_ delta: AggregateDelta)
    /// Customers, meters or imported months changed outside the live stream (an import).
    func companyDataChanged()
}

extension CommitListener {
    package func didStore(_ result: CommitResult, duration: Duration) {}
    package func didCommit(_ delta: AggregateDelta) {}
    package func companyDataChanged() {}
}

/// Several listeners behind the writer's one: the daemon's KPI rollups and its metrics.
package final class CommitListeners: CommitListener {
    private let listeners: [any CommitListener]

    package init(_ listeners: [any CommitListener]) {
        self.listeners = listeners
    }

    package func didStore(_ result: CommitResult, duration: Duration) {
        for listener in self.listeners { listener.didStore(result, duration: duration) }
    }

    package func didCommit(_ delta: AggregateDelta) {
        for listener in self.listeners { listener.didCommit(delta) }
    }

    package func companyDataChanged() {
        for listener in self.listeners { listener.companyDataChanged() }
    }
}

/// What one commit changed in the meter-month aggregates: the one delta type the writer, crash
/// recovery and the in-memory KPI store share.
package struct AggregateDelta: Sendable {
    /// The change to one meter's month.
    package struct Month: Sendable {
        package var meterID: Int64
        package var month: Int
        package var kwh = 0.0
        package var revenue = 0.0
        package var readings = 0
        package var faults = 0
        package var good = 0
        package var fair = 0
        package var poor = 0
        package var latencySumMs: Int64 = 0
        package var latencyMaxMs: Int64 = 0
        /// Shares of gaps spanning more than one month that landed here (``MeteringRules``), and their energy.
        package var estimated = 0
        package var estimatedKwh = 0.0

        package init(meterID: Int64, month: Int) {
            self.meterID = meterID
            self.month = month
        }

        /// Adds one stored reading.
        package mutating func add(_ reading: Reading, rate: Double, latencyMs: Int64) {
            self.kwh += reading.kwh
            self.revenue += reading.kwh * rate
            self.readings += 1
            if reading.fault != nil { self.faults += 1 }
            switch reading.status {
            case .good: self.good += 1
            case .fair: self.fair += 1
            case .poor: self.poor += 1
            }
            self.latencySumMs += latencyMs
            self.latencyMaxMs = max(self.latencyMaxMs, latencyMs)
        }

        /// Adds a gap's share of energy (no reading): `estimated` when the gap spans more than this month.
        package mutating func addEnergy(_ kwh: Double, rate: Double, estimated: Bool) {
            self.kwh += kwh
            self.revenue += kwh * rate
            if estimated {
                self.estimated += 1
                self.estimatedKwh += kwh
            }
        }

        /// This change followed by `other`, as one.
        package mutating func merge(_ other: Month) {
            self.kwh += other.kwh
            self.revenue += other.revenue
            self.readings += other.readings
            self.faults += other.faults
            self.good += other.good
            self.fair += other.fair
            self.poor += other.poor
            self.latencySumMs += other.latencySumMs
            self.latencyMaxMs = max(self.latencyMaxMs, other.latencyMaxMs)
            self.estimated += other.estimated
            self.estimatedKwh += other.estimatedKwh
        }
    }

    /// A meter whose readings the commit stored: what the read success facts learn of it.
    package struct MeterReads: Sendable {
        package var meterID: Int64
        /// The meter's name: a meter the writer registered is not in a store loaded before.
        package var name: String
        /// The earliest day (``Day/key``) of the readings stored: the meter counts as installed from it at the latest.
        package var firstDay: Int

        package init(meterID: Int64, name: String, firstDay: Int) {
            self.meterID = meterID
            self.name = name
            self.firstDay = firstDay
        }
    }

    /// A meter's day.
    package struct MeterDayKey: Sendable, Hashable {
        package var meterID: Int64
        package var day: Day

        package init(meterID: Int64, day: Day) {
            self.meterID = meterID
            self.day = day
        }
    }

    package var months: [Month] = []
    /// Readings per meter per day of `ts` added by the commit (`meter_day`).
    package var days: [ReadDayFacts.MeterDay] = []
    /// The meter-days of ``days`` that got their first reading in this commit (a new `meter_day`
    /// row): each adds one reporting meter to its day's read success rate, so the KPI counts
    /// reporting meters per day without holding meter-days.
    package var startedDays: [MeterDayKey] = []
    /// Meters with readings stored by the commit.
    package var meterReads: [MeterReads] = []
    /// The earliest and latest receive times of the meters the commit touched (readings or duplicates).
    package var firstReceivedMs: Int64?
    package var lastReceivedMs: Int64?
    /// The commit's place in the stream (the highest reading position it stored), so a KPI store
    /// loaded concurrently knows which deltas it already holds; `nil` when nothing was stored.
    package var position: Int64?
    /// The committing transaction's id on a store several nodes share (PostgreSQL's `xid8`): a KPI
    /// store loaded in a ``CommitSnapshot`` that sees it holds this delta already.
    package var commitXid: UInt64?

    package init(
        months: [Month] = [], days: [ReadDayFacts.MeterDay] = [], startedDays: [MeterDayKey] = [], meterReads: [MeterReads] = [],
        firstReceivedMs: Int64? = nil, lastReceivedMs: Int64? = nil, position: Int64? = nil
    ) {
        self.months = months
        self.days = days
        self.startedDays = startedDays
        self.meterReads = meterReads
        self.firstReceivedMs = firstReceivedMs
        self.lastReceivedMs = lastReceivedMs
        self.position = position
    }

    /// Whether the commit changed nothing a KPI store holds.
    package var isEmpty: Bool {
        self.months.isEmpty && self.days.isEmpty && self.meterReads.isEmpty && self.firstReceivedMs == nil && self.lastReceivedMs == nil
    }
}

/// What one commit did, for counters and acks.
package struct CommitResult: Sendable {
    /// One outcome per submission, in order.
    package var outcomes: [SubmissionOutcome] = []
    package var stored = 0
    package var duplicates = 0
    package var rejected = 0
    package var quarantined = 0
    /// Validation flags raised by the readings stored.
    package var flags = 0
    /// Latencies (receive time − `ts`, ms, clamped at 0) of the readings stored.
    package var latenciesMs: [Int64] = []

    package init() {}
}

// MARK: Facts the store answers with

/// One kind of company event summed over a month, region and item (a score, technician, paid flag).
package struct CompanyEventTotal: Sendable, Equatable {
    package var kind: String
    package var month: Int
    package var item: Int
    package var count: Int
    package var total: Double

    package init(kind: String, month: Int, item: Int, count: Int, total: Double) {
        self.kind = kind
        self.month = month
        self.item = item
        self.count = count
        self.total = total
    }
}

/// Live readings whose latency fell in one histogram bucket (``LatencyBuckets``).
package struct LatencyBucketTotal: Sendable, Equatable {
    package var bucket: Int
    package var count: Int
    package var sumMs: Double

    package init(bucket: Int, count: Int, sumMs: Double) {
        self.bucket = bucket
        self.count = count
        self.sumMs = sumMs
    }
}

/// What the read success rate of some days is judged from (SPEC.md section 11, ``ReadSuccess``).
package struct ReadDayFacts: Sendable, Equatable {
    /// A meter with the day it counts as installed from: its customer's installation date or the
    /// day of its first reading, whichever is earlier.
    package struct InstalledMeter: Sendable, Equatable {
        package var id: Int64
        package var name: String
        package var customerID: Int64?
        package var region: String
        package var installedOn: Day

        package init(id: Int64, name: String, customerID: Int64?, region: String, installedOn: Day) {
            self.id = id
            self.name = name
            self.customerID = customerID
            self.region = region
            self.installedOn = installedOn
        }
    }

    /// A meter's readings on one day (by their `ts`).
    package struct MeterDay: Sendable, Equatable {
        package var meterID: Int64
        package var day: Day
        package var readings: Int
        /// Spacings between the day's readings and their predecessors (positive ones), summed, and
        /// how many: their mean is the meter's observed interval that day.
        package var spacingSumMs: Int64
        package var spacingCount: Int

        package init(meterID: Int64, day: Day, readings: Int, spacingSumMs: Int64 = 0, spacingCount: Int = 0) {
            self.meterID = meterID
            self.day = day
            self.readings = readings
            self.spacingSumMs = spacingSumMs
            self.spacingCount = spacingCount
        }
    }

    /// When meterd received its first reading: days before are not judged (it was not receiving),
    /// that day only from then. `nil` before the first reading.
    package var firstReceivedMs: Int64?
    /// When meterd received its latest reading, of any meter: today's expected readings count up
    /// to then, so a figure holds still while nothing arrives and every interface gives the same.
    package var lastReceivedMs: Int64?
    /// Meters installed on or before the last day asked for.
    package var meters: [InstalledMeter]
    /// Days with readings of those meters, within the days asked for.
    package var days: [MeterDay]

    package init(firstReceivedMs: Int64?, lastReceivedMs: Int64?, meters: [InstalledMeter], days: [MeterDay]) {
        self.firstReceivedMs = firstReceivedMs
        self.lastReceivedMs = lastReceivedMs
        self.meters = meters
        self.days = days
    }
}

/// One meter as the store keeps it.
package struct MeterRecord: Sendable, Equatable {
    package var id: Int64
    package var name: String
    package var customerID: Int64?
    package var region: String
    /// Highest committed seq, -1 before the first reading.
    package var highWaterMark: Int64
    package var firstSeenMs: Int64?
    package var lastReceivedMs: Int64?
    package var lastTimestampMs: Int64?
    package var lastStatus: MeterHealth?
    package var lastFault: String?
    package var inactiveSinceMs: Int64?
    package var readingsTotal: Int64
    package var faultsTotal: Int64
    package var duplicatesTotal: Int64
}

/// One meter-month aggregate.
package struct MeterMonthRecord: Sendable, Equatable {
    package var month: Month
    package var kwh: Double
    package var revenue: Double
    package var readings: Int64
    package var faults: Int64
    package var good: Int64
    package var fair: Int64
    package var poor: Int64
    package var latencySumMs: Int64
    package var latencyCount: Int64
    package var latencyMaxMs: Int64
    package var importedStatus: MeterHealth?
    /// Gap shares spread into this month from gaps spanning more than one month, and their energy:
    /// the month's kWh is partly estimated.
    package var estimated: Int64 = 0
    package var estimatedKwh = 0.0

    /// The month's prevailing status (``MeterRules/monthStatus(imported:readings:good:fair:poor:)``).
    package var status: MeterHealth? {
        MeterRules.monthStatus(imported: self.importedStatus, readings: self.readings, good: self.good, fair: self.fair, poor: self.poor)
    }
}

/// A validation flag a reading raised (SPEC.md section 11): kept, never dropped.
package struct ValidationFlag: Sendable, Equatable {
    package var rule: ValidationRule
    /// `ts` and `seq` of the reading that raised it.
    package var timestampMs: Int64
    package var seq: Int64
    package var detail: String

    package init(rule: ValidationRule, timestampMs: Int64, seq: Int64, detail: String) {
        self.rule = rule
        self.timestampMs = timestampMs
        self.seq = seq
        self.detail = detail
    }
}

/// A reading as stored.
package struct StoredReading: Sendable, Equatable {
    package var seq: Int64
    package var timestampMs: Int64
    package var receivedMs: Int64
    package var kwh: Double
    package var status: MeterHealth
    package var fault: String?
    package var voltage: Double?
    /// The register a register reading carried (its `kwh` is what meterd derived from it).
    package var registerKwh: Double?

    package init(
        seq: Int64, timestampMs: Int64, receivedMs: Int64, kwh: Double, status: MeterHealth, fault: String?, voltage: Double?,
        registerKwh: Double? = nil
    ) {
        self.seq = seq
        self.timestampMs = timestampMs
        self.receivedMs = receivedMs
        self.kwh = kwh
        self.status = status
        self.fault = fault
        self.voltage = voltage
        self.registerKwh = registerKwh
    }
}

/// A meter's most recent readings, newest first, and whether they are all it asked for.
package struct RecentReadings: Sendable, Equatable {
    package var readings: [StoredReading]
    /// Whether every reading of the meter up to the limit is here.
    package var complete: Bool
    /// Rows the store read to find them.
    package var scannedRows: Int64
    /// When incomplete: the receive time of the oldest reading found.
    package var scannedSinceMs: Int64?

    package init(readings: [StoredReading], complete: Bool, scannedRows: Int64, scannedSinceMs: Int64?) {
        self.readings = readings
        self.complete = complete
        self.scannedRows = scannedRows
        self.scannedSinceMs = scannedSinceMs
    }
}

/// A meter's store key and name.
package struct StoredMeterName: Sendable, Equatable {
    package var id: Int64
    package var name: String

    package init(id: Int64, name: String) {
        self.id = id
        self.name = name
    }
}

/// What the liveness sweep starts from.
package struct LivenessCandidates: Sendable {
    /// Unflagged meters silent since before the cutoff.
    package var silent: [StoredMeterName]
    /// Meters flagged inactive now, with their last reading's receive time (`nil`: never reported).
    package var flagged: [InactiveFlag]
}

/// A meter the sweep flagged inactive.
package struct InactiveFlag: Sendable, Equatable {
    package var meter: StoredMeterName
    /// Its last reading's receive time; `nil` if it never reported.
    package var lastReceivedMs: Int64?
}

/// One customer's page in the dashboard: what the company data and the meters say.
package struct CustomerHistory: Sendable {
    package struct Meter: Sendable {
        package var name: String
        package var inactive: Bool
        package var lastReceivedMs: Int64?
        package var lastStatus: MeterHealth?
        package var readingsTotal: Int64
        package var faultsTotal: Int64
    }

    package struct MonthTotal: Sendable {
        package var month: Month
        package var kwh: Double
        package var revenue: Double
        package var readings: Int64
        package var faults: Int64
        package var status: MeterHealth?
        /// Whether part of the month's kWh was spread from a gap spanning more than one month.
        package var estimated = false
    }

    package struct Bill: Sendable {
        package var month: Month
        package var amount: Double
        package var paid: Bool
    }

    package struct Maintenance: Sendable {
        package var requestDate: String
        package var resolutionDate: String?
        package var resolutionDays: Double?
        package var technicianID: Int64
        package var technician: String?
    }

    package struct Feedback: Sendable {
        package var date: String
        package var score: Int64
    }

    package struct Complaint: Sendable {
        package var id: Int64
        package var date: String
        package var category: String
        package var resolvedDate: String?
    }

    package struct Installation: Sendable {
        package var requestDate: String
        package var installedDate: String
        package var days: Double?
        package var technicianID: Int64?
        package var technician: String?
    }

    package var id: Int64
    package var region: String
    package var installedOn: String?
    package var meters: [Meter] = []
    package var monthly: [MonthTotal] = []
    package var bills: [Bill] = []
    package var maintenance: [Maintenance] = []
    package var feedback: [Feedback] = []
    package var complaints: [Complaint] = []
    package var installations: [Installation] = []
}

/// A customer row of a region's list: its installation date and meters.
package struct CustomerSummary: Sendable {
    package var installedOn: String?
    /// Meter names with whether each is inactive, by name.
    package var meters: [(name: String, inactive: Bool)] = []
}

/// What `backup` wrote.
package struct BackupReport: Sendable, Equatable {
    package var path: String
    package var bytes: Int64
    package var seconds: Double

    /// Refuses a backup path that is relative, already taken, or in no directory: meterd writes
    /// the copy itself and never overwrites a file.
    static func checkNewFile(_ path: String) throws {
        guard path.hasPrefix("/") else { throw OperatorQueryError("invalid_path", "the backup path must be absolute, got \(path)") }
        guard !FileManager.default.fileExists(atPath: path) else {
            throw OperatorQueryError("file_exists", "\(path) already exists; meterd does not overwrite it")
        }
        let directory = (path as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw OperatorQueryError("invalid_path", "no directory \(directory) to write the backup into")
        }
    }

    /// The report of a finished copy: the file's size and the time since `started`.
    static func written(_ path: String, since started: ContinuousClock.Instant) -> BackupReport {
        let bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? 0
        return BackupReport(path: path, bytes: bytes, seconds: (ContinuousClock.now - started).seconds)
    }
}
