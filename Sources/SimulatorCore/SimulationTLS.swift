import Foundation
import MeterCore
import NIOCore
import NIOSSL

/// How the simulated fleet speaks TLS to meterd (`meter-sim run --tls-ca …`).
///
/// `--tls-ca` alone checks meterd's certificate; `--tls-cert-dir DIR` gives each meter its own
/// client certificate (`DIR/<meter>.pem`, `DIR/<meter>.key`, one meter per connection);
/// `--tls-cert FILE --tls-key FILE` gives every connection one certificate, a data concentrator's.
package struct SimulationTLS: Sendable, Equatable {
    /// PEM: the CA that signed meterd's server certificate.
    package var caFile: String
    package var certificateDirectory: String?
    package var certificate: String?
    package var key: String?

    package init(caFile: String, certificateDirectory: String? = nil, certificate: String? = nil, key: String? = nil) {
        self.caFile = caFile
        self.certificateDirectory = certificateDirectory
        self.certificate = certificate
        self.key = key
    }

    /// The first problem with the TLS flags, as a sentence naming the flag.
    func validate(concentrator: Int) -> String? {
        if (self.certificate == nil) != (self.key == nil) { return "--tls-cert and --tls-key go together" }
        if self.certificateDirectory != nil, self.certificate != nil {
            return "--tls-cert-dir (a certificate per meter) and --tls-cert (one for a concentrator) exclude each other"
        }
        if self.certificateDirectory != nil, concentrator != 1 {
            return
                "--tls-cert-dir gives each meter its own certificate and connection, so it needs --concentrator 1 (a concentrator uses --tls-cert/--tls-key)"
        }
        return nil
    }
}

/// The client contexts of a run, built before the first connection: one shared, or one per meter.
final class SimulationTLSContexts: Sendable {
    private let shared: NIOSSLContext?
    private let perMeter: [String: NIOSSLContext]
    /// meterd's host for SNI and the certificate check; `nil` for an IP address, checked against the certificate's IP SANs.
    let serverHostname: String?

    /// Loads the files; throws a sentence naming the file that is missing or unusable.
    init(_ tls: SimulationTLS, meters: [String], host: String) throws(SimulationError) {
        self.serverHostname = Self.isIPAddress(host) ? nil : host
        let authorities = try Self.certificates(tls.caFile, flag: "--tls-ca")
        func context(certificate: String?, key: String?, flag: String) throws(SimulationError) -> NIOSSLContext {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            configuration.trustRoots = .certificates(authorities)
            if let certificate, let key {
                configuration.certificateChain = try Self.certificates(certificate, flag: flag).map { .certificate($0) }
                do throws(PEMFile.Unusable) {
                    configuration.privateKey = .privateKey(try PEMFile.privateKey(at: key))
                } catch {
                    throw SimulationError.invalidConfiguration("\(flag == "--tls-cert" ? "--tls-key" : flag): \(error)")
                }
            }
            do {
                return try NIOSSLContext(configuration: configuration)
            } catch {
                throw SimulationError.invalidConfiguration("cannot use \(certificate ?? tls.caFile) with \(key ?? "no key"): \(error)")
            }
        }
        if let directory = tls.certificateDirectory {
            var perMeter: [String: NIOSSLContext] = [:]
            perMeter.reserveCapacity(meters.count)
            for meter in meters {
                let base = (directory as NSString).appendingPathComponent(meter)
                perMeter[meter] = try context(certificate: base + ".pem", key: base + ".key", flag: "--tls-cert-dir")
            }
            self.shared = nil
            self.perMeter = perMeter
        } else {
            self.shared = try context(certificate: tls.certificate, key: tls.key, flag: "--tls-cert")
            self.perMeter = [:]
        }
    }

    /// The context of a connection whose first meter is `meter`.
    func context(forConnectionOf meter: String) -> NIOSSLContext? {
        self.shared ?? self.perMeter[meter]
    }

    /// Whether a host is written as an IP address (then no SNI is sent).
    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }

    private static func certificates(_ path: String, flag: String) throws(SimulationError) -> [NIOSSLCertificate] {
        do throws(PEMFile.Unusable) {
            return try PEMFile.certificates(at: path)
        } catch {
            throw SimulationError.invalidConfiguration("\(flag): \(error)")
        }
    }
}
