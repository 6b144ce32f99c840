import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresNIO

/// A PostgreSQL problem in one line an operator can act on: PostgresNIO's own errors print a
/// generic text on purpose (they may carry data), so meterd says what failed itself.
package struct PostgreSQLStoreError: StoreReachabilityError, CustomStringConvertible {
    package var message: String
    /// The server's SQLSTATE, when the server answered with an error.
    package var sqlState: String?
    /// No connection, or it broke: the server was not reached, or went away mid-statement.
    package var connectionLost: Bool

    package init(_ message: String, sqlState: String? = nil, connectionLost: Bool = false) {
        self.message = message
        self.sqlState = sqlState
        self.connectionLost = connectionLost
    }

    package var description: String { self.message }

    /// Whether the server refused the work because another transaction got there first
    /// (serialization failure, deadlock): the same work may simply be tried again.
    package var isRetryable: Bool { self.sqlState == "40001" || self.sqlState == "40P01" }

    /// The connection failed, or the server said it is starting, stopping or out of connections
    /// (SQLSTATE classes 08 and 57P, and 53300): it will take work again once it is back.
    package var meansStoreUnreachable: Bool {
        if self.connectionLost { return true }
        guard let state = self.sqlState else { return false }
        return state.hasPrefix("08") || state.hasPrefix("57P") || state == "53300"
    }

    /// Describes `error`, which happened while `doing` something with the database at `address`.
    static func describing(_ error: any Error, doing: String, address: PostgreSQLAddress) -> PostgreSQLStoreError {
        if let error = error as? PostgreSQLStoreError { return error }
        guard let error = error as? PSQLError else {
            let network = error is IOError || error is ChannelError || error is NIOConnectionError
            return PostgreSQLStoreError("PostgreSQL at \(address.server): \(doing) failed: \(Self.plain(error))", connectionLost: network)
        }
        if let info = error.serverInfo {
            let state = info[.sqlState]
            let message = info[.message] ?? "error"
            switch state {
            case "28P01", "28000":
                return PostgreSQLStoreError(
                    "PostgreSQL at \(address.server) refused user \(address.user): \(message) (check the password in the store URL)", sqlState: state)
            case "3D000":
                return PostgreSQLStoreError(
                    "PostgreSQL at \(address.server) has no database \(address.database): \(message) (create it, or fix the store URL)",
                    sqlState: state)
            default:
                let detail = info[.detail].map { " (\($0))" } ?? ""
                return PostgreSQLStoreError(
                    "PostgreSQL at \(address.server): \(doing) failed: \(message)\(detail) [SQLSTATE \(state ?? "?")]", sqlState: state)
            }
        }
        switch error.code {
        case .connectionError:
            let underlying = error.underlying.map(Self.plain) ?? "connection failed"
            return PostgreSQLStoreError("cannot connect to PostgreSQL at \(address.server): \(underlying)", connectionLost: true)
        case .serverClosedConnection, .uncleanShutdown:
            return PostgreSQLStoreError("PostgreSQL at \(address.server) closed the connection while \(doing)", connectionLost: true)
        case .clientClosedConnection:
            return PostgreSQLStoreError("the connection to PostgreSQL at \(address.server) is closed (\(doing))", connectionLost: true)
        case .authMechanismRequiresPassword:
            return PostgreSQLStoreError("PostgreSQL at \(address.server) asks user \(address.user) for a password: put it in the store URL")
        default:
            return PostgreSQLStoreError("PostgreSQL at \(address.server): \(doing) failed (\(error.code))")
        }
    }

    /// An error's text without type names: NIO's connect errors read "connection refused" this way.
    private static func plain(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
            return Self.plain(first.error)
        }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) }
        return "\(error)"
    }
}

