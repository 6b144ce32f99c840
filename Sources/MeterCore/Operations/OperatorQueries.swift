import Foundation
import GRDB
import Synchronization

/// How many meters are in each liveness state right now (SPEC.md section 3).
package struct MeterStateCounts: Sendable, Equatable {
    package var total: Int
    package var active: Int
    package var inactive: Int
    package var faulty: Int

    package init(total: Int = 0, active: Int = 0, inactive: Int = 0, faulty: Int = 0) {
        self.total = total
        self.active = active
        self.inactive = inactive
        self.faulty = faulty
    }
}

/// One meter's state and counters, for `meter ID`.
package struct MeterDetail: Sendable, Equatable {
    package var meter: String
    package var customerID: Int64?
    package var region: String
    package var state: String
    package var faulty: Bool
    package var firstSeenMs: Int64?
    package var lastReceivedMs: Int64?
    package var lastTimestampMs: Int64?
    package var lastSeq: Int64?
    package var lastStatus: MeterHealth?
    package var lastFault: String?
    package var inactiveSinceMs: Int64?
    package var readingsTotal: Int64
    package var faultsTotal: Int64
    package var duplicatesTotal: Int64
}

/// The inactive meters, the oldest silence first, at most `limit` of them.
package struct InactiveMeters: Sendable, Equatable {
    package var count: Int
    package var meters: [InactiveMeter]
}

