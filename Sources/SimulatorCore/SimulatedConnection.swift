#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MeterCore
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// What every connection of a run shares.
final class SimulationContext: Sendable {
    let configuration: SimulationConfiguration
    let counters: SimulationCounters
    let clock: SimulatedClock
    let gate: ConnectGate
    let firstSeq: Int64
    /// Each endpoint's address, resolved once: a resolver per connection costs more than the connection.
    let addresses: [SocketAddress]
    /// Local addresses to connect from (``SimulationConfiguration/sourceAddresses``), port 0.
    let sources: [SocketAddress]
    /// Each endpoint's name for SNI and the certificate check; `nil` for an IP address.
    let serverHostnames: [String?]
    let events: AsyncStream<SimulationEvent>.Continuation
    /// With `startTogether`, holds every connection's first send until all are connected.
    let startBarrier: StartBarrier?
    /// Client contexts when the run speaks TLS.
    let tls: SimulationTLSContexts?

    init(
        configuration: SimulationConfiguration, addresses: [SocketAddress], sources: [SocketAddress] = [], counters: SimulationCounters,
        clock: SimulatedClock,
        firstSeq: Int64,
        events: AsyncStream<SimulationEvent>.Continuation, tls: SimulationTLSContexts? = nil
    ) {
        self.tls = tls
        self.startBarrier = configuration.startTogether ? StartBarrier(expected: configuration.connectionCount) : nil
        self.configuration = configuration
        self.addresses = addresses
        self.sources = sources
        self.serverHostnames = configuration.targets.map { SimulationTLSContexts.isIPAddress($0.host) ? nil : $0.host }
        self.counters = counters
        self.clock = clock
        self.gate = ConnectGate(limit: configuration.maximumConnecting)
        self.firstSeq = firstSeq
        self.events = events
    }
}

/// What connections and timers tell the run loop.
/// Opens once every connection has arrived (or when told to), then runs what waited for it.
final class StartBarrier: Sendable {
    private let state: Mutex<(arrived: Int, open: Bool, waiting: [@Sendable () -> Void])>
    private let expected: Int

    init(expected: Int) {
        self.expected = expected
        self.state = Mutex((0, false, []))
    }

    var isOpen: Bool { self.state.withLock { $0.open } }

    /// Counts one connection in; `whenOpen` runs once the barrier opens (at once if it is open).
    func arrive(whenOpen: @escaping @Sendable () -> Void) {
        let run = self.state.withLock { state -> [@Sendable () -> Void] in
            state.arrived += 1
            if state.open { return [whenOpen] }
            state.waiting.append(whenOpen)
            return state.arrived >= self.expected ? self.takeAll(&state) : []
        }
        run.forEach { $0() }
    }

    /// Opens the barrier whoever has arrived: the connect deadline passed.
    func open() {
        self.state.withLock { self.takeAll(&$0) }.forEach { $0() }
    }

    private func takeAll(_ state: inout (arrived: Int, open: Bool, waiting: [@Sendable () -> Void])) -> [@Sendable () -> Void] {
        state.open = true
        defer { state.waiting = [] }
        return state.waiting
    }
}

enum SimulationEvent: Sendable {
    /// A connection's meters will measure nothing more.
    case measuringDone
    /// A connection is done: everything acknowledged (or abandoned) and closed.
    case finished
    case durationElapsed
    case stopRequested
    case drainExpired
    case connectDeadline
}

/// Limits connection attempts in flight, so ten thousand meters starting at once do not overflow
/// the daemon's listen backlog (each waits for a free slot instead of timing out).
final class ConnectGate: Sendable {
    private let limit: Int
    private let state = Mutex<(inFlight: Int, waiting: CircularBuffer<@Sendable () -> Void>)>((0, []))

    init(limit: Int) {
        self.limit = limit
    }

    func acquire(_ body: @escaping @Sendable () -> Void) {
        let now = self.state.withLock { state -> Bool in
            if state.inFlight < self.limit {
                state.inFlight += 1
                return true
            }
            state.waiting.append(body)
            return false
        }
        if now { body() }
    }

    func release() {
        let next = self.state.withLock { state -> (@Sendable () -> Void)? in
            if let next = state.waiting.popFirst() { return next }
            state.inFlight -= 1
            return nil
        }
        next?()
    }
}

