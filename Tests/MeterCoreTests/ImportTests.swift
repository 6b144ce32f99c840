import Foundation
import Synchronization
import GRDB
import Testing

@testable import MeterCore
@testable import SimulatorCore

@Suite struct ImportTests {
    /// Everything an import can change, summed up.
    func fingerprint(_ database: MeterDatabase) throws -> [String] {
        try database.pool.read { db in
            try [
                "SELECT COUNT(*), SUM(id), group_concat(region || installed_on || installed_month, ',') FROM customer",
                "SELECT COUNT(*), group_concat(name || '/' || COALESCE(customer_id, '') || '/' || region, ',') FROM meter",
                "SELECT COUNT(*), SUM(kwh), SUM(revenue), SUM(imported_status), SUM(imported_kwh) FROM meter_month",
                "SELECT COUNT(*), SUM(amount), SUM(paid) FROM bill",
                "SELECT COUNT(*), SUM(resolution_days), SUM(technician_id), SUM(ordinal) FROM maintenance",
                "SELECT COUNT(*), SUM(score) FROM feedback",
                "SELECT COUNT(*), SUM(days) FROM installation",
                "SELECT COUNT(*), SUM(resolved_month) FROM complaint",
                "SELECT COUNT(*), group_concat(name, ',') FROM technician",
                "SELECT COUNT(*), SUM(count), SUM(total) FROM company_rollup",
            ].map { sql in try Row.fetchOne(db, sql: sql)!.description }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func importingTheSameFilesTwiceChangesNothing() async throws {
        try await withTemporaryDirectory { directory in
            try CompanyGenerator(customers: 300, seed: 11).write(to: directory + "/csv")
            // A duplicate maintenance row (same customer, date, technician) is a second request, kept as such.
            let maintenance = directory + "/csv/maintenance_data.csv"
            let lines = try String(contentsOfFile: maintenance, encoding: .utf8).split(separator: "\n").map(String.init)
            try writeCSV(directory + "/csv", "maintenance_data.csv", lines + [lines[1]])
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")

            let first = try CompanyImporter.importDirectory(directory + "/csv", database: database)
            #expect(first.succeeded, "\(first.text)")
            #expect(
                first.files.map(\.file) == [
                    "technicians.csv", "customer_data.csv", "installations.csv", "monthly_data.csv", "bills.csv",
                    "maintenance_data.csv", "feedback_data.csv", "complaints.csv",
                ])
            let after = try self.fingerprint(database)
            let second = try CompanyImporter.importDirectory(directory + "/csv", database: database)
            #expect(second.succeeded)
            #expect(try self.fingerprint(database) == after)

            let counts = try await database.pool.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM meter_month")!, try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM maintenance")!,
                    try String.fetchOne(db, sql: "SELECT name FROM meter WHERE customer_id = 7")!
                )
            }
            #expect(counts.0 == 300 * 12)
            #expect(counts.1 == 300 / 5 + 1)
            #expect(counts.2 == "MTR-000007")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aBadRowRejectsItsFileOnly() async throws {
        try await withTemporaryDirectory { directory in
            try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-01-05", "2,South,2023-02-10 08:30:00"])
            try writeCSV(
                directory, "monthly_data.csv",
                [
                    "CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus",
                    "1,2023-01-01,100.5,15.0,Good",
                    "2,2023-01-01,200,30,Fair",
                    "2,2023-02-01,abc,30,Fair",
                ])
            try writeCSV(directory, "feedback_data.csv", ["CustomerID,FeedbackDate,SatisfactionScore", "1,2023-01-20,4", "3,2023-01-21,5"])
            try writeCSV(directory, "bills.csv", ["CustomerID,Month,Amount_$,Status", "1,2023-01,15.0,paid"])
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let report = try CompanyImporter.importDirectory(directory, database: database)
            #expect(!report.succeeded)
            let byFile = Dictionary(uniqueKeysWithValues: report.files.map { ($0.file, $0) })
            #expect(byFile["customer_data.csv"]?.rows == 2)
            #expect(byFile["bills.csv"]?.succeeded == true)
            #expect(byFile["monthly_data.csv"]?.errors.map(\.description) == ["monthly_data.csv:4: Consumption_kWh: expected a number, got \"abc\""])
            #expect(
                byFile["feedback_data.csv"]?.errors.map(\.description) == ["feedback_data.csv:3: unknown customer 3 (import customer_data.csv first)"]
            )
            #expect(report.text.contains("monthly_data.csv: rejected, nothing of it applied"))
            let (months, feedback) = try await database.pool.read { db in
                (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM meter_month")!, try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM feedback")!)
            }
            #expect(months == 0)
            #expect(feedback == 0)
        }
    }

    /// An amount so large that the totals would overflow to infinity (null in the KPI JSON) rejects its file.
    @Test(.timeLimit(.minutes(1)))
    func anAmountBeyondAnyMeterOrBillRejectsItsFile() async throws {
        try await withTemporaryDirectory { directory in
            try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-01-05", "2,South,2023-02-10"])
            try writeCSV(
                directory, "monthly_data.csv",
                ["CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus", "1,2023-01-01,1e308,15.0,Good", "2,2023-01-01,1e308,30,Fair"])
            try writeCSV(directory, "bills.csv", ["CustomerID,Month,Amount_$,Status", "1,2023-01,-2e12,paid", "2,2023-01,999999999999,paid"])
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let report = try CompanyImporter.importDirectory(directory, database: database)
            let byFile = Dictionary(uniqueKeysWithValues: report.files.map { ($0.file, $0) })
            #expect(
                byFile["monthly_data.csv"]?.errors.map(\.description).first
                    == "monthly_data.csv:2: Consumption_kWh: 1e308 is out of range (at most 1e12 either way)")
            #expect(byFile["bills.csv"]?.errors.map(\.description) == ["bills.csv:2: Amount_$: -2e12 is out of range (at most 1e12 either way)"])
            let months = try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM meter_month")! }
            #expect(months == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func rejectsMalformedFiles() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            try writeCSV(directory, "customer_data.csv", ["CustomerID,Region", "1,North"])
            var result = try CompanyImporter.importFile(directory + "/customer_data.csv", database: database)
            #expect(
                result.errors.map(\.description) == [
                    "customer_data.csv:1: missing column InstallationDate (expected CustomerID,Region,InstallationDate)"
                ])
            try writeCSV(
                directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-02-30", "1,North,2023-02-01", "x,South,"])
            result = try CompanyImporter.importFile(directory + "/customer_data.csv", database: database)
            #expect(
                result.errors.map(\.description) == [
                    "customer_data.csv:2: InstallationDate: expected YYYY-MM-DD or YYYY-MM-DD HH:MM:SS, got \"2023-02-30\"",
                    "customer_data.csv:4: CustomerID: expected a whole number, got \"x\"",
                ])
            // Quoted fields, CRLF line ends and a column order of its own are fine.
            try "Region,CustomerID,InstallationDate\r\n\"West, coast\",5,2023-03-01\r\n".write(
                toFile: directory + "/customer_data.csv", atomically: true, encoding: .utf8)
            result = try CompanyImporter.importFile(directory + "/customer_data.csv", database: database)
            #expect(result.succeeded)
            let region = try await database.pool.read { db in try String.fetchOne(db, sql: "SELECT region FROM meter WHERE name = 'MTR-000005'") }
            #expect(region == "West, coast")

            // Latin-1 text (Z\u{FC}rich saved as one byte 0xFC) and a row longer than the header are refused, not stored altered.
            var latin1 = Data("CustomerID,Region,InstallationDate\n6,Z".utf8)
            latin1.append(0xFC)
            latin1.append(Data("rich,2023-03-01\n7,North,2023-03-01,extra\n".utf8))
            try latin1.write(to: URL(fileURLWithPath: directory + "/customer_data.csv"))
            result = try CompanyImporter.importFile(directory + "/customer_data.csv", database: database)
            // A row the reader cannot split ends the file's checks there, as an unterminated quote does.
            #expect(result.errors.map(\.description) == ["customer_data.csv:2: field 2 is not valid UTF-8 (save the file as UTF-8)"])
            try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "6,North,2023-03-01", "7,North,2023-03-01,extra"])
            result = try CompanyImporter.importFile(directory + "/customer_data.csv", database: database)
            #expect(result.errors.map(\.description) == ["customer_data.csv:3: 4 fields, but the header names 3"])
            // A region no query could name: a line break in it, or over 200 characters. A row
            // whose quoted field spans lines is reported at the line where it begins.
            try writeCSV(
                directory, "customer_data.csv",
                [
                    "CustomerID,Region,InstallationDate", "6,\"North\nEast\",2023-03-01", "7,\(String(repeating: "R", count: 201)),2023-03-01",
                    "8,\"South\nWest\",2023-03-01,extra",
                ])
            result = try CompanyImporter.importFile(directory + "/customer_data.csv", database: database)
            #expect(
                result.errors.map(\.description) == [
                    #"customer_data.csv:2: Region: control characters (a line break or tab) in "North\nEast""#,
                    "customer_data.csv:4: Region: longer than 200 characters",
                    "customer_data.csv:5: 4 fields, but the header names 3",
                ])
            let customers = try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM customer WHERE id IN (6, 7)") }
            #expect(customers == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func metersFileReplacesTheDefaultMeter() async throws {
        try await withTemporaryDirectory { directory in
            try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-01-05", "2,South,2023-01-06"])
            try writeCSV(directory, "meters.csv", ["MeterID,CustomerID", "ACME-9,2"])
            try writeCSV(directory, "monthly_data.csv", ["CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus", "2,2023-01-01,50,5,Poor"])
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let report = try CompanyImporter.importDirectory(directory, database: database)
            #expect(report.succeeded, "\(report.text)")
            let meters = try await database.pool.read { db in
                try Row.fetchAll(
                    db,
                    sql: "SELECT m.name, m.customer_id, m.region, mm.kwh FROM meter m LEFT JOIN meter_month mm ON mm.meter_id = m.id ORDER BY m.name"
                )
                .map { "\($0["name"] as String)/\($0["customer_id"] as Int)/\($0["region"] as String)/\(($0["kwh"] as Double?) ?? 0)" }
            }
            #expect(meters == ["ACME-9/2/South/50.0", "MTR-000001/1/North/0.0"])
        }
    }

    /// Through the daemon's single writer: history and the live stream land in the same meter-month.
    @Test(.timeLimit(.minutes(1)))
    func importThroughTheWriterFeedsTheSameSeries() async throws {
        try await withTemporaryDirectory { directory in
            try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-01-05"])
            try writeCSV(directory, "monthly_data.csv", ["CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus", "1,2024-01-01,100,15,Good"])
            var configuration = DaemonConfiguration()
            configuration.tariff = Tariff(defaultRate: 0.1, regionRates: ["North": 0.2])
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let report = try await harness.pipeline.perform { writer in try CompanyImporter.importDirectory(directory, into: writer) }
                #expect(report.succeeded)
                let client = try await LineClient(port: harness.port)
                let ts = RFC3339.parseMilliseconds("2024-01-15T12:00:00Z")!
                try await client.send(readingLine(meter: "MTR-000001", seq: 1, kwh: 2.5, timestampMs: ts))
                #expect(try await client.readLine() == #"{"meter":"MTR-000001","ack":1}"#)
                await client.close()
                let row: Row = try harness.database.pool.read { db in
                    try Row.fetchOne(
                        db,
                        sql: """
                            SELECT COUNT(*) AS meters, SUM(mm.kwh) AS kwh, SUM(mm.revenue) AS revenue, MAX(mm.readings) AS readings
                            FROM meter_month mm JOIN meter m ON m.id = mm.meter_id WHERE m.name = 'MTR-000001' AND mm.month = 202401
                            """)!
                }
                #expect(row["meters"] as Int == 1)
                #expect(close(row["kwh"], 102.5))
                #expect(close(row["revenue"], 15.5))  // live revenue at the region's rate: 2.5 × 0.2
                #expect(row["readings"] as Int == 1)
                // Re-importing (file by file through the pipeline) replaces the imported part only; the live reading stays.
                #expect(try await CompanyImporter.importDirectory(directory, through: .pipeline(harness.pipeline)).succeeded)
                let kwh = try await harness.database.pool.read { db in try Double.fetchOne(db, sql: "SELECT SUM(kwh) FROM meter_month") }
                #expect(close(kwh, 102.5))
            }
        }
    }

    /// An import through the daemon holds the writer for as long as its largest file takes (tens of
    /// seconds at 100,000 customers): its progress must count as the writer's, or the watchdog
    /// and `/healthz` would take the import for a stall and systemd would kill meterd mid-import.
    @Test(.timeLimit(.minutes(1)))
    func aLongImportThroughThePipelineCountsAsTheWritersProgress() async throws {
        try await withTemporaryDirectory { directory in
            let rows = 300_000
            var text = "TechnicianID,TechnicianName\n"
            text.reserveCapacity(rows * 40)
            for id in 1...rows { text += "\(id),Field technician number \(id)\n" }
            try FileManager.default.createDirectory(atPath: directory + "/csv", withIntermediateDirectories: true)
            try text.write(toFile: directory + "/csv/technicians.csv", atomically: true, encoding: .utf8)
            try await IngestHarness.with(directory: directory) { harness in
                let pipeline = harness.pipeline
                // At each progress report: when it came, and the writer's last progress as the pipeline saw it then.
                let seen = Mutex<[(atMs: Int64, progressMs: Int64)]>([])
                let report = try await CompanyImporter.importDirectory(directory + "/csv", through: .pipeline(pipeline)) { _ in
                    let progressMs = pipeline.lastProgressMs
                    seen.withLock { $0.append((WallClock.nowMs(), progressMs)) }
                }
                #expect(report.succeeded, "\(report.text)")
                let reports = seen.withLock { $0 }
                #expect(reports.count >= rows / 65_536)
                for (previous, next) in zip(reports, reports.dropFirst()) {
                    #expect(next.progressMs >= previous.atMs, "\(reports)")
                }
            }
        }
    }

    /// 100,000 customers' files must import in well under a minute; this checks a tenth of that scale.
    @Test(.timeLimit(.minutes(1)))
    func importsTenThousandCustomersQuickly() async throws {
        try await withTemporaryDirectory { directory in
            try CompanyGenerator(customers: 10_000, seed: 5).write(to: directory)
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let progress = ProgressLog()
            let start = ContinuousClock.now
            let report = try CompanyImporter.importDirectory(directory, database: database) { progress.add($0) }
            #expect(report.succeeded)
            #expect(ContinuousClock.now - start < .seconds(30))
            #expect(progress.files.contains("monthly_data.csv"))
        }
    }
}

final class ProgressLog: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: [ImportProgress] = []

    func add(_ progress: ImportProgress) { self.lock.withLock { self.seen.append(progress) } }
    var files: Set<String> { self.lock.withLock { Set(self.seen.map(\.file)) } }
}
