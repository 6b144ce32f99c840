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

            // A key set twice (also spelled two ways) and a file that is not UTF-8 are refused the same way
            for (bytes, expected) in [
                (
                    Array("inactive_after = 60\nsynchronous = full\ninactive_after = 900\n".utf8),
                    "inactive_after: set twice (\(directory)/meterd.conf:1 and \(directory)/meterd.conf:3)"
                ),
                (Array("alert_flag_rate = 0.1\n[alert]\nflag_rate = 0.2\n".utf8), "alert.flag_rate: set twice"),
                (
                    Array("inactive_after = 60\n# caf".utf8) + [0xE9] + Array(" in Latin-1\n".utf8),
                    "config: \(directory)/meterd.conf:2 is not valid UTF-8"
                ),
            ] {
                try Data(bytes).write(to: URL(fileURLWithPath: directory + "/meterd.conf"))
                let daemon = try DaemonProcess(dataDirectory: directory, arguments: ["--config", directory + "/meterd.conf"])
                #expect(try await daemon.exitStatus() == 2)
                #expect(daemon.log.split(separator: "\n").count == 1, "\(daemon.log)")
                #expect(daemon.log.hasPrefix("meterd: invalid configuration: \(expected)"), "\(daemon.log)")
            }
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

/// Start-up refuses what would harm a daemon already running, with one line saying what and why.
@Suite(.timeLimit(.minutes(2))) struct StartUpRefusalTests {
    /// Runs meterd to its exit with these arguments (ephemeral TCP ports) and returns its status and stderr.
    private static func refusedStart(_ arguments: [String]) async throws -> (status: Int32, stderr: String) {
        let result = try await offPool {
            try runProgram([try BuiltProduct.path("meterd"), "--ingest", "127.0.0.1:0", "--http", "127.0.0.1:0"] + arguments)
        }
        return (result.status, result.stderr)
    }

    /// A listening socket the test holds, so meterd finds its port taken.
    private static func occupiedPort() throws -> (fd: CInt, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 4) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        #expect(bound)
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    @Test func aSecondDaemonOnTheSameDataDirectoryIsRefusedAndChangesNothing() async throws {
        try await withTemporaryDirectory { directory in
            // Given a running daemon, whose ports.json is complete the first time it appears
            let first = try DaemonProcess(dataDirectory: directory)
            var firstSeen: [String: Int]?
            try await waitUntil(timeout: .seconds(60), interval: .milliseconds(1)) {
                guard let data = FileManager.default.contents(atPath: directory + "/ports.json") else { return false }
                firstSeen = try? JSONSerialization.jsonObject(with: data) as? [String: Int]
                return true
            }
            #expect(firstSeen?.keys.sorted() == ["http", "ingest"], "ports.json appeared as \(String(describing: firstSeen))")
            _ = try await first.ingestPort()
            let ports = try String(contentsOfFile: directory + "/ports.json", encoding: .utf8)

            // When a second meterd starts on the same data directory (with its own status socket)
            let second = try await Self.refusedStart(["--data-dir", directory, "--status-socket", directory + "/second.sock"])

            // Then it stops with one line naming the directory and the daemon holding it, and the first one goes on untouched
            #expect(second.status == 2)
            #expect(second.stderr.split(separator: "\n").count == 1, "\(second.stderr)")
            #expect(
                second.stderr.hasPrefix("meterd: invalid configuration: data_dir: \(directory) is in use by another meterd (pid \(first.pid))"),
                "\(second.stderr)")
            #expect(try String(contentsOfFile: directory + "/ports.json", encoding: .utf8) == ports)
            #expect(first.isRunning)
            #expect(try await ask(directory + "/status.sock", "status").contains("\"queue_depth\""))

            // And once the first has stopped, the directory is free again
            first.terminate()
            #expect(try await first.exitStatus() == 0)
            let next = try DaemonProcess(dataDirectory: directory)
            _ = try await next.ingestPort()
            next.terminate()
            #expect(try await next.exitStatus() == 0, "\(next.log)")
        }
    }

    @Test func aSecondDaemonDoesNotTakeOverALiveStatusSocket() async throws {
        try await withTemporaryDirectory { directory in
            let first = try DaemonProcess(dataDirectory: directory + "/first")
            _ = try await first.ingestPort()
            let socket = directory + "/first/status.sock"

            let second = try await Self.refusedStart(["--data-dir", directory + "/second", "--status-socket", socket])

            #expect(second.status == 2)
            #expect(second.stderr.split(separator: "\n").count == 1, "\(second.stderr)")
            #expect(
                second.stderr.hasPrefix("meterd: invalid configuration: status_socket: \(socket) is in use by a running daemon"), "\(second.stderr)")
            #expect(try await ask(socket, "status").contains("\"queue_depth\""))
            first.terminate()
            #expect(try await first.exitStatus() == 0)
            #expect(!FileManager.default.fileExists(atPath: socket), "the stopped daemon removes its socket")
        }
    }

    @Test func aStatusSocketThatCannotBeBoundIsNamedInOneLine() async throws {
        try await withTemporaryDirectory { directory in
            let long = directory + "/" + String(repeating: "s", count: 120) + ".sock"
            for (path, reason) in [
                (directory + "/missing/status.sock", "\(directory)/missing: No such file or directory"),
                (long, "a Unix socket path must be at most 107 bytes"),
            ] {
                let result = try await Self.refusedStart(["--data-dir", directory + "/data", "--status-socket", path])
                #expect(result.status == 2)
                #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
                #expect(result.stderr.hasPrefix("meterd: invalid configuration: status_socket: "), "\(result.stderr)")
                #expect(result.stderr.contains(reason), "\(result.stderr)")
            }
        }
    }

    /// An SQLite database whose readings were counted in one zone's months refuses another zone
    /// (as a PostgreSQL store does); an empty one takes any.
    @Test func aDatabaseWithCountedMonthsRefusesAnotherTimeZone() async throws {
        try await withTemporaryDirectory { directory in
            // Given a database first opened in UTC with nothing counted, then in Chatham with one reading
            let empty = try DaemonProcess(dataDirectory: directory, arguments: ["--timezone", "UTC"])
            _ = try await empty.ingestPort()
            empty.terminate()
            #expect(try await empty.exitStatus() == 0)
            let chatham = try DaemonProcess(dataDirectory: directory, arguments: ["--timezone", "Pacific/Chatham"])
            let client = try await LineClient(port: try await chatham.ingestPort())
            try await client.send(readingLine(meter: "Z-1", seq: 1))
            #expect(try await client.readLine() == #"{"meter":"Z-1","ack":1}"#)
            await client.close()
            chatham.terminate()
            #expect(try await chatham.exitStatus() == 0, "\(chatham.log)")

            // When meterd starts on it in Berlin, it refuses with one line; in Chatham it starts
            let refused = try await Self.refusedStart(["--data-dir", directory, "--timezone", "Europe/Berlin"])
            #expect(refused.status == 2)
            #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
            #expect(
                refused.stderr.hasPrefix("meterd: invalid configuration: timezone: the database's months follow Pacific/Chatham, not Europe/Berlin"),
                "\(refused.stderr)")
            let again = try DaemonProcess(dataDirectory: directory, arguments: ["--timezone", "Pacific/Chatham"])
            _ = try await again.ingestPort()
            again.terminate()
            #expect(try await again.exitStatus() == 0, "\(again.log)")
        }
    }

    /// `UTC` is recorded as `GMT` here; `Etc/UTC`, `Zulu` and `GMT` never differ, so a database
    /// counted in one takes the others. Zones with transitions must be named alike.
    @Test func namesOfOneFixedOffsetKeepTheSameCalendar() async throws {
        let gmt = try #require(TimeZone(identifier: "UTC"))
        #expect(gmt.keepsTheSameCalendar(as: "Etc/UTC") && gmt.keepsTheSameCalendar(as: "Zulu") && gmt.keepsTheSameCalendar(as: "GMT"))
        #expect(!gmt.keepsTheSameCalendar(as: "Etc/GMT-1") && !gmt.keepsTheSameCalendar(as: "Europe/London"))
        #expect(!(try #require(TimeZone(identifier: "Europe/Berlin"))).keepsTheSameCalendar(as: "Europe/Paris"))
        #expect(!(try #require(TimeZone(identifier: "Etc/GMT-1"))).keepsTheSameCalendar(as: "Europe/Berlin"))
        try await withTemporaryDirectory { directory in
            let first = try DaemonProcess(dataDirectory: directory, arguments: ["--timezone", "UTC"])
            let client = try await LineClient(port: try await first.ingestPort())
            try await client.send(readingLine(meter: "Z-1", seq: 1))
            #expect(try await client.readLine() == #"{"meter":"Z-1","ack":1}"#)
            await client.close()
            first.terminate()
            #expect(try await first.exitStatus() == 0, "\(first.log)")
            let again = try DaemonProcess(dataDirectory: directory, arguments: ["--timezone", "Etc/UTC"])
            _ = try await again.ingestPort()
            again.terminate()
            #expect(try await again.exitStatus() == 0, "\(again.log)")
        }
    }

    @Test(arguments: ["ingest", "http"])
    func aPortInUseStopsStartUpWithOneLineNamingTheListener(listener: String) async throws {
        try await withTemporaryDirectory { directory in
            let occupied = try Self.occupiedPort()
            defer { close(occupied.fd) }

            let result = try await Self.refusedStart(["--data-dir", directory, "--\(listener)", "127.0.0.1:\(occupied.port)"])

            #expect(result.status == 2)
            let lines = result.stderr.split(separator: "\n")
            #expect(
                lines.last == "meterd: \(listener): cannot listen on 127.0.0.1:\(occupied.port): Address already in use", "\(result.stderr)")
            // The services stopped because of it do not report their cancellation as errors
            #expect(!lines.contains { $0.contains(" error ") || $0.contains("CancellationError") }, "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: directory + "/status.sock"))
        }
    }
}
