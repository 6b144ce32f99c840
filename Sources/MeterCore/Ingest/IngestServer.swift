import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

/// Where and how the ingest listener accepts meters.
package struct IngestServerConfiguration: Sendable {
    package var host: String
    package var port: Int
    package var limits: LineLimits
    package var maximumKwh: Double
    /// A `register_kwh` at or above this cannot be on a meter (`10^register_digits`).
    package var registerCapacity: Double
    /// Connections beyond this are told `too_many_connections` and closed.
    package var maximumConnections: Int
    /// A listening socket passed by systemd (`ingest`), used instead of binding host and port.
    package var inheritedSocket: CInt?
    /// `SO_RCVBUF` of every meter connection, in bytes (Linux doubles it for its bookkeeping).
    ///
    /// It bounds what one connection can make meterd hold beyond the queue: once a meter
    /// half-closes, NIO reads everything in the kernel's receive buffer at once, back-pressure or
    /// not, and the kernel's default autotuning lets that buffer grow to 128 KB-32 MB.
    package var receiveBufferSize: Int
    /// TLS for every connection (`ingest_tls_cert`, `ingest_tls_key`, `ingest_tls_client_ca`); `nil` is plain TCP.
    package var tls: IngestTLS?
    /// `meter_auth`: with `.certificate`, a connection sends only for the meters its client
    /// certificate covers (needs ``tls`` with a client CA).
    package var meterAuth: MeterAuthMode
    /// Which meters each data concentrator covers, for `meter_auth = certificate`.
    package var concentrators: ConcentratorDirectory

    package init(
        host: String = "127.0.0.1", port: Int = 7700, limits: LineLimits = LineLimits(), maximumKwh: Double = 1_000,
        maximumConnections: Int = 50_000, inheritedSocket: CInt? = nil, receiveBufferSize: Int = 2048,
        tls: IngestTLS? = nil, meterAuth: MeterAuthMode = .none, concentrators: ConcentratorDirectory = ConcentratorDirectory(),
        registerCapacity: Double = 1_000_000
    ) {
        self.tls = tls
        self.meterAuth = meterAuth
        self.concentrators = concentrators
        self.host = host
        self.port = port
        self.limits = limits
        self.maximumKwh = maximumKwh
        self.registerCapacity = registerCapacity
        self.maximumConnections = maximumConnections
        self.inheritedSocket = inheritedSocket
        self.receiveBufferSize = receiveBufferSize
    }
}

