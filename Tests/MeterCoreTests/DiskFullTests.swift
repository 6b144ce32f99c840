import Foundation
import GRDB
import Testing

@testable import MeterCore

/// Runs a shell command, returning whether it exited 0.
@discardableResult
func shell(_ command: String) -> Bool {
    (try? runProgram(["/bin/sh", "-c", command]))?.status == 0
}

/// Whether this process may mount a tmpfs (root, as in CI and on developer machines here).
let canMountTmpfs: Bool = {
    let probe = NSTemporaryDirectory() + "meterd-mount-probe-\(getpid())"
    try? FileManager.default.createDirectory(atPath: probe, withIntermediateDirectories: true)
    defer { shell("umount '\(probe)'"); try? FileManager.default.removeItem(atPath: probe) }
    return shell("mount -t tmpfs -o size=1m tmpfs '\(probe)'")
}()

@Suite(.timeLimit(.minutes(2)), .enabled(if: canMountTmpfs, "needs permission to mount a tmpfs"))
struct DiskFullTests {
    @Test func aFullDiskStopsAcksWithoutLossOrCorruptionAndIngestResumesWhenSpaceReturns() async throws {
        try await withTemporaryDirectory { directory in
            let data = directory + "/data"
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            #expect(shell("mount -t tmpfs -o size=2m tmpfs '\(data)'"))
            defer { shell("umount -l '\(data)'") }
            let daemon = try DaemonProcess(dataDirectory: data, arguments: ["--queue-capacity", "2000"], logPath: directory + "/meterd.log")
            let port = try await daemon.ingestPort()
            let tally = AckTally()
            let client = try await LineClient(port: port)
            let reader = Task {
                while let text = try await client.readLine(timeout: .seconds(60)) {
                    if case .ack(let meter, let seq) = DaemonLine(text) { tally.record(meter: meter, seq: seq) }
                }
            }
            // Fill the disk: 10 meters, readings until acks stop coming.
            let total: Int64 = 40_000
            let sender = Task {
                for seq in stride(from: Int64(1), through: total, by: 100) {
                    var text = ""
                    for offset in 0..<Int64(100) {
                        for meter in 0..<10 { text += readingLine(meter: "D\(meter)", seq: seq + offset, kwh: 0.5) }
                    }
                    try await client.send(text)
                }
            }
            try await waitUntil(timeout: .seconds(60)) { daemon.log.contains("Commit failed") }
            // Small batches may still squeeze in for a moment; then nothing more is acknowledged.
            var stalled = false
            for _ in 0..<60 where !stalled {
                let before = tally.marks
                try await Task.sleep(for: .seconds(1))
                stalled = tally.marks == before
            }
            #expect(stalled, "acks kept coming on a full disk")
            #expect(daemon.isRunning)

            // Space returns: the writer resumes on its own, and every reading is committed and acked.
            #expect(shell("mount -o remount,size=256m '\(data)'"))
            try await sender.value
            try await waitUntil(timeout: .seconds(60)) {
                tally.marks.count == 10 && tally.marks.values.allSatisfy { $0 == total }
            }
            await client.close()
            _ = await reader.result
            daemon.terminate()
            #expect(try await daemon.exitStatus() == 0)

            let database = try MeterDatabase(path: data + "/meterd.sqlite")
            let (check, rows, distinct) = try await database.pool.read { db in
                (
                    try String.fetchAll(db, sql: "PRAGMA integrity_check"),
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")!,
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM (SELECT DISTINCT meter_id, seq FROM reading)")!
                )
            }
            #expect(check == ["ok"])
            #expect(rows == Int(total) * 10)
            #expect(distinct == rows)
        }
    }
}
