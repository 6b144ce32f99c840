/// A line meterd sends a meter (SPEC.md section 2), as the simulator reads it.
package enum DaemonReply: Sendable, Equatable {
    /// `{"meter":"M","ack":S}`: every reading of M with seq ≤ S sent on this connection is committed.
    case ack(meter: String, seq: Int64)
    /// `{"error":"code","line":L,"detail":"…"}`: line L of this connection was rejected.
    case error(code: String, line: Int?)
    /// `{"busy":true,"retry_after_ms":N}`: meterd's queue is full; pause for N ms.
    case busy(retryAfterMs: Int)

    /// Reads one line (without its newline); `nil` for anything else.
    ///
    /// Not a general JSON parser: meterd writes these lines itself, compactly, so finding each key
    /// and reading its value is enough and costs a fraction of a decoder.
    package static func parse(_ bytes: UnsafeRawBufferPointer) -> DaemonReply? {
        if let value = self.value(after: #""ack":"#, in: bytes), let seq = self.integer(at: value, in: bytes),
            let meterStart = self.value(after: #""meter":""#, in: bytes), let meter = self.string(at: meterStart, in: bytes)
        {
            return .ack(meter: meter, seq: seq)
        }
        if let value = self.value(after: #""error":""#, in: bytes), let code = self.string(at: value, in: bytes) {
            let line = self.value(after: #""line":"#, in: bytes).flatMap { self.integer(at: $0, in: bytes) }.map { Int($0) }
            return .error(code: code, line: line)
        }
        if self.value(after: #""busy":true"#, in: bytes) != nil {
            let retry = self.value(after: #""retry_after_ms":"#, in: bytes).flatMap { self.integer(at: $0, in: bytes) }
            return .busy(retryAfterMs: Int(retry ?? 500))
        }
        return nil
    }

    package static func parse(_ text: String) -> DaemonReply? {
        var text = text
        return text.withUTF8 { self.parse(UnsafeRawBufferPointer($0)) }
    }

    /// Index just past the first occurrence of `key`.
    private static func value(after key: StaticString, in bytes: UnsafeRawBufferPointer) -> Int? {
        let keyCount = key.utf8CodeUnitCount
        guard bytes.count >= keyCount else { return nil }
        return key.withUTF8Buffer { keyBytes -> Int? in
            var start = 0
            while start + keyCount <= bytes.count {
                var matched = true
                for offset in 0..<keyCount where bytes[start + offset] != keyBytes[offset] {
                    matched = false
                    break
                }
                if matched { return start + keyCount }
                start += 1
            }
            return nil
        }
    }

    private static func integer(at index: Int, in bytes: UnsafeRawBufferPointer) -> Int64? {
        var value: Int64 = 0
        var position = index
        while position < bytes.count, bytes[position] >= 0x30, bytes[position] <= 0x39 {
            let (multiplied, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (added, overflow2) = multiplied.addingReportingOverflow(Int64(bytes[position] - 0x30))
            guard !overflow1, !overflow2 else { return nil }
            value = added
            position += 1
        }
        return position > index ? value : nil
    }

    /// The characters up to the closing quote (meter ids and codes carry no escapes).
    private static func string(at index: Int, in bytes: UnsafeRawBufferPointer) -> String? {
        var position = index
        while position < bytes.count, bytes[position] != UInt8(ascii: "\"") {
            if bytes[position] == UInt8(ascii: "\\") { return nil }
            position += 1
        }
        guard position < bytes.count else { return nil }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[index..<position]), as: UTF8.self)
    }
}
