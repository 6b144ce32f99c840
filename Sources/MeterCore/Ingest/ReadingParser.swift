#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A strict JSON parser for the flat reading object of the ingest protocol (SPEC.md section 2).
///
/// It scans bytes in place, without Foundation: `JSONDecoder` costs ~6 µs a line, this ~0.3 µs.
/// Nothing is guessed: malformed JSON is `invalid_json`, a known key with the wrong type or an
/// out-of-range value is `invalid_field`, an absent required key is `missing_field`. Unknown keys
/// are skipped, but their values must still be valid JSON.
///
/// ```swift
/// let parser = ReadingParser(maximumKwh: 1000)
/// let reading = try parser.parse(#"{"meter":"MTR-1","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":0.4}"#)
/// ```
///
/// A reading carries `kwh` or, from a meter that reports its cumulative register, `register_kwh`
/// (SPEC.md section 11), never both; the writer derives the consumption of a register reading.
package struct ReadingParser: Sendable {
    /// Largest `kwh` a single reading may carry.
    package var maximumKwh: Double
    /// The register's capacity (`10^register_digits`): a `register_kwh` at or above it cannot be on the meter.
    package var registerCapacity: Double
    /// Deepest nesting accepted inside the values of unknown keys.
    package static let maximumNesting = 32
    /// Voltages outside this range are rejected as impossible for a metered supply.
    package static let voltageRange: ClosedRange<Double> = 0...1_000

    package init(maximumKwh: Double = 1_000, registerCapacity: Double = 1_000_000) {
        self.maximumKwh = maximumKwh
        self.registerCapacity = registerCapacity
    }

    /// Parses one line (without its newline).
    package func parse(_ line: String) throws(Rejection) -> Reading {
        var line = line
        let result: Result<Reading, Rejection> = line.withUTF8 { buffer in
            do throws(Rejection) {
                return .success(try self.parse(UnsafeRawBufferPointer(buffer)))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Parses one line (without its newline) held in raw bytes.
    package func parse(_ line: UnsafeRawBufferPointer) throws(Rejection) -> Reading {
        var scanner = JSONScanner(bytes: line)
        var fields = ReadingFields()
        try scanner.scanObject(into: &fields)
        return try fields.makeReading(in: line, maximumKwh: self.maximumKwh, registerCapacity: self.registerCapacity)
    }
}

/// Where the value of one known key sits in the line.
private enum Token {
    case string(start: Int, end: Int, escaped: Bool)
    case number(start: Int, end: Int, integer: Bool)
    case boolean
    case null
    case compound

    var typeName: String {
        switch self {
        case .string: "a string"
        case .number: "a number"
        case .boolean: "a boolean"
        case .null: "null"
        case .compound: "an object or array"
        }
    }
}

private enum Key: Int, CaseIterable {
    case meter, seq, ts, kwh, status, fault, voltage, registerKwh

    var name: String {
        switch self {
        case .meter: "meter"
        case .seq: "seq"
        case .ts: "ts"
        case .kwh: "kwh"
        case .status: "status"
        case .fault: "fault"
        case .voltage: "v"
        case .registerKwh: "register_kwh"
        }
    }

    /// Recognises a key from its raw bytes; keys with escapes are decoded first by the caller.
    static func match(_ bytes: UnsafeRawBufferPointer) -> Key? {
        switch bytes.count {
        case 1: return bytes[0] == UInt8(ascii: "v") ? .voltage : nil
        case 2: return bytes[0] == UInt8(ascii: "t") && bytes[1] == UInt8(ascii: "s") ? .ts : nil
        case 3:
            if bytes[0] == UInt8(ascii: "s"), bytes[1] == UInt8(ascii: "e"), bytes[2] == UInt8(ascii: "q") { return .seq }
            if bytes[0] == UInt8(ascii: "k"), bytes[1] == UInt8(ascii: "w"), bytes[2] == UInt8(ascii: "h") { return .kwh }
            return nil
        case 5:
            return Self.bytes(bytes, are: "meter") ? .meter : Self.bytes(bytes, are: "fault") ? .fault : nil
        case 6:
            return Self.bytes(bytes, are: "status") ? .status : nil
        case 12:
            return Self.bytes(bytes, are: "register_kwh") ? .registerKwh : nil
        default:
            return nil
        }
    }

    /// `bytes` (as long as `literal`) spell `literal`: a `memcmp`, where `elementsEqual` walked a
    /// `String.UTF8View` byte by byte, unspecialised, for the `meter` key of every line.
    private static func bytes(_ bytes: UnsafeRawBufferPointer, are literal: StaticString) -> Bool {
        memcmp(bytes.baseAddress!, literal.utf8Start, literal.utf8CodeUnitCount) == 0
    }
}

private struct ReadingFields {
    var tokens: (Token?, Token?, Token?, Token?, Token?, Token?, Token?, Token?) = (nil, nil, nil, nil, nil, nil, nil, nil)

    subscript(key: Key) -> Token? {
        get {
            switch key {
            case .meter: tokens.0
            case .seq: tokens.1
            case .ts: tokens.2
            case .kwh: tokens.3
            case .status: tokens.4
            case .fault: tokens.5
            case .voltage: tokens.6
            case .registerKwh: tokens.7
            }
        }
        set {
            switch key {
            case .meter: tokens.0 = newValue
            case .seq: tokens.1 = newValue
            case .ts: tokens.2 = newValue
            case .kwh: tokens.3 = newValue
            case .status: tokens.4 = newValue
            case .fault: tokens.5 = newValue
            case .voltage: tokens.6 = newValue
            case .registerKwh: tokens.7 = newValue
            }
        }
    }

    /// Reported missing in this order; a constant, so no array is built per line.
    private static let requiredKeys: [Key] = [.meter, .seq, .ts]

    func makeReading(in line: UnsafeRawBufferPointer, maximumKwh: Double, registerCapacity: Double) throws(Rejection) -> Reading {
        for key in Self.requiredKeys where self[key] == nil {
            throw Rejection(.missingField, "missing \"\(key.name)\"")
        }
        // A null register counts as absent, so a meter may send "register_kwh":null beside its kwh.
        let registerToken = self[.registerKwh].flatMap { $0.isNull ? nil : $0 }
        if self[.kwh] == nil && registerToken == nil {
            throw Rejection(.missingField, "missing \"kwh\"")  // or "register_kwh"; the detail meters already know
        }
        let meter = try Self.identifier(self[.meter]!, key: .meter, in: line)
        let seq = try Self.sequenceNumber(self[.seq]!, in: line)
        let timestamp = try Self.timestamp(self[.ts]!, in: line)
        var kwh = 0.0
        var register: Double?
        if let registerToken {
            guard self[.kwh] == nil else {
                throw Rejection(.invalidField, "a reading carries kwh or register_kwh, not both")
            }
            let value = try Self.double(registerToken, key: .registerKwh, in: line)
            guard value >= 0 else { throw Rejection(.invalidField, "register_kwh must be ≥ 0, got \(Self.excerpt(registerToken, in: line))") }
            guard value < registerCapacity else {
                throw Rejection(
                    .invalidField,
                    "register_kwh \(Self.excerpt(registerToken, in: line)) does not fit the register (below \(registerCapacity), register_digits)")
            }
            register = value
        } else {
            kwh = try Self.double(self[.kwh]!, key: .kwh, in: line)
            guard kwh >= 0 else { throw Rejection(.invalidField, "kwh must be ≥ 0, got \(Self.excerpt(self[.kwh]!, in: line))") }
            guard kwh <= maximumKwh else {
                throw Rejection(.invalidField, "kwh \(Self.excerpt(self[.kwh]!, in: line)) exceeds the maximum of \(maximumKwh) per reading")
            }
        }
        var status = MeterHealth.good
        if let token = self[.status], !token.isNull {
            guard case .string = token, let name = Self.text(token, in: line), let health = MeterHealth(exactName: name) else {
                throw Rejection(.invalidField, "status must be \"good\", \"fair\" or \"poor\", got \(Self.excerpt(token, in: line))")
            }
            status = health
        }
        var fault: String?
        if let token = self[.fault], !token.isNull {
            fault = try Self.identifier(token, key: .fault, in: line)
        }
        var voltage: Double?
        if let token = self[.voltage], !token.isNull {
            let value = try Self.double(token, key: .voltage, in: line)
            guard ReadingParser.voltageRange.contains(value) else {
                throw Rejection(.invalidField, "v must be between 0 and 1000 volts, got \(Self.excerpt(token, in: line))")
            }
            voltage = value
        }
        return Reading(
            meter: meter, seq: seq, timestampMs: timestamp, kwh: kwh, status: status, fault: fault, voltage: voltage, registerKwh: register)
    }

    private static func identifier(_ token: Token, key: Key, in line: UnsafeRawBufferPointer) throws(Rejection) -> String {
        guard case .string = token, let text = Self.text(token, in: line) else {
            throw Rejection(.invalidField, "\(key.name) must be a string, got \(token.typeName)")
        }
        guard MeterID.isValid(text) else {
            throw Rejection(.invalidField, "\(key.name) must be \(MeterID.syntax), got \(Self.excerpt(token, in: line))")
        }
        return text
    }

    private static func sequenceNumber(_ token: Token, in line: UnsafeRawBufferPointer) throws(Rejection) -> Int64 {
        guard case .number(let start, let end, let integer) = token else {
            throw Rejection(.invalidField, "seq must be an integer, got \(token.typeName)")
        }
        guard integer, line[start] != UInt8(ascii: "-") else {
            throw Rejection(.invalidField, "seq must be an integer ≥ 0, got \(Self.excerpt(token, in: line))")
        }
        var value: Int64 = 0
        for index in start..<end {
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(Int64(line[index] &- 0x30))
            guard !overflow1, !overflow2 else {
                throw Rejection(.invalidField, "seq \(Self.excerpt(token, in: line)) is larger than \(Int64.max)")
            }
            value = sum
        }
        return value
    }

    private static func timestamp(_ token: Token, in line: UnsafeRawBufferPointer) throws(Rejection) -> Int64 {
        guard case .string(let start, let end, let escaped) = token else {
            throw Rejection(.invalidField, "ts must be an RFC 3339 string, got \(token.typeName)")
        }
        let parsed: Int64?
        if escaped {
            parsed = Self.text(token, in: line).flatMap { RFC3339.parseMilliseconds($0) }
        } else {
            parsed = RFC3339.parseMilliseconds(UnsafeRawBufferPointer(rebasing: line[start..<end]))
        }
        guard let parsed else {
            throw Rejection(.invalidField, "ts must be an RFC 3339 date-time with Z or an offset, got \(Self.excerpt(token, in: line))")
        }
        // A meter's clock reset to year 0 would otherwise land in months and latencies no
        // calendar or sum of meterd is meant to hold.
        guard parsed >= Self.earliestTimestampMs else {
            throw Rejection(.invalidField, "ts must be 1970-01-01T00:00:00Z or later, got \(Self.excerpt(token, in: line))")
        }
        return parsed
    }

    /// The earliest `ts` taken: the Unix epoch.
    package static let earliestTimestampMs: Int64 = 0

    private static func double(_ token: Token, key: Key, in line: UnsafeRawBufferPointer) throws(Rejection) -> Double {
        guard case .number(let start, let end, _) = token else {
            throw Rejection(.invalidField, "\(key.name) must be a number, got \(token.typeName)")
        }
        let value = NumberConversion.double(UnsafeRawBufferPointer(rebasing: line[start..<end]))
        guard value.isFinite else {
            throw Rejection(.invalidField, "\(key.name) \(Self.excerpt(token, in: line)) is out of range")
        }
        return value
    }

    /// The decoded text of a string token, or `nil` if it is not a string.
    static func text(_ token: Token, in line: UnsafeRawBufferPointer) -> String? {
        guard case .string(let start, let end, let escaped) = token else { return nil }
        let raw = UnsafeRawBufferPointer(rebasing: line[start..<end])
        if !escaped { return String(decoding: raw, as: UTF8.self) }
        return JSONScanner.unescape(raw).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The value as it was sent, shortened, for error details.
    static func excerpt(_ token: Token, in line: UnsafeRawBufferPointer) -> String {
        let (start, end): (Int, Int)
        switch token {
        case .string(let s, let e, _): (start, end) = (s - 1, e + 1)
        case .number(let s, let e, _): (start, end) = (s, e)
        default: return token.typeName
        }
        let limit = 40
        let slice = UnsafeRawBufferPointer(rebasing: line[start..<min(end, start + limit)])
        return String(decoding: slice, as: UTF8.self) + (end - start > limit ? "…" : "")
    }
}

extension Token {
    fileprivate var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

extension MeterHealth {
    /// Only the protocol's exact lowercase names: the wire format is not guessed at.
    fileprivate init?(exactName: String) {
        switch exactName {
        case "good": self = .good
        case "fair": self = .fair
        case "poor": self = .poor
        default: return nil
        }
    }
}

/// A cursor over one line that checks JSON syntax as it goes.
private struct JSONScanner {
    let bytes: UnsafeRawBufferPointer
    var index = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    private func syntaxError(_ detail: String) -> Rejection {
        Rejection(.invalidJSON, "\(detail) at byte \(self.index + 1)")
    }

    private mutating func skipWhitespace() {
        while self.index < self.bytes.count {
            switch self.bytes[self.index] {
            case 0x20, 0x09, 0x0D, 0x0A: self.index += 1
            default: return
            }
        }
    }

    private func peek() -> UInt8? {
        self.index < self.bytes.count ? self.bytes[self.index] : nil
    }

    private mutating func expect(_ byte: UInt8, _ what: String) throws(Rejection) {
        guard self.peek() == byte else {
            throw self.peek() == nil ? self.syntaxError("unexpected end of line, expected \(what)") : self.syntaxError("expected \(what)")
        }
        self.index += 1
    }

    mutating func scanObject(into fields: inout ReadingFields) throws(Rejection) {
        self.skipWhitespace()
        guard self.peek() == UInt8(ascii: "{") else {
            throw self.peek() == nil ? Rejection(.invalidJSON, "empty line") : self.syntaxError("expected a JSON object")
        }
        self.index += 1
        self.skipWhitespace()
        if self.peek() == UInt8(ascii: "}") {
            self.index += 1
        } else {
            while true {
                self.skipWhitespace()
                try self.expect(UInt8(ascii: "\""), "a key in double quotes")
                let (keyStart, keyEnd, keyEscaped) = try self.scanStringBody()
                let rawKey = UnsafeRawBufferPointer(rebasing: self.bytes[keyStart..<keyEnd])
                let key: Key?
                if keyEscaped {
                    key = Self.unescape(rawKey).flatMap { decoded in decoded.withUnsafeBytes { Key.match($0) } }
                } else {
                    key = Key.match(rawKey)
                }
                self.skipWhitespace()
                try self.expect(UInt8(ascii: ":"), "':' after a key")
                self.skipWhitespace()
                let token = try self.scanValue(depth: 0)
                if let key {
                    guard fields[key] == nil else {
                        throw Rejection(.invalidJSON, "duplicate key \"\(key.name)\"")
                    }
                    fields[key] = token
                }
                self.skipWhitespace()
                guard let next = self.peek() else { throw self.syntaxError("unexpected end of line, expected ',' or '}'") }
                self.index += 1
                if next == UInt8(ascii: "}") { break }
                guard next == UInt8(ascii: ",") else {
                    self.index -= 1
                    throw self.syntaxError("expected ',' or '}'")
                }
            }
        }
        self.skipWhitespace()
        guard self.index == self.bytes.count else { throw self.syntaxError("unexpected data after the object") }
    }

    private mutating func scanValue(depth: Int) throws(Rejection) -> Token {
        guard let byte = self.peek() else { throw self.syntaxError("unexpected end of line, expected a value") }
        switch byte {
        case UInt8(ascii: "\""):
            self.index += 1
            let (start, end, escaped) = try self.scanStringBody()
            return .string(start: start, end: end, escaped: escaped)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try self.scanNumber()
        case UInt8(ascii: "t"):
            try self.scanLiteral("true")
            return .boolean
        case UInt8(ascii: "f"):
            try self.scanLiteral("false")
            return .boolean
        case UInt8(ascii: "n"):
            try self.scanLiteral("null")
            return .null
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            try self.skipCompound(depth: depth + 1)
            return .compound
        default:
            throw self.syntaxError("unexpected character '\(Self.printable(byte))', expected a value")
        }
    }

    private static func printable(_ byte: UInt8) -> String {
        byte >= 0x20 && byte < 0x7F ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
    }

    private mutating func scanLiteral(_ literal: StaticString) throws(Rejection) {
        let count = literal.utf8CodeUnitCount
        guard self.index + count <= self.bytes.count,
            memcmp(self.bytes.baseAddress! + self.index, literal.utf8Start, count) == 0
        else { throw self.syntaxError("invalid literal") }
        self.index += count
    }

    private mutating func skipCompound(depth: Int) throws(Rejection) {
        guard depth <= ReadingParser.maximumNesting else {
            throw self.syntaxError("nesting deeper than \(ReadingParser.maximumNesting) levels")
        }
        let isObject = self.bytes[self.index] == UInt8(ascii: "{")
        let close = isObject ? UInt8(ascii: "}") : UInt8(ascii: "]")
        self.index += 1
        self.skipWhitespace()
        if self.peek() == close {
            self.index += 1
            return
        }
        while true {
            self.skipWhitespace()
            if isObject {
                try self.expect(UInt8(ascii: "\""), "a key in double quotes")
                _ = try self.scanStringBody()
                self.skipWhitespace()
                try self.expect(UInt8(ascii: ":"), "':' after a key")
                self.skipWhitespace()
            }
            _ = try self.scanValue(depth: depth)
            self.skipWhitespace()
            guard let next = self.peek() else { throw self.syntaxError("unexpected end of line inside \(isObject ? "an object" : "an array")") }
            self.index += 1
            if next == close { return }
            guard next == UInt8(ascii: ",") else {
                self.index -= 1
                throw self.syntaxError("expected ',' or '\(Self.printable(close))'")
            }
        }
    }

    /// Scans a string whose opening quote was consumed; returns the body's range.
    private mutating func scanStringBody() throws(Rejection) -> (Int, Int, Bool) {
        let start = self.index
        var escaped = false
        let count = self.bytes.count
        while self.index < count {
            let byte = self.bytes[self.index]
            if byte == UInt8(ascii: "\"") {
                let end = self.index
                self.index += 1
                return (start, end, escaped)
            } else if byte == UInt8(ascii: "\\") {
                escaped = true
                self.index += 1
                guard let kind = self.peek() else { break }
                switch kind {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                    UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    self.index += 1
                case UInt8(ascii: "u"):
                    self.index += 1
                    let unit = try self.hexQuad()
                    if (0xD800...0xDBFF).contains(unit) {
                        guard self.peek() == UInt8(ascii: "\\"), self.index + 1 < count, self.bytes[self.index + 1] == UInt8(ascii: "u") else {
                            throw self.syntaxError("unpaired UTF-16 surrogate in \\u escape")
                        }
                        self.index += 2
                        guard (0xDC00...0xDFFF).contains(try self.hexQuad()) else {
                            throw self.syntaxError("unpaired UTF-16 surrogate in \\u escape")
                        }
                    } else if (0xDC00...0xDFFF).contains(unit) {
                        throw self.syntaxError("unpaired UTF-16 surrogate in \\u escape")
                    }
                default:
                    throw self.syntaxError("invalid escape '\\\(Self.printable(kind))'")
                }
            } else if byte < 0x20 {
                throw self.syntaxError("control character in a string")
            } else if byte < 0x80 {
                self.index += 1
            } else {
                try self.validateUTF8Sequence()
            }
        }
        throw self.syntaxError("unterminated string")
    }

    private mutating func hexQuad() throws(Rejection) -> Int {
        guard self.index + 4 <= self.bytes.count else { throw self.syntaxError("truncated \\u escape") }
        var value = 0
        for _ in 0..<4 {
            guard let digit = Self.hexValue(self.bytes[self.index]) else { throw self.syntaxError("invalid \\u escape") }
            value = value << 4 | digit
            self.index += 1
        }
        return value
    }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    /// Checks one multi-byte UTF-8 sequence (RFC 3629: no overlongs, no surrogates, ≤ U+10FFFF).
    private mutating func validateUTF8Sequence() throws(Rejection) {
        let lead = self.bytes[self.index]
        let length: Int
        var lower: UInt8 = 0x80
        var upper: UInt8 = 0xBF
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; lower = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; upper = 0x9F
        case 0xF0: length = 4; lower = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; upper = 0x8F
        default: throw self.syntaxError("invalid UTF-8")
        }
        guard self.index + length <= self.bytes.count else { throw self.syntaxError("invalid UTF-8") }
        let second = self.bytes[self.index + 1]
        guard second >= lower, second <= upper else { throw self.syntaxError("invalid UTF-8") }
        for offset in 2..<max(2, length) {
            let byte = self.bytes[self.index + offset]
            guard byte & 0xC0 == 0x80 else { throw self.syntaxError("invalid UTF-8") }
        }
        self.index += length
    }

    private mutating func scanNumber() throws(Rejection) -> Token {
        let start = self.index
        var integer = true
        if self.peek() == UInt8(ascii: "-") { self.index += 1 }
        guard let first = self.peek(), first >= UInt8(ascii: "0"), first <= UInt8(ascii: "9") else {
            throw self.syntaxError("invalid number")
        }
        self.index += 1
        if first != UInt8(ascii: "0") { self.skipDigits() }
        if self.peek() == UInt8(ascii: ".") {
            integer = false
            self.index += 1
            guard self.skipDigits() > 0 else { throw self.syntaxError("invalid number: digits expected after '.'") }
        }
        if self.peek() == UInt8(ascii: "e") || self.peek() == UInt8(ascii: "E") {
            integer = false
            self.index += 1
            if self.peek() == UInt8(ascii: "+") || self.peek() == UInt8(ascii: "-") { self.index += 1 }
            guard self.skipDigits() > 0 else { throw self.syntaxError("invalid number: digits expected in the exponent") }
        }
        if let next = self.peek(), next >= UInt8(ascii: "0"), next <= UInt8(ascii: "9") {
            throw self.syntaxError("invalid number: leading zero")
        }
        return .number(start: start, end: self.index, integer: integer)
    }

    @discardableResult
    private mutating func skipDigits() -> Int {
        let start = self.index
        while let byte = self.peek(), byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") { self.index += 1 }
        return self.index - start
    }

    /// Decodes the escapes of a string body already validated by `scanStringBody`.
    static func unescape(_ raw: UnsafeRawBufferPointer) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var index = 0
        func quad(_ at: Int) -> UInt32? {
            guard at + 4 <= raw.count else { return nil }
            var value: UInt32 = 0
            for offset in 0..<4 {
                guard let digit = hexValue(raw[at + offset]) else { return nil }
                value = value << 4 | UInt32(digit)
            }
            return value
        }
        while index < raw.count {
            let byte = raw[index]
            guard byte == UInt8(ascii: "\\"), index + 1 < raw.count else {
                out.append(byte)
                index += 1
                continue
            }
            let kind = raw[index + 1]
            index += 2
            switch kind {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                guard var scalarValue = quad(index) else { return nil }
                index += 4
                if (0xD800...0xDBFF).contains(scalarValue) {
                    guard let low = quad(index + 2) else { return nil }
                    scalarValue = 0x10000 + ((scalarValue - 0xD800) << 10) + (low - 0xDC00)
                    index += 6
                }
                guard let scalar = Unicode.Scalar(scalarValue) else { return nil }
                out.append(contentsOf: Array(String(Character(scalar)).utf8))
            default: out.append(kind)
            }
        }
        return out
    }
}

/// Converts a JSON number's text to a `Double`, exactly as `strtod` would, quickly when it can.
package enum NumberConversion {
    private static let powersOfTen: [Double] = (0...22).map { exponent in
        var value = 1.0
        for _ in 0..<exponent { value *= 10 }
        return value
    }

    /// - Parameter text: a number already validated against the JSON grammar.
    package static func double(_ text: UnsafeRawBufferPointer) -> Double {
        // Clinger's fast path: a mantissa below 2^53 scaled by an exact power of ten rounds once.
        var mantissa: UInt64 = 0
        var digits = 0
        var fractionDigits = 0
        var index = 0
        var negative = false
        var inFraction = false
        while index < text.count {
            let byte = text[index]
            switch byte {
            case UInt8(ascii: "-"): negative = true
            case UInt8(ascii: "."): inFraction = true
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                if mantissa != 0 || byte != UInt8(ascii: "0") { digits += 1 }
                mantissa = mantissa &* 10 &+ UInt64(byte &- 0x30)
                if inFraction { fractionDigits += 1 }
            default:
                return Self.slowPath(text)  // exponent: rare in meter data
            }
            if digits > 15 { return Self.slowPath(text) }
            index += 1
        }
        guard fractionDigits <= 22 else { return Self.slowPath(text) }
        let value = Double(mantissa) / Self.powersOfTen[fractionDigits]
        return negative ? -value : value
    }

    private static func slowPath(_ text: UnsafeRawBufferPointer) -> Double {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: text.count + 1) { buffer in
            for index in 0..<text.count { buffer[index] = CChar(bitPattern: text[index]) }
            buffer[text.count] = 0
            return strtod(buffer.baseAddress!, nil)
        }
    }
}
