import MeterCore
import NIOCore

/// Everything a simulation run needs (the flags of `meter-sim run`).
package struct SimulationConfiguration: Sendable {
    package var host = "127.0.0.1"
    package var port = 7700
    /// Several meterd nodes (`--endpoints`); empty means the one node at `host`:`port`. Connection
    /// `i` starts on endpoint `i mod N` and moves to the next one (round robin) whenever its
    /// connection fails or is lost, resending its unacknowledged readings there.
    package var endpoints: [SimulationEndpoint] = []
    /// Simulated meters.
    package var meters = 100
    /// Real seconds between two readings of a meter; 0 sends flat out (as fast as acks allow).
    package var interval = 1.0
    /// Real seconds after which meters stop measuring (then the run waits for outstanding acks).
    package var duration: Double?
    /// Readings each meter measures before it stops.
    package var readingsPerMeter: Int?
    package var seed: UInt64 = 1
    package var faults = FaultPlan()
    /// Meters per TCP connection: 1 is a meter with its own link, more is a data concentrator.
    package var concentrator = 1
    /// Hold every connection's first reading until all are connected (or `connectTimeout` passes),
    /// so a flat-out burst really runs over all connections at once.
    package var startTogether = false
    /// How much faster the meters' clocks run than real time.
    package var timeScale = 1.0
    /// Most unacknowledged readings a meter has on the wire at once.
    package var window = 100
    /// Seq of each meter's first reading; `nil` takes the start time in microseconds, so a later
    /// run with the same meters continues above an earlier one's seqs.
    package var firstSeq: Int64?
    /// Meter ids are this prefix and a six-digit number: MTR-000001, MTR-000002, …
    package var meterPrefix = "MTR-"
    package var firstMeter = 1
    /// Connection attempts in flight at once, so a fleet's start does not flood the listen backlog.
    package var maximumConnecting = 512
    /// Local addresses connections bind to before connecting, taken in turn; empty lets the kernel
    /// choose. 19,000 connections from one address use two thirds of its ephemeral ports, and the
    /// kernel's search for a free one then costs the sender most of a core while it connects.
    package var sourceAddresses: [String] = []
    /// After the meters stop, how long to wait for outstanding acks before giving up.
    package var drainTimeout = 30.0
    /// How long the run may go without ever connecting before it fails.
    package var connectTimeout = 10.0
    /// Each meter measures all its `readingsPerMeter` readings at once and writes them as fast as
    /// the socket takes them, with a large user-space write buffer, without waiting for acks (no
    /// window) and without pausing on `busy`; it still keeps every unacknowledged reading and
    /// resends it after a reconnect.
    package var burst = false
    /// Once a connection has sent everything its meters will measure, it shuts down its write side
    /// (a half-close) and keeps reading acks until meterd closes the connection or all are acked;
    /// readings still unacknowledged then go again on a new connection.
    package var halfClose = false
    /// TLS to meterd (`--tls-ca`, `--tls-cert-dir`, `--tls-cert`/`--tls-key`); `nil` is plain TCP.
    package var tls: SimulationTLS?
    /// Meters send their cumulative register (`register_kwh`) instead of `kwh`, each from its own
    /// starting value; the ledger's kWh is then what meterd derives from the registers.
    package var register = false
    /// Whole digits of the registers: they wrap to 0 after `10^registerDigits` kWh (meterd's `register_digits`).
    package var registerDigits = 6
    /// meterd's `max_kwh`: a register that goes down by more than a wrap of this is a reset.
    package var maximumKwh = 1_000.0

    package init() {}

    /// How meterd turns the registers into consumption, so the ledger expects the same.
    package var meteringRules: MeteringRules {
        var rules = MeteringRules()
        rules.registerDigits = self.registerDigits
        rules.maximumKwh = self.maximumKwh
        return rules
    }

    package init(host: String, port: Int, meters: Int) {
        self.host = host
        self.port = port
        self.meters = meters
    }

    /// The nodes the fleet connects to: ``endpoints``, or `host`:`port` when none are given.
    package var targets: [SimulationEndpoint] {
        self.endpoints.isEmpty ? [SimulationEndpoint(host: self.host, port: self.port)] : self.endpoints
    }

    /// The endpoint a connection starts on: connections are dealt out in turn, so each node gets
    /// every N-th connection (and, one meter per connection, every N-th meter).
    package func homeEndpoint(ofConnection index: Int) -> Int {
        index % self.targets.count
    }

    package var connectionCount: Int { (self.meters + self.concentrator - 1) / self.concentrator }

    package func meterName(_ index: Int) -> String {
        let number = String(self.firstMeter + index)
        return self.meterPrefix + (number.count >= 6 ? number : String(repeating: "0", count: 6 - number.count) + number)
    }

    /// The first problem with the configuration, as a sentence naming the flag.
    package func validate() -> String? {
        if self.meters < 1 { return "--meters must be at least 1" }
        if !(self.interval >= 0) || !self.interval.isFinite { return "--interval must be 0 (flat out) or a positive number of seconds" }
        if let duration, !(duration > 0) { return "--duration must be a positive number of seconds" }
        if let readings = self.readingsPerMeter, readings < 1 { return "--readings-per-meter must be at least 1" }
        if self.concentrator < 1 { return "--concentrator must be at least 1" }
        if !(self.timeScale >= 1) || !self.timeScale.isFinite { return "--time-scale must be 1 or more" }
        if self.window < 1 { return "--window must be at least 1" }
        if self.endpoints.isEmpty, self.port < 1 || self.port > 65_535 { return "--port must be between 1 and 65535" }
        if let bad = self.endpoints.first(where: { !(1...65_535).contains($0.port) || $0.host.isEmpty }) {
            return "--endpoints: \(bad) is not a valid HOST:PORT"
        }
        if Set(self.endpoints).count != self.endpoints.count { return "--endpoints lists an endpoint twice" }
        if self.maximumConnecting < 1 { return "--max-connecting must be at least 1" }
        if let bad = self.sourceAddresses.first(where: { (try? SocketAddress(ipAddress: $0, port: 0)) == nil }) {
            return "--source-addresses: \(bad) is not an IP address"
        }
        if let firstSeq, firstSeq < 0 { return "--first-seq must not be negative" }
        if self.registerDigits < 1 || self.registerDigits > 15 { return "--register-digits must be between 1 and 15" }
        if !self.register, self.faults.rolloverRate > 0 || self.faults.resetRate > 0 {
            return "the rollover and reset faults need --register (they are faults of a meter's register)"
        }
        if self.burst, self.readingsPerMeter == nil { return "--burst needs --readings-per-meter (a burst sends all of them at once)" }
        if let tls, let problem = tls.validate(concentrator: self.concentrator) { return problem }
        return nil
    }

    /// Expected real length of the run, when the flags bound it.
    var expectedSpanSeconds: Double? {
        if let duration { return duration }
        if let readings = self.readingsPerMeter, self.interval > 0 { return Double(readings) * self.interval }
        return nil
    }
}
