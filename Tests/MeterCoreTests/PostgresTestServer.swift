import Foundation
import Synchronization
import Testing

@testable import MeterCore

/// A throw-away PostgreSQL 15 cluster (scripts/postgres-test-server.sh) in a directory of its own:
/// an unprivileged owner, a Unix socket in that directory and a loopback port with a password.
/// ``with(_:)`` stops and removes it when the body ends, whether it passed, failed or threw.
struct PostgresTestServer: Sendable {
    let directory: String
    let port: Int
    let user: String
    let password: String

    /// The repository's copy of the script, found from this file's path.
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/postgres-test-server.sh").path

    /// Starts a cluster, runs `body` with it, then stops it and removes its directory.
    static func with<T>(_ body: (PostgresTestServer) async throws -> T) async throws -> T {
        // Under /tmp, not the tests' temporary directory: the server's unprivileged owner must be
        // able to reach it, and the socket's path must stay under 108 bytes.
        let directory = "/tmp/meterd-pg-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer {
            _ = try? runProgram([Self.script, "stop", directory])
            try? FileManager.default.removeItem(atPath: directory)
        }
        let server = try await offPool { try Self.start(directory: directory) }
        return try await body(server)
    }

    /// One cluster for the whole test process, each test in a database of its own: a cluster per
    /// test would cost an initdb (seconds of CPU) each. The script stops it once this process is
    /// gone, however it ended; `atexit` stops it sooner after a normal exit.
    static func shared() async throws -> PostgresTestServer {
        try await Self.sharedServer.value.get()
    }

    private static let sharedServer = Task.detached { () -> Result<PostgresTestServer, PostgresTestServerError> in
        let directory = "/tmp/meterd-pg-" + UUID().uuidString.prefix(8)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
            let server = try await offPool { try Self.start(directory: directory, watching: getpid()) }
            Self.sharedDirectory.withLock { $0 = directory }
            atexit {
                guard let directory = PostgresTestServer.sharedDirectory.withLock({ $0 }) else { return }
                _ = try? runProgram([PostgresTestServer.script, "stop", directory])
                try? FileManager.default.removeItem(atPath: directory)
            }
            return .success(server)
        } catch {
            return .failure(PostgresTestServerError(message: "\(error)"))
        }
    }

    private static let sharedDirectory = Mutex<String?>(nil)

    private static func start(directory: String, watching pid: pid_t? = nil) throws -> PostgresTestServer {
        let run = try runProgram([Self.script, "start", directory] + (pid.map { [String($0)] } ?? []))
        guard run.status == 0 else {
            throw PostgresTestServerError(message: "scripts/postgres-test-server.sh start failed (\(run.status)):\n\(run.stderr)")
        }
        var values: [String: String] = [:]
        for line in run.stdout.split(separator: "\n") {
            let pair = line.split(separator: "=", maxSplits: 1).map(String.init)
            if pair.count == 2 { values[pair[0]] = pair[1] }
        }
        guard let port = values["PGTEST_PORT"].flatMap(Int.init), let user = values["PGTEST_USER"], let password = values["PGTEST_PASSWORD"] else {
            throw PostgresTestServerError(message: "scripts/postgres-test-server.sh printed no server.env:\n\(run.stdout)")
        }
        return PostgresTestServer(directory: directory, port: port, user: user, password: password)
    }

    /// Creates a database and returns its address over the Unix socket (trusted, no password).
    func createDatabase(_ name: String = "meterd_" + UUID().uuidString.prefix(8).lowercased()) async throws -> PostgreSQLAddress {
        let run = try await offPool { try runProgram([Self.script, "createdb", self.directory, name]) }
        guard run.status == 0 else { throw PostgresTestServerError(message: "createdb \(name) failed:\n\(run.stderr)") }
        return PostgreSQLAddress(user: self.user, port: self.port, database: name, socketDirectory: self.directory)
    }

    /// A database's `--store` URL over this server's Unix socket, as an operator writes it.
    func socketURL(_ address: PostgreSQLAddress) -> String {
        "postgresql://\(address.user)@/\(address.database)?host=\(self.directory)&port=\(self.port)"
    }

    /// The same database over loopback TCP, where the server asks for the password.
    func tcpAddress(database: String, password: String?) -> PostgreSQLAddress {
        PostgreSQLAddress(user: self.user, password: password, host: "127.0.0.1", port: self.port, database: database)
    }

    /// The same database through a ``BlackHoleProxy`` in front of this server's TCP port.
    func proxiedAddress(database: String, proxy: BlackHoleProxy) -> PostgreSQLAddress {
        PostgreSQLAddress(user: self.user, password: self.password, host: "127.0.0.1", port: proxy.port, database: database)
    }

    /// `-m immediate` stop, the nearest a test gets to pulling the plug: connections drop at once,
    /// and the next start runs crash recovery.
    func crash() async throws {
        let run = try await offPool { try runProgram([Self.script, "crash", self.directory]) }
        guard run.status == 0 else { throw PostgresTestServerError(message: "crash failed:\n\(run.stderr)") }
    }

    /// Starts the stopped cluster again, on the same port and socket.
    func restart() async throws {
        let run = try await offPool { try runProgram([Self.script, "start", self.directory]) }
        guard run.status == 0, run.stdout.contains("PGTEST_PORT=\(self.port)\n") else {
            throw PostgresTestServerError(message: "restart failed or moved to another port:\n\(run.stdout)\(run.stderr)")
        }
    }
}

/// Why the test cluster could not be used, with the script's own words.
struct PostgresTestServerError: Error, CustomStringConvertible {
    var message: String
    var description: String { self.message }
}

/// The stores the same behavioural tests run against: SQLite, and PostgreSQL when the server can
/// be started (Debian's postgresql-15; scripts/install-deps.sh installs it).
enum StoreBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgresql

    var testDescription: String { self.rawValue }

    /// Runs `body` with a fresh, empty store location of this backend.
    func withFreshStore<T>(_ body: (StoreLocation) async throws -> T) async throws -> T {
        switch self {
        case .sqlite:
            try await withTemporaryDirectory { directory in try await body(.sqlite(path: directory + "/meterd.sqlite")) }
        case .postgresql:
            try await body(.postgresql(try await PostgresTestServer.shared().createDatabase()))
        }
    }
}
