import Foundation

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
/// ``DaemonOperatorQueries`` answers them from the store, the KPI engine and the liveness monitor.
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
    /// Each region's read success so far today (``KPIEngine/readSuccessByRegion(on:nowMs:)``), for `/metrics`.
    func readSuccessToday(nowMs: Int64) async throws -> [ReadSuccess.RegionDay]
    /// The alerts as `/api/alerts` lists them (``AlertEngine/list(_:limit:)``).
    func alerts(_ filter: AlertFilter, limit: Int) async throws -> AlertListAnswer
}

extension OperatorQueries {
    package func importProgress() -> ImportProgress? { nil }
    package func readSuccessToday(nowMs: Int64) async throws -> [ReadSuccess.RegionDay] { [] }
    package func alerts(_ filter: AlertFilter, limit: Int) async throws -> AlertListAnswer { throw OperatorQueryError.unavailable("alerts") }
}
