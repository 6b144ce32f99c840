import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Testing

@testable import MeterCore

/// A fresh directory under /tmp, removed after the body.
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = NSTemporaryDirectory() + "meterd-test-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

/// Polls a condition every `interval` until it holds; never a fixed sleep.
/// A condition that never holds is recorded at the caller's line, with `detail()` (what was last
/// seen) when the caller gives one.
func waitUntil(
    timeout: Duration = .seconds(20), interval: Duration = .milliseconds(10), sourceLocation: SourceLocation = #_sourceLocation,
    detail: () -> String = { "" }, _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            let seen = detail()
            let comment: Comment = seen.isEmpty ? "condition not met within \(timeout)" : "condition not met within \(timeout): \(seen)"
            Issue.record(comment, sourceLocation: sourceLocation)
            throw CancellationError()
        }
        try await Task.sleep(for: interval)
    }
}

let testLogger: Logger = {
    var logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
    logger.logLevel = .critical
    return logger
}()

/// An in-process pipeline and ingest server on an ephemeral port over a real SQLite file.
struct IngestHarness {
    let database: MeterDatabase
    let pipeline: IngestPipeline
    let server: IngestServer
    let port: Int
    /// The listener's TLS, when the configuration names certificate files.
    let tls: IngestTLS?

    /// Runs the body against a live server, then shuts it down gracefully.
    ///
    /// TLS and `meter_auth` come from the configuration's `ingest_tls_*` and `meter_auth` settings;
    /// `concentrators` is the ingest side's copy of `concentrators.csv`.
    static func with<T>(
        directory: String,
        configuration: DaemonConfiguration = DaemonConfiguration(),
        concentrators: ConcentratorDirectory = ConcentratorDirectory(),
        tlsHandshakeTimeout: TimeAmount = .seconds(10),
        _ body: (IngestHarness) async throws -> T
    ) async throws -> T {
        try configuration.validateSecurity()
        let tls = try configuration.ingestTLSFiles.map { files throws(ConfigurationError) in
            try IngestTLS(files: files, handshakeTimeout: tlsHandshakeTimeout)
        }
        let database = try MeterDatabase(path: directory + "/meterd.sqlite", durability: configuration.durability)
        let writer = try IngestWriter(
            database: database, calendar: MonthCalendar(timeZone: configuration.timeZone),
            tariff: configuration.tariff, unknownMeters: configuration.unknownMeters, metering: configuration.metering)
        let pipeline = IngestPipeline(writer: writer, configuration: configuration.pipeline, logger: testLogger)
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        let server = IngestServer(
            configuration: IngestServerConfiguration(
                host: "127.0.0.1", port: 0, limits: configuration.ingestLimits,
                maximumKwh: configuration.maximumKwh, maximumConnections: configuration.maximumConnections,
                tls: tls, meterAuth: configuration.meterAuth, concentrators: concentrators,
                registerCapacity: configuration.metering.registerCapacity),
            pipeline: pipeline, logger: testLogger, onListening: { portSink.yield($0.port!) })
        return try await withRunningServices([pipeline, server]) {
            var iterator = ports.makeAsyncIterator()
            let port = try #require(await iterator.next())
            return try await body(IngestHarness(database: database, pipeline: pipeline, server: server, port: port, tls: tls))
        }
    }
}

/// Runs `services` in a service group around `body`, then shuts them down gracefully, whether
/// `body` returned or threw.
func withRunningServices<T>(_ services: [any Service], _ body: () async throws -> T) async throws -> T {
    let group = ServiceGroup(services: services, logger: testLogger)
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        do {
            let result = try await body()
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
    }
}

/// A TCP client speaking lines, like a meter.
final class LineClient: Sendable {
    private let channel: any Channel
    private nonisolated(unsafe) var iterator: AsyncStream<String>.Iterator
    private let failure = NIOLockedValueBox<(any Error)?>(nil)

    /// Splits what the daemon sends into lines.
    private final class LineCollector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        private let sink: AsyncStream<String>.Continuation
        private let failure: @Sendable (any Error) -> Void
        private var pending: [UInt8] = []

