import Foundation
import Logging
import ServiceLifecycle

/// Writes a KPI snapshot for the default period (the last 12 months) every `snapshot_interval` and
/// on demand (SPEC.md section 5): atomically to `<data-dir>/kpi.json` (temp file, fsync, rename) and
/// as a row of `kpi_snapshot`, keeping the newest `snapshot_history` rows.
package final class SnapshotService: Service, Sendable {
    private let engine: KPIEngine
    private let writer: WriterAccess
    package let path: String
    private let interval: Duration
    private let history: Int
    private let logger: Logger
    /// One snapshot at a time: the timer and an on-demand request must not share the temp file.
    private let fileLock = NSLock()
    /// Awaited before the first timed snapshot.
    private let beforeFirst: @Sendable () async -> Void
    /// Timed snapshots are written only while this node leads (several nodes on one store); `nil`: always.
    private let lease: SingletonLease?

    /// `beforeFirst` delays the first timed snapshot: the daemon waits for its listeners, since the
    /// first snapshot loads every meter-month into memory (a second of CPU at 100,000 meters) and
    /// would otherwise compete with start-up for the cores.
    package init(
        engine: KPIEngine, writer: WriterAccess, path: String,
        interval: Duration, history: Int, logger: Logger, beforeFirst: @escaping @Sendable () async -> Void = {},
        lease: SingletonLease? = nil
    ) {
        self.beforeFirst = beforeFirst
        self.lease = lease
        self.engine = engine
        self.writer = writer
        self.path = path
        self.interval = interval
        self.history = history
        self.logger = logger
    }

    package func run() async throws {
        try? await cancelWhenGracefulShutdown {
            await self.beforeFirst()
            while !Task.isCancelled {
                guard self.lease?.isLeader ?? true else {
                    // Checked every lease interval, so a new leader's first snapshot follows soon after it takes over.
                    try await Task.sleep(for: min(self.interval, self.lease?.interval ?? self.interval))
                    continue
                }
                do {
                    _ = try await self.snapshot()
                } catch is CancellationError {
                    return
                } catch {
                    self.logger.error("KPI snapshot failed", metadata: ["error": "\(error)", "snapshot.path": "\(self.path)"])
                }
                try await Task.sleep(for: self.interval)
            }
        }
    }

    /// Writes a snapshot now; returns the path of `kpi.json`.
    @discardableResult
    package func snapshot(nowMs: Int64 = WallClock.nowMs()) async throws -> String {
        let period = self.engine.defaultPeriod(nowMs: nowMs)
        let json = try await self.engine.json(period: period, region: nil, nowMs: nowMs)
        try self.fileLock.withLock { try AtomicFile.write(json + "\n", to: self.path) }
        let history = self.history
        try await self.writer.perform { writer in
            try writer.recordSnapshot(json, period: period, generatedMs: nowMs, history: history)
        }
        self.logger.debug("KPI snapshot written", metadata: ["snapshot.path": "\(self.path)"])
        return self.path
    }
}
