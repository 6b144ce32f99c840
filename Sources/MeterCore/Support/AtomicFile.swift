#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Errors writing a file, with the path and the system's reason.
package struct FileWriteError: Error, CustomStringConvertible {
    package var path: String
    package var reason: String

    package var description: String { "cannot write \(self.path): \(self.reason)" }
}

/// Writes files so a reader sees the old content or the new, never half: temp file, fsync, rename.
package enum AtomicFile {
    /// Makes temporary names unique within the process: two writers of one file must not share one.
    private static let writes = Atomic<Int>(0)

    /// - Parameter owner: user, group and mode for the new file (those of the file it replaces,
    ///   when a root-run tool edits a file a service user reads); `nil` leaves it ours, with `mode`.
    package static func write(
        _ bytes: [UInt8], to path: String, mode: mode_t = 0o644, owner: (user: uid_t, group: gid_t, mode: mode_t)? = nil
    ) throws(FileWriteError) {
        let temporary = path + ".tmp-\(getpid())-\(Self.writes.add(1, ordering: .relaxed).newValue)"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw FileWriteError(path: temporary, reason: String(cString: strerror(errno))) }
        if let owner {
            // Before the rename, so readers never see the file with the wrong owner; failing to
            // chown (not root) leaves it ours, as any new file would be.
            _ = fchown(fd, owner.user, owner.group)
            _ = fchmod(fd, owner.mode)
        }
        var written = 0
        let failure: String? = bytes.withUnsafeBytes { buffer in
            while written < buffer.count {
                let result = Glibc.write(fd, buffer.baseAddress! + written, buffer.count - written)
                if result < 0 {
                    if errno == EINTR { continue }
                    return String(cString: strerror(errno))
                }
                written += result
            }
            return fsync(fd) == 0 ? nil : String(cString: strerror(errno))
        }
        close(fd)
        if let failure {
            unlink(temporary)
            throw FileWriteError(path: path, reason: failure)
        }
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw FileWriteError(path: path, reason: reason)
        }
        // The rename itself is durable only once the directory is synced.
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        let directoryFD = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }

    package static func write(_ text: String, to path: String, mode: mode_t = 0o644) throws(FileWriteError) {
        try self.write(Array(text.utf8), to: path, mode: mode)
    }
}
