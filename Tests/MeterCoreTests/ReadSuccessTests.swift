import Foundation
import GRDB
import Testing

@testable import MeterCore

/// The read success rate and interval completeness (SPEC.md section 11, issue 16 point 4): the
/// rules over hand-built facts, and the writer's per-meter per-day presence over real SQLite files,
/// across a crash and the migration's backfill.
@Suite(.timeLimit(.minutes(1)))
struct ReadSuccessTests {
    static let hour: Int64 = 3_600_000
    static let utc = MonthCalendar(timeZone: TimeZone(identifier: "UTC")!)

    static func ms(_ text: String) -> Int64 { RFC3339.parseMilliseconds(text)! }

    /// Three meters over 1–3 March 2026 (UTC). meterd received its first reading at 06:00 on the
    /// 1st and its latest at 12:00 on the 3rd, so completeness judges 18, 24 and 12 hours of them.
    /// - A (North, installed in February) reports hourly: 18, 24 and 6 readings.
    /// - B (North) is installed on the 2nd and reports once that day.
    /// - C (South, installed in January) never reports.
    static let facts = ReadDayFacts(
        firstReceivedMs: ms("2026-03-01T06:00:00Z"), lastReceivedMs: ms("2026-03-03T12:00:00Z"),
        meters: [
            .init(id: 1, name: "MTR-A", customerID: 1, region: "North", installedOn: Day("2026-02-01")!),
            .init(id: 2, name: "MTR-B", customerID: 2, region: "North", installedOn: Day("2026-03-02")!),
            .init(id: 3, name: "MTR-C", customerID: 3, region: "South", installedOn: Day("2026-01-01")!),
        ],
        days: [
            .init(meterID: 1, day: Day("2026-03-01")!, readings: 18, spacingSumMs: 17 * hour, spacingCount: 17),
            .init(meterID: 1, day: Day("2026-03-02")!, readings: 24, spacingSumMs: 24 * hour, spacingCount: 24),
            .init(meterID: 1, day: Day("2026-03-03")!, readings: 6, spacingSumMs: 6 * hour, spacingCount: 6),
            .init(meterID: 2, day: Day("2026-03-02")!, readings: 1),
        ])

    @Test func dailyRatesAveragedOverTheJudgedDays() {
        // Asked for all of February and March: only 1–3 March are judged.
        let figures = ReadSuccess(
            facts: Self.facts, first: Day("2026-02-01")!, last: Day("2026-03-31")!, calendar: Self.utc,
            nowMs: Self.ms("2026-03-03T12:00:00Z"), intervals: .init())
        // 1st: A of A, C; 2nd: A, B of A, B, C; 3rd: A of A, B, C.
        #expect(figures.daily.map(\.day.description) == ["2026-03-01", "2026-03-02", "2026-03-03"])
        #expect(figures.daily.map(\.installed) == [2, 3, 3])
        #expect(figures.daily.map(\.reporting) == [1, 2, 1])
        let rates: [Double?] = [0.5, 2.0 / 3, 1.0 / 3]
        #expect(figures.daily.map(\.rate) == rates)
        #expect(abs(figures.rate! - 0.5) < 1e-12)
        // North: 1/1, 2/2, 1/2; South: 0/1 each day.
        #expect(figures.byRegion.map(\.region) == ["North", "South"])
        #expect(abs(figures.byRegion[0].rate! - 2.5 / 3) < 1e-12)
        #expect(figures.byRegion[1].rate == 0)
        #expect(figures.byRegion[0].days.map(\.installed) == [1, 2, 2])
    }

