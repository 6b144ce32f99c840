import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
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
        if let error = error as? PostgreSQLQueryTimedOut {
            return PostgreSQLStoreError(
                "PostgreSQL at \(address.server): \(doing) got no answer within \(error.seconds) s; meterd closed the connection and opens a new one",
                connectionLost: true)
        }
        guard let error = error as? PSQLError else {
            let network = error is IOError || error is ChannelError || error is NIOConnectionError
            return PostgreSQLStoreError("PostgreSQL at \(address.server): \(doing) failed: \(Self.plain(error))", connectionLost: network)
        }
        if let info = error.serverInfo {
            let state = info[.sqlState]
            let message = info[.message] ?? "error"
            switch state {
            case "28000" where message.contains("pg_hba.conf"):
                let hint =
                    address.tls.mode == .disable || address.socketPath != nil
                    ? "if it takes only TLS connections (hostssl), use TCP with sslmode=require or verify-full"
                    : "check its pg_hba.conf for this user, database and address"
                return PostgreSQLStoreError("PostgreSQL at \(address.server) refused user \(address.user): \(message) (\(hint))", sqlState: state)
            case "28000" where message.hasPrefix("role ") && message.hasSuffix(" does not exist"):
                return PostgreSQLStoreError(
                    "PostgreSQL at \(address.server) refused user \(address.user): \(message) (check the user name in the store URL, or create the role)",
                    sqlState: state)
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
        case .sslUnsupported:
            return PostgreSQLStoreError(
                "PostgreSQL at \(address.server) does not take TLS connections, and the store URL's sslmode=\(address.tls.mode.rawValue) requires TLS (turn ssl on in the server's postgresql.conf, or set sslmode=prefer or disable)"
            )
        case .connectionError where error.underlying.map(Self.isTLSFailure) == true, .failedToAddSSLHandler:
            let detail = error.underlying.map(Self.tlsReason) ?? "TLS could not be set up"
            return PostgreSQLStoreError(
                "cannot connect to PostgreSQL at \(address.server): the TLS handshake failed (\(detail)); with sslmode=\(address.tls.mode.rawValue) the server's certificate must \(address.tls.mode == .verifyFull ? "name \(address.host) and " : "")chain to \(address.tls.rootCertificate.map { "sslrootcert=\($0)" } ?? "a CA the system trusts")",
                connectionLost: true)
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

    /// Whether a connection failed in its TLS handshake (an untrusted or misnamed certificate).
    private static func isTLSFailure(_ error: any Error) -> Bool {
        error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError
    }

    /// BoringSSL's reason (`CERTIFICATE_VERIFY_FAILED`) rather than its error stack with file paths.
    private static func tlsReason(_ error: any Error) -> String {
        let text = "\(error)"
        guard let range = text.range(of: "OPENSSL_internal:[A-Z_]+", options: .regularExpression) else { return text }
        return String(text[range].dropFirst("OPENSSL_internal:".count))
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
    let timeouts: PostgreSQLTimeouts
    let configuration: PostgresConnection.Configuration

    /// Reads the TLS files the address names: one that cannot be used throws, naming it.
    package init(address: PostgreSQLAddress, logger: Logger, timeouts: PostgreSQLTimeouts = PostgreSQLTimeouts()) throws(PostgreSQLStoreError) {
        self.address = address
        self.logger = logger
        self.timeouts = timeouts
        var configuration: PostgresConnection.Configuration
        if let socketPath = address.socketPath {
            configuration = .init(unixSocketPath: socketPath, username: address.user, password: address.password, database: address.database)
        } else {
            configuration = .init(
                host: address.host, port: address.port, username: address.user, password: address.password,
                database: address.database, tls: try Self.connectionTLS(address.tls))
        }
        configuration.options.connectTimeout = .seconds(10)
        // Every commit must be durable before its acks go out, whatever the server's default.
        configuration.options.additionalStartupParameters = [("synchronous_commit", "on"), ("application_name", "meterd")]
        self.configuration = configuration
    }

    /// PostgresNIO's TLS setting for libpq's `sslmode` and its files.
    static func connectionTLS(_ tls: PostgreSQLTLS) throws(PostgreSQLStoreError) -> PostgresConnection.Configuration.TLS {
        if tls.mode == .disable { return .disable }
        var configuration = TLSConfiguration.makeClientConfiguration()
        switch tls.mode {
        case .disable, .prefer:
            configuration.certificateVerification = .none
        case .require:
            // libpq: with a root certificate named, require checks the chain like verify-ca.
            configuration.certificateVerification = tls.rootCertificate == nil ? .none : .noHostnameVerification
        case .verifyCA:
            configuration.certificateVerification = .noHostnameVerification
        case .verifyFull:
            configuration.certificateVerification = .fullVerification
        }
        func unusable(_ parameter: String, _ file: PEMFile.Unusable) -> PostgreSQLStoreError {
            PostgreSQLStoreError("store URL: \(parameter)=\(file)")
        }
        if let path = tls.rootCertificate {
            do throws(PEMFile.Unusable) {
                configuration.trustRoots = .certificates(try PEMFile.certificates(at: path))
            } catch {
                throw unusable("sslrootcert", error)
            }
        }
        if let certificate = tls.clientCertificate, let key = tls.clientKey {
            do throws(PEMFile.Unusable) {
                configuration.certificateChain = try PEMFile.certificates(at: certificate).map { .certificate($0) }
            } catch {
                throw unusable("sslcert", error)
            }
            do throws(PEMFile.Unusable) {
                configuration.privateKey = .privateKey(try PEMFile.privateKey(at: key))
            } catch {
                throw unusable("sslkey", error)
            }
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw PostgreSQLStoreError("store URL: the TLS settings cannot be used (\(error)); check sslcert and sslkey belong together")
        }
        return tls.mode == .prefer ? .prefer(context) : .require(context)
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

    /// Runs a statement and collects its rows; fails if the connection closes first, if no answer
    /// came within `timeout`, or if the task is cancelled (shutdown): that closes the connection,
    /// whose protocol state is then unknown, rather than wait out a query the network black-holed.
    func allRows(_ query: PostgresQuery, logger: Logger, timeout: TimeAmount? = nil) async throws -> [PostgresRow] {
        try await self.fold(query, logger: logger, timeout: timeout, into: [PostgresRow](), RowFold.append)
    }

    /// Runs a statement and folds each row into `state` as it arrives, on the connection's event
    /// loop: a load of millions of rows holds none of them, and the network is read no faster than
    /// `fold` takes them. Fails as ``allRows(_:logger:timeout:)`` does; `timeout` bounds the
    /// wait for each next row, so a long answer that keeps coming is not cut off.
    func fold<State>(
        _ query: PostgresQuery, logger: Logger, timeout: TimeAmount? = nil, into state: State,
        _ fold: @escaping (inout State, PostgresRow) throws -> Void
    ) async throws -> sending State {
        let folding = RowFold(state: state, fold: fold)
        try await withTaskCancellationHandler {
            try await self.queryFailingOnClose(query, logger: logger, timeout: timeout, extendedByRows: true, folding: folding).get()
        } onCancel: {
            self.closeInBackground()
        }
        return folding.take()
    }

    /// Runs a statement and collects its rows, blocking the calling thread (the writer's own).
    /// `timeout` bounds the whole answer: a commit must end well inside the watchdog's tolerance.
    func runBlocking(
        _ query: PostgresQuery, logger: Logger, address: PostgreSQLAddress, doing: String, timeout: TimeAmount? = nil
    ) throws -> [PostgresRow] {
        do {
            let folding = RowFold(state: [PostgresRow](), fold: RowFold.append)
            try self.queryFailingOnClose(query, logger: logger, timeout: timeout, extendedByRows: false, folding: folding).wait()
            return folding.take()
        } catch {
            throw PostgreSQLStoreError.describing(error, doing: doing, address: address)
        }
    }

    /// Runs `query`, handing its rows to `folding`; fails if the connection was closed before the
    /// query reached it.
    ///
    /// PostgresNIO hands a query to its channel without a write promise: a query written just as
    /// the channel closes (the server's error after a statement's answer closes it, say) never
    /// reaches the connection's state machine, and its future would never complete. The write is
    /// done on the event loop, in order: a check queued after it sees whether the channel was
    /// closed by then. A query that did reach the state machine is failed by it on close.
    ///
    /// With a `timeout`, a query not answered by then fails with ``PostgreSQLQueryTimedOut`` and
    /// the connection is closed: its protocol state is unknown, and a connection the network
    /// black-holes (no answer, no reset) would otherwise hold its caller until TCP gives up, which
    /// takes many minutes. With `extendedByRows`, each row that arrives starts the wait anew.
    ///
    /// Rows go through PostgresNIO's per-row callback, not its `PostgresQueryResult`: that one
    /// appends each network read's rows to an array its state still holds, so every read copies
    /// all rows so far. A load of 2.4 million rows (100,000 meters × 24 months) never finished
    /// that way; 720,000 rows took 16 s.
    private func queryFailingOnClose<State>(
        _ query: PostgresQuery, logger: Logger, timeout: TimeAmount?, extendedByRows: Bool, folding: RowFold<State>
    ) -> EventLoopFuture<Void> {
        let promise = self.eventLoop.makePromise(of: Void.self)
        let settled = NIOLockedValueBox(false)
        let settle: @Sendable (Result<Void, any Error>) -> Void = { result in
            guard
                settled.withLockedValue({ settled in
                    defer { settled = true }
                    return !settled
                })
            else { return }
            promise.completeWith(result)
        }
        self.query(query, logger: logger) { row in try folding.add(row) }.map { _ in }.whenComplete(settle)
        self.eventLoop.execute {
            if self.isClosed { settle(.failure(ChannelError.ioOnClosedChannel)) }
        }
        if let timeout {
            let seconds = Int((timeout.nanoseconds + 999_999_999) / 1_000_000_000)
            let deadline = Deadline()
            @Sendable func watch(rowsBefore: Int) {
                deadline.task = self.eventLoop.scheduleTask(in: timeout) {
                    // Answered before the first watch was set: the connection may serve others by now.
                    guard !settled.withLockedValue({ $0 }) else { return }
                    if extendedByRows, folding.rows > rowsBefore { return watch(rowsBefore: folding.rows) }
                    settle(.failure(PostgreSQLQueryTimedOut(seconds: seconds)))
                    self.closeInBackground()
                }
            }
            self.eventLoop.execute { watch(rowsBefore: 0) }
            promise.futureResult.whenComplete { _ in deadline.task?.cancel() }
        }
        return promise.futureResult
    }
}

/// A query's rows folded into a state as they arrive (``PostgresConnection/fold(_:logger:timeout:into:_:)``).
/// Only the connection's event loop touches it while the query runs: PostgresNIO calls a query's
/// row callback there, and completes the query's future there after the last row, which is when
/// the caller takes the state.
private final class RowFold<State>: @unchecked Sendable {
    private var state: State?
    private let fold: (inout State, PostgresRow) throws -> Void
    private(set) var rows = 0

    init(state: State, fold: @escaping (inout State, PostgresRow) throws -> Void) {
        self.state = state
        self.fold = fold
    }

    func add(_ row: PostgresRow) throws {
        self.rows += 1
        try self.fold(&self.state!, row)
    }

    func take() -> sending State {
        nonisolated(unsafe) let state = self.state.take()!
        return state
    }
}

extension RowFold where State == [PostgresRow] {
    /// Collects the rows, for a query whose answer is small.
    static func append(_ rows: inout [PostgresRow], _ row: PostgresRow) { rows.append(row) }
}

/// The scheduled check of a query's progress; set and cancelled on the connection's event loop.
private final class Deadline: @unchecked Sendable {
    var task: Scheduled<Void>?
}

/// A query PostgreSQL did not answer in time (``PostgresConnection/queryFailingOnClose(_:logger:timeout:extendedByRows:folding:)``).
struct PostgreSQLQueryTimedOut: Error {
    let seconds: Int
}

/// How long meterd waits for PostgreSQL's answer before it gives a connection up.
package struct PostgreSQLTimeouts: Sendable {
    /// A batch's commit and its confirmation, and the writer's other small periodic statements (KPI
    /// snapshots, alerts, the liveness sweep): well under the watchdog's 15 s of tolerated writer
    /// silence (`WatchdogSec=30s`), so that a black-holed connection shows as an outage the writer
    /// retries (meters told busy, `/readyz` failing) instead of a stall systemd restarts.
    package var commit = TimeAmount.seconds(10)
    /// The writer's large statements (reloading meter rows after a failed commit, positions,
    /// partitions): larger, since reloading a big fleet's rows takes longer than a commit.
    package var writer = TimeAmount.seconds(60)
    /// Readers (KPIs, the dashboard, snapshots), for each next row of the answer: a fleet-wide KPI
    /// query may take a while to start answering on a large database, but not minutes; a load
    /// whose rows keep coming (millions at 100,000 meters) runs as long as it takes.
    package var reader = TimeAmount.seconds(60)
    /// The commit feed, which keeps a node's figures within seconds of the others'.
    package var feed = TimeAmount.seconds(30)

    package init() {}
}
