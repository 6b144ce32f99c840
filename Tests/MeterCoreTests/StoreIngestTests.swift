import Foundation
import GRDB
import NIOCore
import PostgresNIO
import Synchronization
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// The writer's guarantees (SPEC.md section 2) through the store boundary, on every backend:
/// the same tests, asserting through ``MeterStore`` reads, against SQLite and PostgreSQL.
@Suite struct StoreIngestTests {
    static let utc = TimeZone(identifier: "UTC")!

    func submission(_ readings: [Reading], receivedMs: Int64 = WallClock.nowMs()) -> IngestSubmission {
        IngestSubmission(
            readings: readings.enumerated().map { SubmittedReading(reading: $1, line: $0 + 1, receivedMs: receivedMs) },
            receiver: nil)
    }

    func open(_ location: StoreLocation) throws -> any MeterStore {
        try location.open(logger: testLogger)
    }

    /// Every reading the store keeps of a meter.
    func storedReadings(_ store: any MeterStore, meter: String) async throws -> [StoredReading] {
        try #require(try await store.recentReadings(meter: meter, limit: 10_000)).readings
    }

    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func storesAReadingOnceHoweverOftenItIsResent(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            // Given a stored reading
            let store = try self.open(location)
            var writer = try store.makeWriter(WriterSettings())
            let first = Reading(meter: "MTR-1", seq: 1, timestampMs: 1_795_947_300_000, kwh: 0.5)
            let second = Reading(meter: "MTR-1", seq: 2, timestampMs: 1_795_947_360_000, kwh: 0.25)
            var result = try writer.commit([self.submission([first, second])])
            #expect(result.stored == 2)
            #expect(result.outcomes[0].acks.map(\.seq) == [2])

            // When it is resent in the same batch, a later batch, and after a restart
            result = try writer.commit([self.submission([first]), self.submission([second, second])])
            #expect(result.stored == 0)
            #expect(result.duplicates == 3)
            #expect(result.outcomes.map { $0.acks.map(\.seq) } == [[1], [2]])
            writer = try self.open(location).makeWriter(WriterSettings())
            result = try writer.commit([self.submission([first, second])])
            #expect(result.duplicates == 2)

            // Then it is stored, aggregated and counted once
            let readings = try await self.storedReadings(store, meter: "MTR-1")
            #expect(readings.count == 2)
            #expect(readings.map(\.kwh).reduce(0, +) == 0.75)
            #expect(try await store.meterMonths(named: "MTR-1").map(\.kwh).reduce(0, +) == 0.75)
            let meter = try #require(try await store.meterRecord(named: "MTR-1"))
            #expect(meter.duplicatesTotal == 5)
            #expect(meter.readingsTotal == 2)
            #expect(meter.highWaterMark == 2)
        }
    }

    /// Records the deltas the writer hands its commit listener.
    final class DeltaRecorder: CommitListener, @unchecked Sendable {
        var deltas: [AggregateDelta] = []
        func didCommit(_ delta: AggregateDelta) { self.deltas.append(delta) }
    }

    /// The read success rate counts reporting meters per day from the meter-days a commit starts:
    /// a meter's first reading of a day starts one, later readings of that day (in the same commit or
    /// a later one, or after a restart) do not, and a reading of another day starts that day.
    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func aMetersFirstReadingOfADayStartsThatDayOnce(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let store = try self.open(location)
            let recorder = DeltaRecorder()
            var writer = try store.makeWriter(WriterSettings())
            writer.commitListener = recorder
            let ts = RFC3339.parseMilliseconds("2026-11-10T12:00:00Z")!
            let day = Day(year: 2026, month: 11, day: 10)
            _ = try writer.commit([
                self.submission([
                    Reading(meter: "A", seq: 1, timestampMs: ts, kwh: 1), Reading(meter: "A", seq: 2, timestampMs: ts + 60_000, kwh: 1),
                    Reading(meter: "B", seq: 1, timestampMs: ts, kwh: 1),
                ])
            ])
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 3, timestampMs: ts + 120_000, kwh: 1)])])
            writer = try self.open(location).makeWriter(WriterSettings())
            writer.commitListener = recorder
            _ = try writer.commit([
                self.submission([
                    Reading(meter: "B", seq: 2, timestampMs: ts + 60_000, kwh: 1),
                    Reading(meter: "B", seq: 3, timestampMs: ts + 86_400_000, kwh: 1),
                ])
            ])
            let idA = try #require(try await store.meterRecord(named: "A")).id
            let idB = try #require(try await store.meterRecord(named: "B")).id
            let started = recorder.deltas.map { Set($0.startedDays) }
            #expect(
                started == [
                    [.init(meterID: idA, day: day), .init(meterID: idB, day: day)], [],
                    [.init(meterID: idB, day: Day(year: 2026, month: 11, day: 11))],
                ])
        }
    }

    /// The read success facts a store loads for the daemon (per region-day counts and per
    /// meter-month sums, kept or folded by the store) judge as the store's `meter_day` rows do,
    /// on both stores, after an import moved a meter to another region.
    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func theLoadedReadSuccessFactsJudgeAsTheStoredDays(backend: StoreBackend) async throws {
        try await withTemporaryDirectory { directory in
            func company(secondRegion: String) throws {
                try writeCSV(
                    directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2026-10-20", "2,\(secondRegion),2026-11-02"])
            }
            try company(secondRegion: "South")
            try await backend.withFreshStore { location in
                let store = try self.open(location)
                let writer = try store.makeWriter(WriterSettings())
                #expect(try CompanyImporter.importDirectory(directory, into: writer).succeeded)
                let start = RFC3339.parseMilliseconds("2026-11-01T00:30:00Z")!
                // Meter 1 every 15 min for three days but a gap on the 2nd, meter 2 hourly from the 2nd,
                // an unknown meter on the 3rd; a late reading of meter 2 on the 1st.
                var readings: [Reading] = []
                for step in 0..<(3 * 96) where !(110..<150).contains(step) {
                    readings.append(Reading(meter: "MTR-000001", seq: Int64(step + 1), timestampMs: start + Int64(step) * 900_000, kwh: 0.1))
                }
                for hour in 0..<40 {
                    readings.append(
                        Reading(meter: "MTR-000002", seq: Int64(hour + 2), timestampMs: start + 86_400_000 + Int64(hour) * 3_600_000, kwh: 0.2))
                }
                readings.append(Reading(meter: "MTR-NEW", seq: 1, timestampMs: start + 2 * 86_400_000 + 3_600_000, kwh: 0.3))
                // A commit a day, received as the day's last reading was taken; then the late one.
                for day in 0..<4 {
                    let chunk = readings.filter { ($0.timestampMs - start + 1_800_000) / 86_400_000 == day }
                    _ = try writer.commit([self.submission(chunk, receivedMs: chunk.map(\.timestampMs).max()! + 1_000)])
                }
                _ = try writer.commit([
                    self.submission(
                        [Reading(meter: "MTR-000002", seq: 100, timestampMs: start + 7_200_000, kwh: 0.2)],
                        receivedMs: start + 3 * 86_400_000 - 60_000)
                ])

                let first = Day(year: 2026, month: 11, day: 1)
                let last = Day(year: 2026, month: 11, day: 30)
                let nowMs = start + 3 * 86_400_000
                let calendar = MonthCalendar(timeZone: Self.utc)
                for secondRegion in ["South", "North"] {
                    if secondRegion == "North" {
                        try company(secondRegion: "North")
                        #expect(try CompanyImporter.importDirectory(directory, into: writer).succeeded)
                    }
                    // A fresh engine loads what the store keeps.
                    let engine = KPIEngine(store: store, settings: KPISettings())
                    for region in [nil, "North", "South", Region.unassigned] as [String?] {
                        let loaded = try await engine.readSuccess(from: first, through: last, region: region, nowMs: nowMs)
                        let direct = ReadSuccess(
                            facts: try await store.readDays(from: first, through: last, region: region), first: first, last: last,
                            calendar: calendar, nowMs: nowMs, intervals: engine.settings.readIntervals,
                            listLimit: engine.settings.completenessListLimit)
                        #expect(loaded == direct, "\(backend) \(secondRegion) \(region ?? "all")")
                        // The store a period before the held months is judged from: its own months only.
                        let period = try await store.loadReadDayStore(months: first.month...last.month).figures(
                            first: first, last: last, region: region, calendar: calendar, nowMs: nowMs, intervals: engine.settings.readIntervals,
                            listLimit: engine.settings.completenessListLimit)
                        #expect(period == direct, "\(backend) \(secondRegion) \(region ?? "all")")
                        // (The South has no meter left once meter 2 moved.)
                        #expect((loaded.completeness != nil) == (region != "South" || secondRegion == "South"), "\(backend) \(region ?? "all")")
                    }
                    let north = try await engine.readSuccess(from: first, through: last, region: "North", nowMs: nowMs)
                    #expect(north.daily.map(\.reporting) == (secondRegion == "North" ? [2, 2, 2, 1] : [1, 1, 1, 1]), "\(backend)")
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func keepsMonthlyAggregatesWithTariffStatusFaultsAndLatency(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let tariff = Tariff(defaultRate: 0.2, regionRates: ["North": 0.1])
            let store = try self.open(location)
            let writer = try store.makeWriter(WriterSettings(tariff: tariff))
            let ts = RFC3339.parseMilliseconds("2026-11-10T12:00:00Z")!
            _ = try writer.commit([
                self.submission(
                    [
                        Reading(meter: "A", seq: 1, timestampMs: ts, kwh: 1.0, status: .good),
                        Reading(meter: "A", seq: 2, timestampMs: ts + 1000, kwh: 2.0, status: .poor, fault: "tamper"),
                        Reading(meter: "A", seq: 3, timestampMs: ts + 2000, kwh: 3.0, status: .poor),
                        Reading(meter: "A", seq: 4, timestampMs: ts + 3000, kwh: 4.0, status: .fair, fault: "voltage_sag"),
                    ], receivedMs: ts + 5000)
            ])
            let months = try await store.meterMonths(named: "A")
            let month = try #require(months.first)
            #expect(months.count == 1)
            #expect(month.month == Month(year: 2026, month: 11))
            #expect(month.kwh == 10.0)
            #expect(abs(month.revenue - 2.0) < 1e-9)  // unassigned meters pay the default rate
            #expect(month.readings == 4)
            #expect(month.faults == 2)
            #expect([month.good, month.fair, month.poor] == [1, 1, 2])
            #expect(month.latencySumMs == 5000 + 4000 + 3000 + 2000)
            #expect(month.latencyCount == 4)
            #expect(month.latencyMaxMs == 5000)
            let meter = try #require(try await store.meterRecord(named: "A"))
            #expect(meter.highWaterMark == 4)
            #expect(meter.lastStatus == .fair)
            #expect(meter.lastFault == "voltage_sag")
            #expect(meter.faultsTotal == 2)
            #expect(meter.region == "Unassigned")
            #expect(meter.lastTimestampMs == ts + 3000)
            #expect(meter.lastReceivedMs == ts + 5000)
            let latency = try await store.latencyBuckets(from: Month(year: 2026, month: 11), to: Month(year: 2026, month: 11), region: nil)
            #expect(latency.map(\.count).reduce(0, +) == 4)
            #expect(latency.map(\.sumMs).reduce(0, +) == 14_000)
        }
    }

    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func aLateReadingLandsInTheMonthOfItsTimestamp(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let store = try self.open(location)
            let writer = try store.makeWriter(WriterSettings())
            let november = RFC3339.parseMilliseconds("2026-11-29T10:00:00Z")!
            let october = RFC3339.parseMilliseconds("2026-10-31T23:59:59.999Z")!
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 1, timestampMs: november, kwh: 1)], receivedMs: november)])
            // Received in November, measured in October: October's aggregate takes it.
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 2, timestampMs: october, kwh: 2)], receivedMs: november + 60_000)])
            let months = try await store.meterMonths(named: "A").map { [$0.month.key: $0.kwh] }
            #expect(months == [[202610: 2.0], [202611: 1.0]])
            // A reading years late is kept too (PostgreSQL: in the default partition).
            _ = try writer.commit([
                self.submission([Reading(meter: "A", seq: 3, timestampMs: october - 3 * 365 * 86_400_000, kwh: 4)], receivedMs: november + 120_000)
            ])
            #expect(try await self.storedReadings(store, meter: "A").count == 3)
            #expect(try await store.meterMonths(named: "A").count == 3)
        }
    }

    /// Issue 13 point 8: on PostgreSQL a meter's newest month and day are summed in its own row
    /// (migration `v7-open-periods-in-meter-rows`) and move to `meter_month` and `meter_day` when a
    /// newer one starts; late readings of closed periods go to those tables directly. Whatever the
    /// path, both stores answer with the sums of the readings, and every meter-day is started once.
    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func openMonthsAndDaysMoveOutWhenANewOneStartsAndLateReadingsFindTheirPeriod(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let store = try self.open(location)
            let writer = try store.makeWriter(WriterSettings())
            func at(_ time: String) throws -> Int64 { try #require(RFC3339.parseMilliseconds(time)) }
            func commit(_ readings: [(meter: String, seq: Int64, time: String)]) throws {
                let batch = try readings.map { Reading(meter: $0.meter, seq: $0.seq, timestampMs: try at($0.time), kwh: Double($0.seq)) }
                _ = try writer.commit([self.submission(batch, receivedMs: try at("2026-12-01T12:00:00Z"))])
            }
            try commit([("A", 1, "2026-11-10T10:00:00Z"), ("B", 1, "2026-11-10T10:00:00Z")])
            try commit([("A", 2, "2026-11-10T11:00:00Z")])
            try commit([("A", 3, "2026-11-10T12:00:00Z")])
            try commit([("A", 4, "2026-11-10T13:00:00Z")])
            let steadyTableRows = try await self.periodTableRows(store)
            try commit([("A", 5, "2026-11-11T09:00:00Z")])  // A's next day
            try commit([("A", 6, "2026-11-10T23:00:00Z")])  // late, its month still open
            try commit([("A", 7, "2026-11-11T10:00:00Z"), ("A", 8, "2026-11-12T08:00:00Z")])  // two days, the newer one opens
            try commit([("A", 9, "2026-12-01T00:30:00Z")])  // a new month and day
            try commit([("A", 10, "2026-11-20T12:00:00Z")])  // late, of a closed month and a day never seen
            try commit([("B", 2, "2026-11-10T11:00:00Z")])

            let months = try await store.meterMonths(named: "A").map { [$0.month.key: [$0.readings, Int64($0.kwh)]] }
            #expect(months == [[202611: [9, 46]], [202612: [1, 9]]])
            #expect(try await store.meterMonths(named: "B").map { [$0.month.key: [$0.readings, Int64($0.kwh)]] } == [[202611: [2, 3]]])
            let facts = try await store.readDays(from: Day(key: 20_261_101), through: Day(key: 20_261_231), region: nil)
            let names = Dictionary(uniqueKeysWithValues: facts.meters.map { ($0.id, $0.name) })
            let days = Set(facts.days.map { "\(names[$0.meterID] ?? "?") \($0.day.key) \($0.readings)" })
            #expect(
                days == [
                    "A 20261110 5", "A 20261111 2", "A 20261112 1", "A 20261120 1", "A 20261201 1", "B 20261110 2",
                ])

            guard let postgres = store as? PostgreSQLMeterStore else { return }
            // On PostgreSQL, commits within a meter's open day and month wrote no row of either table
            #expect(steadyTableRows == [0, 0])
            // and the closed periods are rows now, the open ones (A's December, B's November) are not
            #expect(try await self.periodTableRows(store) == [1, 4])
            #expect(
                try await postgres.firstColumnText("SELECT meter_id || ' ' || month || ' ' || readings FROM meter_month")
                    == ["1 202611 9"])
            // Every meter-day was started once, whichever path started it (the commit feed's rows)
            #expect(try await postgres.firstColumnText("SELECT sum(cardinality(started_days))::text FROM commit_feed") == ["6"])
        }
    }

    /// A database migrated to v7 keeps its `meter_month` and `meter_day` rows, and its meters start
    /// with no open periods: the period a meter then opens may have a row already. The views add
    /// both, moving the open sums out adds to the row, and a day with a row is not started again.
    @Test(.timeLimit(.minutes(2)))
    func rowsWrittenBeforeOpenPeriodsAreAddedToNotCountedAgain() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        func commit(_ writer: any MeterStoreWriter, seq: Int64, _ time: String) throws {
            let reading = Reading(meter: "A", seq: seq, timestampMs: try #require(RFC3339.parseMilliseconds(time)), kwh: Double(seq))
            _ = try writer.commit([self.submission([reading], receivedMs: WallClock.nowMs())])
        }
        try commit(try store.makeWriter(WriterSettings()), seq: 1, "2026-11-10T10:00:00Z")
        // The state v7 finds: the sums in the tables, none in the meter row
        _ = try await store.firstColumnText(
            """
            WITH m AS (INSERT INTO meter_month (meter_id, month, kwh, revenue, readings, faults, good, fair, poor, latency_sum_ms,
                                                latency_count, latency_max_ms, estimated, estimated_kwh)
                       SELECT id, open_month, open_kwh, open_revenue, open_readings, open_faults, open_good, open_fair, open_poor,
                              open_latency_sum_ms, open_latency_count, open_latency_max_ms, open_estimated, open_estimated_kwh FROM meter),
                 d AS (INSERT INTO meter_day (day, meter_id, readings, spacing_sum_ms, spacing_count)
                       SELECT open_day, id, open_day_readings, open_day_spacing_sum_ms, open_day_spacing_count FROM meter)
            UPDATE meter SET open_month = NULL, open_kwh = 0, open_revenue = 0, open_readings = 0, open_faults = 0, open_good = 0,
                             open_fair = 0, open_poor = 0, open_latency_sum_ms = 0, open_latency_count = 0, open_latency_max_ms = 0,
                             open_estimated = 0, open_estimated_kwh = 0, open_day = NULL, open_day_readings = 0,
                             open_day_spacing_sum_ms = 0, open_day_spacing_count = 0
            RETURNING name
            """)
        #expect(try await store.meterMonths(named: "A").map { [$0.readings, Int64($0.kwh)] } == [[1, 1]])

        // When a writer that loaded that state commits the same day again, then the next day
        let writer = try store.makeWriter(WriterSettings())
        try commit(writer, seq: 2, "2026-11-10T11:00:00Z")
        #expect(try await store.meterMonths(named: "A").map { [$0.readings, Int64($0.kwh)] } == [[2, 3]])
        try commit(writer, seq: 3, "2026-11-11T10:00:00Z")

        // Then the views hold every reading once, the old day's row took the open sums, and only
        // the two days' first readings started a day
        let facts = try await store.readDays(from: Day(key: 20_261_101), through: Day(key: 20_261_130), region: nil)
        #expect(Set(facts.days.map { "\($0.day.key) \($0.readings)" }) == ["20261110 2", "20261111 1"])
        #expect(try await store.meterMonths(named: "A").map { [$0.readings, Int64($0.kwh)] } == [[3, 6]])
        #expect(try await store.firstColumnText("SELECT day || ' ' || readings FROM meter_day") == ["20261110 2"])
        #expect(try await store.firstColumnText("SELECT sum(cardinality(started_days))::text FROM commit_feed") == ["2"])
    }

    /// Two nodes' writers each know a meter's open periods as of their own last commit of it. A
    /// writer that decides on periods another node has moved on from must lose the race (its batch
    /// rolls back on the meter's high-water mark), reload, and then file its readings right.
    @Test(.timeLimit(.minutes(2)))
    func aWriterThatKnowsAnOldOpenDayLosesTheRaceAndThenFilesItsReadingsRight() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let first = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let second = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let one = try first.makeWriter(WriterSettings())
        let other = try second.makeWriter(WriterSettings())
        var lostRaces = 0
        func commit(_ writer: any MeterStoreWriter, seq: Int64, _ time: String) throws {
            let reading = Reading(meter: "A", seq: seq, timestampMs: try #require(RFC3339.parseMilliseconds(time)), kwh: Double(seq))
            for _ in 0..<3 {
                do {
                    _ = try writer.commit([self.submission([reading], receivedMs: WallClock.nowMs())])
                    return
                } catch let error where writer.lostRace(error) {
                    lostRaces += 1
                }
            }
            Issue.record("reading \(seq) was not committed in three attempts")
        }
        try commit(one, seq: 1, "2026-11-10T10:00:00Z")
        try commit(other, seq: 2, "2026-11-11T10:00:00Z")  // knew nothing of A: loses once, then moves day 10 out
        try commit(one, seq: 3, "2026-11-12T10:00:00Z")  // still thinks day 10 is open: loses once
        try commit(one, seq: 4, "2026-11-11T12:00:00Z")  // late, of a closed day
        #expect(lostRaces == 2)

        let facts = try await first.readDays(from: Day(key: 20_261_101), through: Day(key: 20_261_130), region: nil)
        #expect(Set(facts.days.map { "\($0.day.key) \($0.readings)" }) == ["20261110 1", "20261111 2", "20261112 1"])
        #expect(try await first.meterMonths(named: "A").map { [$0.readings, Int64($0.kwh)] } == [[4, 10]])
        #expect(try await first.firstColumnText("SELECT day || ' ' || readings FROM meter_day ORDER BY day") == ["20261110 1", "20261111 2"])
        #expect(try await first.firstColumnText("SELECT sum(cardinality(started_days))::text FROM commit_feed") == ["3"])
    }

    /// Meters that move between nodes under load reach both nodes' batches in different orders.
    /// Each batch inserts its readings in (meter, seq) order whatever order they arrived in, so two
    /// nodes committing the same readings at once never wait for each other in a circle: the later
    /// one waits and loses the race. In arrival order they deadlocked, and PostgreSQL broke each
    /// deadlock only after `deadlock_timeout` (1 s) with both writers stalled.
    @Test(.timeLimit(.minutes(2)))
    func twoNodesStoringTheSameMetersInOppositeOrdersDoNotDeadlock() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let meters = (0..<400).map { String(format: "X-%03d", $0) }
        let rounds = 16
        let start = try #require(RFC3339.parseMilliseconds("2026-11-10T10:00:00Z"))
        let stores = [
            try PostgreSQLMeterStore(address: address, logger: testLogger), try PostgreSQLMeterStore(address: address, logger: testLogger),
        ]
        _ = try stores[0].makeWriter(WriterSettings()).commit([
            self.submission(meters.map { Reading(meter: $0, seq: 0, timestampMs: start, kwh: 0) })
        ])
        let barrier = RoundBarrier(parties: 2)
        let errors = Mutex<[String]>([])
        let submission = self.submission
        DispatchQueue.concurrentPerform(iterations: 2) { node in
            for round in 1...rounds {
                // Each round both nodes start with writers made after the last round's commits: both
                // know every meter's current mark and neither reads its meters before committing (as
                // a writer does for a while after a lost race), so both insert the same readings at
                // once, one node in one order and the other in the reverse, each as a single submission.
                barrier.arriveAndWait()
                let writer: (any MeterStoreWriter)?
                do {
                    writer = try stores[node].makeWriter(WriterSettings())
                } catch {
                    errors.withLock { $0.append("writer: \(error)") }
                    writer = nil
                }
                let order = node == 0 ? meters : meters.reversed()
                let batch = [
                    submission(
                        order.map { Reading(meter: $0, seq: Int64(round), timestampMs: start + Int64(round) * 60_000, kwh: 1) }, WallClock.nowMs())
                ]
                barrier.arriveAndWait()
                guard let writer else { continue }
                for _ in 0..<5 {
                    do {
                        _ = try writer.commit(batch)
                        break
                    } catch {
                        let state = (error as? PostgreSQLStoreError)?.sqlState ?? "\(error)"
                        errors.withLock { $0.append(state) }
                        guard writer.lostRace(error) else { break }
                    }
                }
            }
        }
        let states = errors.withLock { $0 }
        #expect(!states.contains("40P01"), "deadlocks: \(states.filter { $0 == "40P01" }.count) of \(rounds) rounds")
        #expect(states.allSatisfy { ["40001", "23505", "40P01"].contains($0) }, "\(states)")
        let store = stores[0]
        #expect(
            try await store.firstColumnText("SELECT count(*) || ' ' || count(DISTINCT (meter_id, seq)) FROM reading")
                == ["\(meters.count * (rounds + 1)) \(meters.count * (rounds + 1))"])
        #expect(try await store.firstColumnText("SELECT DISTINCT hwm_seq::text FROM meter WHERE name LIKE 'X-%'") == ["\(rounds)"])
    }

    /// A node registering meters another node is committing readings of (a meter new to this node
    /// but not to the store) only looks their rows up. Registering with `ON CONFLICT DO UPDATE` locked
    /// the rows in name order while a commit takes them in id order: with names and ids in opposite
    /// orders the two deadlocked as soon as each held part of the rows the other wanted.
    @Test(.timeLimit(.minutes(2)))
    func registeringMetersAnotherNodeIsCommittingDoesNotDeadlock() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        // Given node B, started before 400 meters whose ids run opposite to their names reached the store
        nonisolated(unsafe) let latecomer = try PostgreSQLMeterStore(address: address, logger: testLogger).makeWriter(WriterSettings())
        let meters = (0..<400).map { String(format: "R-%03d", $0) }
        _ = try await store.firstColumnText(
            "INSERT INTO meter (name) SELECT 'R-' || lpad((399 - g)::text, 3, '0') FROM generate_series(0, 399) g ORDER BY g RETURNING name")
        // and node A, which knows them
        nonisolated(unsafe) let knowing = try PostgreSQLMeterStore(address: address, logger: testLogger).makeWriter(WriterSettings())
        let start = try #require(RFC3339.parseMilliseconds("2026-11-10T10:00:00Z"))
        let batch = [self.submission(meters.map { Reading(meter: $0, seq: 1, timestampMs: start, kwh: 1) })]

        // When a third session holds the middle meter's row while A commits their readings and B,
        // getting readings of the same meters, registers them: each goes as far as that row
        let holder = Task {
            try await store.firstColumnText(
                "SELECT pg_sleep(2)::text FROM (SELECT id FROM meter WHERE name = 'R-200' FOR UPDATE) AS held")
        }
        try await waitUntil(timeout: .seconds(10)) {
            let holding = try await store.firstColumnText(
                "SELECT count(*)::text FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%' AND state = 'active' AND pid <> pg_backend_pid()")
            return holding == ["1"]
        }
        let errors = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { node in
            let writer = node == 0 ? knowing : latecomer
            if node == 1 { usleep(200_000) }  // A first: it holds the rows before the middle one
            for _ in 0..<5 {
                do {
                    _ = try writer.commit(batch)
                    break
                } catch {
                    errors.withLock { $0.append((error as? PostgreSQLStoreError)?.sqlState ?? "\(error)") }
                    guard writer.lostRace(error) else { break }
                }
            }
        }
        _ = try await holder.value

        // Then neither waited for the other in a circle, and each reading is stored once
        let states = errors.withLock { $0 }
        #expect(!states.contains("40P01"), "deadlocks: \(states)")
        #expect(states.allSatisfy { ["40001", "23505"].contains($0) }, "\(states)")
        #expect(try await store.firstColumnText("SELECT count(*) || ' ' || count(DISTINCT meter_id) FROM reading") == ["400 400"])
        #expect(try await store.firstColumnText("SELECT count(*)::text FROM meter") == ["400"])
    }

    /// A store a newer meterd migrated is refused, naming the migrations this one does not know:
    /// an older meterd reading and writing it got marks, day counts and KPI snapshots wrong for good.
    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func aStoreANewerMeterdMigratedIsRefused(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let store = try self.open(location)
            _ = try store.makeWriter(WriterSettings()).commit([self.submission([Reading(meter: "M", seq: 1, timestampMs: 1_795_947_300_000, kwh: 1)])]
            )
            let future = "v99-from-a-newer-meterd"
            switch location {
            case .sqlite(let path):
                let file = try DatabaseQueue(path: path)
                try file.inDatabase { db in try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES (?)", arguments: [future]) }
            case .postgresql:
                let postgres = try #require(store as? PostgreSQLMeterStore)
                #expect(try await postgres.firstColumnText("INSERT INTO meterd_migration (name) VALUES ('\(future)') RETURNING name") == [future])
            }
            let refusal = #expect(throws: (any Error).self) { try self.open(location) }
            #expect(
                "\(refusal.map { "\($0)" } ?? "")".contains("migrated by a newer meterd (\(future) unknown to this one)"),
                "\(String(describing: refusal))")
        }
    }

    /// After a lost race a node reads its batches' meters again before committing, for a while:
    /// meters that keep moving between nodes are then stored at the first attempt. Before, every
    /// meter the other node had stored since lost the race for the whole batch, and a node that
    /// fell behind lost every attempt until the other node went quiet.
    @Test(.timeLimit(.minutes(2)))
    func afterALostRaceMetersTheOtherNodeMovedOnAreStoredAtTheFirstAttempt() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let meters = (0..<10).map { "H-\($0)" }
        let start = try #require(RFC3339.parseMilliseconds("2026-11-10T10:00:00Z"))
        func batch(_ seqs: ClosedRange<Int64>) -> [IngestSubmission] {
            [self.submission(meters.flatMap { meter in seqs.map { Reading(meter: meter, seq: $0, timestampMs: start + $0 * 60_000, kwh: 1) } })]
        }
        let here = try PostgreSQLMeterStore(address: address, logger: testLogger).makeWriter(WriterSettings())
        _ = try here.commit(batch(0...0))
        let there = try PostgreSQLMeterStore(address: address, logger: testLogger).makeWriter(WriterSettings())
        _ = try there.commit(batch(1...1))
        // The meters' first move: this node learns of it by losing, and its retry finds duplicates.
        #expect(throws: (any Error).self) { try here.commit(batch(1...1)) }
        #expect(try here.commit(batch(1...1)).duplicates == meters.count)
        // They move on over there, and come back here with newer readings.
        _ = try there.commit(batch(2...3))
        let result = try here.commit(batch(2...4))
        #expect(result.stored == meters.count && result.duplicates == 2 * meters.count)
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        #expect(try await store.firstColumnText("SELECT DISTINCT hwm_seq::text FROM meter") == ["4"])
        #expect(try await store.firstColumnText("SELECT count(*)::text FROM reading") == ["\(meters.count * 5)"])
    }

    /// A node acking another node's stream of a meter as its duplicates (the meter sent to both)
    /// brings them in batches with other meters' readings. The duplicates only count and mark the
    /// meter heard from, which cannot contradict what the other node stored meanwhile, so the
    /// batch commits at the first attempt. Before migration `v8-duplicates-never-lose` it lost the
    /// race whenever the other node had moved the meter on, every other reading of it with it.
    @Test(.timeLimit(.minutes(2)))
    func duplicatesOfAMeterAnotherNodeMovedOnCommitAtTheFirstAttempt() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let start = try #require(RFC3339.parseMilliseconds("2026-11-10T10:00:00Z"))
        func reading(_ meter: String, _ seq: Int64) -> Reading {
            Reading(meter: meter, seq: seq, timestampMs: start + seq * 60_000, kwh: 1)
        }
        let here = try PostgreSQLMeterStore(address: address, logger: testLogger).makeWriter(WriterSettings())
        _ = try here.commit([self.submission((0...2).map { reading("TWIN", $0) } + [reading("OTHER", 0)], receivedMs: start)])
        // Given the other node storing the meter's next readings, heard later than this node's duplicate
        let there = try PostgreSQLMeterStore(address: address, logger: testLogger).makeWriter(WriterSettings())
        _ = try there.commit([self.submission([reading("TWIN", 3), reading("TWIN", 4)], receivedMs: start + 20_000)])

        // When this node, which still knows the meter at seq 2, commits a batch with a duplicate of it
        let result = try here.commit([self.submission([reading("TWIN", 1), reading("OTHER", 1)], receivedMs: start + 10_000)])

        // Then the batch commits at once, its duplicate counted, the other meter's reading stored,
        // and the meter's row keeps what the other node wrote: its seq and the later receive time
        #expect(result.duplicates == 1 && result.stored == 1)
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let twin = try #require(try await store.meterRecord(named: "TWIN"))
        #expect(twin.highWaterMark == 4)
        #expect(twin.readingsTotal == 5 && twin.duplicatesTotal == 1)
        #expect(twin.lastReceivedMs == start + 20_000)
        #expect(try await self.storedReadings(store, meter: "TWIN").map(\.seq).sorted() == Array(0...4))
        #expect(try await store.meterRecord(named: "OTHER")?.highWaterMark == 1)
        // And a batch with a newer reading of it than this node knows still loses the race
        #expect(throws: (any Error).self) { try here.commit([self.submission([reading("TWIN", 5), reading("OTHER", 2)])]) }
        #expect(try await store.meterRecord(named: "OTHER")?.highWaterMark == 1)
    }

    /// Holds each party until all have arrived, round after round.
    /// (`@unchecked`: `condition` guards `arrived` and `round`.)
    private final class RoundBarrier: @unchecked Sendable {
        private let condition = NSCondition()
        private let parties: Int
        private var arrived = 0
        private var round = 0

        init(parties: Int) { self.parties = parties }

        func arriveAndWait() {
            self.condition.lock()
            defer { self.condition.unlock() }
            self.arrived += 1
            guard self.arrived < self.parties else {
                self.arrived = 0
                self.round += 1
                self.condition.broadcast()
                return
            }
            let round = self.round
            while self.round == round { self.condition.wait() }
        }
    }

    /// Rows of `meter_month` and `meter_day` themselves (PostgreSQL), not of the views.
    private func periodTableRows(_ store: any MeterStore) async throws -> [Int] {
        guard let postgres = store as? PostgreSQLMeterStore else { return [] }
        return try await postgres.firstColumnText(
            "SELECT count(*)::text FROM meter_month UNION ALL SELECT count(*)::text FROM meter_day"
        ).compactMap { Int($0) }
    }

    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func monthsFollowTheConfiguredTimeZone(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            // 23:30 on 30 November in New York is already 1 December in UTC.
            let zone = try #require(TimeZone(identifier: "America/New_York"))
            let store = try self.open(location)
            let writer = try store.makeWriter(WriterSettings(timeZone: zone))
            let lateEvening = try #require(RFC3339.parseMilliseconds("2026-11-30T23:30:00-05:00"))
            let nextMorning = try #require(RFC3339.parseMilliseconds("2026-12-01T00:30:00-05:00"))
            _ = try writer.commit([
                self.submission(
                    [
                        Reading(meter: "A", seq: 1, timestampMs: lateEvening, kwh: 1),
                        Reading(meter: "A", seq: 2, timestampMs: nextMorning, kwh: 2),
                    ], receivedMs: nextMorning + 1000)
            ])
            let months = try await store.meterMonths(named: "A").map { [$0.month.key: $0.kwh] }
            #expect(months == [[202611: 1.0], [202612: 2.0]])
            try writer.recordTimeZone(zone)
            #expect(try await store.recordedTimeZone() == zone)

            var berlin = MonthCalendar(timeZone: try #require(TimeZone(identifier: "Europe/Berlin")))
            #expect(berlin.month(ofMilliseconds: RFC3339.parseMilliseconds("2026-03-31T23:30:00+02:00")!) == Month(year: 2026, month: 3))
            #expect(berlin.month(ofMilliseconds: RFC3339.parseMilliseconds("2026-03-31T22:00:00Z")!) == Month(year: 2026, month: 4))
        }
    }

    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func unknownMetersAreRejectedWhenConfigured(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let store = try self.open(location)
            let writer = try store.makeWriter(WriterSettings(unknownMeters: .reject))
            let result = try writer.commit([self.submission([Reading(meter: "STRANGER", seq: 1, timestampMs: WallClock.nowMs(), kwh: 1)])])
            #expect(result.stored == 0)
            #expect(result.quarantined == 1)
            #expect(result.outcomes[0].acks.isEmpty)
            #expect(result.outcomes[0].rejections.map(\.rejection.code) == [.unknownMeter])
            #expect(try await store.meterRecord(named: "STRANGER") == nil)
        }
    }

    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func validationFlagsAndLivenessFlagsAreStored(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let store = try self.open(location)
            let writer = try store.makeWriter(WriterSettings())
            let start = WallClock.nowMs() - 600_000
            // Given a meter whose clock went backwards and whose voltage is out of range
            _ = try writer.commit([
                self.submission(
                    [
                        Reading(meter: "A", seq: 1, timestampMs: start, kwh: 1),
                        Reading(meter: "A", seq: 2, timestampMs: start - 60_000, kwh: 1, voltage: 300),
                    ], receivedMs: start)
            ])
            let flags = try await store.validationFlags(meter: "A", limit: 10)
            #expect(Set(flags.map(\.rule)) == [.clockBackwards, .voltage])
            let month = Month(year: 2000, month: 1)
            let counts = try await store.validationFlagCounts(from: month, to: Month(year: 2100, month: 12), region: nil)
            #expect(counts[.clockBackwards] == 1 && counts[.voltage] == 1)

            // When it falls silent past the cutoff, the sweep flags it once
            let cutoff = start + 300_000
            let candidates = try await store.livenessCandidates(cutoffMs: cutoff, startMs: start)
            #expect(candidates.silent.map(\.name) == ["A"])
            let flagged = try writer.flagInactive(candidates.silent, cutoffMs: cutoff, startMs: start)
            #expect(flagged.map(\.meter.name) == ["A"])
            #expect(flagged.first?.lastReceivedMs == start)
            #expect(try writer.flagInactive(candidates.silent, cutoffMs: cutoff, startMs: start).isEmpty)
            // The next sweep finds it flagged, with the time it went silent
            #expect(try await store.livenessCandidates(cutoffMs: cutoff, startMs: start).flagged == flagged)
            #expect(try await store.inactiveMeterCount(region: nil) == 1)
            #expect(try await store.inactiveMeters(region: nil, limit: 10).map(\.meter) == ["A"])

            // And its next reading makes it active again
            _ = try writer.commit([self.submission([Reading(meter: "A", seq: 3, timestampMs: start + 400_000, kwh: 1)])])
            #expect(try await store.inactiveMeterCount(region: nil) == 0)
        }
    }

    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func snapshotsAndAlertsAreKept(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let store = try self.open(location)
            let writer = try store.makeWriter(WriterSettings())
            let period = try KPIPeriod(from: Month(year: 2026, month: 1), to: Month(year: 2026, month: 12))
            for index in 0..<5 { try writer.recordSnapshot("{\"n\":\(index)}", period: period, generatedMs: Int64(index), history: 3) }
            let firing = Alert(rule: .inactive, subject: "A", firedMs: 1_000, detail: "silent")
            var resolved = Alert(rule: .inactive, subject: "B", firedMs: 500, detail: "silent")
            try writer.recordAlerts([firing, resolved], history: 10)
            resolved.state = .resolved
            resolved.resolvedMs = 2_000
            try writer.recordAlerts([resolved], history: 10)
            let (alerts, count) = try await store.alerts(state: nil, limit: 10)
            #expect(count == 1)
            #expect(alerts.map(\.subject) == ["A", "B"])
            #expect(alerts.last?.resolvedMs == 2_000)
        }
    }

    /// Company data (issue 13 point 1: `meterctl import --store`) goes into either store with the
    /// same checks, and the KPI document over it is the same, byte for byte; importing again
    /// changes nothing, and a file with a bad row leaves the store as it was.
    @Test(.timeLimit(.minutes(3)))
    func companyDataImportsIntoEitherStoreWithTheSameKPIs() async throws {
        try await withTemporaryDirectory { directory in
            let csv = directory + "/csv"
            try CompanyGenerator(customers: 300, seed: 11, year: 2025, months: 8).write(to: csv)
            // Customer 7 has meters of its own, which replace its MTR-000007; two meters hang off a concentrator.
            try "MeterID,CustomerID\nMTR-7A,7\nMTR-7B,7\n".write(toFile: csv + "/meters.csv", atomically: true, encoding: .utf8)
            try "ConcentratorID,MeterID\nDC-1,MTR-7A\nDC-1,MTR-000008\n".write(toFile: csv + "/concentrators.csv", atomically: true, encoding: .utf8)
            let bad = directory + "/bad"
            try FileManager.default.createDirectory(atPath: bad, withIntermediateDirectories: true)
            try "CustomerID,Month,Amount_$,Status\n1,2025-03,10.5,paid\n2,2025-03,12,maybe\n"
                .write(toFile: bad + "/bills.csv", atomically: true, encoding: .utf8)
            let period = try KPIPeriod(from: Month("2025-01")!, to: Month("2025-08")!)
            let nowMs: Int64 = 1_756_000_000_000  // 2025-08-24

            var documents: [StoreBackend: String] = [:]
            var histories: [StoreBackend: [Int: [Double]]] = [:]
            for backend in StoreBackend.allCases {
                try await backend.withFreshStore { location in
                    let store = try location.open(logger: testLogger)
                    let writer = try store.makeWriter(WriterSettings())
                    func document() async throws -> String {
                        try await KPIEngine(store: store, settings: KPISettings()).json(period: period, region: nil, nowMs: nowMs)
                    }
                    // When the directory is imported
                    let report = try CompanyImporter.importDirectory(csv, into: writer)
                    #expect(report.files.count == 10, "\(backend)")
                    #expect(report.files.allSatisfy { $0.errors.isEmpty }, "\(backend): \(report.files.flatMap(\.errors))")
                    #expect(report.files.first { $0.file == "monthly_data.csv" }?.rows == 300 * 8, "\(backend)")
                    let first = try await document()
                    // Then the meters.csv meters replaced the default one, and the concentrator knows its meters
                    #expect(try await store.meterRecord(named: "MTR-7A")?.customerID == 7, "\(backend)")
                    #expect(try await store.meterRecord(named: "MTR-000007") == nil, "\(backend)")
                    #expect(try await store.concentratorAssignments() == ["DC-1": ["MTR-7A", "MTR-000008"]], "\(backend)")

                    // When it is imported again, nothing changes
                    let again = try CompanyImporter.importDirectory(csv, into: writer)
                    #expect(again.files.allSatisfy { $0.errors.isEmpty }, "\(backend)")
                    #expect(try sameFigures(try await document(), first), "\(backend): a second import changed the KPIs")

                    // When a file has a bad row, it is refused with the row's line, and none of its rows stay
                    let refused = try CompanyImporter.importDirectory(bad, into: writer)
                    #expect(
                        refused.files.map { $0.errors.map(\.description) } == [["bills.csv:3: Status: expected paid or unpaid, got \"maybe\""]],
                        "\(backend)")
                    #expect(try sameFigures(try await document(), first), "\(backend): a refused file changed the KPIs")
                    #expect(try await store.customerHistory(id: 1)?.bills.first { $0.month == Month("2025-03")! }?.amount != 10.5, "\(backend)")

                    // And a customer's months are its meters' months (customer 7's two meters summed)
                    for (customer, meters) in [(3, ["MTR-000003"]), (7, ["MTR-7A", "MTR-7B"])] {
                        let monthly = try #require(try await store.customerHistory(id: Int64(customer))?.monthly, "\(backend)")
                        var summed: [Month: Double] = [:]
                        for meter in meters {
                            for month in try await store.meterMonths(named: meter) { summed[month.month, default: 0] += month.kwh }
                        }
                        #expect(monthly.count == 8 && Dictionary(uniqueKeysWithValues: monthly.map { ($0.month, $0.kwh) }) == summed, "\(backend)")
                        histories[backend, default: [:]][customer] = monthly.map(\.kwh)
                    }
                    documents[backend] = first
                }
            }
            // And both stores answer the same KPI document and customer months
            #expect(histories[.sqlite] == histories[.postgresql])
            let sqlite = try #require(documents[.sqlite])
            #expect(try sameFigures(sqlite, try #require(documents[.postgresql])))
        }
    }

    /// Monthly data imported before meters.csv sits on the customer's default `MTR-%06d` meter;
    /// when meters.csv then names the customer's own meters, the months move to its first meter
    /// and the placeholder, which never reported, goes: it must not stay in the fleet as a meter
    /// that never reads (counted inactive, lowering the read success rate).
    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func monthsImportedBeforeMetersCSVMoveToTheCustomersOwnMeter(backend: StoreBackend) async throws {
        try await withTemporaryDirectory { directory in
            try FileManager.default.createDirectory(atPath: directory + "/first", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: directory + "/then", withIntermediateDirectories: true)
            try writeCSV(
                directory + "/first", "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2024-01-01", "2,North,2024-01-01"])
            try writeCSV(
                directory + "/first", "monthly_data.csv",
                [
                    "CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus", "1,2026-09-01,100,15,Good", "1,2026-10-01,80,12,Poor",
                    "2,2026-10-01,50,7,Fair",
                ])
            try writeCSV(directory + "/then", "meters.csv", ["MeterID,CustomerID", "X-1,1", "X-2,1"])
            try await backend.withFreshStore { location in
                let store = try location.open(logger: testLogger)
                let writer = try store.makeWriter(WriterSettings())
                #expect(try CompanyImporter.importDirectory(directory + "/first", into: writer).succeeded)
                // X-1 reports live in October before meters.csv assigns it
                let october = try #require(RFC3339.parseMilliseconds("2026-10-05T00:00:00Z"))
                _ = try writer.commit([self.submission([Reading(meter: "X-1", seq: 1, timestampMs: october, kwh: 3)], receivedMs: october)])

                #expect(try CompanyImporter.importDirectory(directory + "/then", into: writer).succeeded)

                #expect(try await store.meterRecord(named: "MTR-000001") == nil, "\(backend)")
                #expect(try await store.meterRecord(named: "MTR-000002")?.customerID == 2, "\(backend): customer 2 keeps its default meter")
                let months = try await store.meterMonths(named: "X-1").map { [$0.month.key: $0.kwh] }
                #expect(months == [[202609: 100], [202610: 83]], "\(backend): the imported months with X-1's own reading")
                let period = try KPIPeriod(from: Month("2026-09")!, to: Month("2026-10")!)
                let document = try await kpiAnswer(KPIEngine(store: store, settings: KPISettings()), period)
                #expect(document.totalConsumptionKwh == 233, "\(backend)")
                #expect(document.meters.active + document.meters.inactive == 3, "\(backend): X-1, X-2 and MTR-000002")
                #expect(close(document.meterHealth.poor, 100.0 / 3), "\(backend): customer 1's October is still poor")
                // The read success rate judges X-1, X-2 and MTR-000002, not the placeholder: one of three read on 5 October
                let fifth = document.readSuccessDaily.first { $0.date == "2026-10-05" }
                #expect(close(fifth?.rate, 1.0 / 3), "\(backend): \(String(describing: fifth))")

                // Importing the same meters.csv again changes nothing
                #expect(try CompanyImporter.importDirectory(directory + "/then", into: writer).succeeded)
                #expect(try await store.meterMonths(named: "X-1").map { [$0.month.key: $0.kwh] } == months, "\(backend)")
            }
        }
    }

    /// A default meter that really reports (a meter of that name sends) is a meter, not a
    /// placeholder: when meters.csv then names other meters for its customer, it keeps its
    /// readings and its imported months, and nothing moves.
    @Test(.timeLimit(.minutes(2)), arguments: StoreBackend.allCases)
    func aDefaultMeterThatReportsKeepsItsMonthsWhenMetersCSVNamesOthers(backend: StoreBackend) async throws {
        try await withTemporaryDirectory { directory in
            try FileManager.default.createDirectory(atPath: directory + "/first", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: directory + "/then", withIntermediateDirectories: true)
            try writeCSV(directory + "/first", "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2024-01-01"])
            try writeCSV(
                directory + "/first", "monthly_data.csv",
                ["CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus", "1,2026-09-01,100,15,Good", "1,2026-10-01,80,12,Poor"])
            try writeCSV(directory + "/then", "meters.csv", ["MeterID,CustomerID", "X-1,1"])
            try await backend.withFreshStore { location in
                let store = try location.open(logger: testLogger)
                let writer = try store.makeWriter(WriterSettings())
                #expect(try CompanyImporter.importDirectory(directory + "/first", into: writer).succeeded)
                // MTR-000001 itself reports in October
                let october = try #require(RFC3339.parseMilliseconds("2026-10-05T00:00:00Z"))
                _ = try writer.commit([self.submission([Reading(meter: "MTR-000001", seq: 1, timestampMs: october, kwh: 3)], receivedMs: october)])

                #expect(try CompanyImporter.importDirectory(directory + "/then", into: writer).succeeded)

                #expect(try await store.meterRecord(named: "MTR-000001")?.customerID == 1, "\(backend)")
                let months = try await store.meterMonths(named: "MTR-000001").map { [$0.month.key: $0.kwh] }
                #expect(months == [[202609: 100], [202610: 83]], "\(backend): its imported months and its reading stay")
                #expect(try await store.meterMonths(named: "X-1").isEmpty, "\(backend)")
                #expect(try await store.meterRecord(named: "X-1")?.customerID == 1, "\(backend)")
            }
        }
    }
}

