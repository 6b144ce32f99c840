#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import MeterCore

/// `meterctl` against the real `meterd`: tables, `--json`, one-line errors, and promptness under load.
@Suite(.serialized)
struct MeterCtlTests {
    /// Runs meterctl; exit status, stdout, stderr.
    static func meterctl(_ arguments: [String], as user: String? = nil) throws -> (status: Int32, out: String, err: String) {
        let binary = try BuiltProduct.path("meterctl")
        let command = user.map { ["/usr/bin/setpriv", "--reuid=\($0)", "--regid=\($0)", "--clear-groups", binary] } ?? [binary]
        let result = try runProgram(command + arguments, environment: ["PATH": "/usr/bin:/bin"])
        return (result.status, result.stdout, result.stderr)
    }

    static func meterctlAsync(_ arguments: [String], as user: String? = nil) async throws -> (status: Int32, out: String, err: String) {
        try await offPool { try Self.meterctl(arguments, as: user) }
    }

    @Test(.timeLimit(.minutes(1)))
    func printsTablesJSONAndOneLineErrors() async throws {
        try await withTemporaryDirectory { directory in
            // No daemon: one clear line, non-zero.
            let missing = directory + "/nothing.sock"
            let none = try await Self.meterctlAsync(["--socket", missing, "status"])
            #expect(none.status == 3)
            #expect(none.err == "meterctl: no meterd listening at \(missing)\n")
            #expect(none.out.isEmpty)
            // Offline commands: a missing file or an unreachable store is one line, not a usage error (64).
            let noFile = try await Self.meterctlAsync(["kpi", "--db", directory + "/none.sqlite"])
            #expect(noFile.status == 1)
            #expect(noFile.err == "meterctl: no database at \(directory)/none.sqlite\n")
            let noServer = try await Self.meterctlAsync(["kpi", "--store", "postgresql://meterd@127.0.0.1:1/meterd"])
            #expect(noServer.status == 3)
            #expect(noServer.err.hasPrefix("meterctl: ") && noServer.err.contains("127.0.0.1:1"), "\(noServer.err)")
            #expect(noServer.err.split(separator: "\n").count == 1, "\(noServer.err)")
            let noImportServer = try await Self.meterctlAsync(["import", directory, "--store", "postgresql://meterd@127.0.0.1:1/meterd"])
            #expect(noImportServer.status == 3)
            #expect(noImportServer.err.split(separator: "\n").count == 1, "\(noImportServer.err)")
            // A failure inside a command is the same one line as the others, not ArgumentParser's "Error:".
            let unopenable = try await Self.meterctlAsync(["import", directory, "--db", directory + "/no/such/dir/x.sqlite"])
            #expect(unopenable.status == 1)
            #expect(unopenable.err.hasPrefix("meterctl: ") && unopenable.err.contains("/no/such/dir/x.sqlite"), "\(unopenable.err)")
            #expect(unopenable.err.split(separator: "\n").count == 1, "\(unopenable.err)")
            let noDirectory = try await Self.meterctlAsync(["import", directory + "/absent", "--db", directory + "/import.sqlite"])
            #expect(noDirectory.status == 1)
            #expect(noDirectory.err == "meterctl: \(directory)/absent: no such directory\n")
            // A usage error keeps ArgumentParser's form, with the usage line and exit 64.
            let usage = try await Self.meterctlAsync(["kpi", "--frm", "2026-01"])
            #expect(usage.status == 64)
            #expect(usage.err.hasPrefix("Error: Unknown option '--frm'"), "\(usage.err)")
            // Help, of meterctl or of a command, goes to stdout with exit 0.
            for arguments in [["--help"], ["kpi", "--help"], ["help", "import"]] {
                let help = try await Self.meterctlAsync(arguments)
                #expect(help.status == 0, "\(arguments): \(help.err)")
                #expect(help.out.contains("USAGE: meterctl"), "\(arguments): \(help.out)")
                #expect(!help.err.contains("CommandError"), "\(arguments): \(help.err)")
            }
            let emptyID = try await Self.meterctlAsync(["meter", ""])
            #expect(emptyID.status == 64)
            #expect(emptyID.err.hasPrefix("Error: Please give a meter id; it is empty."), "\(emptyID.err)")

            let meterd = try MeterdUnderTest.start(dataDirectory: directory + "/data")
            defer { meterd.process.stop() }
            let ports = try await meterd.ports()
            let client = try await LineClient(port: ports.ingest)
            try await client.send(readingLine(meter: "MTR-C1", seq: 5, status: .poor) + "\n")
            #expect(try await client.readLine() == #"{"meter":"MTR-C1","ack":5}"#)
            await client.close()
            let socket = meterd.statusSocket
            // Meter counts are cached for two seconds (READY's STATUS= counted none yet).
            try await waitUntil { try await ask(socket, "status").contains(#""active":1"#) }

            let table = try await Self.meterctlAsync(["--socket", socket, "status"])
            #expect(table.status == 0)
            #expect(table.out.contains("connections"))
            #expect(table.out.contains("meters             active 1, inactive 0, faulty 0"))
            #expect(table.out.contains("readings           1 ("))
            let json = try await Self.meterctlAsync(["status", "--socket", socket, "--json"])
            #expect(json.status == 0)
            #expect(try JSONDecoder().decode(StatusAnswer.self, from: Data(json.out.utf8)).readingsTotal == 1)
            #expect(json.out.filter { $0 == "\n" }.count == 1)

            let meter = try await Self.meterctlAsync(["--socket", socket, "meter", "MTR-C1"])
            #expect(meter.status == 0)
            #expect(meter.out.hasPrefix("meter "))
            #expect(meter.out.contains("last_reading.status"))
            #expect(meter.out.contains("poor"))
            #expect(Self.value(of: "last_reading.seq", in: meter.out) == "5")

            let unknown = try await Self.meterctlAsync(["--socket", socket, "meter", "MTR-NOPE"])
            #expect(unknown.status == 1)
            #expect(unknown.err == "meterctl: unknown meter MTR-NOPE\n")

            let inactive = try await Self.meterctlAsync(["--socket", socket, "inactive"])
            #expect(inactive.status == 0)
            #expect(inactive.out == "No inactive meters.\n")

            let kpi = try await Self.meterctlAsync(["--socket", socket, "kpi", "--from", "2026-01", "--to", "2026-03", "--region", "North"])
            #expect(kpi.status == 0, "\(kpi.err)")
            #expect(kpi.out.hasPrefix("KPIs 2026-01..2026-03, North"))
            #expect(kpi.out.contains("Overview"))
            let kpiJSON = try await Self.meterctlAsync(["--socket", socket, "kpi", "--json"])
            #expect(try JSONDecoder().decode(KPIDocument.self, from: Data(kpiJSON.out.utf8)).region == nil)
            let badMonth = try await Self.meterctlAsync(["--socket", socket, "kpi", "--from", "2026-13"])
            #expect(badMonth.status != 0)
            #expect(badMonth.err.contains("--from must be a month YYYY-MM"))

            // Another user, not in the socket's group: permission denied, one line.
            let denied = try await Self.meterctlAsync(["--socket", socket, "status"], as: "65534")
            #expect(denied.status == 3)
            #expect(denied.err == "meterctl: permission denied on \(socket) (run as root or as a member of meterd's group)\n")
            #expect(try await meterd.terminate() == 0)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func statusAnswersPromptlyWhileTenThousandMetersSend() async throws {
        try await withTemporaryDirectory { directory in
            let meterd = try MeterdUnderTest.start(dataDirectory: directory + "/data")
            defer { meterd.process.stop() }
            let ports = try await meterd.ports()

            // 100 concentrator connections × 100 meters each: every meter sends a reading every 500 ms.
            let connections = 100
            let metersPerConnection = 100
            let load = LoadState()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for connection in 0..<connections {
                    let port = ports.ingest
                    group.addTask {
                        let client = try await LineClient(port: port)
                        var seq: Int64 = 0
                        while !load.stop.load(ordering: .relaxed) {
                            seq += 1
                            var batch = ""
                            for index in 0..<metersPerConnection {
                                batch += readingLine(meter: String(format: "MTR-%03d-%03d", connection, index), seq: seq) + "\n"
                            }
                            try await client.send(batch)
                            load.sent.add(metersPerConnection, ordering: .relaxed)
                            try await Task.sleep(for: .milliseconds(500))
                        }
                        await client.close()
                    }
                }
                // Until every meter has reported, then while they keep sending: status is prompt.
                try await waitUntil(timeout: .seconds(60)) {
                    let answer = try await ask(meterd.statusSocket, "status")
                    return answer.contains(#""total":10000"#)
                }
                var slowest = Duration.zero
                for round in 0..<12 {
                    let started = ContinuousClock.now
                    let answer: String
                    if round % 3 == 0 {
                        let result = try await Self.meterctlAsync(["--socket", meterd.statusSocket, "status", "--json"])
                        #expect(result.status == 0, "\(result.err)")
                        answer = result.out
                    } else {
                        answer = try await ask(meterd.statusSocket, round % 3 == 1 ? "status" : "meter MTR-042-042")
                    }
                    let elapsed = ContinuousClock.now - started
                    slowest = max(slowest, elapsed)
                    #expect(answer.hasPrefix("{") && !answer.contains(#""error""#), "\(answer.prefix(200))")
                    try await Task.sleep(for: .milliseconds(250))
                }
                let status = try await ask(meterd.statusSocket, "status")
                #expect(status.contains(#""connections":100"#))
                load.stop.store(true, ordering: .relaxed)
                try await group.waitForAll()
                #expect(slowest < .milliseconds(1500), "slowest status answer took \(slowest)")
                print("status under load: slowest answer \(slowest), \(load.sent.load(ordering: .relaxed)) readings sent")
            }
            #expect(try await meterd.terminate() == 0)
        }
    }

    /// The value of `key` in `key  value` lines.
    static func value(of key: String, in table: String) -> String? {
        table.split(separator: "\n").first { $0.hasPrefix(key + " ") }.map { $0.dropFirst(key.count).trimmingCharacters(in: .whitespaces) }
    }

    @Test func rendersReadableTables() throws {
        let line =
            #"{"version":"0.1.0","uptime_s":3723,"connections":4,"readings_total":1200,"readings_per_s":40.5,"acks_total":1190,"duplicates_total":3,"rejects_total":2,"rejects_by_code":{"invalid_json":2,"clock_skew":0},"queue_depth":0,"last_commit_age_ms":12,"commits_total":40,"busy_signals_total":0,"db_bytes":2097152,"latency_ms":{"p50":5,"p99":null},"meters":{"active":10,"inactive":2,"faulty":1,"total":12},"writer":{"healthy":true,"failure":null}}"#
        guard case .value(let status) = try #require(OperatorAnswer<StatusAnswer>(line: line)) else {
            Issue.record("not a value")
            return
        }
        let text = OperatorOutput.status(status)
        #expect(text.contains("uptime             1h 02m 03s"))
        #expect(text.contains("readings           1200 (40.50/s)"))
        #expect(text.contains("rejects            2 (invalid_json 2)"))
        #expect(text.contains("database           2.0 MB"))
        #expect(text.contains("latency p50 / p99  5 ms / -"))
        #expect(text.contains("meters             active 10, inactive 2, faulty 1"))
        #expect(text.contains("writer             healthy"))
        // An answer without `commit_failures_total` (a node older than the key) shows no such row;
        // failed commits since start show beside the last commit.
        #expect(Self.value(of: "failed commits", in: text) == nil)
        let failing = line.replacingOccurrences(of: #""commits_total":40,"#, with: #""commits_total":40,"commit_failures_total":3,"#)
        guard case .value(let afterFailures) = try #require(OperatorAnswer<StatusAnswer>(line: failing)) else {
            Issue.record("not a value")
            return
        }
        #expect(Self.value(of: "failed commits", in: OperatorOutput.status(afterFailures)) == "3 since start (retried)")

        // Integers print as integers, however large (a seq is microseconds since the epoch).
        let meter = MeterDetailAnswer(
            meter: "MTR-1", customerID: 17, region: "North", state: "active", faulty: false, inactiveSince: nil,
            firstSeen: "2026-03-20T11:59:00Z",
            lastReading: .init(
                seq: 1_796_017_766_725_002, ts: "2026-03-20T11:59:30Z", received: "2026-03-20T11:59:30.050Z", status: "fair", fault: nil),
            counters: .init(readingsTotal: 2, faultsTotal: 1, duplicatesTotal: 0))
        let table = OperatorOutput.meter(meter)
        #expect(Self.value(of: "last_reading.seq", in: table) == "1796017766725002")
        #expect(Self.value(of: "customer_id", in: table) == "17")
        #expect(Self.value(of: "inactive_since", in: table) == "-")
        #expect(Self.value(of: "counters.readings_total", in: table) == "2")

        // `inactive --limit 0` asks for the count alone: it says how many, not that there are none.
        #expect(OperatorOutput.inactive(InactiveMetersAnswer(count: 0, truncated: false, meters: [])) == "No inactive meters.\n")
        #expect(
            OperatorOutput.inactive(InactiveMetersAnswer(count: 10_308, truncated: true, meters: []))
                == "10308 inactive meters (none listed).\n")

        guard
            case .error(let code, let detail) = try #require(
                OperatorAnswer<StatusAnswer>(line: #"{"error":"unknown_meter","detail":"unknown meter X"}"#))
        else {
            Issue.record("not an error")
            return
        }
        #expect(code == "unknown_meter" && detail == "unknown meter X")
        #expect(OperatorAnswer<StatusAnswer>(line: #"{"version":"0.1.0"}"#) == nil)
    }
}

/// What the load generator's tasks share.
final class LoadState: Sendable {
    let stop = Atomic<Bool>(false)
    let sent = Atomic<Int>(0)
}
