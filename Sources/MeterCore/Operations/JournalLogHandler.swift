#if canImport(Glibc)
import Glibc
#endif
// Depending on module build order, glibc's struct stat and timespec may be attributed to
// Dispatch's C module; importing it keeps MemberImportVisibility satisfied either way.
#if canImport(CDispatch)
import CDispatch
#endif
#if canImport(Darwin)
import Darwin
#endif
import CSystemd
import Logging

/// A swift-log backend writing structured entries to journald through `sd_journal_sendv`.
///
/// The message becomes `MESSAGE`, the level `PRIORITY`, and each metadata key a field of its
/// own, upper-cased with other characters as `_`: `meter` → `METER`, `peer` → `PEER`,
/// `ingest.address` → `INGEST_ADDRESS`. `journalctl -u meterd METER=MTR-000123` finds a meter's entries.
package struct JournalLogHandler: LogHandler {
    package var logLevel: Logger.Level = .info
    package var metadata: Logger.Metadata = [:]
    package var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let identifier: String

    /// - Parameters:
    ///   - label: the logger's label, sent as `LOGGER`.
    ///   - identifier: `SYSLOG_IDENTIFIER`, the name journalctl shows.
    package init(label: String, identifier: String = "meterd", metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.identifier = identifier
        self.metadataProvider = metadataProvider
    }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        var merged = self.metadata
        if let provided = self.metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let metadata = event.metadata { merged.merge(metadata) { _, new in new } }
        let fields = Self.fields(
            level: event.level, message: "\(event.message)", metadata: merged, identifier: self.identifier,
            label: self.label, file: event.file, function: event.function, line: event.line)
        Self.send(fields)
    }

    /// The journal fields of one entry, each `NAME=value`.
    package static func fields(
        level: Logger.Level, message: String, metadata: Logger.Metadata, identifier: String, label: String,
        file: String, function: String, line: UInt
    ) -> [String] {
        var fields = [
            "MESSAGE=\(message)",
            "PRIORITY=\(Self.priority(level))",
            "SYSLOG_IDENTIFIER=\(identifier)",
            "LOGGER=\(label)",
            "CODE_FILE=\(file)",
            "CODE_LINE=\(line)",
            "CODE_FUNC=\(function)",
        ]
        var used = Set(fields.map { String($0.prefix { $0 != "=" }) })
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            guard let name = Self.fieldName(key), used.insert(name).inserted else { continue }
            fields.append("\(name)=\(Self.render(value))")
        }
        return fields
    }

    /// A metadata key as a journal field name: `A-Z 0-9 _`, starting with a letter, at most 64
    /// characters; `nil` when nothing usable is left.
    package static func fieldName(_ key: String) -> String? {
        var name = ""
        for scalar in key.unicodeScalars {
            switch scalar {
            case "a"..."z": name.unicodeScalars.append(Unicode.Scalar(scalar.value - 32)!)
            case "A"..."Z", "0"..."9": name.unicodeScalars.append(scalar)
            default: name += "_"
            }
        }
        while let first = name.unicodeScalars.first, !("A"..."Z").contains(first) { name.removeFirst() }
        guard !name.isEmpty else { return nil }
        return String(name.prefix(64))
    }

    /// syslog priority of a level, as journald expects it.
    package static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    private static func render(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): text
        case .stringConvertible(let value): value.description
        case .array(let values): "[" + values.map { Self.render($0) }.joined(separator: ", ") + "]"
        case .dictionary(let values):
            "[" + values.sorted { $0.key < $1.key }.map { "\($0.key): \(Self.render($0.value))" }.joined(separator: ", ") + "]"
        }
    }

    /// Sends one entry. journald takes values with newlines as they are: sendv encodes them.
    private static func send(_ fields: [String]) {
        let buffers: [UnsafeMutableRawBufferPointer] = fields.map { field in
            let bytes = Array(field.utf8)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
            buffer.copyBytes(from: bytes)
            return UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes.count])
        }
        defer { buffers.forEach { $0.deallocate() } }
        var vectors = buffers.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        _ = vectors.withUnsafeMutableBufferPointer { sd_journal_sendv($0.baseAddress, CInt($0.count)) }
    }
}

/// Where meterd's logs go.
package enum LogBackend: String, Sendable, CaseIterable {
    case journald
    case stderr

    /// journald when systemd started meterd and its journal is there: stderr connected to the
    /// journal (`JOURNAL_STREAM`), or a unit's `INVOCATION_ID` with the journal socket present.
    package static func detect(environment: [String: String], journalSocket: String = "/run/systemd/journal/socket") -> LogBackend {
        if let stream = environment["JOURNAL_STREAM"], Self.stderrIs(journalStream: stream) { return .journald }
        if environment["INVOCATION_ID"] != nil, access(journalSocket, F_OK) == 0 { return .journald }
        return .stderr
    }

    /// Whether `JOURNAL_STREAM` (`DEVICE:INODE`) names the file stderr is connected to.
    private static func stderrIs(journalStream: String) -> Bool {
        guard let identity = Self.stderrIdentity() else { return false }
        return journalStream == identity
    }

    /// stderr's `DEVICE:INODE`, as systemd writes it into `JOURNAL_STREAM`.
    package static func stderrIdentity() -> String? {
        var status = stat()
        guard fstat(STDERR_FILENO, &status) == 0 else { return nil }
        return "\(UInt64(status.st_dev)):\(UInt64(status.st_ino))"
    }
}
