import Foundation
import Testing

@testable import MeterCore

/// Pins the wire JSON of the operator answers (SPEC.md sections 5–6) against files in `Golden/`.
///
/// A small company and a few live readings at fixed times, every answer asked at a fixed `nowMs`:
/// the answers are then deterministic, and each is compared as text with its golden file (after
/// blanking the few figures that depend on the machine, such as the database size). Run with
/// `UPDATE_GOLDEN=1` to rewrite the files; a diff in them is a change of the wire contract.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct GoldenAnswerTests {
    /// 2026-03-20T12:00:00Z: every answer is asked at this moment.
    static let nowMs: Int64 = 1_774_008_000_000
    static let day: Int64 = 86_400_000

    static var goldenDirectory: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden").path
    }

    /// Compares an answer line with `Golden/<name>.json`, or writes it there under `UPDATE_GOLDEN=1`;
    /// then decodes the golden line as `Answer` and checks that encoding it again gives the same bytes.
    static func expectGolden<Answer: Codable & Equatable>(
        _ name: String, _ answer: String, as type: Answer.Type,
        blanking keys: [String] = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        var text = answer
        for key in keys {
            // Blanks a machine-dependent number, keeping its key, position and JSON type.
            text = text.replacingOccurrences(of: "\"\(key)\":-?[0-9][0-9.eE+-]*", with: "\"\(key)\":0", options: .regularExpression)
        }
        let path = self.goldenDirectory + "/" + name + ".json"
        if ProcessInfo.processInfo.environment["UPDATE_GOLDEN"] == "1" {
            try FileManager.default.createDirectory(atPath: self.goldenDirectory, withIntermediateDirectories: true)
            try (text + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            return
        }
        let golden = try String(contentsOfFile: path, encoding: .utf8)
        #expect(
            text + "\n" == golden, "\(name): the wire JSON changed (rerun with UPDATE_GOLDEN=1 only if that is intended)",
            sourceLocation: sourceLocation)
        let decoded = try JSONDecoder().decode(type, from: Data(golden.utf8))
        #expect(
            try AnswerEncoder.json(decoded) + "\n" == golden, "\(name): decoding and encoding again changes the JSON",
            sourceLocation: sourceLocation)
    }

    /// Four customers in two regions, three months of history, the company's events, and one bad file.
    static func writeCompany(_ directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try writeCSV(directory, "technicians.csv", ["TechnicianID,TechnicianName", "1,Ada Lovelace", "2,Grace Hopper"])
        try writeCSV(
            directory, "customer_data.csv",
            [
                "CustomerID,Region,InstallationDate",
                "1,North,2025-06-01", "2,North,2026-01-15", "3,South,2025-11-20", "4,South,2026-02-03",
            ])
        try writeCSV(
            directory, "installations.csv",
            [
                "CustomerID,RequestDate,InstallationDate,TechnicianID",
                "2,2026-01-05,2026-01-15,1", "4,2026-01-20,2026-02-03,2",
            ])
        try writeCSV(
            directory, "monthly_data.csv",
            [
                "CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus",
                "1,2026-01-01,120.5,18.08,Good", "1,2026-02-01,98.25,14.74,Poor", "1,2026-03-01,101,15.15,Poor",
                "2,2026-02-01,80,12,Fair", "2,2026-03-01,75.125,11.27,Good",
                "3,2026-01-01,200,30,Good", "3,2026-02-01,210.75,31.61,Fair", "3,2026-03-01,0,0,Good",
                "4,2026-03-01,55.5,8.33,Good",
            ])
        try writeCSV(
            directory, "bills.csv",
            [
                "CustomerID,Month,Amount_$,Status",
                "1,2026-01,18.08,paid", "1,2026-02,14.74,unpaid", "3,2026-01,30,paid", "3,2026-02,31.61,paid",
            ])
        try writeCSV(
            directory, "maintenance_data.csv",
            [
                "CustomerID,RequestDate,ResolutionDate,TechnicianID",
                "1,2026-01-10,2026-01-13,1", "3,2026-02-01,2026-02-08,2", "3,2026-03-02,2026-04-02,1",
            ])
        try writeCSV(
            directory, "feedback_data.csv",
            [
                "CustomerID,FeedbackDate,SatisfactionScore", "1,2026-01-20,4", "2,2026-02-11,5", "3,2026-03-05,2",
            ])
        // A bad row: the import answer lists it, and nothing of the file is applied.
        try writeCSV(
            directory, "complaints.csv",
            [
                "ComplaintID,CustomerID,Date,Category,ResolvedDate",
                "1,1,2026-03-03,billing,2026-03-10", "2,3,2026-03-12,outage,", "x,4,2026-03-13,billing,",
            ])
    }

    /// Live readings at fixed times: meter 1 and 3 report now, meter 2 fell silent a day ago, meter 4 never reported.
    static let readings: [(Reading, receivedMs: Int64)] = [
        (Reading(meter: "MTR-000001", seq: 1_796_017_766_725_001, timestampMs: nowMs - 60_000, kwh: 0.5), nowMs - 59_880),
        (
            Reading(meter: "MTR-000001", seq: 1_796_017_766_725_002, timestampMs: nowMs - 30_000, kwh: 0.25, status: .fair, fault: "voltage_sag"),
            nowMs - 29_950
        ),
        (Reading(meter: "MTR-000002", seq: 7, timestampMs: nowMs - day, kwh: 1.125), nowMs - day + 40),
        (Reading(meter: "MTR-000003", seq: 12, timestampMs: nowMs - 10_000, kwh: 2, status: .poor, fault: "tamper"), nowMs - 9_000),
    ]

    @Test func operatorAnswersMatchTheirGoldenFiles() async throws {
        try await withTemporaryDirectory { directory in
            try Self.writeCompany(directory + "/csv")
            try await IngestHarness.with(directory: directory) { harness in
                let store = harness.store
                let zone = TimeZone(identifier: "UTC")!
                let rollups = KPIRollups()
                try await harness.pipeline.perform { writer in writer.commitListener = rollups }
                let engine = KPIEngine(store: store, rollups: rollups, settings: KPISettings(timeZone: zone))
                let liveness = LivenessMonitor(
                    store: store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 900,
                    logger: testLogger, nowMs: Self.nowMs - 2 * Self.day)
                let snapshots = SnapshotService(
                    engine: engine, writer: .pipeline(harness.pipeline),
                    path: directory + "/kpi.json", interval: .seconds(3600), history: 3, logger: testLogger)
                let queries = DaemonOperatorQueries(
                    store: store, writer: .pipeline(harness.pipeline), kpi: engine, snapshots: snapshots,
                    cacheTTLms: 0)
                let responder = StatusResponder(
                    reporter: StatusReporter(
                        pipeline: harness.pipeline, store: store, queries: queries,
                        startedAtMs: Self.nowMs - 3_723_000))

                // The import answer (its timings blanked).
                let imported = await responder.answer("import " + directory + "/csv", nowMs: Self.nowMs)
                try Self.expectGolden(
                    "import", imported.replacingOccurrences(of: directory, with: "DIR"), as: ImportAnswer.self, blanking: ["seconds"])

                // Live readings, then a liveness check flags the silent meters.
                _ = try await harness.pipeline.perform { writer in
                    try writer.commit([
                        IngestSubmission(
                            readings: Self.readings.enumerated().map { index, entry in
                                SubmittedReading(reading: entry.0, line: index + 1, receivedMs: entry.receivedMs)
                            }, receiver: nil)
                    ])
                }
                try await liveness.check(nowMs: Self.nowMs)

                // KPI documents: a period with data, one region, and an empty period (its nulls).
                let full = try KPIPeriod(from: Month("2026-01")!, to: Month("2026-03")!)
                try Self.expectGolden("kpi", try await engine.json(period: full, region: nil, nowMs: Self.nowMs), as: KPIDocument.self)
                try Self.expectGolden("kpi-south", try await engine.json(period: full, region: "South", nowMs: Self.nowMs), as: KPIDocument.self)
                let empty = try KPIPeriod(from: Month("2020-01")!, to: Month("2020-02")!)
                try Self.expectGolden("kpi-empty", try await engine.json(period: empty, region: "Nowhere", nowMs: Self.nowMs), as: KPIDocument.self)

                // The status socket's answers.
                try Self.expectGolden("meter", await responder.answer("meter MTR-000001", nowMs: Self.nowMs), as: MeterDetailAnswer.self)
                try Self.expectGolden(
                    "meter-never-reported", await responder.answer("meter MTR-000004", nowMs: Self.nowMs), as: MeterDetailAnswer.self)
                try Self.expectGolden("inactive", await responder.answer("inactive", nowMs: Self.nowMs), as: InactiveMetersAnswer.self)
                try Self.expectGolden("inactive-truncated", await responder.answer("inactive 1", nowMs: Self.nowMs), as: InactiveMetersAnswer.self)
                try Self.expectGolden(
                    "status", await responder.answer("status", nowMs: Self.nowMs), as: StatusAnswer.self,
                    blanking: ["db_bytes", "last_commit_age_ms", "commits_total", "busy_signals_total"])

                // HTTP `/api/inactive`.
                let dashboard = DashboardQueries(store: store, kpi: engine, operatorQueries: queries)
                try Self.expectGolden(
                    "api-inactive", try AnswerEncoder.json(try await dashboard.inactive(region: nil, limit: 100)),
                    as: DashboardInactiveAnswer.self)
                try Self.expectGolden(
                    "api-inactive-north", try AnswerEncoder.json(try await dashboard.inactive(region: "North", limit: 1)),
                    as: DashboardInactiveAnswer.self)
            }
        }
    }
}
