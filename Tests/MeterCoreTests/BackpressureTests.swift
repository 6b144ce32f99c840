import Foundation
import GRDB
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import MeterCore

/// Issue 14: what meterd holds in memory is bounded by its configuration, whatever meters do.
@Suite(.timeLimit(.minutes(2))) struct BackpressureTests {
    /// Most readings the queue may hold: its capacity, plus one submission per event loop thread
    /// that checked for room just before another filled it (see `IngestHandler.linesPerSubmission`).
    static func queueBound(capacity: Int) -> Int {
        capacity + IngestHandler.linesPerSubmission * IngestServer.meterEventLoopCount
    }

    /// Most bytes one connection may hold unparsed: one read plus what the kernel's receive buffer
    /// (Linux doubles `SO_RCVBUF`) hands over at once when the meter half-closes.
    static func heldBytesPerConnection(_ configuration: IngestServerConfiguration = IngestServerConfiguration()) -> Int {
        IngestReceiveBuffers.largeSize + 2 * configuration.receiveBufferSize
    }

    /// Samples queue depth and held bytes every millisecond until told to stop.
    final class Sampler: Sendable {
        private let state = Mutex<(maximumDepth: Int, maximumHeld: Int, samples: Int)>((0, 0, 0))
        private let stopped = Atomic<Bool>(false)

        func run(_ harness: IngestHarness) async {
            // Until stopped, or the test was cancelled (its time limit): a cancelled sleep returns at once.
            while !self.stopped.load(ordering: .relaxed), !Task.isCancelled {
                let depth = harness.pipeline.queueDepth
                let held = harness.pipeline.statistics.heldBytes.load(ordering: .relaxed)
                self.state.withLock { state in
                    state.maximumDepth = max(state.maximumDepth, depth)
                    state.maximumHeld = max(state.maximumHeld, held)
                    state.samples += 1
                }
                try? await Task.sleep(for: .milliseconds(1))
            }
        }

        func stop() -> (maximumDepth: Int, maximumHeld: Int, samples: Int) {
            self.stopped.store(true, ordering: .relaxed)
            return self.state.withLock { $0 }
        }
    }

    @Test func burstingMetersThatHalfCloseNeverPushTheQueuePastItsBound() async throws {
        // Given a small queue, so that 300 meters bursting 1,000 readings each overrun it many times
        let capacity = 2_000
        var configuration = DaemonConfiguration()
        configuration.pipeline = PipelineConfiguration(queueCapacity: capacity, commitInterval: .milliseconds(5), maximumBatch: 1_000)
        let meters = 200, readingsPerMeter = 1_000, resetting = 20
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let sampler = Sampler()
                async let sampling: Void = sampler.run(harness)

                // When each meter writes all its readings as fast as the socket takes them, half-closes,
                // and reads acks until meterd closes; a few reset the connection after writing instead
                let now = WallClock.nowMs()
                let lastAcks = try await withThrowingTaskGroup(of: (String, Int64?).self) { group in
                    for index in 0..<meters + resetting {
                        group.addTask {
                            let meter = index < meters ? "BURST-\(index)" : "RESET-\(index)"
                            var payload = ""
                            payload.reserveCapacity(readingsPerMeter * 110)
                            for seq in 1...readingsPerMeter { payload += readingLine(meter: meter, seq: Int64(seq), kwh: 0.25, timestampMs: now) }
                            let client = try await LineClient(port: harness.port)
                            if index >= meters {
                                async let sent: Void? = try? client.send(payload)
                                try await Task.sleep(for: .milliseconds(Int.random(in: 5...50)))
                                await client.reset()
                                _ = await sent
                                return (meter, nil)
                            }
                            try await client.send(payload)
                            try await client.finishSending()
                            var last: Int64 = 0
                            while let text = try await client.readLine(timeout: .seconds(60)) {
                                guard case .ack(meter, let seq) = try #require(DaemonLine(text)) else { continue }
                                // In order and once: every ack moves the meter's mark forward.
                                #expect(seq > last, "ack \(seq) for \(meter) after \(last)")
                                last = seq
                            }
                            await client.close()
                            return (meter, last)
                        }
                    }
                    var acks: [String: Int64] = [:]
                    for try await (meter, last) in group { if let last { acks[meter] = last } }
                    return acks
                }
                let sampled = sampler.stop()
                await sampling

                // Then every reading of the meters that half-closed was stored once and acked before the close
                #expect(lastAcks.count == meters)
                #expect(lastAcks.values.allSatisfy { $0 == Int64(readingsPerMeter) })
                let (stored, distinct) = try await harness.database.pool.read { db in
                    (
                        try Int.fetchOne(
                            db, sql: "SELECT count(*) FROM reading JOIN meter ON meter.id = reading.meter_id WHERE meter.name LIKE 'BURST-%'")!,
                        try Int.fetchOne(db, sql: "SELECT count(*) FROM (SELECT DISTINCT meter_id, seq FROM reading)")!
                    )
                }
                #expect(stored == meters * readingsPerMeter)
                let total = try await harness.database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")! }
                #expect(distinct == total)
                // And the queue never held more than its bound, nor connections more than their slack
                #expect(sampled.samples > 100)
                #expect(sampled.maximumDepth >= capacity / 2, "the run should have filled the queue")
                #expect(sampled.maximumDepth <= Self.queueBound(capacity: capacity))
                #expect(sampled.maximumHeld <= (meters + resetting) * Self.heldBytesPerConnection())
                // And nothing is left behind by the connections that reset
                try await waitUntil { harness.pipeline.statistics.connections.load(ordering: .relaxed) == 0 }
                #expect(harness.pipeline.statistics.heldBytes.load(ordering: .relaxed) == 0)
                await harness.pipeline.drain()
                #expect(harness.pipeline.queueDepth == 0)
            }
        }
    }

    @Test func aMeterThatNeverReadsItsAcksIsNotReadFromWhileOthersAreServed() async throws {
        var configuration = DaemonConfiguration()
        configuration.pipeline = PipelineConfiguration(queueCapacity: 2_000, commitInterval: .milliseconds(5), maximumBatch: 1_000)
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                // Given a meter (a concentrator of 1,000 meters, so most readings get their own ack)
                // that writes 20,000 readings and reads nothing back
                let deaf = try await AckCounter.connect(port: harness.port)
                let meters = 1_000, total = 20_000
                let now = WallClock.nowMs()
                var payload = ""
                payload.reserveCapacity(total * 110)
                for index in 0..<total {
                    payload += readingLine(meter: "DEAF-\(index % meters)", seq: Int64(index / meters + 1), kwh: 0.25, timestampMs: now)
                }
                let written = deaf.channel.eventLoop.makePromise(of: Void.self)
                deaf.channel.writeAndFlush(ByteBuffer(string: payload), promise: written)
                let writing = written.futureResult

                // When meterd has stopped reading from it
                func storedFromDeaf() async throws -> Int {
                    try await harness.database.pool.read { db in
                        try Int.fetchOne(
                            db, sql: "SELECT count(*) FROM reading JOIN meter ON meter.id = reading.meter_id WHERE meter.name LIKE 'DEAF-%'")!
                    }
                }
                var last = -1
                var steady = 0
                try await waitUntil(timeout: .seconds(60)) {
                    let stored = try await storedFromDeaf()
                    steady = stored == last ? steady + 1 : 0
                    last = stored
                    try await Task.sleep(for: .milliseconds(50))
                    return stored > 0 && steady >= 20  // unchanged for a second
                }
                #expect(last < total, "meterd kept reading from a meter that reads no acks")
                // Then the acks it holds for that meter stay within the write buffer's high water mark
                // plus the acks of readings that were already queued when the channel turned unwritable
                let buffered = try await harness.server.connections.all.asyncMap { receiver in
                    try await receiver.channel.getOption(.bufferedWritableBytes).get()
                }
                #expect(buffered.max()! <= 8_192 + Self.queueBound(capacity: 2_000) * 40)

                // And another meter is served meanwhile
                let other = try await LineClient(port: harness.port)
                try await other.send((1...1_000).map { readingLine(meter: "OTHER", seq: $0) }.joined())
                _ = try await other.collect { lastAck($0, meter: "OTHER") == 1_000 }
                await other.close()

                // And once the deaf meter reads, it gets everything stored and acked, nothing lost
                deaf.startReading()
                try await writing.get()
                try await waitUntil(timeout: .seconds(60)) { deaf.acked(meters: meters) == total / meters }
                #expect(try await storedFromDeaf() == total)
                await deaf.close()
            }
        }
    }
}

