#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GRDB
import NIOCore
import NIOSSL
import Synchronization
import Testing

@testable import MeterCore

/// Throw-away certificates made at test time by `scripts/make-certs.sh` (openssl, ECDSA P-256).
struct TestPKI {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../scripts/make-certs.sh").standardized.path

    let directory: String

    /// A CA, a server certificate for 127.0.0.1, one certificate per meter (and expired ones), and a
    /// concentrator's, in `directory`.
    static func make(
        in directory: String, meters: [String] = ["MTR-000001", "MTR-000002", "MTR-000003"], concentrator: String = "DC-000001",
        expired: [String] = []
    ) async throws -> TestPKI {
        var arguments = [Self.script, "--out", directory, "--concentrator", concentrator, "--days", "2"]
        for meter in meters { arguments += ["--meter", meter] }
        for meter in expired { arguments += ["--expired", meter] }
        let command = arguments
        let result = try await offPool { try runProgram(command) }
        try #require(result.status == 0, "make-certs.sh failed: \(result.stderr)")
        return TestPKI(directory: directory)
    }

    var ca: String { self.directory + "/ca.pem" }
    var serverCertificate: String { self.directory + "/server.pem" }
    var serverKey: String { self.directory + "/server.key" }
    func meterCertificate(_ meter: String) -> (certificate: String, key: String) {
        (self.directory + "/meters/\(meter).pem", self.directory + "/meters/\(meter).key")
    }
    var concentrator: (certificate: String, key: String) { (self.directory + "/concentrator.pem", self.directory + "/concentrator.key") }

    /// meterd's settings for this PKI: TLS, a client CA unless told otherwise, and `meter_auth`.
    func daemonConfiguration(clientCA: Bool = true, meterAuth: MeterAuthMode = .certificate) -> DaemonConfiguration {
        var configuration = DaemonConfiguration()
        configuration.ingestTLSCertificate = self.serverCertificate
        configuration.ingestTLSKey = self.serverKey
        configuration.ingestTLSClientCA = clientCA ? self.ca : nil
        configuration.meterAuth = meterAuth
        return configuration
    }

    /// A meter's client context: trusts this CA, presents `certificate` (none when `nil`).
    func clientContext(_ pair: (certificate: String, key: String)?) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(self.ca))
        if let pair {
            configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(pair.certificate).map { .certificate($0) }
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: pair.key, format: .pem))
        }
        return try NIOSSLContext(configuration: configuration)
    }

    func meterContext(_ meter: String) throws -> NIOSSLContext { try self.clientContext(self.meterCertificate(meter)) }
}

/// What the quarantine holds, oldest first.
func quarantineRows(_ database: MeterDatabase) async throws -> [(code: String, line: Int, identity: String?, raw: String)] {
    try await database.pool.read { db in
        try Row.fetchAll(db, sql: "SELECT code, line, peer_identity, raw FROM quarantine ORDER BY id").map { row in
            (row["code"], row["line"], row["peer_identity"], String(decoding: row["raw"] as Data, as: UTF8.self))
        }
    }
}

func storedReadings(_ database: MeterDatabase, meter: String) async throws -> Int {
    try await database.pool.read { db in
        try Int.fetchOne(
            db, sql: "SELECT count(*) FROM reading JOIN meter ON meter.id = reading.meter_id WHERE meter.name = ?", arguments: [meter])!
    }
}

func meterIsKnown(_ database: MeterDatabase, _ meter: String) async throws -> Bool {
    try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM meter WHERE name = ?", arguments: [meter])! > 0 }
}

