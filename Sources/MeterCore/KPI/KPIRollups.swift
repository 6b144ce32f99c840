import Foundation
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
    }

    /// How many times the stores were loaded: each commit after the first load arrives as a delta.
    package var loads: Int { self.state.withLockedValue { $0.loads } }

    /// Whether a store loaded in `snapshot` up to `position` holds `delta` already.
    private static func covers(_ snapshot: CommitSnapshot?, through position: Int64, _ delta: AggregateDelta) -> Bool {
        if let xid = delta.commitXid, let snapshot { return snapshot.sees(xid) }
        return (delta.position ?? Int64.max) <= position
    }

    private let state = NIOLockedValueBox(State())
    /// The store and the lock that guards it; a KPI query holds it for its few milliseconds of work.
    /// (A value lock would demand the non-Sendable store be `sending` in and out.)
    private let storeLock = NSLock()
    private nonisolated(unsafe) var store: MonthlyStore?
    /// Loaded and dropped with `store`, under the same lock.
    private nonisolated(unsafe) var readStore: ReadDayStore?

    package init() {}

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
            }
            state.readChanges.add(delta, days: !(delta.commitXid.map { state.readSnapshot?.sees($0) ?? false } ?? false))
        }
    }

    /// Company data (customers, meters, monthly rows) changed outside the live stream, or the
    /// commit feed lost track of other nodes' commits: reload on next use.
    package func companyDataChanged() {
        self.state.withLockedValue { state in
            state.generation += 1
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

    /// Loads the store from `source` unless one is loaded. Safe while the writer commits.
    package func load(from source: any MeterStore) async throws {
        let generation = self.state.withLockedValue { state -> Int? in
            guard !state.hasStore else { return nil }
            if state.duringLoad == nil { state.duringLoad = [] }
            return state.generation
        }
        guard let generation else { return }
        // Side by side: each is seconds of one core at 100,000 meters, and they share nothing.
        async let loadingMonths = source.loadMonthlyStore()
        async let loadingReads = source.loadReadDayStore()
        let fresh = try await loadingMonths
        let reads = try await loadingReads
        // The same lock order as withStore: the store's, then the state's.
        self.storeLock.withLock {
            let installed = self.state.withLockedValue { state -> Bool in
                // Another load got there first, or an import made this one stale.
                guard state.generation == generation, !state.hasStore, let arrived = state.duringLoad else { return false }
                var readChanges = ReadDayStore.Changes()
                for delta in arrived {
                    if !Self.covers(fresh.coveredSnapshot, through: fresh.coveredThrough, delta) { fresh.apply(delta.months) }
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
            let changes = self.state.withLockedValue { state in
                defer { state.changes = [:] }
                return Array(state.changes.values)
            }
            store.apply(changes)
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
