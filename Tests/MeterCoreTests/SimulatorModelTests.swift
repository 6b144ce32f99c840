import Testing

@testable import MeterCore
@testable import SimulatorCore

/// The simulator's pieces without a network: fault specs, replies, histogram, clock and load model.
@Suite
struct SimulatorModelTests {
    @Test
    func faultSpecParsesEveryFault() throws {
        let plan = try FaultPlan(parsing: "silent=0.01:120,malformed=0.001,skew=0.01,duplicate=0.01,disconnect=0.001,bytewise=0.01,overlong=0.0005")
        #expect(plan.silentRate == 0.01)
        #expect(plan.silentSeconds == 120)
        #expect(plan.malformedRate == 0.001)
        #expect(plan.skewRate == 0.01)
        #expect(plan.skewSeconds == 3600)
        #expect(plan.duplicateRate == 0.01)
        #expect(plan.disconnectRate == 0.001)
        #expect(plan.bytewiseRate == 0.01)
        #expect(plan.overlongRate == 0.0005)
        #expect(try FaultPlan(parsing: "") == FaultPlan())
        #expect(try FaultPlan(parsing: "skew=1:60").skewSeconds == 60)
    }

    @Test(arguments: ["silent", "silent=2", "silent=-0.1", "bogus=0.1", "malformed=0.1:5", "silent=0.1:0", "skew=0.1:x"])
    func faultSpecRejectsNonsense(_ spec: String) {
        #expect(throws: FaultSpecError.self) { try FaultPlan(parsing: spec) }
    }

    @Test
    func repliesOfTheDaemonAreRead() {
        #expect(DaemonReply.parse(#"{"meter":"MTR-000123","ack":42}"#) == .ack(meter: "MTR-000123", seq: 42))
        #expect(DaemonReply.parse(#"{"error":"clock_skew","line":17,"detail":"ts \"x\" is ahead"}"#) == .error(code: "clock_skew", line: 17))
        #expect(DaemonReply.parse(#"{"busy":true,"retry_after_ms":500}"#) == .busy(retryAfterMs: 500))
        #expect(DaemonReply.parse("garbage") == nil)
        #expect(DaemonReply.parse(#"{"meter":"M","ack":99999999999999999999999}"#) == nil)
    }

    @Test
    func histogramQuantilesAreWithinThreePercent() throws {
        var histogram = LatencyHistogram()
        for value in 1...100_000 { histogram.record(UInt64(value)) }
        for (q, exact) in [(0.5, 50_000.0), (0.95, 95_000.0), (0.99, 99_000.0)] {
            let estimate = Double(try #require(histogram.quantile(q)))
            #expect(abs(estimate - exact) / exact < 0.03, "q\(q): \(estimate)")
        }
        #expect(histogram.quantile(1) == 100_000)
        #expect(LatencyHistogram().quantile(0.5) == nil)
        var small = LatencyHistogram()
        small.record(7)
        #expect(small.quantile(0.99) == 7)
    }

    @Test
    func acceleratedClockEndsAtNowAndNeverRunsAhead() {
        let start: Int64 = 1_780_000_000_000
        let clock = SimulatedClock(startWallMs: start, timeScale: 2_880, spanSeconds: 900)
        #expect(clock.meterTime(atWallMs: start) == start - 2_879 * 900_000)  // a simulated month back
        #expect(clock.meterTime(atWallMs: start + 900_000) == start + 900_000)
        #expect(clock.meterTime(atWallMs: start + 2_000_000) == start + 2_000_000)  // real speed once caught up
        let realTime = SimulatedClock(startWallMs: start, timeScale: 1, spanSeconds: nil)
        #expect(realTime.meterTime(atWallMs: start + 5) == start + 5)
    }

    @Test
    func fleetIsDeterministicWithTheUseCaseHealthMixAndAllRegions() {
        var counts: [MeterHealth: Int] = [:]
        var regions: [SimulatedRegion: Int] = [:]
        let n = 20_000
        for index in 0..<n {
            let model = MeterModel(index: index, seed: 42)
            counts[model.health, default: 0] += 1
            regions[model.region, default: 0] += 1
            #expect(model.averageKilowatts >= 0.15 && model.averageKilowatts <= 1.3)
        }
        // Binomial standard deviation at n = 20,000 is ≤ 0.0033: 0.015 is more than four of them.
        #expect(abs(Double(counts[.good] ?? 0) / Double(n) - 0.7) < 0.015)
        #expect(abs(Double(counts[.fair] ?? 0) / Double(n) - 0.2) < 0.015)
        #expect(abs(Double(counts[.poor] ?? 0) / Double(n) - 0.1) < 0.015)
        #expect(regions.count == 4 && regions.values.allSatisfy { $0 > n / 5 })

        var a = MeterModel(index: 7, seed: 42)
        var b = MeterModel(index: 7, seed: 42)
        let t: Int64 = 1_780_000_000_000
        for k in 0..<100 {
            let ts = t + Int64(k) * 900_000
            #expect(
                a.reading(meter: "M", seq: Int64(k), previousMs: ts - 900_000, timestampMs: ts)
                    == b.reading(meter: "M", seq: Int64(k), previousMs: ts - 900_000, timestampMs: ts))
        }
    }

