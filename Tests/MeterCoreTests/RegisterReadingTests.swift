import Foundation
import GRDB
import Hummingbird
import HummingbirdTesting
import Synchronization
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// Register readings, gap estimation and validation flags (SPEC.md section 11, issue 16), against
/// real SQLite files and, end to end, a real TCP listener. Every expected number is worked out by
/// hand in the comments beside it.
@Suite struct RegisterReadingTests {
    static let utc = TimeZone(identifier: "UTC")!
    static let newYork = TimeZone(identifier: "America/New_York")!

    func submission(_ readings: [Reading], receivedMs: Int64? = nil) -> IngestSubmission {
        IngestSubmission(
            readings: readings.enumerated().map {
                SubmittedReading(reading: $1, line: $0 + 1, receivedMs: receivedMs ?? ($1.timestampMs + 1000))
            },
            receiver: nil)
    }

    func makeWriter(_ database: MeterDatabase, timeZone: TimeZone = utc, metering: MeteringRules = MeteringRules()) throws -> IngestWriter {
        try IngestWriter(
            database: database, calendar: MonthCalendar(timeZone: timeZone), tariff: Tariff(), unknownMeters: .register, metering: metering)
    }

    func register(_ meter: String, _ seq: Int64, _ ts: String, _ value: Double, volts: Double? = nil) -> Reading {
        Reading(meter: meter, seq: seq, timestampMs: RFC3339.parseMilliseconds(ts)!, registerKwh: value, voltage: volts)
    }

    /// `kwh` of each stored reading of a meter, by seq.
    func storedKwh(_ database: MeterDatabase, meter: String) async throws -> [Int64: Double] {
        try await database.pool.read { db in
            var result: [Int64: Double] = [:]
            for row in try Row.fetchAll(
                db, sql: "SELECT seq, kwh FROM reading JOIN meter ON meter.id = meter_id WHERE name = ?", arguments: [meter])
            {
                result[row["seq"]] = row["kwh"]
            }
            return result
        }
    }

    struct MonthRow: Equatable, CustomStringConvertible {
        var month: Int
        var kwh: Double
        var readings: Int
        var estimated: Int
        var estimatedKwh: Double
        var description: String { "\(self.month): \(self.kwh) kWh, \(self.readings) readings, estimated \(self.estimated)/\(self.estimatedKwh)" }
    }

