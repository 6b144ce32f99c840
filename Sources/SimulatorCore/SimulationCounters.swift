import MeterCore
import NIOCore
import Synchronization

/// Live counters of a simulation run, bumped from the event loops and read by the progress line.
package final class SimulationCounters: Sendable {
    /// Readings the meters measured.
    package let generated = Atomic<Int>(0)
    /// Readings written for the first time.
    package let sent = Atomic<Int>(0)
    /// Readings written again after a reconnect (same seq).
    package let resent = Atomic<Int>(0)
    /// Readings acknowledged (each counted once).
    package let acked = Atomic<Int>(0)
    /// Readings meterd rejected (clock skew); the meter drops them.
    package let rejected = Atomic<Int>(0)
    /// Acknowledged readings sent once more on purpose (`duplicate` fault).
    package let duplicatesSent = Atomic<Int>(0)
    package let malformedSent = Atomic<Int>(0)
    package let overlongSent = Atomic<Int>(0)
    /// Readings sent for a meter the connection does not own (`spoof` fault).
    package let spoofSent = Atomic<Int>(0)
    /// TLS errors: failed handshakes and alerts from meterd, such as a refused client certificate
    /// (the connection is tried again).
    package let tlsErrors = Atomic<Int>(0)
    package let disconnectsInjected = Atomic<Int>(0)
    package let silences = Atomic<Int>(0)
    package let busySignals = Atomic<Int>(0)
    /// Connections opened again after one was lost.
    package let reconnects = Atomic<Int>(0)
    package let connectFailures = Atomic<Int>(0)
    /// Connections open now.
    package let connections = Atomic<Int>(0)
    /// Most connections open at once.
    package let peakConnections = Atomic<Int>(0)
    /// Connections that were ever established.
    package let established = Atomic<Int>(0)
    /// Per endpoint (`--endpoints`, or the one `--host`:`--port`), in the order given.
    package let endpoints: [EndpointCounters]
    private let errors = Mutex<[String: Int]>([:])
    private let latency = Mutex(LatencyHistogram())
    /// Acks of readings written once the fleet was steady (``isSteady(writtenAt:)``).
    private let steadyLatency = Mutex(LatencyHistogram())
    /// Uptime nanoseconds (`NIODeadline`) from which a written reading counts as steady; `UInt64.max` until then.
    private let steadyFromNanoseconds = Atomic<UInt64>(.max)

    package init(endpoints: [SimulationEndpoint] = [SimulationEndpoint(host: "127.0.0.1", port: 7700)]) {
        self.endpoints = endpoints.map(EndpointCounters.init)
    }

    package func countError(_ code: String) {
        self.errors.withLock { $0[code, default: 0] += 1 }
    }

    package var errorsByCode: [String: Int] { self.errors.withLock { $0 } }

    /// Records ack latencies: all of them, and separately those of readings written once the fleet was steady.
    package func recordLatencies(_ microseconds: [UInt64], steady: [UInt64] = []) {
        guard !microseconds.isEmpty else { return }
        self.latency.withLock { histogram in
            for value in microseconds { histogram.record(value) }
        }
        guard !steady.isEmpty else { return }
        self.steadyLatency.withLock { histogram in
            for value in steady { histogram.record(value) }
        }
    }

    package var latencyHistogram: LatencyHistogram { self.latency.withLock { $0 } }
    package var steadyLatencyHistogram: LatencyHistogram { self.steadyLatency.withLock { $0 } }

    /// The fleet is steady `settle` after its last connection was first established: by then every
    /// meter has sent its first reading, so the connection storm and the registration of new meters
    /// are behind it. Readings written from then on also go to the steady latency histogram.
    func fleetEstablished(at moment: NIODeadline, settle: TimeAmount) {
        self.steadyFromNanoseconds.store((moment + settle).uptimeNanoseconds, ordering: .relaxed)
    }

    /// Whether a reading written at `moment` was written once the fleet was steady.
    func isSteady(writtenAt moment: NIODeadline) -> Bool {
        moment.uptimeNanoseconds >= self.steadyFromNanoseconds.load(ordering: .relaxed)
    }

    func connectionOpened() {
        let now = self.connections.add(1, ordering: .relaxed).newValue
        var peak = self.peakConnections.load(ordering: .relaxed)
        while now > peak {
            let (exchanged, original) = self.peakConnections.compareExchange(expected: peak, desired: now, ordering: .relaxed)
            if exchanged { break }
            peak = original
        }
    }

    /// A consistent-enough snapshot for the progress line.
    package var progress: SimulationProgress {
        let generated = self.generated.load(ordering: .relaxed)
        let acked = self.acked.load(ordering: .relaxed)
        let rejected = self.rejected.load(ordering: .relaxed)
        return SimulationProgress(
            connections: self.connections.load(ordering: .relaxed),
            generated: generated,
            sent: self.sent.load(ordering: .relaxed),
            acked: acked,
            unacked: max(0, generated - acked - rejected),
            errors: self.errors.withLock { $0.values.reduce(0, +) },
            busySignals: self.busySignals.load(ordering: .relaxed),
            reconnects: self.reconnects.load(ordering: .relaxed))
    }
}

/// What the live progress line shows.
package struct SimulationProgress: Sendable, Equatable {
    package var connections: Int
    package var generated: Int
    package var sent: Int
    package var acked: Int
    package var unacked: Int
    package var errors: Int
    package var busySignals: Int
    package var reconnects: Int
}

/// What happened at one endpoint of a run: connections made and lost there, and meters that moved
/// away from it or onto it.
package final class EndpointCounters: Sendable {
    package let endpoint: SimulationEndpoint
    /// Connections established to it.
    package let connections = Atomic<Int>(0)
    /// Connection attempts that failed (refused, timed out, unreachable).
    package let connectFailures = Atomic<Int>(0)
    /// Established connections that ended before their meters were done (reset, EOF, an injected disconnect).
    package let lost = Atomic<Int>(0)
    /// Connections that moved from it to the next endpoint after a failure or a loss.
    package let movedAway = Atomic<Int>(0)
    /// Connections that moved onto it from the endpoint before.
    package let movedIn = Atomic<Int>(0)

    init(_ endpoint: SimulationEndpoint) {
        self.endpoint = endpoint
    }
}
