import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// A meter that stopped reporting.
package struct InactiveMeter: Sendable, Equatable {
    package var meter: String
    package var customerID: Int64?
    package var region: String
    /// When it went silent: its last reading's receive time, or, for a meter never heard from,
    /// when meterd began waiting for it; `nil` for a meter never heard from that the liveness
    /// sweep has not flagged yet.
    package var silentSinceMs: Int64?
    /// Its last reading's receive time; `nil` if it never reported.
    package var lastReceivedMs: Int64?
}

/// What one liveness check changed.
package struct LivenessTransitions: Sendable, Equatable {
    package var wentInactive: [String] = []
    package var cameBack: [String] = []
}

/// Learns the outcome of every liveness check (the alert engine's `inactive` rule).
package protocol LivenessObserver: Sendable {
    /// `inactive` holds every meter flagged inactive after the check, with the time it went silent
    /// for those this check flagged (`nil` for the others).
    func livenessChecked(inactive: [String: Int64?], nowMs: Int64) async
}

/// Flags meters silent longer than `inactive_after` (SPEC.md section 3) in `meter.inactive_since_ms`
/// and logs every transition; the writer clears the flag on the meter's next reading, and the next
/// check logs that it came back.
///
/// A check reads one row per meter (never the readings), so it stays a few milliseconds at 100,000 meters.
package final class LivenessMonitor: Service, Sendable {
    private let store: any MeterStore
    private let writer: WriterAccess
    private let inactiveAfterMs: Int64
    private let interval: Duration
    private let logger: Logger
    private let startMs: Int64
    private let observer: (any LivenessObserver)?
    /// Sweeps run only while this node leads (several nodes on one store); `nil`: always.
    private let lease: SingletonLease?
    /// Meters known to be inactive (id → name), `nil` until the first check.
    private let known = NIOLockedValueBox<[Int64: String]?>(nil)

    /// Most transitions logged one by one per check; the rest are summed up in one line.
    static let loggedTransitions = 100

    /// - Parameters:
    ///   - writer: the store's single writer, which applies the flags.
    ///   - interval: time between checks; by default a quarter of `inactiveAfterSeconds`, 1–30 s.
    ///   - observer: told the inactive meters after every check.
    ///   - lease: on a store several nodes share, the sweep runs on the node holding it only.
    package init(
        store: any MeterStore, writer: WriterAccess, inactiveAfterSeconds: Int, interval: Duration? = nil,
        logger: Logger, nowMs: Int64 = WallClock.nowMs(), observer: (any LivenessObserver)? = nil, lease: SingletonLease? = nil
    ) {
        self.observer = observer
        self.lease = lease
        self.store = store
        self.writer = writer
        self.inactiveAfterMs = Int64(inactiveAfterSeconds) * 1000
        self.interval = interval ?? .milliseconds(min(30_000, max(1_000, inactiveAfterSeconds * 250)))
        self.logger = logger
        self.startMs = nowMs
    }

    package func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                guard self.lease?.isLeader ?? true else {
                    // What another node logged meanwhile is not this node's to log again when it leads.
                    self.known.withLockedValue { $0 = nil }
                    try await Task.sleep(for: min(self.interval, self.lease?.interval ?? self.interval))
                    continue
                }
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
        let candidates = try await self.store.livenessCandidates(cutoffMs: cutoff, startMs: start)
        let flagged = candidates.flagged.map { ($0.meter.id, $0.meter.name) }
        var transitions = LivenessTransitions()
        var newlyInactive: [(Int64, String, Int64?)] = []
        if !candidates.silent.isEmpty {
            newlyInactive = try await self.writer.perform { writer in
                try writer.flagInactive(candidates.silent, cutoffMs: cutoff, startMs: start).map { ($0.meter.id, $0.meter.name, $0.lastReceivedMs) }
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
            self.logger.notice(
                "Meter inactive",
                metadata: [
                    "meter.id": "\(name)",
                    "meter.silent_since": "\(RFC3339.format(millisecondsSinceEpoch: last ?? start))",
                    "meter.never_reported": "\(last == nil)",
                ])
        }
        for (index, name) in transitions.cameBack.enumerated() where index < Self.loggedTransitions {
            self.logger.notice("Meter active again", metadata: ["meter.id": "\(name)"])
        }
        if newlyInactive.count > Self.loggedTransitions || transitions.cameBack.count > Self.loggedTransitions {
            self.logger.notice(
                "Meter liveness changed",
                metadata: [
                    "meters.went_inactive": "\(newlyInactive.count)", "meters.came_back": "\(transitions.cameBack.count)",
                ])
        }
        if let observer = self.observer {
            // Meters flagged before this run (or before alerts were on) fire with the same silence
            // as those flagged now; a meter that never reported has none to name.
            var inactive: [String: Int64?] = Dictionary(
                candidates.flagged.map { ($0.meter.name, $0.lastReceivedMs) }, uniquingKeysWith: { first, _ in first })
            for (_, name, last) in newlyInactive { inactive[name] = last ?? start }
            await observer.livenessChecked(inactive: inactive, nowMs: nowMs)
        }
        return transitions
    }
}