/// What only the PostgreSQL store has: its schema, partitions and the way it fails at start-up.
@Suite struct PostgreSQLStoreTests {
    /// Issue 13 point 5: a commit whose outcome is unknown (the connection dropped after the server
    /// took the call) is sent again; readings and aggregates show themselves as duplicates, and
    /// quarantined lines, which carry no key, must not be kept twice either.
    @Test(.timeLimit(.minutes(2)))
    func aBatchResentAfterAnUnknownOutcomeKeepsItsRejectedLinesOnce() async throws {
        // A server of its own: this test crashes it.
        try await PostgresTestServer.with { server in try await self.resendAfterUnknownOutcome(server) }
    }

    func resendAfterUnknownOutcome(_ server: PostgresTestServer) async throws {
        let address = try await server.createDatabase()
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let backend = try PostgreSQLIngestBackend(
            connector: try PostgreSQLConnector(address: address, logger: testLogger), node: "test-node", logger: testLogger)
        let writer = try IngestWriter(
            backend: backend, calendar: MonthCalendar(timeZone: TimeZone(identifier: "UTC")!), tariff: Tariff(), unknownMeters: .register)
        let now = WallClock.nowMs()
        func rejected(_ line: Int, peer: String = "127.0.0.1:5000") -> QuarantinedLine {
            QuarantinedLine(receivedMs: now, peer: peer, line: line, rejection: Rejection(.invalidJSON, "not JSON"), raw: Array("x\(line)".utf8))
        }
        let batch = IngestSubmission(
            readings: [SubmittedReading(reading: Reading(meter: "Q1", seq: 1, timestampMs: now, kwh: 1), line: 1, receivedMs: now)],
            quarantined: [rejected(2), rejected(3)], receiver: nil)
        // Given a batch the server committed, though the writer never heard back
        _ = try writer.commit([batch])
        backend.lastOutcomeUnknown = true
        // When it is sent again, with a rejected line that is new (same time and line, another connection)
        let result = try writer.commit([batch, IngestSubmission(readings: [], quarantined: [rejected(2, peer: "127.0.0.1:5001")], receiver: nil)])
        // Then its reading is a duplicate, its rejected lines are kept once, and the new one is kept
        #expect(result.duplicates == 1)
        #expect(
            try await store.firstColumnText("SELECT peer || ' ' || line FROM quarantine ORDER BY peer, line") == [
                "127.0.0.1:5000 2", "127.0.0.1:5000 3", "127.0.0.1:5001 2",
            ])
        #expect(!backend.lastOutcomeUnknown)

