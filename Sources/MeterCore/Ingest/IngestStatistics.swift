import NIOConcurrencyHelpers
import Synchronization

/// Live counters of the ingest path, read by the status socket and metrics; cheap to bump from any thread.
package final class IngestStatistics: Sendable {
    package let stored = Atomic<Int>(0)
    package let duplicates = Atomic<Int>(0)
    /// Validation flags stored readings raised (SPEC.md section 11).
    package let validationFlags = Atomic<Int>(0)
    package let acks = Atomic<Int>(0)
    package let busySignals = Atomic<Int>(0)
    package let connections = Atomic<Int>(0)
    package let refusedConnections = Atomic<Int>(0)
    /// TLS handshakes that failed: no, an expired or an untrusted client certificate, or no TLS at all.
    package let tlsHandshakeFailures = Atomic<Int>(0)
    /// Bytes connections received while the pipeline was full and hold unparsed until it has room:
    /// at most one read (8 KB) plus one kernel receive buffer (4 KB) per connection (see `IngestHandler`).
    package let heldBytes = Atomic<Int>(0)
    package let commits = Atomic<Int>(0)
    /// Commit attempts that failed and were retried after a delay: the store unreachable, a full
    /// disk, or races with another node lost ``IngestPipeline/maximumLostRaces`` times in a row.
    package let commitFailures = Atomic<Int>(0)
    /// Commits retried because another node's writer committed some of the same meters first.
    package let lostRaces = Atomic<Int>(0)
    package let lastCommitMs = Atomic<Int64>(0)
    private let rejects = NIOLockedValueBox<[RejectionCode: Int]>([:])
    package let latency = LatencyWindow()
    package let throughput = RateWindow()

    package init() {}

    package func countReject(_ code: RejectionCode, count: Int = 1) {
        self.rejects.withLockedValue { $0[code, default: 0] += count }
    }

    package func rejects(_ code: RejectionCode) -> Int {
        self.rejects.withLockedValue { $0[code] ?? 0 }
    }

    package var rejectsByCode: [RejectionCode: Int] {
        self.rejects.withLockedValue { $0 }
    }

    package var rejectsTotal: Int {
        self.rejects.withLockedValue { $0.values.reduce(0, +) }
    }
}

/// Reading latencies over the last five minutes, one ``LatencyHistogram`` per minute, for p50/p99 in `status`.
package final class LatencyWindow: Sendable {
    private static let slotSeconds: Int64 = 60
    private static let slots = 5

    private struct Slot {
        var minute: Int64 = -1
        var histogram = LatencyHistogram()
    }

    private let state = NIOLockedValueBox<[Slot]>(Array(repeating: Slot(), count: LatencyWindow.slots))

    package init() {}

    package func record(_ latenciesMs: [Int64], nowMs: Int64) {
        guard !latenciesMs.isEmpty else { return }
        let minute = nowMs / 1000 / Self.slotSeconds
        self.state.withLockedValue { slots in
            let index = Int(minute % Int64(Self.slots))
            if slots[index].minute != minute { slots[index] = Slot(minute: minute) }
            for latency in latenciesMs { slots[index].histogram.record(UInt64(max(0, latency))) }
        }
    }

    /// The latency in milliseconds at the given quantile (0...1), within about 3 %, or `nil` with no data.
    package func quantile(_ q: Double, nowMs: Int64) -> Int64? {
        let minute = nowMs / 1000 / Self.slotSeconds
        let histogram = self.state.withLockedValue { slots in
            slots.filter { minute - $0.minute < Int64(Self.slots) && $0.minute >= 0 }
                .reduce(into: LatencyHistogram()) { total, slot in total.merge(slot.histogram) }
        }
        return histogram.quantile(q).map { Int64(clamping: $0) }
    }
}

/// Events per second averaged over the last ten whole seconds.
package final class RateWindow: Sendable {
    private static let seconds = 10
    private let state = NIOLockedValueBox<[(second: Int64, count: Int)]>(Array(repeating: (-1, 0), count: RateWindow.seconds + 1))

    package init() {}

    package func record(_ count: Int, nowMs: Int64) {
        let second = nowMs / 1000
        self.state.withLockedValue { slots in
            let index = Int(second % Int64(slots.count))
            if slots[index].second != second { slots[index] = (second, 0) }
            slots[index].count += count
        }
    }

    package func perSecond(nowMs: Int64) -> Double {
        let current = nowMs / 1000
        let total = self.state.withLockedValue { slots in
            slots.filter { $0.second < current && current - $0.second <= Int64(Self.seconds) }.reduce(0) { $0 + $1.count }
        }
        return Double(total) / Double(Self.seconds)
    }
}
