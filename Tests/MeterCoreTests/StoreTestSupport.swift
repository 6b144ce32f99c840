import Foundation
@testable import MeterCore

// Tests set up data the way the daemon would, through the store's writer, but over a database
// file they opened themselves so they can also inspect it with SQL.

extension CompanyImporter {
    /// Imports a directory straight into a database file no daemon writes to.
    static func importDirectory(
        _ directory: String, database: MeterDatabase,
        progress: (@Sendable (ImportProgress) -> Void)? = nil
    ) throws -> ImportReport {
        try self.importDirectory(directory, into: try SQLiteMeterStore(database: database).makeWriter(WriterSettings()), progress: progress)
    }

    /// Imports one file straight into a database file no daemon writes to.
    static func importFile(_ path: String, database: MeterDatabase) throws -> FileImportResult {
        self.importFile(path, into: try SQLiteMeterStore(database: database).makeWriter(WriterSettings()))
    }
}

extension IngestHarness {
    /// The harness's database as the daemon's store.
    var store: SQLiteMeterStore { SQLiteMeterStore(database: self.database) }
}

/// The daemon's operator queries where no writer commits readings (offline).
func makeOfflineOperatorQueries(store: any MeterStore, engine: KPIEngine, writer: WriterAccess, directory: String) -> DaemonOperatorQueries {
    let snapshots = SnapshotService(
        engine: engine, writer: writer, path: directory + "/kpi.json", interval: .seconds(3600), history: 10,
        logger: testLogger)
    return DaemonOperatorQueries(store: store, writer: writer, kpi: engine, snapshots: snapshots, cacheTTLms: 0)
}

/// The daemon's operator queries over a store, with a KPI engine and snapshot service of its own;
/// the engine's rollups follow the writer's commits, as in the daemon.
func makeOperatorQueries(
    store: any MeterStore, writer: WriterAccess, settings: KPISettings = KPISettings(),
    directory: String, cacheTTLms: Int64 = 0
) async throws -> DaemonOperatorQueries {
    let rollups = KPIRollups()
    try await writer.perform { writer in writer.commitListener = rollups }
    let kpi = KPIEngine(store: store, rollups: rollups, settings: settings)
    let snapshots = SnapshotService(
        engine: kpi, writer: writer, path: directory + "/kpi.json", interval: .seconds(3600), history: 10,
        logger: testLogger)
    return DaemonOperatorQueries(store: store, writer: writer, kpi: kpi, snapshots: snapshots, cacheTTLms: cacheTTLms)
}
