import Foundation
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// `--store URL` (SPEC.md section 9): parsing, start-up failures in one line, and a real meterd on
/// PostgreSQL fed by meter-sim's fleet over TCP.
@Suite struct StoreSelectionTests {
    @Test func parsesSQLiteAndPostgreSQLURLs() throws {
        #expect(try StoreLocation(parsing: "sqlite:/var/lib/meterd/meterd.sqlite") == .sqlite(path: "/var/lib/meterd/meterd.sqlite"))
        #expect(try StoreLocation(parsing: "sqlite:data/m.sqlite") == .sqlite(path: "data/m.sqlite"))
        #expect(try StoreLocation(parsing: "sqlite:///srv/m.sqlite") == .sqlite(path: "/srv/m.sqlite"))
        #expect(
            try StoreLocation(parsing: "postgresql://meterd:s%40cret@db.example:6432/fleet")
                == .postgresql(PostgreSQLAddress(user: "meterd", password: "s@cret", host: "db.example", port: 6432, database: "fleet")))
        #expect(
            try StoreLocation(parsing: "postgresql://meterd@/fleet?host=/run/postgresql")
                == .postgresql(PostgreSQLAddress(user: "meterd", database: "fleet", socketDirectory: "/run/postgresql")))
        #expect(
            try StoreLocation(parsing: "postgres://u@[::1]/db")
                == .postgresql(PostgreSQLAddress(user: "u", host: "::1", port: 5432, database: "db")))
        let unix = try #require(
            { if case .postgresql(let address) = try StoreLocation(parsing: "postgresql://m@x:5433/f?host=/tmp/pg") { address } else { nil } }())
        #expect(unix.socketPath == "/tmp/pg/.s.PGSQL.5433")
        // TLS as libpq spells it; prefer when the URL says nothing
        #expect(
            try StoreLocation(parsing: "postgresql://meterd@db.example/fleet?sslmode=verify-full&sslrootcert=/etc/meterd/pg-ca.pem")
                == .postgresql(
                    PostgreSQLAddress(
                        user: "meterd", host: "db.example", database: "fleet",
                        tls: PostgreSQLTLS(mode: .verifyFull, rootCertificate: "/etc/meterd/pg-ca.pem"))))
        let withClientCertificate = "postgresql://meterd@10.0.0.5:5432/fleet?sslmode=verify-ca&sslcert=/etc/c.pem&sslkey=/etc/c.key"
        #expect(try StoreLocation(parsing: withClientCertificate).description == withClientCertificate)
        #expect(unix.tls.mode == .prefer)
        // The password never shows in logs or errors.
        #expect(try StoreLocation(parsing: "postgresql://meterd:hunter2@db/fleet").description == "postgresql://meterd:***@db:5432/fleet")
    }

    @Test(arguments: [
        ("mysql://root@db/fleet", "expected sqlite:PATH or postgresql://"),
        ("sqlite:", "sqlite: needs the database file's path"),
        ("postgresql://db.example/fleet", "no user"),
        ("postgresql://meterd@db.example", "no database name"),
        ("postgresql://meterd@db.example:99999/fleet", "bad port \"99999\""),
        ("postgresql://meterd@/fleet", "no host"),
        (
            "postgresql://meterd@db/fleet?sslmode=allow",
            "unsupported sslmode \"allow\" (meterd understands disable, prefer, require, verify-ca, verify-full)"
        ),
        ("postgresql://meterd@db/fleet?sslcert=/etc/c.pem", "sslcert= and sslkey= go together"),
        ("postgresql://meterd@10.0.0.5/fleet?sslmode=verify-full", "10.0.0.5 is an address (name the host, or use sslmode=verify-ca)"),
        ("postgresql://meterd@db/fleet?sslrootcert=", "sslrootcert= needs a file's path"),
        ("postgresql://meterd@db/fleet?timeout=5", "unsupported parameter \"timeout\""),
        ("postgresql://meterd@db/fleet?host=relative", "host= must name a socket directory"),
        ("postgresql://meterd:%zz@db/fleet", "malformed percent-encoding in the password"),
    ])
    func refusesABadURLWithOneLineNamingTheProblem(url: String, problem: String) {
        do {
            _ = try StoreLocation(parsing: url)
            Issue.record("\(url) was accepted")
        } catch {
            #expect(error.key == "store")
            #expect(error.description.contains(problem), "\(error)")
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func theStoreComesFromTheEnvironmentUnlessAFlagSaysOtherwise() throws {
        let environment = ["METERD_STORE": "postgresql://meterd@db/fleet"]
        let fromEnvironment = try DaemonConfiguration.resolve(configFile: nil, overrides: [], environment: environment)
        #expect(fromEnvironment.storeLocation == .postgresql(PostgreSQLAddress(user: "meterd", host: "db", database: "fleet")))
        let fromFlag = try DaemonConfiguration.resolve(configFile: nil, overrides: [("store", "sqlite:/x.sqlite")], environment: environment)
        #expect(fromFlag.storeLocation == .sqlite(path: "/x.sqlite"))
        // The default stays the SQLite file in the data directory: the quick start does not change.
        #expect(
            try DaemonConfiguration.resolve(configFile: nil, overrides: [], environment: [:]).storeLocation
                == .sqlite(path: "./meterd-data/meterd.sqlite"))
        #expect(throws: ConfigurationError.self) {
            try DaemonConfiguration.resolve(configFile: nil, overrides: [], environment: ["METERD_STORE": "nonsense"])
        }
    }

    /// Runs meterd with `--store URL` and expects it to stop at once with exit 2 and one line containing `problem`.
    func expectStartupFailure(
        store: String, arguments: [String] = [], problem: String, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try MeterdUnderTest.start(dataDirectory: directory, arguments: ["--store", store] + arguments)
            let status = try await daemon.process.waitForExit(timeout: .seconds(60))
            let output = daemon.process.output
            #expect(status == 2, "meterd exited with \(status):\n\(output)", sourceLocation: sourceLocation)
            let lines = output.split(separator: "\n")
            #expect(lines.count == 1, "expected one line:\n\(output)", sourceLocation: sourceLocation)
            #expect(output.hasPrefix("meterd: ") && output.contains(problem), "\(output)", sourceLocation: sourceLocation)
            #expect(!output.contains("wrong-password"), "the password leaked:\n\(output)", sourceLocation: sourceLocation)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func meterdRefusesToStartOnABadURLARefusedConnectionOrAWrongPassword() async throws {
        try await self.expectStartupFailure(store: "postgresql://meterd@localhost/", problem: "invalid configuration: store: no database name")
        do {
            let server = try await PostgresTestServer.shared()
            let address = try await server.createDatabase()
            // Nothing listens on the socket of another port.
            try await self.expectStartupFailure(
                store: "postgresql://meterd@/\(address.database)?host=\(server.directory)&port=1", problem: "cannot connect to PostgreSQL at")
            // Nothing listens on loopback port 1 either.
            try await self.expectStartupFailure(
                store: "postgresql://meterd@127.0.0.1:1/\(address.database)",
                problem: "cannot connect to PostgreSQL at 127.0.0.1:1: Connection refused")
            try await self.expectStartupFailure(
                store: server.tcpAddress(database: address.database, password: "wrong-password").urlWithPassword,
                problem: "refused user meterd: password authentication failed")
            try await self.expectStartupFailure(
                store: "postgresql://meterd@/no_such_db?host=\(server.directory)&port=\(server.port)", problem: "has no database no_such_db")
            try await self.expectStartupFailure(
                store: "postgresql://nouser@/\(address.database)?host=\(server.directory)&port=\(server.port)",
                problem: #"refused user nouser: role "nouser" does not exist (check the user name in the store URL, or create the role)"#)
            // This cluster has TLS off: sslmode=require cannot be met.
            try await self.expectStartupFailure(
                store: server.tcpAddress(database: address.database, password: "wrong-password").urlWithPassword + "?sslmode=require",
                problem: "does not take TLS connections, and the store URL's sslmode=require requires TLS")
            // A node whose months would follow another zone than the store's: the first node's zone stays.
            let url = server.socketURL(address)
            let first = try await withTemporaryDirectory { directory in
                let daemon = try MeterdUnderTest.start(dataDirectory: directory, arguments: ["--store", url, "--timezone", "Europe/Berlin"])
                _ = try await daemon.ports()
                daemon.process.stop()
                return try await StoreLocation.postgresql(address).open(logger: testLogger).recordedTimeZone()
            }
            #expect(first?.identifier == "Europe/Berlin")
            try await self.expectStartupFailure(
                store: url, arguments: ["--timezone", "Pacific/Kiritimati"],
                problem: "invalid configuration: timezone: this node's months would follow Pacific/Kiritimati, but the store's follow "
                    + "Europe/Berlin: every node on one store must use the same timezone (set timezone = Europe/Berlin)")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func meterdOnPostgreSQLStoresEveryAcknowledgedReadingOnce() async throws {
        try await PostgresTestServer.with { server in
            let address = try await server.createDatabase()
            try await withTemporaryDirectory { directory in
                // Given a real meterd on PostgreSQL, over TCP with the password
                let url = server.tcpAddress(database: address.database, password: server.password).urlWithPassword
                let daemon = try MeterdUnderTest.start(dataDirectory: directory, arguments: ["--store", url])
                defer { daemon.process.stop() }
                let (ingest, _) = try await daemon.ports()

                // When meter-sim's fleet sends, with disconnects that make meters resend
                var configuration = SimulationConfiguration(host: "127.0.0.1", port: ingest, meters: 200)
                configuration.interval = 0
                configuration.readingsPerMeter = 10
                configuration.firstSeq = 1
                configuration.window = 10
                configuration.drainTimeout = 30
                configuration.faults = try FaultPlan(parsing: "disconnect=0.02,duplicate=0.05")
                let result = try await MeterSimulation(configuration: configuration).run()
                #expect(result.report.disconnectsInjected > 0)
                #expect(result.report.acked == 2_000)
                #expect(result.report.unacked == 0)
                #expect(try await daemon.terminate() == 0, "\(daemon.process.output)")

                // Then every acknowledged reading is stored once, and the aggregates equal the readings
                let store = try StoreLocation.postgresql(address).open(logger: testLogger)
                try await expectLedgerMatches(result.ledger, store)
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func theKPIDocumentOfTheSameReadingsIsTheSameOnBothStores() async throws {
        // 2026-03-20T12:00:00Z, as GoldenAnswerTests: the documents are asked at one fixed moment.
        let nowMs: Int64 = 1_774_008_000_000
        var documents: [String] = []
        for backend in StoreBackend.allCases {
            let document = try await backend.withFreshStore { location in
                let store = try location.open(logger: testLogger)
                let writer = try store.makeWriter(WriterSettings(tariff: Tariff(defaultRate: 0.2)))
                // Forty meters over three months: faults, poor status, a late reading, a register meter with a gap.
                var submissions: [IngestSubmission] = []
                for meter in 0..<40 {
                    var readings: [Reading] = []
                    for step in 0..<30 {
                        let ts = nowMs - Int64(90 - step * 3) * 86_400_000 + Int64(meter) * 60_000
                        readings.append(
                            Reading(
                                meter: String(format: "MTR-%06d", meter), seq: Int64(step + 1), timestampMs: ts,
                                kwh: Double((meter * 7 + step) % 13) / 4,
                                status: step % 11 == 0 ? .poor : (step % 7 == 0 ? .fair : .good),
                                fault: meter % 4 == 0 && step % 8 == 0 ? "tamper" : nil,
                                voltage: 230 + Double(step % 5)))
                    }
                    readings.append(Reading(meter: String(format: "MTR-%06d", meter), seq: 31, timestampMs: nowMs - 200 * 86_400_000, kwh: 1))
                    submissions.append(
                        IngestSubmission(
                            readings: readings.enumerated().map { SubmittedReading(reading: $1, line: $0 + 1, receivedMs: nowMs - 3_600_000) },
                            receiver: nil))
                }
                submissions.append(
                    IngestSubmission(
                        readings: [
                            SubmittedReading(
                                reading: Reading(meter: "REG-1", seq: 1, timestampMs: nowMs - 40 * 86_400_000, registerKwh: 100), line: 1,
                                receivedMs: nowMs - 60_000),
                            SubmittedReading(
                                reading: Reading(meter: "REG-1", seq: 2, timestampMs: nowMs - 86_400_000, registerKwh: 160), line: 2,
                                receivedMs: nowMs - 60_000),
                        ], receiver: nil))
                _ = try writer.commit(submissions)
                let engine = KPIEngine(store: store, settings: KPISettings(timeZone: TimeZone(identifier: "UTC")!))
                let period = try KPIPeriod(from: Month(year: 2025, month: 4), to: Month(year: 2026, month: 3))
                return try await engine.json(period: period, region: nil, nowMs: nowMs)
            }
            documents.append(document)
        }
        // The documents carry the figures (not an empty period), and are the same byte for byte.
        let document = try JSONDecoder().decode(KPIDocument.self, from: Data(documents[0].utf8))
        #expect(document.totalConsumptionKwh > 100)
        #expect(!document.faultyMeters.isEmpty)
        #expect(document.readingLatencyMs.count > 0)
        #expect(document.validationFlags.clockBackwards == 40)  // each meter's late reading
        #expect(document.readSuccessRate != nil)
        #expect(documents[0] == documents[1])
    }
}

extension PostgreSQLAddress {
    /// The URL with its password, as an operator writes it in `--store`.
    var urlWithPassword: String {
        let password = self.password.map { ":" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0) } ?? ""
        return "postgresql://\(self.user)\(password)@\(self.host):\(self.port)/\(self.database)"
    }
}

/// Every acknowledged reading is stored, once, and nothing else is, asked through the store
/// boundary (so on any backend): max seq, count and kWh per meter equal meter-sim's ledger, and
/// each meter's monthly aggregates hold the kWh of its readings.
func expectLedgerMatches(_ ledger: [LedgerEntry], _ store: any MeterStore) async throws {
    for entry in ledger where entry.ackedReadings > 0 {
        guard let readings = try await store.recentReadings(meter: entry.meter, limit: 100_000)?.readings else {
            Issue.record("meter \(entry.meter) has acknowledged readings but none stored")
            continue
        }
        #expect(readings.map(\.seq).max() == entry.ackedMaxSeq, "max seq of \(entry.meter)")
        #expect(readings.count == entry.ackedReadings, "readings of \(entry.meter)")
        #expect(Set(readings.map(\.seq)).count == readings.count, "a reading of \(entry.meter) was stored twice")
        let kwh = readings.map(\.kwh).reduce(0, +)
        #expect(abs(kwh - entry.ackedKwh) <= 1e-9 * Double(max(1, readings.count)), "kWh of \(entry.meter)")
        let monthKwh = try await store.meterMonths(named: entry.meter).map(\.kwh).reduce(0, +)
        #expect(abs(monthKwh - kwh) <= 1e-6 * max(1, kwh), "monthly kWh of \(entry.meter)")
        let meter = try #require(try await store.meterRecord(named: entry.meter))
        #expect(meter.highWaterMark == entry.ackedMaxSeq, "high-water mark of \(entry.meter)")
        #expect(meter.readingsTotal == Int64(entry.ackedReadings), "readings total of \(entry.meter)")
    }
}

/// Database faults (issue 13 point 5): PostgreSQL goes away while meters send.
@Suite struct PostgreSQLFaultTests {
    @Test(.timeLimit(.minutes(3)))
    func aDatabaseCrashMidStreamStopsAcksThenMeterdReconnectsAndLosesOrDoublesNothing() async throws {
        try await PostgresTestServer.with { server in
            let address = try await server.createDatabase()
            try await withTemporaryDirectory { directory in
                // Given meterd on PostgreSQL over its Unix socket, and meters sending for a few seconds
                let url = server.socketURL(address)
                let daemon = try MeterdUnderTest.start(dataDirectory: directory, arguments: ["--store", url])
                defer { daemon.process.stop() }
                let (ingest, http) = try await daemon.ports()
                var configuration = SimulationConfiguration(host: "127.0.0.1", port: ingest, meters: 100)
                configuration.interval = 0.1
                configuration.readingsPerMeter = 60
                configuration.firstSeq = 1
                configuration.window = 100
                configuration.drainTimeout = 60
                async let simulation = MeterSimulation(configuration: configuration).run()

                // When the database crashes mid-stream and comes back a few seconds later
                try await Task.sleep(for: .seconds(2))
                try await server.crash()
                // meterd notices: readiness goes down while commits fail
                try await waitUntil(timeout: .seconds(30)) { try await httpGet(port: http, path: "/readyz").status != 200 }
                try await Task.sleep(for: .seconds(2))
                try await server.restart()
                let result = try await simulation

                // Then every reading is acknowledged in the end, stored once, and meterd said what happened
                #expect(result.report.acked == 6_000)
                #expect(result.report.unacked == 0)
                try await waitUntil(timeout: .seconds(30)) { try await httpGet(port: http, path: "/readyz").status == 200 }
                #expect(try await daemon.terminate() == 0, "\(daemon.process.output)")
                #expect(daemon.process.output.contains("Store unreachable; meters are told busy"))
                #expect(result.report.busySignals > 0, "meters sending during the outage are told busy")
                #expect(daemon.process.output.contains("Reconnected to PostgreSQL"))
                let store = try StoreLocation.postgresql(address).open(logger: testLogger)
                try await expectLedgerMatches(result.ledger, store)
            }
        }
    }

    /// A database connection the network black-holes (no answer, no reset) must not hold meterd's
    /// shutdown, nor its watchdog loop, until the query's deadline: systemd's status line, which asks
    /// the store for the fleet's figures, is refreshed beside that loop, not in it.
    @Test(.timeLimit(.minutes(2)))
    func aBlackHoledDatabaseConnectionDoesNotHoldUpShutdown() async throws {
        let server = try await PostgresTestServer.shared()
        let database = try await server.createDatabase().database
        try await BlackHoleProxy.with(upstreamPort: server.port) { proxy in
            try await withTemporaryDirectory { directory in
                // Given meterd on PostgreSQL through the proxy, one reading acknowledged and the writer idle
                let notify = try DatagramReceiver(path: directory + "/notify.sock")
                defer { notify.close() }
                let url = server.proxiedAddress(database: database, proxy: proxy).urlWithPassword
                let daemon = try MeterdUnderTest.start(
                    dataDirectory: directory + "/data", arguments: ["--store", url], environment: ["NOTIFY_SOCKET": notify.path])
                defer { daemon.process.stop() }
                let (ingest, _) = try await daemon.ports()
                let meter = try await LineClient(port: ingest)
                try await meter.send(readingLine(meter: "MTR-BH1", seq: 1) + "\n")
                #expect(try await meter.readLine(timeout: .seconds(30)) == #"{"meter":"MTR-BH1","ack":1}"#)
                await meter.close()

                // When the path black-holes every connection to the database, and the status line's
                // next refresh (every 5 s) asks the reader's
                proxy.blackHoleExisting()
                try await Task.sleep(for: .seconds(7))

                // Then meterd still stops at once when told to, well before the reader's 60 s deadline
                let stopping = ContinuousClock.now
                // Its log says what held it, should it not stop in time.
                let status = try? await daemon.terminate()
                #expect(status == 0, "\(daemon.process.output)")
                #expect(ContinuousClock.now - stopping < .seconds(20))
                #expect(notify.messages.contains { $0.hasPrefix("STOPPING=1") })
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func whileTheDatabaseIsDownMetersAreToldBusyAndTheWatchdogStillPings() async throws {
        try await PostgresTestServer.with { server in
            let address = try await server.createDatabase()
            try await withTemporaryDirectory { directory in
                // Given meterd on PostgreSQL under a 1 s watchdog, and a meter whose first reading is acknowledged
                let notify = try DatagramReceiver(path: directory + "/notify.sock")
                defer { notify.close() }
                let url = server.socketURL(address)
                let daemon = try MeterdUnderTest.start(
                    dataDirectory: directory + "/data", arguments: ["--store", url],
                    environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"])
                defer { daemon.process.stop() }
                let (ingest, http) = try await daemon.ports()
                let meter = try await LineClient(port: ingest)
                try await meter.send(readingLine(meter: "MTR-PG1", seq: 1) + "\n")
                #expect(try await meter.readLine(timeout: .seconds(30)) == #"{"meter":"MTR-PG1","ack":1}"#)

                // When the database goes away and the meter keeps sending
                try await server.crash()
                try await meter.send(readingLine(meter: "MTR-PG1", seq: 2) + "\n")
                try await waitUntil(timeout: .seconds(30)) {
                    try await ask(daemon.statusSocket, "status").contains(#""store_unreachable_since":"20"#)
                }
                try await meter.send(readingLine(meter: "MTR-PG1", seq: 3) + "\n")

                // Then the meter is told busy, not acknowledged, and so is a meter that connects now
                #expect(try await meter.readLine(timeout: .seconds(30)) == #"{"busy":true,"retry_after_ms":500}"#)
                let newcomer = try await LineClient(port: ingest)
                try await newcomer.send(readingLine(meter: "MTR-PG2", seq: 1) + "\n")
                #expect(try await newcomer.readLine(timeout: .seconds(30)) == #"{"busy":true,"retry_after_ms":500}"#)
                // readiness is down and says why, the process calls itself alive, and systemd keeps
                // getting pings for several watchdog intervals: a restart could not bring the database back
                let ready = try await httpGet(port: http, path: "/readyz")
                #expect(ready.status == 503 && ready.body.contains("store unreachable"), "\(ready)")
                let metrics = try await httpGet(port: http, path: "/metrics").body
                #expect(metrics.contains("meterd_writer_healthy 0") && metrics.contains("meterd_commit_failures_total "), "\(metrics)")
                let pingsBefore = notify.messages.count { $0 == "WATCHDOG=1" }
                try await Task.sleep(for: .seconds(4))
                #expect(notify.messages.count { $0 == "WATCHDOG=1" } >= pingsBefore + 4)
                let health = try await httpGet(port: http, path: "/healthz")
                #expect(health.status == 200 && health.body.contains("store unreachable, retrying"), "\(health)")
                try await waitUntil(timeout: .seconds(10)) {
                    notify.messages.contains { $0.hasPrefix("STATUS=") && $0.contains("store unreachable for") }
                }

                // When the database is back, both meters' readings are acknowledged and stored once
                try await server.restart()
                var acks: [String] = []
                while acks.last != #"{"meter":"MTR-PG1","ack":3}"#, let line = try await meter.readLine(timeout: .seconds(30)) { acks.append(line) }
                #expect(acks.allSatisfy { $0.hasPrefix(#"{"meter":"MTR-PG1","ack":"#) }, "\(acks)")
                #expect(try await newcomer.readLine(timeout: .seconds(30)) == #"{"meter":"MTR-PG2","ack":1}"#)
                try await waitUntil(timeout: .seconds(10)) { try await httpGet(port: http, path: "/readyz").status == 200 }
                let recovered = try await ask(daemon.statusSocket, "status")
                #expect(recovered.contains(#""writer":{"healthy":true,"failure":null,"store_unreachable_since":null}"#))
                // and the status keeps count of the commits the outage failed
                let failedCommits = try JSONDecoder().decode(StatusAnswer.self, from: Data(recovered.utf8)).commitFailuresTotal
                #expect((failedCommits ?? 0) >= 1, "\(recovered)")
                await meter.close()
                await newcomer.close()
                #expect(try await daemon.terminate() == 0, "\(daemon.process.output)")
                #expect(daemon.process.output.contains("Store unreachable; meters are told busy"))
                // The recovery is logged by whichever saw it first: a retried commit, or the idle
                // writer's check (the readings wait with their connections while the store is away).
                #expect(
                    daemon.process.output.contains("Commits succeed again") || daemon.process.output.contains("The store answers again"),
                    "\(daemon.process.output)")
                let store = try StoreLocation.postgresql(address).open(logger: testLogger)
                #expect(try await store.recentReadings(meter: "MTR-PG1", limit: 10)?.readings.map(\.seq).sorted() == [1, 2, 3])
                #expect(try await store.recentReadings(meter: "MTR-PG2", limit: 10)?.readings.map(\.seq) == [1])
            }
        }
    }
    /// The outage shows on a node with nothing to commit (its meters quiet, or all on other
    /// nodes): `/readyz` and the status socket say so within seconds, and it clears by itself.
    @Test(.timeLimit(.minutes(3)))
    func anIdleNodeShowsTheDatabaseOutageAndItsEnd() async throws {
        try await PostgresTestServer.with { server in
            let address = try await server.createDatabase()
            try await withTemporaryDirectory { directory in
                // Given meterd on PostgreSQL, ready, with no meter connected
                let url = server.socketURL(address)
                let daemon = try MeterdUnderTest.start(dataDirectory: directory + "/data", arguments: ["--store", url])
                defer { daemon.process.stop() }
                let (ingest, http) = try await daemon.ports()
                try await waitUntil(timeout: .seconds(30)) { try await httpGet(port: http, path: "/readyz").status == 200 }

                // When the database goes away
                try await server.crash()

                // Then readiness goes down and the status socket dates the outage, with no commit attempted
                try await waitUntil(timeout: .seconds(10)) {
                    let ready = try await httpGet(port: http, path: "/readyz")
                    return ready.status == 503 && ready.body.contains("store unreachable")
                }
                #expect(try await ask(daemon.statusSocket, "status").contains(#""store_unreachable_since":"20"#))
                // and a meter that connects meanwhile is told busy
                let meter = try await LineClient(port: ingest)
                try await meter.send(readingLine(meter: "MTR-IDLE", seq: 1) + "\n")
                #expect(try await meter.readLine(timeout: .seconds(30)) == #"{"busy":true,"retry_after_ms":500}"#)
                await meter.close()

                // When the database is back
                try await server.restart()

                // Then the node is ready again by itself, and takes readings
                try await waitUntil(timeout: .seconds(20)) { try await httpGet(port: http, path: "/readyz").status == 200 }
                #expect(try await ask(daemon.statusSocket, "status").contains(#""store_unreachable_since":null"#))
                let again = try await LineClient(port: ingest)
                try await again.send(readingLine(meter: "MTR-IDLE", seq: 1) + "\n")
                #expect(try await again.readLine(timeout: .seconds(30)) == #"{"meter":"MTR-IDLE","ack":1}"#)
                await again.close()
                #expect(try await daemon.terminate() == 0, "\(daemon.process.output)")
                #expect(daemon.process.output.contains("Store unreachable; meters are told busy"))
                #expect(daemon.process.output.contains("The store answers again"))
            }
        }
    }
}
