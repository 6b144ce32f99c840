import Foundation
import NIOConcurrencyHelpers

/// Keeps the in-memory ``MonthlyStore`` the KPI engine reads in step with the writer: the writer's
/// one ``CommitListener``.
///
/// - After each commit that wrote aggregates, the meter-month deltas are queued and applied before
///   the next KPI query.
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
        var hasStore = false
        /// Deltas that arrived while a load was running, with their positions.
        var duringLoad: [AggregateDelta]?
    }

    private let state = NIOLockedValueBox(State())
    /// The store and the lock that guards it; a KPI query holds it for its few milliseconds of work.
    /// (A value lock would demand the non-Sendable store be `sending` in and out.)
    private let storeLock = NSLock()
    private nonisolated(unsafe) var store: MonthlyStore?

    package init() {}

    package func didCommit(_ delta: AggregateDelta) {
        guard !delta.months.isEmpty else { return }
        self.state.withLockedValue { state in
            state.duringLoad?.append(delta)
            guard state.hasStore else { return }
            for change in delta.months {
                state.changes[MeterMonth(meterID: change.meterID, month: change.month), default: .init(meterID: change.meterID, month: change.month)]
                    .merge(change)
            }
        }
    }

    /// Company data (customers, meters, monthly rows) changed outside the live stream: reload on next use.
    package func companyDataChanged() {
        self.state.withLockedValue { state in
            state.generation += 1
            state.hasStore = false
            state.changes = [:]
            state.duringLoad = nil
        }
        self.storeLock.withLock { self.store = nil }
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
        let fresh = try await source.loadMonthlyStore()
        // The same lock order as withStore: the store's, then the state's.
        self.storeLock.withLock {
            let installed = self.state.withLockedValue { state -> Bool in
                // Another load got there first, or an import made this one stale.
                guard state.generation == generation, !state.hasStore, let arrived = state.duringLoad else { return false }
                for delta in arrived where (delta.position ?? Int64.max) > fresh.coveredThrough {
                    fresh.apply(delta.months)
                }
                state.duringLoad = nil
                state.changes = [:]
                state.hasStore = true
                return true
            }
            if installed { self.store = fresh }
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
}
