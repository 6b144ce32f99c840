import Foundation
import GRDB

/// Consistent online copies of the database while meters keep sending.
package enum DatabaseBackup {
    /// Writes a snapshot of the database to a new file with `VACUUM INTO`, from a reader
    /// connection: WAL readers see one consistent state and never block the writer.
    ///
    /// - Returns: the answer of the status socket's `backup`: path, bytes and seconds.
    package static func write(_ database: MeterDatabase, to path: String) async throws -> BackupAnswer {
        guard path.hasPrefix("/") else { throw OperatorQueryError("invalid_path", "the backup path must be absolute, got \(path)") }
        guard !FileManager.default.fileExists(atPath: path) else {
            throw OperatorQueryError("file_exists", "\(path) already exists; meterd does not overwrite it")
        }
        let directory = (path as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw OperatorQueryError("invalid_path", "no directory \(directory) to write the backup into")
        }
        let started = ContinuousClock.now
        do {
            // VACUUM refuses to run inside a transaction; alone it still reads one consistent snapshot.
            try await database.pool.unsafeRead { db in
                try db.execute(sql: "VACUUM INTO ?", arguments: [path])
            }
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            throw OperatorQueryError("backup_failed", "cannot write the backup to \(path): \(error)")
        }
        let bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? 0
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return BackupAnswer(backup: path, bytes: bytes, seconds: seconds)
    }
}
