import Foundation
import NIOConcurrencyHelpers
import Testing

@testable import MeterCore

/// The in-memory read success facts (``ReadDayStore`` in ``KPIRollups``) give the answer the store
/// gives (``MeterStore/readDays(from:through:region:)``), over a real SQLite file: after live
/// readings, a late reading for an earlier day, a company import, and deltas that arrive while the
/// facts load.
@Suite(.timeLimit(.minutes(1)))
struct ReadDayStoreTests {
    static let utc = MonthCalendar(timeZone: TimeZone(identifier: "UTC")!)
    static let nowMs = ms("2026-03-03T12:00:00Z")
    static let first = Day("2026-03-01")!
    static let last = Day("2026-03-31")!

    static func ms(_ text: String) -> Int64 { RFC3339.parseMilliseconds(text)! }

    /// One commit of readings `(meter, seq, ts)`, all received at `receivedAt`.
    static func commit(_ writer: any MeterStoreWriter, at receivedAt: String, _ entries: [(String, Int64, String)]) throws {
        let submission = IngestSubmission(
            readings: entries.enumerated().map { index, entry in
                SubmittedReading(
                    reading: Reading(meter: entry.0, seq: entry.1, timestampMs: ms(entry.2), kwh: 0.5), line: index + 1,
                    receivedMs: ms(receivedAt))
            }, receiver: nil)
        let result = try writer.commit([submission])
        #expect(result.stored == entries.count)
    }