/// A reading a meter has measured and not yet had acknowledged.
struct OutstandingReading {
    var reading: Reading
    /// Line number on the current connection, once sent on it.
    var lineNumber = 0
    var sentAt = NIODeadline.distantPast
    var everSent = false
}

/// One simulated meter: its model, its sequence, its unacknowledged readings and its ledger.
struct SimulatedMeter {
    let name: String
    var model: MeterModel
    var nextSeq: Int64
    var measured = 0
    var lastTimestampMs: Int64
    /// In seq order; the first `sentCount` are on the wire of the current connection.
    var outstanding = CircularBuffer<OutstandingReading>(initialCapacity: 4)
    var sentCount = 0
    var silentUntil = NIODeadline.distantPast
    var ledger: LedgerEntry
    /// The cumulative register (`--register`), and the one meterd last stored a baseline from (`nil` before the first).
    var register = 0.0
    var lastSentRegister: Double?
}

/// One TCP link to meterd carrying one meter, or many for a data concentrator; it outlives its
/// channels: when one drops, it reconnects and resends every unacknowledged reading, same seq.
///
/// Confined to its event loop: every method runs there (the run loop hops onto it), which is what
/// makes the unchecked `Sendable` sound.
final class SimulatedConnection: @unchecked Sendable {
    let eventLoop: any EventLoop
    fileprivate let context: SimulationContext
    private let configuration: SimulationConfiguration
    private var meters: [SimulatedMeter]
    private let meterIndex: [String: Int]
    private var rng: SeededGenerator
    private let bytewise: Bool

    private var channel: (any Channel)?
    /// Index of the endpoint this connection uses now (``SimulationContext/addresses``).
    private var endpoint: Int
    private var connecting = false
    private var everConnected = false
    private var reconnectDelayMs = 100.0
    private var lineNumber = 0
    private var pausedUntil: NIODeadline?
    /// Ticked by its event loop's metronome (interval runs): measures its meters once per interval.
    /// No default: an interval run without one would never measure.
    private let metronome: Metronome?
    private var ticking = false
    private var stopping = false
    private var measuringDone = false
    private var finished = false
    private var duplicates: [Reading] = []
    private var cursor = 0
    /// The local address this connection connects from, when the run names some.
    private let source: SocketAddress?
    /// The current channel's write side is shut down (`halfClose`): nothing more can go on it.
    private var outputClosed = false

    init(index: Int, meterIndices: Range<Int>, eventLoop: any EventLoop, metronome: Metronome?, context: SimulationContext) {
        self.eventLoop = eventLoop
        self.metronome = metronome
        self.context = context
        let configuration = context.configuration
        self.configuration = configuration
        var rng = SeededGenerator(seed: configuration.seed &+ 0x5DEE_CE66 &* UInt64(index + 1))
        self.bytewise = rng.chance(configuration.faults.bytewiseRate)
        self.endpoint = configuration.homeEndpoint(ofConnection: index)
        self.source = context.sources.isEmpty ? nil : context.sources[index % context.sources.count]
        let stepMs = Int64((configuration.interval > 0 ? configuration.interval : 1) * configuration.timeScale * 1000)
        let startMs = context.clock.meterTime(atWallMs: context.clock.startWallMs)
        let capacity = configuration.meteringRules.registerCapacity
        self.meters = meterIndices.map { meterIndex in
            let name = configuration.meterName(meterIndex)
            var meter = SimulatedMeter(
                name: name, model: MeterModel(index: meterIndex, seed: configuration.seed), nextSeq: context.firstSeq,
                lastTimestampMs: startMs - stepMs, ledger: LedgerEntry(meter: name, ackedMaxSeq: nil, ackedKwh: 0, ackedReadings: 0))
            if configuration.register {
                // Each meter's own starting register, from its own stream: same seed, same registers.
                meter.register =
                    meter.model.chance(configuration.faults.rolloverRate)
                    ? capacity - 0.001 : ((meter.model.unit() * 0.9 * capacity) * 1000).rounded() / 1000
            }
            return meter
        }
        self.meterIndex = Dictionary(uniqueKeysWithValues: self.meters.enumerated().map { ($1.name, $0) })
        self.rng = rng
    }

    // MARK: Lifecycle (called by the run loop, on the event loop)

    func start() {
        self.eventLoop.assertInEventLoop()
        let interval = self.configuration.interval
        if interval > 0, let metronome = self.metronome {
            self.ticking = true
            metronome.add(self, phase: .nanoseconds(Int64(self.rng.unit() * interval * 1e9)))
        }
        self.connect()
    }

