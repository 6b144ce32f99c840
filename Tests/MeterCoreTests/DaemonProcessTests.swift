import Foundation
import GRDB
import NIOConcurrencyHelpers
import Testing

@testable import MeterCore

/// A meterd process started for one test (through ``ChildProcess``), stopped by its pid.
final class DaemonProcess: Sendable {
    let child: ChildProcess
    let dataDirectory: String

    init(dataDirectory: String, arguments: [String] = [], logPath: String? = nil) throws {
        self.dataDirectory = dataDirectory
        let logPath = logPath ?? dataDirectory + "/meterd.log"
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        // Each start gets its own log; and the daemon replaces ports.json at start, but a reader
        // must not see the last run's ports meanwhile.
        try? FileManager.default.removeItem(atPath: logPath)
        try? FileManager.default.removeItem(atPath: dataDirectory + "/ports.json")
        self.child = try ChildProcess(
            [try BuiltProduct.path("meterd"), "--data-dir", dataDirectory, "--ingest", "127.0.0.1:0", "--http", "127.0.0.1:0"] + arguments,
            environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], outputPath: logPath)
    }

    var pid: pid_t { self.child.pid }
    var isRunning: Bool { self.child.exitStatus == nil }
    var log: String { self.child.output }

    /// The ingest port from ports.json, once the daemon has written it.
    func ingestPort(timeout: Duration = .seconds(60)) async throws -> Int {
        var port: Int?
        try await waitUntil(timeout: timeout) {
            guard let data = FileManager.default.contents(atPath: self.dataDirectory + "/ports.json"),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: Int]
            else { return false }
            port = object["ingest"]
            return port != nil
        }
        return try #require(port)
    }

    func signal(_ number: Int32) { self.child.signal(number) }

    func terminate() { self.child.signal(SIGTERM) }

    /// Waits for the process to exit and returns its status.
    func exitStatus(timeout: Duration = .seconds(60)) async throws -> Int32 {
        try await self.child.waitForExit(timeout: timeout)
    }

    deinit {
        self.child.stop()
    }
}

/// The highest seq acknowledged per meter, as meters saw it.
final class AckTally: Sendable {
    private let state = NIOLockedValueBox<(marks: [String: Int64], count: Int)>(([:], 0))

    func record(meter: String, seq: Int64) {
        self.state.withLockedValue { state in
            state.marks[meter] = max(state.marks[meter] ?? 0, seq)
            state.count += 1
        }
    }

    var marks: [String: Int64] { self.state.withLockedValue { $0.marks } }
    var count: Int { self.state.withLockedValue { $0.count } }
}

@Suite(.timeLimit(.minutes(2))) struct DaemonProcessTests {
    @Test func sigtermWhileMetersSendLosesNoAcknowledgedReading() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try DaemonProcess(dataDirectory: directory)
            let port = try await daemon.ingestPort()
            let tally = AckTally()

            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in 0..<20 {
                    group.addTask {
                        let connection = try await LineClient(port: port)
                        let meters = (0..<5).map { "P\(client)-\($0)" }
                        let sender = Task {
                            var seq: Int64 = 0
                            while !Task.isCancelled {
                                seq += 1
                                let text = meters.map { readingLine(meter: $0, seq: seq, kwh: 0.25) }.joined()
                                do { try await connection.send(text) } catch { return }
                                try? await Task.sleep(for: .milliseconds(2))
                            }
                        }
                        // Read until the daemon closes the connection after its last acks.
                        while let text = try await connection.readLine(timeout: .seconds(30)) {
                            if case .ack(let meter, let seq) = DaemonLine(text) {
                                tally.record(meter: meter, seq: seq)
                            }
                        }
                        sender.cancel()
                        await connection.close()
                    }
                }
                try await waitUntil { tally.count >= 1000 }
                daemon.terminate()
                try await group.waitForAll()
            }
            #expect(try await daemon.exitStatus() == 0, "\(daemon.log)")

            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let ackedMarks = tally.marks
            #expect(ackedMarks.count == 100)
            for (meter, mark) in ackedMarks {
                let (count, distinct) = try await database.pool.read { db in
                    let row = try Row.fetchOne(
                        db,
                        sql: """
                            SELECT count(*) AS n, count(DISTINCT seq) AS d FROM reading JOIN meter ON meter.id = meter_id
                            WHERE meter.name = ? AND seq <= ?
                            """, arguments: [meter, mark])!
                    return (row["n"] as Int, row["d"] as Int)
                }
                #expect(count == Int(mark), "meter \(meter): acked up to \(mark), stored \(count)")
                #expect(distinct == count)
            }
            let (rows, distinctRows) = try await database.pool.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")!,
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM (SELECT DISTINCT meter_id, seq FROM reading)")!
                )
            }
            #expect(rows == distinctRows)
            #expect(daemon.log.contains("Ingest server stopping"))
        }
    }

    @Test func invalidConfigurationStopsStartUpWithOneLineNamingTheKey() async throws {
        try await withTemporaryDirectory { directory in
            for (arguments, key) in [
                (["--inactive-after", "soon"], "inactive_after"), (["--timezone", "Mars/Olympus"], "timezone"),
                (["--synchronous", "maybe"], "synchronous"),
            ] {
                let daemon = try DaemonProcess(dataDirectory: directory, arguments: arguments)
                #expect(try await daemon.exitStatus() == 2)
                let lines = daemon.log.split(separator: "\n")
                #expect(lines.count == 1)
                #expect(lines.first?.hasPrefix("meterd: invalid configuration: \(key):") == true, "\(daemon.log)")
            }
            try "ingest = 127.0.0.1:0\n[tariff]\nNorth = free\n".write(toFile: directory + "/meterd.conf", atomically: true, encoding: .utf8)
            let daemon = try DaemonProcess(dataDirectory: directory, arguments: ["--config", directory + "/meterd.conf"])
            #expect(try await daemon.exitStatus() == 2)
            #expect(daemon.log.hasPrefix("meterd: invalid configuration: tariff.North:"), "\(daemon.log)")
            #expect(daemon.log.contains("meterd.conf:3"))
        }
    }
}

