import ArgumentParser
import Dispatch
import Foundation
import MeterCore
import SimulatorCore
import Synchronization

/// `meter-sim run`: a fleet of simulated meters pushing readings to meterd.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Runs a fleet of simulated meters against meterd.",
        discussion: """
            Each meter (or each data concentrator, with --concentrator) holds one TCP connection and \
            sends one JSON reading per line per SPEC.md section 2. Readings follow a daily load curve \
            that differs by region (North, South, East, West), with noise; meter health is good, fair \
            or poor in a 0.7/0.2/0.1 mix, and now and then a reading carries a fault code.

            Delivery is at-least-once like a real meter: every reading stays with its meter until \
            meterd acknowledges it; after a reconnect the unacknowledged ones go again with the same \
            seq. {"busy":true,"retry_after_ms":N} pauses the connection for N ms.

            The run ends after --duration seconds or --readings-per-meter readings (whichever comes \
            first), or on Ctrl-C / SIGTERM; then it waits up to --drain-timeout seconds for \
            outstanding acks (a second Ctrl-C gives up at once). Without either bound it runs until \
            interrupted. Exit status 1 if readings were left unacknowledged.

            Time scale: --time-scale X makes the meters' clocks run X times faster than real time \
            (say 2880 for a simulated month in 15 minutes). Because meterd rejects a ts more than its \
            clock_skew (default 300 s) ahead of its own clock, an accelerated clock starts in the past \
            and reaches the present as the run ends (the span is --duration, or --readings-per-meter × \
            --interval; unbounded runs start 30 days back), and never runs ahead of real time: once it \
            catches up it runs at real speed. Reading latencies meterd computes for such runs reflect \
            the simulated age of the readings.

            Burst: --burst makes each meter measure all its --readings-per-meter readings at once and \
            write them as fast as the socket takes them (a 1 MB user-space write buffer per connection, \
            no --window, no pause on busy), like a meter emptying a backlog; unacknowledged readings are \
            still kept and resent after a reconnect, so the ledger stays exact. --half-close shuts down \
            each connection's write side once it has sent everything its meters will measure, then reads \
            acks until meterd closes the connection (readings still unacknowledged go again on a new one).

            Several nodes: --endpoints HOST:PORT,HOST:PORT,... (instead of --host and --port) spreads \
            the connections over the nodes in turn: connection i (with one meter per connection, meter \
            i) starts on endpoint i mod N. When a connection fails or is lost (refused, reset, closed \
            by the node, a connect timeout, an injected disconnect) it moves to the next endpoint in \
            the list, round robin, after its usual reconnect backoff (100 ms doubling up to 5 s, reset \
            once a connection succeeds; a move does not reset it, so with every node down each \
            connection tries at most every 5 s), and resends its unacknowledged readings there with \
            the same seqs. Meters stay where they moved: a node that comes back gets meters again as \
            others fail over to it. The summary and --report list per endpoint the meters that \
            started there, connections, failed connects, lost connections, and connections that \
            moved away and in (report key endpoints).

            Seqs: each meter's first seq is --first-seq, by default the start time in microseconds \
            since the epoch, so a later run with the same meter ids continues above an earlier one's \
            seqs instead of being taken for duplicates.

            --ledger FILE writes CSV with the header meter,acked_max_seq,acked_kwh,acked_readings: per \
            meter the highest acknowledged seq (empty if none), the sum of the kWh of its acknowledged \
            readings (each counted once, whatever was resent) and how many there were.

            TLS: --tls-ca FILE makes every connection speak TLS and check meterd's certificate against \
            that CA (the host must match its DNS or IP names). --tls-cert-dir DIR adds each meter's own \
            client certificate, DIR/<meter>.pem with its key DIR/<meter>.key (one meter per \
            connection); --tls-cert FILE --tls-key FILE give every connection one certificate, a data \
            concentrator's (with --concentrator K, each connection carries K meters). \
            scripts/make-certs.sh makes a throw-away set.

            Registers: --register makes each meter send its cumulative register (register_kwh) instead \
            of kwh, starting from a value of its own (same seed, same values) and wrapping after \
            10^--register-digits kWh. The ledger's kWh is then what meterd derives from the registers \
            (the first reading is the baseline and counts 0; a reset counts 0), computed with the same \
            rules; readings dropped after clock_skew are the exception, their energy going into the \
            next register difference.

            --report FILE writes the end summary as JSON: sent, resent, acked, unacked, rejected, \
            duplicates_sent, errors_by_code, busy_signals, reconnects, acked_per_second, ack_latency \
            {p50_ms, p95_ms, p99_ms, max_ms} (from a log-linear histogram, ±3 %) and more.

            On a terminal a progress line on stderr shows connections, readings/s, acked, unacked and \
            errors; it stays quiet when stderr is not a terminal.

            \(FaultPlan.help)
            """)

    @Option(help: "Host meterd listens on (default: 127.0.0.1).")
    var host: String?
    @Option(help: "meterd's ingest port (default: 7700).")
    var port: Int?
    @Option(
        help: ArgumentHelp(
            "Several meterd nodes, HOST:PORT,HOST:PORT,... (instead of --host/--port): meters are spread over them and move on when a node goes away (see above).",
            valueName: "list"))
    var endpoints: String?
    @Option(help: "Number of simulated meters.")
    var meters: Int
    @Option(help: ArgumentHelp("Seconds between two readings of a meter; 0 sends flat out, limited by --window.", valueName: "seconds"))
    var interval = 1.0
    @Option(help: ArgumentHelp("Stop measuring after this many seconds.", valueName: "seconds"))
    var duration: Double?
    @Option(help: ArgumentHelp("Stop each meter after this many readings.", valueName: "n"))
    var readingsPerMeter: Int?
    @Option(help: "Seed of the fleet: same seed, same meters (regions, sizes, health).")
    var seed: UInt64 = 1
    @Option(help: ArgumentHelp("Write the end summary as JSON to this file.", valueName: "file"))
    var report: String?
    @Option(help: ArgumentHelp("Write per meter what was acknowledged, as CSV (see above).", valueName: "file"))
    var ledger: String?
    @Option(help: ArgumentHelp("Faults to inject, e.g. silent=0.01:120,malformed=0.001 (see above).", valueName: "spec"))
    var faults = ""
    @Option(help: ArgumentHelp("Meters per connection (a data concentrator); 1 gives each meter its own.", valueName: "k"))
    var concentrator = 1
    @Option(help: ArgumentHelp("Meters' clocks run this many times faster than real time (see above).", valueName: "x"))
    var timeScale = 1.0
    @Option(help: ArgumentHelp("Most unacknowledged readings per meter on the wire.", valueName: "n"))
    var window = 100
    @Option(help: ArgumentHelp("Seq of each meter's first reading (default: start time in µs).", valueName: "n"))
    var firstSeq: Int64?
    @Option(help: "Meter ids are this prefix and a six-digit number.")
    var meterPrefix = "MTR-"
    @Option(help: ArgumentHelp("Number of the first meter id.", valueName: "n"))
    var firstMeter = 1
    @Flag(help: "Send nothing until every connection is up (or --connect-timeout passes): a burst over all connections at once.")
    var startTogether = false
    @Option(help: ArgumentHelp("Connection attempts in flight at once.", valueName: "n"))
    var maxConnecting = 512
    @Option(
        help: ArgumentHelp(
            "Local addresses to connect from, ADDR,ADDR,... (connections take them in turn): one address has about 28,000 ephemeral ports, and the kernel's search for a free one slows as they fill.",
            valueName: "list"))
    var sourceAddresses: String?
    @Option(help: ArgumentHelp("Seconds to wait for outstanding acks once the meters stop.", valueName: "seconds"))
    var drainTimeout = 30.0
    @Option(help: ArgumentHelp("Fail if no connection succeeds within this many seconds.", valueName: "seconds"))
    var connectTimeout = 10.0
    @Flag(help: "Each meter writes all its --readings-per-meter readings as fast as the socket takes them (no window, no pause on busy).")
    var burst = false
    @Flag(help: "Shut down the write side once a connection has sent everything, then read acks until meterd closes it.")
    var halfClose = false
    @Option(help: ArgumentHelp("Speak TLS, trusting meterd's certificate if this CA signed it (PEM).", valueName: "file"))
    var tlsCa: String?
    @Option(help: ArgumentHelp("Each meter's client certificate and key: DIR/<meter>.pem, DIR/<meter>.key.", valueName: "dir"))
    var tlsCertDir: String?
    @Option(help: ArgumentHelp("One client certificate for every connection (a concentrator's), PEM.", valueName: "file"))
    var tlsCert: String?
    @Option(help: ArgumentHelp("The private key of --tls-cert, PEM.", valueName: "file"))
    var tlsKey: String?
    @Flag(help: "Send each meter's cumulative register (register_kwh, from a per-meter starting value) instead of kwh.")
    var register = false
    @Option(help: ArgumentHelp("Whole digits of the registers; they wrap after 10^N kWh (meterd's register_digits).", valueName: "n"))
    var registerDigits = 6
    @Option(help: ArgumentHelp("meterd's max_kwh: a register going down by more than a wrap of this is a reset.", valueName: "kwh"))
    var maxKwh = 1_000.0

    func run() async throws {
        var configuration = SimulationConfiguration(host: self.host ?? "127.0.0.1", port: self.port ?? 7700, meters: self.meters)
        if let endpoints = self.endpoints {
            if self.host != nil || self.port != nil {
                throw ValidationError("--endpoints replaces --host and --port; give HOST:PORT in the list instead")
            }
            do {
                configuration.endpoints = try SimulationEndpoint.parseList(endpoints)
            } catch {
                throw ValidationError(error.description)
            }
        }
        configuration.interval = self.interval
        configuration.duration = self.duration
        configuration.readingsPerMeter = self.readingsPerMeter
        configuration.seed = self.seed
        configuration.startTogether = self.startTogether
        do {
            configuration.faults = try FaultPlan(parsing: self.faults)
        } catch {
            throw ValidationError(error.description)
        }
        configuration.concentrator = self.concentrator
        configuration.timeScale = self.timeScale
        configuration.window = self.window
        configuration.firstSeq = self.firstSeq
        configuration.meterPrefix = self.meterPrefix
        configuration.firstMeter = self.firstMeter
        configuration.maximumConnecting = self.maxConnecting
        configuration.sourceAddresses =
            self.sourceAddresses.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } } ?? []
        configuration.drainTimeout = self.drainTimeout
        configuration.connectTimeout = self.connectTimeout
        configuration.burst = self.burst
        configuration.halfClose = self.halfClose
        if let ca = self.tlsCa {
            configuration.tls = SimulationTLS(caFile: ca, certificateDirectory: self.tlsCertDir, certificate: self.tlsCert, key: self.tlsKey)
        } else if self.tlsCertDir != nil || self.tlsCert != nil || self.tlsKey != nil {
            throw ValidationError("--tls-cert-dir, --tls-cert and --tls-key need --tls-ca (the CA of meterd's certificate)")
        }
        configuration.register = self.register
        configuration.registerDigits = self.registerDigits
        configuration.maximumKwh = self.maxKwh
        if let problem = configuration.validate() { throw ValidationError(problem) }

        let needed = configuration.connectionCount + 64
        let limit = OpenFileLimit.raise(toAtLeast: needed)
        if limit < needed {
            throw ValidationError(
                "\(configuration.connectionCount) connections need about \(needed) open files, but the limit is \(limit); raise it (ulimit -n) or use --concentrator"
            )
        }

        let simulation = MeterSimulation(configuration: configuration)
        let signals = Self.installSignalHandlers(simulation)
        defer { signals.forEach { $0.cancel() } }

        let interactive = isatty(STDERR_FILENO) == 1
        let result = try await withThrowingTaskGroup(of: SimulationResult?.self) { group in
            group.addTask { try await simulation.run() }
            if interactive {
                group.addTask {
                    await Self.showProgress(simulation.counters)
                    return nil
                }
            }
            var result: SimulationResult?
            while let next = try await group.next() {
                if let next {
                    result = next
                    group.cancelAll()
                }
            }
            return result!
        }
        if interactive { FileHandle.standardError.write(Data("\r\u{1B}[2K".utf8)) }

        print(result.report.summary)
        if let path = self.report {
            try AtomicFile.write(try result.report.json(), to: path)
        }
        if let path = self.ledger {
            try AtomicFile.write(LedgerEntry.csv(result.ledger), to: path)
        }
        if result.report.unacked > 0 {
            let hint =
                result.report.tlsErrors > 0
                ? " (\(result.report.tlsErrors) TLS errors: check --tls-ca and the client certificates against meterd's ingest_tls settings)" : ""
            FileHandle.standardError.write(Data("meter-sim: \(result.report.unacked) readings were never acknowledged\(hint)\n".utf8))
            throw ExitCode(1)
        }
    }

    /// First Ctrl-C or SIGTERM: stop measuring and drain; a second one gives up on outstanding acks.
    private static func installSignalHandlers(_ simulation: MeterSimulation) -> [any DispatchSourceSignal] {
        let queue = DispatchQueue(label: "meter-sim.signals")
        let count = SignalCount()
        return [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                if count.increment() == 1 { simulation.stopMeasuring() } else { simulation.abandon() }
            }
            source.resume()
            return source
        }
    }

    /// One line on stderr, rewritten every second, until cancelled.
    private static func showProgress(_ counters: SimulationCounters) async {
        var last = counters.progress
        var lastTime = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            if Task.isCancelled { break }
            let now = ContinuousClock.now
            let progress = counters.progress
            let elapsed = lastTime.duration(to: now)
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let rate = seconds > 0 ? Double(progress.acked - last.acked) / seconds : 0
            let line =
                "connections \(progress.connections) | \(Int(rate)) readings/s | acked \(progress.acked) | unacked \(progress.unacked) | errors \(progress.errors) | busy \(progress.busySignals) | reconnects \(progress.reconnects)"
            FileHandle.standardError.write(Data("\r\u{1B}[2K\(line)".utf8))
            last = progress
            lastTime = now
        }
    }
}

/// Counts signals as they arrive.
private final class SignalCount: Sendable {
    private let count = Atomic<Int>(0)

    func increment() -> Int {
        self.count.add(1, ordering: .relaxed).newValue
    }
}
