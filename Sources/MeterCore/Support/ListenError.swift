#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// A listener that could not bind, named by its setting: start-up stops with one line an
/// operator can act on ("ingest: cannot listen on 127.0.0.1:7700: Address already in use").
package struct ListenError: Error, CustomStringConvertible {
    package var setting: String
    package var address: String
    package var reason: String

    package var description: String { "\(self.setting): cannot listen on \(self.address): \(self.reason)" }

    /// `host:port` as operators write it, with an IPv6 host in brackets.
    package static func address(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Runs `bind`, turning its failure into a ``ListenError`` for `setting` at `address`.
    package static func naming<T>(setting: String, address: String, _ bind: () async throws -> T) async throws -> T {
        do {
            return try await bind()
        } catch let error as IOError {
            throw ListenError(setting: setting, address: address, reason: String(cString: strerror(error.errnoCode)))
        } catch let error as CancellationError {
            throw error
        } catch {
            throw ListenError(setting: setting, address: address, reason: "\(error)")
        }
    }
}
