import Synchronization

/// Tracks start-up: meterd is ready once the database is open and every listener is bound,
/// and stops being ready when it starts shutting down. Read by systemd's READY=1 and `/readyz`.
package final class Readiness: Sendable {
    private struct State {
        var pending: Set<String>
        var stopping = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    /// - Parameter listeners: names of the listeners that must be bound first (`ingest`, `status`, `http`).
    package init(listeners: Set<String>) {
        self.state = Mutex(State(pending: listeners))
    }

    /// Marks one listener bound.
    package func listenerBound(_ name: String) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.pending.remove(name)
            guard state.pending.isEmpty else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Marks the daemon as shutting down; it is no longer ready.
    package func markStopping() {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.stopping = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// All listeners bound and not shutting down.
    package var isReady: Bool { self.state.withLock { $0.pending.isEmpty && !$0.stopping } }

    package var isStopping: Bool { self.state.withLock { $0.stopping } }

    /// Listeners not bound yet.
    package var pendingListeners: Set<String> { self.state.withLock { $0.pending } }

    /// Returns once every listener is bound, or shutdown has begun.
    package func waitUntilListening() async {
        await withCheckedContinuation { continuation in
            let now = self.state.withLock { state -> Bool in
                if state.pending.isEmpty || state.stopping { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }
}

/// Whether the write pipeline is making progress, which the watchdog and `/healthz` vouch for.
package struct WriterHealth: Sendable {
    package let pipeline: IngestPipeline
    /// Longest time without progress that still counts as healthy. The idle writer reports
    /// progress every second, so this must be well above that.
    package let staleAfterMs: Int64
    /// Counts as the last progress until the writer reports its first.
    private let createdMs: Int64

    package init(pipeline: IngestPipeline, staleAfterMs: Int64 = 5_000) {
        self.pipeline = pipeline
        self.staleAfterMs = max(staleAfterMs, 2_000)
        self.createdMs = WallClock.nowMs()
    }

    /// Milliseconds since the writer last committed or found nothing to commit.
    package func progressAgeMs(nowMs: Int64 = WallClock.nowMs()) -> Int64 {
        let last = self.pipeline.lastProgressMs
        return max(0, nowMs - (last == 0 ? self.createdMs : last))
    }

    package func isMakingProgress(nowMs: Int64 = WallClock.nowMs()) -> Bool {
        self.progressAgeMs(nowMs: nowMs) <= self.staleAfterMs
    }

    /// Whether the writer is doing its job, which is what the watchdog vouches for: committing, or
    /// waiting out an unreachable store by retrying with backoff (at most ``IngestPipeline/maximumRetryDelay``
    /// apart). A restart would not bring the database back, and a meterd that cannot reach it
    /// at start-up exits, so systemd would give up on the unit instead of it resuming by itself.
    /// Any other failure (a held lock, a full disk) that outlasts `staleAfterMs` is a stall.
    package func isAlive(nowMs: Int64 = WallClock.nowMs()) -> Bool {
        if self.isMakingProgress(nowMs: nowMs) { return true }
        guard self.pipeline.storeUnreachableSinceMs != nil else { return false }
        return nowMs - self.pipeline.lastAttemptMs <= self.staleAfterMs + IngestPipeline.maximumRetryDelay.milliseconds
    }
}
