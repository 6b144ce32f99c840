import Hummingbird
import HummingbirdCore
import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
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

    /// Set when ``HTTPServer`` only asks whether a path has a route for a method (for `405` and
    /// `Allow`): ``RouteProbeMiddleware`` answers before any route runs.
    var probesRoute = false
}

/// Answers a route probe (``MeterRequestContext/probesRoute``) without running the route: `204`
/// when the path and method have a route, `404` when not, or only a catch-all (`api/**`, whose
/// answer is a 404 itself). Added first, so it runs before the rest.
package struct RouteProbeMiddleware: RouterMiddleware {
    package typealias Context = MeterRequestContext

    package init() {}

    package func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard context.probesRoute else { return try await next(request, context) }
        guard let route = context.endpointPath, !route.hasSuffix("**") else { return Response(status: .notFound) }
        return Response(status: .noContent)
    }
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
                    response = try await Self.answer(request, context: context, responder: responder)
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
            return http.setup(channel: channel, logger: logger).flatMapThrowing { value in
                let operations = channel.pipeline.syncOperations
                let decoder = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
                try operations.addHandler(HTTPConnectionCloseHandler(), position: .after(decoder))
                return value
            }
        }
        let server: NIOAsyncChannel<HTTP1Channel.Value, Never>
        if let socket = self.configuration.inheritedSocket {
            server = try await bootstrap.bind(socket, cleanupExistingSocketFile: false, childChannelInitializer: initializer)
        } else {
            server = try await ListenError.naming(
                setting: "http", address: ListenError.address(host: self.configuration.host, port: self.configuration.port)
            ) {
                try await bootstrap.bind(host: self.configuration.host, port: self.configuration.port, childChannelInitializer: initializer)
            }
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

extension HTTPServer {
    /// The methods a path may be asked with, besides the request's own, when it has no route for that one.
    private static let probedMethods: [HTTPRequest.Method] = [.get, .post]

    /// The router's answer, except that a path without a route for the request's method answers
    /// `405` with `Allow` when it has one for another, and an unknown path `404`, both with a JSON
    /// body like every other error (`{"error":…,"message":…}`).
    static func answer(
        _ request: Request, context: MeterRequestContext, responder: RouterResponder<MeterRequestContext>
    ) async throws -> Response {
        let response = try await responder.respond(to: request, context: context)
        // A route's own 404 (an unknown meter) has a body; the router's has none.
        guard response.status == .notFound, response.body.contentLength == 0 else { return response }
        let path = request.uri.path
        var allowed: [HTTPRequest.Method] = []
        for method in Self.probedMethods where method != request.method {
            var probe = context
            probe.probesRoute = true
            // Its own endpoint box: the request's was written while it was answered (a file
            // middleware marks a miss "NotFound"), and the box is shared by every copy of the context.
            probe.coreContext.endpointPath = EndpointPath()
            let head = HTTPRequest(method: method, scheme: nil, authority: nil, path: request.head.path)
            if try await responder.respond(to: Request(head: head, body: .init(buffer: ByteBuffer())), context: probe).status == .noContent {
                // HEAD runs the GET route: its empty 404 is the route's own answer, without the body.
                if request.method == .head, method == .get { return response }
                allowed.append(method)
                if method == .get { allowed.append(.head) }
            }
        }
        guard !allowed.isEmpty else {
            return DashboardError.notFound("No such page or API route: \(path)").plainResponse
        }
        let methods = allowed.map(\.rawValue).joined(separator: ", ")
        var refusal = DashboardError(
            .methodNotAllowed, code: "method_not_allowed", message: "\(request.method.rawValue) is not allowed on \(path); use \(methods)"
        ).plainResponse
        refusal.headers[.allow] = methods
        return refusal
    }
}

/// Ends the connection after the response to a request that asks for that: HTTP/1.0 without
/// `Connection: keep-alive`, or `Connection: close` in any spelling. Hummingbird closes only on the
/// exact header `Connection: close`, so without this an HTTP/1.0 client (ApacheBench, old probes)
/// waits for the idle timeout after every response.
final class HTTPConnectionCloseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = Self.unwrapInboundIn(data), !head.isKeepAlive, head.headers["connection"] != ["close"] else {
            context.fireChannelRead(data)
            return
        }
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.fireChannelRead(Self.wrapInboundOut(.head(head)))
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
