import Foundation
import NIOConcurrencyHelpers

/// What the status socket, HTTP and systemd ask, answered by the daemon's engines: the store for
/// facts, ``MeterRules`` (through the KPI engine) for states, the snapshot service, and the
/// importer through the single writer.
package final class DaemonOperatorQueries: OperatorQueries {
    private let store: any MeterStore
    private let writer: WriterAccess
    private let kpi: KPIEngine
    private let snapshots: SnapshotService
    private let cacheTTLms: Int64
    private let cache = NIOLockedValueBox<(atMs: Int64, counts: MeterStateCounts)?>(nil)
    private let runningImport = NIOLockedValueBox<ImportProgress?>(nil)
    /// The ingest side's copy of `concentrators.csv`, refreshed after each import.
    private let concentrators: ConcentratorDirectory?
    private let alertEngine: AlertEngine?

    package init(
        store: any MeterStore, writer: WriterAccess, kpi: KPIEngine, snapshots: SnapshotService, cacheTTLms: Int64 = 2_000,
        concentrators: ConcentratorDirectory? = nil, alerts: AlertEngine? = nil
    ) {
        self.concentrators = concentrators
        self.alertEngine = alerts
        self.store = store
        self.writer = writer
        self.kpi = kpi
        self.snapshots = snapshots
        self.cacheTTLms = cacheTTLms
    }

    package func alerts(_ filter: AlertFilter, limit: Int) async throws -> AlertListAnswer {
        guard let alertEngine = self.alertEngine else { throw OperatorQueryError.unavailable("alerts") }
        return try await alertEngine.list(filter, limit: limit)
    }

    /// Cached for a moment: `status`, `/metrics` and systemd's STATUS= all ask every few seconds.
    package func meterStates(nowMs: Int64) async throws -> MeterStateCounts {
        if let cached = self.cache.withLockedValue({ $0 }), nowMs >= cached.atMs, nowMs - cached.atMs < self.cacheTTLms {
            return cached.counts
        }
        let counts = try await self.kpi.meterCounts(period: self.kpi.defaultPeriod(nowMs: nowMs), region: nil)
        let states = MeterStateCounts(
            total: counts.active + counts.inactive, active: counts.active, inactive: counts.inactive,
            faulty: counts.faulty)
        self.cache.withLockedValue { $0 = (nowMs, states) }
        return states
    }

    package func readSuccessToday(nowMs: Int64) async throws -> [ReadSuccess.RegionDay] {
        let today = MonthCalendar(timeZone: self.kpi.rules.timeZone).day(ofMilliseconds: nowMs)
        return try await self.kpi.readSuccessByRegion(on: today, nowMs: nowMs)
    }

    package func inactiveMeters(nowMs: Int64, limit: Int) async throws -> InactiveMeters {
        let count = try await self.store.inactiveMeterCount(region: nil)
        return InactiveMeters(count: count, meters: try await self.store.inactiveMeters(region: nil, limit: limit))
    }

    package func meter(_ name: String, nowMs: Int64) async throws -> MeterDetail? {
        guard let record = try await self.store.meterRecord(named: name) else { return nil }
        let faulty = try await self.kpi.isFaulty(meter: name, period: self.kpi.defaultPeriod(nowMs: nowMs))
        return MeterDetail(
            meter: record.name, customerID: record.customerID, region: record.region,
            state: MeterRules.isInactive(inactiveSinceMs: record.inactiveSinceMs, lastReceivedMs: record.lastReceivedMs) ? "inactive" : "active",
            faulty: faulty, firstSeenMs: record.firstSeenMs, lastReceivedMs: record.lastReceivedMs, lastTimestampMs: record.lastTimestampMs,
            lastSeq: record.highWaterMark >= 0 ? record.highWaterMark : nil, lastStatus: record.lastStatus, lastFault: record.lastFault,
            inactiveSinceMs: record.inactiveSinceMs, readingsTotal: record.readingsTotal, faultsTotal: record.faultsTotal,
            duplicatesTotal: record.duplicatesTotal)
    }

    package func kpi(from: Month?, to: Month?, region: String?) async throws -> KPIDocument {
        let period: KPIPeriod
        do {
            period = try KPIPeriod.parse(
                from: from?.description, to: to?.description, nowMs: WallClock.nowMs(),
                timeZone: self.kpi.rules.timeZone)
        } catch {
            throw OperatorQueryError("malformed_command", "\(error)")
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
            report = try await CompanyImporter.importDirectory(path, through: self.writer) { progress in
                tracker.withLockedValue { $0 = progress }
            }
        } catch let error as CompanyDataError {
            throw OperatorQueryError("import_failed", error.description)
        }
        self.cache.withLockedValue { $0 = nil }
        if let concentrators = self.concentrators {
            // Committed by now: connections see the new lists from their next reading on.
            concentrators.replace(with: try await self.store.concentratorAssignments())
        }
        return ImportAnswer(report)
    }

    package func importProgress() -> ImportProgress? {
        self.runningImport.withLockedValue { $0 }
    }

    package func backup(to path: String) async throws -> BackupAnswer {
        let report = try await self.store.backup(to: path)
        return BackupAnswer(backup: report.path, bytes: report.bytes, seconds: report.seconds)
    }
}