        // And a real lost connection marks the outcome unknown
        try await server.crash()
        #expect(throws: PostgreSQLStoreError.self) { try writer.commit([IngestSubmission(readings: [], quarantined: [rejected(9)], receiver: nil)]) }
        #expect(backend.lastOutcomeUnknown)
        try await server.restart()
        _ = try writer.commit([IngestSubmission(readings: [], quarantined: [rejected(9)], receiver: nil)])
        #expect(try await store.firstColumnText("SELECT count(*)::text FROM quarantine") == ["4"])
    }

    /// In the extended protocol PostgreSQL answers a statement (CommandComplete) before it commits the
    /// statement's implicit transaction, at Sync; PostgresNIO finishes the query on the answer. A
    /// commit that fails after it (here a deferred constraint trigger; in production a crash before
    /// the commit record is flushed) must not count as committed, or meterd acks readings it lost.
    @Test(.timeLimit(.minutes(2)))
    func aBatchWhoseTransactionFailsAtCommitIsNotAcknowledged() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let writer = try store.makeWriter(WriterSettings())
        let now = WallClock.nowMs()
        func reading(_ seq: Int64) -> IngestSubmission {
            let reading = Reading(meter: "C1", seq: seq, timestampMs: now - 60_000 + seq, kwh: Double(seq))
            return IngestSubmission(readings: [SubmittedReading(reading: reading, line: 1, receivedMs: now)], receiver: nil)
        }
        func storedSeqs() async throws -> [Int64] {
            try #require(try await store.recentReadings(meter: "C1", limit: 10)).readings.map(\.seq).sorted()
        }
        // Given a meter with one reading, and a trigger that fails the commit of its second
        #expect(try writer.commit([reading(1)]).stored == 1)
        _ = try await store.firstColumnText(
            """
            CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'refused at commit'; END $$
            """)
        _ = try await store.firstColumnText(
            """
            CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER UPDATE ON meter DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW WHEN (NEW.hwm_seq = 2) EXECUTE FUNCTION refuse_at_commit()
            """)

        // When the writer commits the second reading, the commit fails after the statement completed
        let error = #expect(throws: PostgreSQLStoreError.self) { try writer.commit([reading(2)]) }
        #expect(error?.description.contains("its commit was not confirmed") == true, "\(String(describing: error))")
        #expect(error?.connectionLost == true, "its outcome is open")
        #expect(try await storedSeqs() == [1])

        // Then the batch goes again once the trigger is gone, is stored (not taken for a duplicate), once
        _ = try await store.firstColumnText("DROP TRIGGER refuse_at_commit ON meter")
        let retried = try writer.commit([reading(2)])
        #expect(retried.stored == 1 && retried.duplicates == 0)
        #expect(try await storedSeqs() == [1, 2])
        #expect(try await store.meterRecord(named: "C1")?.readingsTotal == 2)
    }

    /// A connection the network black-holes (no answer, no reset, as when a firewall or NAT loses
    /// the flow) must not hold the writer until TCP gives up, many minutes later, nor a reader: the
    /// commit fails at its deadline with its outcome open, and the next one goes on a new connection.
    @Test(.timeLimit(.minutes(2)))
    func aCommitOrAReadWithoutAnAnswerFailsAtItsDeadlineAndTheNextOneReconnects() async throws {
        let server = try await PostgresTestServer.shared()
        let database = try await server.createDatabase().database
        try await BlackHoleProxy.with(upstreamPort: server.port) { proxy in
            let viaProxy = server.proxiedAddress(database: database, proxy: proxy)
            var timeouts = PostgreSQLTimeouts()
            timeouts.commit = .seconds(1)
            timeouts.reader = .seconds(1)
            let store = try PostgreSQLMeterStore(address: viaProxy, logger: testLogger, timeouts: timeouts)
            let observer = try PostgreSQLMeterStore(address: server.tcpAddress(database: database, password: server.password), logger: testLogger)
            let writer = try store.makeWriter(WriterSettings())
            let now = WallClock.nowMs()
            func reading(_ seq: Int64) -> IngestSubmission {
                let reading = Reading(meter: "H1", seq: seq, timestampMs: now - 60_000 + seq, kwh: Double(seq))
                return IngestSubmission(readings: [SubmittedReading(reading: reading, line: 1, receivedMs: now)], receiver: nil)
            }
            // Given a writer and a reader whose connections pass through the proxy
            #expect(try writer.commit([reading(1)]).stored == 1)
            #expect(try await store.firstColumnText("SELECT count(*)::text FROM reading") == ["1"])

            // When the path black-holes both connections
            proxy.blackHoleExisting()

            // Then the commit fails at its deadline, with the outcome open, and so does the read
            let started = ContinuousClock.now
            let error = #expect(throws: PostgreSQLStoreError.self) { try writer.commit([reading(2)]) }
            #expect(ContinuousClock.now - started < .seconds(10))
            #expect(error?.description.contains("got no answer within 1 s; meterd closed the connection") == true, "\(String(describing: error))")
            #expect(error?.connectionLost == true && error?.meansStoreUnreachable == true)
            let readError = await #expect(throws: PostgreSQLStoreError.self) { try await store.firstColumnText("SELECT count(*)::text FROM reading") }
            #expect(readError?.description.contains("reading got no answer within 1 s") == true, "\(String(describing: readError))")

            // And the retried batch and the next read go on new connections: the reading is stored once
            let retried = try writer.commit([reading(2)])
            #expect(retried.stored + retried.duplicates == 1)
            #expect(try await store.firstColumnText("SELECT count(*)::text FROM reading") == ["2"])
            #expect(try await observer.firstColumnText("SELECT seq::text FROM reading ORDER BY seq") == ["1", "2"])
            #expect(try await observer.meterRecord(named: "H1")?.readingsTotal == 2)

            // And a KPI snapshot, which the writer records every minute, has the commit's deadline,
            // not the 60 s of the writer's large statements: the watchdog tolerates 15 s of silence
            proxy.blackHoleExisting()
            let period = try KPIPeriod(from: Month(year: 2026, month: 1), to: Month(year: 2026, month: 12))
            let snapshotStarted = ContinuousClock.now
            let snapshotError = #expect(throws: PostgreSQLStoreError.self) {
                try writer.recordSnapshot("{}", period: period, generatedMs: now, history: 3)
            }
            #expect(ContinuousClock.now - snapshotStarted < .seconds(10))
            #expect(
                snapshotError?.description.contains("recording a KPI snapshot got no answer within 1 s") == true,
                "\(String(describing: snapshotError))")
        }
    }

    /// Each read has a connection of its own: one that outlasts its deadline or whose task is
    /// cancelled (both close their connection) fails no other read, and a slow one holds none up.
    @Test(.timeLimit(.minutes(2)))
    func aSlowOrCancelledReadFailsNoOtherRead() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        var timeouts = PostgreSQLTimeouts()
        timeouts.reader = .seconds(3)
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger, timeouts: timeouts)
        let observer = try PostgreSQLMeterStore(address: address, logger: testLogger)
        #expect(try await store.firstColumnText("SELECT 1::text") == ["1"])

        // Given a read that outlasts its deadline and one whose task will be cancelled, both running
        let slow = Task { try await store.firstColumnText("SELECT pg_sleep(10)::text") }
        let cancelled = Task { try await store.firstColumnText("SELECT pg_sleep(10)::text") }
        try await waitUntil {
            try await observer.firstColumnText(
                "SELECT count(*)::text FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)::text' AND state = 'active'") == ["2"]
        }

        // When other reads come meanwhile, they are answered at once
        let started = ContinuousClock.now
        for value in 0..<5 { #expect(try await store.firstColumnText("SELECT \(value)::text") == ["\(value)"]) }
        #expect(ContinuousClock.now - started < .seconds(2))

        // Then the cancelled read fails and the others are still answered
        cancelled.cancel()
        await #expect(throws: (any Error).self) { try await cancelled.value }
        #expect(try await store.firstColumnText("SELECT 'after cancel'") == ["after cancel"])
        // and the slow read fails at its deadline, alone
        let error = await #expect(throws: PostgreSQLStoreError.self) { try await slow.value }
        #expect(error?.description.contains("reading got no answer within 3 s") == true, "\(String(describing: error))")
        #expect(try await store.firstColumnText("SELECT 'after timeout'") == ["after timeout"])

        // And many reads at once share a few connections (PostgreSQLReader.maximumConnections) and all get their answers
        let answers = try await withThrowingTaskGroup(of: [String].self) { group in
            for value in 0..<12 { group.addTask { try await store.firstColumnText("SELECT \(value)::text FROM pg_sleep(0.2)") } }
            return try await group.reduce(into: [String]()) { $0 += $1 }
        }
        #expect(answers.sorted() == (0..<12).map { "\($0)" }.sorted())
        let open = try await observer.firstColumnText(
            "SELECT count(*)::text FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'active'")
        #expect(Int(open.first ?? "") ?? 99 <= PostgreSQLReader.maximumConnections, "idle reader connections: \(open)")
    }

    /// A reader's deadline bounds the wait for each next row, not the whole answer: a long answer
    /// that keeps coming is read to its end, whole and in order, and a large one arrives intact.
    @Test(.timeLimit(.minutes(2)))
    func aLongAnswerThatKeepsComingOutlivesTheReadersDeadline() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        var timeouts = PostgreSQLTimeouts()
        timeouts.reader = .seconds(1)
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger, timeouts: timeouts)

        // Given rows of 200 kB that come 0.4 s apart, 2.4 s in all, and a reader's deadline of 1 s
        let started = ContinuousClock.now
        let slow = try await store.firstColumnText(
            "SELECT g::text || ':' || repeat('x', 200000) || left(pg_sleep(0.4)::text, 0) FROM generate_series(1, 6) AS g")

        // Then every row arrives, in order, after more than the deadline
        #expect(ContinuousClock.now - started > .seconds(2))
        #expect(slow.map { $0.prefix(while: { $0 != ":" }) } == ["1", "2", "3", "4", "5", "6"])
        #expect(slow.allSatisfy { $0.count == 200_002 })

        // And an answer with no row within the deadline still fails at it
        let error = await #expect(throws: PostgreSQLStoreError.self) { try await store.firstColumnText("SELECT pg_sleep(2.5)::text") }
        #expect(error?.description.contains("reading got no answer within 1 s") == true, "\(String(describing: error))")

        // And 300,000 rows come back whole and in order
        let many = try await store.firstColumnText("SELECT g::text FROM generate_series(1, 300000) AS g")
        #expect(many.count == 300_000)
        #expect(many.elementsEqual((1...300_000).lazy.map(String.init)))
    }

    /// Readers that find no KPI store wait for the one load under way (at start-up the snapshot,
    /// the alert rules and the dashboard all ask at once, and at 100,000 meters each load is
    /// seconds of a core and a hundred megabytes). A reader that is cancelled stops waiting at
    /// once; a load no reader waits for any more is cancelled.
    @Test(.timeLimit(.minutes(2)))
    func readersWithoutAKPIStoreShareOneLoadAndACancelledOneStopsWaiting() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let locker = try await PostgreSQLConnector(address: address, logger: testLogger).connect(id: 9)
        defer { locker.closeInBackground() }
        // So that a query waiting for a lock ends when meterd closes its connection, as a cancelled
        // load does: PostgreSQL notices a closed client only when it next reads or writes otherwise.
        _ = try await locker.allRows(
            PostgresQuery(unsafeSQL: "ALTER DATABASE \"\(address.database)\" SET client_connection_check_interval = '100ms'"), logger: testLogger)
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let writer = try store.makeWriter(WriterSettings())
        let now = WallClock.nowMs()
        let reading = Reading(meter: "L1", seq: 1, timestampMs: now - 1_000, kwh: 1.5)
        _ = try writer.commit([IngestSubmission(readings: [SubmittedReading(reading: reading, line: 1, receivedMs: now)], receiver: nil)])
        func loadsWaitingForTheLock() async throws -> Int {
            let count = try await store.firstColumnText(
                """
                SELECT count(*)::text FROM pg_stat_activity
                WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%customer%'
                """)
            return Int(count.first ?? "") ?? -1
        }

        // Given a lock that holds every load at its first read of the customers
        _ = try await locker.allRows("BEGIN", logger: testLogger)
        _ = try await locker.allRows("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE", logger: testLogger)
        let logs = CapturedLogs()
        let rollups = KPIRollups(logger: logs.logger)

        // When six readers ask for the store at once
        let readers = (0..<6).map { _ in Task { try await rollups.load(from: store) } }
        try await waitUntil { try await loadsWaitingForTheLock() == 2 }
        try await Task.sleep(for: .milliseconds(500))

        // Then one load runs (its meter-month and read-day halves, one query each at the lock)
        #expect(rollups.loadsStarted == 1)
        #expect(try await loadsWaitingForTheLock() == 2)

        // And a cancelled reader stops waiting at once, while the load goes on for the others
        let cancelledAt = ContinuousClock.now
        readers[0].cancel()
        await #expect(throws: CancellationError.self) { try await readers[0].value }
        #expect(ContinuousClock.now - cancelledAt < .seconds(2))
        #expect(try await loadsWaitingForTheLock() == 2)

        // And once the lock goes, the others get the one store
        _ = try await locker.allRows("COMMIT", logger: testLogger)
        for reader in readers.dropFirst() { try await reader.value }
        #expect(rollups.loadsStarted == 1 && rollups.loads == 1)
        #expect(rollups.withStore { $0.meterCount } == 1)
        let loaded = logs.all.filter { $0.message == "KPI stores loaded" }
        #expect(loaded.count == 1 && loaded.first?.metadata["kpi.meters"] == "1", "\(loaded)")
        #expect(Int(loaded.first?.metadata["kpi.load_ms"]?.description ?? "") ?? -1 >= 400, "the load waited for the lock: \(loaded)")

        // When the store must be loaded again and every reader of that load is cancelled
        _ = try await locker.allRows("BEGIN", logger: testLogger)
        _ = try await locker.allRows("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE", logger: testLogger)
        rollups.companyDataChanged()
        let abandoned = (0..<3).map { _ in Task { try await rollups.load(from: store) } }
        try await waitUntil { try await loadsWaitingForTheLock() == 2 }
        for reader in abandoned { reader.cancel() }
        for reader in abandoned { await #expect(throws: CancellationError.self) { try await reader.value } }

        // Then the load is cancelled too: its queries leave the lock's queue, and the next reader starts anew
        try await waitUntil { try await loadsWaitingForTheLock() == 0 }
        _ = try await locker.allRows("COMMIT", logger: testLogger)
        try await rollups.load(from: store)
        #expect(rollups.loadsStarted == 3 && rollups.loads == 2)
    }

    /// ``PostgreSQLArray`` writes the binary array format itself: what PostgreSQL reads back must be
    /// what was bound, sentinels included (Int64.min for NULL, NaN, the empty string), and empty
    /// arrays must arrive as empty arrays of the right type.
    @Test(.timeLimit(.minutes(2)))
    func binaryArraysRoundTripThroughPostgreSQL() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let connection = try await PostgreSQLConnector(address: address, logger: testLogger).connect(id: 9)
        defer { connection.closeInBackground() }
        let integers: [Int64] = [Int64.min, -1, 0, 1, 1_700_000_000_000, Int64.max]
        let doubles: [Double] = [.nan, -0.5, 0, 1.25, 1e300, -.infinity]
        let flags = [true, false, true]
        let texts = ["", "m-1", "Zählerstand ⚡", String(repeating: "x", count: 5_000)]
        let blobs = [ByteBuffer(), ByteBuffer(bytes: [0, 1, 255]), ByteBuffer(string: "{\"m\":1}")]
        // Given every element type bound through PostgreSQLArray
        var rows: [PostgresRow] = []
        for try await row in try await connection.query(
            """
            SELECT \(PostgreSQLArray(integers)), \(PostgreSQLArray(doubles)), \(PostgreSQLArray(flags)), \(PostgreSQLArray(texts)),
                   \(PostgreSQLArray(blobs)), (SELECT count(*) FROM unnest(\(PostgreSQLArray(doubles))) AS d(x) WHERE x = 'NaN'),
                   NULLIF(\(PostgreSQLArray(integers))[1], -9223372036854775808) IS NULL, \(PostgreSQLArray(integers))::text,
                   \(PostgreSQLArray([Int64]())), \(PostgreSQLArray([Double]())), \(PostgreSQLArray([String]())),
                   \(PostgreSQLArray([Bool]())), \(PostgreSQLArray([ByteBuffer]())),
                   cardinality(\(PostgreSQLArray([Int64]()))), pg_typeof(\(PostgreSQLArray([Double]())))::text
            """, logger: testLogger)
        {
            rows.append(row)
        }
        let row = try #require(rows.first)
        let (ints, reals, bools, strings, bytes) = try row.decode(([Int64], [Double], [Bool], [String], [ByteBuffer]).self)
        // Then PostgreSQL read back exactly the values bound
        #expect(ints == integers)
        #expect(reals.count == doubles.count && reals[0].isNaN)
        #expect(Array(reals.dropFirst()) == Array(doubles.dropFirst()))
        #expect(bools == flags)
        #expect(strings == texts)
        #expect(bytes == blobs)
        let columns = row.makeRandomAccess()
        #expect(try columns[5].decode(Int64.self) == 1)
        #expect(try columns[6].decode(Bool.self))
        #expect(try columns[7].decode(String.self) == "{-9223372036854775808,-1,0,1,1700000000000,9223372036854775807}")
        // And empty arrays arrive empty, typed as the parameter says
        #expect(try columns[8].decode([Int64].self).isEmpty)
        #expect(try columns[9].decode([Double].self).isEmpty)
        #expect(try columns[10].decode([String].self).isEmpty)
        #expect(try columns[11].decode([Bool].self).isEmpty)
        #expect(try columns[12].decode([ByteBuffer].self).isEmpty)
        #expect(try columns[13].decode(Int64.self) == 0)
        #expect(try columns[14].decode(String.self) == "double precision[]")
    }

    /// Issue 13 point 8: each commit updates the row of every meter in it. PostgreSQL does that in
    /// place (a HOT update: no new index entries) only while no index names a column the commit
    /// changes and the row's page has room (migration `v4-meter-updates-in-place`).
    @Test(.timeLimit(.minutes(2)))
    func metersAreUpdatedInPlace() async throws {
        // On a cluster of its own: how often PostgreSQL can prune a page's old row versions (and so
        // update in place) depends on the transactions of every other database on the server, and
        // with the other tests' on the shared one it measured anywhere from 48 to 95 %.
        try await PostgresTestServer.with { server in
            let address = try await server.createDatabase()
            let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
            // No index of meter names last_received_ms, and half of each page is kept free
            let definitions = try await store.firstColumnText("SELECT indexdef FROM pg_indexes WHERE tablename = 'meter'")
            #expect(definitions.contains { $0.contains("first_seen_ms IS NULL") })
            for definition in definitions { #expect(!definition.contains("last_received_ms"), "\(definition)") }
            #expect(
                try await store.firstColumnText("SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'meter'") == ["fillfactor=50"])

            // Given 200 meters that each send one reading per commit, 20 commits in a row
            let writer = try store.makeWriter(WriterSettings())
            let start = WallClock.nowMs() - 60_000
            for commit in 0..<20 {
                let readings = (0..<200).map { meter in
                    SubmittedReading(
                        reading: Reading(meter: "H\(meter)", seq: Int64(commit), timestampMs: start + Int64(commit) * 1_000, kwh: 0.1),
                        line: commit + 1, receivedMs: start + Int64(commit) * 1_000)
                }
                _ = try writer.commit([IngestSubmission(readings: readings, receiver: nil)])
            }
            // Then (once the writer's session reports its statistics, within about 10 s of going idle)
            // all but the first commit's updates were made in place: before migration v4 none could
            // be, and the first sets `first_seen_ms`, which the inactive meters' index names.
            var updates: (all: Int64, inPlace: Int64) = (0, 0)
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                let row = try await store.firstColumnText(
                    "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'meter'"
                ).first?.split(separator: " ").compactMap { Int64($0) }
                if let row, row.count == 2, row[0] >= 4_000 {
                    updates = (row[0], row[1])
                    break
                }
                try await Task.sleep(for: .milliseconds(250))
            }
            #expect(updates.all >= 4_000)
            #expect(Double(updates.inPlace) >= 0.9 * Double(updates.all), "\(updates.inPlace) of \(updates.all) meter updates in place")
            // And meters that never reported are still counted as inactive, through the new predicate
            #expect(try await store.inactiveMeterCount(region: nil) == 0)
            _ = try await store.firstColumnText("INSERT INTO meter (name, region) VALUES ('never-1', 'North') RETURNING name")
            #expect(try await store.inactiveMeterCount(region: nil) == 1)
            #expect(try await store.inactiveMeterCount(region: "North") == 1)
            #expect(try await store.inactiveMeters(region: nil, limit: 10).map(\.meter) == ["never-1"])
        }
    }

    /// Issue 13 point 8: a commit's cost follows its batch, not the fleet. The commit function's
    /// plans are made once per session, at a node's first commit: with a handful of meters then,
    /// `UPDATE meter` became a hash join over a sequential scan of every meter, repeated at every
    /// commit for as long as the node ran (migration `v5-commit-updates-meters-by-key`).
    @Test(.timeLimit(.minutes(2)))
    func commitsFindTheirMetersByKeyWhateverTheFleetWasAtTheFirstCommit() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let writer = try store.makeWriter(WriterSettings())
        let start = WallClock.nowMs() - 60_000
        func commit(meters: Range<Int>, seq: Int) throws {
            let readings = meters.map { meter in
                SubmittedReading(
                    reading: Reading(meter: "K\(meter)", seq: Int64(seq), timestampMs: start + Int64(seq) * 1_000, kwh: 0.1),
                    line: seq + 1, receivedMs: start + Int64(seq) * 1_000)
            }
            _ = try writer.commit([IngestSubmission(readings: readings, receiver: nil)])
        }
        /// The meter table's row updates and sequential scans, once the writer's session has
        /// reported at least `updates` (it does within about 10 s of going idle).
        func meterTableCounts(reaching updates: Int64) async throws -> (updates: Int64, sequentialScans: Int64) {
            var counts: [Int64] = []
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                counts =
                    try await store.firstColumnText(
                        "SELECT n_tup_upd || ' ' || seq_scan FROM pg_stat_user_tables WHERE relname = 'meter'"
                    ).first?.split(separator: " ").compactMap { Int64($0) } ?? []
                if counts.count == 2, counts[0] >= updates { return (counts[0], counts[1]) }
                try await Task.sleep(for: .milliseconds(250))
            }
            Issue.record("the meter table's statistics never reached \(updates) updates: \(counts)")
            return (-1, -1)
        }
        // Given a first commit of one meter (the session plans its statements then) and one that
        // registers 2,000
        try commit(meters: 0..<1, seq: 0)
        try commit(meters: 0..<2_000, seq: 1)
        let before = try await meterTableCounts(reaching: 2_001)
        // When 20 more commits of 200 of those meters each follow
        for batch in 0..<20 { try commit(meters: (batch * 90)..<(batch * 90 + 200), seq: 2 + batch) }
        // Then every meter row was updated through its key: no commit read the whole table (each
        // did before v5)
        let after = try await meterTableCounts(reaching: 2_001 + 20 * 200)
        #expect(after.updates - before.updates == 20 * 200)
        #expect(
            after.sequentialScans == before.sequentialScans,
            "\(after.sequentialScans - before.sequentialScans) sequential scans of meter in 20 commits")
        // And the readings are all there
        #expect(try await store.firstColumnText("SELECT count(*)::text FROM reading") == ["\(2_001 + 20 * 200)"])
    }

    @Test(.timeLimit(.minutes(2)))
    func twoNodesStartingAtOnceMigrateOnce() async throws {
        do {
            let address = try await PostgresTestServer.shared().createDatabase()
            // Both open (and migrate) at the same moment; the advisory lock lets one apply the migrations.
            async let first = offPool { _ = try PostgreSQLMeterStore(address: address, logger: testLogger) }
            async let second = offPool { _ = try PostgreSQLMeterStore(address: address, logger: testLogger) }
            _ = try await (first, second)
            let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
            let applied = try await store.firstColumnText("SELECT name FROM meterd_migration ORDER BY name")
            #expect(applied == PostgreSQLSchema.migrations.map(\.name))
            // This month's partition and the next ones exist.
            let partitions = try await store.firstColumnText(
                """
                SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                WHERE p.relname = 'reading' ORDER BY c.relname
                """)
            let thisMonth = PostgreSQLSchema.utcMonth(ofMilliseconds: WallClock.nowMs()).key
            #expect(partitions.contains("reading_p\(thisMonth)"))
            #expect(partitions.contains("reading_default"))
            #expect(partitions.count == PostgreSQLSchema.monthsAhead + 2)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func readingsOfThisMonthGoToItsPartitionAndTheKeysHoldTheMeterAndTimestamp() async throws {
        do {
            let address = try await PostgresTestServer.shared().createDatabase()
            let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
            let writer = try store.makeWriter(WriterSettings())
            let now = WallClock.nowMs()
            _ = try writer.commit([
                IngestSubmission(
                    readings: [SubmittedReading(reading: Reading(meter: "A", seq: 1, timestampMs: now, kwh: 1), line: 1, receivedMs: now)],
                    receiver: nil)
            ])
            let month = PostgreSQLSchema.utcMonth(ofMilliseconds: now).key
            #expect(try await store.firstColumnText("SELECT count(*)::text FROM reading_p\(month)") == ["1"])
            // Every unique index of reading holds meter_id and ts_ms (Citus-ready).
            let keys = try await store.firstColumnText(
                """
                SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
                WHERE c.relname = 'reading' AND i.indisunique
                """)
            #expect(!keys.isEmpty)
            for key in keys { #expect(key.contains("meter_id") && key.contains("ts_ms"), "\(key)") }

            // Acks wait for durable commits even where the database's default says otherwise.
            _ = try await store.firstColumnText("ALTER DATABASE \(address.database) SET synchronous_commit = off")
            let reopened = try PostgreSQLMeterStore(address: address, logger: testLogger)
            #expect(try await reopened.firstColumnText("SHOW synchronous_commit") == ["on"])
        }
    }
}

/// What one commit costs on each store: `METERD_MEASURE=1 swift test --filter CommitCostMeasurement`.
/// Not run by default (it measures the machine as much as meterd); it prints the figures.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["METERD_MEASURE"] == "1"))
struct CommitCostMeasurement {
    @Test(.timeLimit(.minutes(5)), arguments: StoreBackend.allCases)
    func commitLatencyAndRoundTrips(backend: StoreBackend) async throws {
        try await backend.withFreshStore { location in
            let store = try location.open(logger: testLogger)
            let writer = try store.makeWriter(WriterSettings())
            let meters = 1_000
            let batch = 5_000
            let batches = 20
            func submission(_ round: Int) -> IngestSubmission {
                let now = WallClock.nowMs()
                return IngestSubmission(
                    readings: (0..<batch).map { index in
                        let reading = Reading(
                            meter: String(format: "MTR-%06d", index % meters), seq: Int64(round * batch + index + 1), timestampMs: now - 1000,
                            kwh: 0.25)
                        return SubmittedReading(reading: reading, line: index + 1, receivedMs: now)
                    }, receiver: nil)
            }
            _ = try writer.commit([submission(0)])  // registers the meters
            let commitsBefore = try await Self.transactions(store)
            let serverBefore = try await Self.serverCPUSeconds(store)
            let clientBefore = Self.cpuSeconds(pid: getpid())
            var durations: [Duration] = []
            for round in 1...batches {
                let started = ContinuousClock.now
                let result = try writer.commit([submission(round)])
                durations.append(ContinuousClock.now - started)
                #expect(result.stored == batch)
            }
            let clientAfter = Self.cpuSeconds(pid: getpid())
            let serverAfter = try await Self.serverCPUSeconds(store)
            let commitsAfter = try await Self.transactions(store)
            let perMillion = 1_000_000 / Double(batch * batches)
            durations.sort()
            let median = durations[durations.count / 2]
            let transactions = commitsAfter.map { after in commitsBefore.map { after - $0 } ?? -1 }
            print(
                "commit cost \(backend): \(batch) readings over \(meters) meters per commit, median \(median), "
                    + "max \(durations.last!), server transactions for \(batches) commits: \(transactions.map(String.init) ?? "n/a"), "
                    + "CPU-s per million readings: test process (debug build) \((clientAfter - clientBefore) * perMillion), "
                    + "PostgreSQL backends \(serverAfter.map { after in String((after - (serverBefore ?? 0)) * perMillion) } ?? "n/a")")
        }
    }

    /// User plus system CPU seconds of a process so far, from /proc.
    static func cpuSeconds(pid: pid_t) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, utime 14 and stime 15 (1-based, as in proc(5)).
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// CPU seconds of the server processes serving this database (PostgreSQL only).
    static func serverCPUSeconds(_ store: any MeterStore) async throws -> Double? {
        guard let store = store as? PostgreSQLMeterStore else { return nil }
        let pids = try await store.firstColumnText("SELECT pid::text FROM pg_stat_activity WHERE datname = current_database()")
        return pids.compactMap { Int32($0) }.map { Self.cpuSeconds(pid: $0) }.reduce(0, +)
    }

    /// Transactions the server committed in this database so far (PostgreSQL only).
    static func transactions(_ store: any MeterStore) async throws -> Int? {
        guard let store = store as? PostgreSQLMeterStore else { return nil }
        // The statistics collector reports with a delay; the snapshot is cleared first.
        _ = try await store.firstColumnText("SELECT pg_stat_clear_snapshot()::text")
        try await Task.sleep(for: .milliseconds(700))
        return try await store.firstColumnText("SELECT xact_commit::text FROM pg_stat_database WHERE datname = current_database()").first
            .flatMap { Int($0) }
    }
}
