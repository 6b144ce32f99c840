import NIOConcurrencyHelpers
import Synchronization

/// Which meters a connection may send readings for (`meter_auth`, SPEC.md section 10).
package enum MeterAuthMode: String, Sendable, CaseIterable {
    /// Any connection may send for any meter: today's behaviour, the default.
    case none
    /// A connection may send only for the meter its client certificate names, or, for a data
    /// concentrator's certificate, for the meters `concentrators.csv` assigns to it.
    case certificate
}

/// Who a meter connection is, as its client certificate says.
package enum MeterIdentity: Sendable, Hashable, CustomStringConvertible {
    /// A meter's own certificate: subject CN or SAN URI `urn:meter:<id>`.
    case meter(String)
    /// A data concentrator's certificate: SAN URI `urn:concentrator:<id>`.
    case concentrator(String)

    /// How the identity is written in the quarantine and in logs: its SAN URI form.
    package var description: String {
        switch self {
        case .meter(let id): "urn:meter:\(id)"
        case .concentrator(let id): "urn:concentrator:\(id)"
        }
    }

    /// The identity a certificate names, or `nil` when it names none (or several).
    ///
    /// SAN URIs `urn:meter:<id>` and `urn:concentrator:<id>` come first; a certificate whose URIs
    /// name more than one identity names none, so a mis-issued certificate grants nothing. Without
    /// such a URI, the subject CN is the meter id. Ids follow the meter id syntax (``MeterID``).
    package static func named(uris: [String], commonNames: [String]) -> MeterIdentity? {
        var found: Set<MeterIdentity> = []
        for uri in uris {
            if let id = Self.suffix(of: uri, after: "urn:meter:") {
                found.insert(.meter(id))
            } else if let id = Self.suffix(of: uri, after: "urn:concentrator:") {
                found.insert(.concentrator(id))
            }
        }
        if found.count == 1 { return found.first }
        if found.count > 1 { return nil }
        let meters = Set(commonNames.filter(MeterID.isValid))
        return meters.count == 1 ? .meter(meters.first!) : nil
    }

    private static func suffix(of uri: String, after prefix: String) -> String? {
        // URN schemes and namespace ids are case-insensitive (RFC 8141); the id itself is not.
        guard uri.utf8.count > prefix.utf8.count, uri.lowercased().hasPrefix(prefix) else { return nil }
        let id = String(uri.dropFirst(prefix.count))
        return MeterID.isValid(id) ? id : nil
    }
}

/// Which meters each data concentrator may send for (`concentrators.csv`), held in memory so the
/// ingest path never asks the database per reading; the daemon reloads it after an import.
package final class ConcentratorDirectory: Sendable {
    private let meters = NIOLockedValueBox<[String: Set<String>]>([:])
    /// Bumped by every change, so connections notice without taking the lock per reading.
    private let version = Atomic<Int>(0)

    package init(_ assignments: [String: Set<String>] = [:]) {
        self.meters.withLockedValue { $0 = assignments }
    }

    /// Replaces every assignment.
    package func replace(with assignments: [String: Set<String>]) {
        self.meters.withLockedValue { $0 = assignments }
        self.version.add(1, ordering: .releasing)
    }

    /// The meters assigned to one concentrator (empty when it has none).
    package func meters(of concentrator: String) -> Set<String> {
        self.meters.withLockedValue { $0[concentrator] ?? [] }
    }

    /// Concentrators with at least one meter.
    package var concentratorCount: Int {
        self.meters.withLockedValue { $0.count }
    }

    var currentVersion: Int { self.version.load(ordering: .acquiring) }
}

/// One connection's check, on its event loop: whether it may send a reading for a meter.
struct ConnectionAuthorization {
    private let directory: ConcentratorDirectory
    /// `nil` until the TLS handshake named one, and when the certificate names none.
    private(set) var identity: MeterIdentity?
    private var cachedMeters: Set<String> = []
    private var cachedVersion = -1

    init(directory: ConcentratorDirectory) {
        self.directory = directory
    }

    mutating func authenticated(as identity: MeterIdentity?) {
        self.identity = identity
        self.cachedVersion = -1
    }

    /// Whether the connection may send for `meter`; a concentrator's list is read again only after it changed.
    mutating func allows(_ meter: String) -> Bool {
        switch self.identity {
        case .none: return false
        case .meter(let id): return id == meter
        case .concentrator(let id):
            let version = self.directory.currentVersion
            if version != self.cachedVersion {
                self.cachedMeters = self.directory.meters(of: id)
                self.cachedVersion = version
            }
            return self.cachedMeters.contains(meter)
        }
    }

    /// What the connection may send for, for an error's detail.
    var scope: String {
        switch self.identity {
        case .none: "this connection's certificate names no meter or concentrator"
        case .meter(let id): "this connection's certificate is meter \(id)'s"
        case .concentrator(let id): "concentrator \(id) is not assigned this meter (concentrators.csv)"
        }
    }
}
