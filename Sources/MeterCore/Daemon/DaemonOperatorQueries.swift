import Foundation
import GRDB
import NIOConcurrencyHelpers

/// What the status socket, HTTP and systemd ask, answered by the daemon's engines: liveness for
/// inactive meters, the KPI engine for meter counts and KPIs, the snapshot service, the importer
/// through the single writer, and the meter table for one meter's detail.
package final class DaemonOperatorQueries: OperatorQueries {
    private let database: MeterDatabase
    private let pipeline: IngestPipeline
    private let kpi: KPIEngine
    private let liveness: LivenessMonitor
    private let snapshots: SnapshotService
    private let meterDetails: DatabaseOperatorQueries
    private let cacheTTLms: Int64
    private let cache = NIOLockedValueBox<(atMs: Int64, counts: MeterStateCounts)?>(nil)
    private let runningImport = NIOLockedValueBox<ImportProgress?>(nil)

    package init(database: MeterDatabase, pipeline: IngestPipeline, kpi: KPIEngine, liveness: LivenessMonitor,
                 snapshots: SnapshotService, configuration: LivenessConfiguration, cacheTTLms: Int64 = 2_000) {
        self.database = database
        self.pipeline = pipeline
        self.kpi = kpi
        self.liveness = liveness
        self.snapshots = snapshots
        self.meterDetails = DatabaseOperatorQueries(database: database, configuration: configuration)
        self.cacheTTLms = cacheTTLms
    }

    /// Cached for a moment: `status`, `/metrics` and systemd's STATUS= all ask every few seconds.
    package func meterStates(nowMs: Int64) async throws -> MeterStateCounts {
        if let cached = self.cache.withLockedValue({ $0 }), nowMs >= cached.atMs, nowMs - cached.atMs < self.cacheTTLms {
            return cached.counts
        }
        let counts = try await self.kpi.meterCounts(period: self.kpi.defaultPeriod(nowMs: nowMs), region: nil)
        let states = MeterStateCounts(total: counts.active + counts.inactive, active: counts.active, inactive: counts.inactive,
                                      faulty: counts.faulty)
        self.cache.withLockedValue { $0 = (nowMs, states) }
        return states
    }

    package func inactiveMeters(nowMs: Int64, limit: Int) async throws -> InactiveMeters {
        let count = try await self.database.pool.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM meter WHERE inactive_since_ms IS NOT NULL") ?? 0
        }
        return InactiveMeters(count: count, meters: try await self.liveness.inactiveMeters(limit: limit))
    }

    package func meter(_ name: String, nowMs: Int64) async throws -> MeterDetail? {
        try await self.meterDetails.meter(name, nowMs: nowMs)
    }

    package func kpi(from: Month?, to: Month?, region: String?) async throws -> KPIDocument {
        let period: KPIPeriod
        if let from, let to {
            do {
                period = try KPIPeriod(from: from, to: to)
            } catch {
                throw OperatorQueryError("malformed_command", "\(error)")
            }
        } else {
            period = self.kpi.defaultPeriod()
        }
        return try await self.kpi.document(period: period, region: region)
    }

    package func snapshot() async throws -> String {
        try await self.snapshots.snapshot()
    }

    package func importDirectory(_ path: String) async throws -> ImportAnswer {
        let report: ImportReport
        let tracker = self.runningImport
        tracker.withLockedValue { $0 = ImportProgress(file: (path as NSString).lastPathComponent, rows: 0, fraction: 0) }
        defer { tracker.withLockedValue { $0 = nil } }
        do {
            report = try await CompanyImporter.importDirectory(path, through: self.pipeline) { progress in
                tracker.withLockedValue { $0 = progress }
            }
        } catch let error as CompanyDataError {
            throw OperatorQueryError("import_failed", error.description)
        }
        self.cache.withLockedValue { $0 = nil }
        return ImportAnswer(report)
    }

    package func importProgress() -> ImportProgress? {
        self.runningImport.withLockedValue { $0 }
    }

    package func backup(to path: String) async throws -> BackupAnswer {
        try await DatabaseBackup.write(self.database, to: path)
    }
}
