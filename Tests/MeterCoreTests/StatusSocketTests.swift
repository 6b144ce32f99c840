#if canImport(Glibc)
import Glibc
#endif
#if canImport(CDispatch)
import CDispatch  // where this toolchain's module map puts `stat`
#endif
import Foundation
import GRDB
import Logging
import ServiceLifecycle
import Testing

@testable import MeterCore

/// The status socket in process, over a live ingest pipeline and a real SQLite file.
@Suite
struct StatusSocketTests {
    /// Runs a status socket next to an ingest harness; the body gets both and the socket path.
    static func withStatusSocket<T>(
        directory: String, settings: KPISettings = KPISettings(),
        _ body: (IngestHarness, String) async throws -> T
    ) async throws -> T {
        try await IngestHarness.with(directory: directory) { harness in
            let path = directory + "/status.sock"
            let queries = try await makeOperatorQueries(
                store: harness.store, writer: .pipeline(harness.pipeline), settings: settings,
                directory: directory)
            let reporter = StatusReporter(pipeline: harness.pipeline, store: harness.store, queries: queries)
            let (listening, sink) = AsyncStream.makeStream(of: Void.self)
            let server = StatusSocketServer(
                configuration: StatusSocketConfiguration(path: path),
                responder: StatusResponder(reporter: reporter), logger: testLogger,
                onListening: { sink.yield() })
            let group = ServiceGroup(services: [server], logger: testLogger)
            return try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                var iterator = listening.makeAsyncIterator()
                _ = await iterator.next()
                defer { Task { await group.triggerGracefulShutdown() } }
                let result = try await body(harness, path)
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                return result
            }
        }
    }

    /// An answer line decoded as the answer type it should be.
    static func decode<Answer: Decodable>(_ type: Answer.Type, _ line: String) throws -> Answer {
        try JSONDecoder().decode(type, from: Data(line.utf8))
    }

    static func object(_ line: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(line)")
    }

    @Test(.timeLimit(.minutes(1)))
    func statusHasEveryKeyOfTheSpecAndTheSocketIsGroupOnly() async throws {
        try await withTemporaryDirectory { directory in
            try await Self.withStatusSocket(directory: directory) { harness, path in
                // Given two meters, one reading resent and one malformed line.
                let client = try await LineClient(port: harness.port)
                try await client.send(readingLine(meter: "MTR-1", seq: 1) + "\n" + readingLine(meter: "MTR-2", seq: 1, fault: "tamper") + "\n")
                _ = try await client.readLine()
                _ = try await client.readLine()
                try await client.send(readingLine(meter: "MTR-1", seq: 1) + "\n{oops\n")
                _ = try await client.readLine()
                _ = try await client.readLine()

                var mode = stat()
                #expect(stat(path, &mode) == 0)
                #expect(mode.st_mode & 0o777 == 0o660)
                #expect(mode.st_mode & S_IFMT == S_IFSOCK)

                // Every key of the spec is there (decoding requires them all).
                let status = try Self.decode(StatusAnswer.self, try await ask(path, "status"))
                #expect(status.version == MeterdVersion.current)
                #expect(status.connections == 1)
                #expect(status.readingsTotal == 2)
                #expect(status.duplicatesTotal == 1)
                #expect(status.rejectsTotal == 1)
                #expect(status.rejectsByCode[code: RejectionCode.invalidJSON.rawValue] == 1)
                #expect(status.queueDepth == 0)
                #expect(status.lastCommitAgeMs != nil)
                #expect(status.dbBytes > 0)
                #expect(status.latencyMs.p50 != nil && status.latencyMs.p99 != nil)
                #expect(status.meters == StatusAnswer.Meters(active: 2, inactive: 0, faulty: 0, total: 2))
                await client.close()
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func answersEveryCommandWithOneJSONLineAndErrorsAsJSON() async throws {
        try await withTemporaryDirectory { directory in
            try await Self.withStatusSocket(directory: directory) { harness, path in
                let client = try await LineClient(port: harness.port)
                try await client.send(readingLine(meter: "MTR-7", seq: 3, status: .fair, fault: "voltage_sag") + "\n")
                _ = try await client.readLine()
                await client.close()

                // One connection, many commands, one line each, in order.
                let session = try UnixLineSession(path: path)
                defer { session.close() }
                let cases: [(String, String)] = [
                    ("bogus", "unknown_command"),
                    ("meter", "malformed_command"),
                    ("meter A B", "malformed_command"),
                    ("status now", "malformed_command"),
                    ("inactive -3", "malformed_command"),
                    ("kpi 2026-01", "malformed_command"),
                    ("kpi 2026-13 2026-14", "malformed_command"),
                    ("kpi 2026-06 2026-01", "malformed_command"),
                    ("meter MTR-404", "unknown_meter"),
                    (String(repeating: "x", count: 5000), "malformed_command"),
                ]
                for (command, code) in cases {
                    let answer = try Self.object(try await session.asking(command))
                    #expect(answer["error"] as? String == code, "\(command.prefix(30)) → \(answer)")
                    #expect((answer["detail"] as? String)?.isEmpty == false)
                }
                // The daemon's queries answer every command: a KPI document of the period asked for, a snapshot.
                let kpi = try Self.object(try await session.asking("kpi 2026-01 2026-06 North"))
                #expect((kpi["period"] as? [String: Any])?["from"] as? String == "2026-01" && kpi["region"] as? String == "North")
                #expect(try Self.object(try await session.asking("snapshot"))["snapshot"] as? String == directory + "/kpi.json")
                try session.send(bytes: [0xFF, 0xFE, 0x0A])
                #expect(try Self.object(try await offPool { try session.readLine() })["error"] as? String == "malformed_command")

                let meter = try Self.decode(MeterDetailAnswer.self, try await session.asking("meter MTR-7"))
                #expect(meter.meter == "MTR-7")
                #expect(meter.region == "Unassigned")
                #expect(meter.state == "active")
                let last = try #require(meter.lastReading)
                #expect(last.seq == 3)
                #expect(last.status == "fair")
                #expect(last.fault == "voltage_sag")
                #expect(meter.counters.readingsTotal == 1)
                #expect(meter.counters.faultsTotal == 1)
                #expect(try Self.object(try await session.asking("help"))["commands"] as? String == StatusCommand.usage)
                #expect(try Self.decode(StatusAnswer.self, try await session.asking("  STATUS  ")).version == MeterdVersion.current)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func listsInactiveMetersAndCountsFaultyOnes() async throws {
        try await withTemporaryDirectory { directory in
            try await Self.withStatusSocket(directory: directory, settings: KPISettings(inactiveAfterSeconds: 60)) { harness, path in
                let client = try await LineClient(port: harness.port)
                var lines = ""
                for seq in 1...3 { lines += readingLine(meter: "MTR-F", seq: Int64(seq), fault: "tamper") + "\n" }
                lines += readingLine(meter: "MTR-S", seq: 1) + "\n" + readingLine(meter: "MTR-A", seq: 1) + "\n"
                try await client.send(lines)
                try await waitUntil { try await harness.database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM meter") } == 3 }
                // Given MTR-S last heard from ten minutes ago.
                let silentSince = WallClock.nowMs() - 600_000
                try await harness.database.pool.write { db in
                    try db.execute(sql: "UPDATE meter SET last_received_ms = ? WHERE name = 'MTR-S'", arguments: [silentSince])
                }
                // Inactive is what the liveness sweep flagged: every answer agrees once it has run.
                let monitor = LivenessMonitor(store: harness.store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 60, logger: testLogger)
                #expect(try await monitor.check().wentInactive == ["MTR-S"])
                let inactive = try Self.decode(InactiveMetersAnswer.self, try await ask(path, "inactive"))
                #expect(inactive.count == 1)
                let listed = try #require(inactive.meters.first)
                #expect(listed.meter == "MTR-S")
                #expect(listed.silentSince == RFC3339.format(millisecondsSinceEpoch: silentSince))
                #expect((listed.silentForS ?? 0) >= 600)
                #expect(try Self.decode(InactiveMetersAnswer.self, try await ask(path, "inactive 0")).truncated)
                #expect(try Self.decode(MeterDetailAnswer.self, try await ask(path, "meter MTR-S")).state == "inactive")
                #expect(try Self.decode(MeterDetailAnswer.self, try await ask(path, "meter MTR-F")).faulty)
                let meters = try Self.decode(StatusAnswer.self, try await ask(path, "status")).meters
                #expect(meters.active == 2)
                #expect(meters.inactive == 1)
                #expect(meters.faulty == 1)
                await client.close()
            }
        }
    }
}

/// A status socket client that keeps its connection for several commands.
final class UnixLineSession: @unchecked Sendable {  // used by one test task at a time
    private let fd: CInt
    private var pending: [UInt8] = []

    init(path: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.fd = fd
        let connected = UnixSocketAddress.with(path: path) { connect(fd, $0, $1) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connected == 0 else {
            Issue.record("cannot connect to \(path): \(String(cString: strerror(errno)))")
            throw CancellationError()
        }
    }

    func send(bytes: [UInt8]) throws {
        guard bytes.withUnsafeBytes({ write(self.fd, $0.baseAddress, $0.count) }) == bytes.count else { throw CancellationError() }
    }

    func readLine() throws -> String {
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            if let newline = self.pending.firstIndex(of: 0x0A) {
                let line = String(decoding: self.pending[..<newline], as: UTF8.self)
                self.pending.removeSubrange(...newline)
                return line
            }
            let count = chunk.withUnsafeMutableBytes { read(self.fd, $0.baseAddress, $0.count) }
            guard count > 0 else {
                Issue.record("status socket closed or timed out")
                throw CancellationError()
            }
            self.pending.append(contentsOf: chunk[..<count])
        }
    }

    func ask(_ command: String) throws -> String {
        try self.send(bytes: Array((command + "\n").utf8))
        return try self.readLine()
    }

    func asking(_ command: String) async throws -> String {
        try await offPool { try self.ask(command) }
    }

    func close() {
        Glibc.close(self.fd)
    }
}
