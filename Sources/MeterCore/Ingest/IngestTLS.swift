#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The ingest listener's TLS files (`ingest_tls_cert`, `ingest_tls_key`, `ingest_tls_client_ca`).
package struct IngestTLSFiles: Sendable, Equatable {
    /// PEM: the server's certificate, then any intermediates.
    package var certificate: String
    /// PEM: the certificate's private key (unencrypted).
    package var key: String
    /// PEM: the CA(s) a meter's client certificate must be signed by; `nil` asks for none.
    package var clientCA: String?

    package init(certificate: String, key: String, clientCA: String? = nil) {
        self.certificate = certificate
        self.key = key
        self.clientCA = clientCA
    }
}

/// The ingest listener's TLS: the server context every new connection starts with, replaced by
/// ``reload()`` (SIGHUP) without touching connections already open, which keep the context they
/// began with.
///
/// TLS 1.2 at least; for TLS 1.2 only ECDHE key exchange with AEAD ciphers (TLS 1.3 suites are
/// all AEAD and cannot be configured). With a client CA, a meter must present a certificate that
/// CA signed, valid now; the handshake fails otherwise.
package final class IngestTLS: Sendable {
    /// What one load of the files gave.
    package struct Loaded: Sendable {
        package var context: NIOSSLContext
        /// The server certificate's subject, for logs.
        package var subject: String
        /// When the server certificate expires, seconds since the Unix epoch.
        package var notValidAfter: Int64
    }

    /// TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only, in BoringSSL's cipher string syntax.
    static let cipherSuites = "ECDHE+AESGCM:ECDHE+CHACHA20"

    package let files: IngestTLSFiles
    /// A connection that has not completed its handshake by then is closed (and counted as failed),
    /// so idle half-open connections cannot hold slots for `idle_timeout`.
    package let handshakeTimeout: TimeAmount
    private let loaded: NIOLockedValueBox<Loaded>

    /// Loads the files; a missing, unreadable or mismatched file throws an error naming its key.
    /// The setting names errors are reported under: `ingest_tls_*`, or `http_tls_*` for HTTPS,
    /// which loads its files the same way.
    package let settingPrefix: String

    package init(files: IngestTLSFiles, handshakeTimeout: TimeAmount = .seconds(10), settingPrefix: String = "ingest_tls") throws(ConfigurationError)
    {
        self.files = files
        self.handshakeTimeout = handshakeTimeout
        self.settingPrefix = settingPrefix
        self.loaded = NIOLockedValueBox(try Self.load(files, prefix: settingPrefix))
    }

    /// The context for the next connection.
    package var context: NIOSSLContext { self.loaded.withLockedValue { $0.context } }

    /// The server certificate now in use.
    package var current: Loaded { self.loaded.withLockedValue { $0 } }

    /// Whether meters must present a client certificate.
    package var requiresClientCertificate: Bool { self.files.clientCA != nil }

    /// Reads the files again; new connections get the new context, open ones keep theirs. When the
    /// files are not usable, throws and leaves the current context in place. Blocks on file I/O.
    @discardableResult
    package func reload() throws(ConfigurationError) -> Loaded {
        let fresh = try Self.load(self.files, prefix: self.settingPrefix)
        self.loaded.withLockedValue { $0 = fresh }
        return fresh
    }

    static func load(_ files: IngestTLSFiles, prefix: String = "ingest_tls") throws(ConfigurationError) -> Loaded {
        let chain = try Self.certificates(at: files.certificate, key: "\(prefix)_cert")
        let privateKey: NIOSSLPrivateKey
        do throws(PEMFile.Unusable) {
            privateKey = try PEMFile.privateKey(at: files.key)
        } catch {
            throw ConfigurationError(key: "\(prefix)_key", error.description)
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
        configuration.minimumTLSVersion = .tlsv12
        configuration.cipherSuites = Self.cipherSuites
        configuration.renegotiationSupport = .none
        // Closing waits this long for the meter's close_notify: keeps graceful shutdown short.
        configuration.shutdownTimeout = .seconds(2)
        if let clientCA = files.clientCA {
            let authorities = try Self.certificates(at: clientCA, key: "ingest_tls_client_ca")
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .certificates(authorities)
            // Tells a meter holding several certificates which one to present.
            configuration.sendCANameList = true
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch NIOSSLError.failedToLoadPrivateKey {
            throw ConfigurationError(
                key: "\(prefix)_key", "\(files.key) does not match the certificate in \(files.certificate) (\(prefix)_cert)")
        } catch {
            throw ConfigurationError(key: "\(prefix)_cert", "cannot use \(files.certificate) with \(files.key): \(error)")
        }
        let leaf = chain[0]
        let subject = leaf.subjectName.map { "\($0.value)" }.joined(separator: ",")
        return Loaded(context: context, subject: subject, notValidAfter: Int64(leaf.notValidAfter))
    }

    private static func certificates(at path: String, key: String) throws(ConfigurationError) -> [NIOSSLCertificate] {
        do throws(PEMFile.Unusable) {
            return try PEMFile.certificates(at: path)
        } catch {
            throw ConfigurationError(key: key, error.description)
        }
    }
}

extension MeterIdentity {
    /// The identity a client certificate names (``named(uris:commonNames:)``).
    static func named(by certificate: NIOSSLCertificate) -> MeterIdentity? {
        // NIOSSL's SAN accessor is underscored but is what its own hostname check uses; the
        // identity tests pin its behaviour.
        let uris = certificate._subjectAlternativeNames().compactMap { name -> String? in
            guard name.nameType == .uri else { return nil }
            return name.contents.withUnsafeBufferPointer { String(decoding: $0, as: UTF8.self) }
        }
        let commonNames = certificate.subjectName.filter { $0.type == .commonName }.map(\.value)
        return Self.named(uris: uris, commonNames: commonNames)
    }
}

/// What the TLS layer tells ``IngestHandler`` about its peer.
enum IngestPeerEvent {
    /// The handshake completed; the client certificate named this identity (`nil`: none, or no certificate).
    case authenticated(MeterIdentity?)
}

/// Sits between `NIOSSLServerHandler` and ``IngestHandler``: turns the completed handshake into
/// the peer's identity, and a TCP end of input without TLS close_notify into a plain end of input.
///
/// The ingest protocol frames its own lines and acks, so a connection cut short loses at most an
/// unterminated last line, which is never a reading: treating it like TCP's half-close keeps the
/// answer-then-close behaviour meters rely on.
final class IngestTLSPeerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let statistics: IngestStatistics
    private let logger: Logger
    private let handshakeTimeout: TimeAmount
    private var handshakeDeadline: Scheduled<Void>?

    init(statistics: IngestStatistics, handshakeTimeout: TimeAmount, logger: Logger) {
        self.statistics = statistics
        self.handshakeTimeout = handshakeTimeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        let statistics = self.statistics
        self.handshakeDeadline = context.eventLoop.scheduleTask(in: self.handshakeTimeout) {
            statistics.tlsHandshakeFailures.add(1, ordering: .relaxed)
            channel.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.handshakeDeadline?.cancel()
        self.handshakeDeadline = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            self.handshakeDeadline?.cancel()
            self.handshakeDeadline = nil
            let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).peerCertificate
            let identity = certificate.flatMap(MeterIdentity.named(by:))
            context.fireUserInboundEventTriggered(IngestPeerEvent.authenticated(identity))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOSSLError {
            switch error {
            case .uncleanShutdown:
                return  // the inputClosed that follows is the end of input
            case .handshakeFailed:
                self.handshakeDeadline?.cancel()
                self.handshakeDeadline = nil
                self.statistics.tlsHandshakeFailures.add(1, ordering: .relaxed)
                self.logger.debug(
                    "TLS handshake with a meter failed",
                    metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "unknown")", "error": "\(error)"])
            default: break
            }
        }
        context.fireErrorCaught(error)
    }
}

/// Reloads the listeners' certificates, keys and client CA on SIGHUP: the ingest port's and
/// HTTPS's, each on its own (one whose new files are unusable keeps its old ones; the other still
/// reloads).
package struct TLSReloader: Service {
    /// A listener whose certificate SIGHUP reloads, with the words its log lines use.
    package struct Listener: Sendable {
        package var tls: IngestTLS
        /// "Ingest TLS" or "HTTPS".
        package var name: String
        /// Who uses it: "meter" or "HTTP".
        package var clients: String
        /// Who refuses an expired certificate: "meters" or "browsers".
        package var refusers: String

        package static func ingest(_ tls: IngestTLS) -> Listener { Listener(tls: tls, name: "Ingest TLS", clients: "meter", refusers: "meters") }
        package static func https(_ tls: IngestTLS) -> Listener { Listener(tls: tls, name: "HTTPS", clients: "HTTP", refusers: "browsers") }
    }

    private let listeners: [Listener]
    private let logger: Logger

    package init(listeners: [Listener], logger: Logger) {
        self.listeners = listeners
        self.logger = logger
    }

    package func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            await self.reload()
        }
    }

    /// Reloads off the event loops (file I/O); logs each outcome, keeping the old context on failure.
    package func reload() async {
        if self.listeners.isEmpty { self.logger.notice("SIGHUP: nothing to reload (no TLS certificate is configured)") }
        for listener in self.listeners {
            let tls = listener.tls
            do {
                let loaded = try await NIOThreadPool.singleton.runIfActive { try tls.reload() }
                self.logger.info(
                    "\(listener.name) certificate reloaded; new \(listener.clients) connections use it",
                    metadata: [
                        "tls.subject": "\(loaded.subject)",
                        "tls.not_after": "\(RFC3339.format(millisecondsSinceEpoch: loaded.notValidAfter * 1000))",
                    ])
                Self.warnIfExpiring(loaded, listener: listener, logger: self.logger)
            } catch {
                self.logger.error(
                    "\(listener.name) reload failed; new \(listener.clients) connections keep the previous certificate",
                    metadata: ["error": "\(error)"])
            }
        }
    }

    /// A warning when the server certificate has expired or expires within a week: clients will refuse it.
    package static func warnIfExpiring(_ loaded: IngestTLS.Loaded, listener: Listener, logger: Logger, nowMs: Int64 = WallClock.nowMs()) {
        let remainingMs = loaded.notValidAfter * 1000 - nowMs
        guard remainingMs < 7 * 86_400_000 else { return }
        logger.warning(
            remainingMs <= 0
                ? "\(listener.name) certificate has expired; \(listener.refusers) will refuse it"
                : "\(listener.name) certificate expires within a week",
            metadata: ["tls.subject": "\(loaded.subject)", "tls.not_after": "\(RFC3339.format(millisecondsSinceEpoch: loaded.notValidAfter * 1000))"])
    }
}
