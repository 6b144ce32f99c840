import Foundation
import NIOCore

/// Where meterd keeps its data (SPEC.md section 9): the `store` setting, `--store URL`, `METERD_STORE`.
///
/// ```swift
/// let location = try StoreLocation(parsing: "postgresql://meterd@/fleet?host=/run/postgresql")
/// ```
package enum StoreLocation: Sendable, Equatable, CustomStringConvertible {
    /// `sqlite:PATH`: the embedded default, one node.
    case sqlite(path: String)
    /// `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?host=DIR][&sslmode=…]`: one or more nodes on one database.
    case postgresql(PostgreSQLAddress)

    /// Parses a store URL; the error names the `store` key and says what was expected.
    package init(parsing text: String) throws(ConfigurationError) {
        if text.hasPrefix("sqlite:") {
            var path = String(text.dropFirst("sqlite:".count))
            // `sqlite:///var/lib/meterd/meterd.sqlite` is the URL spelling of an absolute path.
            if path.hasPrefix("///") { path = String(path.dropFirst(2)) }
            guard !path.isEmpty else {
                throw ConfigurationError(key: "store", "sqlite: needs the database file's path, as in sqlite:/var/lib/meterd/meterd.sqlite")
            }
            self = .sqlite(path: path)
        } else if text.hasPrefix("postgresql://") || text.hasPrefix("postgres://") {
            self = .postgresql(try PostgreSQLAddress(parsing: text))
        } else {
            throw ConfigurationError(
                key: "store", "expected sqlite:PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, got \"\(StoreLocation.redacted(text))\"")
        }
    }

    /// The URL with any password replaced, for logs and errors.
    package var description: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgresql(let address): address.description
        }
    }

    /// `text` with whatever sits between `://USER:` and `@` masked: a URL that failed to parse
    /// may still carry a password.
    static func redacted(_ text: String) -> String {
        guard let scheme = text.range(of: "://"), let at = text[scheme.upperBound...].lastIndex(of: "@") else { return text }
        let userInfo = text[scheme.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return text }
        return String(text[..<colon]) + ":***" + String(text[at...])
    }
}

