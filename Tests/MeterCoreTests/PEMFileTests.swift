import Foundation
import NIOSSL
import Testing

@testable import MeterCore

/// The one reader of PEM files behind the ingest and HTTP listeners, the PostgreSQL store's
/// `sslrootcert`/`sslcert`/`sslkey` and meter-sim's `--tls-*` flags: each names the file and says
/// what is wrong with it in the same words.
@Suite(.timeLimit(.minutes(1))) struct PEMFileTests {
    /// Why reading a file failed, or `nil` when it did not.
    private func failure(_ read: () throws(PEMFile.Unusable) -> Void) -> PEMFile.Unusable? {
        do {
            try read()
            return nil
        } catch {
            return error
        }
    }

    private func certificatesFail(_ path: String) -> PEMFile.Unusable? {
        self.failure { () throws(PEMFile.Unusable) in _ = try PEMFile.certificates(at: path) }
    }

    private func privateKeyFails(_ path: String) -> PEMFile.Unusable? {
        self.failure { () throws(PEMFile.Unusable) in _ = try PEMFile.privateKey(at: path) }
    }

    @Test func readsCertificatesAndKeysAndSaysWhatIsWrongWithAFile() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            let chain = try PEMFile.certificates(at: pki.serverCertificate)
            #expect(chain.count == 1)
            #expect(chain.first?.subjectName.contains { $0.type == .commonName } == true)
            _ = try PEMFile.privateKey(at: pki.serverKey)

            let missing = directory + "/missing.pem"
            #expect(self.certificatesFail(missing) == PEMFile.Unusable(path: missing, reason: "no such file"))
            #expect(self.privateKeyFails(missing)?.description == "\(missing): no such file")
            #expect(self.certificatesFail(directory) == PEMFile.Unusable(path: directory, reason: "a directory, not a file"))

            let garbage = directory + "/garbage.pem"
            try "not a certificate\n".write(toFile: garbage, atomically: true, encoding: .utf8)
            #expect(self.certificatesFail(garbage)?.reason.hasPrefix("not a PEM certificate (") == true)
            #expect(self.privateKeyFails(garbage)?.reason.hasPrefix("not a PEM private key (") == true)
            let empty = directory + "/empty.pem"
            try "".write(toFile: empty, atomically: true, encoding: .utf8)
            #expect(self.certificatesFail(empty)?.reason.hasPrefix("not a PEM certificate") == true)

            // A key where a certificate belongs and the other way round.
            #expect(self.certificatesFail(pki.serverKey)?.reason.hasPrefix("not a PEM certificate") == true)
            #expect(self.privateKeyFails(pki.serverCertificate)?.reason.hasPrefix("not a PEM private key") == true)

            if geteuid() != 0 {  // root reads any file
                let locked = directory + "/locked.pem"
                try FileManager.default.copyItem(atPath: pki.serverCertificate, toPath: locked)
                try FileManager.default.setAttributes([.posixPermissions: 0o000], ofItemAtPath: locked)
                #expect(self.certificatesFail(locked)?.reason == "cannot read the file (permission denied?)")
            }
        }
    }

    /// meter-sim stops before its first connection with one line naming the flag and the file.
    @Test func meterSimNamesTheFlagAndTheFile() async throws {
        try await withTemporaryDirectory { directory in
            let pki = try await TestPKI.make(in: directory + "/pki")
            let missingCA = try await SimulatorCommandTests.run([
                "run", "--port", "1", "--meters", "1", "--readings-per-meter", "1", "--tls-ca", directory + "/none.pem",
            ])
            #expect(missingCA.status != 0)
            #expect(missingCA.stderr.contains("--tls-ca: \(directory)/none.pem: no such file"), "\(missingCA.stderr)")
            let badKey = try await SimulatorCommandTests.run([
                "run", "--port", "1", "--meters", "1", "--readings-per-meter", "1", "--tls-ca", pki.ca,
                "--tls-cert", pki.concentrator.certificate, "--tls-key", pki.concentrator.certificate,
            ])
            #expect(badKey.status != 0)
            #expect(
                badKey.stderr.contains("--tls-key: \(pki.concentrator.certificate): not a PEM private key"), "\(badKey.stderr)")
        }
    }
}
