import ArgumentParser
import Foundation
import MeterCore

/// `meter-bench kpi --db PATH --to YYYY-MM`: times the KPI document over a database file (the
/// benchmark of issue 4, not a test; `Benchmarks/kpi.sh` builds the database and runs it).
struct KPIBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kpi",
        abstract: "Time the KPI document over a database: load time, then p50/p95/max per period and region.")

    @Option(help: "The database file to read (no daemon may be writing it).")
    var db: String

    @Option(help: ArgumentHelp("IANA time zone of the calendar months (default UTC).", valueName: "iana-name"))
    var timezone: String = "UTC"

    @Option(help: "Documents computed per case.")
    var iterations = 40

    @Option(help: ArgumentHelp("Last month of the data (the 12- and 24-month periods end here).", valueName: "YYYY-MM"))
    var to: String

    @Option(help: "Region for the filtered cases.")
    var region = "North"

    func run() async throws {
        let engine = try self.engine()
        guard let end = Month(self.to) else { throw ValidationError("--to: expected YYYY-MM") }
        let clock = ContinuousClock()
        let loadStart = clock.now
        _ = try await engine.json(period: .twelveMonths(endingAt: end), region: nil)
        print("first document (loads the store): \(self.milliseconds(clock.now - loadStart)) ms")
        let cases: [(String, KPIPeriod, String?)] = [
            ("12 months, all regions", .twelveMonths(endingAt: end), nil),
            ("12 months, \(self.region)", .twelveMonths(endingAt: end), self.region),
            ("24 months, all regions", try KPIPeriod(from: end.adding(months: -23), to: end), nil),
            ("24 months, \(self.region)", try KPIPeriod(from: end.adding(months: -23), to: end), self.region),
            ("1 month, all regions", try KPIPeriod(from: end, to: end), nil),
        ]
        print("case                          p50 ms   p95 ms   max ms   bytes")
        for (name, period, region) in cases {
            var samples: [Double] = []
            var bytes = 0
            for _ in 0..<self.iterations {
                let start = clock.now
                bytes = try await engine.json(period: period, region: region).utf8.count
                samples.append(self.milliseconds(clock.now - start))
            }
            samples.sort()
            func quantile(_ q: Double) -> Double { samples[min(samples.count - 1, Int((Double(samples.count) * q).rounded(.up)) - 1)] }
            print(
                name.padding(toLength: 28, withPad: " ", startingAt: 0),
                String(format: "%8.2f %8.2f %8.2f %7d", quantile(0.5), quantile(0.95), samples.last ?? 0, bytes))
        }
    }

    /// The engine as `meterctl kpi --db` builds it.
    private func engine() throws -> KPIEngine {
        guard FileManager.default.fileExists(atPath: self.db) else { throw ValidationError("no database at \(self.db)") }
        guard let zone = TimeZone(identifier: self.timezone) else { throw ValidationError("unknown time zone \(self.timezone)") }
        return KPIEngine(store: try SQLiteMeterStore(path: self.db), settings: KPISettings(timeZone: zone))
    }

    private func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }
}