/// Ingest over TLS with real handshakes (issue 15): client certificates, meter identity, spoofing.
@Suite(.timeLimit(.minutes(2))) struct IngestTLSTests {
    // MARK: Handshakes

    @Test func aMeterWithAGoodCertificateIsAcknowledgedOverTLS() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration()) { harness in
                let meter = try await LineClient(port: harness.port, tls: try pki.meterContext("MTR-000001"))
                try await meter.send((1...5).map { readingLine(meter: "MTR-000001", seq: $0) }.joined())
                let lines = try await meter.collect { lastAck($0, meter: "MTR-000001") == 5 }
                #expect(!lines.contains { if case .error = $0 { true } else { false } })
                // Half-close over TLS (close_notify): answered, then closed, as over plain TCP.
                try await meter.send(readingLine(meter: "MTR-000001", seq: 6))
                try await meter.finishSending()
                _ = try await meter.collect { lastAck($0, meter: "MTR-000001") == 6 }
                #expect(try await meter.readLine() == nil)
                #expect(try await storedReadings(harness.database, meter: "MTR-000001") == 6)
                #expect(try await quarantineRows(harness.database).isEmpty)
                #expect(harness.pipeline.statistics.tlsHandshakeFailures.load(ordering: .relaxed) == 0)
            }
        }
    }

    /// Connects with `context`, sends a reading, and expects the handshake to fail: the server
    /// counts it, the client is closed without an answer, and nothing is stored.
    private func expectRefusedHandshake(_ harness: IngestHarness, context: NIOSSLContext, meter: String) async throws {
        let before = harness.pipeline.statistics.tlsHandshakeFailures.load(ordering: .relaxed)
        let client = try await LineClient(port: harness.port, tls: context)
        try? await client.send(readingLine(meter: meter, seq: 1))
        #expect(try await client.readLine() == nil, "the daemon answered a connection whose handshake should fail")
        // The client learns it from an alert, or a reset when the close beats the alert.
        #expect(client.error != nil)
        try await waitUntil { harness.pipeline.statistics.tlsHandshakeFailures.load(ordering: .relaxed) > before }
        #expect(try await storedReadings(harness.database, meter: meter) == 0)
        #expect(harness.pipeline.statistics.stored.load(ordering: .relaxed) == 0)
    }

    @Test func anExpiredClientCertificateFailsTheHandshake() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki", expired: ["MTR-000009"])
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration()) { harness in
                try await self.expectRefusedHandshake(harness, context: try pki.meterContext("MTR-000009"), meter: "MTR-000009")
            }
        }
    }

    @Test func aCertificateFromAnotherCAFailsTheHandshake() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            let stranger = try await TestPKI.make(in: directory + "/other")
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration()) { harness in
                // Trusts meterd's CA, but presents a certificate of the same name from another CA.
                let context = try pki.clientContext(stranger.meterCertificate("MTR-000001"))
                try await self.expectRefusedHandshake(harness, context: context, meter: "MTR-000001")
            }
        }
    }

    @Test func aMeterWithoutAClientCertificateFailsTheHandshake() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration()) { harness in
                try await self.expectRefusedHandshake(harness, context: try pki.clientContext(nil), meter: "MTR-000001")
                // Nor can a meter skip TLS altogether.
                let plain = try await LineClient(port: harness.port)
                try? await plain.send(readingLine(meter: "MTR-000001", seq: 1))
                #expect(try await plain.readLine() == nil)
                #expect(try await storedReadings(harness.database, meter: "MTR-000001") == 0)
            }
        }
    }

    @Test func aConnectionThatNeverCompletesItsHandshakeIsClosed() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration(), tlsHandshakeTimeout: .seconds(3)) {
                harness in
                // Connects and says nothing: without the handshake deadline it would hold its slot for idle_timeout.
                let silent = try await LineClient(port: harness.port)
                #expect(try await silent.readLine(timeout: .seconds(10)) == nil)
                #expect(harness.pipeline.statistics.tlsHandshakeFailures.load(ordering: .relaxed) == 1)
                // A meter that completes its handshake in time is not affected by the deadline afterwards.
                let meter = try await LineClient(port: harness.port, tls: try pki.meterContext("MTR-000001"))
                try await meter.send(readingLine(meter: "MTR-000001", seq: 1))
                _ = try await meter.collect { lastAck($0, meter: "MTR-000001") == 1 }
                try await Task.sleep(for: .seconds(4))
                try await meter.send(readingLine(meter: "MTR-000001", seq: 2))
                _ = try await meter.collect { lastAck($0, meter: "MTR-000001") == 2 }
            }
        }
    }

    @Test func onlyTLS12OrLaterWithForwardSecrecyAndAEADIsAccepted() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration()) { harness in
                func context(maximum: TLSVersion, ciphers: String? = nil) throws -> NIOSSLContext {
                    var configuration = TLSConfiguration.makeClientConfiguration()
                    configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(pki.ca))
                    let pair = pki.meterCertificate("MTR-000001")
                    configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(pair.certificate).map { .certificate($0) }
                    configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: pair.key, format: .pem))
                    configuration.minimumTLSVersion = .tlsv1
                    configuration.maximumTLSVersion = maximum
                    if let ciphers { configuration.cipherSuites = ciphers }
                    return try NIOSSLContext(configuration: configuration)
                }
                try await self.expectRefusedHandshake(harness, context: try context(maximum: .tlsv11), meter: "MTR-000001")
                // TLS 1.2 without forward secrecy, or without AEAD: refused.
                try await self.expectRefusedHandshake(
                    harness, context: try context(maximum: .tlsv12, ciphers: "AES128-GCM-SHA256"), meter: "MTR-000001")
                try await self.expectRefusedHandshake(
                    harness, context: try context(maximum: .tlsv12, ciphers: "ECDHE-ECDSA-AES128-SHA"), meter: "MTR-000001")
                // TLS 1.2 with ECDHE and AES-GCM: accepted.
                let meter = try await LineClient(port: harness.port, tls: try context(maximum: .tlsv12, ciphers: "ECDHE-ECDSA-AES128-GCM-SHA256"))
                try await meter.send(readingLine(meter: "MTR-000001", seq: 1))
                _ = try await meter.collect { lastAck($0, meter: "MTR-000001") == 1 }
            }
        }
    }

    @Test func overTLSConnectionsBeyondTheLimitAreToldSoAfterTheHandshakeOrClosedAtItsDeadline() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            var configuration = pki.daemonConfiguration()
            configuration.maximumConnections = 1
            try await IngestHarness.with(directory: directory, configuration: configuration, tlsHandshakeTimeout: .seconds(3)) {
                harness in
                let first = try await LineClient(port: harness.port, tls: try pki.meterContext("MTR-000001"))
                try await waitUntil { harness.pipeline.statistics.connections.load(ordering: .relaxed) == 1 }
                let second = try await LineClient(port: harness.port, tls: try pki.meterContext("MTR-000002"))
                #expect(try await second.readLine() == #"{"error":"too_many_connections"}"#)
                #expect(try await second.readLine() == nil)
                // One that never starts its handshake does not stay open either.
                let silent = try await LineClient(port: harness.port)
                #expect(try await silent.readLine(timeout: .seconds(10)) == nil)
                try await first.send(readingLine(meter: "MTR-000001", seq: 1))
                _ = try await first.collect { lastAck($0, meter: "MTR-000001") == 1 }
            }
        }
    }

    // MARK: Meter identity

    @Test func aMeterCertificateCannotSendAnotherMetersReadings() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration()) { harness in
                let meter = try await LineClient(port: harness.port, tls: try pki.meterContext("MTR-000001"))
                try await meter.send(
                    readingLine(meter: "MTR-000002", seq: 1) + readingLine(meter: "MTR-000001", seq: 1)
                        + readingLine(meter: "MTR-000003", seq: 7) + readingLine(meter: "MTR-000001", seq: 2) + "{not json\n")
                let lines = try await meter.collect { lines in
                    lastAck(lines, meter: "MTR-000001") == 2 && lines.filter { if case .error = $0 { true } else { false } }.count == 3
                }
                #expect(lines.contains(.error(code: "forbidden", line: 1)))
                #expect(lines.contains(.error(code: "forbidden", line: 3)))
                #expect(lines.contains(.error(code: "invalid_json", line: 5)))
                #expect(!lines.contains { if case .ack(let name, _) = $0 { name != "MTR-000001" } else { false } })

                // Never stored, not even registered as a new meter; quarantined with who sent it.
                #expect(try await storedReadings(harness.database, meter: "MTR-000001") == 2)
                #expect(try await !meterIsKnown(harness.database, "MTR-000002"))
                #expect(try await !meterIsKnown(harness.database, "MTR-000003"))
                try await waitUntil { try await quarantineRows(harness.database).count == 3 }
                let rows = try await quarantineRows(harness.database)
                #expect(rows.map(\.code) == ["forbidden", "forbidden", "invalid_json"])
                #expect(rows.map(\.line) == [1, 3, 5])
                #expect(rows.allSatisfy { $0.identity == "urn:meter:MTR-000001" })
                #expect(rows[0].raw.contains("\"MTR-000002\""))
                #expect(harness.pipeline.statistics.rejects(.forbidden) == 2)
            }
        }
    }

    @Test func aConcentratorSendsOnlyForTheMetersAssignedToIt() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            let csv = directory + "/company"
            try FileManager.default.createDirectory(atPath: csv, withIntermediateDirectories: true)
            try writeCSV(
                csv, "concentrators.csv", ["ConcentratorID,MeterID", "DC-000001,MTR-000001", "DC-000001,MTR-000002", "DC-000002,MTR-000005"])
            let concentrators = ConcentratorDirectory()
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration(), concentrators: concentrators) { harness in
                // The daemon's way: import through the writer, then refresh the in-memory copy.
                let store = SQLiteMeterStore(database: harness.database)
                func importCompany() async throws {
                    let report = try await CompanyImporter.importDirectory(csv, through: .pipeline(harness.pipeline))
                    #expect(report.succeeded, "\(report.text)")
                    concentrators.replace(with: try await store.concentratorAssignments())
                }
                try await importCompany()
                #expect(concentrators.meters(of: "DC-000001") == ["MTR-000001", "MTR-000002"])

                let link = try await LineClient(port: harness.port, tls: try pki.clientContext(pki.concentrator))
                try await link.send(
                    readingLine(meter: "MTR-000001", seq: 1) + readingLine(meter: "MTR-000002", seq: 1)
                        + readingLine(meter: "MTR-000005", seq: 1) + readingLine(meter: "MTR-000003", seq: 1))
                let lines = try await link.collect { lines in
                    lastAck(lines, meter: "MTR-000001") == 1 && lastAck(lines, meter: "MTR-000002") == 1
                        && lines.filter { if case .error = $0 { true } else { false } }.count == 2
                }
                // MTR-000005 belongs to another concentrator, MTR-000003 to none.
                #expect(lines.contains(.error(code: "forbidden", line: 3)))
                #expect(lines.contains(.error(code: "forbidden", line: 4)))
                #expect(try await !meterIsKnown(harness.database, "MTR-000005"))
                #expect(try await !meterIsKnown(harness.database, "MTR-000003"))
                try await waitUntil { try await quarantineRows(harness.database).count == 2 }
                #expect(
                    try await quarantineRows(harness.database).allSatisfy { $0.identity == "urn:concentrator:DC-000001" && $0.code == "forbidden" })

                // A new import replaces the lists: MTR-000003 joins, MTR-000002 leaves; the open connection follows.
                try writeCSV(csv, "concentrators.csv", ["ConcentratorID,MeterID", "DC-000001,MTR-000001", "DC-000001,MTR-000003"])
                try await importCompany()
                try await link.send(readingLine(meter: "MTR-000003", seq: 2) + readingLine(meter: "MTR-000002", seq: 2))
                let after = try await link.collect { lines in
                    lastAck(lines, meter: "MTR-000003") == 2 && lines.contains { if case .error = $0 { true } else { false } }
                }
                #expect(after.contains(.error(code: "forbidden", line: 6)))
                #expect(try await storedReadings(harness.database, meter: "MTR-000003") == 1)
                #expect(try await storedReadings(harness.database, meter: "MTR-000002") == 1)
                #expect(harness.pipeline.statistics.rejects(.forbidden) == 3)
            }
        }
    }

    @Test func withoutMeterAuthAnyMeterMaySendOverTLS() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            // TLS without client certificates, meter_auth = none: today's behaviour, encrypted.
            let configuration = pki.daemonConfiguration(clientCA: false, meterAuth: .none)
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let link = try await LineClient(port: harness.port, tls: try pki.clientContext(nil))
                try await link.send(readingLine(meter: "MTR-000002", seq: 1) + readingLine(meter: "ANY-METER", seq: 1))
                _ = try await link.collect { lastAck($0, meter: "MTR-000002") == 1 && lastAck($0, meter: "ANY-METER") == 1 }
                #expect(harness.pipeline.statistics.rejects(.forbidden) == 0)
            }
        }
    }

    @Test func aCertificateNamesOneMeterOrConcentratorOrNothing() async throws {
        #expect(MeterIdentity.named(uris: [], commonNames: ["MTR-000001"]) == .meter("MTR-000001"))
        #expect(MeterIdentity.named(uris: ["urn:meter:MTR-000002"], commonNames: ["MTR-000001"]) == .meter("MTR-000002"))
        #expect(MeterIdentity.named(uris: ["URN:Concentrator:DC-7"], commonNames: ["DC-7"]) == .concentrator("DC-7"))
        #expect(MeterIdentity.named(uris: ["https://example.com", "urn:meter:M-1", "urn:meter:M-1"], commonNames: []) == .meter("M-1"))
        // Ambiguous or malformed certificates grant nothing.
        #expect(MeterIdentity.named(uris: ["urn:meter:M-1", "urn:concentrator:DC-1"], commonNames: []) == nil)
        #expect(MeterIdentity.named(uris: ["urn:meter:M-1", "urn:meter:M-2"], commonNames: []) == nil)
        #expect(MeterIdentity.named(uris: ["urn:meter:bad id"], commonNames: []) == nil)
        #expect(MeterIdentity.named(uris: [], commonNames: ["meterd throw-away CA"]) == nil)
        #expect(MeterIdentity.named(uris: [], commonNames: []) == nil)

        // And from real certificates.
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory, meters: ["MTR-000042"], concentrator: "DC-000007")
            let meter = try #require(try NIOSSLCertificate.fromPEMFile(pki.meterCertificate("MTR-000042").certificate).first)
            #expect(MeterIdentity.named(by: meter) == .meter("MTR-000042"))
            let concentrator = try #require(try NIOSSLCertificate.fromPEMFile(pki.concentrator.certificate).first)
            #expect(MeterIdentity.named(by: concentrator) == .concentrator("DC-000007"))
        }
    }

    // MARK: Reload

    @Test func aReloadGivesNewConnectionsTheNewCertificateWhileOpenOnesContinue() async throws {
        try await withTemporaryDirectory { directory in
            let old = try await TestPKI.make(in: directory + "/old")
            let new = try await TestPKI.make(in: directory + "/new")
            // meterd reads its files from one place; the operator replaces them there.
            let live = TestPKI(directory: directory + "/live")
            try FileManager.default.copyItem(atPath: old.directory, toPath: live.directory)
            try await IngestHarness.with(directory: directory, configuration: live.daemonConfiguration()) { harness in
                let tls = try #require(harness.tls)
                let before = try await LineClient(port: harness.port, tls: try old.meterContext("MTR-000001"))
                try await before.send(readingLine(meter: "MTR-000001", seq: 1))
                _ = try await before.collect { lastAck($0, meter: "MTR-000001") == 1 }

                for file in ["ca.pem", "server.pem", "server.key"] {
                    try FileManager.default.removeItem(atPath: live.directory + "/" + file)
                    try FileManager.default.copyItem(atPath: new.directory + "/" + file, toPath: live.directory + "/" + file)
                }
                try tls.reload()

                // The open connection keeps its session.
                try await before.send(readingLine(meter: "MTR-000001", seq: 2))
                _ = try await before.collect { lastAck($0, meter: "MTR-000001") == 2 }
                // New connections meet the new certificate and CA: old credentials fail, new ones work.
                let stale = try await LineClient(port: harness.port, tls: try old.meterContext("MTR-000002"))
                try? await stale.send(readingLine(meter: "MTR-000002", seq: 1))
                #expect(try await stale.readLine() == nil)
                let fresh = try await LineClient(port: harness.port, tls: try new.meterContext("MTR-000002"))
                try await fresh.send(readingLine(meter: "MTR-000002", seq: 1))
                _ = try await fresh.collect { lastAck($0, meter: "MTR-000002") == 1 }

                // Unusable files: the reload fails and the current certificate stays.
                try "not a key".write(toFile: live.serverKey, atomically: true, encoding: .utf8)
                #expect(throws: ConfigurationError.self) { try tls.reload() }
                let still = try await LineClient(port: harness.port, tls: try new.meterContext("MTR-000003"))
                try await still.send(readingLine(meter: "MTR-000003", seq: 1))
                _ = try await still.collect { lastAck($0, meter: "MTR-000003") == 1 }
                #expect(try await storedReadings(harness.database, meter: "MTR-000002") == 1)
            }
        }
    }

    // MARK: Configuration

    @Test func securitySettingsThatDoNotFitTogetherAreRefused() throws {
        func refusal(_ settings: [(key: String, value: String)]) -> ConfigurationError? {
            do {
                _ = try DaemonConfiguration.resolve(configFile: nil, overrides: settings, environment: [:])
                return nil
            } catch {
                return error
            }
        }
        #expect(refusal([("meter_auth", "certificate")])?.key == "meter_auth")
        #expect(refusal([("meter_auth", "certificate"), ("ingest_tls_cert", "/c"), ("ingest_tls_key", "/k")])?.key == "meter_auth")
        #expect(refusal([("meter_auth", "sometimes")])?.key == "meter_auth")
        #expect(refusal([("ingest_tls_cert", "/c")])?.key == "ingest_tls_key")
        #expect(refusal([("ingest_tls_key", "/k")])?.key == "ingest_tls_cert")
        #expect(refusal([("ingest_tls_client_ca", "/ca")])?.key == "ingest_tls_client_ca")
        #expect(
            refusal([("meter_auth", "certificate"), ("ingest_tls_cert", "/c"), ("ingest_tls_key", "/k"), ("ingest_tls_client_ca", "/ca")]) == nil)
        #expect(refusal([]) == nil)
        let defaults = try DaemonConfiguration.resolve(configFile: nil, overrides: [], environment: [:])
        #expect(defaults.meterAuth == .none)
        #expect(defaults.ingestTLSFiles == nil)
    }

    @Test func unusableCertificateFilesNameTheirKey() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            let other = try await TestPKI.make(in: directory + "/other")
            func refusal(_ files: IngestTLSFiles) -> ConfigurationError? {
                do {
                    _ = try IngestTLS(files: files)
                    return nil
                } catch {
                    return error
                }
            }
            #expect(refusal(IngestTLSFiles(certificate: pki.serverCertificate, key: pki.serverKey, clientCA: pki.ca)) == nil)
            let missing = refusal(IngestTLSFiles(certificate: directory + "/nope.pem", key: pki.serverKey))
            #expect(missing?.key == "ingest_tls_cert")
            #expect(missing?.message.contains("no such file") == true)
            let mismatched = refusal(IngestTLSFiles(certificate: pki.serverCertificate, key: other.serverKey))
            #expect(mismatched?.key == "ingest_tls_key")
            #expect(mismatched?.message.contains("does not match") == true, "\(String(describing: mismatched))")
            #expect(refusal(IngestTLSFiles(certificate: pki.serverKey, key: pki.serverKey))?.key == "ingest_tls_cert")
            #expect(refusal(IngestTLSFiles(certificate: pki.serverCertificate, key: pki.ca))?.key == "ingest_tls_key")
            #expect(
                refusal(IngestTLSFiles(certificate: pki.serverCertificate, key: pki.serverKey, clientCA: directory + "/none.pem"))?.key
                    == "ingest_tls_client_ca")
        }
    }
}