    func months(_ database: MeterDatabase, meter: String) async throws -> [MonthRow] {
        try await database.pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT month, kwh, readings, estimated, estimated_kwh FROM meter_month JOIN meter ON meter.id = meter_id
                    WHERE name = ? ORDER BY month
                    """, arguments: [meter]
            ).map {
                MonthRow(month: $0["month"], kwh: $0["kwh"], readings: $0["readings"], estimated: $0["estimated"], estimatedKwh: $0["estimated_kwh"])
            }
        }
    }

    func flags(_ database: MeterDatabase) async throws -> [(seq: Int64, rule: String)] {
        try await database.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT seq, rule FROM validation_flag ORDER BY id").map { ($0["seq"], $0["rule"]) }
        }
    }

    // MARK: The rules

    @Test func registerStepsClassifyBaselineAdvanceRolloverAndReset() {
        let rules = MeteringRules()  // 6 digits: wraps after 999,999.999… kWh; max_kwh 1000
        #expect(rules.registerCapacity == 1_000_000)
        #expect(rules.step(from: nil, to: 42) == .baseline)
        #expect(rules.step(from: 100, to: 100.5) == .advance(kwh: 0.5))
        #expect(rules.step(from: 100, to: 100) == .advance(kwh: 0))
        // 999,999.5 → 0.25: 1,000,000 − 999,999.5 + 0.25 = 0.75 ≤ 1000.
        #expect(rules.step(from: 999_999.5, to: 0.25) == .rollover(kwh: 0.75))
        // 999,500 → 499: 500 + 499 = 999 ≤ 1000, still a rollover; → 501 makes 1001, a reset.
        #expect(rules.step(from: 999_500, to: 499) == .rollover(kwh: 999))
        #expect(rules.step(from: 999_500, to: 501) == .reset(wrappedKwh: 1001))
        // 2.25 → 0.5: 999,998.25 would be a rollover's difference: a reset.
        #expect(rules.step(from: 2.25, to: 0.5) == .reset(wrappedKwh: 999_998.25))
        // A rise above max_kwh per expected interval (at least one) is a jump, not consumption:
        // 1000 kWh in 15 minutes or less, 2000 in half an hour, 96,000 in a day.
        #expect(rules.step(from: 50, to: 1050, elapsedMs: 60_000) == .advance(kwh: 1000))
        #expect(rules.step(from: 50, to: 2050, elapsedMs: 60_000) == .jump(kwh: 2000))
        #expect(rules.step(from: 50, to: 2050, elapsedMs: 1_800_000) == .advance(kwh: 2000))
        #expect(rules.step(from: 0, to: 96_000, elapsedMs: 86_400_000) == .advance(kwh: 96_000))
        #expect(rules.step(from: 0, to: 96_001, elapsedMs: 86_400_000) == .jump(kwh: 96_001))
        #expect(rules.step(from: 100, to: 5000, elapsedMs: -60_000) == .jump(kwh: 4900))
        var fourDigits = MeteringRules()
        fourDigits.registerDigits = 4
        // 9,999.5 → 1.5 on a 4-digit register: 10,000 − 9,999.5 + 1.5 = 2.
        #expect(fourDigits.step(from: 9_999.5, to: 1.5) == .rollover(kwh: 2))
    }

    @Test func aSpikeIsJudgedAgainstTheUpperMedianOfTheTrailingWindow() {
        let rules = MeteringRules()  // spike_factor 10, at least 5 values
        #expect(!rules.isSpike(100, trailing: [1, 1, 1, 1]))  // too few to judge
        // Sorted 0.1, 1, 1, 1, 1: the median is 1, not the smallest value.
        #expect(rules.isSpike(10.5, trailing: [1, 0.1, 1, 1, 1]))
        #expect(!rules.isSpike(10, trailing: [1, 0.1, 1, 1, 1]))
        #expect(!rules.isSpike(5, trailing: [1, 0.1, 1, 1, 1]))
        // Six values: the upper median (index 3 of 0, 0, 0, 2, 2, 2) is 2.
        #expect(!rules.isSpike(20, trailing: [0, 0, 0, 2, 2, 2]))
        #expect(rules.isSpike(20.5, trailing: [0, 0, 0, 2, 2, 2]))
        // A median of 0 judges nothing.
        #expect(!rules.isSpike(5, trailing: [0, 0, 0, 0, 1]))
    }

    @Test func spreadingSplitsAGapByTimeOverTheZonesMonths() throws {
        var calendar = MonthCalendar(timeZone: Self.newYork)
        // 2026-11-01T00:00Z is still 31 October (20:00 EDT); November starts at 04:00Z. 12 h of gap,
        // 4 in October and 8 in November: 60 kWh give 20 and 40.
        let start = try #require(RFC3339.parseMilliseconds("2026-11-01T00:00:00Z"))
        let end = try #require(RFC3339.parseMilliseconds("2026-11-01T12:00:00Z"))
        let shares = calendar.spread(60, fromMilliseconds: start, to: end)
        #expect(shares.map(\.month) == [Month(year: 2026, month: 10), Month(year: 2026, month: 11)])
        #expect(shares.map(\.kwh) == [20, 40])
        // In UTC the same gap lies in November alone.
        var utc = MonthCalendar(timeZone: Self.utc)
        #expect(utc.spread(60, fromMilliseconds: start, to: end).map(\.kwh) == [60])
    }

    // MARK: The writer

    @Test func registersBecomeConsumptionThroughRolloverAndReset() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            var writer = try self.makeWriter(database)
            let readings = [
                self.register("A", 1, "2026-11-10T12:00:00Z", 999_998.5),  // baseline: 0
                self.register("A", 2, "2026-11-10T12:01:00Z", 999_999.5),  // +1
                self.register("A", 3, "2026-11-10T12:02:00Z", 0.25),  // rollover: 0.5 + 0.25 = 0.75
                self.register("A", 4, "2026-11-10T12:03:00Z", 2.25),  // +2
                self.register("A", 5, "2026-11-10T12:04:00Z", 0.5),  // reset (999,998.25 > 1000): 0, flagged
                self.register("A", 6, "2026-11-10T12:05:00Z", 3.5),  // +3 from the new baseline
            ]
            let result = try writer.commit([self.submission(Array(readings[0..<3])), self.submission(Array(readings[3...]))])
            #expect(result.stored == 6)
            #expect(result.flags == 1)
            #expect(try await self.storedKwh(database, meter: "A") == [1: 0, 2: 1, 3: 0.75, 4: 2, 5: 0, 6: 3])
            #expect(try await self.months(database, meter: "A") == [MonthRow(month: 202611, kwh: 6.75, readings: 6, estimated: 0, estimatedKwh: 0)])
            #expect(try await self.flags(database).map(\.rule) == ["register_reset"])
            #expect(try await self.flags(database).map(\.seq) == [5])

            // Resent readings, in a batch and after a restart, change nothing.
            var again = try writer.commit([self.submission(Array(readings[3...]))])
            #expect(again.duplicates == 3)
            writer = try self.makeWriter(database)
            again = try writer.commit([self.submission(readings)])
            #expect(again.duplicates == 6)
            #expect(again.flags == 0)
            // The baseline survives the restart: 3.5 → 4 is 0.5.
            again = try writer.commit([self.submission([self.register("A", 7, "2026-11-10T12:06:00Z", 4)])])
            #expect(again.stored == 1)
            #expect(try await self.storedKwh(database, meter: "A")[7] == 0.5)
            #expect(try await self.months(database, meter: "A").map(\.kwh) == [7.25])
            #expect(try await self.flags(database).count == 1)
        }
    }

    /// One corrupted register or a meter exchanged for one with a higher register must not put a
    /// million kWh on a bill: a rise no meter could consume in the time is a new baseline, flagged.
    @Test func aRegisterRiseBeyondMaxKwhPerIntervalIsANewBaselineNotConsumption() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            var writer = try self.makeWriter(database)
            let readings = [
                self.register("J", 1, "2026-11-10T12:00:00Z", 50),  // baseline: 0
                self.register("J", 2, "2026-11-10T12:01:00Z", 2050),  // 2000 kWh in a minute: a jump, 0, flagged
                self.register("J", 3, "2026-11-10T12:02:00Z", 2051.5),  // +1.5 from the new baseline
                self.register("J", 4, "2026-11-10T12:03:00Z", 999_999.75),  // a jump again
                self.register("J", 5, "2026-11-10T12:04:00Z", 0.25),  // rollover: 0.25 + 0.25 = 0.5
            ]
            let result = try writer.commit([self.submission(readings)])
            #expect(result.stored == 5)
            #expect(try await self.storedKwh(database, meter: "J") == [1: 0, 2: 0, 3: 1.5, 4: 0, 5: 0.5])
            #expect(try await self.months(database, meter: "J").map(\.kwh) == [2])
            #expect(try await self.flags(database).map(\.rule) == ["register_reset", "register_reset"])
            #expect(try await self.flags(database).map(\.seq) == [2, 4])
            // After a restart the baseline and its time are the stored ones: the rule judges alike.
            writer = try self.makeWriter(database)
            _ = try writer.commit([self.submission([self.register("J", 6, "2026-11-10T12:05:00Z", 1500)])])
            #expect(try await self.storedKwh(database, meter: "J")[6] == 0)
            #expect(try await self.flags(database).map(\.seq) == [2, 4, 6])
        }
    }

    /// A meter whose clock fell back to 1970 for one reading (flagged `clock_backwards`) must not
    /// stretch its next reading's gap back over decades: that reading's energy lands where its
    /// time says, not a sliver in each of 680 months.
    @Test func aReadingWhoseClockWentBackDoesNotStretchTheNextOnesGap() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database)
            _ = try writer.commit([
                self.submission([
                    self.register("C", 1, "2026-12-04T09:00:00Z", 100),  // baseline
                    self.register("C", 2, "1970-01-01T00:00:00Z", 100.25),  // clock reset: 0.25 in its month, flagged
                    self.register("C", 3, "2026-12-04T09:15:00Z", 100.5),  // 15 min after seq 1: no gap, 0.25
                ])
            ])
            #expect(try await self.storedKwh(database, meter: "C") == [1: 0, 2: 0.25, 3: 0.25])
            #expect(
                try await self.months(database, meter: "C") == [
                    MonthRow(month: 197001, kwh: 0.25, readings: 1, estimated: 0, estimatedKwh: 0),
                    MonthRow(month: 202612, kwh: 0.25, readings: 2, estimated: 0, estimatedKwh: 0),
                ])
            #expect(try await self.flags(database).map(\.rule) == ["clock_backwards"])
            // A real gap after it is measured from 09:15, the chain's latest time: 12 h, one month.
            _ = try writer.commit([self.submission([self.register("C", 4, "2026-12-04T21:15:00Z", 110.5)])])
            #expect(try await self.months(database, meter: "C").map(\.kwh) == [0.25, 10.25])

            // A chain that starts after a kwh reading with its baseline in 1970 is timed from the
            // kwh reading too: 900 kWh in the 30 minutes since lies in December, and 999,000 a
            // minute later is a jump, not 56 years' consumption.
            let kwhReading = Reading(meter: "K", seq: 1, timestampMs: RFC3339.parseMilliseconds("2026-12-04T09:30:00Z")!, kwh: 1)
            _ = try writer.commit([
                self.submission([
                    kwhReading, self.register("K", 2, "1970-01-01T00:00:00Z", 0), self.register("K", 3, "2026-12-04T10:00:00Z", 900),
                    self.register("K", 4, "2026-12-04T10:01:00Z", 999_900),
                ])
            ])
            #expect(try await self.storedKwh(database, meter: "K") == [1: 1, 2: 0, 3: 900, 4: 0])
            let kMonths = try await self.months(database, meter: "K")
            #expect(kMonths.map(\.month) == [197001, 202612], "\(kMonths)")
            #expect(kMonths.map(\.kwh) == [0, 901])
            #expect(try await self.flags(database).map(\.rule) == ["clock_backwards", "clock_backwards", "register_reset"])
        }
    }

    @Test func aMissingPredecessorStillGivesTheRightTotal() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database)
            // seq 2 never arrives before seq 3: 100 → 105.5 is 5.5, seq 2's energy included.
            _ = try writer.commit([
                self.submission([self.register("A", 1, "2026-11-10T12:00:00Z", 100), self.register("A", 3, "2026-11-10T12:10:00Z", 105.5)])
            ])
            // When it turns up after all, it is below the high-water mark: a duplicate, not a second difference.
            let late = try writer.commit([self.submission([self.register("A", 2, "2026-11-10T12:05:00Z", 102)])])
            #expect(late.duplicates == 1)
            #expect(try await self.storedKwh(database, meter: "A") == [1: 0, 3: 5.5])
            #expect(try await self.months(database, meter: "A").map(\.kwh) == [5.5])
        }
    }

    @Test func aKwhReadingEndsTheRegistersChain() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database)
            let ts = try #require(RFC3339.parseMilliseconds("2026-11-10T12:00:00Z"))
            // 10 → (a kwh reading of 2) → 13: the 3 kWh the register counted include the kwh reading's 2,
            // so the register after it is a new baseline: 0 + 2 + 0, then 13 → 14 is 1.
            _ = try writer.commit([
                self.submission([
                    Reading(meter: "A", seq: 1, timestampMs: ts, registerKwh: 10),
                    Reading(meter: "A", seq: 2, timestampMs: ts + 60_000, kwh: 2),
                    Reading(meter: "A", seq: 3, timestampMs: ts + 120_000, registerKwh: 13),
                    Reading(meter: "A", seq: 4, timestampMs: ts + 180_000, registerKwh: 14),
                ])
            ])
            #expect(try await self.storedKwh(database, meter: "A") == [1: 0, 2: 2, 3: 0, 4: 1])
        }
    }

    @Test func aGapAcrossAMonthBoundaryIsSpreadInTheZonesMonthsAndMarkedEstimated() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database, timeZone: Self.newYork)  // expected interval 900 s
            _ = try writer.commit([
                self.submission([
                    // 20:00 EDT on 31 October: October in New York (November in UTC).
                    self.register("A", 1, "2026-11-01T00:00:00Z", 1_000),
                    // 12 h later (07:00 EST, after the DST change): 60 kWh over 4 h of October and 8 of November.
                    self.register("A", 2, "2026-11-01T12:00:00Z", 1_060),
                    // 10 minutes later, within the interval: 1.5 kWh, all November's, not estimated.
                    self.register("A", 3, "2026-11-01T12:10:00Z", 1_061.5),
                    // A gap of 5 h 50 min inside November: 2 kWh, November's alone, nothing estimated.
                    self.register("A", 4, "2026-11-01T18:00:00Z", 1_063.5),
                ])
            ])
            #expect(try await self.storedKwh(database, meter: "A") == [1: 0, 2: 60, 3: 1.5, 4: 2])
            #expect(
                try await self.months(database, meter: "A") == [
                    MonthRow(month: 202610, kwh: 20, readings: 1, estimated: 1, estimatedKwh: 20),
                    MonthRow(month: 202611, kwh: 43.5, readings: 3, estimated: 1, estimatedKwh: 40),
                ])
            // The row keeps where the spread began, so a replay spreads it the same way.
            let span = try await database.pool.read { db in
                try Int64.fetchAll(db, sql: "SELECT span_start_ms FROM reading WHERE span_start_ms IS NOT NULL ORDER BY seq")
            }
            #expect(span == [RFC3339.parseMilliseconds("2026-11-01T00:00:00Z")!, RFC3339.parseMilliseconds("2026-11-01T12:10:00Z")!])
        }
    }

    @Test func aGapOverAWholeMonthGivesThatMonthItsShareAndTheKPIsCountIt() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database, timeZone: Self.newYork)
            let rollups = KPIRollups()
            writer.commitListener = rollups
            _ = try writer.commit([
                self.submission([
                    // 12:00 EDT on 30 September, then nothing until 11:00 EST on 1 November: 768 h,
                    // 12 in September, 744 in October (all EDT), 12 in November; 768 kWh at 1 kWh/h.
                    self.register("B", 1, "2026-09-30T16:00:00Z", 5_000),
                    self.register("B", 2, "2026-11-01T16:00:00Z", 5_768),
                ])
            ])
            #expect(
                try await self.months(database, meter: "B") == [
                    MonthRow(month: 202609, kwh: 12, readings: 1, estimated: 1, estimatedKwh: 12),
                    MonthRow(month: 202610, kwh: 744, readings: 0, estimated: 1, estimatedKwh: 744),
                    MonthRow(month: 202611, kwh: 12, readings: 1, estimated: 1, estimatedKwh: 12),
                ])

            // October had no reading, yet its energy counts: in the KPIs, live, and after a reload.
            let store = SQLiteMeterStore(database: database)
            let period = try KPIPeriod(from: Month(year: 2026, month: 9), to: Month(year: 2026, month: 11))
            for engine in [
                KPIEngine(store: store, rollups: rollups, settings: KPISettings(timeZone: Self.newYork)),
                KPIEngine(store: store, settings: KPISettings(timeZone: Self.newYork)),
            ] {
                let document = try await kpiAnswer(engine, period)
                #expect(document.monthlyConsumption.map(\.kwh) == [12, 744, 12])
                #expect(document.monthlyConsumption.map(\.estimated) == [true, true, true])
                #expect(document.totalConsumptionKwh == 768)
                // Three meter-month records (Sept, Oct, Nov): 768 / 3.
                #expect(document.averageConsumptionKwh == 256)
                // Health over the two months with a status (both good): 100 %.
                #expect(document.meterHealth.good == 100)
                #expect(close(document.totalRevenue, 768 * 0.15))
            }
            // meterctl kpi's tables say so too.
            let text = KPITextReport.render(try await kpiAnswer(KPIEngine(store: store, settings: KPISettings(timeZone: Self.newYork)), period))
            #expect(text.contains("(estimated)"))
            #expect(text.contains("validation flags spike / zero_run / register_reset / clock_backwards / voltage"))
            // The meter API marks the months too.
            let months = try await store.meterMonths(named: "B")
            #expect(months.map(\.estimated) == [1, 1, 1])
            #expect(months.map(\.estimatedKwh) == [12, 744, 12])
        }
    }

    @Test func deferredAggregatesAndACrashReplayRegistersExactly() async throws {
        try await withTemporaryDirectory { directory in
            let batches: [[Reading]] = [
                [self.register("A", 1, "2026-10-31T20:00:00Z", 999_990), self.register("B", 1, "2026-10-31T20:00:00Z", 50)],
                // A: a gap across New York's month boundary (04:00Z) with a rollover: 10 + 8 = 18 kWh
                // over 12 h, 8 h of October and 4 of November: 12 and 6. B: a reset.
                [self.register("A", 2, "2026-11-01T08:00:00Z", 8), self.register("B", 2, "2026-10-31T20:05:00Z", 1)],
                [self.register("A", 3, "2026-11-01T08:10:00Z", 9.5), self.register("B", 3, "2026-10-31T20:10:00Z", 3)],
            ]
            // The reference: every batch with its aggregates.
            let reference = try MeterDatabase(path: directory + "/reference.sqlite")
            let straight = try self.makeWriter(reference, timeZone: Self.newYork)
            for batch in batches { _ = try straight.commit([self.submission(batch)]) }
            #expect(
                try await self.months(reference, meter: "A") == [
                    MonthRow(month: 202610, kwh: 12, readings: 1, estimated: 1, estimatedKwh: 12),
                    MonthRow(month: 202611, kwh: 7.5, readings: 2, estimated: 1, estimatedKwh: 6),
                ])
            #expect(try await self.months(reference, meter: "B").map(\.kwh) == [2])

            // Deferred: the first batch is flushed, the next two wait, then the writer is dropped (a crash).
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let deferred = try self.makeWriter(database, timeZone: Self.newYork)
            _ = try deferred.commit([self.submission(batches[0])])
            _ = try deferred.commit([self.submission(batches[1])], deferAggregates: true)
            _ = try deferred.commit([self.submission(batches[2])], deferAggregates: true)
            #expect(deferred.hasPendingAggregates)
            let recovered = try self.makeWriter(database, timeZone: Self.newYork)
            for meter in ["A", "B"] {
                let replayed = try await self.months(database, meter: meter)
                let expected = try await self.months(reference, meter: meter)
                #expect(replayed == expected, "meter \(meter)")
            }
            // The replay restored the baselines: resends are duplicates, the next registers continue.
            let next = [self.register("A", 4, "2026-11-01T08:20:00Z", 10), self.register("B", 4, "2026-10-31T20:15:00Z", 4)]
            let result = try recovered.commit([self.submission(batches[2] + next)])
            #expect(result.duplicates == 2)
            #expect(try await self.storedKwh(database, meter: "A")[4] == 0.5)
            #expect(try await self.storedKwh(database, meter: "B")[4] == 1)
            #expect(try await self.flags(database).map(\.rule) == ["register_reset"])
        }
    }

    // MARK: Flags

    @Test func clockBackwardsAndVoltageAreFlaggedAndCountedInTheKPIs() async throws {
        try await withTemporaryDirectory { directory in
            try writeCSV(
                directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-01-05", "2,South,2023-01-05"])
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database)
            _ = try CompanyImporter.importDirectory(directory, into: writer)
            let ts = try #require(RFC3339.parseMilliseconds("2026-11-10T12:00:00Z"))
            let result = try writer.commit([
                self.submission([
                    Reading(meter: "MTR-000001", seq: 1, timestampMs: ts, kwh: 1, voltage: 230),
                    // Ten minutes before the previous reading: clock_backwards (and still stored).
                    Reading(meter: "MTR-000001", seq: 2, timestampMs: ts - 600_000, kwh: 1, voltage: 206.9),
                    Reading(meter: "MTR-000001", seq: 3, timestampMs: ts + 60_000, kwh: 1, voltage: 253),
                    Reading(meter: "MTR-000002", seq: 1, timestampMs: ts, registerKwh: 7, voltage: 260),
                    Reading(meter: "MTR-000002", seq: 2, timestampMs: ts + 60_000, registerKwh: 1, voltage: 231),
                ])
            ])
            #expect(result.stored == 5)
            // seq 2 of meter 1: clock_backwards and voltage (206.9 < 207); 253 is inside; meter 2:
            // 260 > 253, then 7 → 1 a reset.
            #expect(result.flags == 4)
            #expect(try await self.flags(database).map(\.rule) == ["clock_backwards", "voltage", "voltage", "register_reset"])

            let store = SQLiteMeterStore(database: database)
            let november = try KPIPeriod(from: Month(year: 2026, month: 11), to: Month(year: 2026, month: 11))
            let engine = KPIEngine(store: store, settings: KPISettings())
            let all = try await kpiAnswer(engine, november).validationFlags
            #expect(all == KPIDocument.ValidationFlags(counts: [.clockBackwards: 1, .voltage: 2, .registerReset: 1]))
            let north = try await kpiAnswer(engine, november, region: "North").validationFlags
            #expect(north == KPIDocument.ValidationFlags(counts: [.clockBackwards: 1, .voltage: 1]))
            let october = try KPIPeriod(from: Month(year: 2026, month: 10), to: Month(year: 2026, month: 10))
            #expect(try await kpiAnswer(engine, october).validationFlags == KPIDocument.ValidationFlags())
            // The key is there with every rule, 0 where none was raised.
            let json = try await kpiDocument(engine, november)
            let counts = object(json["validation_flags"]).mapValues { number($0) }
            #expect(counts == ["spike": 0, "zero_run": 0, "register_reset": 1, "clock_backwards": 1, "voltage": 2])
            // A meter's flags, newest first.
            let meterFlags = try await store.validationFlags(meter: "MTR-000001", limit: 10)
            #expect(meterFlags.map(\.rule) == [.voltage, .clockBackwards])
            #expect(meterFlags.map(\.seq) == [2, 2])
        }
    }

    @Test func aSpikeAboveTenTimesTheTrailingMedianIsFlagged() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try self.makeWriter(database)  // spike_factor 10, expected interval 900 s
            let ts = try #require(RFC3339.parseMilliseconds("2026-11-10T12:00:00Z"))
            func reading(_ seq: Int64, _ minutes: Int64, _ kwh: Double) -> Reading {
                Reading(meter: "S", seq: seq, timestampMs: ts + minutes * 60_000, kwh: kwh)
            }
            // seq 1 has no predecessor, so seqs 2–6 fill the window with five 1.0s (median 1):
            // 10.5 > 10 × 1 is a spike; 10 is not above it; 100 after a 2-hour gap is not judged.
            let readings = [
                reading(1, 0, 1), reading(2, 1, 1), reading(3, 2, 1), reading(4, 3, 1), reading(5, 4, 1), reading(6, 5, 1),
                reading(7, 6, 10.5), reading(8, 7, 10), reading(9, 127, 100),
            ]
            let result = try writer.commit([self.submission(readings)])
            #expect(result.stored == 9)
            #expect(try await self.flags(database).map(\.rule) == ["spike"])
            #expect(try await self.flags(database).map(\.seq) == [7])
        }
    }

    @Test func zeroConsumptionForThreeDaysWhileReportingIsOneZeroRunAndSurvivesARestart() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            var writer = try self.makeWriter(database)  // zero_days 3
            let ts = try #require(RFC3339.parseMilliseconds("2026-11-10T00:00:00Z"))
            func reading(_ seq: Int64, _ hours: Int64, _ kwh: Double) -> Reading {
                Reading(meter: "Z", seq: seq, timestampMs: ts + hours * 3_600_000, kwh: kwh)
            }
            // The run starts at seq 1 (the last reading with consumption) and lasts 72 h at seq 7.
            _ = try writer.commit([self.submission([reading(1, 0, 1), reading(2, 12, 0), reading(3, 24, 0), reading(4, 36, 0)])])
            _ = try writer.commit([self.submission([reading(5, 48, 0)])], deferAggregates: true)
            writer = try self.makeWriter(database)  // a restart (the deferred state recovered from the rows)
            _ = try writer.commit([self.submission([reading(6, 60, 0), reading(7, 72, 0), reading(8, 84, 0)])])
            #expect(try await self.flags(database).map(\.seq) == [7])
            // Consumption ends the run; a new one needs three days of its own (96 h + 72 h = 168 h).
            _ = try writer.commit([self.submission([reading(9, 96, 0.5), reading(10, 108, 0), reading(11, 156, 0), reading(12, 168, 0)])])
            #expect(try await self.flags(database).map(\.rule) == ["zero_run", "zero_run"])
            #expect(try await self.flags(database).map(\.seq) == [7, 12])
        }
    }

    // MARK: End to end

    @Test(.timeLimit(.minutes(1)))
    func registerReadingsOverTCPAreAckedAndStoredAsConsumption() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            try configuration.set("register_digits", to: "4")
            try configuration.set("max_kwh", to: "50")
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let client = try await LineClient(port: harness.port)
                let now = WallClock.nowMs() - 300_000
                func line(_ seq: Int64, _ register: String) -> String {
                    #"{"meter":"R-1","seq":\#(seq),"ts":"\#(RFC3339.format(millisecondsSinceEpoch: now + seq * 1000))","register_kwh":\#(register)}"#
                        + "\n"
                }
                // 9,990 → 9,999.5 (+9.5) → 4 (a 4-digit register wraps: 0.5 + 4 = 4.5) → 10,000 does not fit.
                try await client.send(line(1, "9990") + line(2, "9999.5") + line(3, "4") + line(4, "10000"))
                var replies: [String] = []
                while replies.count < 2, let reply = try await client.readLine() { replies.append(reply) }
                #expect(replies.contains(#"{"meter":"R-1","ack":3}"#))
                #expect(replies.contains { $0.hasPrefix(#"{"error":"invalid_field","line":4,"#) && $0.contains("register_kwh") })
                // A resend of the whole lot is acked and adds nothing.
                try await client.send(line(1, "9990") + line(2, "9999.5") + line(3, "4"))
                #expect(try await client.readLine() == #"{"meter":"R-1","ack":3}"#)
                await client.close()
                #expect(try await self.storedKwh(harness.database, meter: "R-1") == [1: 0, 2: 9.5, 3: 4.5])
                #expect(harness.pipeline.statistics.validationFlags.load(ordering: .relaxed) == 0)
                let registers = try await harness.database.pool.read { db in
                    try Double.fetchAll(db, sql: "SELECT register_kwh FROM reading ORDER BY seq")
                }
                #expect(registers == [9990, 9999.5, 4])
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aSimulatedRegisterFleetWithRolloversResetsSpikesAndBackwardClocksMatchesItsLedger() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                // An accelerated clock (ten hours per second, starting 600 hours back): each reading
                // covers six minutes of meter time, so even at the night-time low of the load curve a
                // meter that starts 0.01 kWh below its capacity wraps within its 30 readings, whatever
                // the hour the test runs at; a gap of an hour of meter time takes a tenth of a second.
                let result = try await SimulatorFleetTests.simulate(
                    port: harness.port, meters: 20, readings: 30,
                    faults: "rollover=0.5,reset=0.05,spike=0.05,backwards=0.05,gap=0.02:3600"
                ) {
                    $0.register = true
                    $0.interval = 0.01
                    $0.timeScale = 36_000
                    $0.duration = 60  // a bound for the clock's start; the run ends after 30 readings each
                }
                #expect(result.report.generated == 600)
                #expect(result.report.acked == 600)
                #expect(result.report.unacked == 0)
                #expect(result.report.errorsTotal == 0)
                // The ledger holds what meterd must derive (baselines and resets count 0): it does.
                try await SimulatorFleetTests.expectLedgerMatches(result.ledger, harness.database)
                let (wrapped, resets, backwards, registers, spread) = try await harness.database.pool.read { db in
                    (
                        try Int.fetchOne(
                            db,
                            sql: """
                                SELECT count(*) FROM reading r JOIN reading p ON p.rowid = r.prev_rowid
                                WHERE r.register_kwh < p.register_kwh AND r.kwh > 0
                                """)!,
                        try Int.fetchOne(db, sql: "SELECT count(*) FROM validation_flag WHERE rule = 'register_reset'")!,
                        try Int.fetchOne(db, sql: "SELECT count(*) FROM validation_flag WHERE rule = 'clock_backwards'")!,
                        try Int.fetchOne(db, sql: "SELECT count(*) FROM reading WHERE register_kwh IS NOT NULL")!,
                        try Int.fetchOne(db, sql: "SELECT count(*) FROM reading WHERE span_start_ms IS NOT NULL")!
                    )
                }
                #expect(registers == 600)
                #expect(wrapped > 0, "no register rolled over")
                #expect(resets > 0, "no meter was exchanged")
                #expect(backwards > 0, "no clock went backwards")
                #expect(spread > 0, "no gap was spread")
            }
        }
    }

    @Test func theSimulatorParsesTheRegisterFaults() throws {
        let plan = try FaultPlan(parsing: "rollover=0.1,reset=0.01,spike=0.02,backwards=0.03:60,gap=0.001:2678400")
        #expect(plan.rolloverRate == 0.1)
        #expect(plan.resetRate == 0.01)
        #expect(plan.spikeRate == 0.02)
        #expect(plan.backwardsRate == 0.03)
        #expect(plan.backwardsSeconds == 60)
        #expect(plan.gapRate == 0.001)
        #expect(plan.gapSeconds == 2_678_400)
        #expect(throws: FaultSpecError.self) { try FaultPlan(parsing: "spike=0.1:5") }
        var configuration = SimulationConfiguration(host: "127.0.0.1", port: 7700, meters: 1)
        configuration.faults = plan
        #expect(configuration.validate() != nil)  // rollover and reset need --register
        configuration.register = true
        #expect(configuration.validate() == nil)
    }

    @Test(.timeLimit(.minutes(1)))
    func theAPIShowsEstimatedMonthsFlagsAndRegisters() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            configuration.timeZone = Self.newYork
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let client = try await LineClient(port: harness.port)
                // As in the writer's test: 60 kWh over 4 h of October and 8 of November in New York;
                // then the register goes down by far more than max_kwh: a reset.
                let readings = [
                    self.register("R", 1, "2026-11-01T00:00:00Z", 1_000, volts: 230),
                    self.register("R", 2, "2026-11-01T12:00:00Z", 1_060, volts: 300),
                    self.register("R", 3, "2026-11-01T12:05:00Z", 7),
                ]
                try await client.send(readings.map(\.line).joined())
                #expect(try await client.readLine() == #"{"meter":"R","ack":3}"#)
                await client.close()
                // Counted for /metrics too (meterd_validation_flags_total): the voltage and the reset.
                #expect(harness.pipeline.statistics.validationFlags.load(ordering: .relaxed) == 2)

                let store = SQLiteMeterStore(database: harness.database)
                let engine = KPIEngine(store: store, settings: KPISettings(timeZone: Self.newYork))
                let queries = DashboardQueries(
                    store: store, kpi: engine,
                    operatorQueries: try await makeOperatorQueries(store: store, writer: .pipeline(harness.pipeline), directory: directory))
                let routes = DashboardRoutes(
                    queries: queries, reporter: StatusReporter(pipeline: harness.pipeline, store: store, queries: queries.operatorQueries),
                    assets: DashboardAssets(), logger: testLogger)
                let router = Router(context: MeterRequestContext.self)
                routes.register(on: router)
                try await Application(router: router).test(.router) { client in
                    let meter = try await getJSON(client, "/api/meters/R").json
                    let months = list(meter["monthly"])
                    #expect(months.map { $0["month"] as? String } == ["2026-10", "2026-11"])
                    #expect(months.map { number($0["kwh"]) } == [20, 40])
                    #expect(months.map { $0["estimated"] as? Bool } == [true, true])
                    #expect(months.map { number($0["estimated_kwh"]) } == [20, 40])
                    let flags = list(meter["validation_flags"])
                    #expect(flags.map { $0["rule"] as? String } == ["register_reset", "voltage"])
                    #expect(flags.map { number($0["seq"]) } == [3, 2])

                    let recent = list(try await getJSON(client, "/api/meters/R/readings?limit=10").json["readings"])
                    #expect(recent.map { number($0["register_kwh"]) } == [7, 1_060, 1_000])
                    #expect(recent.map { number($0["kwh"]) } == [0, 60, 0])

                    let kpi = try await getJSON(client, "/api/kpi?from=2026-10&to=2026-11").json
                    let monthly = list(kpi["monthly_consumption"])
                    #expect(monthly.map { number($0["kwh"]) } == [20, 40])
                    #expect(monthly.map { $0["estimated"] as? Bool } == [true, true])
                    let counts = object(kpi["validation_flags"])
                    #expect(number(counts["register_reset"]) == 1 && number(counts["voltage"]) == 1 && number(counts["spike"]) == 0)
                }
            }
        }
    }

    // MARK: Parsing and configuration

    @Test func theParserTakesARegisterInsteadOfKwh() throws {
        let parser = ReadingParser(maximumKwh: 1000, registerCapacity: 1_000_000)
        let reading = try parser.parse(#"{"meter":"M","seq":1,"ts":"2026-11-10T12:00:00Z","register_kwh":123456.789,"v":230}"#)
        #expect(reading.registerKwh == 123_456.789)
        #expect(reading.kwh == 0)
        #expect(try parser.parse(reading.line.trimmingCharacters(in: .newlines)) == reading)
        // A null register is no register.
        #expect(try parser.parse(#"{"meter":"M","seq":1,"ts":"2026-11-10T12:00:00Z","kwh":1,"register_kwh":null}"#).registerKwh == nil)

        func rejection(_ line: String) -> Rejection? {
            do {
                _ = try parser.parse(line)
                return nil
            } catch {
                return error
            }
        }
        let both = rejection(#"{"meter":"M","seq":1,"ts":"2026-11-10T12:00:00Z","kwh":1,"register_kwh":2}"#)
        #expect(both == Rejection(.invalidField, "a reading carries kwh or register_kwh, not both"))
        #expect(rejection(#"{"meter":"M","seq":1,"ts":"2026-11-10T12:00:00Z"}"#)?.code == .missingField)
        #expect(rejection(#"{"meter":"M","seq":1,"ts":"2026-11-10T12:00:00Z","register_kwh":-0.5}"#)?.code == .invalidField)
        #expect(rejection(#"{"meter":"M","seq":1,"ts":"2026-11-10T12:00:00Z","register_kwh":"5"}"#)?.code == .invalidField)
        let tooBig = rejection(#"{"meter":"M","seq":1,"ts":"2026-11-10T12:00:00Z","register_kwh":1000000}"#)
        #expect(tooBig?.code == .invalidField)
        #expect(tooBig?.detail.contains("register_digits") == true)
        // A large register is fine where a kwh that large is not.
        #expect(rejection(#"{"meter":"M","seq":1,"ts":"2026-11-10T12:00:00Z","register_kwh":999999.999}"#) == nil)
    }

    @Test func meteringSettingsComeFromTheConfigFileAndFlags() throws {
        var configuration = try DaemonConfiguration.resolve(
            configFile: nil,
            overrides: [
                ("register_digits", "5"), ("expected_interval", "60"), ("voltage_min", "110"), ("voltage_max", "130"),
                ("spike_factor", "4.5"), ("zero_days", "2"), ("max_kwh", "20"),
            ], environment: [:])
        #expect(configuration.metering.registerCapacity == 100_000)
        #expect(configuration.metering.expectedIntervalMs == 60_000)
        #expect(configuration.metering.voltageMinimum == 110)
        #expect(configuration.metering.voltageMaximum == 130)
        #expect(configuration.metering.spikeFactor == 4.5)
        #expect(configuration.metering.zeroDays == 2)
        #expect(configuration.metering.maximumKwh == 20)
        #expect(configuration.maximumKwh == 20)
        #expect(throws: ConfigurationError.self) { try configuration.set("register_digits", to: "0") }
        #expect(throws: ConfigurationError.self) { try configuration.set("voltage_max", to: "-3") }
        #expect(throws: ConfigurationError.self) {
            try DaemonConfiguration.resolve(configFile: nil, overrides: [("voltage_min", "260")], environment: [:])
        }
        #expect(DaemonConfiguration.keys.map(\.key).contains("register_digits"))
    }
}
