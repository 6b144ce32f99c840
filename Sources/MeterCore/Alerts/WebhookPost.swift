import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A webhook URL taken apart for one HTTP/1.1 POST.
package struct WebhookTarget: Sendable, Hashable, CustomStringConvertible {
    package var url: URL
    package var host: String
    package var port: Int
    /// Path and query, as sent in the request line.
    package var path: String
    package var tls: Bool

    package init?(_ url: URL) {
        guard let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty else {
            return nil
        }
        self.url = url
        // URL keeps the brackets of an IPv6 literal; connect wants the address alone.
        self.host = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        self.tls = scheme == "https"
        self.port = url.port ?? (self.tls ? 443 : 80)
        // As written, percent-escapes kept: the request line must not carry a decoded space.
        let components = URLComponents(url: url, resolvingAgainstBaseURL: false)
        let written = components?.percentEncodedPath ?? ""
        var path = written.isEmpty ? "/" : written
        if let query = components?.percentEncodedQuery { path += "?" + query }
        self.path = path
    }

    /// The URL without user and password, for logs.
    package var description: String { "\(self.tls ? "https" : "http")://\(self.host):\(self.port)\(self.path)" }

    /// Whether the host is an IPv4 or IPv6 address rather than a name.
    var isAddress: Bool {
        if self.host.contains(":") { return true }
        let parts = self.host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }

    /// The `Host` header: the port only when it is not the scheme's own.
    var hostHeader: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return self.port == (self.tls ? 443 : 80) ? host : "\(host):\(self.port)"
    }
}

/// Why a POST did not deliver.
package enum WebhookError: Error, CustomStringConvertible, Equatable {
    case status(Int)
    case noResponse
    case timedOut

    package var description: String {
        switch self {
        case .status(let code): "the webhook answered HTTP \(code)"
        case .noResponse: "the webhook closed the connection without an answer"
        case .timedOut: "the webhook did not answer in time"
        }
    }
}

/// One JSON POST over NIO's HTTP/1.1 client pipeline (TLS through swift-nio-ssl for `https`): a
/// connection per request, closed after the answer. Alerts are rare, so no pooling is worth its code.
enum WebhookPost {
    /// POSTs `body` and returns once the webhook answered 2xx; throws otherwise.
    static func send(
        _ body: String, to target: WebhookTarget, timeout: Duration, tls: NIOSSLContext?,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws {
        let timeAmount = TimeAmount.nanoseconds(timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(timeAmount)
            .connect(host: target.host, port: target.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if target.tls, let tls {
                        // SNI carries names only; an address is verified against the certificate's IP entries.
                        let name = target.isAddress ? nil : target.host
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: name))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
        // One deadline for the whole exchange: closing the channel ends the read below.
        let timedOut = NIOLockedValueBox(false)
        let deadline = channel.channel.eventLoop.scheduleTask(in: timeAmount) {
            timedOut.withLockedValue { $0 = true }
            channel.channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        var status: Int?
        do {
            try await channel.executeThenClose { inbound, outbound in
                var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: target.path)
                let bytes = ByteBuffer(string: body)
                head.headers.add(name: "Host", value: target.hostHeader)
                head.headers.add(name: "User-Agent", value: "meterd/\(MeterdVersion.current)")
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: String(bytes.readableBytes))
                head.headers.add(name: "Connection", value: "close")
                try await outbound.write(.head(head))
                try await outbound.write(.body(.byteBuffer(bytes)))
                try await outbound.write(.end(nil))
                for try await part in inbound {
                    switch part {
                    case .head(let response): status = Int(response.status.code)
                    case .body: continue
                    case .end: return
                    }
                }
            }
        } catch {
            if timedOut.withLockedValue({ $0 }) { throw WebhookError.timedOut }
            throw error
        }
        if timedOut.withLockedValue({ $0 }), status == nil { throw WebhookError.timedOut }
        guard let status else { throw WebhookError.noResponse }
        guard (200..<300).contains(status) else { throw WebhookError.status(status) }
    }
}
