import Logging

extension StoreLocation {
    /// Opens (creating and migrating if needed) the store: the one place that picks a backend.
    ///
    /// - Parameter durability: SQLite's `synchronous` level; PostgreSQL always commits with
    ///   `synchronous_commit = on`.
    package func open(durability: Durability = .full, logger: Logger) throws -> any MeterStore {
        switch self {
        case .sqlite(let path): try SQLiteMeterStore(path: path, durability: durability)
        case .postgresql(let address): try PostgreSQLMeterStore(address: address, logger: logger)
        }
    }
}
