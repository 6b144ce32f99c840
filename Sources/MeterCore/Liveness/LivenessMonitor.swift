import Foundation
import GRDB
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// A meter that stopped reporting.
package struct InactiveMeter: Sendable, Equatable {
    package var meter: String
    package var customerID: Int64?
    package var region: String
    /// When it went silent: its last reading's receive time, or, for a meter never heard from,
    /// when meterd began waiting for it.
    package var silentSinceMs: Int64
    /// Its last reading's receive time; `nil` if it never reported.
    package var lastReceivedMs: Int64?
}

/// What one liveness check changed.
package struct LivenessTransitions: Sendable, Equatable {
    package var wentInactive: [String] = []
    package var cameBack: [String] = []
}

/// Flags meters silent longer than `inactive_after` (SPEC.md section 3) in `meter.inactive_since_ms`
/// and logs every transition; the writer clears the flag on the meter's next reading, and the next
/// check logs that it came back.
///
/// A check reads the `meter` table (one row per meter, never the readings) and the partial index of
/// inactive meters, so it stays a few milliseconds at 100,000 meters.
package final class LivenessMonitor: Service, Sendable {
    private let database: MeterDatabase
    private let pipeline: IngestPipeline?
    private let inactiveAfterMs: Int64
    private let interval: Duration
    private let logger: Logger
    private let startMs: Int64
    /// Meters known to be inactive (id → name), `nil` until the first check.
    private let known = NIOLockedValueBox<[Int64: String]?>(nil)

    /// Most transitions logged one by one per check; the rest are summed up in one line.
    static let loggedTransitions = 100

    /// - Parameters:
    ///   - pipeline: the daemon's single writer, which applies the flags; `nil` to write directly.
    ///   - interval: time between checks; by default a quarter of `inactiveAfterSeconds`, 1–30 s.
    package init(database: MeterDatabase, pipeline: IngestPipeline?, inactiveAfterSeconds: Int, interval: Duration? = nil,
                 logger: Logger, nowMs: Int64 = WallClock.nowMs()) {
        self.database = database
        self.pipeline = pipeline
        self.inactiveAfterMs = Int64(inactiveAfterSeconds) * 1000
        self.interval = interval ?? .milliseconds(min(30_000, max(1_000, inactiveAfterSeconds * 250)))
        self.logger = logger
        self.startMs = nowMs
    }

    package func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    _ = try await self.check()
                } catch is CancellationError {
                    return
                } catch {
                    self.logger.error("Liveness check failed", metadata: ["error": "\(error)"])
                }
                try await Task.sleep(for: self.interval)
            }
        }
    }

    /// One check: flags meters that fell silent, notices those that came back, logs both.
    @discardableResult
    package func check(nowMs: Int64 = WallClock.nowMs()) async throws -> LivenessTransitions {
        let cutoff = nowMs - self.inactiveAfterMs
        let start = self.startMs
        let (silent, flagged) = try await self.database.pool.read { db in
            let silent = try Row.fetchAll(db, sql: """
                SELECT id, name FROM meter WHERE inactive_since_ms IS NULL AND COALESCE(last_received_ms, ?) < ?
                """, arguments: [start, cutoff]).map { ($0["id"] as Int64, $0["name"] as String) }
            let flagged = try Row.fetchAll(db, sql: "SELECT id, name FROM meter WHERE inactive_since_ms IS NOT NULL")
                .map { ($0["id"] as Int64, $0["name"] as String) }
            return (silent, flagged)
        }
        var transitions = LivenessTransitions()
        var newlyInactive: [(Int64, String, Int64?)] = []
        if !silent.isEmpty {
            let apply: @Sendable (Database) throws -> [(Int64, String, Int64?)] = { db in
                let update = try db.makeStatement(sql: """
                    UPDATE meter SET inactive_since_ms = COALESCE(last_received_ms, ?)
                    WHERE id = ? AND inactive_since_ms IS NULL AND COALESCE(last_received_ms, ?) < ?
                    """)
                var changed: [(Int64, String, Int64?)] = []
                for (id, name) in silent {
                    try update.execute(arguments: [start, id, start, cutoff])
                    if db.changesCount > 0 {
                        changed.append((id, name, try Int64.fetchOne(db, sql: "SELECT last_received_ms FROM meter WHERE id = ?", arguments: [id])))
                    }
                }
                return changed
            }
            let database = self.database
            if let pipeline = self.pipeline {
                newlyInactive = try await pipeline.perform { writer in try writer.database.pool.write(apply) }
            } else {
                newlyInactive = try await database.pool.write(apply)
            }
        }
        let current = Dictionary(flagged, uniquingKeysWith: { first, _ in first })
        let previous = self.known.withLockedValue { known -> [Int64: String]? in
            defer {
                var next = current
                for (id, name, _) in newlyInactive { next[id] = name }
                known = next
            }
            return known
        }
        if let previous {
            transitions.cameBack = previous.filter { current[$0.key] == nil }.map(\.value).sorted()
        }
        transitions.wentInactive = newlyInactive.map(\.1)

        for (index, (_, name, last)) in newlyInactive.enumerated() where index < Self.loggedTransitions {
            self.logger.notice("Meter inactive", metadata: [
                "meter.id": "\(name)",
                "meter.silent_since": "\(RFC3339.format(millisecondsSinceEpoch: last ?? start))",
                "meter.never_reported": "\(last == nil)",
            ])
        }
        for (index, name) in transitions.cameBack.enumerated() where index < Self.loggedTransitions {
            self.logger.notice("Meter active again", metadata: ["meter.id": "\(name)"])
        }
        if newlyInactive.count > Self.loggedTransitions || transitions.cameBack.count > Self.loggedTransitions {
            self.logger.notice("Meter liveness changed", metadata: [
                "meters.went_inactive": "\(newlyInactive.count)", "meters.came_back": "\(transitions.cameBack.count)",
            ])
        }
        return transitions
    }

    /// Inactive meters, longest silent first.
    package func inactiveMeters(limit: Int = 10_000) async throws -> [InactiveMeter] {
        try await self.database.pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT name, customer_id, region, inactive_since_ms, last_received_ms FROM meter
                WHERE inactive_since_ms IS NOT NULL ORDER BY inactive_since_ms, name LIMIT ?
                """, arguments: [limit]).map { row in
                InactiveMeter(meter: row["name"], customerID: row["customer_id"], region: row["region"],
                              silentSinceMs: row["inactive_since_ms"], lastReceivedMs: row["last_received_ms"])
            }
        }
    }

    /// Inactive meters as a JSON array of the dashboard's entries (``DashboardInactiveAnswer/Meter``).
    package func inactiveJSON(limit: Int = 10_000) async throws -> String {
        try AnswerEncoder.json(try await self.inactiveMeters(limit: limit).map { meter in
            DashboardInactiveAnswer.Meter(meter: meter.meter, customerID: meter.customerID, region: meter.region,
                                          silentSinceMs: meter.silentSinceMs, lastReceivedMs: meter.lastReceivedMs)
        })
    }
}
