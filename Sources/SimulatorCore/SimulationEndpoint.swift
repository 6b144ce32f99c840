import Foundation

/// One meterd node a simulated fleet may connect to: `HOST:PORT` (`[IPv6]:PORT` for an IPv6 address).
package struct SimulationEndpoint: Sendable, Hashable, CustomStringConvertible {
    package var host: String
    package var port: Int

    package init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `HOST:PORT`, with brackets around an IPv6 address.
    package var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }

    /// Reads one `HOST:PORT` or `[IPv6]:PORT`.
    /// - Throws: ``SimulationEndpointError`` naming what is wrong with `text`.
    package init(parsing text: String) throws(SimulationEndpointError) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw .invalid(text, reason: "an IPv6 address is written [ADDRESS]:PORT")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw .invalid(text, reason: "expected HOST:PORT") }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { throw .invalid(text, reason: "an IPv6 address is written [ADDRESS]:PORT") }
        }
        if host.isEmpty { throw .invalid(text, reason: "the host is empty") }
        if host.contains(where: { $0.isWhitespace || $0 == "/" }) { throw .invalid(text, reason: "the host has a space or a slash") }
        guard let port = Int(portText), (1...65_535).contains(port) else {
            throw .invalid(text, reason: "the port must be a number between 1 and 65535")
        }
        self.init(host: String(host), port: port)
    }

    /// Reads the value of `--endpoints`: `HOST:PORT,HOST:PORT,...`, each listed once.
    /// - Throws: ``SimulationEndpointError`` naming the first bad entry.
    package static func parseList(_ text: String) throws(SimulationEndpointError) -> [SimulationEndpoint] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        if parts.count == 1, parts[0].isEmpty { throw .empty }
        var endpoints: [SimulationEndpoint] = []
        for part in parts {
            if part.isEmpty { throw .invalid(text, reason: "an entry between commas is empty") }
            let endpoint = try SimulationEndpoint(parsing: part)
            if endpoints.contains(endpoint) { throw .duplicate(endpoint.description) }
            endpoints.append(endpoint)
        }
        return endpoints
    }
}

/// Why `--endpoints` could not be read; the description is one line naming the flag.
package enum SimulationEndpointError: Error, CustomStringConvertible, Equatable {
    case empty
    case invalid(String, reason: String)
    case duplicate(String)

    package var description: String {
        switch self {
        case .empty: "--endpoints needs at least one HOST:PORT"
        case .invalid(let text, let reason): "--endpoints: \"\(text)\" is not HOST:PORT: \(reason)"
        case .duplicate(let endpoint): "--endpoints lists \(endpoint) twice"
        }
    }
}
