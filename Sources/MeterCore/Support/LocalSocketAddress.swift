#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether a listening address accepts only local connections, for the refusal to start open to
/// the network (SPEC.md section 10).
///
/// Addresses are handled as raw bytes (the Linux `sockaddr_in`/`sockaddr_in6` layouts: port at
/// offset 2, IPv4 address at 4, IPv6 address at 8), which keeps this free of the C struct types.
package enum LocalSocketAddress {
    /// `127.0.0.0/8`, `::1` and `::ffff:127.x.x.x` are loopback; anything that is not a numeric
    /// address (a host name other than `localhost`, which the caller handles) is not.
    package static func isLoopback(numericHost host: String) -> Bool {
        var bytes = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET, host, &bytes) == 1 { return bytes[0] == 127 }
        if inet_pton(AF_INET6, host, &bytes) == 1 { return self.isLoopbackIPv6(bytes) }
        return false
    }

    /// Whether a bound socket (one systemd passed) listens on loopback or a Unix path only.
    package static func isLoopback(descriptor: CInt) -> Bool {
        guard let (family, bytes) = self.localAddress(descriptor) else { return false }
        switch family {
        case AF_UNIX: return true
        case AF_INET: return bytes[4] == 127
        case AF_INET6: return self.isLoopbackIPv6(Array(bytes[8..<24]))
        default: return false
        }
    }

    /// The bound address of a socket as text, for the refusal message.
    package static func describe(descriptor: CInt) -> String {
        guard let (family, bytes) = self.localAddress(descriptor) else { return "address unknown" }
        let port = Int(bytes[2]) << 8 | Int(bytes[3])
        switch family {
        case AF_INET: return bytes[4..<8].map(String.init).joined(separator: ".") + ":\(port)"
        case AF_INET6:
            var text = [CChar](repeating: 0, count: 64)
            var raw = Array(bytes[8..<24])
            guard inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count)) != nil else { return "an IPv6 address, port \(port)" }
            let length = text.firstIndex(of: 0) ?? text.count
            return "[" + String(decoding: text[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) + "]:\(port)"
        case AF_UNIX: return "a Unix socket"
        default: return "address family \(family)"
        }
    }

    private static func localAddress(_ descriptor: CInt) -> (family: Int32, bytes: [UInt8])? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) == 0 }
        }
        guard ok else { return nil }
        let bytes = withUnsafeBytes(of: &storage) { Array($0) }
        return (Int32(storage.ss_family), bytes)
    }

    private static func isLoopbackIPv6(_ bytes: [UInt8]) -> Bool {
        if bytes[0..<15].allSatisfy({ $0 == 0 }) && bytes[15] == 1 { return true }  // ::1
        // An IPv4-mapped loopback address (::ffff:127.x.x.x).
        return bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff && bytes[12] == 127
    }
}
