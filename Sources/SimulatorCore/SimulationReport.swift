import Foundation
import MeterCore
import Synchronization

/// One meter's line in the ledger: what meterd acknowledged of it.
package struct LedgerEntry: Sendable, Equatable {
    package var meter: String
    /// Highest acknowledged seq, `nil` when nothing was acknowledged.
    package var ackedMaxSeq: Int64?
    /// Sum of the kWh of every acknowledged reading, each counted once.
    package var ackedKwh: Double
    /// Distinct readings acknowledged.
    package var ackedReadings: Int

    /// The ledger as CSV: `meter,acked_max_seq,acked_kwh,acked_readings`, one row per meter,
    /// `acked_max_seq` empty for a meter with nothing acknowledged.
    package static func csv(_ entries: [LedgerEntry]) -> String {
        var text = "meter,acked_max_seq,acked_kwh,acked_readings\n"
        for entry in entries {
            text += "\(entry.meter),\(entry.ackedMaxSeq.map(String.init) ?? ""),\(entry.ackedKwh),\(entry.ackedReadings)\n"
        }
        return text
    }

    /// Reads a ledger written by ``csv(_:)``.
    package static func parse(csv text: String) -> [LedgerEntry]? {
        var entries: [LedgerEntry] = []
        for (number, line) in text.split(separator: "\n").enumerated() where number > 0 {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count == 4, let kwh = Double(fields[2]), let readings = Int(fields[3]) else { return nil }
            entries.append(LedgerEntry(meter: String(fields[0]), ackedMaxSeq: Int64(fields[1]), ackedKwh: kwh, ackedReadings: readings))
        }
        return entries
    }
}