/// A PostgreSQL server and database, as a libpq-style URL names them.
package struct PostgreSQLAddress: Sendable, Equatable, CustomStringConvertible {
    package var user: String
    package var password: String?
    /// Host name or address for TCP; ignored when ``socketDirectory`` is set.
    package var host: String
    package var port: Int
    package var database: String
    /// `?host=DIR`: the directory of the server's Unix socket (`DIR/.s.PGSQL.PORT`).
    package var socketDirectory: String?
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`: TLS over TCP (a Unix socket has none, as with libpq).
    package var tls: PostgreSQLTLS

    package init(
        user: String, password: String? = nil, host: String = "localhost", port: Int = 5432, database: String, socketDirectory: String? = nil,
        tls: PostgreSQLTLS = PostgreSQLTLS()
    ) {
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.database = database
        self.socketDirectory = socketDirectory
        self.tls = tls
    }

    /// Parses `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAMETERS]`; user, password and
    /// database may be percent-encoded, and HOST may be empty when `host=` names a socket directory.
    /// Parameters: `host=DIR`, `port=N`, and TLS as libpq spells it (``PostgreSQLTLS``).
    package init(parsing text: String) throws(ConfigurationError) {
        func invalid(_ problem: String) -> ConfigurationError {
            ConfigurationError(
                key: "store", "\(problem) in \"\(StoreLocation.redacted(text))\" (expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DB)")
        }
        func decoded(_ part: Substring, _ what: String) throws(ConfigurationError) -> String {
            guard let value = String(part).removingPercentEncoding else { throw invalid("malformed percent-encoding in the \(what)") }
            return value
        }
        guard let schemeEnd = text.range(of: "://") else { throw invalid("no scheme") }
        var rest = text[schemeEnd.upperBound...]
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        guard let slash = rest.firstIndex(of: "/") else { throw invalid("no database name") }
        let authority = rest[..<slash]
        let database = try decoded(rest[rest.index(after: slash)...], "database name")
        guard !database.isEmpty, !database.contains("/") else { throw invalid("no database name") }
        guard let at = authority.lastIndex(of: "@") else { throw invalid("no user") }
        let userInfo = authority[..<at]
        var hostPort = authority[authority.index(after: at)...]
        var password: String?
        let user: String
        if let colon = userInfo.firstIndex(of: ":") {
            user = try decoded(userInfo[..<colon], "user")
            password = try decoded(userInfo[userInfo.index(after: colon)...], "password")
        } else {
            user = try decoded(userInfo, "user")
        }
        guard !user.isEmpty else { throw invalid("no user") }
        var port = 5432
        // `[::1]:5432` for IPv6; otherwise the last colon separates the port.
        if hostPort.hasPrefix("["), let close = hostPort.firstIndex(of: "]") {
            let after = hostPort[hostPort.index(after: close)...]
            if after.hasPrefix(":") {
                guard let number = Int(after.dropFirst()), (1...65_535).contains(number) else { throw invalid("bad port \"\(after.dropFirst())\"") }
                port = number
            } else if !after.isEmpty {
                throw invalid("bad host \"\(hostPort)\"")
            }
            hostPort = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
        } else if let colon = hostPort.lastIndex(of: ":") {
            let digits = hostPort[hostPort.index(after: colon)...]
            guard let number = Int(digits), (1...65_535).contains(number) else { throw invalid("bad port \"\(digits)\"") }
            port = number
            hostPort = hostPort[..<colon]
        }
        var socketDirectory: String?
        var tls = PostgreSQLTLS()
        for parameter in query.split(separator: "&") where !parameter.isEmpty {
            let pair = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = try decoded(pair[0], "query")
            let value = pair.count > 1 ? try decoded(pair[1], "query") : ""
            switch name {
            case "host":
                guard value.hasPrefix("/") else { throw invalid("host= must name a socket directory (an absolute path), got \"\(value)\"") }
                socketDirectory = value
            case "port":
                guard let number = Int(value), (1...65_535).contains(number) else { throw invalid("bad port \"\(value)\"") }
                port = number
            case "sslmode":
                guard let mode = PostgreSQLTLS.Mode(rawValue: value) else {
                    throw invalid(
                        "unsupported sslmode \"\(value)\" (meterd understands \(PostgreSQLTLS.Mode.allCases.map(\.rawValue).joined(separator: ", ")))"
                    )
                }
                tls.mode = mode
            case "sslrootcert", "sslcert", "sslkey":
                guard !value.isEmpty else { throw invalid("\(name)= needs a file's path") }
                switch name {
                case "sslrootcert": tls.rootCertificate = value
                case "sslcert": tls.clientCertificate = value
                default: tls.clientKey = value
                }
            default:
                throw invalid(
                    "unsupported parameter \"\(name)\" (meterd understands host=DIR, port=N, sslmode, sslrootcert, sslcert and sslkey)")
            }
        }
        guard !hostPort.isEmpty || socketDirectory != nil else { throw invalid("no host (name one, or a socket directory with ?host=DIR)") }
        guard (tls.clientCertificate == nil) == (tls.clientKey == nil) else {
            throw invalid("sslcert= and sslkey= go together (a client certificate and its key)")
        }
        let host = hostPort.isEmpty ? "localhost" : String(hostPort)
        if tls.mode == .verifyFull, socketDirectory == nil, (try? SocketAddress(ipAddress: host, port: 0)) != nil {
            throw invalid(
                "sslmode=verify-full checks the server's certificate against a host name, and \(host) is an address (name the host, or use sslmode=verify-ca)"
            )
        }
        self.init(user: user, password: password, host: host, port: port, database: database, socketDirectory: socketDirectory, tls: tls)
    }

    /// Path of the server's Unix socket when ``socketDirectory`` is set.
    package var socketPath: String? {
        self.socketDirectory.map { ($0 as NSString).appendingPathComponent(".s.PGSQL.\(self.port)") }
    }

    /// Where the server is, for errors: the socket path or `HOST:PORT`.
    package var server: String {
        if let socketPath { return socketPath }
        return self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }

    /// The URL without its password.
    package var description: String {
        let host = self.socketDirectory == nil ? (self.host.contains(":") ? "[\(self.host)]" : self.host) : ""
        let port = self.socketDirectory == nil || self.port != 5432 ? ":\(self.port)" : ""
        let user = self.password == nil ? self.user : "\(self.user):***"
        var parameters: [String] = []
        if let directory = self.socketDirectory { parameters.append("host=\(directory)") }
        if self.tls != PostgreSQLTLS() {
            parameters.append("sslmode=\(self.tls.mode.rawValue)")
            if let path = self.tls.rootCertificate { parameters.append("sslrootcert=\(path)") }
            if let path = self.tls.clientCertificate { parameters.append("sslcert=\(path)") }
            if let path = self.tls.clientKey { parameters.append("sslkey=\(path)") }
        }
        let query = parameters.isEmpty ? "" : "?" + parameters.joined(separator: "&")
        return "postgresql://\(user)@\(host)\(port)/\(self.database)\(query)"
    }
}

/// TLS to PostgreSQL over TCP, with libpq's URL parameters and meanings.
///
/// `sslmode`: `disable` (never), `prefer` (the default: TLS when the server offers it, the
/// certificate not checked), `require` (TLS or no connection; the certificate checked against
/// `sslrootcert` when one is named, as libpq does), `verify-ca` (the certificate must chain to
/// `sslrootcert`, or to the system's trusted CAs without it), `verify-full` (that, and it must name
/// the URL's host). `sslcert` and `sslkey`: a client certificate, for servers that ask for one
/// (`hostssl … cert` in pg_hba.conf). A Unix socket (`?host=DIR`) never uses TLS, as with libpq.
package struct PostgreSQLTLS: Sendable, Equatable {
    package enum Mode: String, Sendable, CaseIterable {
        case disable
        case prefer
        case require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    package var mode: Mode
    /// `sslrootcert`: the CA certificates (PEM) the server's certificate must chain to.
    package var rootCertificate: String?
    /// `sslcert`, `sslkey`: the client certificate (PEM) and its key.
    package var clientCertificate: String?
    package var clientKey: String?

    package init(mode: Mode = .prefer, rootCertificate: String? = nil, clientCertificate: String? = nil, clientKey: String? = nil) {
        self.mode = mode
        self.rootCertificate = rootCertificate
        self.clientCertificate = clientCertificate
        self.clientKey = clientKey
    }
}
