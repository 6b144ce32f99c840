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
        case .sqlite(let path): try SQLiteMeterStore(path: path, durability: durability, integrityCheck: integrityCheck)
        case .postgresql(let address): try PostgreSQLMeterStore(address: address, logger: logger)
        }
    }
}
