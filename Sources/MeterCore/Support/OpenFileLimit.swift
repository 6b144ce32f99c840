#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's open-file limit: ten thousand meters need ten thousand sockets.
package enum OpenFileLimit {
    /// Raises the soft limit to at least `needed` (up to the hard limit, which root may raise too).
    /// Returns the soft limit now in force.
    @discardableResult
    package static func raise(toAtLeast needed: Int) -> Int {
        var limit = rlimit()
        guard getrlimit(resourceKind, &limit) == 0 else { return needed }
        let wanted = rlim_t(needed)
        if limit.rlim_cur >= wanted { return Int(clamping: limit.rlim_cur) }
        if limit.rlim_max < wanted {
            var raised = limit
            raised.rlim_max = wanted
            raised.rlim_cur = wanted
            if setrlimit(resourceKind, &raised) == 0 { return needed }
        }
        limit.rlim_cur = min(wanted, limit.rlim_max)
        _ = setrlimit(resourceKind, &limit)
        var now = rlimit()
        _ = getrlimit(resourceKind, &now)
        return Int(clamping: now.rlim_cur)
    }

    #if canImport(Glibc)
    private static let resourceKind = __rlimit_resource_t(UInt32(RLIMIT_NOFILE.rawValue))
    #else
    private static let resourceKind = RLIMIT_NOFILE
    #endif
}