/// A meter that reads nothing until told to, then keeps the last ack per meter.
final class AckCounter: Sendable {
    let channel: any Channel

    /// Splits replies into lines on the channel's event loop.
    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        private let sink: AckSink
        private var pending: [UInt8] = []

        init(_ sink: AckSink) {
            self.sink = sink
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = Self.unwrapInboundIn(data)
            self.pending.append(contentsOf: buffer.readBytes(length: buffer.readableBytes) ?? [])
            var start = 0
            var updates: [(String, Int64)] = []
            while let newline = self.pending[start...].firstIndex(of: 0x0A) {
                let line = String(decoding: self.pending[start..<newline], as: UTF8.self)
                start = newline + 1
                if case .ack(let meter, let seq)? = DaemonLine(line) { updates.append((meter, seq)) }
            }
            self.pending.removeFirst(start)
            self.sink.update(updates)
        }
    }

    /// Where the collector puts what it saw.
    private final class AckSink: Sendable {
        let acks = Mutex<[String: Int64]>([:])

        func update(_ updates: [(String, Int64)]) {
            self.acks.withLock { acks in
                for (meter, seq) in updates { acks[meter] = max(acks[meter] ?? 0, seq) }
            }
        }
    }

    private let sink: AckSink

    private init(channel: any Channel, sink: AckSink) {
        self.channel = channel
        self.sink = sink
    }

    /// Connects with a small receive buffer and automatic reads off.
    static func connect(port: Int) async throws -> AckCounter {
        let sink = AckSink()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.autoRead, value: false)
            .channelOption(.socketOption(.so_rcvbuf), value: 4096)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(sink)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return AckCounter(channel: channel, sink: sink)
    }

    func startReading() {
        let channel = self.channel
        channel.setOption(.autoRead, value: true).whenSuccess { channel.read() }
    }

    /// The lowest last ack over `meters` meters (0 while one has none).
    func acked(meters: Int) -> Int64 {
        self.sink.acks.withLock { acks in acks.count < meters ? 0 : acks.values.min() ?? 0 }
    }

    func close() async {
        try? await self.channel.close()
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
