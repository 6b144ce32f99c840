import Logging

extension StoreLocation {
    /// Opens (creating and migrating if needed) the store: the one place that picks a backend.
    ///
    /// - Parameter durability: SQLite's `synchronous` level; PostgreSQL always commits with
    ///   `synchronous_commit = on`.
    /// - Parameter integrityCheck: when SQLite's integrity check runs; the daemon runs it beside its
    ///   meter load, and its writer waits for it before writing.
    package func open(
        durability: Durability = .full, integrityCheck: MeterDatabase.IntegrityCheckTiming = .beforeOpening, logger: Logger
    ) throws -> any MeterStore {
        switch self {
        case .sqlite(let path):
            let database = try MeterDatabase(path: path, durability: durability, integrityCheck: integrityCheck)
            if !database.migrationsApplied.isEmpty {
                logger.info("SQLite schema migrated", metadata: ["db.migrations": "\(database.migrationsApplied.joined(separator: ","))"])
            }
            return SQLiteMeterStore(database: database)
        case .postgresql(let address): return try PostgreSQLMeterStore(address: address, logger: logger)
        }
    }
}
