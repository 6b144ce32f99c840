#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CSystemd
import Logging

/// Listening sockets systemd passed by name (socket activation, `sd_listen_fds_with_names`).
package struct InheritedSockets: Sendable, Equatable {
    package var ingest: CInt?
    package var status: CInt?
    package var http: CInt?

    package init(ingest: CInt? = nil, status: CInt? = nil, http: CInt? = nil) {
        self.ingest = ingest
        self.status = status
        self.http = http
    }

    package var isEmpty: Bool { self.ingest == nil && self.status == nil && self.http == nil }
}

/// The parts of libsystemd meterd uses: readiness and watchdog notifications and socket activation.
package enum Systemd {
    /// Sends a notification such as `READY=1` to `$NOTIFY_SOCKET`; does nothing outside systemd.
    ///
    /// - Returns: whether a notification was sent (false without `NOTIFY_SOCKET`).
    @discardableResult
    package static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    /// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process), or `nil`.
    package static func watchdogInterval() -> Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(clamping: microseconds))
    }

    /// Takes the sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), by name,
    /// and clears those variables so no child inherits them. Call once, early in `main`.
    ///
    /// A single socket without a name is taken as the ingest socket (a plain `meterd.socket`);
    /// sockets with other names are closed and reported in `ignored`.
    package static func takeListenedSockets() -> (sockets: InheritedSockets, ignored: [String]) {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count > 0 else { return (InheritedSockets(), []) }
        defer {
            if let names {
                for index in 0..<Int(count) { free(names[index]) }
                free(names)
            }
        }
        var sockets = InheritedSockets()
        var ignored: [String] = []
        for index in 0..<Int(count) {
            let fd = SD_LISTEN_FDS_START + CInt(index)
            let name = names?[index].map { String(cString: $0) } ?? "unknown"
            // sd_listen_fds leaves them inheritable; meterd starts no children that should get them.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            switch name {
            case "ingest": sockets.ingest = fd
            case "status": sockets.status = fd
            case "http": sockets.http = fd
            case "unknown" where count == 1: sockets.ingest = fd
            default:
                ignored.append(name)
                close(fd)
            }
        }
        return (sockets, ignored)
    }
}
