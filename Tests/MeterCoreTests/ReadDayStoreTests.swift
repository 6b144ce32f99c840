import Foundation
import GRDB
import Logging
import NIOConcurrencyHelpers
import Testing

@testable import MeterCore

/// The in-memory read success counts and sums (``ReadDayStore`` in ``KPIRollups``) give the answer
/// judged from what the store holds (``MeterStore/readDays(from:through:region:)``), over a real
/// SQLite file: after live readings, late readings for earlier days, a company import, deltas that
/// arrive while the store loads, random streams of commits, and months older than the ones held.
@Suite(.timeLimit(.minutes(1)))
struct ReadDayStoreTests {
    static let utc = MonthCalendar(timeZone: TimeZone(identifier: "UTC")!)
    static let nowMs = ms("2026-03-03T12:00:00Z")
    static let first = Day("2026-03-01")!
    static let last = Day("2026-03-31")!

    static func ms(_ text: String) -> Int64 { RFC3339.parseMilliseconds(text)! }

    /// One commit of readings `(meter, seq, ts)`, all received at `receivedAt`.
    static func commit(
        _ writer: any MeterStoreWriter, at receivedAt: String, _ entries: [(String, Int64, String)], deferAggregates: Bool = false
    ) throws {
        let submission = IngestSubmission(
            readings: entries.enumerated().map { index, entry in
                SubmittedReading(
                    reading: Reading(meter: entry.0, seq: entry.1, timestampMs: ms(entry.2), kwh: 0.5), line: index + 1,
                    receivedMs: ms(receivedAt))
            }, receiver: nil)
        let result = try writer.commit([submission], deferAggregates: deferAggregates)
        #expect(result.stored == entries.count)
    }

