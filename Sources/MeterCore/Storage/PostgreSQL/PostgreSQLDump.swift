import Foundation
import NIOCore
import NIOPosix

/// `meterctl backup` on PostgreSQL: PostgreSQL's own `pg_dump`, run by meterd with the store's
/// address, writing a custom-format archive (compressed; `pg_restore` reads it).
///
/// `pg_dump` reads one snapshot in a REPEATABLE READ transaction, so the copy is consistent while
/// meters keep sending, and it never blocks ingest: it takes only ACCESS SHARE locks, which the
/// writer's inserts and updates do not wait for. DDL does wait for them (a new month's partitions,
/// made once a month), so `pg_dump` gives up on a lock it cannot get within a minute rather than
/// hold such a change back for long.
///
/// The address goes to `pg_dump` in libpq's environment variables, not on its command line, where
/// any user of the machine could read the password.
struct PostgreSQLDump: Sendable {
    let address: PostgreSQLAddress

    /// Where `pg_dump` is looked for: `PATH`, then Debian's versioned directories, newest first
    /// (`postgresql-client-common` puts a wrapper in /usr/bin that picks one of them).
    static func executable() -> String? {
        let searched = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":").map(String.init)
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? [])
            .compactMap(Int.init).sorted(by: >).map { "/usr/lib/postgresql/\($0)/bin" }
        return (searched + versions).map { $0 + "/pg_dump" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// meterd's environment without libpq's variables (a `PGSERVICE` or `PGOPTIONS` of its own
    /// must not change what is dumped), then the store's address in them.
    var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PG") }
        environment["PGHOST"] = self.address.socketDirectory ?? self.address.host
        environment["PGPORT"] = String(self.address.port)
        environment["PGUSER"] = self.address.user
        environment["PGDATABASE"] = self.address.database
        environment["PGPASSWORD"] = self.address.password
        environment["PGSSLMODE"] = self.address.tls.mode.rawValue
        environment["PGSSLROOTCERT"] = self.address.tls.rootCertificate
        environment["PGSSLCERT"] = self.address.tls.clientCertificate
        environment["PGSSLKEY"] = self.address.tls.clientKey
        environment["PGAPPNAME"] = "meterd backup"
        environment["PGCONNECT_TIMEOUT"] = "10"
        return environment
    }

    /// Writes the archive to `path`, a new file (``BackupReport/checkNewFile(_:)``); on failure
    /// removes what was written and throws `backup_failed` with `pg_dump`'s own last words.
    func write(to path: String) async throws {
        guard let executable = Self.executable() else {
            throw OperatorQueryError(
                "backup_failed",
                "pg_dump was not found in PATH or /usr/lib/postgresql/*/bin: install PostgreSQL's client (postgresql-client-15, or the server's version or newer)"
            )
        }
        let environment = self.environment
        let (status, errors) = try await NIOThreadPool.singleton.runIfActive {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = ["--format=custom", "--file=\(path)", "--no-password", "--lock-wait-timeout=60000"]
            process.environment = environment
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            let stderr = Pipe()
            process.standardError = stderr
            try process.run()
            // Read to the end before waiting: a pg_dump that says much must not block on a full pipe.
            let errors = stderr.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: errors, as: UTF8.self))
        }
        guard status == 0 else {
            try? FileManager.default.removeItem(atPath: path)
            let said = errors.split(separator: "\n").last.map { String($0) } ?? "no message"
            throw OperatorQueryError("backup_failed", "pg_dump could not back up \(self.address) (exit status \(status)): \(said)")
        }
    }
}
