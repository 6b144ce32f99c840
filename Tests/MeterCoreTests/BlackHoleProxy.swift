import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A loopback TCP proxy whose existing connections can be black-holed: from ``blackHoleExisting()``
/// on, what they carry is dropped in both directions and neither side hears of a close, as when a
/// firewall or NAT on the path loses the flow's state. Connections opened afterwards pass normally.
final class BlackHoleProxy: Sendable {
    let port: Int
    private let group: MultiThreadedEventLoopGroup
    private let server: any Channel
    private let pairs: NIOLockedValueBox<[Pair]>

    /// One client connection and its upstream connection; `dropped` once black-holed.
    final class Pair: Sendable {
        let dropped = NIOLockedValueBox(false)
        let upstream = NIOLockedValueBox<(any Channel)?>(nil)
    }

    init(upstreamPort: Int) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let pairs = NIOLockedValueBox<[Pair]>([])
        self.group = group
        self.pairs = pairs
        self.server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: true)
            .childChannelInitializer { client in
                let pair = Pair()
                pairs.withLockedValue { $0.append(pair) }
                return ClientBootstrap(group: client.eventLoop)
                    .channelInitializer { upstream in
                        upstream.pipeline.addHandler(Forward(to: client, pair: pair))
                    }
                    .connect(host: "127.0.0.1", port: upstreamPort)
                    .flatMap { upstream in
                        pair.upstream.withLockedValue { $0 = upstream }
                        return client.pipeline.addHandler(Forward(to: upstream, pair: pair))
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        self.port = self.server.localAddress!.port!
    }

    /// Black-holes every connection open now.
    func blackHoleExisting() {
        for pair in self.pairs.withLockedValue({ $0 }) { pair.dropped.withLockedValue { $0 = true } }
    }

    /// Runs `body` with a proxy in front of `upstreamPort`, and shuts the proxy down whether the
    /// body passed or threw.
    static func with<T>(upstreamPort: Int, _ body: (BlackHoleProxy) async throws -> T) async throws -> T {
        let proxy = try await BlackHoleProxy(upstreamPort: upstreamPort)
        let value: T
        do {
            value = try await body(proxy)
        } catch {
            try? await proxy.shutdown()
            throw error
        }
        try await proxy.shutdown()
        return value
    }

    func shutdown() async throws {
        try await self.server.close()
        try await self.group.shutdownGracefully()
    }

    /// Copies bytes to the other side, and a close too, unless the pair is black-holed.
    private final class Forward: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let other: any Channel
        let pair: Pair

        init(to other: any Channel, pair: Pair) {
            self.other = other
            self.pair = pair
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !self.pair.dropped.withLockedValue({ $0 }) else { return }
            self.other.writeAndFlush(Self.unwrapInboundIn(data), promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            if !self.pair.dropped.withLockedValue({ $0 }) { self.other.close(promise: nil) }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