    static func writeCompany(_ directory: String, thirdCustomer: Bool = false) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var lines = ["CustomerID,Region,InstallationDate", "1,North,2026-02-20", "2,South,2026-03-02"]
        if thirdCustomer { lines.append("3,North,2026-03-01") }
        try writeCSV(directory, "customer_data.csv", lines)
    }

    /// The in-memory answer equals the store-read one, facts and figures, for every region and a
    /// short period too; returns the fleet's daily installed and reporting counts.
    @discardableResult
    static func expectSameAnswer(_ engine: KPIEngine, _ store: SQLiteMeterStore) async throws -> (installed: [Int], reporting: [Int]) {
        for region in [nil, "North", "South", Region.unassigned] {
            for (from, through) in [(Self.first, Self.last), (Day("2026-03-02")!, Day("2026-03-02")!)] {
                let read = try await store.readDays(from: from, through: through, region: region)
                let held = try await engine.withReadStore { $0.facts(from: from, through: through, region: region) }
                #expect(held.meters == read.meters, "\(region ?? "all")")
                #expect(held.firstReceivedMs == read.firstReceivedMs)
                #expect(held.lastReceivedMs == read.lastReceivedMs)
                func key(_ day: ReadDayFacts.MeterDay) -> String {
                    "\(day.day) \(day.meterID) \(day.readings) \(day.spacingSumMs) \(day.spacingCount)"
                }
                #expect(held.days.map(key).sorted() == read.days.map(key).sorted(), "\(region ?? "all")")
                let direct = ReadSuccess(
                    facts: read, first: from, last: through, calendar: Self.utc, nowMs: Self.nowMs, intervals: engine.settings.readIntervals,
                    listLimit: engine.settings.completenessListLimit)
                #expect(try await engine.readSuccess(from: from, through: through, region: region, nowMs: Self.nowMs) == direct)
            }
        }
        let figures = try await engine.readSuccess(from: Self.first, through: Self.last, region: nil, nowMs: Self.nowMs)
        return (figures.daily.map(\.installed), figures.daily.map(\.reporting))
    }

    @Test func theHeldFactsFollowLiveLateAndImportedChanges() async throws {
        try await withTemporaryDirectory { directory in
            try Self.writeCompany(directory + "/csv")
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let store = SQLiteMeterStore(database: database)
            let writer = try store.makeWriter(WriterSettings(timeZone: TimeZone(identifier: "UTC")!))
            let rollups = KPIRollups()
            writer.commitListener = rollups
            _ = try CompanyImporter.importDirectory(directory + "/csv", into: writer)
            let engine = KPIEngine(store: store, rollups: rollups, settings: KPISettings())

            // Meter 1 (North, installed 20 February) reads twice on the 1st; meter 2 (South) is installed on the 2nd.
            try Self.commit(
                writer, at: "2026-03-01T07:00:01Z", [("MTR-000001", 1, "2026-03-01T06:00:00Z"), ("MTR-000001", 2, "2026-03-01T07:00:00Z")])
            // The first query loads the facts; what follows arrives as deltas.
            var counts = try await Self.expectSameAnswer(engine, store)
            #expect(counts.installed == [1, 2, 2])
            #expect(counts.reporting == [1, 0, 0])

            // Live: meter 1 and 2 on the 2nd; a meter the company data does not know on the 3rd (registered, unassigned).
            try Self.commit(
                writer, at: "2026-03-03T09:00:01Z",
                [("MTR-000001", 3, "2026-03-02T10:00:00Z"), ("MTR-000002", 1, "2026-03-02T11:00:00Z"), ("MTR-NEW", 1, "2026-03-03T09:00:00Z")])
            counts = try await Self.expectSameAnswer(engine, store)
            #expect(counts.installed == [1, 2, 3])
            #expect(counts.reporting == [1, 2, 1])
            let unassigned = try await engine.readSuccess(from: Self.first, through: Self.last, region: Region.unassigned, nowMs: Self.nowMs)
            #expect(unassigned.lowestCompleteness.map(\.meter) == ["MTR-NEW"])

            // Late: meter 2 on the 1st (installed from then on now), meter 1 again on the 1st (a third reading that day).
            try Self.commit(
                writer, at: "2026-03-03T09:30:00Z", [("MTR-000002", 2, "2026-03-01T08:00:00Z"), ("MTR-000001", 4, "2026-03-01T06:30:00Z")])
            counts = try await Self.expectSameAnswer(engine, store)
            #expect(counts.installed == [2, 2, 3])
            #expect(counts.reporting == [2, 2, 1])
            let held = try await engine.withReadStore { $0.facts(from: Self.first, through: Self.first, region: "North") }
            #expect(held.days.map(\.readings) == [3])

            // An import adds customer 3 (North, installed on the 1st): the facts load again.
            try Self.writeCompany(directory + "/csv", thirdCustomer: true)
            let report = try CompanyImporter.importDirectory(directory + "/csv", into: writer)
            #expect(report.succeeded, "\(report.text)")
            #expect(rollups.needsReload)
            counts = try await Self.expectSameAnswer(engine, store)
            #expect(counts.installed == [3, 3, 4])
            #expect(counts.reporting == [2, 2, 1])

            // And deltas after the reload.
            try Self.commit(writer, at: "2026-03-03T10:00:01Z", [("MTR-000003", 1, "2026-03-03T10:00:00Z")])
            counts = try await Self.expectSameAnswer(engine, store)
            #expect(counts.reporting == [2, 2, 2])
        }
    }

    @Test func deltasArrivingDuringTheLoadCountOnce() async throws {
        try await withTemporaryDirectory { directory in
            try Self.writeCompany(directory + "/csv", thirdCustomer: true)
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let sqlite = SQLiteMeterStore(database: database)
            let writer = WriterBox(try sqlite.makeWriter(WriterSettings(timeZone: TimeZone(identifier: "UTC")!)))
            let rollups = KPIRollups()
            writer.writer.commitListener = rollups
            _ = try CompanyImporter.importDirectory(directory + "/csv", into: writer.writer)
            try Self.commit(writer.writer, at: "2026-03-01T07:00:01Z", [("MTR-000001", 1, "2026-03-01T06:00:00Z")])

            // One commit lands between the monthly load and the read facts' load (so the monthly
            // store lacks it and the read facts hold it), one after both snapshots were read.
            let store = LoadInterleavingStore(
                base: sqlite,
                afterMonthly: {
                    try Self.commit(
                        writer.writer, at: "2026-03-02T10:00:01Z",
                        [("MTR-000001", 2, "2026-03-02T10:00:00Z"), ("MTR-000003", 1, "2026-03-02T09:00:00Z")])
                },
                afterReadDays: {
                    try Self.commit(
                        writer.writer, at: "2026-03-03T11:00:01Z",
                        [("MTR-000001", 3, "2026-03-03T11:00:00Z"), ("MTR-NEW", 1, "2026-03-03T11:00:00Z")])
                })
            let engine = KPIEngine(store: store, rollups: rollups, settings: KPISettings())
            try await rollups.load(from: store)
            let counts = try await Self.expectSameAnswer(engine, sqlite)
            #expect(store.loads.withLockedValue { $0 } == 1)
            // Installed: meter 1 (20 Feb), meter 3 (1 March), meter 2 (2 March), the new one (3 March).
            #expect(counts.installed == [2, 3, 4])
            #expect(counts.reporting == [1, 2, 2])
            let held = try await engine.withReadStore { $0.facts(from: Self.first, through: Self.last, region: "North") }
            #expect(held.days.filter { $0.meterID == 1 }.map(\.readings) == [1, 1, 1])
            // The monthly figures count each reading once too.
            let period = try KPIPeriod(from: Month(year: 2026, month: 3), to: Month(year: 2026, month: 3))
            let document = try await engine.document(period: period, region: nil, nowMs: Self.nowMs)
            #expect(abs(document.totalConsumptionKwh - 5 * 0.5) < 1e-9)
            let offline = try await KPIEngine(store: sqlite, settings: KPISettings()).document(period: period, region: nil, nowMs: Self.nowMs)
            #expect(document.readSuccessDaily == offline.readSuccessDaily)
            #expect(document.intervalCompleteness == offline.intervalCompleteness)
        }
    }
}