/// A query the daemon cannot answer (yet, or with the data it has), phrased for an operator.
package struct OperatorQueryError: Error, CustomStringConvertible, Equatable {
    /// Machine-readable code, sent as `error` on the status socket.
    package var code: String
    package var detail: String

    package init(_ code: String, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    package static func unavailable(_ what: String) -> OperatorQueryError {
        OperatorQueryError("unavailable", "\(what) is not available in this build of meterd")
    }

    package var description: String { self.detail }
}

/// What operators ask the daemon beyond the ingest counters: the status socket's `inactive`,
/// `meter`, `kpi` and `snapshot`, and the meter figures of `status`, `/metrics` and systemd's STATUS=.
///
/// The KPI engine and liveness tracker plug in here; ``DatabaseOperatorQueries`` answers what
/// the meter table alone can.
package protocol OperatorQueries: Sendable {
    /// Meters by state right now.
    func meterStates(nowMs: Int64) async throws -> MeterStateCounts
    /// Inactive meters, the longest silent first.
    func inactiveMeters(nowMs: Int64, limit: Int) async throws -> InactiveMeters
    /// One meter by its id, or `nil` if the daemon does not know it.
    func meter(_ name: String, nowMs: Int64) async throws -> MeterDetail?
    /// The KPI document of SPEC.md section 5.
    func kpi(from: Month?, to: Month?, region: String?) async throws -> KPIDocument
    /// Writes a KPI snapshot now and returns its path.
    func snapshot() async throws -> String
    /// Imports the company CSV files of a directory the daemon can read; returns the summary.
    func importDirectory(_ path: String) async throws -> ImportAnswer
    /// Writes a consistent copy of the database to a new file; returns its path and size.
    func backup(to path: String) async throws -> BackupAnswer
    /// Where a running import stands, `nil` when none runs; must answer at once.
    func importProgress() -> ImportProgress?
}

extension OperatorQueries {
    package func importProgress() -> ImportProgress? { nil }
}

/// Thresholds that make a meter count as faulty (SPEC.md section 3).
package struct LivenessConfiguration: Sendable {
    /// Silence after which a meter is inactive.
    package var inactiveAfterMs: Int64 = 900_000
    /// Faults in the recent months at or above which a meter is faulty.
    package var faultyFaults = 3
    /// Months whose prevailing status was `poor` at or above which a meter is faulty.
    package var faultyPoorMonths = 2
    /// How many months, the current one included, "recent" covers.
    package var recentMonths = 12
    package var timeZone = TimeZone(identifier: "UTC")!

    package init(inactiveAfterMs: Int64 = 900_000, timeZone: TimeZone = TimeZone(identifier: "UTC")!) {
        self.inactiveAfterMs = inactiveAfterMs
        self.timeZone = timeZone
    }
}

/// Answers operator queries from the meter table and monthly aggregates; KPIs and snapshots
/// come from the KPI engine and answer `unavailable` here.
///
/// Meter counts are cached for a couple of seconds: `status`, `/metrics` and systemd's STATUS=
/// ask often, and the faulty count reads every recent meter-month.
package final class DatabaseOperatorQueries: OperatorQueries {
    private let database: MeterDatabase
    private let configuration: LivenessConfiguration
    private let cacheTTLms: Int64
    private let cache = Mutex<(atMs: Int64, counts: MeterStateCounts)?>(nil)

    package init(database: MeterDatabase, configuration: LivenessConfiguration, cacheTTLms: Int64 = 2_000) {
        self.database = database
        self.configuration = configuration
        self.cacheTTLms = cacheTTLms
    }

    /// Condition on `meter` (aliased `m`) that holds for inactive meters; one argument: the cutoff.
    private static let inactiveCondition =
        "(m.inactive_since_ms IS NOT NULL OR m.last_received_ms IS NULL OR m.last_received_ms < ?)"

    /// Month rows of `meter_month` where the prevailing status was poor (ties go to the worse).
    private static let poorMonth = """
        (imported_status = 2 OR (imported_status IS NULL AND poor > 0 AND poor >= good AND poor >= fair))
        """

    private func firstRecentMonth(nowMs: Int64) -> Int {
        var calendar = MonthCalendar(timeZone: self.configuration.timeZone)
        return calendar.month(ofMilliseconds: nowMs).adding(months: -(self.configuration.recentMonths - 1)).key
    }

    package func meterStates(nowMs: Int64) async throws -> MeterStateCounts {
        if let cached = self.cache.withLock({ $0 }), nowMs - cached.atMs < self.cacheTTLms, nowMs >= cached.atMs {
            return cached.counts
        }
        let cutoff = nowMs - self.configuration.inactiveAfterMs
        let firstMonth = self.firstRecentMonth(nowMs: nowMs)
        let configuration = self.configuration
        let counts = try await self.database.pool.read { db -> MeterStateCounts in
            let row = try Row.fetchOne(db, sql: """
                SELECT count(*) AS total, coalesce(sum(CASE WHEN \(Self.inactiveCondition) THEN 1 ELSE 0 END), 0) AS inactive
                FROM meter m
                """, arguments: [cutoff])!
            let faulty = try Int.fetchOne(db, sql: """
                SELECT count(*) FROM (
                    SELECT meter_id FROM meter_month WHERE month >= ? GROUP BY meter_id
                    HAVING sum(faults) >= ? OR sum(CASE WHEN \(Self.poorMonth) THEN 1 ELSE 0 END) >= ?)
                """, arguments: [firstMonth, configuration.faultyFaults, configuration.faultyPoorMonths]) ?? 0
            let total: Int = row["total"]
            let inactive: Int = row["inactive"]
            return MeterStateCounts(total: total, active: total - inactive, inactive: inactive, faulty: faulty)
        }
        self.cache.withLock { $0 = (nowMs, counts) }
        return counts
    }

    package func inactiveMeters(nowMs: Int64, limit: Int) async throws -> InactiveMeters {
        let cutoff = nowMs - self.configuration.inactiveAfterMs
        return try await self.database.pool.read { db in
            let count = try Int.fetchOne(db, sql: "SELECT count(*) FROM meter m WHERE \(Self.inactiveCondition)", arguments: [cutoff]) ?? 0
            let rows = try Row.fetchAll(db, sql: """
                SELECT m.name, m.customer_id, m.region, m.last_received_ms,
                       coalesce(m.inactive_since_ms, m.last_received_ms) AS silent_since_ms
                FROM meter m WHERE \(Self.inactiveCondition)
                ORDER BY silent_since_ms IS NULL, silent_since_ms, m.name LIMIT ?
                """, arguments: [cutoff, limit])
            let meters = rows.map { row in
                InactiveMeter(meter: row["name"], customerID: row["customer_id"], region: row["region"],
                              silentSinceMs: row["silent_since_ms"] ?? nowMs, lastReceivedMs: row["last_received_ms"])
            }
            return InactiveMeters(count: count, meters: meters)
        }
    }

    package func meter(_ name: String, nowMs: Int64) async throws -> MeterDetail? {
        let cutoff = nowMs - self.configuration.inactiveAfterMs
        let firstMonth = self.firstRecentMonth(nowMs: nowMs)
        let configuration = self.configuration
        return try await self.database.pool.read { db -> MeterDetail? in
            guard let row = try Row.fetchOne(db, sql: """
                SELECT m.*, \(Self.inactiveCondition) AS is_inactive FROM meter m WHERE m.name = ?
                """, arguments: [cutoff, name]) else { return nil }
            let id: Int64 = row["id"]
            let recent = try Row.fetchOne(db, sql: """
                SELECT coalesce(sum(faults), 0) AS faults, coalesce(sum(CASE WHEN \(Self.poorMonth) THEN 1 ELSE 0 END), 0) AS poor_months
                FROM meter_month WHERE meter_id = ? AND month >= ?
                """, arguments: [id, firstMonth])!
            let faults: Int = recent["faults"]
            let poorMonths: Int = recent["poor_months"]
            let hwm: Int64 = row["hwm_seq"]
            let lastStatus: Int64? = row["last_status"]
            let inactive: Bool = row["is_inactive"]
            return MeterDetail(
                meter: row["name"], customerID: row["customer_id"], region: row["region"],
                state: inactive ? "inactive" : "active",
                faulty: faults >= configuration.faultyFaults || poorMonths >= configuration.faultyPoorMonths,
                firstSeenMs: row["first_seen_ms"], lastReceivedMs: row["last_received_ms"], lastTimestampMs: row["last_ts_ms"],
                lastSeq: hwm >= 0 ? hwm : nil, lastStatus: lastStatus.flatMap { MeterHealth(rawValue: UInt8(truncatingIfNeeded: $0)) },
                lastFault: row["last_fault"], inactiveSinceMs: row["inactive_since_ms"],
                readingsTotal: row["readings_total"], faultsTotal: row["faults_total"], duplicatesTotal: row["duplicates_total"])
        }
    }

    package func kpi(from: Month?, to: Month?, region: String?) async throws -> KPIDocument {
        throw OperatorQueryError.unavailable("The KPI document")
    }

    package func snapshot() async throws -> String {
        throw OperatorQueryError.unavailable("A KPI snapshot")
    }

    package func importDirectory(_ path: String) async throws -> ImportAnswer {
        throw OperatorQueryError.unavailable("Importing")
    }

    package func backup(to path: String) async throws -> BackupAnswer {
        try await DatabaseBackup.write(self.database, to: path)
    }
}