    @Test
    func readingsFollowADailyCurveAndTheHealthMixWithOccasionalFaults() throws {
        // A month of 15-minute readings of 400 meters.
        let start = Int64(RFC3339.daysFromCivil(year: 2026, month: 1, day: 5)) * 86_400_000
        var night = 0.0, evening = 0.0
        var statuses: [MeterHealth: Int] = [:]
        var faults = 0, total = 0
        var monthly: [Double] = []
        let parser = ReadingParser(maximumKwh: 1_000)
        for index in 0..<400 {
            var model = MeterModel(index: index, seed: 9)
            var month = 0.0
            for step in 1...(30 * 96) {
                let ts = start + Int64(step) * 900_000
                let reading = model.reading(meter: "M", seq: Int64(step), previousMs: ts - 900_000, timestampMs: ts)
                let hour = (ts / 3_600_000) % 24
                if hour == 3 { night += reading.kwh }
                if hour == 19 { evening += reading.kwh }
                month += reading.kwh
                statuses[reading.status, default: 0] += 1
                total += 1
                if reading.fault != nil { faults += 1 }
                #expect(reading.kwh >= 0)
                #expect(try parser.parse(String(reading.line.dropLast())) == reading)
            }
            monthly.append(month)
        }
        #expect(evening > 1.8 * night)
        #expect(abs(Double(statuses[.good] ?? 0) / Double(total) - 0.7) < 0.05)
        #expect(abs(Double(statuses[.poor] ?? 0) / Double(total) - 0.1) < 0.04)
        #expect(faults > 0 && Double(faults) / Double(total) < 0.01)
        let mean = monthly.reduce(0, +) / Double(monthly.count)
        #expect(mean > 200 && mean < 700, "mean monthly kWh \(mean)")
    }

    @Test
    func regionsDiffer() {
        // Mid-July, 15:00 UTC: the South cools, the North does not heat.
        let july = Int64(RFC3339.daysFromCivil(year: 2026, month: 7, day: 15)) * 86_400_000 + 15 * 3_600_000
        #expect(LoadCurve.factor(atMilliseconds: july, region: .south) > 1.3 * LoadCurve.factor(atMilliseconds: july, region: .north))
        // Mid-January, 19:30: the North heats.
        let january = Int64(RFC3339.daysFromCivil(year: 2026, month: 1, day: 14)) * 86_400_000 + 19 * 3_600_000 + 1_800_000
        #expect(LoadCurve.factor(atMilliseconds: january, region: .north) > 1.2 * LoadCurve.factor(atMilliseconds: january, region: .south))
    }

    @Test
    func ledgerCSVRoundTrips() throws {
        let entries = [
            LedgerEntry(meter: "MTR-000001", ackedMaxSeq: 42, ackedKwh: 1.234567, ackedReadings: 42),
            LedgerEntry(meter: "MTR-000002", ackedMaxSeq: nil, ackedKwh: 0, ackedReadings: 0),
        ]
        let text = LedgerEntry.csv(entries)
        #expect(text.hasPrefix("meter,acked_max_seq,acked_kwh,acked_readings\nMTR-000001,42,1.234567,42\nMTR-000002,,0.0,0\n"))
        #expect(LedgerEntry.parse(csv: text) == entries)
    }
}