/// `concentrators.csv` through the company import (SPEC.md section 10).
@Suite(.timeLimit(.minutes(1))) struct ConcentratorImportTests {
    @Test func concentratorsImportIdempotentlyAndAReimportReplacesTheLists() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let store = SQLiteMeterStore(database: database)
            try writeCSV(directory, "concentrators.csv", ["ConcentratorID,MeterID", "DC-1,MTR-000001", "DC-1,MTR-000002", "DC-2,MTR-000003"])
            for _ in 0..<2 {
                let report = try CompanyImporter.importDirectory(directory, database: database)
                #expect(report.succeeded, "\(report.text)")
                #expect(report.files.map(\.file) == ["concentrators.csv"])
                #expect(report.files.first?.rows == 3)
                #expect(try await store.concentratorAssignments() == ["DC-1": ["MTR-000001", "MTR-000002"], "DC-2": ["MTR-000003"]])
            }
            try writeCSV(directory, "concentrators.csv", ["ConcentratorID,MeterID", "DC-1,MTR-000002"])
            #expect(try CompanyImporter.importDirectory(directory, database: database).succeeded)
            #expect(try await store.concentratorAssignments() == ["DC-1": ["MTR-000002"]])
        }
    }

    @Test func aBadConcentratorRowRejectsTheWholeFile() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let store = SQLiteMeterStore(database: database)
            try writeCSV(directory, "concentrators.csv", ["ConcentratorID,MeterID", "DC-1,MTR-000001"])
            #expect(try CompanyImporter.importDirectory(directory, database: database).succeeded)
            try writeCSV(directory, "concentrators.csv", ["ConcentratorID,MeterID", "DC-1,MTR-000009", "DC 2,MTR-000002", "DC-1,MTR-000009"])
            let report = try CompanyImporter.importDirectory(directory, database: database)
            #expect(!report.succeeded)
            let errors = report.files.first?.errors.map(\.description) ?? []
            #expect(errors.contains { $0.hasPrefix("concentrators.csv:3: ConcentratorID") }, "\(errors)")
            #expect(errors.contains { $0.hasPrefix("concentrators.csv:4:") && $0.contains("twice") }, "\(errors)")
            // Nothing of it applied: the earlier list stands.
            #expect(try await store.concentratorAssignments() == ["DC-1": ["MTR-000001"]])
        }
    }
}

