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

    @Option(
        help: ArgumentHelp(
            "IANA time zone of the calendar months (default: the zone meterd last ran with, else UTC).",
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
