import MeterCore
import NIOCore
import NIOPosix
import Synchronization

/// Why a run could not go ahead.
package enum SimulationError: Error, CustomStringConvertible {
    case invalidConfiguration(String)
    case cannotConnect(endpoints: [SimulationEndpoint], seconds: Double)
    case tlsHandshakesFailed(endpoints: [SimulationEndpoint], failures: Int)
    case cannotResolve(host: String, reason: String)

    package var description: String {
        switch self {
        case .invalidConfiguration(let reason): "Invalid simulation: \(reason)."
        case .cannotConnect(let endpoints, let seconds):
            "Could not connect to meterd at \(Self.list(endpoints)) within \(Int(seconds)) s; is it running and listening there?"
        case .tlsHandshakesFailed(let endpoints, let failures):
            "Every TLS handshake with meterd at \(Self.list(endpoints)) failed (\(failures) TLS errors); check --tls-ca and the client certificates against meterd's ingest_tls settings."
        case .cannotResolve(let host, let reason): "Cannot resolve the host \"\(host)\": \(reason)."
        }
    }

    private static func list(_ endpoints: [SimulationEndpoint]) -> String {
        endpoints.count == 1 ? endpoints[0].description : "any of " + endpoints.map(\.description).joined(separator: ", ")
    }
}

/// What a finished run leaves: the summary and, per meter, what was acknowledged.
package struct SimulationResult: Sendable {
    package var report: SimulationReport
    /// One entry per meter, in meter order.
    package var ledger: [LedgerEntry]
}