/// The real meterd with TLS: start-up refusals, SIGHUP, the daemon's import, the status socket and /metrics.
@Suite(.timeLimit(.minutes(2))) struct MeterdTLSProcessTests {
    @Test func meterdRefusesToStartWithUnusableSecuritySettingsInOneLine() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            let other = try await TestPKI.make(in: directory + "/other")
            let cases: [(arguments: [String], key: String)] = [
                (["--ingest-tls-cert", pki.serverCertificate, "--ingest-tls-key", other.serverKey], "ingest_tls_key"),
                (["--ingest-tls-cert", directory + "/missing.pem", "--ingest-tls-key", pki.serverKey], "ingest_tls_cert"),
                (["--ingest-tls-cert", pki.serverCertificate, "--ingest-tls-key", pki.serverKey, "--meter-auth", "certificate"], "meter_auth"),
            ]
            for (index, refusal) in cases.enumerated() {
                let daemon = try MeterdUnderTest.start(dataDirectory: directory + "/data\(index)", arguments: refusal.arguments)
                defer { daemon.process.stop() }
                #expect(try await daemon.process.waitForExit() == 2)
                let lines = daemon.process.output.split(separator: "\n")
                #expect(lines.count == 1, "expected one line:\n\(daemon.process.output)")
                #expect(lines.first?.hasPrefix("meterd: invalid configuration: \(refusal.key): ") == true, "\(daemon.process.output)")
            }
        }
    }

    @Test func sighupReloadsTheCertificateAndTheDaemonsImportAssignsConcentrators() async throws {
        try await withTemporaryDirectory { directory in
            let old = try await TestPKI.make(in: directory + "/old")
            let new = try await TestPKI.make(in: directory + "/new")
            let live = TestPKI(directory: directory + "/live")
            try FileManager.default.copyItem(atPath: old.directory, toPath: live.directory)
            let daemon = try MeterdUnderTest.start(
                dataDirectory: directory + "/data",
                arguments: [
                    "--ingest-tls-cert", live.serverCertificate, "--ingest-tls-key", live.serverKey, "--ingest-tls-client-ca", live.ca,
                    "--meter-auth", "certificate",
                ])
            defer { daemon.process.stop() }
            let ports = try await daemon.ports()

            // make-certs.sh wrote concentrators.csv (DC-000001: the three meters) beside the certificates.
            let imported = try await offPool {
                try runProgram([try BuiltProduct.path("meterctl"), "--socket", daemon.statusSocket, "import", old.directory])
            }
            #expect(imported.status == 0, "\(imported.stdout)\(imported.stderr)")
            let concentrator = try await LineClient(port: ports.ingest, tls: try old.clientContext(old.concentrator))
            try await concentrator.send(readingLine(meter: "MTR-000003", seq: 1) + readingLine(meter: "MTR-000004", seq: 1))
            let lines = try await concentrator.collect { lastAck($0, meter: "MTR-000003") == 1 && $0.count >= 2 }
            #expect(lines.contains(.error(code: "forbidden", line: 2)))

            for file in ["ca.pem", "server.pem", "server.key"] {
                try FileManager.default.removeItem(atPath: live.directory + "/" + file)
                try FileManager.default.copyItem(atPath: new.directory + "/" + file, toPath: live.directory + "/" + file)
            }
            daemon.process.signal(SIGHUP)
            try await waitUntil { daemon.process.output.contains("Ingest TLS certificate reloaded") }
            #expect(daemon.process.exitStatus == nil, "SIGHUP must not stop meterd")

            // The connection made before the reload goes on; new ones need the new CA.
            try await concentrator.send(readingLine(meter: "MTR-000003", seq: 2))
            _ = try await concentrator.collect { lastAck($0, meter: "MTR-000003") == 2 }
            let fresh = try await LineClient(port: ports.ingest, tls: try new.meterContext("MTR-000001"))
            try await fresh.send(readingLine(meter: "MTR-000001", seq: 1) + readingLine(meter: "MTR-000002", seq: 1))
            let freshLines = try await fresh.collect { lastAck($0, meter: "MTR-000001") == 1 && $0.count >= 2 }
            #expect(freshLines.contains(.error(code: "forbidden", line: 2)))
            // A meter still holding a certificate of the old CA is turned away.
            let stale = try await LineClient(port: ports.ingest, tls: try new.clientContext(old.meterCertificate("MTR-000002")))
            try? await stale.send(readingLine(meter: "MTR-000002", seq: 1))
            #expect(try await stale.readLine() == nil)

            // Counted on the status socket and in /metrics.
            let status = try JSONSerialization.jsonObject(with: Data(try await ask(daemon.statusSocket, "status").utf8)) as? [String: Any]
            #expect((status?["rejects_by_code"] as? [String: Any])?["forbidden"] as? Int == 2)
            let metrics = try await httpGet(port: ports.http, path: "/metrics")
            #expect(metrics.body.contains(#"meterd_rejects_total{code="forbidden"} 2"#), "\(metrics.body)")
            #expect(metrics.body.contains("meterd_tls_handshake_failures_total 1"), "\(metrics.body)")
            #expect(try await daemon.terminate() == 0)
        }
    }
}