    @Test func completenessUsesTheObservedIntervalElseTheFallback() throws {
        let figures = ReadSuccess(
            facts: Self.facts, first: Day("2026-03-01")!, last: Day("2026-03-03")!, calendar: Self.utc,
            nowMs: Self.ms("2026-03-03T12:00:00Z"), intervals: .init(configuredMs: nil, fallbackMs: 900_000))
        // Judged time: A and C 18 + 24 + 12 = 54 hours, B (installed on the 2nd) 24 + 12 = 36.
        // A: hourly observed (47 spacings of an hour in March); 48 readings cover 48 of 54 hours.
        // B: no spacing, 15 minutes: one reading covers a quarter of an hour of 36. C: 15 minutes,
        // nothing of 54 hours.
        let byName = Dictionary(uniqueKeysWithValues: figures.lowestCompleteness.map { ($0.meter, $0) })
        let a = try #require(byName["MTR-A"])
        #expect(a.intervalMs == Self.hour)
        #expect(abs(a.completeness - 48.0 / 54) < 1e-12)
        #expect(a.readings == 48)
        #expect(a.expectedReadings == 54)
        let b = try #require(byName["MTR-B"])
        #expect(b.intervalMs == 900_000)
        #expect(abs(b.completeness - 0.25 / 36) < 1e-12)
        #expect(b.expectedReadings == 144)
        let c = try #require(byName["MTR-C"])
        #expect(c.completeness == 0)
        #expect(c.expectedReadings == 216)
        #expect(figures.lowestCompleteness.map(\.meter) == ["MTR-C", "MTR-B", "MTR-A"])
        // Covered hours of judged hours, all meters: (48 + 0.25 + 0) of (54 + 36 + 54).
        #expect(abs(figures.completeness! - 48.25 / 144) < 1e-12)

        // A configured interval of two hours applies to every meter; a month covers at most its
        // judged time: A's 48 readings would cover 96 hours of 54.
        let configured = ReadSuccess(
            facts: Self.facts, first: Day("2026-03-01")!, last: Day("2026-03-03")!, calendar: Self.utc,
            nowMs: Self.ms("2026-03-03T12:00:00Z"), intervals: .init(configuredMs: 2 * Self.hour, fallbackMs: 900_000),
            listLimit: 2)
        #expect(configured.lowestCompleteness.map(\.meter) == ["MTR-C", "MTR-B"])
        #expect(abs(configured.lowestCompleteness[1].completeness - 2.0 / 36) < 1e-12)
        #expect(abs(configured.completeness! - (54 + 2.0) / 144) < 1e-12)
    }

    /// Completeness is judged per month: a month covers at most its own judged time, and the
    /// observed interval is the median of the months' mean spacings.
    @Test func completenessIsCappedPerMonthWithTheMedianOfMonthlySpacings() throws {
        // meterd received from 00:00 on 30 January to 00:00 on 2 March: 2 days of January, 28 of
        // February and 1 of March are judged (the days after have no judged part).
        let jan30 = Day("2026-01-30")!
        let facts = ReadDayFacts(
            firstReceivedMs: Self.ms("2026-01-30T00:00:00Z"), lastReceivedMs: Self.ms("2026-03-02T00:00:00Z"),
            meters: [.init(id: 1, name: "MTR-X", customerID: nil, region: "North", installedOn: Day("2025-12-01")!)],
            days: [
                // January: 96 readings over two days at 30 minutes (mean spacing 30 minutes).
                .init(meterID: 1, day: jan30, readings: 96, spacingSumMs: 95 * Self.hour / 2, spacingCount: 95),
                // February: 300 readings at a mean of 2 hours (a day's outage inflates it).
                .init(meterID: 1, day: Day("2026-02-10")!, readings: 300, spacingSumMs: 600 * Self.hour, spacingCount: 300),
                // March: 10 readings an hour apart on the 1st.
                .init(meterID: 1, day: Day("2026-03-01")!, readings: 10, spacingSumMs: 10 * Self.hour, spacingCount: 10),
            ])
        let figures = ReadSuccess(
            facts: facts, first: Day("2026-01-01")!, last: Day("2026-03-31")!, calendar: Self.utc,
            nowMs: Self.ms("2026-03-05T00:00:00Z"), intervals: .init())
        let x = try #require(figures.lowestCompleteness.first)
        // Judged months: January (48 h), February (672 h), March (the 1st, 24 h: the latest receipt
        // ends it). Monthly mean spacings 0.5, 2 and 1 hour: the median is 1 hour.
        #expect(x.intervalMs == Self.hour)
        // January's 96 readings would cover 96 hours: at most its 48. February's 300 cover 300 of
        // 672. March's 10 cover 10 of 24.
        #expect(x.readings == 406)
        #expect(x.expectedReadings == 744)
        #expect(abs(x.completeness - (48.0 + 300 + 10) / 744) < 1e-12)
        #expect(abs(figures.completeness! - 358.0 / 744) < 1e-12)
    }