    /// One interval's readings; false once the connection measures no more (the metronome drops it).
    func metronomeTick() -> Bool {
        guard self.ticking else { return false }
        self.measureAll()
        return self.ticking
    }

    /// The meters stop measuring; what they have is still delivered.
    func stopMeasuring() {
        self.eventLoop.assertInEventLoop()
        self.stopping = true
        self.markMeasuringDoneIfNeeded()
        self.pump()  // with halfClose, the write side may close now
        self.checkFinished()
    }

    /// Gives up on what is unacknowledged and closes.
    func abandon() {
        self.eventLoop.assertInEventLoop()
        self.stopping = true
        self.markMeasuringDoneIfNeeded()
        self.finish()
    }

    func ledgerEntries() -> [LedgerEntry] {
        self.meters.map(\.ledger)
    }

    // MARK: Connecting

    private func connect() {
        guard !self.finished, self.channel == nil, !self.connecting else { return }
        self.connecting = true
        self.context.gate.acquire { [self] in
            self.eventLoop.execute { self.openChannel() }
        }
    }

    private func openChannel() {
        guard !self.finished else {
            self.connecting = false
            self.context.gate.release()
            return
        }
        // A burst queues up to 1 MB in user space per connection (NIO's default stops at 64 KB),
        // so the kernel always has the next bytes when the socket takes more.
        let waterMark =
            self.configuration.burst
            ? ChannelOptions.Types.WriteBufferWaterMark(low: 512 * 1024, high: 1024 * 1024)
            : ChannelOptions.Types.WriteBufferWaterMark(low: 32 * 1024, high: 64 * 1024)
        var bootstrap = ClientBootstrap(group: self.eventLoop)
        if let source = self.source { bootstrap = bootstrap.bind(to: source) }
        bootstrap
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 16_384))
            .channelOption(.allowRemoteHalfClosure, value: false)
            .channelOption(.writeBufferWaterMark, value: waterMark)
            .connectTimeout(.seconds(10))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let tls = self.context.tls.flatMap { contexts in
                        contexts.context(forConnectionOf: self.meters[0].name).map { ($0, self.context.serverHostnames[self.endpoint]) }
                    }
                    if let (context, hostname) = tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: hostname))
                    }
                    try channel.pipeline.syncOperations.addHandler(SimulatedConnectionHandler(connection: self, waitsForHandshake: tls != nil))
                }
            }
            .connect(to: self.context.addresses[self.endpoint])
            .whenComplete { [self] result in
                self.context.gate.release()
                if case .failure = result {
                    self.connecting = false
                    self.context.counters.connectFailures.add(1, ordering: .relaxed)
                    self.context.counters.endpoints[self.endpoint].connectFailures.add(1, ordering: .relaxed)
                    self.moveToNextEndpoint()
                    self.scheduleReconnect()
                }
            }
    }

    fileprivate func connected(_ channel: any Channel) {
        self.connecting = false
        guard !self.finished else {
            channel.close(promise: nil)
            return
        }
        self.channel = channel
        self.lineNumber = 0
        self.pausedUntil = nil
        self.outputClosed = false
        self.reconnectDelayMs = 100
        self.context.counters.connectionOpened()
        self.context.counters.endpoints[self.endpoint].connections.add(1, ordering: .relaxed)
        if self.everConnected {
            self.context.counters.reconnects.add(1, ordering: .relaxed)
        } else {
            self.everConnected = true
            if self.context.counters.established.add(1, ordering: .relaxed).newValue == self.configuration.connectionCount {
                self.context.counters.fleetEstablished(at: .now(), settle: .milliseconds(Int64(max(1, self.configuration.interval) * 1000)))
            }
            if let barrier = self.context.startBarrier {
                barrier.arrive { [self] in self.eventLoop.execute { self.pump() } }
            }
        }
        self.pump()
    }

    /// The channel closed before its TLS handshake completed: try again later.
    fileprivate func handshakeFailed() {
        self.connecting = false
        self.moveToNextEndpoint()
        self.scheduleReconnect()
    }

    fileprivate func disconnected(_ channel: any Channel) {
        guard channel === self.channel else { return }
        self.channel = nil
        self.context.counters.connections.subtract(1, ordering: .relaxed)
        // Everything on the wire is unacknowledged: it goes again, same seq, on the next connection.
        for index in self.meters.indices { self.meters[index].sentCount = 0 }
        self.duplicates = []
        guard !self.finished else { return }
        self.context.counters.endpoints[self.endpoint].lost.add(1, ordering: .relaxed)
        self.moveToNextEndpoint()
        self.scheduleReconnect()
    }

    /// A connection that failed or was lost goes on at the next endpoint (round robin): a meter
    /// cannot tell a dead node from a dropped link, and the next node may well be up. With one
    /// endpoint it stays; the reconnect backoff is not reset by a move, so with every node down the
    /// attempts still slow to one per 5 s at most.
    private func moveToNextEndpoint() {
        let count = self.context.addresses.count
        guard count > 1 else { return }
        self.context.counters.endpoints[self.endpoint].movedAway.add(1, ordering: .relaxed)
        self.endpoint = (self.endpoint + 1) % count
        self.context.counters.endpoints[self.endpoint].movedIn.add(1, ordering: .relaxed)
    }

    private func scheduleReconnect() {
        guard !self.finished else { return }
        let delay = self.reconnectDelayMs * (0.5 + self.rng.unit())
        self.reconnectDelayMs = min(self.reconnectDelayMs * 2, 5_000)
        self.eventLoop.scheduleTask(in: .milliseconds(Int64(delay))) { [self] in
            self.connect()
        }
    }

    /// Resets the connection (RST, not FIN): an abrupt loss mid-stream.
    private func reset(_ channel: any Channel) {
        self.context.counters.disconnectsInjected.add(1, ordering: .relaxed)
        if let provider = channel as? any SocketOptionProvider {
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
    }

    // MARK: Measuring

    private func measureAll() {
        for index in self.meters.indices { _ = self.measure(index) }
        self.markMeasuringDoneIfNeeded()
        self.pump()
        self.checkFinished()
    }

    private func canMeasure(_ index: Int) -> Bool {
        guard !self.stopping else { return false }
        if let limit = self.configuration.readingsPerMeter, self.meters[index].measured >= limit { return false }
        return true
    }

    /// Takes one reading of a meter unless it cannot or is silent; true when it did.
    private func measure(_ index: Int) -> Bool {
        guard self.canMeasure(index) else { return false }
        let faults = self.configuration.faults
        let now = NIODeadline.now()
        if self.meters[index].silentUntil > now { return false }
        if self.meters[index].model.chance(faults.silentRate) {
            let until = now + .nanoseconds(Int64(faults.silentSeconds * 1e9))
            self.meters[index].silentUntil = until
            self.context.counters.silences.add(1, ordering: .relaxed)
            if self.configuration.interval == 0 { self.wake(at: until) }
            return false
        }
        // Faults added later draw only when asked for, so a run without them draws as before.
        if faults.gapRate > 0, self.meters[index].model.chance(faults.gapRate) {
            // Seconds of the meter's clock: an accelerated clock gets through a long gap sooner.
            let until = now + .nanoseconds(Int64(faults.gapSeconds / self.configuration.timeScale * 1e9))
            self.meters[index].silentUntil = until
            self.context.counters.silences.add(1, ordering: .relaxed)
            if self.configuration.interval == 0 { self.wake(at: until) }
            return false
        }
        let wallMs = WallClock.nowMs()
        let timestamp = self.context.clock.meterTime(atWallMs: wallMs)
        // In place: a copy of the meter would share its `outstanding` buffer, and the append would copy it.
        self.withMeter(at: index) { meter in
            var reading = meter.model.reading(meter: meter.name, seq: meter.nextSeq, previousMs: meter.lastTimestampMs, timestampMs: timestamp)
            if faults.spikeRate > 0, meter.model.chance(faults.spikeRate) {
                reading.kwh = (reading.kwh * FaultPlan.spikeMultiplier * 1_000_000).rounded() / 1_000_000
            }
            if faults.backwardsRate > 0, meter.model.chance(faults.backwardsRate) {
                reading.timestampMs = meter.lastTimestampMs - Int64(faults.backwardsSeconds * 1000)
            }
            meter.lastTimestampMs = timestamp
            if meter.model.chance(faults.skewRate) {
                reading.timestampMs = wallMs + Int64(faults.skewSeconds * 1000)
            }
            if self.configuration.register {
                let rules = self.configuration.meteringRules
                if meter.lastSentRegister == nil {
                    // The first reading shows the starting register itself (meterd's baseline), so a
                    // meter that starts just below its capacity wraps at its second reading, not before
                    // meterd has seen it.
                } else if faults.resetRate > 0, meter.model.chance(faults.resetRate) {
                    meter.register = reading.kwh  // a new meter, from 0
                } else {
                    meter.register = (meter.register + reading.kwh).truncatingRemainder(dividingBy: rules.registerCapacity)
                }
                // The consumption meterd derives, computed as it does: the ledger then matches it exactly.
                reading.kwh = rules.step(from: meter.lastSentRegister, to: meter.register).kwh
                reading.registerKwh = meter.register
                meter.lastSentRegister = meter.register
            }
            meter.nextSeq += 1
            meter.measured += 1
            meter.outstanding.append(OutstandingReading(reading: reading))
        }
        self.context.counters.generated.add(1, ordering: .relaxed)
        return true
    }

    /// Flat out nothing else would ask a silent meter for its next reading.
    private func wake(at deadline: NIODeadline) {
        self.eventLoop.scheduleTask(deadline: deadline) { [self] in
            self.pump()
            self.checkFinished()
        }
    }

    private func markMeasuringDoneIfNeeded() {
        guard !self.measuringDone else { return }
        guard self.stopping || self.meters.indices.allSatisfy({ !self.canMeasure($0) }) else { return }
        self.measuringDone = true
        self.ticking = false
        self.context.events.yield(.measuringDone)
    }

    private func checkFinished() {
        guard !self.finished, self.measuringDone, self.duplicates.isEmpty,
            self.meters.allSatisfy({ $0.outstanding.isEmpty })
        else { return }
        self.finish()
    }

    private func finish() {
        guard !self.finished else { return }
        self.finished = true
        self.ticking = false
        self.channel?.close(promise: nil)
        self.context.events.yield(.finished)
    }

    // MARK: Sending

    /// Writes what is due: deliberate duplicates, then each meter's unsent readings up to the window
    /// (flat out, measuring new ones to fill it; in a burst, all of them), with the configured
    /// faults mixed in; with `halfClose`, shuts the write side once everything has gone.
    fileprivate func pump() {
        guard let channel = self.channel, !self.finished, !self.outputClosed else { return }
        if let barrier = self.context.startBarrier, !barrier.isOpen { return }
        let now = NIODeadline.now()
        if let paused = self.pausedUntil {
            guard paused <= now else { return }
            self.pausedUntil = nil
        }
        guard channel.isWritable else { return }
        let faults = self.configuration.faults
        let burst = self.configuration.burst
        let window = burst ? Int.max : self.configuration.window
        let flatOut = self.configuration.interval == 0 || burst
        var buffer = channel.allocator.buffer(capacity: 256)

        for reading in self.duplicates {
            self.lineNumber += 1
            buffer.writeString(reading.line)
            self.context.counters.duplicatesSent.add(1, ordering: .relaxed)
        }
        self.duplicates = []

        var sent = 0
        var resent = 0
        var reset = false
        meters: for step in 0..<self.meters.count {
            let index = (self.cursor + step) % self.meters.count
            if flatOut {
                while self.meters[index].outstanding.count < window, self.measure(index) {}
            }
            while self.meters[index].sentCount < self.meters[index].outstanding.count, self.meters[index].sentCount < window {
                let position = self.meters[index].sentCount
                var entry = self.meters[index].outstanding[offset: position]
                if !entry.everSent {
                    if self.rng.chance(faults.spoofRate) {
                        self.writeSpoofed(entry.reading, into: &buffer)
                    }
                    if self.rng.chance(faults.malformedRate) {
                        self.writeMalformed(meter: self.meters[index].name, into: &buffer)
                    }
                    if self.rng.chance(faults.overlongRate) {
                        self.writeOverlong(meter: self.meters[index].name, into: &buffer)
                    }
                }
                let line = entry.reading.line
                if !entry.everSent, self.rng.chance(faults.disconnectRate) {
                    buffer.writeString(String(decoding: Array(line.utf8).prefix(line.utf8.count / 2), as: UTF8.self))
                    reset = true
                    break meters
                }
                self.lineNumber += 1
                entry.lineNumber = self.lineNumber
                entry.sentAt = now
                if entry.everSent { resent += 1 } else { sent += 1 }
                entry.everSent = true
                self.meters[index].outstanding[offset: position] = entry
                self.meters[index].sentCount += 1
                buffer.writeString(line)
                if buffer.readableBytes >= 65_536 {
                    self.write(buffer, to: channel)
                    buffer = channel.allocator.buffer(capacity: 256)
                    if !channel.isWritable { break meters }
                }
            }
        }
        if flatOut { self.markMeasuringDoneIfNeeded() }
        self.cursor = self.meters.count > 1 ? (self.cursor + 1) % self.meters.count : 0
        if sent > 0 { self.context.counters.sent.add(sent, ordering: .relaxed) }
        if resent > 0 { self.context.counters.resent.add(resent, ordering: .relaxed) }
        if buffer.readableBytes > 0 { self.write(buffer, to: channel) }
        if reset {
            self.reset(channel)
        } else {
            self.halfCloseIfDone(channel)
        }
    }

    /// With `halfClose`: once the meters will measure nothing more and all of it is on the wire,
    /// shuts down the write side (after what is queued has gone); acks keep coming until meterd closes.
    private func halfCloseIfDone(_ channel: any Channel) {
        guard self.configuration.halfClose, !self.outputClosed, self.measuringDone, self.duplicates.isEmpty,
            self.meters.allSatisfy({ $0.sentCount == $0.outstanding.count })
        else { return }
        self.outputClosed = true
        channel.close(mode: .output, promise: nil)
    }

    private func write(_ buffer: ByteBuffer, to channel: any Channel) {
        if self.bytewise {
            for byte in buffer.readableBytesView {
                var one = channel.allocator.buffer(capacity: 1)
                one.writeInteger(byte)
                channel.writeAndFlush(one, promise: nil)
            }
        } else {
            channel.writeAndFlush(buffer, promise: nil)
        }
    }

    /// A line meterd must reject: invalid JSON, a missing field or an invalid field, at random.
    private func writeMalformed(meter: String, into buffer: inout ByteBuffer) {
        let ts = RFC3339.format(millisecondsSinceEpoch: WallClock.nowMs())
        switch self.rng.next() % 3 {
        case 0: buffer.writeString("{\"meter\":\"\(meter)\",\"seq\":,\"ts\":\"\(ts)\",\"kwh\":0.1}\n")
        case 1: buffer.writeString("{\"meter\":\"\(meter)\",\"ts\":\"\(ts)\",\"kwh\":0.1}\n")
        default: buffer.writeString("{\"meter\":\"\(meter)\",\"seq\":1,\"ts\":\"\(ts)\",\"kwh\":-1}\n")
        }
        self.lineNumber += 1
        self.context.counters.malformedSent.add(1, ordering: .relaxed)
    }

    /// A reading for a meter this connection does not own: the meter right after the fleet, which
    /// no meter or concentrator certificate of the run names.
    private func writeSpoofed(_ reading: Reading, into buffer: inout ByteBuffer) {
        var spoofed = reading
        spoofed.meter = self.configuration.meterName(self.configuration.meters)
        buffer.writeString(spoofed.line)
        self.lineNumber += 1
        self.context.counters.spoofSent.add(1, ordering: .relaxed)
    }

    /// A line longer than meterd's default limit of 4096 bytes; no seq, so it can never pass for a reading.
    private func writeOverlong(meter: String, into buffer: inout ByteBuffer) {
        buffer.writeString("{\"meter\":\"\(meter)\",\"note\":\"")
        buffer.writeRepeatingByte(UInt8(ascii: "x"), count: 5_000)
        buffer.writeString("\"}\n")
        self.lineNumber += 1
        self.context.counters.overlongSent.add(1, ordering: .relaxed)
    }

    // MARK: Receiving

    fileprivate func received(_ reply: DaemonReply) {
        switch reply {
        case .ack(let meter, let seq):
            self.acknowledge(meter: meter, seq: seq)
        case .error(let code, let line):
            self.context.counters.countError(code)
            if let line { self.dropRejected(line: line) }
        case .busy(let retryAfterMs):
            self.context.counters.busySignals.add(1, ordering: .relaxed)
            // A burst writes what the socket takes regardless: TCP is its only brake.
            guard !self.configuration.burst else { return }
            let until = NIODeadline.now() + .milliseconds(Int64(max(1, retryAfterMs)))
            self.pausedUntil = until
            self.eventLoop.scheduleTask(deadline: until) { [self] in self.pump() }
        }
    }

    fileprivate func readComplete() {
        self.pump()
        self.checkFinished()
    }

    /// Runs `body` on the meter in its slot. Copying a meter out and back would share its
    /// `outstanding` buffer between the copy and the slot, so every append or removal in between
    /// copied the whole buffer (7 % of the simulator's samples in a steady fleet, as `memmove`).
    /// `body` must not touch `meters`.
    private func withMeter<T>(at index: Int, _ body: (inout SimulatedMeter) -> T) -> T {
        body(&self.meters[index])
    }

    private func acknowledge(meter name: String, seq: Int64) {
        guard let index = self.meters.count == 1 ? (self.meters[0].name == name ? 0 : nil) : self.meterIndex[name] else { return }
        let now = NIODeadline.now()
        let duplicateRate = self.configuration.faults.duplicateRate
        var latencies: [UInt64] = []
        var steady: [UInt64] = []
        self.withMeter(at: index) { meter in
            while meter.sentCount > 0, let first = meter.outstanding.first, first.reading.seq <= seq {
                meter.outstanding.removeFirst()
                meter.sentCount -= 1
                meter.ledger.ackedMaxSeq = max(meter.ledger.ackedMaxSeq ?? first.reading.seq, first.reading.seq)
                meter.ledger.ackedKwh += first.reading.kwh
                meter.ledger.ackedReadings += 1
                let latency = UInt64(max(0, (now - first.sentAt).nanoseconds / 1000))
                latencies.append(latency)
                if self.context.counters.isSteady(writtenAt: first.sentAt) { steady.append(latency) }
                // A half-closed connection can send nothing more: no deliberate duplicates on it.
                if !self.outputClosed, self.rng.chance(duplicateRate) { self.duplicates.append(first.reading) }
            }
        }
        if !latencies.isEmpty {
            self.context.counters.acked.add(latencies.count, ordering: .relaxed)
            self.context.counters.recordLatencies(latencies, steady: steady)
        }
    }

    /// A reading meterd rejected is dropped: sending it again would be rejected again.
    private func dropRejected(line: Int) {
        for index in self.meters.indices {
            let sent = self.meters[index].sentCount
            guard sent > 0 else { continue }
            for position in 0..<sent where self.meters[index].outstanding[offset: position].lineNumber == line {
                let offset = self.meters[index].outstanding.index(self.meters[index].outstanding.startIndex, offsetBy: position)
                self.meters[index].outstanding.remove(at: offset)
                self.meters[index].sentCount -= 1
                self.context.counters.rejected.add(1, ordering: .relaxed)
                return
            }
        }
    }
}

