import Foundation
import Logging
import NIOConcurrencyHelpers

/// Keeps the in-memory ``MonthlyStore`` and ``ReadDayStore`` the KPI engine reads in step with the
/// writer: a ``CommitListener``.
///
/// - After each commit that wrote aggregates, the meter-month and meter-day deltas are queued and
///   applied before the next KPI query.
/// - The store loads on a reader, off the writer thread, while commits go on: the load reads the
///   aggregates and the commit position they cover in one snapshot, and deltas that arrive during
///   the load are applied afterwards only if their position is past it, so none counts twice.
/// - After an import (``companyDataChanged()``) the store is dropped and loaded again when next needed.
package final class KPIRollups: CommitListener, Sendable {
    private struct MeterMonth: Hashable {
        var meterID: Int64
        var month: Int
    }

    private struct State {
        /// Bumped by every company data change: a load begun before one is stale.
        var generation = 0
        /// Deltas since the last query, merged per meter-month so they stay as small as the set of
        /// meters reporting, however long no query comes; only while a store is loaded.
        var changes: [MeterMonth: AggregateDelta.Month] = [:]
        /// The names of the meters in ``changes``: one the writer registered is not in the store yet.
        var changedMeterNames: [Int64: String] = [:]
        /// The same for the read success facts.
        var readChanges = ReadDayStore.Changes()
        var hasStore = false
        /// Deltas that arrived while a load was running, with their positions.
        var duringLoad: [AggregateDelta]?
        /// The snapshots the loaded stores were read in (PostgreSQL): a delta whose commit they see
        /// is counted already, however late it arrives (the commit feed delivers other nodes'
        /// commits a poll after they happened).
        var monthSnapshot: CommitSnapshot?
        var readSnapshot: CommitSnapshot?
        /// Stores loaded so far.
        var loads = 0
        /// Loads under way and who waits for each. Every reader that finds no store joins the
        /// ``currentLoad``: at 100,000 meters a load is seconds of a core and a hundred megabytes,
        /// and the KPI snapshot, the alert rules and the first dashboard request all ask for one
        /// at start-up. A load an import made stale runs on for its waiters, who then load again.
        var loadsUnderWay: [Int: LoadUnderWay] = [:]
        var currentLoad: Int?
        /// The last load to end and how, for a reader that joins it just as it ends.
        var lastEnded: (id: Int, result: Result<Void, any Error>)?
        /// Loads started so far.
        var loadsStarted = 0
        var waitersSoFar = 0
    }

    private struct LoadUnderWay {
        var task: Task<Void, Never>?
        var waiters: [Int: CheckedContinuation<Void, any Error>] = [:]
    }

    /// How many times the stores were loaded: each commit after the first load arrives as a delta.
    package var loads: Int { self.state.withLockedValue { $0.loads } }
    /// How many loads were started: readers that arrive while one runs wait for it.
    package var loadsStarted: Int { self.state.withLockedValue { $0.loadsStarted } }

    /// Whether a store loaded in `snapshot` up to `position` holds `delta` already.
    private static func covers(_ snapshot: CommitSnapshot?, through position: Int64, _ delta: AggregateDelta) -> Bool {
        if let xid = delta.commitXid, let snapshot { return snapshot.sees(xid) }
        return (delta.position ?? Int64.max) <= position
    }

    private static func names(of delta: AggregateDelta) -> [Int64: String] {
        Dictionary(delta.meterReads.map { ($0.meterID, $0.name) }, uniquingKeysWith: { first, _ in first })
    }

    private let state = NIOLockedValueBox(State())
    /// The store and the lock that guards it; a KPI query holds it for its few milliseconds of work.
    /// (A value lock would demand the non-Sendable store be `sending` in and out.)
    private let storeLock = NSLock()
    private nonisolated(unsafe) var store: MonthlyStore?
    /// Loaded and dropped with `store`, under the same lock.
    private nonisolated(unsafe) var readStore: ReadDayStore?

    private let logger: Logger

    /// - Parameter logger: where each load's duration goes (at 100,000 meters it is seconds, and
    ///   `/api/kpi` waits for the first); none by default.
    package init(logger: Logger = Logger(label: "meterd.kpi", factory: { _ in SwiftLogNoOpLogHandler() })) {
        self.logger = logger
    }

    package func didCommit(_ delta: AggregateDelta) {
        guard !delta.isEmpty else { return }
        self.state.withLockedValue { state in
            state.duringLoad?.append(delta)
            guard state.hasStore else { return }
            let monthsHeld = delta.commitXid.map { state.monthSnapshot?.sees($0) ?? false } ?? false
            if !monthsHeld {
                for change in delta.months {
                    state.changes[
                        MeterMonth(meterID: change.meterID, month: change.month), default: .init(meterID: change.meterID, month: change.month)
                    ]
                    .merge(change)
                }
                for meter in delta.meterReads { state.changedMeterNames[meter.meterID] = meter.name }
            }
            state.readChanges.add(delta, days: !(delta.commitXid.map { state.readSnapshot?.sees($0) ?? false } ?? false))
        }
    }

    /// Company data (customers, meters, monthly rows) changed outside the live stream, or the
    /// commit feed lost track of other nodes' commits: reload on next use.
    package func companyDataChanged() {
        self.state.withLockedValue { state in
            state.generation += 1
            // A load under way reads the old data: the next reader starts a new one.
            state.currentLoad = nil
            state.hasStore = false
            state.changes = [:]
            state.readChanges = ReadDayStore.Changes()
            state.duringLoad = nil
        }
        self.storeLock.withLock {
            self.store = nil
            self.readStore = nil
        }
    }

    /// Whether the in-memory store must be (re)loaded before the next query.
    package var needsReload: Bool { self.storeLock.withLock { self.store == nil } }

    /// Loads the store from `source` unless one is loaded, or waits for the load under way. Safe
    /// while the writer commits. A cancelled caller (shutdown) stops waiting at once; the load
    /// stops when no caller waits for it any more.
    package func load(from source: any MeterStore) async throws {
        let waiter = self.state.withLockedValue { state -> (load: Int, id: Int)? in
            guard !state.hasStore else { return nil }
            state.waitersSoFar += 1
            if let current = state.currentLoad { return (current, state.waitersSoFar) }
            if state.duringLoad == nil { state.duringLoad = [] }
            state.loadsStarted += 1
            state.currentLoad = state.loadsStarted
            state.loadsUnderWay[state.loadsStarted] = LoadUnderWay()
            let (id, generation) = (state.loadsStarted, state.generation)
            state.loadsUnderWay[id]?.task = Task {
                let result: Result<Void, any Error>
                do {
                    result = .success(try await self.loadOnce(from: source, generation: generation))
                } catch {
                    result = .failure(error)
                }
                let waiters = self.state.withLockedValue { state in
                    if state.currentLoad == id { state.currentLoad = nil }
                    state.lastEnded = (id, result)
                    return state.loadsUnderWay.removeValue(forKey: id)?.waiters.values
                }
                waiters?.forEach { $0.resume(with: result) }
            }
            return (id, state.waitersSoFar)
        }
        guard let waiter else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let ended = self.state.withLockedValue { state -> Result<Void, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    guard state.loadsUnderWay[waiter.load] != nil else {
                        // It ended before this caller joined it.
                        return state.lastEnded?.id == waiter.load ? state.lastEnded?.result : .success(())
                    }
                    state.loadsUnderWay[waiter.load]?.waiters[waiter.id] = continuation
                    return nil
                }
                if let ended { continuation.resume(with: ended) }
            }
        } onCancel: {
            let (continuation, abandoned) = self.state.withLockedValue { state -> (CheckedContinuation<Void, any Error>?, Task<Void, Never>?) in
                let continuation = state.loadsUnderWay[waiter.load]?.waiters.removeValue(forKey: waiter.id)
                guard continuation != nil, state.loadsUnderWay[waiter.load]?.waiters.isEmpty == true else { return (continuation, nil) }
                if state.currentLoad == waiter.load { state.currentLoad = nil }
                return (continuation, state.loadsUnderWay[waiter.load]?.task)
            }
            continuation?.resume(throwing: CancellationError())
            abandoned?.cancel()
        }
    }

    private func loadOnce(from source: any MeterStore, generation: Int) async throws {
        let started = ContinuousClock.now
        // Side by side: each is seconds of one core at 100,000 meters, and they share nothing.
        async let loadingMonths = source.loadMonthlyStore()
        async let loadingReads = source.loadReadDayStore()
        let fresh = try await loadingMonths
        let reads = try await loadingReads
        self.logger.info(
            "KPI stores loaded",
            metadata: ["kpi.meters": "\(fresh.meterCount)", "kpi.load_ms": "\((ContinuousClock.now - started).milliseconds)"])
        // The same lock order as withStore: the store's, then the state's.
        self.storeLock.withLock {
            let installed = self.state.withLockedValue { state -> Bool in
                // Another load got there first, or an import made this one stale.
                guard state.generation == generation, !state.hasStore, let arrived = state.duringLoad else { return false }
                var readChanges = ReadDayStore.Changes()
                for delta in arrived {
                    if !Self.covers(fresh.coveredSnapshot, through: fresh.coveredThrough, delta) {
                        fresh.apply(delta.months, names: Self.names(of: delta))
                    }
                    // The two stores load in snapshots of their own: each takes the days it lacks.
                    readChanges.add(delta, days: !Self.covers(reads.coveredSnapshot, through: reads.coveredThrough, delta))
                }
                state.loads += 1
                state.monthSnapshot = fresh.coveredSnapshot
                state.readSnapshot = reads.coveredSnapshot
                readChanges.apply(to: reads)
                state.duringLoad = nil
                state.changes = [:]
                state.readChanges = ReadDayStore.Changes()
                state.hasStore = true
                return true
            }
            if installed {
                self.store = fresh
                self.readStore = reads
            }
        }
    }

    /// Runs `body` over the current store (deltas applied); `nil` when it needs a load first.
    func withStore<T>(_ body: (MonthlyStore) throws -> T) rethrows -> T? {
        try self.storeLock.withLock { () -> T? in
            guard let store = self.store else { return nil }
            let (changes, names) = self.state.withLockedValue { state in
                defer {
                    state.changes = [:]
                    state.changedMeterNames = [:]
                }
                return (Array(state.changes.values), state.changedMeterNames)
            }
            store.apply(changes, names: names)
            return try body(store)
        }
    }

    /// Runs `body` over the current read success facts (deltas applied); `nil` when they need a load first.
    func withReadStore<T>(_ body: (ReadDayStore) throws -> T) rethrows -> T? {
        try self.storeLock.withLock { () -> T? in
            guard let store = self.readStore else { return nil }
            let changes = self.state.withLockedValue { state in
                defer { state.readChanges = ReadDayStore.Changes() }
                return state.readChanges
            }
            changes.apply(to: store)
            return try body(store)
        }
    }
}
