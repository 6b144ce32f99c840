import Foundation
import GRDB
import NIOConcurrencyHelpers

/// Keeps the aggregates the KPI engine reads in step with the writer: an ``IngestObserver``.
///
/// - When the writer writes its aggregates it adds the live reading latencies since the last time
///   to `latency_month` (by the month they were received, the meter's region and a histogram bucket).
/// - After each commit it queues the batch's meter-month deltas for the in-memory
///   ``MonthlyStore``, which applies them before the next KPI query.
/// - After an import (``companyDataChanged()``) the store is dropped and reloaded when next needed.
package final class KPIRollups: IngestObserver, Sendable {
    private struct WriterState {
        var calendar: MonthCalendar
        /// Each meter's region, as an index into `regionNames`: the latency rollup keys on it
        /// once per stored reading, and hashing an integer is several times cheaper than a string.
        var regions: [Int64: Int]?
        var regionNames: [String] = []
        var regionIndex: [String: Int] = [:]

        mutating func index(ofRegion region: String) -> Int {
            if let index = self.regionIndex[region] { return index }
            self.regionNames.append(region)
            self.regionIndex[region] = self.regionNames.count - 1
            return self.regionNames.count - 1
        }
    }

    private struct MeterMonth: Hashable {
        var meterID: Int64
        var month: Int
    }

    private struct Pending {
        /// Whether a store is loaded (or being loaded): deltas only matter then.
        var tracking = false
        /// Deltas since the last query, merged per meter-month so they stay as small as the set of
        /// meters reporting, however long no query comes.
        var changes: [MeterMonth: IngestChanges.MonthChange] = [:]
    }

    private let database: MeterDatabase
    private let writerState: NIOLockedValueBox<WriterState>
    private let pending = NIOLockedValueBox(Pending())
    /// The store and the lock that guards it; a KPI query holds it for its few milliseconds of work.
    /// (A value lock would demand the non-Sendable store be `sending` in and out.)
    private let storeLock = NSLock()
    private nonisolated(unsafe) var store: MonthlyStore?

    package init(database: MeterDatabase, timeZone: TimeZone) {
        self.database = database
        self.writerState = NIOLockedValueBox(WriterState(calendar: MonthCalendar(timeZone: timeZone)))
    }

    package func willCommit(_ changes: IngestChanges, db: Database) throws {
        guard !changes.latencies.isEmpty else { return }
        struct Key: Hashable {
            var month: Int
            var region: Int
            var bucket: Int
        }
        var deltas: [Key: (count: Int, sum: Int64)] = [:]
        let regionNames = try self.writerState.withLockedValue { state -> [String] in
            if state.regions == nil {
                var regions: [Int64: Int] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT id, region FROM meter") {
                    regions[row["id"]] = state.index(ofRegion: row["region"])
                }
                state.regions = regions
            }
            for latency in changes.latencies {
                var region = state.regions![latency.meterID]
                if region == nil {
                    region = state.index(ofRegion: try String.fetchOne(db, sql: "SELECT region FROM meter WHERE id = ?",
                                                                       arguments: [latency.meterID]) ?? Region.unassigned)
                    state.regions![latency.meterID] = region
                }
                let key = Key(month: state.calendar.month(ofMilliseconds: latency.receivedMs).key, region: region!,
                              bucket: LatencyBuckets.bucket(ofMilliseconds: latency.latencyMs))
                deltas[key, default: (0, 0)].count += 1
                deltas[key, default: (0, 0)].sum += latency.latencyMs
            }
            return state.regionNames
        }
        let upsert = try RawStatement(db, sql: """
            INSERT INTO latency_month (month, region, bucket, count, sum_ms) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (month, region, bucket) DO UPDATE SET
                count = latency_month.count + excluded.count, sum_ms = latency_month.sum_ms + excluded.sum_ms
            """)
        for (key, delta) in deltas {
            upsert.bind(1, key.month)
            upsert.bind(2, regionNames[key.region])
            upsert.bind(3, key.bucket)
            upsert.bind(4, delta.count)
            upsert.bind(5, delta.sum)
            try upsert.execute()
        }
    }

    package func didCommit(_ changes: IngestChanges) {
        guard !changes.months.isEmpty else { return }
        self.pending.withLockedValue { pending in
            guard pending.tracking else { return }
            for change in changes.months {
                let key = MeterMonth(meterID: change.meterID, month: change.month)
                if var merged = pending.changes[key] {
                    merged.kwh += change.kwh
                    merged.revenue += change.revenue
                    merged.readings += change.readings
                    merged.faults += change.faults
                    merged.good += change.good
                    merged.fair += change.fair
                    merged.poor += change.poor
                    pending.changes[key] = merged
                } else {
                    pending.changes[key] = change
                }
            }
        }
    }

    /// Company data (customers, meters, monthly rows) changed outside the live stream: reload on next use.
    /// Call on the writer thread (or where no writer runs).
    package func companyDataChanged() {
        self.writerState.withLockedValue { $0.regions = nil }
        self.pending.withLockedValue { pending in
            pending.tracking = false
            pending.changes = [:]
        }
        self.storeLock.withLock { self.store = nil }
    }

    /// Whether the in-memory store must be (re)loaded before the next query.
    package var needsReload: Bool { self.storeLock.withLock { self.store == nil } }

    /// Loads the store from the database. Must run where no commit can interleave: on the writer
    /// thread (`pipeline.perform`) in the daemon, or anywhere when no writer runs.
    package func reload() throws {
        let fresh = try self.database.pool.read { db in try MonthlyStore.load(db) }
        self.pending.withLockedValue { pending in
            pending.tracking = true
            pending.changes = [:]
        }
        self.storeLock.withLock { self.store = fresh }
    }

    /// Runs `body` over the current store (deltas applied); `nil` when it needs a reload first.
    func withStore<T>(_ body: (MonthlyStore) throws -> T) rethrows -> T? {
        try self.storeLock.withLock { () -> T? in
            guard let store = self.store else { return nil }
            let changes = self.pending.withLockedValue { pending in
                defer { pending.changes = [:] }
                return Array(pending.changes.values)
            }
            store.apply(changes)
            return try body(store)
        }
    }
}