/// Splits meterd's replies into lines and hands them to the connection.
final class SimulatedConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let connection: SimulatedConnection
    private var carry: ByteBuffer?
    /// Over TLS the connection counts as connected once the handshake is done, not at TCP connect.
    private let waitsForHandshake: Bool
    private var announced = false
    private var answered = false

    init(connection: SimulatedConnection, waitsForHandshake: Bool = false) {
        self.connection = connection
        self.waitsForHandshake = waitsForHandshake
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.waitsForHandshake {
            self.announced = true
            self.connection.connected(context.channel)
        }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, !self.announced {
            self.announced = true
            self.connection.connected(context.channel)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if self.announced {
            self.connection.disconnected(context.channel)
        } else {
            self.connection.handshakeFailed()
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.answered = true
        var buffer = Self.unwrapInboundIn(data)
        if var carry = self.carry {
            carry.writeBuffer(&buffer)
            buffer = carry
            self.carry = nil
        }
        let consumed = buffer.withUnsafeReadableBytes { bytes -> Int in
            guard let base = bytes.baseAddress else { return 0 }
            var start = 0
            while start < bytes.count, let found = memchr(base + start, 0x0A, bytes.count - start) {
                let end = base.distance(to: UnsafeRawPointer(found))
                if let reply = DaemonReply.parse(UnsafeRawBufferPointer(rebasing: bytes[start..<end])) {
                    self.connection.received(reply)
                }
                start = end + 1
            }
            return start
        }
        buffer.moveReaderIndex(forwardBy: consumed)
        if buffer.readableBytes > 0 { self.carry = buffer }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.connection.readComplete()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.connection.pump() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Over TLS 1.3 meterd refuses a client certificate after the client's side of the handshake
        // is done: an alert, or a reset when the close overtakes it, before any answer.
        if error is NIOSSLError || error is BoringSSLError || (self.waitsForHandshake && !self.answered) {
            self.connection.context.counters.tlsErrors.add(1, ordering: .relaxed)
        }
        context.close(promise: nil)
    }
}