    static func writeCompany(_ directory: String, thirdCustomer: Bool = false, secondRegion: String = "South") throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var lines = ["CustomerID,Region,InstallationDate", "1,North,2026-02-20", "2,\(secondRegion),2026-03-02"]
        if thirdCustomer { lines.append("3,North,2026-03-01") }
        try writeCSV(directory, "customer_data.csv", lines)
    }

    /// The figures judged in memory equal those judged from the facts the store reads, for every
    /// region: whole months in full, a single day's rates (its completeness is judged per month);
    /// returns the fleet's daily installed and reporting counts over `from...through`.
    @discardableResult
    static func expectSameAnswer(
        _ engine: KPIEngine, _ store: SQLiteMeterStore, from: Day = Self.first, through: Day = Self.last, nowMs: Int64 = Self.nowMs,
        regions: [String?] = [nil, "North", "South", Region.unassigned], sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> (installed: [Int], reporting: [Int]) {
        func direct(_ from: Day, _ through: Day, _ region: String?) async throws -> ReadSuccess {
            ReadSuccess(
                facts: try await store.readDays(from: from, through: through, region: region), first: from, last: through,
                calendar: Self.utc, nowMs: nowMs, intervals: engine.settings.readIntervals, listLimit: engine.settings.completenessListLimit)
        }
        for region in regions {
            let held = try await engine.readSuccess(from: from, through: through, region: region, nowMs: nowMs)
            #expect(held == (try await direct(from, through, region)), "\(region ?? "all")", sourceLocation: sourceLocation)
            for day in [from, Day("2026-03-02")!] {
                let heldDay = try await engine.readSuccess(from: day, through: day, region: region, nowMs: nowMs)
                let directDay = try await direct(day, day, region)
                #expect(heldDay.daily == directDay.daily, "\(day) \(region ?? "all")", sourceLocation: sourceLocation)
                #expect(heldDay.byRegion == directDay.byRegion, "\(day) \(region ?? "all")", sourceLocation: sourceLocation)
                #expect(heldDay.rate == directDay.rate, sourceLocation: sourceLocation)
            }
        }
        // The alert rule's figure: each region on one day.
        let alerts = try await engine.readSuccessByRegion(on: Day("2026-03-02")!, nowMs: nowMs)
        let directDay = try await direct(Day("2026-03-02")!, Day("2026-03-02")!, nil)
        #expect(alerts.map(\.region) == directDay.byRegion.map(\.region), sourceLocation: sourceLocation)
        #expect(alerts.map(\.installed) == directDay.byRegion.map { $0.days.first?.installed ?? -1 }, sourceLocation: sourceLocation)
        #expect(alerts.map(\.reporting) == directDay.byRegion.map { $0.days.first?.reporting ?? -1 }, sourceLocation: sourceLocation)
        let figures = try await engine.readSuccess(from: from, through: through, region: nil, nowMs: nowMs)
        return (figures.daily.map(\.installed), figures.daily.map(\.reporting))
    }

    /// `region_day` and the spacing sums of `meter_month`, which the store loads in place of
    /// `meter_day`, hold what `meter_day` and the meters' current regions give.
    static func expectRollupsFollowDays(_ database: MeterDatabase, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        @Sendable func lines(_ db: Database, _ sql: String) throws -> [String] {
            try Row.fetchAll(db, sql: sql).map { row in (0..<row.count).map { "\(row[$0] as DatabaseValue)" }.joined(separator: " ") }
        }
        let (regionDays, fromDays, monthSums, fromDayRows) = try await database.pool.read { db in
            (
                try lines(db, "SELECT day, region, reporting FROM region_day ORDER BY day, region"),
                try lines(
                    db,
                    "SELECT d.day, m.region, count(*) FROM meter_day d JOIN meter m ON m.id = d.meter_id GROUP BY d.day, m.region ORDER BY 1, 2"),
                try lines(db, "SELECT meter_id, month, readings, spacing_sum_ms, spacing_count FROM meter_month WHERE readings > 0 ORDER BY 1, 2"),
                try lines(
                    db,
                    """
                    SELECT meter_id, day / 100, sum(readings), sum(spacing_sum_ms), sum(spacing_count) FROM meter_day
                    GROUP BY meter_id, day / 100 ORDER BY 1, 2
                    """)
            )
        }
        #expect(!fromDays.isEmpty, sourceLocation: sourceLocation)
        #expect(regionDays == fromDays, sourceLocation: sourceLocation)
        #expect(monthSums == fromDayRows, sourceLocation: sourceLocation)
    }

    /// A meter's readings in the days judged, as the lowest-completeness list gives them.
    static func readings(of meter: String, _ engine: KPIEngine, region: String? = nil) async throws -> Int? {
        try await engine.readSuccess(from: Self.first, through: Self.last, region: region, nowMs: Self.nowMs).lowestCompleteness
            .first { $0.meter == meter }?.readings
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
            // Meter 1: three readings on the 1st, one on the 2nd, as the store has them.
            #expect(try await Self.readings(of: "MTR-000001", engine, region: "North") == 4)
            let stored = try await store.readDays(from: Self.first, through: Self.first, region: "North")
            #expect(stored.days.map(\.readings) == [3])

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
            try await Self.expectRollupsFollowDays(database)

            // Customer 2 moves to the North: its meter's reporting days count there now.
            try Self.writeCompany(directory + "/csv", thirdCustomer: true, secondRegion: "North")
            #expect(try CompanyImporter.importDirectory(directory + "/csv", into: writer).succeeded)
            counts = try await Self.expectSameAnswer(engine, store)
            #expect(counts.reporting == [2, 2, 2])
            let north = try await engine.readSuccess(from: Self.first, through: Self.last, region: "North", nowMs: Self.nowMs)
            #expect(north.daily.map(\.reporting) == [2, 2, 1])
            try await Self.expectRollupsFollowDays(database)
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
            // Meter 1 read once a day: three readings, none counted twice.
            #expect(try await Self.readings(of: "MTR-000001", engine) == 3)
            // The monthly figures count each reading once too.
            let period = try KPIPeriod(from: Month(year: 2026, month: 3), to: Month(year: 2026, month: 3))
            let document = try await engine.document(period: period, region: nil, nowMs: Self.nowMs)
            #expect(abs(document.totalConsumptionKwh - 5 * 0.5) < 1e-9)
            let offline = try await KPIEngine(store: sqlite, settings: KPISettings()).document(period: period, region: nil, nowMs: Self.nowMs)
            #expect(document.readSuccessDaily == offline.readSuccessDaily)
            #expect(document.intervalCompleteness == offline.intervalCompleteness)
        }
    }

    /// A database from before `v11-read-success-rollups` gets `region_day` and the spacing sums
    /// of `meter_month` from its `meter_day` rows when it opens.
    @Test func anOlderDatabaseGetsItsRollupsWhenItOpens() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/meterd.sqlite"
            do {
                let pool = try DatabasePool(path: path)
                try MeterDatabase.migrator.migrate(pool, upTo: "v10-alerts")
                try await pool.write { db in
                    try db.execute(
                        sql: """
                            INSERT INTO meter (id, name, region) VALUES (1, 'A', 'North'), (2, 'B', 'South'), (3, 'C', 'North');
                            INSERT INTO meter_month (meter_id, month, readings) VALUES (1, 202602, 3), (1, 202603, 2), (2, 202603, 1), (3, 202603, 2);
                            INSERT INTO meter_day (day, meter_id, readings, spacing_sum_ms, spacing_count) VALUES
                                (20260228, 1, 3, 7200000, 2), (20260301, 1, 2, 3600000, 1), (20260301, 2, 1, 0, 0),
                                (20260301, 3, 1, 0, 0), (20260302, 3, 1, 900000, 1);
                            """)
                }
            }
            // Opened as meterd opens its store: the migration it applies is logged
            let logs = CapturedLogs()
            let store = try #require(try StoreLocation.sqlite(path: path).open(logger: logs.logger) as? SQLiteMeterStore)
            let database = store.database
            #expect(database.migrationsApplied == ["v11-read-success-rollups"])
            #expect(logs.all.map(\.message) == ["SQLite schema migrated"])
            #expect(logs.all.first?.metadata["db.migrations"]?.description == "v11-read-success-rollups")
            #expect(try MeterDatabase(path: path).migrationsApplied.isEmpty)
            try await Self.expectRollupsFollowDays(database)
            let (regionDays, spacings) = try await database.pool.read { db in
                (
                    try Row.fetchAll(db, sql: "SELECT day, region, reporting FROM region_day ORDER BY day, region").map {
                        "\($0[0] as Int) \($0[1] as String) \($0[2] as Int)"
                    },
                    try Row.fetchAll(db, sql: "SELECT spacing_sum_ms, spacing_count FROM meter_month ORDER BY meter_id, month").map {
                        "\($0[0] as Int64)/\($0[1] as Int)"
                    }
                )
            }
            #expect(regionDays == ["20260228 North 1", "20260301 North 2", "20260301 South 1", "20260302 North 1"])
            #expect(spacings == ["7200000/2", "3600000/1", "0/0", "900000/1"])
        }
    }

    /// A tiny deterministic generator, so a failing stream can be replayed.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state = self.state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return self.state ^ (self.state >> 29)
        }
    }

    /// Random streams of commits over February and March, live and late, some with their
    /// aggregates deferred to a later flush: after each, the counts and sums kept from the deltas
    /// judge as the store's rows do.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func randomCommitsKeepTheSameAnswer(seed: UInt64) async throws {
        try await withTemporaryDirectory { directory in
            try FileManager.default.createDirectory(atPath: directory + "/csv", withIntermediateDirectories: true)
            var random = SeededGenerator(state: seed)
            var lines = ["CustomerID,Region,InstallationDate"]
            for customer in 1...10 {
                let region = ["North", "South", "East"][customer % 3]
                lines.append("\(customer),\(region),2026-0\(customer % 2 + 2)-\(10 + customer)")
            }
            try writeCSV(directory + "/csv", "customer_data.csv", lines)
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let store = SQLiteMeterStore(database: database)
            let writer = try store.makeWriter(WriterSettings(timeZone: TimeZone(identifier: "UTC")!))
            let rollups = KPIRollups()
            writer.commitListener = rollups
            _ = try CompanyImporter.importDirectory(directory + "/csv", into: writer)
            let engine = KPIEngine(store: store, rollups: rollups, settings: KPISettings())
            let meters = (1...10).map { String(format: "MTR-%06d", $0) } + ["MTR-NEW1", "MTR-NEW2"]
            var seqs = [String: Int64]()
            let start = Self.ms("2026-02-25T00:00:00Z")
            for round in 0..<8 {
                let receivedMs = start + Int64(round) * 36 * 3_600_000
                let received = RFC3339.format(millisecondsSinceEpoch: receivedMs)
                var entries: [(String, Int64, String)] = []
                for meter in meters where Int.random(in: 0..<3, using: &random) > 0 {
                    for _ in 0..<Int.random(in: 1...3, using: &random) {
                        seqs[meter, default: 0] += 1
                        // Mostly the last day; sometimes days late, out of order.
                        let ageMs = Int64.random(in: 0..<(Int.random(in: 0..<4, using: &random) == 0 ? 6 * 86_400_000 : 86_400_000), using: &random)
                        entries.append((meter, seqs[meter]!, RFC3339.format(millisecondsSinceEpoch: receivedMs - ageMs)))
                    }
                }
                try Self.commit(writer, at: received, entries, deferAggregates: round % 3 == 1)
                if round % 3 != 1 { try writer.flushAggregates() }
                if round == 0 { _ = try await engine.readSuccess(from: Self.first, through: Self.last, region: nil, nowMs: receivedMs) }
                // The engine kept current by deltas, and one loading afresh what the store keeps.
                let fresh = KPIEngine(store: store, rollups: KPIRollups(), settings: KPISettings())
                for (from, through) in [(Day("2026-02-01")!, Day("2026-02-28")!), (Self.first, Self.last), (Day("2026-02-01")!, Self.last)] {
                    for judge in [engine, fresh] {
                        try await Self.expectSameAnswer(
                            judge, store, from: from, through: through, nowMs: receivedMs + 3_600_000,
                            regions: [nil, "North", "South", "East", Region.unassigned])
                    }
                }
                try await Self.expectRollupsFollowDays(database)
            }
            let figures = try await engine.readSuccess(from: Day("2026-02-01")!, through: Self.last, region: nil, nowMs: start + 9 * 36 * 3_600_000)
            #expect(figures.completeness != nil && figures.rate != nil)
        }
    }

    /// Meter sums are held for the newest months only; a period that reaches before them is judged
    /// from the store, with the same answer. Per-day counts stay for every day.
    @Test func monthsBeforeTheHeldOnesAreJudgedFromTheStore() async throws {
        try await withTemporaryDirectory { directory in
            try FileManager.default.createDirectory(atPath: directory + "/csv", withIntermediateDirectories: true)
            try writeCSV(directory + "/csv", "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2022-12-01", "2,South,2022-12-01"])
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let store = SQLiteMeterStore(database: database)
            let writer = try store.makeWriter(WriterSettings(timeZone: TimeZone(identifier: "UTC")!))
            let rollups = KPIRollups()
            writer.commitListener = rollups
            _ = try CompanyImporter.importDirectory(directory + "/csv", into: writer)
            let engine = KPIEngine(store: store, rollups: rollups, settings: KPISettings())
            let january = (Day("2023-01-01")!, Day("2023-01-31")!)
            let march = (Day("2026-03-01")!, Day("2026-03-31")!)

            // meterd ran in January 2023: meter 1 read twice on the 10th, an hour apart (the hour
            // between the two receipts is judged).
            try Self.commit(writer, at: "2023-01-10T10:00:01Z", [("MTR-000001", 1, "2023-01-10T10:00:00Z")])
            try Self.commit(writer, at: "2023-01-10T11:00:01Z", [("MTR-000001", 2, "2023-01-10T11:00:00Z")])
            let then = try await engine.readSuccess(from: january.0, through: january.1, region: nil, nowMs: Self.ms("2023-01-20T00:00:00Z"))
            let meter = try #require(then.lowestCompleteness.first { $0.meter == "MTR-000001" })
            #expect(meter.readings == 2 && meter.intervalMs == 3_600_000 && meter.completeness == 1)
            #expect(try await engine.withReadStore { $0.heldFromMonth } == 202102)

            // Three years on, a reading moves the 24 held months to April 2024 – April 2026: January 2023's sums go.
            try Self.commit(writer, at: "2026-03-02T10:00:01Z", [("MTR-000002", 1, "2026-03-02T10:00:00Z")])
            let calendar = Self.utc
            let settings = engine.settings
            let heldJanuary = try await engine.withReadStore { store in
                (
                    store.heldFromMonth,
                    store.figures(
                        first: january.0, last: january.1, region: nil, calendar: calendar, nowMs: Self.nowMs, intervals: settings.readIntervals)
                )
            }
            #expect(heldJanuary.0 == 202404)
            #expect(heldJanuary.1 == nil)

            // Every answer still agrees with the store's rows, the old month's (from the store) and
            // the new (from memory); and a store loaded afresh holds the same months.
            for engine in [engine, KPIEngine(store: store, settings: KPISettings())] {
                for (from, through) in [january, march, (january.0, march.1)] {
                    let held = try await engine.readSuccess(from: from, through: through, region: nil, nowMs: Self.nowMs)
                    let direct = ReadSuccess(
                        facts: try await store.readDays(from: from, through: through, region: nil), first: from, last: through,
                        calendar: Self.utc, nowMs: Self.nowMs, intervals: settings.readIntervals, listLimit: settings.completenessListLimit)
                    #expect(held == direct, "\(from)...\(through)")
                }
                let old = try await engine.readSuccess(from: january.0, through: january.1, region: nil, nowMs: Self.nowMs)
                #expect(old.lowestCompleteness.first { $0.meter == "MTR-000001" }?.readings == 2)
                // The day's rate comes from the per-day counts, held for every day.
                #expect(
                    try await engine.readSuccessByRegion(on: Day("2023-01-10")!, nowMs: Self.nowMs) == [
                        .init(region: "North", installed: 1, reporting: 1), .init(region: "South", installed: 1, reporting: 0),
                    ])
            }
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
    private let readLoads = NIOLockedValueBox(0)
    /// Set once the first monthly snapshot was read and `afterMonthly` committed: the two loads run
    /// side by side, and the first read facts' load waits for it to keep the interleaving above.
    private let monthlyDone = NIOLockedValueBox(false)

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
            self.monthlyDone.withLockedValue { $0 = true }
        }
        return store
    }
    func loadReadDayStore(months: ClosedRange<Month>?) async throws -> sending ReadDayStore {
        let first = self.readLoads.withLockedValue {
            $0 += 1
            return $0 == 1
        }
        if first {
            while !self.monthlyDone.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(1)) }
        }
        let store = try await self.base.loadReadDayStore(months: months)
        if first { try self.afterReadDays() }
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