        init(sink: AsyncStream<String>.Continuation, failure: @escaping @Sendable (any Error) -> Void) {
            self.sink = sink
            self.failure = failure
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.failure(error)
            context.close(promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = Self.unwrapInboundIn(data)
            self.pending.append(contentsOf: buffer.readBytes(length: buffer.readableBytes) ?? [])
            while let newline = self.pending.firstIndex(of: 0x0A) {
                self.sink.yield(String(decoding: self.pending[..<newline], as: UTF8.self))
                self.pending.removeSubrange(...newline)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.sink.finish()
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? ChannelEvent, event == .inputClosed { self.sink.finish() }
        }
    }

    /// - Parameter tls: speaks TLS with this client context (its trust roots and client certificate).
    init(port: Int, host: String = "127.0.0.1", tls: NIOSSLContext? = nil) async throws {
        let (lines, sink) = AsyncStream.makeStream(of: String.self)
        self.iterator = lines.makeAsyncIterator()
        let failure = self.failure
        self.channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        // 127.0.0.1: no SNI; the server certificate is checked against its IP SANs.
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil))
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        LineCollector(sink: sink, failure: { error in failure.withLockedValue { $0 = $0 ?? error } }))
                }
            }
            .connect(host: host, port: port).get()
    }

    /// The first error the connection saw (a failed TLS handshake, a reset), if any.
    var error: (any Error)? { self.failure.withLockedValue { $0 } }

    func send(_ text: String) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(string: text))
    }

    /// Writes the lines `interval` apart, timed by the client's event loop: on a loaded machine
    /// the test's own tasks can stall for seconds, which a meter that must look busy cannot afford.
    func sendPaced(_ lines: [String], every interval: TimeAmount) async throws {
        let channel = self.channel
        var written = channel.eventLoop.makeSucceededVoidFuture()
        for (index, line) in lines.enumerated() {
            written = written.flatMap {
                channel.eventLoop.flatScheduleTask(in: index == 0 ? .zero : interval) {
                    channel.writeAndFlush(ByteBuffer(string: line))
                }.futureResult
            }
        }
        try await written.get()
    }

    func send(bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    /// The next line from the daemon, or `nil` once the connection is closed.
    func readLine(timeout: Duration = .seconds(20)) async throws -> String? {
        try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask { [self] in
                var iterator = self.iterator
                let line = await iterator.next()
                self.iterator = iterator
                return line
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw CancellationError()
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
    }

    /// Half-closes: the daemon sees end of input, answers what it got, then closes.
    func finishSending() async throws {
        try await self.channel.close(mode: .output)
    }

    func close() async {
        try? await self.channel.close()
    }

    /// Resets the connection (RST, not FIN), like a meter losing power mid-stream.
    func reset() async {
        if let provider = self.channel as? any SocketOptionProvider {
            try? await provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
        }
        try? await self.channel.close()
    }
}

/// A meter that sends a reading every 5 ms on `client` (seq 1, 2, …) until the task is cancelled.
func keepSending(_ client: LineClient, meter: String) -> Task<Void, any Error> {
    Task {
        var seq: Int64 = 0
        while !Task.isCancelled {
            seq += 1
            try await client.send(readingLine(meter: meter, seq: seq, kwh: 0.5))
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// A reading line for tests, `ts` now unless given.
func readingLine(
    meter: String, seq: Int64, kwh: Double = 0.5, timestampMs: Int64 = WallClock.nowMs(),
    status: MeterHealth = .good, fault: String? = nil
) -> String {
    Reading(meter: meter, seq: seq, timestampMs: timestampMs, kwh: kwh, status: status, fault: fault).line
}

/// Whether two KPI documents hold the same figures: the same keys and texts, numbers equal to
/// 1e-9 relative (SQL sums floating-point amounts in whatever order it reads the rows).
func sameFigures(_ lhs: String, _ rhs: String) throws -> Bool {
    func same(_ a: Any, _ b: Any) -> Bool {
        switch (a, b) {
        case (let a as [String: Any], let b as [String: Any]): a.keys.sorted() == b.keys.sorted() && a.allSatisfy { same($1, b[$0]!) }
        case (let a as [Any], let b as [Any]): a.count == b.count && zip(a, b).allSatisfy(same)
        case (let a as NSNumber, let b as NSNumber): abs(a.doubleValue - b.doubleValue) <= 1e-9 * max(1, abs(a.doubleValue))
        case (let a as String, let b as String): a == b
        case (is NSNull, is NSNull): true
        default: false
        }
    }
    return same(try JSONSerialization.jsonObject(with: Data(lhs.utf8)), try JSONSerialization.jsonObject(with: Data(rhs.utf8)))
}
