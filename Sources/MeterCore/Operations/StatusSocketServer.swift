#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Where the status socket listens.
package struct StatusSocketConfiguration: Sendable {
    /// Path of the Unix socket; also where an inherited socket is expected to live (for logs).
    package var path: String
    /// A listening socket passed by systemd (`status`), used instead of binding `path`.
    package var inheritedSocket: CInt?
    /// Permissions of a socket meterd binds itself: owner and group may talk to it.
    package var mode: mode_t = 0o660
    /// Longest command line accepted.
    package var maximumLineLength = 4096

    package init(path: String, inheritedSocket: CInt? = nil) {
        self.path = path
        self.inheritedSocket = inheritedSocket
    }
}

/// The operators' Unix stream socket (SPEC.md section 6): one command per line in, one line
/// of JSON per command out.
package struct StatusSocketServer: Service {
    private let configuration: StatusSocketConfiguration
    private let responder: StatusResponder
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let onListening: @Sendable () async -> Void

    package init(
        configuration: StatusSocketConfiguration, responder: StatusResponder,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
        onListening: @escaping @Sendable () async -> Void = {}
    ) {
        self.configuration = configuration
        self.responder = responder
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.onListening = onListening
    }

    /// Checks, before anything starts, that meterd can bind its status socket at `path` without
    /// taking it from a running daemon: binding replaces the file, so a second daemon would
    /// silently take over the first one's socket and delete it when it stops.
    package static func checkPathIsFree(_ path: String) throws(ConfigurationError) {
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.isEmpty ? "/" : directory, isDirectory: &isDirectory) else {
            throw ConfigurationError(key: "status_socket", "cannot use \(path): \(directory): No such file or directory")
        }
        guard isDirectory.boolValue else {
            throw ConfigurationError(key: "status_socket", "cannot use \(path): \(directory) is not a directory")
        }
        let answered = UnixSocketAddress.with(path: path) { address, length -> Bool in
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            return connect(fd, address, length) == 0
        }
        guard let answered else {
            throw ConfigurationError(
                key: "status_socket", "\(path) is \(path.utf8.count) bytes long; a Unix socket path must be at most 107 bytes")
        }
        if answered {
            throw ConfigurationError(
                key: "status_socket", "\(path) is in use by a running daemon; give each meterd its own status socket")
        }
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else { return }  // nothing there yet
        guard attributes[.type] as? FileAttributeType == .typeSocket else {
            throw ConfigurationError(key: "status_socket", "\(path) exists and is not a socket; meterd will not replace it")
        }
    }

    package func run() async throws {
        let maximum = self.configuration.maximumLineLength
        let bootstrap = ServerBootstrap(group: self.eventLoopGroup)
            .serverChannelOption(.backlog, value: 128)
            .childChannelOption(.allowRemoteHalfClosure, value: true)  // a client may shut down writing and still read
        let initializer: @Sendable (any Channel) -> EventLoopFuture<NIOAsyncChannel<StatusLine, ByteBuffer>> = { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(StatusLineDecoder(maximumLength: maximum)))
                return try NIOAsyncChannel<StatusLine, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
        let server: NIOAsyncChannel<NIOAsyncChannel<StatusLine, ByteBuffer>, Never>
        if let socket = self.configuration.inheritedSocket {
            server = try await bootstrap.bind(socket, cleanupExistingSocketFile: false, childChannelInitializer: initializer)
            self.logger.info("Status socket inherited from systemd", metadata: ["status.path": "\(self.configuration.path)"])
        } else {
            let path = self.configuration.path
            server = try await ListenError.naming(setting: "status_socket", address: path) {
                try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true, childChannelInitializer: initializer)
            }
            guard chmod(path, self.configuration.mode) == 0 else {
                let reason = String(cString: strerror(errno))
                try? await server.channel.close()
                throw FileWriteError(path: path, reason: "cannot set the status socket's mode: \(reason)")
            }
            self.logger.info("Status socket listening", metadata: ["status.path": "\(path)"])
        }
        // Also when the group is cancelled (another listener failed to bind): no stale file is left.
        defer { if self.configuration.inheritedSocket == nil { unlink(self.configuration.path) } }
        await self.onListening()

        try await withThrowingDiscardingTaskGroup { group in  // reaps finished connections
            // On shutdown the listener closes; connections already accepted still come out of the
            // sequence and are each handled (and closed), never dropped half-made.
            try await withGracefulShutdownHandler {
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        group.addTask { await self.handle(connection) }
                    }
                }
            } onGracefulShutdown: {
                server.channel.close(promise: nil)
            }
        }
        self.logger.info("Status socket closed")
    }

    /// Serves one operator connection. Never throws: one bad client must not stop the server.
    func handle(_ connection: NIOAsyncChannel<StatusLine, ByteBuffer>) async {
        do {
            try await connection.executeThenClose { lines, answers in
                for try await line in lines.cancelOnGracefulShutdown() {
                    var answer: String
                    switch line {
                    case .command(let text):
                        answer = await self.responder.answer(text)
                    case .tooLong:
                        answer = JSONValue.error("malformed_command", "command longer than \(self.configuration.maximumLineLength) bytes").serialized
                    case .invalidUTF8:
                        answer = JSONValue.error("malformed_command", "command is not valid UTF-8").serialized
                    }
                    // One answer, one line, whatever an engine hands back.
                    answer.removeAll { $0 == "\n" || $0 == "\r" }
                    answer += "\n"
                    try await answers.write(ByteBuffer(string: answer))
                }
            }
        } catch {
            self.logger.debug("Status connection failed", metadata: ["error": "\(error)"])
        }
    }
}

/// One line a status client sent.
enum StatusLine: Sendable, Equatable {
    case command(String)
    case tooLong
    case invalidUTF8
}

/// Splits status commands at `\n` (a trailing `\r` is dropped); bounds every line.
struct StatusLineDecoder: ByteToMessageDecoder {
    typealias InboundOut = StatusLine
    let maximumLength: Int
    private var discarding = false

    init(maximumLength: Int) {
        self.maximumLength = maximumLength
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > self.maximumLength + 1 {
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                if !self.discarding {
                    self.discarding = true
                    context.fireChannelRead(Self.wrapInboundOut(.tooLong))
                }
            }
            return .needMoreData
        }
        let length = newline - buffer.readerIndex
        var bytes = buffer.readBytes(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        if self.discarding {
            self.discarding = false
            return .continue
        }
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        if bytes.count > self.maximumLength {
            context.fireChannelRead(Self.wrapInboundOut(.tooLong))
        } else if let text = String(validating: bytes, as: UTF8.self) {
            let trimmed = text.trimmingSpaces
            if !trimmed.isEmpty { context.fireChannelRead(Self.wrapInboundOut(.command(trimmed))) }
        } else {
            context.fireChannelRead(Self.wrapInboundOut(.invalidUTF8))
        }
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A last command without its newline still gets its answer.
        if buffer.readableBytes > 0, !self.discarding {
            buffer.writeInteger(UInt8(ascii: "\n"))
            return try self.decode(context: context, buffer: &buffer)
        }
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        return .needMoreData
    }
}

extension String {
    /// Without leading and trailing spaces and tabs.
    var trimmingSpaces: String {
        let scalars = self.unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" }),
            let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" })
        else { return "" }
        return String(scalars[first...last])
    }
}
