import Foundation
import Synchronization

/// meterd's version, as `status` and `meterd --version` report it.
package enum MeterdVersion {
    package static let current = "0.1.0"
}

/// Gathers the live figures the status socket, `/metrics` and systemd's STATUS= report.
package struct StatusReporter: Sendable {
    package let pipeline: IngestPipeline
    package let store: any MeterStore
    package let queries: any OperatorQueries
    package let startedAtMs: Int64
    /// The singleton lease, on a store several nodes share.
    package let lease: SingletonLease?

    package init(
        pipeline: IngestPipeline, store: any MeterStore, queries: any OperatorQueries, startedAtMs: Int64 = WallClock.nowMs(),
        lease: SingletonLease? = nil
    ) {
        self.lease = lease
        self.pipeline = pipeline
        self.store = store
        self.queries = queries
        self.startedAtMs = startedAtMs
    }

    /// Meter counts, or `nil` (and the reason) when the database cannot be read right now.
    package func meterStates(nowMs: Int64) async -> Result<MeterStateCounts, any Error> {
        do {
            return .success(try await self.queries.meterStates(nowMs: nowMs))
        } catch {
            return .failure(error)
        }
    }

    /// The `status` answer of SPEC.md section 6; every key is always present.
    package func status(nowMs: Int64 = WallClock.nowMs()) async -> StatusAnswer {
        let statistics = self.pipeline.statistics
        let lastCommitMs = statistics.lastCommitMs.load(ordering: .relaxed)
        var meters = StatusAnswer.Meters()
        var meterError: String?
        switch await self.meterStates(nowMs: nowMs) {
        case .success(let counts):
            meters = StatusAnswer.Meters(active: counts.active, inactive: counts.inactive, faulty: counts.faulty, total: counts.total)
        case .failure(let error):
            meterError = "\(error)"
        }
        let failure = self.pipeline.failure ?? self.pipeline.stallDescription(nowMs: nowMs)
        let rejects = statistics.rejectsByCode
        return StatusAnswer(
            version: MeterdVersion.current,
            uptimeS: max(0, (nowMs - self.startedAtMs) / 1000),
            connections: statistics.connections.load(ordering: .relaxed),
            readingsTotal: statistics.stored.load(ordering: .relaxed),
            readingsPerS: (statistics.throughput.perSecond(nowMs: nowMs) * 10).rounded() / 10,
            acksTotal: statistics.acks.load(ordering: .relaxed),
            duplicatesTotal: statistics.duplicates.load(ordering: .relaxed),
            rejectsTotal: rejects.values.reduce(0, +),
            rejectsByCode: StatusAnswer.RejectCounts(RejectionCode.allCases.map { ($0.rawValue, rejects[$0] ?? 0) }),
            queueDepth: self.pipeline.queueDepth,
            lastCommitAgeMs: lastCommitMs > 0 ? max(0, nowMs - lastCommitMs) : nil,
            commitsTotal: statistics.commits.load(ordering: .relaxed),
            commitFailuresTotal: statistics.commitFailures.load(ordering: .relaxed),
            busySignalsTotal: statistics.busySignals.load(ordering: .relaxed),
            dbBytes: await self.store.sizeInBytes(),
            latencyMs: StatusAnswer.Latency(
                p50: statistics.latency.quantile(0.5, nowMs: nowMs),
                p99: statistics.latency.quantile(0.99, nowMs: nowMs)),
            meters: meters,
            writer: StatusAnswer.Writer(
                healthy: failure == nil, failure: failure,
                storeUnreachableSince: self.pipeline.storeUnreachableSinceMs.map { RFC3339.format(millisecondsSinceEpoch: $0) }),
            metersError: meterError,
            singletonLeader: self.lease?.isLeader)
    }

    /// The one-line summary systemd shows as the unit's status.
    ///
    /// - Parameter includingFleet: false for the line sent with READY=1: the fleet's counts wait for
    ///   the KPI store's first load (seconds at 100,000 meters and two years of months), and meters
    ///   are served before it; the next refresh has them.
    package func systemdStatus(nowMs: Int64 = WallClock.nowMs(), includingFleet: Bool = true) async -> String {
        let statistics = self.pipeline.statistics
        let rate = statistics.throughput.perSecond(nowMs: nowMs)
        var text = "\(statistics.connections.load(ordering: .relaxed)) connections, \(String(format: "%.0f", rate)) readings/s"
        if !includingFleet {
            text += ", fleet figures loading"
        } else if case .success(let counts) = await self.meterStates(nowMs: nowMs) {
            text += ", \(counts.inactive) inactive meters, \(counts.faulty) faulty"
        }
        text += ", queue \(self.pipeline.queueDepth)"
        if let failure = self.pipeline.failure {
            if let since = self.pipeline.storeUnreachableSinceMs {
                text += "; store unreachable for \(max(0, nowMs - since) / 1000) s, meters told busy: \(failure)"
            } else {
                text += "; commits failing: \(failure)"
            }
        } else if let stall = self.pipeline.stallDescription(nowMs: nowMs) {
            text += "; \(stall)"
        }
        return text
    }
}
