import Foundation
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// `meterctl backup` on a PostgreSQL store: meterd runs `pg_dump`, and the archive restores.
@Suite(.serialized)
struct PostgreSQLBackupTests {
    @Test(.timeLimit(.minutes(3)))
    func meterctlBacksUpAPostgreSQLStoreWhileAMeterSendsAndTheArchiveRestoresWhole() async throws {
        let server = try await PostgresTestServer.shared()
        let source = try await server.createDatabase()
        try await withTemporaryDirectory { directory in
            // Given meterd on PostgreSQL with a fleet's readings stored
            let daemon = try MeterdUnderTest.start(dataDirectory: directory + "/data", arguments: ["--store", server.socketURL(source)])
            defer { daemon.process.stop() }
            let (ingest, _) = try await daemon.ports()
            var configuration = SimulationConfiguration(host: "127.0.0.1", port: ingest, meters: 100)
            configuration.interval = 0
            configuration.readingsPerMeter = 20
            configuration.firstSeq = 1
            configuration.drainTimeout = 30
            let fleet = try await MeterSimulation(configuration: configuration).run()
            #expect(fleet.report.acked == 2_000)

            // …and one meter that keeps sending through the backup
            let client = try await LineClient(port: ingest)
            let sender = keepSending(client, meter: "MTR-LIVE")
            defer { sender.cancel() }
            try await Task.sleep(for: .milliseconds(300))

            // When an operator asks for a backup
            let archive = directory + "/meterd.dump"
            let backup = try await MeterCtlTests.meterctlAsync(["--socket", daemon.statusSocket, "backup", archive])
            #expect(backup.status == 0, "\(backup.err)")
            #expect(backup.out.hasPrefix("backup written to \(archive) ("), "\(backup.out)")
            #expect(((try? FileManager.default.attributesOfItem(atPath: archive)[.size] as? NSNumber)?.intValue ?? 0) > 0)

            // …the file is never overwritten, and a path in no directory is refused before pg_dump runs
            let again = try await MeterCtlTests.meterctlAsync(["--socket", daemon.statusSocket, "backup", archive])
            #expect(again.status == 1)
            #expect(again.err == "meterctl: \(archive) already exists; meterd does not overwrite it\n")
            let nowhere = try await MeterCtlTests.meterctlAsync(["--socket", daemon.statusSocket, "backup", directory + "/missing/meterd.dump"])
            #expect(nowhere.status == 1)
            #expect(nowhere.err == "meterctl: no directory \(directory)/missing to write the backup into\n")

            sender.cancel()
            await client.close()
            #expect(try await daemon.terminate() == 0, "\(daemon.process.output)")

            // Then pg_restore makes an empty database a whole copy: every acknowledged reading once,
            // with aggregates equal to the readings…
            let copy = try await server.createDatabase()
            let restore = try await offPool {
                try runProgram(
                    ["pg_restore", "--no-owner", "--exit-on-error", "--dbname", copy.database, archive],
                    environment: ["PATH": "/usr/bin:/bin", "PGHOST": server.directory, "PGPORT": String(server.port), "PGUSER": server.user])
            }
            #expect(restore.status == 0, "\(restore.stderr)")
            let restored = try StoreLocation.postgresql(copy).open(logger: testLogger)
            try await expectLedgerMatches(fleet.ledger, restored)

            // …and one consistent moment of the meter that kept sending: its row agrees with its readings
            let live = try #require(try await restored.meterRecord(named: "MTR-LIVE"))
            let liveReadings = try #require(try await restored.recentReadings(meter: "MTR-LIVE", limit: 100_000)).readings
            #expect(!liveReadings.isEmpty)
            #expect(live.highWaterMark == liveReadings.map(\.seq).max())
            #expect(live.readingsTotal == Int64(liveReadings.count))
            #expect(Set(liveReadings.map(\.seq)) == Set(1...Int64(liveReadings.count)), "a gap or a double in the copy")

            // …on which meterd starts as on the original
            let onCopy = try MeterdUnderTest.start(dataDirectory: directory + "/copy", arguments: ["--store", server.socketURL(copy)])
            defer { onCopy.process.stop() }
            _ = try await onCopy.ports()
            #expect(try await onCopy.terminate() == 0, "\(onCopy.process.output)")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aFailedDumpSaysWhyInPgDumpsWordsAndLeavesNoFile() async throws {
        let server = try await PostgresTestServer.shared()
        try await withTemporaryDirectory { directory in
            var missing = try await server.createDatabase()
            missing.database = "no_such_database"
            let archive = directory + "/meterd.dump"
            await #expect {
                try await PostgreSQLDump(address: missing).write(to: archive)
            } throws: { error in
                guard let error = error as? OperatorQueryError else { return false }
                return error.code == "backup_failed" && error.detail.contains("pg_dump could not back up")
                    && error.detail.contains(#"database "no_such_database" does not exist"#)
            }
            #expect(!FileManager.default.fileExists(atPath: archive))
        }
    }

    @Test func theStoreAddressReachesPgDumpInLibpqsVariablesNotOnItsCommandLine() throws {
        let address = try PostgreSQLAddress(
            parsing: "postgresql://meterd:s3cret@db.example:6543/metering?sslmode=verify-full&sslrootcert=/etc/meterd/ca.pem")
        let environment = PostgreSQLDump(address: address).environment
        #expect(environment["PGHOST"] == "db.example")
        #expect(environment["PGPORT"] == "6543")
        #expect(environment["PGUSER"] == "meterd")
        #expect(environment["PGDATABASE"] == "metering")
        #expect(environment["PGPASSWORD"] == "s3cret")
        #expect(environment["PGSSLMODE"] == "verify-full")
        #expect(environment["PGSSLROOTCERT"] == "/etc/meterd/ca.pem")
        #expect(environment["PGSSLCERT"] == nil)
        let socket = try PostgreSQLAddress(parsing: "postgresql://meterd@/metering?host=/run/postgresql")
        let local = PostgreSQLDump(address: socket).environment
        #expect(local["PGHOST"] == "/run/postgresql")
        #expect(local["PGPORT"] == "5432")
        #expect(local["PGPASSWORD"] == nil)
        #expect(PostgreSQLDump.executable() != nil, "pg_dump comes with postgresql-15 (scripts/install-deps.sh)")
    }
}