/// The end-of-run summary; `--report FILE` writes it as JSON.
package struct SimulationReport: Sendable, Codable, Equatable {
    package struct Latency: Sendable, Codable, Equatable {
        package var count: Int
        package var p50Ms: Double?
        package var p95Ms: Double?
        package var p99Ms: Double?
        package var maxMs: Double?
        package var meanMs: Double?
    }

    /// One endpoint's share of the run (`--endpoints`, or the one `--host`:`--port`).
    package struct Endpoint: Sendable, Codable, Equatable {
        /// `HOST:PORT`.
        package var endpoint: String
        /// Meters whose connection started on it (connection `i` starts on endpoint `i mod N`).
        package var homeMeters: Int
        /// Connections established to it.
        package var connections: Int
        package var connectFailures: Int
        /// Established connections that ended early there (reset, EOF, injected disconnects).
        package var lostConnections: Int
        /// Connections that moved from it to the next endpoint after a failure or a loss.
        package var movedAway: Int
        /// Connections that moved onto it from the endpoint before.
        package var movedIn: Int
    }

    package var meters: Int
    package var connections: Int
    package var peakConnections: Int
    package var elapsedSeconds: Double
    /// Readings measured by the meters.
    package var generated: Int
    /// Readings written once (first send).
    package var sent: Int
    /// Readings written again after a reconnect.
    package var resent: Int
    package var acked: Int
    /// Readings never acknowledged when the run ended (lost in flight, or the daemon gone).
    package var unacked: Int
    /// Readings meterd rejected (and the meter dropped).
    package var rejected: Int
    /// Acknowledged readings deliberately sent again (`duplicate` fault).
    package var duplicatesSent: Int
    package var malformedSent: Int
    package var overlongSent: Int
    package var spoofSent: Int
    package var tlsErrors: Int
    package var disconnectsInjected: Int
    package var silences: Int
    /// Error lines from meterd by code.
    package var errorsByCode: [String: Int]
    package var busySignals: Int
    package var reconnects: Int
    package var connectFailures: Int
    /// Acknowledged readings per second over the whole run.
    package var ackedPerSecond: Double
    /// From a reading's (last) write to its ack.
    package var ackLatency: Latency
    /// The same for readings written once the fleet was steady: one reading interval (at least 1 s)
    /// after the last connection was first established, so without the connection storm and the
    /// registration of new meters at the start. Empty (count 0) when the run never got there.
    package var steadyAckLatency: Latency
    /// Per endpoint, in the order given.
    package var endpoints: [Endpoint]

    package var errorsTotal: Int { self.errorsByCode.values.reduce(0, +) }

    init(configuration: SimulationConfiguration, counters: SimulationCounters, elapsedSeconds: Double) {
        let histogram = counters.latencyHistogram
        func ms(_ value: UInt64?) -> Double? { value.map { (Double($0) / 10).rounded() / 100 } }
        let generated = counters.generated.load(ordering: .relaxed)
        let acked = counters.acked.load(ordering: .relaxed)
        let rejected = counters.rejected.load(ordering: .relaxed)
        self.meters = configuration.meters
        self.connections = configuration.connectionCount
        self.peakConnections = counters.peakConnections.load(ordering: .relaxed)
        self.elapsedSeconds = (elapsedSeconds * 1000).rounded() / 1000
        self.generated = generated
        self.sent = counters.sent.load(ordering: .relaxed)
        self.resent = counters.resent.load(ordering: .relaxed)
        self.acked = acked
        self.unacked = max(0, generated - acked - rejected)
        self.rejected = rejected
        self.duplicatesSent = counters.duplicatesSent.load(ordering: .relaxed)
        self.malformedSent = counters.malformedSent.load(ordering: .relaxed)
        self.overlongSent = counters.overlongSent.load(ordering: .relaxed)
        self.spoofSent = counters.spoofSent.load(ordering: .relaxed)
        self.tlsErrors = counters.tlsErrors.load(ordering: .relaxed)
        self.disconnectsInjected = counters.disconnectsInjected.load(ordering: .relaxed)
        self.silences = counters.silences.load(ordering: .relaxed)
        self.errorsByCode = counters.errorsByCode
        self.busySignals = counters.busySignals.load(ordering: .relaxed)
        self.reconnects = counters.reconnects.load(ordering: .relaxed)
        self.connectFailures = counters.connectFailures.load(ordering: .relaxed)
        self.ackedPerSecond = elapsedSeconds > 0 ? (Double(acked) / elapsedSeconds).rounded() : 0
        func latency(_ histogram: LatencyHistogram) -> Latency {
            Latency(
                count: histogram.count, p50Ms: ms(histogram.quantile(0.5)), p95Ms: ms(histogram.quantile(0.95)),
                p99Ms: ms(histogram.quantile(0.99)), maxMs: ms(histogram.count > 0 ? histogram.maximum : nil),
                meanMs: histogram.mean.map { ($0 / 10).rounded() / 100 })
        }
        self.ackLatency = latency(histogram)
        self.steadyAckLatency = latency(counters.steadyLatencyHistogram)
        var homeMeters = [Int](repeating: 0, count: counters.endpoints.count)
        for connection in 0..<configuration.connectionCount where !homeMeters.isEmpty {
            let lower = connection * configuration.concentrator
            homeMeters[connection % homeMeters.count] += min(lower + configuration.concentrator, configuration.meters) - lower
        }
        self.endpoints = counters.endpoints.enumerated().map { index, endpoint in
            Endpoint(
                endpoint: endpoint.endpoint.description, homeMeters: homeMeters[index],
                connections: endpoint.connections.load(ordering: .relaxed),
                connectFailures: endpoint.connectFailures.load(ordering: .relaxed), lostConnections: endpoint.lost.load(ordering: .relaxed),
                movedAway: endpoint.movedAway.load(ordering: .relaxed), movedIn: endpoint.movedIn.load(ordering: .relaxed))
        }
    }

    /// The report as pretty JSON with snake_case keys.
    package func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
    }

    /// A human-readable summary, a few lines.
    package var summary: String {
        func ms(_ value: Double?) -> String { value.map { String(format: "%.2f ms", $0) } ?? "-" }
        let errors =
            self.errorsByCode.isEmpty
            ? "none"
            : self.errorsByCode.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        let endpoints =
            self.endpoints.count < 2
            ? ""
            : "\n"
                + self.endpoints.map {
                    "endpoint \($0.endpoint): \($0.homeMeters) meters started here, \($0.connections) connections, \($0.connectFailures) failed connects, \($0.lostConnections) lost, moved away \($0.movedAway), moved in \($0.movedIn)"
                }.joined(separator: "\n")
        return """
            meters \(self.meters) on \(self.connections) connections (peak \(self.peakConnections) open), \(String(format: "%.1f", self.elapsedSeconds)) s
            readings: generated \(self.generated), sent \(self.sent), resent \(self.resent), acked \(self.acked), unacked \(self.unacked), rejected \(self.rejected)
            duplicates sent \(self.duplicatesSent); injected: malformed \(self.malformedSent), over-long \(self.overlongSent), spoofed \(self.spoofSent), disconnects \(self.disconnectsInjected), silences \(self.silences)
            errors from meterd: \(errors)
            busy signals \(self.busySignals), reconnects \(self.reconnects), failed connects \(self.connectFailures), TLS errors \(self.tlsErrors)
            throughput \(Int(self.ackedPerSecond)) acked readings/s
            ack latency: p50 \(ms(self.ackLatency.p50Ms)), p95 \(ms(self.ackLatency.p95Ms)), p99 \(ms(self.ackLatency.p99Ms)), max \(ms(self.ackLatency.maxMs))
            steady fleet (\(self.steadyAckLatency.count) acks): p50 \(ms(self.steadyAckLatency.p50Ms)), p95 \(ms(self.steadyAckLatency.p95Ms)), p99 \(ms(self.steadyAckLatency.p99Ms)), max \(ms(self.steadyAckLatency.maxMs))
            """ + endpoints
    }
}
