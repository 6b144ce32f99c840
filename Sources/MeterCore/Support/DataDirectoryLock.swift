#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// An exclusive claim on a data directory (`<data-dir>/meterd.lock`), held while a daemon uses it.
///
/// Two daemons on one directory would overwrite each other's `ports.json` and `kpi.json` and, on
/// SQLite, race for one database; the second is refused at start-up instead. The kernel drops an
/// `flock` when its holder dies, so a crashed daemon never leaves a stale claim behind.
package final class DataDirectoryLock: Sendable {
    package let path: String
    private let descriptor: Mutex<CInt>

    /// Claims `directory`, or throws naming the process that holds it.
    package init(directory: String) throws(ConfigurationError) {
        let path = directory.hasSuffix("/") ? directory + "meterd.lock" : directory + "/meterd.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ConfigurationError(key: "data_dir", "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno
            let holder = Self.readHolder(fd)
            close(fd)
            guard reason == EWOULDBLOCK else {
                throw ConfigurationError(key: "data_dir", "cannot lock \(path): \(String(cString: strerror(reason)))")
            }
            throw ConfigurationError(
                key: "data_dir",
                "\(directory) is in use by another meterd\(holder.map { " (pid \($0))" } ?? ""); give each daemon its own data directory")
        }
        // The holder's pid, for the message above and for operators; the lock, not the text, is the claim.
        let text = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
        self.path = path
        self.descriptor = Mutex(fd)
    }

    /// Gives up the claim (also done when the lock is released from memory).
    package func release() {
        self.descriptor.withLock { fd in
            guard fd >= 0 else { return }
            close(fd)
            fd = -1
        }
    }

    deinit { self.release() }

    private static func readHolder(_ fd: CInt) -> Int32? {
        var bytes = [UInt8](repeating: 0, count: 32)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        return Int32(String(decoding: bytes[..<count].prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }, as: UTF8.self))
    }
}
