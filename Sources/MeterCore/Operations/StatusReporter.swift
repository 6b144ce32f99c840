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

    package init(pipeline: IngestPipeline, store: any MeterStore, queries: any OperatorQueries, startedAtMs: Int64 = WallClock.nowMs()) {
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
    package func status(nowMs: Int64 = WallClock.nowMs()) async -> JSONValue {
        let statistics = self.pipeline.statistics
        let lastCommitMs = statistics.lastCommitMs.load(ordering: .relaxed)
        var meters: JSONValue = .object([("active", .null), ("inactive", .null), ("faulty", .null), ("total", .null)])
        var meterError: String?
        switch await self.meterStates(nowMs: nowMs) {
        case .success(let counts):
            meters = .object([("active", .int(counts.active)), ("inactive", .int(counts.inactive)),
                              ("faulty", .int(counts.faulty)), ("total", .int(counts.total))])
        case .failure(let error):
            meterError = "\(error)"
        }
        let failure = self.pipeline.failure
        let rejects = statistics.rejectsByCode
        var pairs: [(String, JSONValue)] = [
            ("version", .string(MeterdVersion.current)),
            ("uptime_s", .int(max(0, (nowMs - self.startedAtMs) / 1000))),
            ("connections", .int(statistics.connections.load(ordering: .relaxed))),
            ("readings_total", .int(statistics.stored.load(ordering: .relaxed))),
            ("readings_per_s", .double((statistics.throughput.perSecond(nowMs: nowMs) * 10).rounded() / 10)),
            ("acks_total", .int(statistics.acks.load(ordering: .relaxed))),
            ("duplicates_total", .int(statistics.duplicates.load(ordering: .relaxed))),
            ("rejects_total", .int(rejects.values.reduce(0, +))),
            ("rejects_by_code", .object(RejectionCode.allCases.map { ($0.rawValue, .int(rejects[$0] ?? 0)) })),
            ("queue_depth", .int(self.pipeline.queueDepth)),
            ("last_commit_age_ms", lastCommitMs > 0 ? .int(max(0, nowMs - lastCommitMs)) : .null),
            ("commits_total", .int(statistics.commits.load(ordering: .relaxed))),
            ("busy_signals_total", .int(statistics.busySignals.load(ordering: .relaxed))),
            ("db_bytes", .int(await self.store.sizeInBytes())),
            ("latency_ms", .object([
                ("p50", .optional(statistics.latency.quantile(0.5, nowMs: nowMs)) { .int($0) }),
                ("p99", .optional(statistics.latency.quantile(0.99, nowMs: nowMs)) { .int($0) }),
            ])),
            ("meters", meters),
            ("writer", .object([("healthy", .bool(failure == nil)), ("failure", .optional(failure) { .string($0) })])),
        ]
        if let meterError { pairs.append(("meters_error", .string(meterError))) }
        return .object(pairs)
    }

    /// The one-line summary systemd shows as the unit's status.
    package func systemdStatus(nowMs: Int64 = WallClock.nowMs()) async -> String {
        let statistics = self.pipeline.statistics
        let rate = statistics.throughput.perSecond(nowMs: nowMs)
        var text = "\(statistics.connections.load(ordering: .relaxed)) connections, \(String(format: "%.0f", rate)) readings/s"
        if case .success(let counts) = await self.meterStates(nowMs: nowMs) {
            text += ", \(counts.inactive) inactive meters, \(counts.faulty) faulty"
        }
        text += ", queue \(self.pipeline.queueDepth)"
        if let failure = self.pipeline.failure { text += "; commits failing: \(failure)" }
        return text
    }
}
