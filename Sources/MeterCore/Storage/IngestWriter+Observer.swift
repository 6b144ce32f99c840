import GRDB

/// What one commit changed in the monthly aggregates, for views derived from them (KPI rollups).
package struct IngestChanges: Sendable {
    /// The change to one `meter_month` row.
    package struct MonthChange: Sendable {
        package var meterID: Int64
        package var month: Int
        package var kwh: Double
        package var revenue: Double
        package var readings: Int
        package var faults: Int
        package var good: Int
        package var fair: Int
        package var poor: Int
    }

    /// One stored live reading's latency.
    package struct Latency: Sendable {
        package var meterID: Int64
        package var receivedMs: Int64
        package var latencyMs: Int64
    }

    package var months: [MonthChange] = []
    package var latencies: [Latency] = []
}

/// Sees every batch the writer commits: may write derived rows with the writer's aggregates, and
/// learns of each batch after its commit. Called on the writer thread only.
package protocol IngestObserver: AnyObject, Sendable {
    /// Inside the transaction that writes the aggregates (see ``IngestWriter/flushAggregates()``),
    /// with the latencies of every reading stored since the last time (`months` is empty);
    /// throwing rolls that transaction back.
    func willCommit(_ changes: IngestChanges, db: Database) throws
    /// After each batch committed, before its acks go out: the batch's own month deltas and latencies.
    func didCommit(_ changes: IngestChanges)
}