/// A writer a test's Sendable closures may use: the test runs one thing at a time.
final class WriterBox: @unchecked Sendable {
    let writer: any MeterStoreWriter
    init(_ writer: any MeterStoreWriter) { self.writer = writer }
}

/// A store whose first KPI load lets commits happen after each snapshot was read, as a busy writer would.
final class LoadInterleavingStore: MeterStore {
    let base: SQLiteMeterStore
    let afterMonthly: @Sendable () throws -> Void
    let afterReadDays: @Sendable () throws -> Void
    let loads = NIOLockedValueBox(0)

    init(base: SQLiteMeterStore, afterMonthly: @escaping @Sendable () throws -> Void, afterReadDays: @escaping @Sendable () throws -> Void) {
        self.base = base
        self.afterMonthly = afterMonthly
        self.afterReadDays = afterReadDays
    }

    var location: String { self.base.location }
    func sizeInBytes() async -> Int64 { await self.base.sizeInBytes() }
    func makeWriter(_ settings: WriterSettings) throws -> any MeterStoreWriter { try self.base.makeWriter(settings) }
    func recordedTimeZone() async throws -> TimeZone? { try await self.base.recordedTimeZone() }
    func loadMonthlyStore() async throws -> sending MonthlyStore {
        let store = try await self.base.loadMonthlyStore()
        if self.loads.withLockedValue({
            $0 += 1; return $0
        }) == 1 {
            try self.afterMonthly()
        }
        return store
    }
    func loadReadDayStore() async throws -> sending ReadDayStore {
        let store = try await self.base.loadReadDayStore()
        if self.loads.withLockedValue({ $0 }) == 1 { try self.afterReadDays() }
        return store
    }
    func companyEventTotals(through month: Month, region: String?) async throws -> [CompanyEventTotal] {
        try await self.base.companyEventTotals(through: month, region: region)
    }
    func latencyBuckets(from: Month, to: Month, region: String?) async throws -> [LatencyBucketTotal] {
        try await self.base.latencyBuckets(from: from, to: to, region: region)
    }
    func technicianNames() async throws -> [Int: String] { try await self.base.technicianNames() }
    func validationFlagCounts(from: Month, to: Month, region: String?) async throws -> [ValidationRule: Int] {
        try await self.base.validationFlagCounts(from: from, to: to, region: region)
    }
    func readDays(from: Day, through: Day, region: String?) async throws -> ReadDayFacts {
        try await self.base.readDays(from: from, through: through, region: region)
    }
    func inactiveMeterCount(region: String?) async throws -> Int { try await self.base.inactiveMeterCount(region: region) }
    func inactiveMeters(region: String?, limit: Int) async throws -> [InactiveMeter] {
        try await self.base.inactiveMeters(region: region, limit: limit)
    }
    func meterRecord(named name: String) async throws -> MeterRecord? { try await self.base.meterRecord(named: name) }
    func meterMonths(named name: String) async throws -> [MeterMonthRecord] { try await self.base.meterMonths(named: name) }
    func validationFlags(meter name: String, limit: Int) async throws -> [ValidationFlag] {
        try await self.base.validationFlags(meter: name, limit: limit)
    }
    func recentReadings(meter name: String, limit: Int) async throws -> RecentReadings? {
        try await self.base.recentReadings(meter: name, limit: limit)
    }
    func livenessCandidates(cutoffMs: Int64, startMs: Int64) async throws -> LivenessCandidates {
        try await self.base.livenessCandidates(cutoffMs: cutoffMs, startMs: startMs)
    }
    func customerHistory(id: Int64) async throws -> CustomerHistory? { try await self.base.customerHistory(id: id) }
    func customerSummaries(ids: [Int64]) async throws -> [Int64: CustomerSummary] { try await self.base.customerSummaries(ids: ids) }
    func concentratorAssignments() async throws -> [String: Set<String>] { try await self.base.concentratorAssignments() }
    func loadConcentratorAssignments() throws -> [String: Set<String>] { try self.base.loadConcentratorAssignments() }
    func backup(to path: String) async throws -> BackupReport { try await self.base.backup(to: path) }
    func alerts(state: AlertState?, limit: Int) async throws -> (alerts: [Alert], firing: Int) {
        try await self.base.alerts(state: state, limit: limit)
    }
}