/// The TCP listener meters push readings to (SPEC.md section 2).
///
/// On graceful shutdown it stops accepting, stops reading, waits until the pipeline has
/// committed and acknowledged everything received, then closes each connection after its last ack.
package struct IngestServer: Service {
    private let configuration: IngestServerConfiguration
    private let pipeline: IngestPipeline
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let onListening: @Sendable (SocketAddress) async -> Void
    /// Internal rather than private so tests can look at each connection's channel.
    let connections = ConnectionRegistry()

    /// The event loops meter connections run on, apart from HTTP's and the status socket's: one
    /// per core but one, which the writer thread needs at every commit (at least one).
    ///
    /// On two cores one loop and the writer each have a core. With a loop per core, the two
    /// loops and the writer took turns on two cores: each loop slept and woke more often with fewer
    /// events per wakeup, and the connections' NIO objects moved between the cores' caches.
    /// Scenario (b) with one loop instead of two cost 6–14 % less CPU per reading in every pair of
    /// runs; (a) stayed within its run-to-run spread (README, Performance).
    package static let meterEventLoops = MultiThreadedEventLoopGroup(numberOfThreads: meterEventLoopCount)
    package static let meterEventLoopCount = max(1, System.coreCount - 1)

    /// The listener's and the meter connections' options, without handlers: meterd's, and
    /// `meter-bench ack-floor`'s, which measures what SwiftNIO costs with exactly these.
    package static func meterBootstrap(group: any EventLoopGroup, receiveBufferSize: Int) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)  // restart without waiting out TIME_WAIT
            .serverChannelOption(.backlog, value: 4096)
            // A busy loop otherwise accepts only a few meters per pass: 10 k reconnecting meters would queue.
            .serverChannelOption(.maxMessagesPerRead, value: 256)
            // Accepted sockets inherit it (and the handshake's window respects it); set on the
            // listener so a socket passed by systemd gets it too. See receiveBufferSize.
            .serverChannelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBufferSize))
            // Acks are ~40 bytes a meter a commit: 32 KB (64 KB in the kernel) is plenty, and a
            // meter that reads none cannot pin the 4 MB that send-buffer autotuning would grow to.
            .serverChannelOption(.socketOption(.so_sndbuf), value: 32 * 1024)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            // A meter that does not read its acks: the channel turns unwritable after 8 KB of acks
            // the kernel would not take, and IngestHandler stops reading from it until it drains
            // (NIO's default of 64 KB would be 640 MB at 10 k such meters).
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 2048, high: 8192))
            // One read per readiness, into a buffer NIO does not keep unless it is the first, small
            // one: see IngestReceiveBuffers. At 10,000 connections what NIO keeps is resident memory.
            .childChannelOption(.recvAllocator, value: IngestReceiveBuffers())
            .childChannelOption(.maxMessagesPerRead, value: 1)
    }

    package init(
        configuration: IngestServerConfiguration, pipeline: IngestPipeline,
        eventLoopGroup: any EventLoopGroup = IngestServer.meterEventLoops, logger: Logger,
        onListening: @escaping @Sendable (SocketAddress) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.pipeline = pipeline
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.onListening = onListening
    }

    package func run() async throws {
        let parser = ReadingParser(maximumKwh: self.configuration.maximumKwh, registerCapacity: self.configuration.registerCapacity)
        let limits = self.configuration.limits
        let pipeline = self.pipeline
        let statistics = pipeline.statistics
        let connections = self.connections
        let maximumConnections = self.configuration.maximumConnections
        let logger = self.logger
        let tls = self.configuration.tls
        let concentrators = self.configuration.concentrators
        let authorizes = self.configuration.meterAuth == .certificate
        let shared = IngestHandler.Shared(pipeline: pipeline, parser: parser, limits: limits, statistics: statistics, logger: logger) { event in
            switch event {
            case .opened(let receiver): connections.insert(receiver)
            case .closed(let receiver): connections.remove(receiver)
            }
        }
        let bootstrap = Self.meterBootstrap(group: self.eventLoopGroup, receiveBufferSize: self.configuration.receiveBufferSize)
            .childChannelInitializer { channel in
                if statistics.connections.load(ordering: .relaxed) >= maximumConnections {
                    statistics.refusedConnections.add(1, ordering: .relaxed)
                    return channel.eventLoop.makeCompletedFuture {
                        // Over TLS the refusal goes out once the handshake is done; the handshake
                        // deadline closes a connection that never gets there (it holds no slot, but an fd).
                        if let tls {
                            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
                            try channel.pipeline.syncOperations.addHandler(
                                IngestTLSPeerHandler(statistics: statistics, handshakeTimeout: tls.handshakeTimeout, logger: logger))
                        }
                        try channel.pipeline.syncOperations.addHandler(RefuseConnectionHandler())
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    // TLS goes in front of the line handler and changes nothing behind it: IngestHandler
                    // sees plaintext reads and its read() still gates the socket's reads (NIOSSL passes
                    // read() through), so back-pressure and the memory bound work as over plain TCP.
                    if let tls {
                        // The context current now: a reload (SIGHUP) affects only later connections.
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
                        try channel.pipeline.syncOperations.addHandler(
                            IngestTLSPeerHandler(statistics: statistics, handshakeTimeout: tls.handshakeTimeout, logger: logger))
                    }
                    let handler = IngestHandler(
                        shared: shared, authorization: authorizes ? ConnectionAuthorization(directory: concentrators) : nil)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let server: any Channel
        if let socket = self.configuration.inheritedSocket {
            server = try await bootstrap.withBoundSocket(socket).get()
        } else {
            server = try await ListenError.naming(
                setting: "ingest", address: ListenError.address(host: self.configuration.host, port: self.configuration.port)
            ) {
                try await bootstrap.bind(host: self.configuration.host, port: self.configuration.port).get()
            }
        }
        let address = server.localAddress!
        self.logger.info("Ingest server listening", metadata: ["ingest.address": "\(address)"])
        await self.onListening(address)
        let idleSweep = IdleConnectionSweep.start(connections, idleTimeout: limits.idleTimeout, on: server.eventLoop)

        // Returns on graceful shutdown; throws on cancellation, which ends the same way, faster.
        try? await gracefulShutdown()
        self.logger.info("Ingest server stopping: committing and acknowledging what was received")
        idleSweep.cancel()
        try? await server.close()
        // Held bytes go to the pipeline in stopReading(): wait for that before draining it.
        let stopping = connections.all.map { receiver in
            let handler = receiver.handler
            return receiver.channel.eventLoop.submit { handler.value?.stopReading() }
        }
        for future in stopping { try? await future.get() }
        await pipeline.drainForStop()
        let closing = connections.all.map { receiver in
            let handler = receiver.handler
            return receiver.channel.eventLoop.submit { handler.value?.finish() }.flatMap { receiver.channel.closeFuture }
        }
        for future in closing { try? await future.get() }
        self.logger.info("Ingest server stopped")
    }
}

/// Tells a meter beyond the connection limit so, then closes.
private final class RefuseConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(ByteBuffer(string: #"{"error":"too_many_connections"}"# + "\n"))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// The live connections, so shutdown can reach each one.
final class ConnectionRegistry: Sendable {
    private let receivers = NIOLockedValueBox<[ObjectIdentifier: ConnectionAckReceiver]>([:])

    func insert(_ receiver: ConnectionAckReceiver) {
        self.receivers.withLockedValue { $0[ObjectIdentifier(receiver)] = receiver }
    }

    func remove(_ receiver: ConnectionAckReceiver) {
        _ = self.receivers.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(receiver)) }
    }

    var all: [ConnectionAckReceiver] {
        self.receivers.withLockedValue { Array($0.values) }
    }
}

/// Closes connections that sent nothing for `idle_timeout`, checking them all every eighth of it
/// (at least every minute), so a connection is closed between one and 1⅛ timeouts after its last
/// read. One repeated task for the server instead of a timer per connection: each timer was a
/// scheduled task, its closure and promise, and a slot in its loop's timer heap, about 250 bytes
/// of every connection's resident memory (heaptrack, 10,000 connections).
enum IdleConnectionSweep {
    static func interval(for idleTimeout: TimeAmount) -> TimeAmount {
        .nanoseconds(min(max(idleTimeout.nanoseconds / 8, 100_000_000), 60_000_000_000))
    }

    static func start(_ connections: ConnectionRegistry, idleTimeout: TimeAmount, on loop: any EventLoop) -> RepeatedTask {
        let interval = Self.interval(for: idleTimeout)
        return loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let now = NIODeadline.now()
            var byLoop: [ObjectIdentifier: (loop: any EventLoop, handlers: [NIOLoopBoundBox<IngestHandler?>])] = [:]
            for receiver in connections.all {
                let loop = receiver.channel.eventLoop
                byLoop[ObjectIdentifier(loop), default: (loop, [])].handlers.append(receiver.handler)
            }
            for (_, group) in byLoop {
                let handlers = group.handlers
                group.loop.execute {
                    for handler in handlers { handler.value?.closeIfIdle(now: now) }
                }
            }
        }
    }
}
