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
    /// Longest time, under continuous load, that per-meter state and monthly aggregates wait in
    /// memory before they are written (readings always commit before their ack). Zero, the
    /// default, writes them in the transaction of their readings; a longer interval saves CPU at
    /// many meters, and start-up recovers what a crash left unwritten. A writer about to go idle,
    /// a task (``IngestPipeline/perform(_:)``) and shutdown write them at once.
    package var aggregateInterval: Duration = .zero
    /// How long a stop keeps trying to commit what is queued while commits fail (the store does
    /// not answer, or refuses them).
    /// Nothing queued was acknowledged, so its meters send it again to whichever node they reach
    /// next; waiting out the outage would only end in systemd's stop timeout and a SIGKILL.
    package var stopStoreWait: Duration = .seconds(10)

    package init(
        queueCapacity: Int = 50_000, commitInterval: Duration = .milliseconds(5), maximumBatch: Int = 5_000,
        aggregateInterval: Duration = .zero, stopStoreWait: Duration = .seconds(10)
    ) {
        self.queueCapacity = queueCapacity
        self.commitInterval = commitInterval
        self.maximumBatch = maximumBatch
        self.aggregateInterval = aggregateInterval
        self.stopStoreWait = stopStoreWait
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
        /// Meters another node moved on in the race a commit lost: batches hold their submissions
        /// back (``takeBatch(from:maximumWeight:holdingBack:settled:)``) until `contestedUntil`,
        /// except readings at or below `settledMarks` (the other node stored them: duplicates here).
        var contested: Set<String> = []
        var contestedUntil = ContinuousClock.now
        var contestedHold = Duration.milliseconds(2)
        /// The contested meters' high-water marks in the store at the end of the last hold.
        var settledMarks: [String: Int64] = [:]
        /// Since when those marks have not moved: the other node may have stopped storing them.
        var settledQuietSince: ContinuousClock.Instant?
        /// What the writer thread is waiting for, so a submission wakes it only when it must.
        var writerWait = WriterWait.busy
        var committing = false
        var stopping = false
        /// When the stop began: the ingest server's last drain (``drainForStop()``), or graceful
        /// shutdown of the writer itself, whichever came first.
        var stopRequested: ContinuousClock.Instant?
        var lastCommitStart = ContinuousClock.now - .seconds(1)
        /// The writer found the queue empty since its last commit: the next batch starts after a quiet spell.
        var idleSinceCommit = true
        /// Paused connections, resumed oldest first as the writer makes room.
        var capacityWaiters = CircularBuffer<@Sendable () -> Void>()
        var drainWaiters: [CheckedContinuation<Void, Never>] = []
        var failure: String?
        var lastProgressMs: Int64 = 0
        /// Failed commit attempts since the last success.
        var consecutiveFailures = 0
        /// Since when the store has been unreachable (``StoreReachabilityError``), while it is.
        var storeUnreachableSinceMs: Int64?
        /// When the writer last finished a commit attempt, successful or not.
        var lastAttemptMs: Int64 = 0
        /// When a failed commit was last logged: a long outage logs now and then, not every retry.
        var lastFailureLogMs: Int64 = 0
        var tasks: [@Sendable (any MeterStoreWriter) -> Void] = []
        var exited = false
    }

    private enum WriterWait {
        /// Working (or about to check the queue): it will see new submissions without a signal.
        case busy
        /// Nothing queued: the next submission or task wakes it.
        case idle
        /// Waiting for the commit window to close: only a full batch or a task cuts that short.
        case window
    }

    /// Work handed to ``perform(_:)`` after the writer has stopped.
    package struct WriterStoppedError: Error, CustomStringConvertible {
        package var description: String { "meterd is shutting down: the writer no longer accepts work" }
    }

    package let statistics: IngestStatistics
    private let configuration: PipelineConfiguration
    private let writer: Mutex<any MeterStoreWriter>
    private let state = NIOLockedValueBox(State())
    /// Set when the queue reaches capacity, cleared when it drains to half: read by every
    /// connection before each socket read, so it is an atomic rather than a look under the lock.
    private let full = Atomic<Bool>(false)
    /// `queuedWeight`, readable without the lock: a resumed connection checks it before each submission.
    private let depth = Atomic<Int>(0)
    /// Set while commits keep failing (a store outage): connections stop reading and are told
    /// busy whatever the queue's depth, because nothing they send can be acknowledged until it ends.
    private let stalled = Atomic<Bool>(false)
    /// Counts as the last progress until the writer reports its first.
    private let createdMs = WallClock.nowMs()
    private let wakeup = DispatchSemaphore(value: 0)
    private let logger: Logger

    package init(
        writer: sending any MeterStoreWriter, configuration: PipelineConfiguration, statistics: IngestStatistics = IngestStatistics(), logger: Logger
    ) {
        // The writer moves to the writer thread once; the mutex only makes that hand-over explicit.
        self.writer = Mutex(writer)
        self.configuration = configuration
        self.statistics = statistics
        self.logger = logger
    }

    /// Whether connections should stop reading: the queue reached capacity and has not yet
    /// drained to half of it (``whenCapacityAvailable(_:)`` calls back when it has).
    package var isFull: Bool { self.full.load(ordering: .relaxed) }

    /// Readings waiting for the writer.
    package var queueDepth: Int { self.state.withLockedValue { $0.queuedWeight } }

    /// Whether the queue is below its capacity right now. ``isFull`` stays set until every paused
    /// connection has been resumed (so that they go first); a resumed one checks this instead
    /// before it submits, so that no submission starts once the queue has reached capacity.
    package var hasRoom: Bool { !self.isStalled && self.depth.load(ordering: .relaxed) < self.configuration.queueCapacity }

    /// Whether commits keep failing: connections are told busy until one succeeds.
    package var isStalled: Bool { self.stalled.load(ordering: .relaxed) }

    /// Since when the store has been unreachable, while commits fail for that reason.
    package var storeUnreachableSinceMs: Int64? { self.state.withLockedValue { $0.storeUnreachableSinceMs } }

    /// Wall-clock time the writer last finished a commit attempt, whatever its outcome.
    package var lastAttemptMs: Int64 { self.state.withLockedValue { $0.lastAttemptMs } }

    /// Why the last commit failed, while the writer is retrying it; `nil` when commits succeed.
    package var failure: String? { self.state.withLockedValue { $0.failure } }

    /// Wall-clock time of the last successful commit, or of the last idle check when there was nothing to commit.
    package var lastProgressMs: Int64 { self.state.withLockedValue { $0.lastProgressMs } }

    /// How long the writer has gone without finishing a commit (or an idle check), when that is
    /// over ``stallLimitMs`` and no failure explains it: a commit the store has not answered yet
    /// (a held lock, an unanswered connection), before its deadline fails it. `nil` otherwise.
    private func unexplainedStallMs(nowMs: Int64) -> Int64? {
        let (progress, failure) = self.state.withLockedValue { ($0.lastProgressMs, $0.failure) }
        let last = progress == 0 ? self.createdMs : progress
        guard failure == nil, nowMs - last > Self.stallLimitMs else { return nil }
        return nowMs - last
    }

    /// A commit takes a second or two at most; this is well past it, and before the stores' own
    /// deadlines (PostgreSQL's 10 s for a commit, SQLite's 10 s busy timeout) fail it.
    package static let stallLimitMs: Int64 = 5_000

    /// What ``unexplainedStallMs(nowMs:)`` reports, in the words `/readyz`, the status socket and systemd use.
    package func stallDescription(nowMs: Int64 = WallClock.nowMs()) -> String? {
        self.unexplainedStallMs(nowMs: nowMs).map { "writer stalled: no commit finished for \($0 / 1000) s" }
    }

    /// Counts as progress, like a finished commit: called by work that holds the writer for long
    /// (an import of a large file) while it gets on, so that it is not taken for a stall.
    package func workProgressed() {
        self.state.withLockedValue { state in
            guard state.failure == nil else { return }
            state.lastProgressMs = WallClock.nowMs()
        }
    }

    /// Queues a submission for the next commit. Never drops it.
    @discardableResult
    package func submit(_ submission: IngestSubmission) -> SubmitResult {
        let (result, signal) = self.state.withLockedValue { state -> (SubmitResult, Bool) in
            state.queue.append(submission)
            state.queuedWeight += submission.weight
            self.depth.store(state.queuedWeight, ordering: .relaxed)
            // A writer waiting out the commit window takes this submission when the window closes:
            // waking it for every reading would cost a futex wake and a context switch each.
            let signal: Bool
            switch state.writerWait {
            case .busy: signal = false
            case .idle: signal = true
            case .window: signal = state.queuedWeight >= self.configuration.maximumBatch
            }
            if signal { state.writerWait = .busy }
            guard state.queuedWeight >= self.configuration.queueCapacity || self.stalled.load(ordering: .relaxed) else {
                return (.accepted, signal)
            }
            self.full.store(true, ordering: .relaxed)
            return (.full, signal)
        }
        if signal { self.wakeup.signal() }
        return result
    }

    /// Calls `resume` once there is room for this caller again (at once if the queue is below half
    /// its capacity, commits succeed and nobody waits before it).
    ///
    /// Waiters resume oldest first, about one per ``readingsPerResume`` of room each commit makes,
    /// not all at once: at 10,000 paused connections waking every one would let each read and
    /// most pause again at once, thousands of wakeups and re-registrations per commit for nothing.
    package func whenCapacityAvailable(_ resume: @escaping @Sendable () -> Void) {
        let now = self.state.withLockedValue { state -> Bool in
            // In an outage the room is no use: the next successful commit resumes everyone.
            if !self.isStalled, state.queuedWeight <= self.configuration.queueCapacity / 2, state.capacityWaiters.isEmpty { return true }
            state.capacityWaiters.append(resume)
            return false
        }
        if now { resume() }
    }

    /// Room one resumed connection is expected to take. One read (at most 4 KB, see
    /// `IngestReceiveBuffers`) holds about 37 readings of ~110 bytes, more when the meter's lines are
    /// short; 36 and 64 measured the same in `Benchmarks/ingest.py` a, burst100 and raw100. A
    /// connection resumed when others took the room first finds ``hasRoom`` false and waits again.
    static let readingsPerResume = 64
    /// Commits lost in a row to other nodes' writers before a conflict counts as a failure.
    static let maximumLostRaces = 20

    /// Longest wait between two attempts at a failing commit: retries back off from 50 ms to this.
    package static let maximumRetryDelay = Duration.seconds(2)

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

    /// The ingest server's drain at a stop: as ``drain()``, but it starts the stop's wait for a
    /// failing store (``PipelineConfiguration/stopStoreWait``). The service group stops the
    /// writer only after the ingest server, so this drain, not the writer's own stop, is where a
    /// stop first waits for the store.
    package func drainForStop() async {
        self.state.withLockedValue { state in state.stopRequested = state.stopRequested ?? .now }
        await self.drain()
    }

    /// Runs work on the writer thread between two group commits: the single writer applies
    /// imports and other changes too, so they never contend with ingest for the database.
    ///
    /// The work gets the ``MeterStoreWriter``; it should call ``MeterStoreWriter/reloadMeters()`` after
    /// changing meters or customers.
    package func perform<T: Sendable>(_ work: @escaping @Sendable (any MeterStoreWriter) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let accepted = self.state.withLockedValue { state -> Bool? in
                if state.exited { return nil }
                state.tasks.append { writer in continuation.resume(with: Result { try work(writer) }) }
                let signal = state.writerWait != .busy
                state.writerWait = .busy
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
            state.stopRequested = state.stopRequested ?? .now
            state.writerWait = .busy
            return true
        }
        if signal { self.wakeup.signal() }
    }

    private func writerLoop() {
        var retryDelay = Duration.milliseconds(50)
        // Races lost in a row without a meter to hold back (a deadlock the server broke); past
        // ``maximumLostRaces`` such a conflict counts as a failure (and backs off).
        var lostRaces = 0
        // Races lost in a row over contested meters, which are held back longer each time.
        var contestedRaces = 0
        var lastAggregateWrite = ContinuousClock.now
        while true {
            enum Step {
                case task(@Sendable (any MeterStoreWriter) -> Void)
                case wait(ContinuousClock.Instant?)
                /// A hold on contested meters ended: look at their marks before the next batch.
                case settle(Set<String>)
                case commit([IngestSubmission], weight: Int, aggregates: Bool, holdingBack: Bool)
                case exit
            }
            let step = self.state.withLockedValue { state -> Step in
                state.writerWait = .busy
                if !state.tasks.isEmpty { return .task(state.tasks.removeFirst()) }
                if state.queue.isEmpty {
                    if state.stopping { return .exit }
                    state.idleSinceCommit = true
                    state.writerWait = .idle
                    return .wait(nil)
                }
                let windowEnd = state.lastCommitStart + self.configuration.commitInterval
                if !state.stopping, state.queuedWeight < self.configuration.maximumBatch, ContinuousClock.now < windowEnd {
                    state.writerWait = .window
                    return .wait(windowEnd)
                }
                if state.stopping {
                    state.contested = []
                    state.settledMarks = [:]
                    state.settledQuietSince = nil
                } else if !state.contested.isEmpty, ContinuousClock.now >= state.contestedUntil {
                    return .settle(state.contested)
                }
                let (batch, weight) = Self.takeBatch(
                    from: &state.queue, maximumWeight: self.configuration.maximumBatch, holdingBack: state.contested,
                    settled: state.settledMarks)
                guard !batch.isEmpty else {
                    // Only contested meters' readings are queued: they wait for their hold to end,
                    // or for another meter's reading to commit meanwhile.
                    state.writerWait = .idle
                    return .wait(state.contestedUntil)
                }
                state.committing = true
                state.lastCommitStart = .now
                // Under continuous load, aggregates wait up to aggregateInterval; after a quiet
                // spell (or when stopping) they go with this batch, in its transaction.
                let aggregates =
                    state.idleSinceCommit || state.stopping
                    || lastAggregateWrite.duration(to: state.lastCommitStart) >= self.configuration.aggregateInterval
                state.idleSinceCommit = false
                return .commit(batch, weight: weight, aggregates: aggregates, holdingBack: !state.contested.isEmpty)
            }
            switch step {
            case .settle(let meters):
                self.settleContested(meters)
            case .task(let task):
                // Tasks (imports, liveness, snapshots, backups) see aggregates equal to the readings.
                let flushed = self.writer.withLock { writer in
                    let flushed = writer.flushAggregates(logger: self.logger)
                    task(writer)
                    return flushed
                }
                if flushed { lastAggregateWrite = .now }
            case .exit:
                let tasks = self.state.withLockedValue { state in
                    defer {
                        state.tasks = []
                        state.exited = true
                    }
                    return state.tasks
                }
                self.writer.withLock { writer in
                    _ = writer.flushAggregates(logger: self.logger)
                    tasks.forEach { $0(writer) }
                }
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
                        if self.writer.withLock({ writer in writer.flushAggregates(logger: self.logger) }) { lastAggregateWrite = .now }
                        self.checkStoreWhileIdle()
                    }
                }
            case .commit(let batch, let weight, let aggregates, let holdingBack):
                do {
                    let started = ContinuousClock.now
                    let (result, flushed) = try self.writer.withLock { writer in
                        let result = try writer.commit(batch, deferAggregates: !aggregates)
                        // Going quiet: write the aggregates before these acks, so whoever saw its
                        // last ack finds the meters and months in step with its readings.
                        let quiet = !aggregates && self.state.withLockedValue { $0.queue.isEmpty && $0.tasks.isEmpty }
                        return (result, aggregates || (quiet && writer.flushAggregates(logger: self.logger)))
                    }
                    if flushed { lastAggregateWrite = started }
                    retryDelay = .milliseconds(50)
                    lostRaces = 0
                    if !holdingBack { contestedRaces = 0 }
                    self.deliver(result, for: batch)
                    self.finishCommit(weight: weight)
                } catch let error where self.writer.withLock({ $0.lostRace(error) }) && lostRaces < Self.maximumLostRaces {
                    // Another node committed some of these meters first: the writer reloaded them,
                    // so the batch goes again now and finds those readings as duplicates. The
                    // meters it moved on wait a little, 2 ms doubling to 128 ms while they keep
                    // losing (one sent to two nodes at once), so the rest commits meanwhile and
                    // nobody else is told busy for them.
                    self.statistics.lostRaces.add(1, ordering: .relaxed)
                    let contested = self.writer.withLock { $0.takeContestedMeters() }
                    if contested.isEmpty {
                        lostRaces += 1
                    } else {
                        contestedRaces += 1
                    }
                    let hold = Duration.milliseconds(1 << min(contestedRaces, 7))
                    self.logger.debug(
                        "Commit lost a race with another node; retrying",
                        metadata: ["error": "\(error)", "contested_meters": "\(contested.count)"])
                    self.state.withLockedValue { state in
                        for submission in batch.reversed() { state.queue.prepend(submission) }
                        state.contested = contested
                        state.contestedUntil = ContinuousClock.now + hold
                        state.contestedHold = hold
                        // Marks only grow, and duplicates commit whatever the other node did
                        // meanwhile (migration `v8-duplicates-never-lose`): readings at or below
                        // the last look's marks still pass.
                        state.settledQuietSince = nil
                        state.committing = false
                        if !contested.isEmpty {
                            // The store answered and the writer knows why: it is working, even
                            // while the queue holds only a meter that keeps losing.
                            let now = WallClock.nowMs()
                            state.lastProgressMs = now
                            state.lastAttemptMs = now
                        }
                    }
                } catch {
                    lostRaces = 0
                    self.commitFailed(error, batch: batch, weight: weight, retryDelay: retryDelay)
                    if self.abandonQueueWhenStoppingWithFailingCommits() { continue }
                    Thread.sleep(forTimeInterval: retryDelay.seconds)
                    retryDelay = min(retryDelay * 2, Self.maximumRetryDelay)
                }
            }
        }
    }

    /// The longest wait between two looks at contested meters' marks while another node moves them on.
    static let settleHold = Duration.milliseconds(8)
    /// How long the marks must stay still before this node commits the rest itself: one look is
    /// not enough (a stream at 100 readings/s leaves them still for 10 ms at a time), and this
    /// node's attempt while the other node still stores them loses, acks included.
    static let settleQuiet = Duration.milliseconds(64)

    /// At the end of a hold, reads the contested meters' marks in the store again. What the other
    /// node committed of their readings meanwhile is a duplicate here now, acked without a race;
    /// while that node keeps moving them on, their newer readings wait another hold (it is likely
    /// to store those too, and this node's attempt would lose again, taking the acks of the
    /// duplicates with it). Once it stops, or the marks cannot be read, they are released.
    private func settleContested(_ meters: Set<String>) {
        let marks = (try? self.writer.withLock { writer in try writer.refreshMeters(named: meters) }) ?? [:]
        self.state.withLockedValue { state in
            let now = ContinuousClock.now
            let moved = meters.contains { meter in marks[meter].map { $0 != state.settledMarks[meter] } ?? false }
            if moved {
                state.settledQuietSince = nil
            } else if marks.isEmpty || state.settledQuietSince.map({ $0.duration(to: now) >= Self.settleQuiet }) == true {
                state.contested = []
                state.settledMarks = [:]
                state.settledQuietSince = nil
                return
            } else if state.settledQuietSince == nil {
                state.settledQuietSince = now
            }
            state.settledMarks = marks
            // No commit of them is tried meanwhile, so nothing can lose: a short hold costs only
            // the next look at the marks, and acks the other node's readings soon after it stores them.
            state.contestedUntil = ContinuousClock.now + min(state.contestedHold, Self.settleHold)
        }
    }

    /// The next batch: submissions from the front of the queue up to `maximumWeight` (at least one).
    ///
    /// After a lost race, the submissions of the `contested` meters wait, so that a meter sent to
    /// two nodes at once (or hopping between them) cannot make every other meter's readings lose
    /// with it, commit after commit; readings at or below their `settled` marks do not (the other
    /// node stored them). Whatever a held submission's sender sent later waits too, as does every
    /// later submission with one of its meters: a meter's readings and a connection's acks keep
    /// their order. The batch is empty when every queued submission waits.
    static func takeBatch(
        from queue: inout CircularBuffer<IngestSubmission>, maximumWeight: Int, holdingBack contested: Set<String>,
        settled: [String: Int64] = [:]
    ) -> (batch: [IngestSubmission], weight: Int) {
        var batch: [IngestSubmission] = []
        var weight = 0
        if !contested.isEmpty {
            var heldMeters = Set<String>()
            var heldSenders = Set<ObjectIdentifier>()
            var held: [IngestSubmission] = []
            var scanned = 0
            func waits(_ item: SubmittedReading) -> Bool {
                let meter = item.reading.meter
                if heldMeters.contains(meter) { return true }
                guard contested.contains(meter) else { return false }
                return !(settled[meter].map { item.reading.seq <= $0 } ?? false)
            }
            for next in queue {
                guard batch.isEmpty || weight + next.weight <= maximumWeight else { break }
                scanned += 1
                let sender = next.receiver.map { ObjectIdentifier($0) }
                if sender.map(heldSenders.contains) == true || next.readings.contains(where: waits) {
                    if let sender { heldSenders.insert(sender) }
                    for item in next.readings { heldMeters.insert(item.reading.meter) }
                    held.append(next)
                } else {
                    batch.append(next)
                    weight += next.weight
                }
            }
            queue.removeFirst(scanned)
            for submission in held.reversed() { queue.prepend(submission) }
            return (batch, weight)
        }
        while let next = queue.first, batch.isEmpty || weight + next.weight <= maximumWeight {
            batch.append(queue.removeFirst())
            weight += next.weight
        }
        return (batch, weight)
    }

    private func deliver(_ result: CommitResult, for batch: [IngestSubmission]) {
        let now = WallClock.nowMs()
        self.statistics.stored.add(result.stored, ordering: .relaxed)
        self.statistics.duplicates.add(result.duplicates, ordering: .relaxed)
        if result.flags > 0 { self.statistics.validationFlags.add(result.flags, ordering: .relaxed) }
        if result.rejected > 0 { self.statistics.countReject(.unknownMeter, count: result.rejected) }
        self.statistics.commits.add(1, ordering: .relaxed)
        self.statistics.lastCommitMs.store(now, ordering: .relaxed)
        self.statistics.latency.record(result.latenciesMs, nowMs: now)
        self.statistics.throughput.record(result.stored + result.duplicates, nowMs: now)

        // One delivery per receiver per commit: acks coalesce across its submissions.
        var merged: [ObjectIdentifier: (receiver: any AckReceiver, outcome: SubmissionOutcome, index: [String: Int])] = [:]
        merged.reserveCapacity(batch.count)
        var order: [ObjectIdentifier] = []
        order.reserveCapacity(batch.count)
        for (submission, outcome) in zip(batch, result.outcomes) {
            guard let receiver = submission.receiver else { continue }
            let id = ObjectIdentifier(receiver)
            if var entry = merged.removeValue(forKey: id) {
                for ack in outcome.acks { entry.outcome.ack(meter: ack.meter, seq: ack.seq, index: &entry.index) }
                entry.outcome.rejections.append(contentsOf: outcome.rejections)
                entry.outcome.submissions += outcome.submissions
                merged[id] = entry
            } else {
                var index: [String: Int] = [:]
                if outcome.acks.count > SubmissionOutcome.linearAcks {
                    for (position, ack) in outcome.acks.enumerated() { index[ack.meter] = position }
                }
                merged[id] = (receiver, outcome, index)
                order.append(id)
            }
        }
        // One task per event loop per commit, not one per connection: at 10 k meters a commit
        // reaches hundreds of connections, and each task is a wakeup and a closure allocation.
        var loops: [ObjectIdentifier: (loop: any EventLoop, deliveries: [(any AckReceiver, SubmissionOutcome)])] = [:]
        for id in order {
            let entry = merged[id]!
            if let loop = entry.receiver.eventLoop {
                loops[ObjectIdentifier(loop), default: (loop, [])].deliveries.append((entry.receiver, entry.outcome))
            } else {
                entry.receiver.deliver(entry.outcome)
            }
        }
        for (_, group) in loops {
            let deliveries = group.deliveries
            group.loop.execute {
                for (receiver, outcome) in deliveries { receiver.deliverOnEventLoop(outcome) }
            }
        }
    }

    /// Puts a failed batch back at the head of the queue and, once failures persist (or the store
    /// is unreachable at all), stops every connection until a commit succeeds.
    private func commitFailed(_ error: any Error, batch: [IngestSubmission], weight: Int, retryDelay: Duration) {
        let unreachable = (error as? any StoreReachabilityError)?.meansStoreUnreachable ?? false
        self.statistics.commitFailures.add(1, ordering: .relaxed)
        let now = WallClock.nowMs()
        let (log, failures) = self.state.withLockedValue { state -> (Bool, Int) in
            for submission in batch.reversed() { state.queue.prepend(submission) }
            state.committing = false
            let text = "\(error)"
            let log = text != state.failure || now - state.lastFailureLogMs >= 60_000
            if log { state.lastFailureLogMs = now }
            state.failure = text
            state.consecutiveFailures += 1
            state.lastAttemptMs = now
            state.storeUnreachableSinceMs = unreachable ? (state.storeUnreachableSinceMs ?? now) : nil
            // One failure may be a conflict with another node that the retry resolves: only a
            // second one, or an outage, stops the connections.
            if unreachable || state.consecutiveFailures >= 2 {
                self.stalled.store(true, ordering: .relaxed)
                self.full.store(true, ordering: .relaxed)
            }
            return (log, state.consecutiveFailures)
        }
        guard log else { return }
        self.logger.error(
            unreachable
                ? "Store unreachable; meters are told busy and readings stay queued and unacknowledged until it answers again"
                : "Commit failed; readings stay queued and unacknowledged until it succeeds",
            metadata: [
                "error": "\(error)", "batch.readings": "\(weight)", "commit.attempts": "\(failures)",
                "commit.retry_ms": "\(retryDelay.milliseconds)",
            ])
    }

    /// Past ``PipelineConfiguration/stopStoreWait`` into a stop, with commits still failing (an
    /// unreachable store, or one that refuses them: a full disk, a read-only database), drops the
    /// queue (none of it was acknowledged) so the stop can finish. Returns whether it did.
    private func abandonQueueWhenStoppingWithFailingCommits() -> Bool {
        let abandoned = self.state.withLockedValue { state -> (readings: Int, waiters: [CheckedContinuation<Void, Never>])? in
            guard let requested = state.stopRequested, requested.duration(to: .now) >= self.configuration.stopStoreWait else { return nil }
            let readings = state.queuedWeight
            state.queue.removeAll()
            state.queuedWeight = 0
            self.depth.store(0, ordering: .relaxed)
            defer { state.drainWaiters = [] }
            return (readings, state.drainWaiters)
        }
        guard let abandoned else { return false }
        self.logger.error(
            "Stopping without committing the queued readings: no commit has succeeded since the stop began; none of them was acknowledged, so their meters send them again",
            metadata: ["batch.readings": "\(abandoned.readings)", "stop.waited_s": "\(self.configuration.stopStoreWait.components.seconds)"])
        for waiter in abandoned.waiters { waiter.resume() }
        return true
    }

    /// Asks the store whether it answers, once a second while there is nothing to commit: a node
    /// whose meters are quiet (or all on other nodes) would otherwise show ready through a whole
    /// database outage. An unreachable store stops the connections as a failed commit does; its
    /// return resumes them. Any other error is left to the next commit to meet and report.
    private func checkStoreWhileIdle() {
        do {
            try self.writer.withLock { try $0.checkReachable() }
        } catch  where (error as? any StoreReachabilityError)?.meansStoreUnreachable == true {
            self.commitFailed(error, batch: [], weight: 0, retryDelay: .seconds(1))
            return
        } catch {
            // Once a second while it lasts: the next commit meets it and logs it with its batch.
            self.logger.debug("Checking the idle store failed", metadata: ["error": "\(error)"])
        }
        let recovering = self.state.withLockedValue { state -> Bool in
            guard state.failure == nil else { return state.queue.isEmpty && !state.committing }
            state.lastProgressMs = WallClock.nowMs()
            return false
        }
        if recovering { self.finishCommit(weight: 0, recovery: "The store answers again; reading from meters") }
    }

    private func finishCommit(weight: Int, recovery: Logger.Message = "Commits succeed again; acknowledging and reading from meters") {
        let now = WallClock.nowMs()
        let (resumers, drained, outage) = self.state.withLockedValue {
            state -> ([@Sendable () -> Void], [CheckedContinuation<Void, Never>], (failures: Int, sinceMs: Int64?)?) in
            state.committing = false
            state.queuedWeight -= weight
            self.depth.store(state.queuedWeight, ordering: .relaxed)
            let outage = state.failure == nil ? nil : (failures: state.consecutiveFailures, sinceMs: state.storeUnreachableSinceMs)
            state.failure = nil
            state.consecutiveFailures = 0
            state.storeUnreachableSinceMs = nil
            state.lastProgressMs = now
            state.lastAttemptMs = now
            self.stalled.store(false, ordering: .relaxed)
            var resumers: [@Sendable () -> Void] = []
            let capacity = self.configuration.queueCapacity
            if state.queuedWeight <= capacity / 2 {
                // An empty queue means no commit will come to wake the rest: wake them all.
                let count =
                    state.queue.isEmpty
                    ? state.capacityWaiters.count
                    : min(state.capacityWaiters.count, max(1, (capacity - state.queuedWeight) / Self.readingsPerResume))
                resumers.reserveCapacity(count)
                for _ in 0..<count { resumers.append(state.capacityWaiters.removeFirst()) }
                if state.capacityWaiters.isEmpty { self.full.store(false, ordering: .relaxed) }
            }
            var drained: [CheckedContinuation<Void, Never>] = []
            if state.queue.isEmpty {
                drained = state.drainWaiters
                state.drainWaiters = []
            }
            return (resumers, drained, outage)
        }
        if let outage {
            var metadata: Logger.Metadata = ["commit.attempts": "\(outage.failures + 1)", "queue.depth": "\(self.queueDepth)"]
            if let since = outage.sinceMs { metadata["store.unreachable_ms"] = "\(now - since)" }
            self.logger.notice(recovery, metadata: metadata)
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
            return (Array(state.capacityWaiters), state.drainWaiters)
        }
        for resume in resumers { resume() }
        for continuation in drained { continuation.resume() }
    }
}