/// meter-sim speaking TLS with meter and concentrator certificates, and its spoof fault.
@Suite(.timeLimit(.minutes(2))) struct SimulatorTLSTests {
    @Test func meterSimWithMeterCertificatesIsAckedAndItsSpoofedReadingsAreRefused() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki", meters: (1...6).map { defaultMeterName(customer: Int64($0)) })
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration()) { harness in
                let reportPath = directory + "/report.json"
                let result = try await SimulatorCommandTests.run([
                    "run", "--port", String(harness.port), "--meters", "6", "--interval", "0.02", "--readings-per-meter", "10",
                    "--tls-ca", pki.ca, "--tls-cert-dir", pki.directory + "/meters", "--faults", "spoof=0.3", "--seed", "3",
                    "--report", reportPath,
                ])
                #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
                let report = try #require(
                    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: reportPath))) as? [String: Any])
                #expect(report["acked"] as? Int == 60)
                let spoofed = try #require(report["spoof_sent"] as? Int)
                #expect(spoofed > 0)
                #expect((report["errors_by_code"] as? [String: Int])?["forbidden"] == spoofed)
                // The spoofed meter is the one after the fleet: never stored, quarantined once per attempt.
                #expect(try await !meterIsKnown(harness.database, "MTR-000007"))
                #expect(harness.pipeline.statistics.rejects(.forbidden) == spoofed)
                #expect(harness.pipeline.statistics.stored.load(ordering: .relaxed) == 60)
            }
        }
    }

    @Test func meterSimAsAConcentratorSendsForItsMeters() async throws {
        try await withTemporaryDirectory { directory in
            let meters = (1...6).map { defaultMeterName(customer: Int64($0)) }
            let pki = try await TestPKI.make(in: directory + "/pki", meters: meters)
            let concentrators = ConcentratorDirectory(["DC-000001": Set(meters)])
            try await IngestHarness.with(directory: directory, configuration: pki.daemonConfiguration(), concentrators: concentrators) { harness in
                let result = try await SimulatorCommandTests.run([
                    "run", "--port", String(harness.port), "--meters", "6", "--concentrator", "3", "--interval", "0.02",
                    "--readings-per-meter", "10", "--tls-ca", pki.ca, "--tls-cert", pki.concentrator.certificate, "--tls-key",
                    pki.concentrator.key,
                ])
                #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
                #expect(result.stdout.contains("acked 60"), "\(result.stdout)")
                #expect(harness.pipeline.statistics.rejects(.forbidden) == 0)

                // Without a client certificate meterd refuses the handshake, and meter-sim says so.
                let refused = try await SimulatorCommandTests.run([
                    "run", "--port", String(harness.port), "--meters", "1", "--readings-per-meter", "1", "--tls-ca", pki.ca,
                    // Long enough for the refused handshake to happen on a loaded machine; meter-sim
                    // reports the TLS error whenever the timeout ends.
                    "--connect-timeout", "10", "--drain-timeout", "2",
                ])
                #expect(refused.status == 1)
                #expect(refused.stderr.contains("TLS errors"), "\(refused.stderr)")
            }
        }
    }
}
