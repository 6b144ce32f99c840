/// The status socket's `status` answer (SPEC.md section 6), also served at `/api/status`.
///
/// Every key is always present (`null` where there is nothing to say yet), except
/// `meters_error`, which appears only when the meter counts could not be read.
package struct StatusAnswer: Codable, Sendable, Equatable {
    package var version: String
    package var uptimeS: Int64
    package var connections: Int
    package var readingsTotal: Int
    /// One decimal.
    package var readingsPerS: Double
    package var acksTotal: Int
    package var duplicatesTotal: Int
    package var rejectsTotal: Int
    package var rejectsByCode: RejectCounts
    package var queueDepth: Int
    /// `nil` before the first commit.
    package var lastCommitAgeMs: Int64?
    package var commitsTotal: Int
    /// Commits that failed since start (each retried); `nil` only in an answer from a meterd that
    /// predates the key, as an older node's answer to a newer `meterctl`.
    package var commitFailuresTotal: Int?
    package var busySignalsTotal: Int
    package var dbBytes: Int64
    package var latencyMs: Latency
    package var meters: Meters
    package var writer: Writer
    /// Why `meters` is all `null`; left out when the counts were read.
    package var metersError: String?
    /// On a store several nodes share: whether this node does the singleton work (liveness sweeps,
    /// KPI snapshots, alert rules); left out on a store of one node.
    package var singletonLeader: Bool?

    enum CodingKeys: String, CodingKey {
        case version
        case uptimeS = "uptime_s"
        case connections
        case readingsTotal = "readings_total"
        case readingsPerS = "readings_per_s"
        case acksTotal = "acks_total"
        case duplicatesTotal = "duplicates_total"
        case rejectsTotal = "rejects_total"
        case rejectsByCode = "rejects_by_code"
        case queueDepth = "queue_depth"
        case lastCommitAgeMs = "last_commit_age_ms"
        case commitsTotal = "commits_total"
        case commitFailuresTotal = "commit_failures_total"
        case busySignalsTotal = "busy_signals_total"
        case dbBytes = "db_bytes"
        case latencyMs = "latency_ms"
        case meters, writer
        case metersError = "meters_error"
        case singletonLeader = "singleton_leader"
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(self.version, forKey: .version)
        try container.encode(self.uptimeS, forKey: .uptimeS)
        try container.encode(self.connections, forKey: .connections)
        try container.encode(self.readingsTotal, forKey: .readingsTotal)
        try container.encode(self.readingsPerS, forKey: .readingsPerS)
        try container.encode(self.acksTotal, forKey: .acksTotal)
        try container.encode(self.duplicatesTotal, forKey: .duplicatesTotal)
        try container.encode(self.rejectsTotal, forKey: .rejectsTotal)
        try container.encode(self.rejectsByCode, forKey: .rejectsByCode)
        try container.encode(self.queueDepth, forKey: .queueDepth)
        try container.encode(self.lastCommitAgeMs, forKey: .lastCommitAgeMs)  // null before the first commit
        try container.encode(self.commitsTotal, forKey: .commitsTotal)
        try container.encode(self.commitFailuresTotal ?? 0, forKey: .commitFailuresTotal)
        try container.encode(self.busySignalsTotal, forKey: .busySignalsTotal)
        try container.encode(self.dbBytes, forKey: .dbBytes)
        try container.encode(self.latencyMs, forKey: .latencyMs)
        try container.encode(self.meters, forKey: .meters)
        try container.encode(self.writer, forKey: .writer)
        if let metersError = self.metersError { try container.encode(metersError, forKey: .metersError) }
        if let singletonLeader = self.singletonLeader { try container.encode(singletonLeader, forKey: .singletonLeader) }
    }

    /// `latency_ms`: ack latency over the last 5 minutes; `null` without readings.
    package struct Latency: Codable, Sendable, Equatable {
        package var p50: Int64?
        package var p99: Int64?
    }

    /// `meters`: by state right now; all `null` when the counts could not be read.
    package struct Meters: Codable, Sendable, Equatable {
        package var active: Int?
        package var inactive: Int?
        package var faulty: Int?
        package var total: Int?
    }

    /// `writer`: whether commits succeed, and the last failure if not; while the store cannot be
    /// reached, since when (`store_unreachable_since`, RFC 3339), meters being told `busy` meanwhile.
    package struct Writer: Codable, Sendable, Equatable {
        package var healthy: Bool
        package var failure: String?
        package var storeUnreachableSince: String?

        enum CodingKeys: String, CodingKey {
            case healthy, failure
            case storeUnreachableSince = "store_unreachable_since"
        }

        package init(healthy: Bool, failure: String?, storeUnreachableSince: String? = nil) {
            self.healthy = healthy
            self.failure = failure
            self.storeUnreachableSince = storeUnreachableSince
        }
    }

    /// `rejects_by_code`: rejected lines per protocol error code, every code of ``RejectionCode``
    /// in its declaration order.
    package struct RejectCounts: Codable, Sendable, Equatable {
        /// Code and count, in wire order.
        package var counts: [(code: String, count: Int)]

        package init(_ counts: [(code: String, count: Int)]) {
            self.counts = counts
        }

        /// The count of one code; 0 when it is not listed.
        package subscript(code code: String) -> Int {
            self.counts.first { $0.code == code }?.count ?? 0
        }

        package static func == (lhs: RejectCounts, rhs: RejectCounts) -> Bool {
            lhs.counts.elementsEqual(rhs.counts) { $0.code == $1.code && $0.count == $1.count }
        }

        package init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodeKey.self)
            // The decoder's key order is not the wire's: known codes first, in their order, then the rest.
            let known = RejectionCode.allCases.map(\.rawValue)
            let keys = container.allKeys.sorted { lhs, rhs in
                let (left, right) = (known.firstIndex(of: lhs.stringValue) ?? known.count, known.firstIndex(of: rhs.stringValue) ?? known.count)
                return left != right ? left < right : lhs.stringValue < rhs.stringValue
            }
            self.counts = try keys.map { ($0.stringValue, try container.decode(Int.self, forKey: $0)) }
        }

        package func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodeKey.self)
            for (code, count) in self.counts { try container.encode(count, forKey: CodeKey(stringValue: code)) }
        }

        struct CodeKey: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
    }
}