    @Test func nothingIsJudgedBeforeTheFirstReadingOrAfterToday() {
        let none = ReadSuccess(
            facts: ReadDayFacts(firstReceivedMs: nil, lastReceivedMs: nil, meters: Self.facts.meters, days: []), first: Day("2026-03-01")!,
            last: Day("2026-03-31")!, calendar: Self.utc, nowMs: Self.ms("2026-03-03T12:00:00Z"), intervals: .init())
        #expect(none.daily.isEmpty && none.rate == nil && none.completeness == nil && none.byRegion.isEmpty)
        let before = ReadSuccess(
            facts: Self.facts, first: Day("2026-02-01")!, last: Day("2026-02-28")!, calendar: Self.utc,
            nowMs: Self.ms("2026-03-03T12:00:00Z"), intervals: .init())
        #expect(before.daily.isEmpty && before.rate == nil)

        // A day later nothing has arrived: the 4th is judged for the rate (no meter reported), not
        // for completeness (meterd received nothing of it), so completeness holds still.
        let silent = ReadSuccess(
            facts: Self.facts, first: Day("2026-03-01")!, last: Day("2026-03-31")!, calendar: Self.utc,
            nowMs: Self.ms("2026-03-04T09:00:00Z"), intervals: .init())
        #expect(silent.daily.map(\.reporting) == [1, 2, 1, 0])
        #expect(silent.daily.last?.rate == 0)
        #expect(abs(silent.rate! - 1.5 / 4) < 1e-12)
        #expect(abs(silent.completeness! - 48.25 / 144) < 1e-12)
    }

    // MARK: The writer's days, over SQLite

    /// Two customers in Berlin's zone; readings on both sides of a local midnight.
    static func writeCompany(_ directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2026-02-20", "2,South,2026-03-02"])
    }

    /// Meter 1 reads at 22:30Z and 23:30Z on 1 March (23:30 and 00:30 in Berlin: the 1st and the
    /// 2nd there) and at 10:00Z on the 3rd; an unknown meter reads once on the 2nd; meter 2 never.
    static let readings: [(meter: String, seq: Int64, ts: String)] = [
        ("MTR-000001", 1, "2026-03-01T22:30:00Z"), ("MTR-000001", 2, "2026-03-01T23:30:00Z"),
        ("MTR-000001", 3, "2026-03-03T10:00:00Z"), ("MTR-NEW", 1, "2026-03-02T12:00:00Z"),
    ]

    static func submission(_ entries: some Sequence<(meter: String, seq: Int64, ts: String)>) -> [IngestSubmission] {
        [
            IngestSubmission(
                readings: entries.enumerated().map { index, entry in
                    SubmittedReading(
                        reading: Reading(meter: entry.meter, seq: entry.seq, timestampMs: ms(entry.ts), kwh: 0.5), line: index + 1,
                        receivedMs: ms(entry.ts) + 1_000)
                }, receiver: nil)
        ]
    }

