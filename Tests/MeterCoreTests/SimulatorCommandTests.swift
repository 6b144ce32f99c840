import Foundation
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// The built `meter-sim` binary against a live in-process ingest server.
@Suite
struct SimulatorCommandTests {
    /// The executables sit next to the test bundle in the build directory.
    static var meterSimPath: String {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let candidates = [bundle, bundle.deletingLastPathComponent()].map { $0.appendingPathComponent("meter-sim").path }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
    }

    static func run(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        let path = Self.meterSimPath
        return try await offPool { try runProgram([path] + arguments) }
    }

    @Test(.timeLimit(.minutes(1)))
    func runWritesLedgerAndReportAndStaysQuietOffTerminal() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.meterSimPath), "build meter-sim first: \(Self.meterSimPath)")
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let ledgerPath = directory + "/ledger.csv"
                let reportPath = directory + "/report.json"
                let result = try await Self.run([
                    "run", "--port", String(harness.port), "--meters", "30", "--interval", "0.05", "--readings-per-meter", "10",
                    "--concentrator", "3", "--seed", "7", "--faults", "malformed=0.05,duplicate=0.05",
                    "--ledger", ledgerPath, "--report", reportPath,
                ])
                #expect(result.status == 0)
                #expect(result.stderr.isEmpty, "progress must stay off a non-terminal: \(result.stderr)")
                #expect(result.stdout.contains("acked 300"))
                #expect(result.stdout.contains("ack latency: p50"))

                let ledger = try #require(LedgerEntry.parse(csv: try String(contentsOfFile: ledgerPath, encoding: .utf8)))
                #expect(ledger.count == 30)
                #expect(ledger.first?.meter == "MTR-000001")
                try await SimulatorFleetTests.expectLedgerMatches(ledger, harness.database)

                let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: reportPath))) as? [String: Any]
                let json = try #require(report)
                #expect(json["acked"] as? Int == 300)
                #expect(json["unacked"] as? Int == 0)
                #expect(json["connections"] as? Int == 10)
                for key in ["sent", "resent", "duplicates_sent", "errors_by_code", "busy_signals", "reconnects", "acked_per_second"] {
                    #expect(json[key] != nil, "report lacks \(key)")
                }
                let latency = try #require(json["ack_latency"] as? [String: Any])
                #expect(latency["p50_ms"] != nil && latency["p95_ms"] != nil && latency["p99_ms"] != nil)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func badFlagsAndAnAbsentDaemonFailClearly() async throws {
        let faults = try await Self.run(["run", "--meters", "1", "--faults", "silent=2"])
        #expect(faults.status != 0)
        #expect(faults.stderr.contains("--faults"))
        let nobody = try await Self.run(["run", "--meters", "1", "--port", "1", "--duration", "5", "--connect-timeout", "1"])
        #expect(nobody.status != 0)
        #expect(nobody.stderr.contains("Could not connect to meterd at 127.0.0.1:1"))
    }
}