/// A fleet of simulated meters on SwiftNIO event loops (no thread per meter): each meter, or each
/// concentrator of meters, holds one TCP connection to meterd, measures readings on a daily load
/// curve, sends them per SPEC.md section 2 and keeps every unacknowledged one until meterd acks
/// it, resending after a reconnect; faults on demand (``FaultPlan``).
///
/// `run()` returns once every meter has stopped measuring (`duration`, `readingsPerMeter` or
/// ``stopMeasuring()``) and everything measured is acknowledged, or the drain timeout has passed.
package final class MeterSimulation: Sendable {
    package let configuration: SimulationConfiguration
    package let counters: SimulationCounters
    private let group: any EventLoopGroup
    private let events: AsyncStream<SimulationEvent>
    private let eventSink: AsyncStream<SimulationEvent>.Continuation
    private let started = Atomic<Bool>(false)

    package init(configuration: SimulationConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.configuration = configuration
        self.counters = SimulationCounters(endpoints: configuration.targets)
        self.group = group
        (self.events, self.eventSink) = AsyncStream.makeStream(of: SimulationEvent.self)
    }

    /// The meters stop measuring; the run ends once what they measured is acknowledged. Thread-safe.
    package func stopMeasuring() {
        self.eventSink.yield(.stopRequested)
    }

    /// Ends the run now, abandoning unacknowledged readings. Thread-safe.
    package func abandon() {
        self.eventSink.yield(.drainExpired)
    }

    package func run() async throws -> SimulationResult {
        let configuration = self.configuration
        if let problem = configuration.validate() { throw SimulationError.invalidConfiguration(problem) }
        guard !self.started.exchange(true, ordering: .relaxed) else {
            throw SimulationError.invalidConfiguration("a simulation runs once")
        }
        var addresses: [SocketAddress] = []
        for endpoint in configuration.targets {
            do {
                addresses.append(try SocketAddress.makeAddressResolvingHost(endpoint.host, port: endpoint.port))
            } catch {
                throw SimulationError.cannotResolve(host: endpoint.host, reason: "\(error)")
            }
        }
        // Checked by validate(): each is an IP address.
        let sources = try configuration.sourceAddresses.map { try SocketAddress(ipAddress: $0, port: 0) }
        let tls: SimulationTLSContexts?
        if let files = configuration.tls {
            tls = try SimulationTLSContexts(
                files, meters: (0..<configuration.meters).map(configuration.meterName), host: configuration.targets[0].host)
        } else {
            tls = nil
        }
        let startWallMs = WallClock.nowMs()
        let start = ContinuousClock.now
        let clock = SimulatedClock(startWallMs: startWallMs, timeScale: configuration.timeScale, spanSeconds: configuration.expectedSpanSeconds)
        let context = SimulationContext(
            configuration: configuration, addresses: addresses, sources: sources, counters: self.counters, clock: clock,
            firstSeq: configuration.firstSeq ?? startWallMs * 1000, events: self.eventSink, tls: tls)
        let connectionCount = configuration.connectionCount
        var connections: [SimulatedConnection] = []
        connections.reserveCapacity(connectionCount)
        // One metronome per event loop ticks its connections (interval runs).
        var metronomes: [ObjectIdentifier: Metronome] = [:]
        for index in 0..<connectionCount {
            let lower = index * configuration.concentrator
            let meters = lower..<min(lower + configuration.concentrator, configuration.meters)
            let eventLoop = self.group.next()
            var metronome: Metronome?
            if configuration.interval > 0 {
                metronome = metronomes[ObjectIdentifier(eventLoop)]
                if metronome == nil {
                    metronome = Metronome(eventLoop: eventLoop, interval: .nanoseconds(Int64(configuration.interval * 1e9)))
                    metronomes[ObjectIdentifier(eventLoop)] = metronome
                }
            }
            connections.append(
                SimulatedConnection(index: index, meterIndices: meters, eventLoop: eventLoop, metronome: metronome, context: context))
        }
        for connection in connections {
            connection.eventLoop.execute { connection.start() }
        }

        let sink = self.eventSink
        let counters = self.counters
        var failure: SimulationError?
        await withTaskGroup(of: Void.self) { timers in
            if let duration = configuration.duration {
                timers.addTask {
                    try? await Task.sleep(for: .seconds(duration))
                    if !Task.isCancelled { sink.yield(.durationElapsed) }
                }
            }
            timers.addTask {
                try? await Task.sleep(for: .seconds(configuration.connectTimeout))
                if !Task.isCancelled { sink.yield(.connectDeadline) }
            }
            var finished = 0
            var measuringDone = 0
            var stopped = false
            var draining = false
            var abandoned = false
            func startDrain() {
                guard !draining else { return }
                draining = true
                timers.addTask {
                    try? await Task.sleep(for: .seconds(configuration.drainTimeout))
                    if !Task.isCancelled { sink.yield(.drainExpired) }
                }
            }
            for await event in self.events {
                switch event {
                case .finished:
                    finished += 1
                case .measuringDone:
                    measuringDone += 1
                    if measuringDone == connectionCount { startDrain() }
                case .durationElapsed, .stopRequested:
                    guard !stopped else { break }
                    stopped = true
                    for connection in connections { connection.eventLoop.execute { connection.stopMeasuring() } }
                    startDrain()
                case .drainExpired:
                    guard !abandoned else { break }
                    abandoned = true
                    for connection in connections { connection.eventLoop.execute { connection.abandon() } }
                case .connectDeadline:
                    context.startBarrier?.open()
                    if counters.established.load(ordering: .relaxed) == 0 {
                        let handshakes = counters.tlsErrors.load(ordering: .relaxed)
                        failure =
                            handshakes > 0
                            ? .tlsHandshakesFailed(endpoints: configuration.targets, failures: handshakes)
                            : .cannotConnect(endpoints: configuration.targets, seconds: configuration.connectTimeout)
                        sink.yield(.drainExpired)
                    }
                }
                if finished == connectionCount { break }
            }
            timers.cancelAll()
        }
        if let failure { throw failure }

        var ledger: [LedgerEntry] = []
        ledger.reserveCapacity(configuration.meters)
        for connection in connections {
            ledger += try await connection.eventLoop.submit { connection.ledgerEntries() }.get()
        }
        let elapsed = start.duration(to: .now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return SimulationResult(
            report: SimulationReport(configuration: configuration, counters: self.counters, elapsedSeconds: seconds),
            ledger: ledger)
    }
}