/// Opens connections to one PostgreSQL database, synchronously (the writer's thread, start-up) or
/// asynchronously (readers).
package struct PostgreSQLConnector: Sendable {
    package let address: PostgreSQLAddress
    let logger: Logger

    package init(address: PostgreSQLAddress, logger: Logger) {
        self.address = address
        self.logger = logger
    }

    var configuration: PostgresConnection.Configuration {
        var configuration: PostgresConnection.Configuration
        if let socketPath = self.address.socketPath {
            configuration = .init(
                unixSocketPath: socketPath, username: self.address.user, password: self.address.password, database: self.address.database)
        } else {
            configuration = .init(
                host: self.address.host, port: self.address.port, username: self.address.user, password: self.address.password,
                database: self.address.database, tls: .disable)
        }
        configuration.options.connectTimeout = .seconds(10)
        // Every commit must be durable before its acks go out, whatever the server's default.
        configuration.options.additionalStartupParameters = [("synchronous_commit", "on"), ("application_name", "meterd")]
        return configuration
    }

    /// The event loop of the writer's connection, a thread of its own, so that a commit's request
    /// and its answer never queue behind the shared loops' work for thousands of meter connections
    /// (the writer commits one batch at a time). Measured alone, in one run of scenario (b), it
    /// made no difference beyond this machine's noise.
    static let writerEventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    /// Connects, blocking the calling thread: never call it from a task or an event loop.
    ///
    /// - Parameter eventLoop: where the connection's I/O runs (default: one of the shared loops).
    func connectBlocking(id: Int, on eventLoop: (any EventLoop)? = nil) throws -> PostgresConnection {
        do {
            return try PostgresConnection.connect(
                on: eventLoop ?? MultiThreadedEventLoopGroup.singleton.any(), configuration: self.configuration, id: id, logger: self.logger
            ).wait()
        } catch {
            throw PostgreSQLStoreError.describing(error, doing: "connecting", address: self.address)
        }
    }

    func connect(id: Int) async throws -> PostgresConnection {
        do {
            return try await PostgresConnection.connect(
                on: MultiThreadedEventLoopGroup.singleton.any(), configuration: self.configuration, id: id, logger: self.logger)
        } catch {
            throw PostgreSQLStoreError.describing(error, doing: "connecting", address: self.address)
        }
    }
}

extension PostgresConnection {
    /// Closes without waiting. The closure holds the connection until it is closed: PostgresNIO
    /// requires a connection to be closed before it is released.
    func closeInBackground() {
        self.close().whenComplete { _ in withExtendedLifetime(self) {} }
    }

    /// Runs a statement and collects its rows, blocking the calling thread (the writer's own).
    func runBlocking(_ query: PostgresQuery, logger: Logger, address: PostgreSQLAddress, doing: String) throws -> [PostgresRow] {
        do {
            return try self.queryFailingOnClose(query, logger: logger).wait().rows
        } catch {
            throw PostgreSQLStoreError.describing(error, doing: doing, address: address)
        }
    }

    /// Runs a statement and collects its rows; fails if the connection closes first.
    func allRows(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow] {
        try await self.queryFailingOnClose(query, logger: logger).get().rows
    }

    /// ``query(_:logger:file:line:)``, failed if the connection was closed before the query reached it.
    ///
    /// PostgresNIO hands a query to its channel without a write promise: a query written just as
    /// the channel closes (the server's error after a statement's answer closes it, say) never
    /// reaches the connection's state machine, and its future would never complete. The write is
    /// done on the event loop, in order: a check queued after it sees whether the channel was
    /// closed by then. A query that did reach the state machine is failed by it on close.
    func queryFailingOnClose(_ query: PostgresQuery, logger: Logger) -> EventLoopFuture<PostgresQueryResult> {
        let promise = self.eventLoop.makePromise(of: PostgresQueryResult.self)
        let settled = NIOLockedValueBox(false)
        let settle: @Sendable (Result<PostgresQueryResult, any Error>) -> Void = { result in
            guard
                settled.withLockedValue({ settled in
                    defer { settled = true }
                    return !settled
                })
            else { return }
            promise.completeWith(result)
        }
        self.query(query, logger: logger).whenComplete(settle)
        self.eventLoop.execute {
            if self.isClosed { settle(.failure(ChannelError.ioOnClosedChannel)) }
        }
        return promise.futureResult
    }
}
