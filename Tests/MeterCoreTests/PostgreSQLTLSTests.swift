import Foundation
import PostgresNIO
import Testing

@testable import MeterCore

/// TLS to PostgreSQL (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` in the store URL), against a
/// real cluster with TLS turned on and a certificate from `scripts/make-certs.sh`.
@Suite(.timeLimit(.minutes(3))) struct PostgreSQLTLSTests {
    /// A cluster of its own with TLS on (TCP clients must use it when `hostssl`), and the CA that
    /// signed its certificate (for `localhost`, 127.0.0.1 and ::1).
    func withTLSServer<T>(hostssl: Bool = false, _ body: (PostgresTestServer, TestPKI) async throws -> T) async throws -> T {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            return try await PostgresTestServer.with { server in
                var arguments = [PostgresTestServer.script, "tls", server.directory, pki.serverCertificate, pki.serverKey]
                if hostssl { arguments.append("hostssl") }
                let command = arguments
                let run = try await offPool { try runProgram(command) }
                try #require(run.status == 0, "postgres-test-server.sh tls failed: \(run.stderr)")
                return try await body(server, pki)
            }
        }
    }

    /// Whether the connection the store URL makes is encrypted, as the server sees it.
    func connectionUsesTLS(_ address: PostgreSQLAddress) async throws -> Bool {
        let connection = try await PostgreSQLConnector(address: address, logger: testLogger).connect(id: 1)
        defer { connection.closeInBackground() }
        let rows = try await connection.allRows("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", logger: testLogger)
        return try #require(rows.first).decode(Bool.self)
    }

    func storeOpenFails(_ address: PostgreSQLAddress) -> String? {
        do {
            _ = try PostgreSQLMeterStore(address: address, logger: testLogger)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func verifyFullConnectsToTheServerItsCATrustsAndRefusesAnotherCA() async throws {
        try await self.withTLSServer { server, pki in
            let database = try await server.createDatabase().database
            var address = server.tcpAddress(database: database, password: server.password)
            address.host = "localhost"
            address.tls = PostgreSQLTLS(mode: .verifyFull, rootCertificate: pki.ca)
            // Given the CA that signed the server's certificate, the store opens (migrations and all) over TLS
            #expect(self.storeOpenFails(address) == nil)
            #expect(try await self.connectionUsesTLS(address))

            // Given another CA, start-up stops with one line that says why
            let other = try await TestPKI.make(in: pki.directory + "-other")
            address.tls.rootCertificate = other.ca
            let failure = try #require(self.storeOpenFails(address))
            #expect(
                failure.contains("cannot connect to PostgreSQL at localhost:\(server.port): the TLS handshake failed (CERTIFICATE_VERIFY_FAILED)"),
                "\(failure)")
            #expect(failure.contains("sslrootcert=\(other.ca)"), "\(failure)")
            #expect(!failure.contains("\n"))
            // and verify-ca, which does not look at the name, refuses it the same way
            address.tls.mode = .verifyCA
            #expect(self.storeOpenFails(address)?.contains("the TLS handshake failed") == true)
        }
    }

    @Test func preferAndRequireEncryptWithoutACAAndPlainTCPIsRefusedWhereTheServerWantsTLS() async throws {
        try await self.withTLSServer(hostssl: true) { server, _ in
            let database = try await server.createDatabase().database
            var address = server.tcpAddress(database: database, password: server.password)
            // libpq's default, prefer, takes TLS when the server offers it; require insists on it
            #expect(address.tls.mode == .prefer)
            #expect(try await self.connectionUsesTLS(address))
            address.tls.mode = .require
            #expect(try await self.connectionUsesTLS(address))
            // A server whose pg_hba.conf takes only TLS (hostssl) refuses sslmode=disable, and the line says what to change
            address.tls.mode = .disable
            let failure = try #require(self.storeOpenFails(address))
            #expect(failure.contains("refused user meterd"), "\(failure)")
            #expect(failure.contains("no encryption"), "\(failure)")
            #expect(failure.contains("sslmode=require"), "\(failure)")
        }
    }

    @Test func requireAgainstAServerWithoutTLSStopsStartUpAndPreferFallsBack() async throws {
        let server = try await PostgresTestServer.shared()
        let database = try await server.createDatabase().database
        var address = server.tcpAddress(database: database, password: server.password)
        #expect(try await !self.connectionUsesTLS(address))
        address.tls.mode = .require
        let failure = try #require(self.storeOpenFails(address))
        #expect(failure.contains("does not take TLS connections"), "\(failure)")
        #expect(failure.contains("sslmode=require"), "\(failure)")
    }

    @Test func unusableCertificateFilesAreNamedBeforeAnyConnection() async throws {
        try await withTemporaryDirectory { directory in
            let garbage = directory + "/garbage.pem"
            try "not a certificate\n".write(toFile: garbage, atomically: true, encoding: .utf8)
            // Port 1: nothing listens, so only the files can be the problem.
            var address = PostgreSQLAddress(user: "meterd", host: "localhost", port: 1, database: "fleet")
            address.tls = PostgreSQLTLS(mode: .verifyFull, rootCertificate: directory + "/missing.pem")
            #expect(self.storeOpenFails(address) == "store URL: sslrootcert=\(directory)/missing.pem: no such file")
            address.tls.rootCertificate = garbage
            #expect(self.storeOpenFails(address)?.hasPrefix("store URL: sslrootcert=\(garbage): not a PEM certificate") == true)
            let empty = directory + "/empty.pem"
            try "".write(toFile: empty, atomically: true, encoding: .utf8)
            address.tls.rootCertificate = empty
            #expect(self.storeOpenFails(address)?.hasPrefix("store URL: sslrootcert=\(empty): not a PEM certificate") == true)
            address.tls = PostgreSQLTLS(mode: .require, clientCertificate: garbage, clientKey: garbage)
            #expect(self.storeOpenFails(address)?.hasPrefix("store URL: sslcert=\(garbage): not a PEM certificate") == true)
        }
    }
}
