import ArgumentParser
import Foundation
import Logging
import MeterCore

/// Options that say how KPIs are computed offline (the daemon has them from its configuration).
struct KPIOptions: ParsableArguments {
    init() {}

    init(db: String?, store: String?, timezone: String?) {
        self.db = db
        self.store = store
        self.timezone = timezone
    }

    @Option(help: "Read this database file directly instead of asking meterd.")
    var db: String?

    @Option(help: ArgumentHelp("Read this store directly: sqlite:PATH or postgresql://USER@HOST/DB (as meterd --store).", valueName: "url"))
    var store: String?

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
        let store = try Self.openStore(db: self.db, store: self.store)
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

extension KPIOptions {
    /// The store `--db PATH` or `--store URL` names, opened for offline commands; a bad URL is a
    /// usage error; a missing file (exit 1) or an unreachable server (exit 3) is one line naming it.
    static func openStore(db: String?, store: String?) throws -> any MeterStore {
        let location: StoreLocation
        switch (db, store) {
        case (let path?, nil): location = .sqlite(path: path)
        case (nil, let url?):
            do { location = try StoreLocation(parsing: url) } catch { throw ValidationError(error.message) }
        case (.some, .some): throw ValidationError("pass --db PATH or --store URL, not both")
        case (nil, nil): throw ValidationError("pass --db PATH or --store URL to read a store directly")
        }
        // Not usage errors: one line, exit 1 (as `alerts --db`), and 3 when a store cannot be reached.
        if case .sqlite(let path) = location, !FileManager.default.fileExists(atPath: path) {
            ConnectionOptions.fail("no database at \(path)", code: 1)
        }
        do {
            return try location.open(logger: Logger(label: "meterctl"))
        } catch {
            ConnectionOptions.fail("\(error)", code: 3)
        }
    }
}