    static func dayRows(_ database: MeterDatabase) throws -> [String] {
        try database.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT day, meter_id, readings, spacing_sum_ms, spacing_count FROM meter_day ORDER BY day, meter_id")
                .map { "\($0[0] as Int) \($0[1] as Int64) \($0[2] as Int) \($0[3] as Int64) \($0[4] as Int)" }
        }
    }

    static func firstDays(_ database: MeterDatabase) throws -> [String?] {
        try database.pool.read { db in try Int?.fetchAll(db, sql: "SELECT first_reading_day FROM meter ORDER BY id").map { $0.map(String.init) } }
    }

    static let berlin = WriterSettings(timeZone: TimeZone(identifier: "Europe/Berlin")!)

    /// The rows hand-computed from ``readings`` in Berlin's zone.
    static let expectedRows = [
        "20260301 1 1 0 0",
        "20260302 1 1 \(hour) 1",
        "20260302 3 1 0 0",
        "20260303 1 1 \(ms("2026-03-03T10:00:00Z") - ms("2026-03-01T23:30:00Z")) 1",
    ]

    @Test func theWriterKeepsReadingsPerMeterPerDayOfTheZone() async throws {
        try await withTemporaryDirectory { directory in
            try Self.writeCompany(directory + "/csv")
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            _ = try CompanyImporter.importDirectory(directory + "/csv", database: database)
            let writer = try SQLiteMeterStore(database: database).makeWriter(Self.berlin)
            // Two commits: the second's days add to the first's rows.
            _ = try writer.commit(Self.submission(Self.readings.prefix(1)))
            _ = try writer.commit(Self.submission(Self.readings.dropFirst()))
            #expect(try Self.dayRows(database) == Self.expectedRows)
            #expect(try Self.firstDays(database) == ["20260301", nil, "20260302"])

            // Judged from the first receipt (23:30 Berlin on the 1st) to noon UTC on the 3rd. Installed: meter 1 (its
            // customer's date), meter 2 from the 2nd, the unknown meter from its first reading.
            let engine = offlineEngine(database, timeZone: "Europe/Berlin")
            let figures = try await engine.readSuccess(
                from: Day("2026-03-01")!, through: Day("2026-03-31")!, region: nil, nowMs: Self.ms("2026-03-03T12:00:00Z"))
            #expect(figures.daily.map(\.day.description) == ["2026-03-01", "2026-03-02", "2026-03-03"])
            #expect(figures.daily.map(\.installed) == [1, 3, 3])
            #expect(figures.daily.map(\.reporting) == [1, 2, 1])
            #expect(figures.byRegion.map(\.region) == ["North", "South", Region.unassigned])
            let south = try await engine.readSuccess(
                from: Day("2026-03-01")!, through: Day("2026-03-31")!, region: "South", nowMs: Self.ms("2026-03-03T12:00:00Z"))
            #expect(south.daily.map(\.installed) == [0, 1, 1])
            let southRates: [Double?] = [nil, 0, 0]
            #expect(south.daily.map(\.rate) == southRates)
            #expect(south.rate == 0)

            // The alert rule's figure: each region on one day.
            let second = try await engine.readSuccessByRegion(on: Day("2026-03-02")!, nowMs: Self.ms("2026-03-03T12:00:00Z"))
            #expect(
                second == [
                    .init(region: "North", installed: 1, reporting: 1), .init(region: "South", installed: 1, reporting: 0),
                    .init(region: Region.unassigned, installed: 1, reporting: 1),
                ])
            #expect(try await engine.readSuccessByRegion(on: Day("2026-03-04")!, nowMs: Self.ms("2026-03-03T12:00:00Z")).isEmpty)
        }
    }

    /// Today's rate in `/metrics` and the period's in `meterctl kpi`'s tables, over a pipeline: three
    /// customers installed long ago (two North, one South); one North meter reports now.
    @Test func metricsAndTheTextReportShowTheRates() async throws {
        try await withTemporaryDirectory { directory in
            try FileManager.default.createDirectory(atPath: directory + "/csv", withIntermediateDirectories: true)
            try writeCSV(
                directory + "/csv", "customer_data.csv",
                ["CustomerID,Region,InstallationDate", "1,North,2025-01-01", "2,North,2025-01-01", "3,South,2025-01-01"])
            try await IngestHarness.with(directory: directory) { harness in
                let report = try await CompanyImporter.importDirectory(directory + "/csv", through: .pipeline(harness.pipeline))
                #expect(report.succeeded, "\(report.text)")
                let nowMs = WallClock.nowMs()
                _ = try await harness.pipeline.perform { writer in
                    try writer.commit([
                        IngestSubmission(
                            readings: [
                                SubmittedReading(
                                    reading: Reading(meter: "MTR-000001", seq: 1, timestampMs: nowMs - 1_000, kwh: 0.5), line: 1, receivedMs: nowMs)
                            ], receiver: nil)
                    ])
                }
                let queries = try await makeOperatorQueries(store: harness.store, writer: .pipeline(harness.pipeline), directory: directory)
                let reporter = StatusReporter(pipeline: harness.pipeline, store: harness.store, queries: queries)
                let body = await DaemonMetrics().scrape(reporter: reporter, nowMs: nowMs)
                // One of three installed meters today; North one of two, South none.
                #expect(MetricsTests.sample(body, "meterd_read_success_rate") == 1.0 / 3)
                #expect(MetricsTests.sample(body, #"meterd_region_read_success_rate{region="North"}"#) == 0.5)
                #expect(MetricsTests.sample(body, #"meterd_region_read_success_rate{region="South"}"#) == 0)
                #expect(body.contains("# HELP meterd_read_success_rate "))

                // meterctl kpi's tables: the same rates in percent, the worst region first.
                let text = KPITextReport.render(try await queries.kpi(from: nil, to: nil, region: nil))
                #expect(text.contains("read success rate over the period (%)  33.33"))
                let regions = try #require(text.range(of: "Read success by region, worst first\n"))
                let table = text[regions.upperBound...].split(separator: "\n").prefix(4).map { $0.split(separator: " ").map(String.init) }
                #expect(table.dropFirst(2).map { $0 } == [["South", "0.00"], ["North", "50.00"]])
                #expect(text.contains("Lowest interval completeness"))
            }
        }
    }

    @Test func crashRecoveryAndTheBackfillRebuildTheSameDays() async throws {
        try await withTemporaryDirectory { directory in
            try Self.writeCompany(directory + "/csv")
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            _ = try CompanyImporter.importDirectory(directory + "/csv", database: database)
            do {
                // The readings commit, their aggregates wait in memory; the process dies before a flush.
                let writer = try SQLiteMeterStore(database: database).makeWriter(Self.berlin)
                _ = try writer.commit(Self.submission(Self.readings.prefix(2)), deferAggregates: false)
                _ = try writer.commit(Self.submission(Self.readings.dropFirst(2)), deferAggregates: true)
                #expect(try Self.dayRows(database) == Array(Self.expectedRows.prefix(2)))
            }
            // On open the writer folds the readings past the watermark again.
            _ = try SQLiteMeterStore(database: database).makeWriter(Self.berlin)
            #expect(try Self.dayRows(database) == Self.expectedRows)
            #expect(try Self.firstDays(database) == ["20260301", nil, "20260302"])
            try await ReadDayStoreTests.expectRollupsFollowDays(database)

            // A database from before v9-read-success: no days yet, and the backfill flag the migration sets.
            try await database.pool.write { db in
                try db.execute(sql: "DELETE FROM meter_day; UPDATE meter SET first_reading_day = NULL")
                try db.execute(sql: "INSERT INTO store_setting (name, value) VALUES ('read_days_backfill', '1')")
            }
            _ = try SQLiteMeterStore(database: database).makeWriter(Self.berlin)
            #expect(try Self.dayRows(database) == Self.expectedRows)
            #expect(try Self.firstDays(database) == ["20260301", nil, "20260302"])
            let flag = try await database.pool.read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM store_setting WHERE name = 'read_days_backfill'")
            }
            #expect(flag == 0)
            try await ReadDayStoreTests.expectRollupsFollowDays(database)
            // Opening again changes nothing.
            _ = try SQLiteMeterStore(database: database).makeWriter(Self.berlin)
            #expect(try Self.dayRows(database) == Self.expectedRows)
        }
    }
}
