import Foundation
import NIOSSL

/// Reads the PEM certificates and private keys that meterd's listeners, its PostgreSQL store
/// address and meter-sim are given, so that each says in the same words what is wrong with a file;
/// each caller puts its own setting or flag in front (``Unusable/description`` starts at the path).
package enum PEMFile {
    /// A file that cannot be used, and why: no such file, unreadable, or not what it should hold.
    package struct Unusable: Error, CustomStringConvertible, Equatable {
        package let path: String
        package let reason: String

        package var description: String { "\(self.path): \(self.reason)" }
    }

    /// The certificates in a PEM file, in file order (a server's certificate, then intermediates).
    package static func certificates(at path: String) throws(Unusable) -> [NIOSSLCertificate] {
        let bytes = try Self.contents(of: path)
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMBytes(bytes)
        } catch {
            throw Unusable(path: path, reason: "not a PEM certificate (\(error))")
        }
        guard !certificates.isEmpty else { throw Unusable(path: path, reason: "not a PEM certificate (the file holds none)") }
        return certificates
    }

    /// The unencrypted private key of a PEM file.
    package static func privateKey(at path: String) throws(Unusable) -> NIOSSLPrivateKey {
        let bytes = try Self.contents(of: path)
        do {
            return try NIOSSLPrivateKey(bytes: bytes, format: .pem)
        } catch {
            throw Unusable(path: path, reason: "not a PEM private key (\(error))")
        }
    }

    private static func contents(of path: String) throws(Unusable) -> [UInt8] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw Unusable(path: path, reason: "no such file")
        }
        guard !isDirectory.boolValue else { throw Unusable(path: path, reason: "a directory, not a file") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Unusable(path: path, reason: "cannot read the file (permission denied?)")
        }
        return Array(data)
    }
}
