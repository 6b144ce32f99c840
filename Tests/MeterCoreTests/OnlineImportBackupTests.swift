import Foundation
import GRDB
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// `meterctl import` and `meterctl backup` through a running meterd while meters keep sending.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct OnlineImportBackupTests {
    /// Before the writer takes an import up, the daemon's progress names the directory with nothing
    /// read; `meterctl import` says it is starting rather than showing the directory as a file at 0 %.
    @Test func anImportNotYetTakenUpShowsAsStarting() {
        #expect(ImportProgressAnswer.Progress(file: "csv", rows: 0, fraction: 0).line == "csv: starting")
        #expect(
            ImportProgressAnswer.Progress(file: "monthly_data.csv", rows: 65_536, fraction: 0.404).line
                == "monthly_data.csv: 40% (65536 rows)")
        #expect(ImportProgressAnswer.Progress(file: "feedback.csv", rows: 0, fraction: 1).line == "feedback.csv: 100% (0 rows)")
    }

    @Test func importsThroughTheDaemonAndBacksUpWhileMetersSend() async throws {
        try await withTemporaryDirectory { directory in
            let csv = directory + "/csv"
            try CompanyGenerator(customers: 200, seed: 11, year: 2023).write(to: csv)
            let meterd = try MeterdUnderTest.start(dataDirectory: directory + "/data")
            defer { meterd.process.stop() }
            let ports = try await meterd.ports()
            let socket = meterd.statusSocket

            // A meter keeps sending for the whole test.
            let client = try await LineClient(port: ports.ingest)
            let sender = keepSending(client, meter: "MTR-000001")
            defer { sender.cancel() }

            #expect(try await ask(socket, "progress") == #"{"import":null}"#)
            let first = try await MeterCtlTests.meterctlAsync(["--socket", socket, "import", csv])
            #expect(first.status == 0, "\(first.err)")
            #expect(first.out.contains("customer_data.csv: 200 rows imported"))
            #expect(first.out.contains("monthly_data.csv: 2400 rows imported"))
            let kpiArguments = ["--socket", socket, "kpi", "--json", "--from", "2023-01", "--to", "2023-12"]
            let afterFirst = try await MeterCtlTests.meterctlAsync(kpiArguments)
            let document = try JSONDecoder().decode(KPIDocument.self, from: Data(afterFirst.out.utf8))
            #expect(document.totalCustomers == 200)

            // Again: nothing changes.
            let second = try await MeterCtlTests.meterctlAsync(["--socket", socket, "import", csv])
            #expect(second.status == 0)
            let afterSecond = try await MeterCtlTests.meterctlAsync(kpiArguments)
            let again = try JSONDecoder().decode(KPIDocument.self, from: Data(afterSecond.out.utf8))
            #expect(again.totalCustomers == document.totalCustomers, "changed on a second import")
            #expect(again.totalConsumptionKwh == document.totalConsumptionKwh, "changed on a second import")
            #expect(again.totalRevenue == document.totalRevenue, "changed on a second import")
            #expect(again.paymentStatus == document.paymentStatus, "changed on a second import")
            #expect(again.maintenance == document.maintenance, "changed on a second import")
            #expect(again.satisfaction == document.satisfaction, "changed on a second import")

            // A bad file is rejected whole, with file:line: reason, and a non-zero exit.
            let bad = directory + "/bad"
            try FileManager.default.createDirectory(atPath: bad, withIntermediateDirectories: true)
            try "CustomerID,Region,InstallationDate\n1,North,2021-01-05\n2,North,yesterday\n".write(
                toFile: bad + "/customer_data.csv", atomically: true, encoding: .utf8)
            let rejected = try await MeterCtlTests.meterctlAsync(["--socket", socket, "import", bad])
            #expect(rejected.status == 1)
            #expect(rejected.out.contains("customer_data.csv: rejected"))
            #expect(rejected.out.contains("customer_data.csv:3:"))

            // A consistent copy while the meter sends.
            let copy = directory + "/backup.sqlite"
            let backup = try await MeterCtlTests.meterctlAsync(["--socket", socket, "backup", copy])
            #expect(backup.status == 0, "\(backup.err)")
            #expect(backup.out.hasPrefix("backup written to \(copy)"))
            let existing = try await MeterCtlTests.meterctlAsync(["--socket", socket, "backup", copy])
            #expect(existing.status == 1)
            #expect(existing.err == "meterctl: \(copy) already exists; meterd does not overwrite it\n")

            sender.cancel()
            await client.close()
            #expect(try await meterd.terminate() == 0)
            let database = try DatabaseQueue(path: copy)
            let (check, customers, readings) = try await database.read { db in
                (
                    try String.fetchAll(db, sql: "PRAGMA integrity_check"),
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM customer")!,
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")!
                )
            }
            #expect(check == ["ok"])
            #expect(customers == 200)
            #expect(readings > 0)
        }
    }
}
