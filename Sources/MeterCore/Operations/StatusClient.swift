// Depending on module build order, glibc's struct timeval may be attributed to Dispatch's C
// module; importing it keeps MemberImportVisibility satisfied either way (as in Clock.swift).
#if canImport(CDispatch)
import CDispatch
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why the status socket could not be asked, phrased for the operator at the terminal.
package enum StatusClientError: Error, CustomStringConvertible, Equatable {
    case notListening(path: String)
    case permissionDenied(path: String)
    case pathTooLong(path: String)
    case failed(path: String, reason: String)
    case noAnswer(path: String)
    case timedOut(path: String)

    package var description: String {
        switch self {
        case .notListening(let path): "no meterd listening at \(path)"
        case .permissionDenied(let path): "permission denied on \(path) (run as root or as a member of meterd's group)"
        case .pathTooLong(let path): "socket path too long: \(path)"
        case .failed(let path, let reason): "cannot talk to meterd at \(path): \(reason)"
        case .noAnswer(let path): "meterd at \(path) closed the connection without answering"
        case .timedOut(let path): "meterd at \(path) did not answer in time"
        }
    }
}

/// A blocking client of the status socket: one command out, one line of JSON back.
package struct StatusClient: Sendable {
    package let path: String
    package let timeoutSeconds: Int

    package init(path: String, timeoutSeconds: Int = 30) {
        self.path = path
        self.timeoutSeconds = timeoutSeconds
    }

    /// The status socket to use when none is given: `$METERD_STATUS_SOCKET`, systemd's
    /// `/run/meterd/status.sock` when it exists, else the local trial's `./meterd-data/status.sock`.
    package static func defaultPath(environment: [String: String]) -> String {
        if let path = environment["METERD_STATUS_SOCKET"], !path.isEmpty { return path }
        let systemd = "/run/meterd/status.sock"
        if access(systemd, F_OK) == 0 { return systemd }
        return "./meterd-data/status.sock"
    }

    /// Sends one command and returns the answer line, without its newline.
    package func send(_ command: String) throws(StatusClientError) -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .failed(path: self.path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: self.timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        guard let connected = UnixSocketAddress.with(path: self.path, { connect(fd, $0, $1) }) else {
            throw .pathTooLong(path: self.path)
        }
        if connected != 0 {
            switch errno {
            case ENOENT, ECONNREFUSED, ENOTDIR: throw .notListening(path: self.path)
            case EACCES, EPERM: throw .permissionDenied(path: self.path)
            default: throw .failed(path: self.path, reason: String(cString: strerror(errno)))
            }
        }

        let request = Array((command + "\n").utf8)
        var sent = 0
        while sent < request.count {
            let result = request.withUnsafeBytes { write(fd, $0.baseAddress! + sent, request.count - sent) }
            if result < 0 {
                if errno == EINTR { continue }
                throw .failed(path: self.path, reason: String(cString: strerror(errno)))
            }
            sent += result
        }

        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut(path: self.path) }
                throw .failed(path: self.path, reason: String(cString: strerror(errno)))
            }
            if count == 0 { throw .noAnswer(path: self.path) }
            if let newline = chunk[..<count].firstIndex(of: UInt8(ascii: "\n")) {
                answer.append(contentsOf: chunk[..<newline])
                return String(decoding: answer, as: UTF8.self)
            }
            answer.append(contentsOf: chunk[..<count])
        }
    }
}
