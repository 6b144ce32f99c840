import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import Synchronization

/// Tuning of the write pipeline between the sockets and SQLite.
package struct PipelineConfiguration: Sendable {
    /// Readings (and rejected lines) that may wait for the writer before connections are paused.
    package var queueCapacity: Int = 50_000
    /// Shortest time between two commits: readings arriving meanwhile share one transaction.
    package var commitInterval: Duration = .milliseconds(5)
    /// Most readings in one transaction.
    package var maximumBatch: Int = 5_000

    package init(queueCapacity: Int = 50_000, commitInterval: Duration = .milliseconds(5), maximumBatch: Int = 5_000) {
        self.queueCapacity = queueCapacity
        self.commitInterval = commitInterval
        self.maximumBatch = maximumBatch
    }
}

/// The single writer: a bounded queue of submissions drained by one thread in group commits.
///
/// Connections ``submit(_:)`` decoded readings; the writer thread commits them in one transaction
/// every few milliseconds (or every few thousand readings) and only then hands each sender its
/// acks. When the queue is full, ``submit(_:)`` says so and the connection stops reading until
/// ``whenCapacityAvailable(_:)`` calls it back: memory stays bounded and nothing is dropped.
package final class IngestPipeline: Service, Sendable {
    package enum SubmitResult: Equatable {
        case accepted
        /// Accepted, but the queue is at capacity: stop reading until capacity returns.
        case full
    }

    private struct State {
        var queue = CircularBuffer<IngestSubmission>()
        var queuedWeight = 0
        var writerWaiting = false
        var committing = false
        var stopping = false
        var lastCommitStart = ContinuousClock.now - .seconds(1)
        var capacityWaiters: [@Sendable () -> Void] = []
        var drainWaiters: [CheckedContinuation<Void, Never>] = []
        var failure: String?
        var lastProgressMs: Int64 = 0
        var tasks: [@Sendable (IngestWriter) -> Void] = []
        var exited = false
    }

    /// Work handed to ``perform(_:)`` after the writer has stopped.
    package struct WriterStoppedError: Error, CustomStringConvertible {
        package var description: String { "meterd is shutting down: the writer no longer accepts work" }
    }

    package let statistics: IngestStatistics
    private let configuration: PipelineConfiguration
    private let writer: Mutex<IngestWriter?>
    private let state = NIOLockedValueBox(State())
    private let wakeup = DispatchSemaphore(value: 0)
    private let logger: Logger

    package init(writer: sending IngestWriter, configuration: PipelineConfiguration, statistics: IngestStatistics = IngestStatistics(), logger: Logger) {
        // The writer moves to the writer thread once; the mutex only makes that hand-over explicit.
        self.writer = Mutex(writer)
        self.configuration = configuration
        self.statistics = statistics
        self.logger = logger
    }

    /// Readings waiting for the writer.
    package var queueDepth: Int { self.state.withLockedValue { $0.queuedWeight } }

    /// Why the last commit failed, while the writer is retrying it; `nil` when commits succeed.
    package var failure: String? { self.state.withLockedValue { $0.failure } }

    /// Wall-clock time of the last successful commit, or of the last idle check when there was nothing to commit.
    package var lastProgressMs: Int64 { self.state.withLockedValue { $0.lastProgressMs } }

    /// Queues a submission for the next commit. Never drops it.
    @discardableResult
    package func submit(_ submission: IngestSubmission) -> SubmitResult {
        let (result, signal) = self.state.withLockedValue { state -> (SubmitResult, Bool) in
            state.queue.append(submission)
            state.queuedWeight += submission.weight
            let signal = state.writerWaiting
            state.writerWaiting = false
            return (state.queuedWeight >= self.configuration.queueCapacity ? .full : .accepted, signal)
        }
        if signal { self.wakeup.signal() }
        return result
    }

    /// Calls `resume` once the queue has drained to half its capacity (at once if it already has).
    package func whenCapacityAvailable(_ resume: @escaping @Sendable () -> Void) {
        let now = self.state.withLockedValue { state -> Bool in
            if state.queuedWeight <= self.configuration.queueCapacity / 2 { return true }
            state.capacityWaiters.append(resume)
            return false
        }
        if now { resume() }
    }

    /// Returns once everything submitted so far is committed and its acks handed to the senders.
    package func drain() async {
        await withCheckedContinuation { continuation in
            let done = self.state.withLockedValue { state -> Bool in
                if state.queue.isEmpty && !state.committing { return true }
                state.drainWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Runs work on the writer thread between two group commits: the single writer applies
    /// imports and other changes too, so they never contend with ingest for the database.
    ///
    /// The work gets the ``IngestWriter``; it should call ``IngestWriter/reloadMeters()`` after
    /// changing meters or customers.
    package func perform<T: Sendable>(_ work: @escaping @Sendable (IngestWriter) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let accepted = self.state.withLockedValue { state -> Bool? in
                if state.exited { return nil }
                state.tasks.append { writer in continuation.resume(with: Result { try work(writer) }) }
                let signal = state.writerWaiting
                state.writerWaiting = false
                return signal
            }
            switch accepted {
            case nil: continuation.resume(throwing: WriterStoppedError())
            case true?: self.wakeup.signal()
            case false?: break
            }
        }
    }

    /// Runs the writer thread until graceful shutdown, then commits what is queued and returns.
    package func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
                    let thread = Thread { [self] in
                        self.writerLoop()
                        finished.resume()
                    }
                    thread.name = "meterd-writer"
                    thread.start()
                }
            } onCancel: {
                self.requestStop()
            }
        } onGracefulShutdown: {
            self.requestStop()
        }
    }

    private func requestStop() {
        let signal = self.state.withLockedValue { state -> Bool in
            state.stopping = true
            return true
        }
        if signal { self.wakeup.signal() }
    }

    private func writerLoop() {
        var retryDelay = Duration.milliseconds(50)
        while true {
            enum Step {
                case task(@Sendable (IngestWriter) -> Void)
                case wait(ContinuousClock.Instant?)
                case commit([IngestSubmission], weight: Int)
                case exit
            }
            let step = self.state.withLockedValue { state -> Step in
                if !state.tasks.isEmpty { return .task(state.tasks.removeFirst()) }
                if state.queue.isEmpty {
                    if state.stopping { return .exit }
                    state.writerWaiting = true
                    return .wait(nil)
                }
                let windowEnd = state.lastCommitStart + self.configuration.commitInterval
                if !state.stopping, state.queuedWeight < self.configuration.maximumBatch, ContinuousClock.now < windowEnd {
                    state.writerWaiting = true
                    return .wait(windowEnd)
                }
                var batch: [IngestSubmission] = []
                var weight = 0
                while let next = state.queue.first, batch.isEmpty || weight + next.weight <= self.configuration.maximumBatch {
                    batch.append(state.queue.removeFirst())
                    weight += next.weight
                }
                state.committing = true
                state.lastCommitStart = .now
                return .commit(batch, weight: weight)
            }
            switch step {
            case .task(let task):
                self.writer.withLock { writer in task(writer!) }
            case .exit:
                let tasks = self.state.withLockedValue { state in
                    defer {
                        state.tasks = []
                        state.exited = true
                    }
                    return state.tasks
                }
                self.writer.withLock { writer in tasks.forEach { $0(writer!) } }
                self.finishWaiters()
                return
            case .wait(let deadline):
                if let deadline {
                    let remaining = ContinuousClock.now.duration(to: deadline)
                    let nanoseconds = max(0, remaining.components.seconds * 1_000_000_000 + remaining.components.attoseconds / 1_000_000_000)
                    _ = self.wakeup.wait(timeout: .now() + .nanoseconds(Int(nanoseconds)))
                } else {
                    // Wake at least once a second so the watchdog sees an idle but healthy writer.
                    if self.wakeup.wait(timeout: .now() + .seconds(1)) == .timedOut {
                        self.state.withLockedValue { state in
                            if state.failure == nil { state.lastProgressMs = WallClock.nowMs() }
                        }
                    }
                }
            case .commit(let batch, let weight):
                do {
                    let started = ContinuousClock.now
                    let result = try self.writer.withLock { writer in try writer!.commit(batch) }
                    retryDelay = .milliseconds(50)
                    self.deliver(result, for: batch)
                    self.finishCommit(weight: weight)
                    self.statistics.commitObserver?.committed(duration: ContinuousClock.now - started, latenciesMs: result.latenciesMs)
                } catch {
                    self.logger.error("Commit failed; readings stay queued and unacknowledged until it succeeds",
                                      metadata: ["error": "\(error)", "batch.readings": "\(weight)"])
                    self.state.withLockedValue { state in
                        for submission in batch.reversed() { state.queue.prepend(submission) }
                        state.committing = false
                        state.failure = "\(error)"
                    }
                    Thread.sleep(forTimeInterval: Double(retryDelay.components.seconds) + Double(retryDelay.components.attoseconds) / 1e18)
                    retryDelay = min(retryDelay * 2, .seconds(2))
                }
            }
        }
    }

    private func deliver(_ result: IngestWriter.CommitResult, for batch: [IngestSubmission]) {
        let now = WallClock.nowMs()
        self.statistics.stored.add(result.stored, ordering: .relaxed)
        self.statistics.duplicates.add(result.duplicates, ordering: .relaxed)
        if result.rejected > 0 { self.statistics.countReject(.unknownMeter, count: result.rejected) }
        self.statistics.commits.add(1, ordering: .relaxed)
        self.statistics.lastCommitMs.store(now, ordering: .relaxed)
        self.statistics.latency.record(result.latenciesMs, nowMs: now)
        self.statistics.throughput.record(result.stored + result.duplicates, nowMs: now)

        // One delivery per receiver per commit: acks coalesce across its submissions.
        var merged: [ObjectIdentifier: (receiver: any AckReceiver, outcome: SubmissionOutcome, index: [String: Int])] = [:]
        var order: [ObjectIdentifier] = []
        for (submission, outcome) in zip(batch, result.outcomes) {
            guard let receiver = submission.receiver else { continue }
            let id = ObjectIdentifier(receiver)
            if var entry = merged[id] {
                for ack in outcome.acks { entry.outcome.ack(meter: ack.meter, seq: ack.seq, index: &entry.index) }
                entry.outcome.rejections.append(contentsOf: outcome.rejections)
                entry.outcome.submissions += outcome.submissions
                merged[id] = entry
            } else {
                var index: [String: Int] = [:]
                for (position, ack) in outcome.acks.enumerated() { index[ack.meter] = position }
                merged[id] = (receiver, outcome, index)
                order.append(id)
            }
        }
        for id in order {
            let entry = merged[id]!
            entry.receiver.deliver(entry.outcome)
        }
    }

    private func finishCommit(weight: Int) {
        let (resumers, drained) = self.state.withLockedValue { state -> ([@Sendable () -> Void], [CheckedContinuation<Void, Never>]) in
            state.committing = false
            state.queuedWeight -= weight
            state.failure = nil
            state.lastProgressMs = WallClock.nowMs()
            var resumers: [@Sendable () -> Void] = []
            if state.queuedWeight <= self.configuration.queueCapacity / 2 {
                resumers = state.capacityWaiters
                state.capacityWaiters = []
            }
            var drained: [CheckedContinuation<Void, Never>] = []
            if state.queue.isEmpty {
                drained = state.drainWaiters
                state.drainWaiters = []
            }
            return (resumers, drained)
        }
        for resume in resumers { resume() }
        for continuation in drained { continuation.resume() }
    }

    private func finishWaiters() {
        let (resumers, drained) = self.state.withLockedValue { state in
            defer {
                state.capacityWaiters = []
                state.drainWaiters = []
            }
            return (state.capacityWaiters, state.drainWaiters)
        }
        for resume in resumers { resume() }
        for continuation in drained { continuation.resume() }
    }
}