@Suite(.timeLimit(.minutes(1))) struct CorruptDatabaseTests {
    /// 5,000 readings of 50 meters in `path`, checkpointed into the main file.
    private static func makeDatabase(at path: String) throws -> MeterDatabase {
        let database = try MeterDatabase(path: path)
        let writer = try IngestWriter(
            database: database, calendar: MonthCalendar(timeZone: TimeZone(identifier: "UTC")!),
            tariff: Tariff(), unknownMeters: .register)
        let now = WallClock.nowMs()
        _ = try writer.commit([
            IngestSubmission(
                readings: (1...5000).map {
                    SubmittedReading(
                        reading: Reading(meter: "M\($0 % 50)", seq: Int64($0), timestampMs: now, kwh: 1), line: $0, receivedMs: now)
                }, receiver: nil)
        ])
        _ = try database.pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
        return database
    }

    @Test func theCheckBesideTheMeterLoadStopsTheWriterBeforeItWrites() async throws {
        try await withTemporaryDirectory { directory in
            // Given a database whose readings' middle leaf pages were damaged on disk: the meter
            // rows and the newest readings, all that opening a writer reads, are intact
            let path = directory + "/meterd.sqlite"
            let (pageSize, damaged): (Int, [Int]) = try {
                let database = try Self.makeDatabase(at: path)
                return try database.pool.read { db in
                    let leaves = try Int.fetchAll(db, sql: "SELECT pageno FROM dbstat WHERE name = 'reading' AND pagetype = 'leaf' ORDER BY pageno")
                    return (try Int.fetchOne(db, sql: "PRAGMA page_size") ?? 4096, Array(leaves.dropFirst(2).dropLast(2)))
                }
            }()
            #expect(damaged.count > 10)
            let handle = try #require(FileHandle(forUpdatingAtPath: path))
            for page in damaged {
                try handle.seek(toOffset: UInt64((page - 1) * pageSize))
                handle.write(Data(repeating: 0xA5, count: 64))
            }
            try handle.close()

            // When the daemon's way opens it (the check runs beside the meter load), the writer
            // is refused with the check's verdict, not handed out to write
            let store = try SQLiteMeterStore(path: path, integrityCheck: .alongsideStartUp)
            let settings = WriterSettings(timeZone: TimeZone(identifier: "UTC")!, tariff: Tariff(), unknownMeters: .register)
            #expect {
                _ = try store.makeWriter(settings)
            } throws: { error in
                guard case DatabaseOpenError.corrupt(let file, _) = error else { return false }
                return file == path
            }
            // And opened the careful way it is refused at once
            #expect {
                _ = try MeterDatabase(path: path)
            } throws: { error in
                if case DatabaseOpenError.corrupt = error { true } else { false }
            }
        }
    }

    @Test func aCorruptDatabaseIsRefusedWithOneClearLine() async throws {
        try await withTemporaryDirectory { directory in
            // Given a database with data whose pages were then damaged on disk
            _ = try Self.makeDatabase(at: directory + "/meterd.sqlite")
            let handle = try #require(FileHandle(forUpdatingAtPath: directory + "/meterd.sqlite"))
            let size = try handle.seekToEnd()
            for offset in stride(from: UInt64(4096 * 2 + 100), to: size, by: 4096 * 3) {
                try handle.seek(toOffset: offset)
                handle.write(Data(repeating: 0xA5, count: 200))
            }
            try handle.close()

            // When meterd starts on it, it refuses, naming the file and what to do
            let daemon = try DaemonProcess(dataDirectory: directory)
            #expect(try await daemon.exitStatus() == 2)
            let lines = daemon.log.split(separator: "\n")
            #expect(lines.count == 1, "\(daemon.log)")
            #expect(daemon.log.hasPrefix("meterd: The database at \(directory)/meterd.sqlite is corrupt"), "\(daemon.log)")
            #expect(daemon.log.contains("backup"))
        }
    }
}
