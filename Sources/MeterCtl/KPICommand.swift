import ArgumentParser
import Foundation
import MeterCore

/// Options that say how KPIs are computed offline (the daemon has them from its configuration).
struct KPIOptions: ParsableArguments {
    init() {}

    init(db: String, timezone: String?) {
        self.db = db
        self.timezone = timezone
    }

    @Option(help: "Read this database file directly instead of asking meterd.")
    var db: String?

    @Option(help: ArgumentHelp("IANA time zone of the calendar months (default: the zone meterd last ran with, else UTC).",
                               valueName: "iana-name"))
    var timezone: String?

    /// The KPI document of a period, computed from the database file.
    func json(from: String?, to: String?, region: String?) async throws -> String {
        let (engine, settings) = try await self.engine()
        let period: KPIPeriod
        do {
            period = try KPIPeriod.parse(from: from, to: to, nowMs: WallClock.nowMs(), timeZone: settings.timeZone)
        } catch {
            throw ValidationError("\(error)")
        }
        return try await engine.json(period: period, region: region)
    }

    func engine() async throws -> (KPIEngine, KPISettings) {
        guard let path = self.db else {
            throw ValidationError("pass --db PATH to read a database file directly")
        }
        guard FileManager.default.fileExists(atPath: path) else { throw ValidationError("no database at \(path)") }
        let store = try SQLiteMeterStore(path: path)
        let zone: TimeZone
        if let name = self.timezone {
            guard let given = TimeZone(identifier: name) else { throw ValidationError("unknown time zone \(name)") }
            zone = given
        } else {
            // The daemon's zone, so the default period is the same months it would pick.
            zone = try await store.recordedTimeZone() ?? TimeZone(identifier: "UTC")!
        }
        let settings = KPISettings(timeZone: zone)
        return (KPIEngine(store: store, settings: settings), settings)
    }
}

/// `meterctl bench-kpi --db PATH`: times the KPI document (the benchmark of issue 4, not a test).
struct KPIBenchmarkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-kpi",
        abstract: "Time the KPI document over a database: load time, then p50/p95/max per period and region.",
        shouldDisplay: false)

    @Option(help: "Documents computed per case.")
    var iterations = 40

    @Option(help: ArgumentHelp("Last month of the data (the 12- and 24-month periods end here).", valueName: "YYYY-MM"))
    var to: String

    @Option(help: "Region for the filtered cases.")
    var region = "North"

    @OptionGroup var options: KPIOptions

    func run() async throws {
        let (engine, _) = try await self.options.engine()
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
            print(name.padding(toLength: 28, withPad: " ", startingAt: 0),
                  String(format: "%8.2f %8.2f %8.2f %7d", quantile(0.5), quantile(0.95), samples.last ?? 0, bytes))
        }
    }

    private func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }
}
