import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Elects the one node of a shared store that does singleton work: liveness sweeps and their
/// transition log, KPI snapshots, and alert rules (SPEC.md section 9).
///
/// Every ``interval`` it takes the store's ``SingletonLock`` or confirms it still holds it. A node
/// counts as the leader only while its last confirmation is younger than two intervals, and only
/// from two intervals after it took the lock, so a node whose database connection hangs or was cut
/// stops leading on its own before another starts. On a store of one node (SQLite) there is no
/// lock and the node always leads.
///
/// ```swift
/// let lease = SingletonLease(lock: store.makeSingletonLock(), logger: logger)
/// if lease.isLeader { try await liveness.check() }
/// ```
package final class SingletonLease: Service, Sendable {
    private struct State {
        /// Whether the lock is held, since when, and when that was last confirmed.
        var held = false
        var acquired: ContinuousClock.Instant?
        var confirmed: ContinuousClock.Instant?
        /// Whether the log last said this node leads.
        var announced = false
    }

    private let lock: (any SingletonLock)?
    package let interval: Duration
    private let logger: Logger
    private let state: NIOLockedValueBox<State>

    /// - Parameters:
    ///   - lock: the store's lock; `nil` for a store of one node.
    ///   - interval: time between tries; another node takes over within three intervals of the leader's death
    ///     (one to take the lock, two to be sure the old leader has stopped).
    package init(lock: (any SingletonLock)?, interval: Duration = .seconds(1), logger: Logger) {
        self.lock = lock
        self.interval = interval
        self.logger = logger
        self.state = NIOLockedValueBox(State())
    }

    /// Whether this node does the singleton work now.
    package var isLeader: Bool {
        guard self.lock != nil else { return true }
        return self.state.withLockedValue { self.leads($0, now: .now) }
    }

    /// A node leads from two intervals after it took the lock until two intervals after it last
    /// confirmed holding it. A leader cut off from the database stops within two intervals of its
    /// last confirmation, before then, so before the next leader starts: two never lead at once.
    private func leads(_ state: State, now: ContinuousClock.Instant) -> Bool {
        guard state.held, let acquired = state.acquired, let confirmed = state.confirmed else { return false }
        return now - confirmed < self.interval * 2 && now - acquired >= self.interval * 2
    }

    package func run() async throws {
        guard let lock = self.lock else {
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.renew()
                do { try await Task.sleep(for: self.interval) } catch { break }
            }
        }
        let announced = self.state.withLockedValue { state -> Bool in
            defer { state = State() }
            return state.announced
        }
        if announced { self.logger.notice("This node stops doing the singleton work: shutting down") }
        await lock.release()
    }

    /// A try that takes longer than `limit` counts as not held, and the lock drops its connection:
    /// a connection the network black-holes gets no answer and no reset, so without a limit the
    /// try would wait for TCP to give up (many minutes), and this node could neither lead again
    /// until then, not even when it is the only one left, nor shut down. Leadership itself lapsed
    /// two intervals after the last confirmation (``leads(_:now:)``); this is about trying again.
    static func attempt(_ lock: any SingletonLock, within limit: Duration) async -> Bool {
        await withTaskGroup(of: Bool?.self) { group in
            group.addTask { await lock.acquireOrConfirm() }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            if case .some(.some(let held)) = await group.next() {
                group.cancelAll()
                return held
            }
            // The group waits for the try, which ends once its connection is gone.
            await lock.abandon()
            return false
        }
    }

    /// One try: takes or confirms the lock, and logs a change of leadership.
    package func renew() async {
        guard let lock = self.lock else { return }
        let held = await Self.attempt(lock, within: self.interval * 3)
        let now = ContinuousClock.now
        let (leading, changed) = self.state.withLockedValue { state -> (Bool, Bool) in
            if held {
                if !state.held { state.acquired = now }
                state.confirmed = now
            } else {
                state.acquired = nil
                state.confirmed = nil
            }
            state.held = held
            let leading = self.leads(state, now: now)
            defer { state.announced = leading }
            return (leading, leading != state.announced)
        }
        guard changed else { return }
        if leading {
            self.logger.notice("This node now does the singleton work (liveness sweeps, KPI snapshots, alert rules)")
        } else {
            self.logger.warning("This node no longer does the singleton work: another node took it or the database is unreachable")
        }
    }
}
