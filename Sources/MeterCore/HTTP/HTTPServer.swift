import Hummingbird
import HummingbirdCore
import HTTPTypes
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

/// Where the HTTP server listens.
package struct HTTPServerConfiguration: Sendable {
    package var host: String
    package var port: Int
    /// A listening socket passed by systemd (`http`), used instead of binding host and port.
    package var inheritedSocket: CInt?
    /// HTTPS (`http_tls_cert`, `http_tls_key`); plain HTTP when `nil`.
    package var tls: IngestTLS?

    package init(host: String = "127.0.0.1", port: Int = 8080, inheritedSocket: CInt? = nil, tls: IngestTLS? = nil) {
        self.host = host
        self.port = port
        self.inheritedSocket = inheritedSocket
        self.tls = tls
    }
}

/// The request context of every meterd route: Hummingbird's core context, plus who asks
/// (set by ``HTTPAccess`` from the session cookie) and from where.
package struct MeterRequestContext: RequestContext {
    package var coreContext: CoreRequestContextStorage
    /// The logged-in user; `nil` when no `http_users` are configured (everyone sees everything)
    /// or on the routes that stay open (`/healthz`, `/readyz`, `/login`).
    package var user: HTTPUser?
    /// The client's IP address, for the login rate limit and the log.
    package let peer: String

    package init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.peer = source.channel.remoteAddress?.ipAddress ?? "unknown"
    }

    /// The one region this request may see, for a region-scoped user; `nil` for all regions.
    package var regionScope: String? { self.user?.scope.region }
}

/// meterd's HTTP server (SPEC.md section 6): a Hummingbird router served over HTTP/1.1, as a
/// `Service` in the daemon's group, on its own socket or one systemd passed.
///
/// Routes live elsewhere and register themselves on the router (``OperationsRoutes`` for
/// `/metrics`, `/healthz`, `/readyz`); test them without a socket through
/// `Application(router:).test(.router)`.
package struct HTTPServer: Service {
    private let configuration: HTTPServerConfiguration
    private let responder: RouterResponder<MeterRequestContext>
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let onListening: @Sendable (SocketAddress) async -> Void

    package init(
        configuration: HTTPServerConfiguration, router: Router<MeterRequestContext>,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
        onListening: @escaping @Sendable (SocketAddress) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        // Routes are fixed from here on: register them all before building the server.
        self.responder = router.buildResponder()
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.onListening = onListening
    }

    package func run() async throws {
        let responder = self.responder
        let logger = self.logger
        let serverName = "meterd/\(MeterdVersion.current)"
        let http = HTTP1Channel(
            responder: { request, responseWriter, channel in
                let context = MeterRequestContext(source: .init(channel: channel, logger: logger))
                var response: Response
                do {
                    response = try await responder.respond(to: request, context: context)
                } catch let error as any HTTPResponseError {
                    // Bad input and unknown paths: the error says which status and body to answer with.
                    response = (try? error.response(from: request, context: context)) ?? Response(status: .internalServerError)
                } catch {
                    // Routes throw HTTPError for bad input; anything else is ours to fix, not the client's.
                    logger.error("HTTP request failed", metadata: ["http.path": "\(request.uri.path)", "error": "\(error)"])
                    response = Response(
                        status: .internalServerError, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: #"{"error":"internal server error"}"#)))
                }
                response.headers[.server] = serverName
                try await responseWriter.write(response: response.head, body: response.body)
            }, configuration: .init(idleTimeout: .seconds(60)))

        let connections = HTTPConnectionRegistry()
        let bootstrap = ServerBootstrap(group: self.eventLoopGroup)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
        let tls = self.configuration.tls
        let initializer: @Sendable (any Channel) -> EventLoopFuture<HTTP1Channel.Value> = { channel in
            connections.insert(channel)
            channel.closeFuture.whenComplete { _ in connections.remove(channel) }
            if let tls {
                // TLS in front of HTTP/1.1, as on the ingest port; a failed handshake closes the connection.
                do {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            return http.setup(channel: channel, logger: logger)
        }
        let server: NIOAsyncChannel<HTTP1Channel.Value, Never>
        if let socket = self.configuration.inheritedSocket {
            server = try await bootstrap.bind(socket, cleanupExistingSocketFile: false, childChannelInitializer: initializer)
        } else {
            server = try await bootstrap.bind(host: self.configuration.host, port: self.configuration.port, childChannelInitializer: initializer)
        }
        let address = server.channel.localAddress!
        self.logger.info(
            "HTTP server listening",
            metadata: [
                "http.address": "\(address)",
                "http.inherited": "\(self.configuration.inheritedSocket != nil)",
                "http.tls": "\(tls != nil)",
            ])
        await self.onListening(address)

        try await withThrowingDiscardingTaskGroup { group in  // reaps finished connections
            // On shutdown the listener closes; connections already accepted still come out of the
            // sequence and are served, never dropped half-made.
            try await withGracefulShutdownHandler {
                try await server.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await http.handle(value: connection, logger: logger) }
                    }
                }
            } onGracefulShutdown: {
                server.channel.close(promise: nil)
            }
            // Idle keep-alive connections close now; busy ones after their current response.
            for channel in connections.all {
                channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            }
        }
        self.logger.info("HTTP server stopped")
    }
}

/// Open HTTP connections, so shutdown can ask each to finish.
private final class HTTPConnectionRegistry: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    func insert(_ channel: any Channel) {
        self.channels.withLock { $0[ObjectIdentifier(channel)] = channel }
    }

    func remove(_ channel: any Channel) {
        _ = self.channels.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    var all: [any Channel] { self.channels.withLock { Array($0.values) } }
}
